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
