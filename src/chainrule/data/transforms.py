"""Transforms of a whole :class:`Dataset`: binarization (fixed or dynamic) and uniform dequantization.

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


def _binarize(ds: Dataset, mode: str | None, seed: int) -> Dataset:
    """``ds`` with 8-bit intensities made 0/1: ``mode`` None (unchanged), ``"threshold"``
    (x >= 128) or ``"dynamic"`` (see :func:`dynamic_binarize`); shapes and labels unchanged."""
    if mode is None:
        return ds
    if ds.num_values != 256:
        raise DataError(
            f"binarize={mode!r} applies to 8-bit intensities (num_values=256); dataset "
            f"{ds.name!r} has num_values={ds.num_values}"
        )
    if mode == "threshold":
        return replace(
            ds,
            train=(ds.train >= 128).long(),
            val=(ds.val >= 128).long(),
            test=(ds.test >= 128).long(),
            num_values=2,
            description=f"{ds.description}; binarized: x >= 128",
        )
    # Dynamic: val and test are drawn once (reproducibly from `seed`) so evaluations compare;
    # train keeps intensities and is re-drawn for every mini-batch by the trainer.
    generator = torch.Generator().manual_seed(seed)
    return replace(
        ds,
        val=dynamic_binarize(ds.val, generator),
        test=dynamic_binarize(ds.test, generator),
        num_values=2,
        train_transform=dynamic_binarize,
        description=f"{ds.description}; dynamically binarized",
    )


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
    )
