"""What the training loop reports, and to whom: callbacks.

:meth:`Trainer.fit <chainrule.training.trainer.Trainer.fit>` trains and calls hooks; everything it
writes besides checkpoints is a :class:`Callback` (the design of minGPT's trainer, whose loop
triggers a list of callbacks). A trainer installs three by default, before any of the user's
(``Trainer(..., callbacks=[...])``, or appended to ``trainer.callbacks``):

- :class:`CSVLog`: ``RUN/log.csv``, one row per epoch (``LOG_FIELDS``, plus a model's own
  ``log_fields``); a resume rewrites it to hold exactly the checkpoint's history first.
- :class:`TensorBoardLog`: event files in ``RUN/tensorboard/`` when the ``tensorboard`` package is
  installed (``pip install 'chainrule[tensorboard]'``; ``config.tensorboard``: None = when
  installed, False = never): every epoch's row, and a per-step curve of at most ~100 points an
  epoch (each the mean of the batches since the previous one).
- :class:`ProgressBars`: the epoch bar (its total the epochs the time budget holds, its label why
  it may end sooner) and each epoch's step bar with the running training loss (per token for
  sequence data, ``Trainer(unit=...)``); log records emitted meanwhile are written above the bars.

The hooks, in the order the loop calls them (each does nothing unless overridden):
``on_fit_start(trainer, state, resume)``; per epoch ``on_steps_start(trainer, epoch, first,
last)``, ``on_step(trainer, step)`` after every optimizer step (a :class:`Step`),
``on_steps_end(trainer)`` (also when a step raised), ``on_epoch_end(trainer, row, state)`` once the
epoch is validated (``row``: the epoch's ``log.csv`` row, also in ``state.result.history``;
``trainer.stopping`` says why the run ends after it, None when it goes on); and
``on_fit_end(trainer, state)``, also after an error or an interrupt. A run that the time budget
stops inside an epoch ends with an ``on_epoch_end`` whose row has a fractional ``epoch`` (and
``state.batch > 0``). Under DDP the hooks run on every rank, with the same rows (a :class:`Step`
holds the rank's own slice); write files on ``trainer.is_main`` only. A model fitted in one pass
(``closed_form``) gets ``on_fit_start``, one ``on_epoch_end`` and ``on_fit_end``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from chainrule.io.checkpoint import atomic_write
from chainrule.io.run_state import TENSORBOARD_DIR

if TYPE_CHECKING:
    from chainrule.training.state import TrainState
    from chainrule.training.trainer import Trainer

log = logging.getLogger("chainrule.training.trainer")  # the trainer's messages, under the trainer's name

LOG_FIELDS = ("epoch", "train_nll_nats", "val_nll_nats", "val_bits_per_dim", "val_nats_per_dim", "lr", "seconds")


@dataclass
class Step:
    """One optimizer step, as :meth:`Callback.on_step` sees it. Under DDP the NLLs and examples
    are this rank's slice of the global batch."""

    epoch: int  # counted from 1
    batch: int  # the batch's index in the epoch, from 0
    batches: int  # the batches the epoch will have taken when it ends
    steps_per_epoch: int
    step: int  # optimizer steps taken, this one included
    lr: float
    nll_sum: float  # the batch's summed NLL, nats
    examples: int  # the batch's examples
    epoch_nll_sum: float  # the epoch's running sum (a resumed epoch's earlier batches included)
    epoch_examples: int


class Callback:
    """A hook the training loop calls (see the module's description); override what you need."""

    def on_fit_start(self, trainer: Trainer, state: TrainState, resume: bool) -> None:
        pass

    def on_steps_start(self, trainer: Trainer, epoch: int, first: int, last: int) -> None:
        """Epoch ``epoch`` (from 1) trains batches ``first`` (> 0: resumed inside it) to ``last``."""

    def on_step(self, trainer: Trainer, step: Step) -> None:
        pass

    def on_steps_end(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], state: TrainState) -> None:
        pass

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        pass


