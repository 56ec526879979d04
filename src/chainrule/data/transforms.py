"""Transforms of a whole :class:`Dataset`: a given number of values K, binarization (fixed or
dynamic) and uniform dequantization.

Each returns a new Dataset; labels (``train_labels``, ``val_labels``, ``test_labels``,
``num_classes``, ``class_names``) are kept unchanged, since only the examples' values change.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from chainrule.data.dataset import Dataset
from chainrule.errors import DataError

#: Accepted values of ``load_dataset(binarize=...)``.
BINARIZE_CHOICES: tuple[str | None, ...] = (None, "threshold", "dynamic")


def dynamic_binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw a fresh binarization: ``Bernoulli(x / 255)`` for every pixel.

    Args:
        x: ``(B, *shape)`` intensities ``0..255`` (any dtype).
        generator: optional random generator, for reproducible draws.

    Returns:
        ``(B, *shape)`` ``torch.long`` tensor of 0/1 on the device of ``x``.
    """
    p = x.to(torch.float32) / 255.0
    if generator is not None and generator.device != p.device:
        # torch.bernoulli needs the generator on the tensor's device: draw there, move back.
        return torch.bernoulli(p.to(generator.device), generator=generator).to(p.device, torch.long)
    return torch.bernoulli(p, generator=generator).long()


def bernoulli_binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw a fresh binarization of intensities in [0, 1]: ``Bernoulli(x)`` for every value.

    Args:
        x: ``(B, *shape)`` floats in [0, 1].
        generator: optional random generator, for reproducible draws.

    Returns:
        ``(B, *shape)`` ``torch.long`` tensor of 0/1 on the device of ``x``.
    """
    return dynamic_binarize(x.to(torch.float32) * 255.0, generator)


def _is_intensities(ds: Dataset) -> bool:
    """Real values in [0, 1] (not dequantized: those are discrete data made continuous)."""
    if ds.num_values is not None or ds.dequantized_from is not None:
        return False
    return all(bool(((x >= 0) & (x <= 1)).all()) for x in (ds.train, ds.val, ds.test))


def _binarize(ds: Dataset, mode: str | None, seed: int) -> Dataset:
    """``ds`` with intensities made 0/1: ``mode`` None (unchanged), ``"threshold"`` (x >= 128 for
    8-bit data, x >= 0.5 for real values in [0, 1]) or ``"dynamic"`` (see :func:`dynamic_binarize`,
    :func:`bernoulli_binarize`); shapes and labels unchanged."""
    if mode is None:
        return ds
    intensities = _is_intensities(ds)
    if ds.num_values != 256 and not intensities:
        if ds.num_values == 2:
            what = "num_values=2: it is binary already (leave --binarize out)"
        elif ds.num_values is not None:
            what = f"num_values={ds.num_values} (if these are 8-bit intensities, pass num_values=256, --num-values 256)"
        else:
            what = "real values outside [0, 1]" if ds.dequantized_from is None else "dequantized values"
        raise DataError(
            f"binarize={mode!r} applies to 8-bit intensities (num_values=256) or to real intensities in "
            f"[0, 1]; dataset {ds.name!r} has {what}"
        )
    cut, draw = (0.5, bernoulli_binarize) if intensities else (128, dynamic_binarize)
    values = ds.values
    if mode == "threshold":
        return replace(
            ds,
            train=(ds.train >= cut).to(torch.uint8),
            val=(ds.val >= cut).to(torch.uint8),
            test=(ds.test >= cut).to(torch.uint8),
            num_values=2,
            description=f"{ds.description}; binarized: x >= {cut}",
            values=None if values is None else values.then(f"binarized (x >= {cut}) -> K=2"),
        )
    # Dynamic: val and test are drawn once (reproducibly from `seed`) so evaluations compare;
    # train keeps intensities and is re-drawn for every mini-batch by the trainer.
    generator = torch.Generator().manual_seed(seed)
    p = "x" if intensities else "x / 255"
    return replace(
        ds,
        val=draw(ds.val, generator).to(torch.uint8),
        test=draw(ds.test, generator).to(torch.uint8),
        num_values=2,
        train_transform=draw,
        description=f"{ds.description}; dynamically binarized",
        values=None if values is None else values.then(f"dynamically binarized (Bernoulli({p}) per batch) -> K=2"),
    )


def _with_num_values(ds: Dataset, num_values: int | None) -> Dataset:
    """``ds`` with K = ``num_values`` (None: unchanged) instead of its own K: discrete data whose
    largest value is below it; text and audio only with their own K."""
    if num_values is None or num_values == ds.num_values:
        return ds
    from chainrule.data.values import ValueRangeError  # the one module of data/ this one needs

    if isinstance(num_values, bool) or not isinstance(num_values, int) or num_values < 2:
        raise DataError(f"num_values (--num-values) must be an integer >= 2, got {num_values!r}")
    if ds.num_values is None:
        raise ValueRangeError(f"num_values={num_values} (--num-values) is for discrete data; dataset {ds.name!r} is "
                              "real-valued", None, num_values, "real values")
    if ds.is_text or ds.is_audio:
        what = "its tokenizer's vocabulary" if ds.is_text else "8-bit mu-law codes"
        raise DataError(f"num_values={num_values} (--num-values): dataset {ds.name!r} has K={ds.num_values} "
                        f"({what}); leave --num-values out")
    high = max(int(x.max()) for x in (ds.train, ds.val, ds.test) if x.numel())
    if high >= num_values:
        raise ValueRangeError(
            f"{ds.name}: holds the value {high}, but num_values={num_values} (--num-values {num_values}) allows "
            f"only 0..{num_values - 1}; K must exceed the largest value: give K >= {high + 1}, or leave it out "
            f"(K={ds.num_values})", high, num_values, f"values 0..{high}")
    return replace(ds, num_values=num_values, description=f"{ds.description}; K={num_values} (given)")


def uniform_dequantize(x: torch.Tensor, num_values: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(x + u) / K`` with fresh ``u ~ U[0, 1)`` per value: discrete ``(B, *shape)`` -> float32 in [0, 1)."""
    u = torch.rand(x.shape, generator=generator, device=x.device if generator is None else generator.device)
    return (x.to(torch.float32) + u.to(x.device)) / num_values


