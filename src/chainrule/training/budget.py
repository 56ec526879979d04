"""The time budget of a training run (``TrainConfig.max_seconds``).

:class:`TimeBudget` keeps the clock and the measured costs: the mean time of a training step, and
of evaluating one example (measured by the validations; before the first, estimated from the step
time). Training stops when the time left would not hold one more step plus the closing validation
plus the evaluation of ``reserve_examples`` more examples after ``fit`` (a test split, the samples);
the progress bars end where the budget will (:meth:`TimeBudget.steps_within`, :meth:`TimeBudget.epochs_within`).
"""

from __future__ import annotations

import time

import torch

from chainrule.training import distributed as dist_utils


class TimeBudget:
    """``max_seconds`` (None: no budget) counted from :meth:`start`'s ``origin``, for training steps
    of ``batch_size`` examples, keeping the cost of ``reserve_examples`` evaluations after ``fit``
    out of the training. ``world_size`` > 1: rank 0's clock decides for every rank."""

    def __init__(self, max_seconds: float | None, batch_size: int, reserve_examples: int = 0,
                 world_size: int = 1) -> None:
        self.max_seconds, self.batch_size = max_seconds, batch_size
        self.reserve_examples, self.world_size = reserve_examples, world_size
        self.origin = time.perf_counter()
        self.step_seconds, self.steps = 0.0, 0  # of the training steps since start()
        self.eval_seconds_per_example: float | None = None  # measured by the validations
        self.val_examples = 0  # the validation set's size (its cost is part of the budget)

    def start(self, origin: float, val_examples: int) -> None:
        """Count from ``origin`` (a ``time.perf_counter()`` value), with a validation set of
        ``val_examples`` examples; the step times measured so far are forgotten."""
        self.origin, self.val_examples = origin, val_examples
        self.step_seconds, self.steps = 0.0, 0

    def record_step(self, seconds: float) -> None:
        """A training step took ``seconds``."""
        self.step_seconds, self.steps = self.step_seconds + seconds, self.steps + 1

    def seconds_left(self) -> float | None:
        """Seconds of ``max_seconds`` left (None: no budget)."""
        if self.max_seconds is None:
            return None
        return self.max_seconds - (time.perf_counter() - self.origin)

    def mean_step_seconds(self) -> float:
        return self.step_seconds / self.steps if self.steps else 0.0

    def eval_cost(self, examples: int) -> float:
        """Estimated seconds to evaluate ``examples`` examples exactly: at the rate the validations
        measured, else at half a training step's time per example (a forward pass without the
        backward; on the generous side, since evaluation runs in float32 where training may use
        bfloat16)."""
        if examples <= 0:
            return 0.0
        rate = self.eval_seconds_per_example
        if rate is None:
            rate = self.mean_step_seconds() / (2 * self.batch_size)
        return examples * rate

    def binds(self, *, validation: bool) -> bool:
        """True when the time left would not hold one more training step plus (``validation``) the
        closing validation plus the evaluation of ``reserve_examples`` after ``fit``. Under DDP
        rank 0's clock decides for every rank (a collective: every rank calls it)."""
        left = self.seconds_left()
        if left is None:
            return False
        need = self.mean_step_seconds() + self.eval_cost(self.reserve_examples
                                                         + (self.val_examples if validation else 0))
        stop = int(left < need)
        if self.world_size > 1:
            stop = int(dist_utils.broadcast(torch.tensor([stop]))[0])
        return bool(stop)

    def steps_within(self, done: int, remaining_in_epoch: int) -> int | None:
        """The steps an epoch (``done`` taken, ``remaining_in_epoch`` to go) can still take within
        the budget (None: no budget, or not yet measured), for the progress bar's total."""
        left, step = self.seconds_left(), self.mean_step_seconds()
        if left is None or step <= 0:
            return None
        fit = max(0, int((left - self.eval_cost(self.reserve_examples + self.val_examples)) / step))
        return done + min(fit, remaining_in_epoch)

    def epochs_within(self, epoch_seconds: list[float]) -> int | None:
        """The epochs the budget still holds (at least 1) at the mean of ``epoch_seconds``, keeping
        the evaluations after ``fit`` (None: no budget), for the epoch bar's total."""
        left = self.seconds_left()
        if left is None or not epoch_seconds:
            return None
        left -= self.eval_cost(self.reserve_examples)  # the test and the samples after fit
        return max(1, int(left / (sum(epoch_seconds) / len(epoch_seconds))))
