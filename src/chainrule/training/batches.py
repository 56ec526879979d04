"""The training data as the loop sees it: checked once, then drawn batch by batch in an order that
is a function of the seed and the position only.

Each epoch's permutation (or, with ``steps_per_epoch``, each batch's random examples) and each
batch's ``train_transform`` generator (dynamic binarization) come from generators seeded by
:func:`~chainrule.training.config.derived_seed` of ``(seed, epoch[, batch])``: a run resumed at
batch k of epoch e regenerates that epoch's order and continues at batch k, nothing replayed. (This
derivation changed the exact data order, hence the numbers, of runs compared to versions that drew
the order from one running generator.) Under DDP every rank draws the same global batch and takes
its disjoint slice of it (:func:`chainrule.training.distributed.shard`).
"""

from __future__ import annotations

from typing import Any

import torch

from chainrule.contract import ARModel
from chainrule.errors import InputError
from chainrule.inference.likelihood import context_rows
from chainrule.training import distributed as dist_utils
from chainrule.training.config import derived_seed

_TAG_EPOCH, _TAG_BATCH = 1, 2


def check_data(model: ARModel, train: Any, val: Any, train_context: Any, val_context: Any, transform: Any,
               seed: int) -> tuple[Any, Any]:
    """Refuse empty splits and contexts that do not match their split; validate the whole training
    set once up front, so that a bad value is reported before hours of work (a lazily indexed set,
    such as the windows of a text, or one transformed per batch, is checked on a sample). Returns
    the two contexts."""
    if len(train) == 0:
        raise InputError("the training set is empty (0 examples)")
    if val is not None and len(val) == 0:
        raise InputError("the validation set is empty (0 examples); pass val=None to train without one")
    train_context = check_context(train_context, len(train), "train")
    val_context = check_context(val_context, None if val is None else len(val), "val")
    if isinstance(train, torch.Tensor) and transform is None:
        for start in range(0, len(train), 8192):  # in chunks: no int64 copy of a whole uint8 set
            model.validate(train[start:start + 8192])
    else:
        probe = train[torch.arange(min(len(train), 1024))]
        model.validate(probe if transform is None else transform(probe, torch.Generator().manual_seed(seed)))
    return train_context, val_context


def check_context(context: Any, n: int | None, split: str) -> Any:
    """``context`` (None, or one row per example of the ``split`` set of ``n`` examples)."""
    if context is None:
        return None
    if n is None:
        raise InputError(f"{split}_context was given without {split} data")
    if isinstance(context, torch.Tensor) and context.dim() >= 1 and len(context) != n:
        raise InputError(f"{split}_context has {len(context)} rows but the {split} set has {n} examples")
    return context


def epoch_order(seed: int, n: int, epoch: int, steps_per_epoch: int | None = None) -> torch.Tensor | None:
    """Epoch ``epoch``'s permutation of the ``n`` training examples (None with ``steps_per_epoch``:
    every batch draws its own examples); a function of ``(seed, epoch)`` only."""
    if steps_per_epoch is not None:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, _TAG_EPOCH, epoch)))


def batch_rng(seed: int, epoch: int, b: int) -> torch.Generator:
    """The generator of batch ``b`` of epoch ``epoch`` (its random examples with
    ``steps_per_epoch``, then its ``train_transform``): a function of ``(seed, epoch, b)``."""
    return torch.Generator().manual_seed(derived_seed(seed, _TAG_BATCH, epoch, b))


def draw(model: ARModel, train: Any, context: Any, transform: Any, perm: torch.Tensor | None, seed: int,
         batch_size: int, epoch: int, b: int, world_size: int = 1) -> tuple[torch.Tensor, Any, int]:
    """Batch ``b`` of epoch ``epoch`` (``perm``: the epoch's :func:`epoch_order`), validated by
    ``model`` — this rank's slice of it under DDP — with its context rows and the size of the
    global batch."""
    g = batch_rng(seed, epoch, b)
    idx = torch.randint(len(train), (batch_size,), generator=g) if perm is None else perm[b * batch_size:(b + 1) * batch_size]
    global_size = len(idx)
    if world_size > 1:  # this rank's disjoint slice of the global batch every rank drew
        mine = dist_utils.shard(global_size)
        if transform is not None:  # transformed whole: the same batch as one process's
            batch = transform(train[idx], g)[mine]
        else:
            batch = train[idx[mine]]
        idx = idx[mine]
    else:
        batch = train[idx]
        if transform is not None:
            batch = transform(batch, g)
    x, _ = model.validate(batch)
    return x, context_rows(context, idx, len(train)), global_size
