"""A model-agnostic maximum-likelihood trainer (teacher forcing): the loop, and only the loop.

The loss of a batch is the mean over examples of -log p(x | c) / D: nats per variable, so learning
rates transfer between data sizes. The trainer knows nothing of the architecture: the
log-likelihood is :func:`chainrule.inference.likelihood.group_log_probs` over the module call
``model(x, context)`` — so that a ``DistributedDataParallel`` wrapper synchronizes gradients — with
the head in float32 (:func:`chainrule.training.precision.network_nll`). An ensemble is trained one
member per step, drawn from the trainer's own generator and passed as ``member=k``. Every epoch it
evaluates the exact ``log_prob`` on validation data, keeps the best model (``best/``), stops early
when validation NLL stops improving, and writes ``last/``, from which ``fit(..., resume=True)``
continues — also from inside an epoch, bit-identical to an uninterrupted run (tested, also across a
SIGKILL). Under a ``torch.distributed`` process group of W > 1 ranks (``torchrun``; see
:mod:`chainrule.training.distributed`) ``batch_size`` stays the global batch: every rank draws it
and trains on its disjoint ``batch_size / W`` slice, rank 0 validates and broadcasts (identical
decisions everywhere) and alone writes files, logs and bars.

The other jobs live beside the loop: settings in :mod:`~chainrule.training.config`, the data order
in :mod:`~chainrule.training.batches`, the arithmetic in :mod:`~chainrule.training.precision`,
``last/`` and resuming in :mod:`~chainrule.training.state` (the files: :mod:`chainrule.io.run_state`),
SIGINT / SIGTERM in :mod:`~chainrule.training.signals`, the time budget in
:mod:`~chainrule.training.budget`, ``log.csv``, TensorBoard and the bars as
:mod:`~chainrule.training.callbacks`, models fitted by counting in :mod:`~chainrule.training.closed_form`.

Models with their own objective (the VQ-VAE of :mod:`chainrule.latent.vqvae`) set ``own_objective =
True`` and give ``validate(x)``, ``training_loss(x, context) -> (nats (B,), extra scalar)`` (the step
minimizes mean(nats) / D + extra), ``validation_nll(data, context, batch_size) -> (N,)`` (the
``val_*`` columns and early stopping), ``epoch_metrics()`` (a dict logged with every epoch's row,
its keys listed in ``log_fields``), ``dim``, ``config`` and ``state_dict``; the loop is the same.

Epochs are counted from 1 wherever a user sees them (log lines, bars, ``log.csv``, the history,
:attr:`TrainResult.best_epoch`); internally (``range(epochs)``, the data order) from 0.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from chainrule.contract import ARModel
from chainrule.errors import InputError
from chainrule.io import run_state
from chainrule.io.run_state import (CHECKPOINTS_DIR, LAST_DIR, STATE_JSON, STATE_TENSORS, STATE_VERSION,
                                    TENSORBOARD_DIR, recover_last)
from chainrule.training import batches
from chainrule.training import distributed as dist_utils
from chainrule.training import precision as precision_policy
from chainrule.training.budget import TimeBudget
from chainrule.training.callbacks import LOG_FIELDS, Callback, Step, default_callbacks, summary_writer
from chainrule.training.closed_form import fit_closed_form
from chainrule.training.config import TrainConfig, derived_seed
from chainrule.training.optimizers import make_optimizer
from chainrule.training.precision import PrecisionChoice
from chainrule.training.signals import StopSignals, TrainingInterrupted
from chainrule.training.state import TrainResult, TrainState, load_last, save_best, save_last, saved_position
from chainrule.training.validation import closing_validation, validate


log = logging.getLogger(__name__)

# the names this module has always offered (the trainer's own, and re-exported from where they now live)
__all__ = ["CHECKPOINTS_DIR", "LAST_DIR", "LOG_FIELDS", "STATE_JSON", "STATE_TENSORS", "STATE_VERSION", "TENSORBOARD_DIR",
           "Trainer", "TrainResult", "TrainState", "TrainingInterrupted", "derived_seed", "recover_last"]


class Trainer:
    """Fit any model (or :class:`~chainrule.models.ensemble.Ensemble`) by maximum likelihood.

    Args:
        model: the model (trained in place; at the end it holds the best validation weights).
        config: a :class:`TrainConfig`.
        out_dir: where ``best/`` (the best model), ``last/``, ``log.csv`` (and ``checkpoints/``,
            ``tensorboard/``) go; None keeps everything in memory.
        extra: JSON values stored in the checkpoint's config (dataset name, command line, ...).
        progress: show progress bars (rank 0 only): the epochs and each epoch's steps with the
            running training loss (:class:`~chainrule.training.callbacks.ProgressBars`).
        device: where to train ("cpu", "cuda", "cuda:1", a ``torch.device``); None keeps the
            model where it is. The model is moved there; batches follow.
        unit: what one variable of sequence data is ("char", "byte", "token"; see
            :func:`chainrule.inference.likelihood.token_unit`): the bars then show the loss per token
            (``train_nats_per_char``), the figure text models are compared by, instead of per window.
        nll_offset: added to every NLL the trainer reports (log.csv, bars, ``best_val_nll_nats``; the
            decisions are unchanged by a constant): ``sum_d log std_d`` of data standardized before
            training, so that the figures are the NLL of the data in their own units (see
            :class:`chainrule.data.Standardization`).
        budget_start: the ``time.perf_counter()`` value the time budget (``config.max_seconds``)
            counts from (None: the call of :meth:`fit`), e.g. the start of the command.
        reserve_examples: examples the caller evaluates after :meth:`fit` (a test split, the samples):
            their estimated cost is kept out of the time budget's training.
        on_checkpoint: called (no arguments) after every checkpoint written to ``out_dir`` (``last/``
            or ``best/``): :func:`chainrule.apps.pipeline.train_run` removes a replaced run only once
            the new one has one.
        callbacks: more :class:`~chainrule.training.callbacks.Callback` s, called after the default
            ones (``log.csv``, TensorBoard, the bars) at every hook of the loop: ``on_fit_start``,
            ``on_steps_start``, ``on_step``, ``on_steps_end``, ``on_epoch_end(trainer, row, state)``
            (every epoch's log row), ``on_fit_end``. ``trainer.callbacks`` is the whole list.

    While :meth:`fit` runs, callbacks may read ``steps_per_epoch``, ``total_steps``, ``validating``
    (there is validation data), ``stopping`` (why the run ends after this epoch; None: it goes on),
    ``budget`` (the :class:`~chainrule.training.budget.TimeBudget`) and the public attributes above.
    """

    def __init__(self, model: ARModel, config: TrainConfig | None = None, out_dir: str | Path | None = None,
                 extra: dict[str, Any] | None = None, progress: bool = True,
                 device: str | torch.device | None = None, *, unit: str | None = None, nll_offset: float = 0.0,
                 budget_start: float | None = None, reserve_examples: int = 0,
                 on_checkpoint: Callable[[], None] | None = None, callbacks: Sequence[Callback] = ()) -> None:
        if not isinstance(model, ARModel) and not getattr(model, "own_objective", False):
            raise InputError(f"Trainer needs a chainrule model, got {type(model).__name__}")
        if config is not None and not isinstance(config, TrainConfig):
            raise InputError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.model = model if device is None else model.to(device)
        self.config = config or TrainConfig()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.extra = extra or {}
        self.progress, self.unit, self.nll_offset = progress, unit, nll_offset
        self.budget_start, self.on_checkpoint = budget_start, on_checkpoint
        self.callbacks: list[Callback] = [*default_callbacks(), *callbacks]
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": self.config.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        self._precision: PrecisionChoice | None = None  # decided at the first training step (choose_precision)
        self._scaler: Any = None  # float16's GradScaler
        self.optimizer = make_optimizer(self.config.optimizer, [g for g in groups if g["params"]], lr=self.config.lr,
                                        betas=tuple(self.config.betas))
        # The order of the data and the ensemble member of each step come from the trainer's own
        # generators (seeded by config.seed, saved in last/): nothing random lives in the model.
        self.data_rng = torch.Generator().manual_seed(self.config.seed)
        self.member_rng = torch.Generator().manual_seed(self.config.seed + 1)
        self._ddp: torch.nn.Module | None = None  # the DistributedDataParallel wrapper while fit() trains
        self.world_size = dist_utils.world_size() if dist_utils.is_distributed() else 1
        dist_utils.check_global_batch(self.config.batch_size, self.world_size)
        self.budget = TimeBudget(self.config.max_seconds, self.config.batch_size, reserve_examples, self.world_size)
        self._signals = StopSignals(self.world_size, self.is_main)
        self._budget_stop = False  # fit: the budget ended training inside an epoch
        self.steps_per_epoch, self.total_steps, self.validating = 0, 0, False
        self.stopping: str | None = None

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and logs (rank 0; always in a single process)."""
        return self.world_size == 1 or dist_utils.is_main()

    def emit(self, hook: str, *args: Any) -> None:
        """Call ``hook`` (e.g. "on_epoch_end") of every callback, in order, with this trainer and ``args``."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # ------------------------------------------------------------------ one step
    def nll(self, x: torch.Tensor, context: Any = None) -> torch.Tensor:
        """-log p(x | context) ``(B,)`` nats of a validated batch, through the module call (one
        member of an ensemble, drawn from the trainer's generator)."""
        model = self.model
        call = {}
        if model.num_members > 1:
            call["member"] = int(torch.randint(model.num_members, (1,), generator=self.member_rng))
        choice = self._precision or self.choose_precision(x, context)
        # the module call DDP hooks into; the likelihood in float32
        return precision_policy.network_nll(model, x, context, choice.dtype, choice.channels_last,
                                            net=self._ddp, **call)

    def choose_precision(self, x: torch.Tensor, context: Any = None) -> PrecisionChoice:
        """Decide (once; the first training step calls it with its batch) how the training pass
        runs: ``config.precision`` itself, or for "auto" the measured or cached choice
        (:func:`chainrule.training.precision.choose`), said in one log line. Under DDP rank 0
        decides and every rank follows."""
        if self._precision is None:
            c = self.config
            choice = precision_policy.decide(
                self.model, c.precision, x, context, world_size=self.world_size, is_main=self.is_main,
                optimizer=lambda m: make_optimizer(c.optimizer, m.parameters(), c.lr, tuple(c.betas)))
            if c.precision == "auto" and self.is_main:
                log.info(precision_policy.describe(choice))
            self._adopt(choice, x.device)
        assert self._precision is not None
        return self._precision

    def _adopt(self, choice: PrecisionChoice, device: torch.device) -> PrecisionChoice:
        """Train with ``choice`` from now on (float16: with a ``GradScaler`` on ``device``)."""
        self._scaler = torch.amp.GradScaler(device.type) if choice.grad_scaler else None
        self._precision = choice
        return choice

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast type of the training pass (None: plain float32): ``config.precision``'s
        when explicit; for "auto", the choice made at the first training step (None before it)."""
        if self._precision is None and self.config.precision != "auto":
            device = next(self.model.parameters(), torch.empty(0)).device
            self._adopt(precision_policy.explicit_choice(self.config.precision), device)
        return self._precision.dtype if self._precision is not None else None

    def train_step(self, x: torch.Tensor, context: Any, lr: float, global_size: int | None = None) -> torch.Tensor:
        """One optimizer step on a validated batch at learning rate ``lr``; returns its NLLs ``(B,)``.

        ``global_size``: under DDP, the number of examples of the global batch ``x`` is this
        rank's slice of; the loss is scaled so that the ranks' average is the global mean."""
        extra = None
        if getattr(self.model, "own_objective", False):  # e.g. the VQ-VAE: see "Models with their own objective"
            nll, extra = self.model.training_loss(x, context)
        else:
            nll = self.nll(x, context)
        if global_size is None or global_size == len(x) * self.world_size:
            loss = nll.mean() / self.model.dim  # equal slices: the mean of the means is the global mean
        else:  # unequal slices (a last, short batch): sum * W / n, averaged by DDP = the global mean
            loss = nll.sum() * (self.world_size / global_size) / self.model.dim
        if extra is not None:
            loss = loss + extra
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()}; try a lower learning rate or grad_clip")
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self._scaler  # float16: the loss scaled up so that small gradients do not flush to zero
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if self.config.grad_clip is not None:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if scaler is not None:
            scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            scaler.update()
        else:
            self.optimizer.step()
        return nll.detach()

    # ------------------------------------------------------------------ the loop
    def fit(self, train: Any, val: Any = None,
            train_transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
            resume: bool = False, train_context: Any = None, val_context: Any = None) -> TrainResult:
        """Train on ``train`` ``(N, *shape)``, validating on ``val`` after every epoch.

        ``train_context`` / ``val_context``: a conditional model's labels ``(N,)`` (or context
        tensors) of each split. ``train_transform(batch, generator)`` is applied to every training
        batch (e.g. dynamic binarization). Without ``val`` there is no early stopping and the last
        model is kept. ``resume=True`` continues the run saved in ``out_dir/last/`` (same data and
        model; the config may differ, e.g. more epochs or a new ``max_seconds``, which counts from now).
        """
        c, model = self.config, self.model
        torch.manual_seed(c.seed)
        self.data_rng.manual_seed(c.seed)
        self.member_rng.manual_seed(c.seed + 1)
        train_context, val_context = batches.check_data(model, train, val, train_context, val_context,
                                                        train_transform, c.seed)
        if model.closed_form:
            return fit_closed_form(self, train, val, train_transform, train_context, val_context)
        self.steps_per_epoch = c.steps_per_epoch or math.ceil(len(train) / c.batch_size)
        self.total_steps = self.steps_per_epoch * c.epochs
        if c.max_steps is not None:
            self.total_steps = min(self.total_steps, c.max_steps)
        if c.tensorboard and summary_writer() is None:  # on every rank, before any work
            raise InputError("tensorboard=True needs the tensorboard package: pip install 'chainrule[tensorboard]' "
                             "(or pass tensorboard=None to write event files only when it is installed)")
        st = load_last(self) if resume else TrainState()
        if not resume and self.out_dir is not None and self.is_main:
            run_state.clear_previous_outputs(self.out_dir)
        val_members = None if c.val_components is None else range(min(c.val_components, model.num_members))
        if self.world_size > 1:
            self._ddp = dist_utils.wrap_ddp(model, c.batch_size)
        start = time.perf_counter() - st.result.train_seconds  # the log's seconds continue a resumed run
        call_start = time.perf_counter()
        self.budget.start(call_start if self.budget_start is None else self.budget_start, 0 if val is None else len(val))
        self._budget_stop, self.validating, self.stopping = False, val is not None, None
        epochs = range(st.epoch, c.epochs) if not st.result.stopped_early else range(0)
        try:
            with self._signals:
                self.emit("on_fit_start", st, resume)
                for epoch in epochs:
                    row = self._train_epoch(train, train_context, train_transform, st, start, epoch)
                    if self._budget_stop:  # inside the epoch: last/ holds the position; validate what was reached
                        closing_validation(self, val, val_context, val_members, st, epoch, row)
                        break
                    row = {"epoch": epoch + 1, **row}  # counted from 1: the epochs completed with this row
                    if getattr(model, "own_objective", False):
                        row.update(model.epoch_metrics())  # e.g. the VQ-VAE's codebook usage
                    if val is not None:
                        validate(self, val, val_context, val_members, st, epoch + 1, row)
                    st.result.history.append(row)
                    st.result.epochs_run = st.epoch = epoch + 1
                    self.stopping = self._stop_reason(st)
                    if self.stopping == "early stopping":
                        st.result.stopped_early = True
                    elif self.stopping == "time budget":
                        st.result.stopped_by_time = epoch + 1 < c.epochs
                    self.emit("on_epoch_end", row, st)
                    if self.is_main:
                        log.info("epoch %d: %s", epoch + 1,
                                 ", ".join(f"{k}={v:.5g}" for k, v in row.items() if k != "epoch"))
                    st.result.train_seconds = time.perf_counter() - start
                    save_last(self, st)
                    dist_utils.barrier()  # last/ is complete before any rank goes on (or resumes from it)
                    signum = self._signals.pending()
                    if signum:
                        self._signals.stop(signum, st.step, saved_position(self, st))
                    if self.stopping:
                        break
        finally:
            self._ddp = None
            self.emit("on_fit_end", st)
        st.result.train_seconds = time.perf_counter() - start
        if st.best_state is not None:
            model.load_state_dict(st.best_state)
        else:
            save_best(self, st.result)
        dist_utils.barrier()
        model.eval()
        return st.result

    def _stop_reason(self, st: TrainState) -> str | None:
        """Why the run ends after the epoch just done (None: it goes on); under DDP rank 0's reason."""
        c = self.config
        stop = 0
        if self.validating and c.patience is not None and st.bad_epochs >= c.patience:
            stop = 1
        elif c.max_seconds is not None and self.budget.binds(validation=self.validating):
            stop = 2  # (already agreed by every rank)
        elif st.step >= self.total_steps:
            stop = 3
        if self.world_size > 1:  # clocks differ between ranks: rank 0 decides for all
            stop = int(dist_utils.broadcast(torch.tensor([stop]))[0])
        return (None, "early stopping", "time budget", "all steps taken")[stop]

    def _train_epoch(self, train: Any, context: Any, transform: Any, st: TrainState, start: float,
                     epoch: int) -> dict[str, float]:
        c, model, steps_per_epoch, total_steps = self.config, self.model, self.steps_per_epoch, self.total_steps
        model.train()
        seg_start = time.perf_counter()
        perm = batches.epoch_order(c.seed, len(train), epoch, c.steps_per_epoch)
        first = st.batch  # > 0: resumed from a mid-epoch checkpoint
        # the running loss of the batches before ``first`` (global sums, held by rank 0 alone under DDP)
        total, count = (st.epoch_nll_sum, st.epoch_count) if first and self.is_main else (0.0, 0)
        # the batches this epoch will have taken when it ends (fewer when max_steps runs out in it)
        last_batch = min(steps_per_epoch, first + max(0, total_steps - st.step))
        self.emit("on_steps_start", epoch + 1, first, last_batch)
        try:
            for b in range(first, steps_per_epoch):
                if st.step >= total_steps:
                    break
                step_start = time.perf_counter()
                x, ctx, global_size = batches.draw(model, train, context, transform, perm, c.seed, c.batch_size, epoch, b,
                                                   self.world_size)
                if self._precision is None and not getattr(model, "own_objective", False):
                    # auto's one-off measurement (trial steps of every arm) is not a step's cost: counted
                    # as one, it made the time budget stop a slow model's run after its first step
                    measured = time.perf_counter()
                    self.choose_precision(x, ctx)
                    step_start += time.perf_counter() - measured
                lr = c.lr * st.lr_scale * c.lr_factor(st.step, total_steps)
                nll = self.train_step(x, ctx, lr, global_size=global_size if self.world_size > 1 else None)
                st.step += 1
                batch_sum = float(nll.sum())
                total += batch_sum
                count += len(x)
                self.budget.record_step(time.perf_counter() - step_start)
                self.emit("on_step", Step(epoch + 1, b, last_batch, steps_per_epoch, st.step, lr, batch_sum, len(x),
                                          total, count))
                if b + 1 >= steps_per_epoch or st.step >= total_steps:
                    break  # the epoch is done: validation and the epoch's last/ follow (and a signal is seen there)
                signum = self._signals.pending()
                # checked every step: a stop inside the epoch saves last/ at this position (exact resume)
                self._budget_stop = c.max_seconds is not None and self.budget.binds(validation=True)
                if signum or self._budget_stop or (c.save_every is not None and st.step % c.save_every == 0):
                    now = time.perf_counter()
                    st.result.step_seconds += now - seg_start
                    seg_start = now
                    st.batch = b + 1
                    st.epoch_nll_sum, st.epoch_count = total, count
                    if self.world_size > 1:  # the global running loss, as one process holds it
                        sums = dist_utils.all_reduce_sum(torch.tensor([total, float(count)], dtype=torch.float64))
                        st.epoch_nll_sum, st.epoch_count = float(sums[0]), int(sums[1])
                    st.result.train_seconds = now - start
                    save_last(self, st)
                    dist_utils.barrier()  # last/ is complete before any rank goes on
                    if signum:
                        self._signals.stop(signum, st.step, saved_position(self, st))
                    if self._budget_stop:
                        break
        finally:
            self.emit("on_steps_end")
        if self._budget_stop:  # st keeps the position (as last/ does) for the closing validation's row
            st.result.step_seconds += time.perf_counter() - seg_start
            st.result.examples_seen += st.epoch_count  # after last/ was written: for the throughput only
            return {"train_nll_nats": st.epoch_nll_sum / max(st.epoch_count, 1) + self.nll_offset,
                    "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
        st.batch, st.epoch_nll_sum, st.epoch_count = 0, 0.0, 0
        st.result.step_seconds += time.perf_counter() - seg_start
        if self.world_size > 1:  # the epoch's mean over the global batches, as one process reports it
            sums = dist_utils.all_reduce_sum(torch.tensor([total, float(count)], dtype=torch.float64))
            total, count = float(sums[0]), int(sums[1])
        st.result.examples_seen += count  # the whole epoch's (a resumed one's earlier batches included)
        return {"train_nll_nats": total / max(count, 1) + self.nll_offset, "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start}