class CSVLog(Callback):
    """``out_dir/log.csv`` (rank 0, with an ``out_dir``): a new log, or on a resume the log
    rewritten to hold exactly the checkpoint's history, so that a row written after the checkpoint
    (the process was killed between the two) is not there twice once its epoch is redone."""

    def __init__(self) -> None:
        self.file: Any = None

    def on_fit_start(self, trainer: Trainer, state: TrainState, resume: bool) -> None:
        if trainer.out_dir is None or not trainer.is_main:
            return
        trainer.out_dir.mkdir(parents=True, exist_ok=True)
        path = trainer.out_dir / "log.csv"
        if not resume:
            self.file = open(path, "w", newline="")
            return

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                for row in state.result.history:
                    self._write(trainer, f, row)
        atomic_write(path, write)
        self.file = open(path, "a", newline="")

    @staticmethod
    def _write(trainer: Trainer, f: Any, row: dict[str, float]) -> None:
        # a model with its own objective may log more columns (the VQ-VAE: codebook usage)
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS + tuple(getattr(trainer.model, "log_fields", ())))
        if f.tell() == 0:
            writer.writeheader()
        writer.writerow(row)
        f.flush()

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], state: TrainState) -> None:
        if self.file is not None:
            self._write(trainer, self.file, row)

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class TensorBoardLog(Callback):
    """Event files in ``out_dir/tensorboard/`` (rank 0, with an ``out_dir``, unless
    ``config.tensorboard`` is False or the package is missing in auto mode). A resume hides the
    events logged after its checkpoint (those steps are redone; the checkpoint's own step was
    logged before it was written)."""

    def __init__(self) -> None:
        self.writer: Any = None
        self.every, self.sum, self.count = 1, 0.0, 0

    def on_fit_start(self, trainer: Trainer, state: TrainState, resume: bool) -> None:
        if trainer.out_dir is None or not trainer.is_main or trainer.config.tensorboard is False:
            return
        writer = summary_writer()
        if writer is not None:
            purge_step = state.step + 1 if resume else None
            self.writer = writer(log_dir=str(trainer.out_dir / TENSORBOARD_DIR), purge_step=purge_step or None)

    def on_steps_start(self, trainer: Trainer, epoch: int, first: int, last: int) -> None:
        # a scalar costs ~0.1-0.3 ms: 5% of a small model's step, hence ~100 points an epoch
        self.every, self.sum, self.count = max(1, trainer.steps_per_epoch // 100), 0.0, 0

    def on_step(self, trainer: Trainer, step: Step) -> None:
        if self.writer is None:  # rank 0's share of the batches under DDP (the epoch's rows are global)
            return
        self.sum, self.count = self.sum + step.nll_sum, self.count + step.examples
        if step.step % self.every == 0 or step.batch + 1 >= step.batches:
            # + nll_offset: the NLL of the data as given, as in the epoch rows (standardized data: of x, not z)
            self.writer.add_scalar("train/batch_nll_nats", self.sum / max(self.count, 1) + trainer.nll_offset, step.step)
            self.writer.add_scalar("train/lr", step.lr, step.step)
            self.sum, self.count = 0.0, 0

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], state: TrainState) -> None:
        """The row as scalars at optimizer step ``state.step`` (and flushed: a killed run keeps its
        finished epochs)."""
        if self.writer is None:
            return
        tags = {"train_nll_nats": "train/nll_nats", "val_nll_nats": "val/nll_nats",
                "val_bits_per_dim": "val/bits_per_dim", "val_nats_per_dim": "val/nats_per_dim"}
        for key, tag in tags.items():
            if key in row:
                self.writer.add_scalar(tag, row[key], state.step)
        self.writer.add_scalar("epoch", row["epoch"], state.step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBars(Callback):
    """The bars of ``Trainer(progress=True)`` (rank 0): the epochs (out of ``config.epochs``, a
    ceiling when early stopping or a time budget may end the run sooner, as its label says; with a
    budget its total becomes the epochs the budget holds) and, inside each epoch, its steps with
    the running training loss. Nothing for a model fitted in one pass (no steps)."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.steps: Any = None
        self.redirect: Any = None
        self.epoch_seconds: list[float] = []  # of this fit call's epochs: the bar's total follows the budget
        self.epoch_start = 0.0

    def _show(self, trainer: Trainer) -> bool:
        return bool(trainer.progress) and trainer.is_main

    def on_fit_start(self, trainer: Trainer, state: TrainState, resume: bool) -> None:
        if trainer.total_steps == 0:
            return
        c, show = trainer.config, self._show(trainer)
        may_stop = ("early stopping" if trainer.validating and c.patience is not None else
                    "time budget" if c.max_seconds is not None else "")
        self.bar = tqdm(total=c.epochs, initial=min(state.epoch, c.epochs),
                        desc=f"train ({may_stop})" if may_stop else "train", unit="epoch", disable=not show)
        self.epoch_seconds = []
        # log lines go through tqdm.write while bars are shown, so they do not glue onto a bar
        self.redirect = logging_redirect_tqdm(tqdm_class=tqdm) if show else contextlib.nullcontext()
        self.redirect.__enter__()

    def on_steps_start(self, trainer: Trainer, epoch: int, first: int, last: int) -> None:
        self.epoch_start = time.perf_counter()
        # closed when the epoch's steps end (leave=False: it disappears, the epoch bar stays)
        self.steps = tqdm(total=last, initial=first, desc=f"epoch {epoch}", unit="step", leave=False,
                          disable=not self._show(trainer))

    def on_step(self, trainer: Trainer, step: Step) -> None:
        bar = self.steps
        if bar is None:
            return
        bar.set_postfix(self._loss_postfix(trainer, step.epoch_nll_sum, step.epoch_examples), refresh=False)
        if trainer.config.max_seconds is not None:  # the bar ends where the budget will (not at a 10^9-step epoch's end)
            budget = trainer.budget.steps_within(step.batch + 1, step.batches - step.batch - 1)
            if budget is not None and budget < step.batches and abs(bar.total - budget) > 0.01 * budget:
                bar.total = budget
                bar.set_description(f"epoch {step.epoch} (time budget)")
        bar.update(1)

    def on_steps_end(self, trainer: Trainer) -> None:
        if self.steps is not None:
            self.steps.close()
            self.steps = None

    def on_epoch_end(self, trainer: Trainer, row: dict[str, float], state: TrainState) -> None:
        bar = self.bar
        if bar is None:
            return
        bar.set_postfix(self._epoch_postfix(trainer, row), refresh=False)
        if state.batch:  # the time budget stopped training inside the epoch
            bar.set_description(f"train (time budget reached in epoch {state.epoch + 1})")
            return
        bar.update(1)  # after the epoch (not when the next begins): ends at the right count
        self.epoch_seconds.append(time.perf_counter() - self.epoch_start)
        if trainer.stopping is None:  # the epochs the budget still holds: the bar's real end
            more = trainer.budget.epochs_within(self.epoch_seconds)
            if more is not None and state.epoch + more < trainer.config.epochs:
                bar.total = state.epoch + more
                bar.refresh()
        elif state.result.stopped_early:
            bar.set_description(f"train (stopped early; best epoch {state.result.best_epoch})")
        elif state.result.stopped_by_time:
            bar.set_description("train (time budget reached)")

    def on_fit_end(self, trainer: Trainer, state: TrainState) -> None:
        self.on_steps_end(trainer)
        if self.redirect is not None:
            self.redirect.__exit__(None, None, None)
            self.redirect = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @staticmethod
    def _loss_postfix(trainer: Trainer, total: float, count: int) -> dict[str, str]:
        """The step bar's running training loss: per token for sequence data (``trainer.unit``), else per example."""
        mean = total / max(count, 1) + trainer.nll_offset
        if trainer.unit:
            return {f"train_nats_per_{trainer.unit}": f"{mean / trainer.model.dim:.4g}"}
        return {"train_nll_nats": f"{mean:.4g}"}

    @staticmethod
    def _epoch_postfix(trainer: Trainer, row: dict[str, float]) -> dict[str, str]:
        """The epoch bar's figures of a log row: nats per example, or per token (``trainer.unit``)."""
        out = {}
        for k, v in row.items():
            if k.endswith("nll_nats"):
                if trainer.unit:
                    out[f"{k[:-len('nll_nats')]}nats_per_{trainer.unit}"] = f"{v / trainer.model.dim:.4g}"
                else:
                    out[k] = f"{v:.4g}"
        return out


def summary_writer() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or None when the tensorboard package is missing
    (or broken: a warning, and training goes on with ``log.csv`` only)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    except Exception as exc:  # e.g. a protobuf mismatch inside tensorboard: not worth failing a run over
        log.warning("tensorboard is installed but cannot be imported (%s); writing log.csv only", exc)
        return None
    return SummaryWriter


def default_callbacks() -> list[Callback]:
    """What every trainer installs before the user's callbacks: the CSV log, TensorBoard, the bars."""
    return [CSVLog(), TensorBoardLog(), ProgressBars()]
