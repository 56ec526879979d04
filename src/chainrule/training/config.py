"""Training settings: :class:`TrainConfig` (validated once, stored in every checkpoint) and the
seeds the trainer derives from it (:func:`derived_seed`)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from chainrule.errors import InputError
from chainrule.inference.likelihood import EVAL_BATCH_SIZE
from chainrule.training.optimizers import OPTIMIZERS
from chainrule.training.precision import PRECISIONS

SCHEDULES = ("constant", "cosine", "plateau")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (all stored in the checkpoint's config.json).

    ``patience``: epochs without validation improvement before stopping (None: never stop early).
    ``max_seconds``: wall-clock budget, checked after every step (see :meth:`Trainer.fit`): training
    stops when what is left would not hold another step, the closing validation and what the caller
    evaluates after ``fit`` (``Trainer(reserve_examples=...)``); a stop inside an epoch writes
    ``last/`` at that position (an exact resume), then validates the weights reached.
    ``grad_clip``: max global gradient norm (None: no clipping).
    ``schedule``: "constant", "cosine" (to ``min_lr`` over all steps, after ``warmup_steps``) or
    "plateau" (halve the rate after ``patience // 2`` epochs without improvement).
    ``steps_per_epoch``: None = one pass over the training set per epoch (shuffled); a number =
    that many batches of random examples drawn with replacement (for huge sets such as every
    window of a text), validating after each such "epoch".
    ``max_steps``: stop after this many optimizer steps in total (None: no limit).
    ``weight_decay`` applies to weight matrices and embeddings (tensors of 2+ dims) only.
    ``save_last``: write ``RUN/last/`` (model + optimizer + RNG states) after every epoch so that
    ``fit(..., resume=True)`` can continue an interrupted run (needs an ``out_dir``).
    ``save_every``: also write ``RUN/last/`` every this-many optimizer steps, with the position
    inside the epoch, so that a resume continues mid-epoch (None: only at epoch ends).
    ``keep_last``: 1 keeps only ``RUN/last/``; K > 1 also keeps the K most recent checkpoints (each
    one written to ``last/``) as ``RUN/checkpoints/step-<step>/`` (same files; needs ``save_last``).
    ``tensorboard``: write TensorBoard event files to ``RUN/tensorboard/`` (rank 0, needs an
    ``out_dir``): None (the default) when the ``tensorboard`` package is installed, True always
    (an error without the package), False never. ``log.csv`` is written either way. Scalars, at
    the optimizer step: ``train/batch_nll_nats`` and ``train/lr`` (every step, or the mean of
    every ``steps_per_epoch // 100`` steps on longer epochs; under DDP rank 0's share of the
    batches), and per epoch ``train/nll_nats``, ``val/nll_nats``, ``val/bits_per_dim``,
    ``val/nats_per_dim`` and ``epoch``.
    ``precision``: the arithmetic of the network's pass while training: "float32"; "bfloat16" or
    "float16" (autocast: matrix products and convolutions in that type; float16 with a
    ``GradScaler``); "auto" (the default): on a CPU, whichever of float32 and bfloat16 (and, for the
    image models, channels-last or NCHW feature maps) ran a few training steps of this model on its
    first batch faster, measured once per machine and model and cached; on a GPU bfloat16 where
    supported, else float16 (:mod:`chainrule.training.precision`).
    The likelihood and the loss are always computed in float32, and evaluation runs in float32.
    ``val_components``: for an ensemble (MADE masks, EoNADE orderings), validate with the
    ensemble of its first this-many components (None: all). Scoring a 32-mask ensemble costs 32
    passes, so validating each epoch with a few keeps early stopping affordable; the final
    evaluation is still over the whole ensemble.
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None
    patience: int | None = 20
    max_seconds: float | None = None
    eval_batch_size: int = EVAL_BATCH_SIZE
    seed: int = 0
    steps_per_epoch: int | None = None
    max_steps: int | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    min_lr: float = 0.0
    val_components: int | None = None
    save_last: bool = True
    precision: str = "auto"
    save_every: int | None = None
    keep_last: int = 1
    tensorboard: bool | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        # integers (a bool is not a count): (name, smallest value, whether None is allowed and what it means)
        for name, low, none in (("epochs", 1, None), ("batch_size", 1, None), ("eval_batch_size", 1, None),
                                ("warmup_steps", 0, None), ("seed", None, None),
                                ("steps_per_epoch", 1, "one pass over the training set"),
                                ("max_steps", 1, "no limit"), ("patience", 0, "never stop early"),
                                ("save_every", 1, "only at epoch ends"), ("keep_last", 1, None),
                                ("val_components", 1, "the whole ensemble")):
            v = getattr(self, name)
            if v is None and none is not None:
                continue
            if not _is_int(v) or (low is not None and v < low):
                expected = "an integer" if low is None else f"an integer >= {low}"
                raise InputError(f"{name} must be {expected}{f' (or None: {none})' if none else ''}, got {v!r}")
        # real numbers: NaN and infinity are refused where they would silently mean something else
        if not _is_real(self.lr) or not math.isfinite(self.lr) or self.lr <= 0:
            raise InputError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not _is_real(self.weight_decay) or not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise InputError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and (not _is_real(self.grad_clip) or not math.isfinite(self.grad_clip)
                                           or self.grad_clip <= 0):
            raise InputError(f"grad_clip must be a finite number > 0 (or None: no clipping), got {self.grad_clip!r}")
        if self.max_seconds is not None and (not _is_real(self.max_seconds) or math.isnan(self.max_seconds)
                                             or self.max_seconds <= 0):
            raise InputError(f"max_seconds must be a number > 0 (or None: no time budget), got {self.max_seconds!r}")
        if not _is_real(self.min_lr) or not 0 <= self.min_lr <= self.lr:
            raise InputError(f"min_lr must be a number in [0, lr] = [0, {self.lr:g}], got {self.min_lr!r}")
        betas = self.betas
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(_is_real(b) and 0 <= b < 1 for b in betas)):
            raise InputError(f"betas must be two numbers in [0, 1), e.g. (0.9, 0.999), got {betas!r}")
        if not isinstance(self.save_last, bool):
            raise InputError(f"save_last must be True or False, got {self.save_last!r}")
        if self.keep_last > 1 and not self.save_last:
            raise InputError(f"keep_last {self.keep_last} keeps copies of last/, which save_last=False turns off: "
                             "use keep_last=1 or save_last=True")
        if self.tensorboard is not None and not isinstance(self.tensorboard, bool):
            raise InputError(f"tensorboard must be True, False or None (when the tensorboard package is "
                             f"installed), got {self.tensorboard!r}")

    def lr_factor(self, step: int, total_steps: int) -> float:
        """The schedule's factor on ``lr`` at optimizer step ``step`` (from 0) of ``total_steps``:
        the linear warm-up, then 1 ("constant", "plateau": the trainer halves it itself) or the
        cosine down to ``min_lr``."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            t = (step - self.warmup_steps) / max(1, total_steps - self.warmup_steps)
            floor = self.min_lr / self.lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0


_MASK64 = (1 << 64) - 1


def derived_seed(*parts: int) -> int:
    """A 64-bit seed mixed (splitmix64) from integers, e.g. ``(seed, tag, epoch, batch)``: the
    seed of the generator that draws one epoch's order or one batch's transform."""
    h = 0
    for part in parts:
        z = (h ^ (int(part) & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        h = z ^ (z >> 31)
    return h


def _is_int(v: Any) -> bool:
    """An integer, not a bool (``True`` is an ``int`` in Python, but never a count)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    """A real number (int or float, NaN and inf included), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)