def _dequantize(ds: Dataset, seed: int) -> Dataset:
    """``ds`` with discrete values made float32 in [0, 1) by :func:`uniform_dequantize`; shapes
    and labels unchanged."""
    if ds.num_values is None:
        raise DataError(f"dequantize applies to discrete data; dataset {ds.name!r} is already real-valued")
    if ds.train_transform is not None:
        raise DataError("dequantize cannot be combined with dynamic binarization")
    k = ds.num_values
    generator = torch.Generator().manual_seed(seed)
    # val/test noise drawn once (reproducible comparisons); train noise fresh for every batch
    return replace(
        ds,
        train=ds.train.to(torch.float32),
        val=uniform_dequantize(ds.val, k, generator),
        test=uniform_dequantize(ds.test, k, generator),
        num_values=None,
        train_transform=lambda batch, g: uniform_dequantize(batch, k, g),
        description=f"{ds.description}; uniformly dequantized to [0, 1): (x + u) / {k}",
        dequantized_from=k,
        values=None if ds.values is None else ds.values.then(f"dequantized ((x + u) / {k}) -> real-valued"),
    )


class Standardization:
    """Per-dimension standardization of real-valued data, z = (x - mean) / std, with the statistics
    of the training split only (no peeking at validation or test data).

    A model fitted to z is a density of x through the change of variables
    ``log p(x) = log p(z) - sum_d log std_d`` (the Jacobian of x -> z), so NLLs reported in the
    data's units add :attr:`log_det` (``sum_d log std_d``) to the model's NLL of z; samples of z
    map back with :meth:`invert`. When to use it: real-valued data whose coordinates have very
    different scales, or a scale far from 1 (e.g. values in the hundreds, or 1e-3): the models'
    initializations and learning rates assume values of order 1. Intensities in [0, 1] and
    dequantized data do not need it.

    ``mean``, ``std``: ``(*shape)`` float tensors (a dimension with std 0 gets std 1: it is constant,
    and a density of it would be degenerate anyway).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float64)
        std = torch.as_tensor(std, dtype=torch.float64)
        if mean.shape != std.shape or not torch.isfinite(mean).all() or not torch.isfinite(std).all() \
                or (std <= 0).any():
            raise DataError("standardization: mean and std must be finite tensors of one shape, std > 0")
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, train: torch.Tensor) -> Standardization:
        """The statistics of a training split ``(N, *shape)`` (N >= 2)."""
        if len(train) < 2:
            raise DataError("--standardize needs at least 2 training examples to estimate a scale")
        x = train.to(torch.float64)
        std = x.std(0)
        return cls(x.mean(0), torch.where(std > 0, std, torch.ones_like(std)))

    @property
    def log_det(self) -> float:
        """``sum_d log std_d``, nats: add it to an NLL of z for the NLL of x."""
        return float(self.std.log().sum())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """z = (x - mean) / std, ``(B, *shape)``, in ``x``'s float dtype."""
        return ((x.to(torch.float64) - self.mean) / self.std).to(x.dtype if x.dtype.is_floating_point else torch.float32)

    def invert(self, z: torch.Tensor) -> torch.Tensor:
        """x = z * std + mean, ``(B, *shape)``."""
        dev = z.device
        return (z.detach().cpu().to(torch.float64) * self.std + self.mean).to(z.dtype).to(dev)

    def dataset(self, ds: Dataset) -> Dataset:
        """``ds`` with every split standardized (the labels unchanged)."""
        if ds.num_values is not None:
            raise DataError(f"--standardize applies to real-valued data; {ds.name} is discrete (K={ds.num_values})")
        return replace(ds, train=self.apply(ds.train), val=self.apply(ds.val), test=self.apply(ds.test),
                       description=f"{ds.description} (standardized with the training split's mean and std)")

    def to_dict(self) -> dict[str, list]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> Standardization:
        try:
            return cls(torch.tensor(d["mean"], dtype=torch.float64), torch.tensor(d["std"], dtype=torch.float64))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"the run's standardization is damaged ({exc})") from None
