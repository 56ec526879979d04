"""The :class:`Dataset` type: three splits of examples, optionally with class labels.

This module is the base of :mod:`chainrule.data`: it imports nothing else of the package (but
the type of ``Dataset.values``, for type checkers), and every other module of it may import
:class:`Dataset` from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from chainrule.errors import DataError

if TYPE_CHECKING:
    from chainrule.data.values import ValueSummary

#: Names of the three splits, in order; ``Dataset.<split>`` and ``Dataset.<split>_labels``.
SPLITS: tuple[str, str, str] = ("train", "val", "test")


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on tensors is ambiguous
class Dataset:
    """A dataset split three ways, ready for training.

    Attributes:
        name: registered name, or the path the data was read from.
        train, val, test: ``(N, *shape)`` tensors; for discrete data integers in
            ``0..num_values-1`` at their natural width (:func:`storage_dtype`: ``uint8`` for K <= 256,
            8x less memory than ``int64``; models take any integer type and widen each batch),
            ``float32`` for real-valued data.
            Exception: with dynamic binarization ``train`` holds intensities (``0..255``, or
            floats in [0, 1]) and ``train_transform`` turns each mini-batch into 0/1.
        shape: event shape of one example, e.g. ``(1, 28, 28)`` or ``(64,)``.
        num_values: number of values K of discrete data, ``None`` for real-valued data.
        is_image: True when ``shape`` is ``(C, H, W)`` with 1 or 3 channels.
        train_transform: ``f(batch, generator) -> batch`` that the trainer applies to every
            training mini-batch ``(B, *shape)``, or None.
        description: one line saying what the data is.
        sample_rate: for audio, the sampling rate in Hz (the values are mu-law codes 0..255).
        tokenizer: for text, the :class:`~chainrule.text.tokenizers.Tokenizer` of the token ids.
        dequantized_from: K when the data are discrete values 0..K-1 made continuous by uniform
            dequantization, y = (x + u) / K with u ~ U[0, 1)^D (Theis et al. 2016); then
            -log p(y) + D log K bounds the NLL of the discrete data from above, comparable with the
            discrete models' (see :meth:`discrete_nll_offset_nats`). None otherwise.
        train_labels, val_labels, test_labels: ``(N,)`` ``torch.long`` class indices in
            ``0..num_classes-1``, one per example of the split of the same name (row ``i`` of
            ``train_labels`` labels ``train[i]``); all three or none (None: unlabelled data).
        num_classes: number of classes C of the labels, None when there are no labels.
        class_names: ``C`` names of the classes, ``class_names[c]`` for label ``c``; None when
            unknown or unlabelled.
        values: for the user's files, how their values were read (inferred K, or real-valued)
            and what a transform did next; ``values.line()`` is the line ``chainrule train``
            prints. None for the registered datasets, text and audio (their K is fixed).
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    shape: tuple[int, ...]
    num_values: int | None
    is_image: bool
    train_transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None
    description: str = ""
    dequantized_from: int | None = None
    tokenizer: Any = None
    sample_rate: int | None = None
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    values: ValueSummary | None = None

    @property
    def is_audio(self) -> bool:
        """True for audio: windows of 8-bit mu-law codes; ``sample_rate`` in Hz."""
        return self.sample_rate is not None

    @property
    def is_text(self) -> bool:
        """True for text datasets: examples are windows of token ids, ``tokenizer`` decodes them."""
        return self.tokenizer is not None

    def discrete_nll_offset_nats(self) -> float:
        """D log K for dequantized data (add it to a density's NLL in nats), else 0."""
        if self.dequantized_from is None:
            return 0.0
        return math.prod(self.shape) * math.log(self.dequantized_from)

    def values_line(self) -> str:
        """The one line saying how the values were read — :attr:`values`'s for the user's files (what
        ``chainrule train`` prints), and for the registered datasets, text and audio, whose K is fixed,
        a line of the same form."""
        if self.values is not None:
            return self.values.line()
        if self.num_values is None:
            what = "real values" + (f" (dequantized from K={self.dequantized_from})" if self.dequantized_from else "")
        else:
            kind = ("tokens" if self.is_text else "mu-law codes" if self.is_audio else "values")
            what = f"{kind} 0..{self.num_values - 1} -> K={self.num_values}"
        return f"data: {self.name}: {what} (fixed by the dataset)"

    def limited(self, n: int | None) -> Dataset:
        """The dataset with only the first ``n`` examples of each split (and their labels); None: all.
        ``chainrule train --limit N`` / ``eval --limit N`` (a quick trial of a command)."""
        if n is None:
            return self
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"limit must be a positive integer (examples per split), got {n!r}")
        parts: dict[str, Any] = {}
        for split in SPLITS:
            x, y = self.split(split)
            parts[split] = x if len(x) <= n else x[:n]
            if y is not None:
                parts[f"{split}_labels"] = y[:n]
        return replace(self, **parts)

    def labels(self, split: str) -> torch.Tensor | None:
        """The ``(N,)`` long class labels of ``split`` (``"train"``, ``"val"`` or ``"test"``),
        aligned with its examples; None for unlabelled data."""
        return getattr(self, f"{_check_split(split)}_labels")

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(examples (N, *shape), labels (N,) or None)`` of ``split`` (``"train"``, ``"val"`` or
        ``"test"``)."""
        split = _check_split(split)
        return getattr(self, split), getattr(self, f"{split}_labels")

    def __post_init__(self) -> None:
        for split in SPLITS:
            x = getattr(self, split)
            if tuple(x.shape[1:]) != tuple(self.shape):
                raise DataError(
                    f"dataset {self.name!r}: {split} has examples of shape {tuple(x.shape[1:])}, "
                    f"expected {tuple(self.shape)}"
                )
            dynamic = split == "train" and self.train_transform is not None  # turned into values per batch
            if self.num_values is not None and not dynamic and (x.dtype.is_floating_point or x.dtype.is_complex
                                                                  or x.dtype == torch.bool):
                raise DataError(f"dataset {self.name!r}: discrete {split} is {x.dtype}, expected an integer "
                                f"type ({storage_dtype(self.num_values)} holds K={self.num_values})")
            if self.num_values is None and not x.dtype.is_floating_point:
                raise DataError(f"dataset {self.name!r}: real-valued {split} is {x.dtype}, expected a float dtype")
        self._check_labels()

    def _check_labels(self) -> None:
        """Labels: all three splits or none, ``(N,)`` long, values ``0..num_classes-1``."""
        labelled = [s for s in SPLITS if getattr(self, f"{s}_labels") is not None]
        if not labelled:
            if self.num_classes is not None:
                raise DataError(
                    f"dataset {self.name!r}: num_classes={self.num_classes} but no labels; expected "
                    "train_labels, val_labels and test_labels, or num_classes=None"
                )
            if self.class_names is not None:
                raise DataError(f"dataset {self.name!r}: class_names given but no labels; expected class_names=None")
            return
        if len(labelled) != len(SPLITS):
            missing = [f"{s}_labels" for s in SPLITS if s not in labelled]
            raise DataError(
                f"dataset {self.name!r}: {', '.join(missing)} missing while "
                f"{', '.join(f'{s}_labels' for s in labelled)} given; expected labels for every split or none"
            )
        c = self.num_classes
        if c is None:
            raise DataError(
                f"dataset {self.name!r}: labels given but num_classes is None; expected the number of classes"
            )
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise DataError(f"dataset {self.name!r}: num_classes={c!r}, expected a positive int")
        for split in SPLITS:
            y, n = getattr(self, f"{split}_labels"), len(getattr(self, split))
            if not isinstance(y, torch.Tensor):
                raise DataError(
                    f"dataset {self.name!r}: {split}_labels is a {type(y).__name__}, expected a torch.Tensor"
                )
            if y.dtype != torch.long:
                raise DataError(f"dataset {self.name!r}: {split}_labels is {y.dtype}, expected torch.long")
            if y.dim() != 1 or len(y) != n:
                raise DataError(
                    f"dataset {self.name!r}: {split}_labels has shape {tuple(y.shape)}, expected ({n},): "
                    f"one label per example of {split}"
                )
            if y.numel() and not (0 <= int(y.min()) and int(y.max()) < c):
                bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
                raise DataError(
                    f"dataset {self.name!r}: {split}_labels holds {bad}, expected class indices 0..{c - 1} "
                    f"(num_classes={c})"
                )
        if self.class_names is not None:
            names = self.class_names
            if isinstance(names, str) or not all(isinstance(s, str) for s in names):
                raise DataError(f"dataset {self.name!r}: class_names must be a sequence of str, got {names!r}")
            names = tuple(names)
            if len(names) != c:
                raise DataError(
                    f"dataset {self.name!r}: {len(names)} class_names for num_classes={c}; expected one name per class"
                )
            object.__setattr__(self, "class_names", names)  # frozen: normalize a list to a tuple

    def __repr__(self) -> str:  # the default repr would print the tensors
        return (
            f"Dataset(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, shape={self.shape}, num_values={self.num_values}, "
            f"is_image={self.is_image}, dynamic={self.train_transform is not None}, "
            f"num_classes={self.num_classes})"
        )


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")
    return split


def storage_dtype(num_values: int) -> torch.dtype:
    """The narrowest integer type that holds the values ``0..num_values-1``: ``uint8`` (K <= 256),
    ``int16`` (K <= 32,768), ``int32``, else ``int64``. (Signed beyond 8 bits: torch's ``uint16``
    has no indexing or arithmetic kernels.) Batches become ``int64`` on their way into a model
    (``validate``), so only the stored dataset is narrow."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if num_values - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def _to_dataset(
    name: str,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    num_values: int | None,
    description: str,
    *,
    labels: Sequence[np.ndarray] | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    values: ValueSummary | None = None,
) -> Dataset:
    """Build a Dataset from numpy splits already shaped ``(N, *shape)`` and, optionally, their
    labels ``(train (N_train,), val (N_val,), test (N_test,))`` of integers ``0..num_classes-1``
    and the summary of how their values were read (``values``)."""
    splits = {"train": train, "val": val, "test": test}
    # discrete values at their natural width (binarized MNIST: 39 MB as uint8, 314 MB as int64)
    dtype = torch.empty(0, dtype=storage_dtype(num_values)).numpy().dtype if num_values is not None else np.float32
    tensors = {split: torch.from_numpy(np.array(x, dtype=dtype)) for split, x in splits.items()}
    if labels is not None:
        tensors.update(
            {f"{split}_labels": torch.from_numpy(np.array(y, dtype=np.int64)) for split, y in zip(SPLITS, labels)}
        )
    shape = tuple(int(s) for s in train.shape[1:])
    return Dataset(
        name=name,
        **tensors,
        shape=shape,
        num_values=num_values,
        is_image=len(shape) == 3 and shape[0] in (1, 3),
        description=description,
        num_classes=num_classes,
        class_names=None if class_names is None else tuple(class_names),
        values=values,
    )
