"""A model-agnostic maximum-likelihood trainer (teacher forcing).

The loss of a batch is the mean over examples of -log p(x | c) / D: nats per variable, so learning
rates transfer between data sizes. The trainer knows nothing of the architecture: it computes the
conditionals' parameters through ``model(x, context)`` — the module call, so that a
``DistributedDataParallel`` wrapper synchronizes gradients — and their log-likelihood with the
model's head (in float32). An ensemble is trained one member per step, the member drawn from the
trainer's own generator and passed as ``member=k``. Every epoch it evaluates the exact
``log_prob`` on validation data, keeps the best model (safetensors + JSON), stops early when
validation NLL stops improving, and writes a CSV log.

Resuming: after every epoch the trainer also writes ``RUN/last/`` — the model, and in
``trainer_state.safetensors`` / ``trainer_state.json`` the optimizer's moments, the best weights
so far, the random-number generators (shuffling, torch's, the ensemble's component choice), the
epoch and step counters, the plateau schedule and the history (a :class:`TrainState`).
``fit(..., resume=True)`` picks up from there; a resumed run takes exactly the steps the
uninterrupted one would have (tested).

Exact resume from anywhere: the data order is a function of ``(config.seed, epoch)`` — each epoch's
permutation (or, with ``steps_per_epoch``, each batch's random examples) and each batch's
``train_transform`` generator (dynamic binarization) come from generators seeded by
:func:`derived_seed` of ``(seed, epoch[, batch])`` — so a run resumed at batch k of epoch e
regenerates that epoch's order and continues at batch k, nothing replayed. With
``save_every = N`` the trainer also writes ``last/`` every N optimizer steps (recording the batch
within the epoch and the epoch's running loss), and on SIGINT / SIGTERM (handlers installed in the
main thread only, the previous ones restored after ``fit``) it finishes the current step, writes
``last/``, prints one line saying what it saved and how to resume, and raises
:class:`TrainingInterrupted` (a ``KeyboardInterrupt``; the CLI exits with 128 + the signal number).
A run resumed from any such checkpoint ends with weights bit-identical to an uninterrupted run's
(same remaining batches in the same order, same optimizer, generator and schedule state; tested,
also across a SIGKILL). This derivation changed the exact data order (hence the numbers) of runs
compared to versions that drew the order from one running generator.

Distributed data-parallel training: inside a ``torch.distributed`` process group of W > 1 ranks
(``torchrun --nproc-per-node N -m chainrule train ...``; on several machines ``torchrun --nnodes M
--node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:PORT --nproc-per-node N -m chainrule train ...``;
gloo on CPU, NCCL on CUDA — see :mod:`chainrule.training.distributed`) :meth:`Trainer.fit` wraps
the model in ``DistributedDataParallel`` for the training steps. ``batch_size`` stays the *global*
batch: every rank draws the same batch from the identically seeded ``data_rng`` (the batch the
single process would draw, transformed as a whole, e.g. binarized, so the generators stay in step)
and computes its disjoint ``batch_size / W`` slice (``batch_size % W == 0`` required), with the
loss scaled so that DDP's gradient average is the gradient of the global batch's mean loss: the
steps equal the single-process ones up to float reduction order (tested). Rank 0 validates and
broadcasts the result (identical early stopping and schedules everywhere) and is the only rank
that writes ``best/``, ``last/``, ``log.csv``, logs, or shows a progress bar; every rank waits
for ``last/`` to be complete before the next epoch. ``last/`` also holds every rank's torch
random-number generator state, so that each rank resumes with its own. torchrun forwards SIGINT /
SIGTERM to the ranks (each in a session of its own), which agree on the step to stop after; a
rank started by torchrun also stops so (``last/`` saved, exit 143) when the launcher is gone —
killed with SIGKILL, say, which torchrun cannot forward — rather than train on as an orphan
that a ``--resume`` would race for the run directory.

Outputs besides ``best/`` and ``last/``: with ``keep_last = K > 1`` the K most recent checkpoints
are also kept as ``RUN/checkpoints/step-000123/`` (the same files as ``last/``, written into a
temporary directory and renamed; older ones that chainrule wrote are deleted). ``log.csv`` always;
and when the ``tensorboard`` package is installed (``pip install 'chainrule[tensorboard]'``) event
files in ``RUN/tensorboard/`` (``config.tensorboard``: None = when installed, False = never).

Models with their own objective: a module that is not an autoregressive model but is trained the
same way (the VQ-VAE of :mod:`chainrule.latent.vqvae`) sets ``own_objective = True`` and gives
``validate(x)``, ``training_loss(x, context) -> (nats (B,), extra scalar)`` (the step minimizes
mean(nats) / D + extra; the nats are what ``train_nll_nats`` logs), ``validation_nll(data, context,
batch_size) -> (N,)`` (what the ``val_*`` columns and early stopping use), ``epoch_metrics()`` (a
dict logged with every epoch's row, its keys listed in ``log_fields``: extra ``log.csv`` columns),
``dim``, ``config`` and ``state_dict``. Everything else (batches, schedules, checkpoints, resume,
signals, the log) is the same loop.

Epochs are counted from 1 wherever a user sees them: the log lines and progress bars ("epoch 3"),
``log.csv``'s ``epoch`` column and the history rows (the number of epochs completed when the row
was written), :attr:`TrainResult.best_epoch` (and ``best_epoch`` in ``best/config.json`` and the
CLI's ``results.json``). Internally (``range(epochs)``, the data order's ``derived_seed``) they
stay 0-based.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from chainrule.errors import CheckpointError, InputError
from chainrule.training import distributed as dist_utils
from chainrule.training import precision as precision_policy
from chainrule.training.config import TrainConfig, _is_int, _is_real, derived_seed
from chainrule.training.optimizers import make_optimizer
from chainrule.training.precision import PrecisionChoice
from chainrule.inference.likelihood import context_rows, evaluate, summarize
from chainrule.io.checkpoint import atomic_write, check_version, link_or_copy_tree, read_config, save_model
from chainrule.models.base import AutoregressiveModel
from chainrule.models.ensemble import Ensemble

Model = AutoregressiveModel | Ensemble

log = logging.getLogger(__name__)

LAST_DIR = "last"
CHECKPOINTS_DIR = "checkpoints"  # RUN/checkpoints/step-000123/ with keep_last > 1
TENSORBOARD_DIR = "tensorboard"
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
#: The version of ``trainer_state.json``: 1 (no ``version`` key) counted epochs from 0 in the
#: history and ``best_epoch``; 2 counts them from 1 (upgraded on load).
STATE_VERSION = 2
_STEP_DIR = re.compile(r"step-(\d+)")
LOG_FIELDS = ("epoch", "train_nll_nats", "val_nll_nats", "val_bits_per_dim", "val_nats_per_dim", "lr", "seconds")


_TAG_EPOCH, _TAG_BATCH = 1, 2


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by :meth:`Trainer.fit` after SIGINT / SIGTERM, once the current step is done and
    ``last/`` is written. ``signum``: the signal; ``exit_code``: 128 + it (130, 143)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.message, self.signum, self.exit_code = message, signum, 128 + signum

    def __str__(self) -> str:
        return self.message


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns: the per-epoch history and the best validation NLL."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_val_nll_nats: float = math.inf
    best_epoch: int = 0  # the epoch (counted from 1) of the best validation NLL; 0: none yet
    epochs_run: int = 0
    train_seconds: float = 0.0  # wall time of fit(), validation included
    step_seconds: float = 0.0  # time inside training steps only (for throughput)
    examples_seen: int = 0
    stopped_early: bool = False
    stopped_by_time: bool = False  # max_seconds ran out before the epochs or early stopping

    @property
    def examples_per_second(self) -> float:
        """Training throughput: examples per second of training steps (validation excluded)."""
        return self.examples_seen / self.step_seconds if self.step_seconds else 0.0


@dataclass
class TrainState:
    """Where a run is: everything besides the weights and the optimizer that a resume restores."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch: int = 0  # batches of epoch ``epoch`` already taken (a mid-epoch checkpoint)
    epoch_nll_sum: float = 0.0  # the running training loss of those batches
    epoch_count: int = 0
    lr_scale: float = 1.0  # the plateau schedule's factor
    bad_epochs: int = 0  # epochs since the last improvement
    result: TrainResult = field(default_factory=TrainResult)
    best_state: dict[str, torch.Tensor] | None = None


def _complete_checkpoint(d: Path) -> bool:
    """True when ``d`` holds every file of a ``last/`` checkpoint; ``trainer_state.json`` is written
    last (and atomically), so its presence means the others were written before it."""
    return all((d / f).is_file() for f in (STATE_JSON, STATE_TENSORS, "config.json", "model.safetensors"))


def recover_last(out_dir: str | Path) -> Path | None:
    """Bring ``out_dir/last/`` back after a write of it was interrupted; returns it, or None when
    the run has no complete checkpoint to resume.

    :meth:`Trainer._save_last` writes ``last.tmp/`` (``trainer_state.json`` last), then renames
    ``last/`` to ``last.old/`` and ``last.tmp/`` to ``last/``, then removes ``last.old/``. A process
    killed anywhere leaves one of these states, each recovered here:

    1. ``last/`` complete (with or without a partial or complete ``last.tmp/``, a ``last.old/``):
       ``last/`` is the checkpoint; the others are removed.
    2. no ``last/``, ``last.tmp/`` complete (killed between the two renames; or, after a resume from
       ``last.old/``, killed again once ``last.old/`` was removed): ``last.tmp/`` is the newest
       checkpoint and becomes ``last/``.
    3. no ``last/``, ``last.tmp/`` partial or absent, ``last.old/`` complete: ``last.old/`` becomes
       ``last/``.
    4. nothing complete (killed before the first checkpoint was written): None; the run starts again.
    """
    out_dir = Path(out_dir)
    last, tmp, old = out_dir / LAST_DIR, out_dir / f"{LAST_DIR}.tmp", out_dir / f"{LAST_DIR}.old"
    if _complete_checkpoint(last):
        for d in (tmp, old):
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
        return last
    for chosen in (tmp, old):
        if chosen.is_dir() and not chosen.is_symlink() and _complete_checkpoint(chosen):
            if last.is_dir() and not last.is_symlink():  # a damaged last/ (never left by the protocol)
                shutil.rmtree(last)
            chosen.rename(last)
            for d in (tmp, old):
                if d.is_dir() and not d.is_symlink():
                    shutil.rmtree(d, ignore_errors=True)
            return last
    return None


def _check_trainer_state(state: dict[str, Any], where: Path) -> None:
    """The counters of a ``trainer_state.json``, checked before they are used: a forged or damaged
    file (a negative step, an epoch count that is not an integer) is refused, never continued."""
    def bad(key: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{where}: {key} {state.get(key)!r} is not {expected}; the checkpoint is damaged")

    for key in ("epochs_done", "step", "bad_epochs", "batch", "epoch_count"):
        v = state.get(key, 0)
        if not _is_int(v) or v < 0:
            raise bad(key, "an integer >= 0")
    for key in ("lr_scale", "epoch_nll_sum"):
        v = state.get(key, 0.0 if key == "epoch_nll_sum" else 1.0)
        if not _is_real(v) or not math.isfinite(v) or (key == "lr_scale" and v <= 0):
            raise bad(key, "a finite number" + (" > 0" if key == "lr_scale" else ""))
    if not isinstance(state.get("optimizer"), dict) or not isinstance(state.get("result"), dict):
        raise CheckpointError(f"{where}: no optimizer / result entry; the checkpoint is damaged")


class Trainer:
    """Fit any model (or :class:`~chainrule.models.ensemble.Ensemble`) by maximum likelihood.

    Args:
        model: the model (trained in place; at the end it holds the best validation weights).
        config: a :class:`TrainConfig`.
        out_dir: where ``best/`` (the best model), ``last/``, ``log.csv`` (and ``checkpoints/``,
            ``tensorboard/``) go; None keeps everything in memory.
        extra: JSON values stored in the checkpoint's config (dataset name, command line, ...).
        progress: show progress bars (rank 0 only): the epochs (out of ``config.epochs``, a ceiling
            when early stopping or a time budget may end the run sooner, as its label says) and,
            inside each epoch, its steps with the running training loss. Log records emitted
            meanwhile are written through tqdm, above the bars.
        device: where to train ("cpu", "cuda", "cuda:1", a ``torch.device``); None keeps the
            model where it is. The model is moved there; batches follow.
    """

    #: Called (no arguments) after every checkpoint written to ``out_dir`` (``last/`` or ``best/``):
    #: :func:`chainrule.apps.pipeline.train_run` removes a replaced run only once the new one has one.
    on_checkpoint: Callable[[], None] | None = None

    def __init__(self, model: Model, config: TrainConfig | None = None, out_dir: str | Path | None = None,
                 extra: dict[str, Any] | None = None, progress: bool = True,
                 device: str | torch.device | None = None) -> None:
        if not isinstance(model, (AutoregressiveModel, Ensemble)) and not getattr(model, "own_objective", False):
            raise InputError(f"Trainer needs a chainrule model, got {type(model).__name__}")
        if config is not None and not isinstance(config, TrainConfig):
            raise InputError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.model = model if device is None else model.to(device)
        self.config = config or TrainConfig()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.extra = extra or {}
        self.progress = progress
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
        self._signal: int | None = None  # SIGINT / SIGTERM received while fit() trains
        self._tb: Any = None  # the TensorBoard SummaryWriter while fit() trains (rank 0, when enabled)
        self._launcher: int | None = None  # under torchrun: the launcher's pid, watched while fit() trains
        # The time budget (config.max_seconds) counts from budget_start (a time.perf_counter() value; None:
        # from the call of fit), and keeps the estimated cost of evaluating reserve_examples more examples
        # after fit (a test split, the samples) out of the training: set by the caller, e.g. train_run.
        self.budget_start: float | None = None
        self.reserve_examples: int = 0
        self._budget_stop = False  # fit: the budget ended training inside an epoch
        self._eval_seconds_per_example: float | None = None  # measured by the validations
        self._step_time = (0.0, 0)  # (seconds, steps) of this fit call's training steps
        self._val_examples = 0  # the validation set's size (its cost is part of the budget)
        #: What one variable of sequence data is ("char", "byte", "token"; see
        #: :func:`chainrule.inference.likelihood.token_unit`): the bars then show the loss per token
        #: (``train_nats_per_char``), the figure text models are compared by, instead of per window.
        self.unit: str | None = None
        #: Added to every NLL the trainer reports (log.csv, bars, ``best_val_nll_nats``; the decisions are
        #: unchanged by a constant): ``sum_d log std_d`` of data standardized before training, so that the
        #: figures are the NLL of the data in their own units (see :class:`chainrule.data.Standardization`).
        self.nll_offset: float = 0.0
        self.world_size = dist_utils.world_size() if dist_utils.is_distributed() else 1
        if self.config.batch_size % self.world_size:
            raise InputError(f"batch_size {self.config.batch_size} is the global batch of all {self.world_size} "
                             f"ranks and must be divisible by their number: use a multiple of {self.world_size}, "
                             f"e.g. {self.config.batch_size // self.world_size * self.world_size or self.world_size}")

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and logs (rank 0; always in a single process)."""
        return self.world_size == 1 or dist_utils.is_main()

    @property
    def _show_progress(self) -> bool:
        return bool(self.progress) and self.is_main

    def _loss_postfix(self, total: float, count: int) -> dict[str, str]:
        """The step bar's running training loss: per token for sequence data (:attr:`unit`), else per example."""
        mean = total / max(count, 1) + self.nll_offset
        if self.unit:
            return {f"train_nats_per_{self.unit}": f"{mean / self.model.dim:.4g}"}
        return {"train_nll_nats": f"{mean:.4g}"}

    def _epoch_postfix(self, row: dict[str, float]) -> dict[str, str]:
        """The epoch bar's figures of a log row: nats per example, or per token (:attr:`unit`)."""
        out = {}
        for k, v in row.items():
            if k.endswith("nll_nats"):
                if self.unit:
                    out[f"{k[:-len('nll_nats')]}nats_per_{self.unit}"] = f"{v / self.model.dim:.4g}"
                else:
                    out[k] = f"{v:.4g}"
        return out

    # ------------------------------------------------------------------ the time budget
    def _seconds_left(self) -> float | None:
        """Seconds of ``config.max_seconds`` left (None: no budget), counted from :attr:`budget_start`."""
        if self.config.max_seconds is None:
            return None
        return self.config.max_seconds - (time.perf_counter() - self._budget_origin)

    def _mean_step_seconds(self) -> float:
        seconds, steps = self._step_time
        return seconds / steps if steps else 0.0

    def _eval_cost(self, examples: int) -> float:
        """Estimated seconds to evaluate ``examples`` examples exactly: at the rate the validations
        measured, else at half a training step's time per example (a forward pass without the
        backward; on the generous side, since evaluation runs in float32 where training may use
        bfloat16)."""
        if examples <= 0:
            return 0.0
        rate = self._eval_seconds_per_example
        if rate is None:
            rate = self._mean_step_seconds() / (2 * self.config.batch_size)
        return examples * rate

    def _budget_binds(self, *, validation: bool) -> bool:
        """True when the time left would not hold one more training step plus (``validation``) the
        closing validation plus the evaluation of :attr:`reserve_examples` after ``fit``. Under DDP
        rank 0's clock decides for every rank."""
        left = self._seconds_left()
        if left is None:
            return False
        need = self._mean_step_seconds() + self._eval_cost(self.reserve_examples
                                                           + (self._val_examples if validation else 0))
        stop = int(left < need)
        if self.world_size > 1:
            stop = int(dist_utils.broadcast(torch.tensor([stop]))[0])
        return bool(stop)

    def _budget_steps(self, done: int, remaining_in_epoch: int) -> int | None:
        """The steps this epoch can still take within the budget (None: no budget, or not yet
        measured), for the progress bar's total."""
        left, step = self._seconds_left(), self._mean_step_seconds()
        if left is None or step <= 0:
            return None
        fit = max(0, int((left - self._eval_cost(self.reserve_examples + self._val_examples)) / step))
        return done + min(fit, remaining_in_epoch)

    # ------------------------------------------------------------------ one step
    def _lr_factor(self, step: int, total_steps: int) -> float:
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "cosine":
            t = (step - c.warmup_steps) / max(1, total_steps - c.warmup_steps)
            floor = c.min_lr / c.lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0

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
        if self._precision is not None:
            return self._precision
        c, model = self.config, self.model
        choice = None
        if self.is_main or c.precision != "auto":
            call = {"member": 0} if model.num_members > 1 else {}
            choice = precision_policy.choose(model, c.precision, x, context, call=call,
                                             optimizer=lambda m: make_optimizer(c.optimizer, m.parameters(), c.lr, tuple(c.betas)))
        if c.precision == "auto" and self.world_size > 1:  # identical arithmetic on every rank
            codes = {None: 0, torch.bfloat16: 1, torch.float16: 2}
            mine = torch.tensor([codes[choice.dtype], {None: -1, False: 0, True: 1}[choice.channels_last]]
                                if choice is not None else [0, -1])
            got = [int(v) for v in dist_utils.broadcast(mine)]
            if choice is None:
                choice = PrecisionChoice({0: None, 1: torch.bfloat16, 2: torch.float16}[got[0]],
                                         None if got[1] < 0 else bool(got[1]), "rank 0")
        assert choice is not None
        if c.precision == "auto" and self.is_main:
            log.info(precision_policy.describe(choice))
        return self._adopt(choice, x.device)

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
        if len(train) == 0:
            raise InputError("the training set is empty (0 examples)")
        if val is not None and len(val) == 0:
            raise InputError("the validation set is empty (0 examples); pass val=None to train without one")
        train_context = self._check_context(train_context, len(train), "train")
        val_context = self._check_context(val_context, None if val is None else len(val), "val")
        torch.manual_seed(c.seed)
        self.data_rng.manual_seed(c.seed)
        self.member_rng.manual_seed(c.seed + 1)
        # Validate the whole training set once up front: a bad value is reported before hours of
        # work (a lazily indexed set, such as the windows of a text, is checked on a sample).
        if isinstance(train, torch.Tensor) and train_transform is None:
            for start in range(0, len(train), 8192):  # in chunks: no int64 copy of a whole uint8 set
                model.validate(train[start:start + 8192])
        else:
            probe = train[torch.arange(min(len(train), 1024))]
            model.validate(probe if train_transform is None else train_transform(probe, torch.Generator().manual_seed(c.seed)))
        if model.closed_form:
            return self._fit_closed_form(train, val, train_transform, train_context, val_context)
        steps_per_epoch = c.steps_per_epoch or math.ceil(len(train) / c.batch_size)
        total_steps = steps_per_epoch * c.epochs
        if c.max_steps is not None:
            total_steps = min(total_steps, c.max_steps)
        if c.tensorboard and _summary_writer() is None:  # on every rank, before any work
            raise InputError("tensorboard=True needs the tensorboard package: pip install 'chainrule[tensorboard]' "
                             "(or pass tensorboard=None to write event files only when it is installed)")
        st = self._load_last() if resume else TrainState()
        if not resume:
            self._clear_previous_outputs()
        val_members = None if c.val_components is None else range(min(c.val_components, model.num_members))
        if self.world_size > 1:
            self._ddp = self._wrap_ddp()
        start = time.perf_counter() - st.result.train_seconds  # the log's seconds continue a resumed run
        call_start = time.perf_counter()
        self._budget_origin = call_start if self.budget_start is None else self.budget_start
        self._budget_stop, self._step_time = False, (0.0, 0)
        self._val_examples = 0 if val is None else len(val)
        self._train_size = len(train)
        # a resume rewrites log.csv from the checkpoint's history: rows written after it are redone
        log_file = self._open_log(st.result.history if resume else None)
        # TensorBoard hides the events logged after the checkpoint (those steps are redone); the
        # checkpoint's own step was logged before it was written
        self._tb = self._open_tensorboard(purge_step=st.step + 1 if resume else None)
        show = self._show_progress
        # With early stopping or a time budget the epoch count is only a ceiling: said in the bar.
        may_stop = ("early stopping" if val is not None and c.patience is not None else
                    "time budget" if c.max_seconds is not None else "")
        epochs = range(st.epoch, c.epochs) if not st.result.stopped_early else range(0)
        bar = tqdm(total=c.epochs, initial=min(st.epoch, c.epochs), desc=f"train ({may_stop})" if may_stop else "train",
                   unit="epoch", disable=not show)
        epoch_seconds: list[float] = []  # of this call's epochs: the bar's total follows the time budget
        previous = self._install_signal_handlers()
        # log lines go through tqdm.write while bars are shown, so they do not glue onto a bar
        redirect = logging_redirect_tqdm(tqdm_class=tqdm) if show else contextlib.nullcontext()
        try:
            with redirect:
                for epoch in epochs:
                    epoch_start = time.perf_counter()
                    row = self._train_epoch(train, train_context, train_transform, st, steps_per_epoch, total_steps,
                                            start, epoch)
                    if self._budget_stop:  # inside the epoch: last/ holds the position; validate what was reached
                        self._closing_validation(val, val_context, val_members, st, epoch, row, log_file, bar)
                        break
                    row = {"epoch": epoch + 1, **row}  # counted from 1: the epochs completed with this row
                    if getattr(model, "own_objective", False):
                        row.update(model.epoch_metrics())  # e.g. the VQ-VAE's codebook usage
                    if val is not None:
                        self._validate(val, val_context, val_members, st, epoch + 1, row)
                    st.result.history.append(row)
                    st.result.epochs_run = st.epoch = epoch + 1
                    self._write_log(log_file, row)
                    self._tb_epoch(row, st.step)
                    bar.set_postfix(self._epoch_postfix(row), refresh=False)
                    bar.update(1)  # after the epoch (not when the next begins): ends at the right count
                    if self.is_main:
                        log.info("epoch %d: %s", epoch + 1,
                                 ", ".join(f"{k}={v:.5g}" for k, v in row.items() if k != "epoch"))
                    stop = 0  # 1: early stop, 2: time budget, 3: step budget
                    if val is not None and c.patience is not None and st.bad_epochs >= c.patience:
                        stop = 1
                    elif c.max_seconds is not None and self._budget_binds(validation=val is not None):
                        stop = 2  # (already agreed by every rank)
                    elif st.step >= total_steps:
                        stop = 3
                    if self.world_size > 1:  # clocks differ between ranks: rank 0 decides for all
                        stop = int(dist_utils.broadcast(torch.tensor([stop]))[0])
                    epoch_seconds.append(time.perf_counter() - epoch_start)
                    left = self._seconds_left()
                    if left is not None and not stop:  # the epochs the budget still holds: the bar's real end
                        left -= self._eval_cost(self.reserve_examples)  # the test and the samples after fit
                        more = max(1, int(left / (sum(epoch_seconds) / len(epoch_seconds))))
                        if st.epoch + more < c.epochs:
                            bar.total = st.epoch + more
                            bar.refresh()
                    if stop == 1:
                        st.result.stopped_early = True
                        bar.set_description(f"train (stopped early; best epoch {st.result.best_epoch})")
                    elif stop == 2:
                        st.result.stopped_by_time = epoch + 1 < c.epochs
                        if st.result.stopped_by_time:
                            bar.set_description("train (time budget reached)")
                    st.result.train_seconds = time.perf_counter() - start
                    self._save_last(st)
                    dist_utils.barrier()  # last/ is complete before any rank goes on (or resumes from it)
                    signum = self._pending_signal()
                    if signum:
                        self._interrupted(signum, st, steps_per_epoch)
                    if stop:
                        break
        finally:
            self._restore_signal_handlers(previous)
            self._ddp = None
            bar.close()
            if log_file is not None:
                log_file.close()
            if self._tb is not None:
                self._tb.close()
                self._tb = None
        st.result.train_seconds = time.perf_counter() - start
        if st.best_state is not None:
            model.load_state_dict(st.best_state)
        else:
            self._save_best(st.result)
        dist_utils.barrier()
        model.eval()
        return st.result

    def _wrap_ddp(self) -> torch.nn.Module:
        """The model in a ``DistributedDataParallel`` wrapper (which copies rank 0's weights and
        buffers to every rank); the trainer keeps the plain model for evaluation and checkpoints."""
        from torch.nn.parallel import DistributedDataParallel

        device = next(self.model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        if self.is_main:
            per = self.config.batch_size // self.world_size
            log.info("DDP: %d ranks x %d = global batch %d (%s)", self.world_size, per, self.config.batch_size,
                     torch.distributed.get_backend())
        return DistributedDataParallel(self.model, device_ids=ids, output_device=ids[0] if ids else None)

    @staticmethod
    def _check_context(context: Any, n: int | None, split: str) -> Any:
        if context is None:
            return None
        if n is None:
            raise InputError(f"{split}_context was given without {split} data")
        if isinstance(context, torch.Tensor) and context.dim() >= 1 and len(context) != n:
            raise InputError(f"{split}_context has {len(context)} rows but the {split} set has {n} examples")
        return context

    def _epoch_order(self, n: int, epoch: int) -> torch.Tensor | None:
        """Epoch ``epoch``'s permutation of the ``n`` training examples (None with ``steps_per_epoch``:
        every batch draws its own examples); a function of ``(config.seed, epoch)`` only."""
        if self.config.steps_per_epoch is not None:
            return None
        g = torch.Generator().manual_seed(derived_seed(self.config.seed, _TAG_EPOCH, epoch))
        return torch.randperm(n, generator=g)

    def _batch_rng(self, epoch: int, b: int) -> torch.Generator:
        """The generator of batch ``b`` of epoch ``epoch`` (its random examples with
        ``steps_per_epoch``, then its ``train_transform``): a function of ``(seed, epoch, b)``."""
        return torch.Generator().manual_seed(derived_seed(self.config.seed, _TAG_BATCH, epoch, b))

    def _train_epoch(self, train: Any, context: Any, transform: Any, st: TrainState, steps_per_epoch: int,
                     total_steps: int, start: float, epoch: int) -> dict[str, float]:
        c, model = self.config, self.model
        model.train()
        seg_start = time.perf_counter()
        perm = self._epoch_order(len(train), epoch)
        first = st.batch  # > 0: resumed from a mid-epoch checkpoint
        # the running loss of the batches before ``first`` (global sums, held by rank 0 alone under DDP)
        total, count = (st.epoch_nll_sum, st.epoch_count) if first and self.is_main else (0.0, 0)
        # the batches this epoch will have taken when it ends (fewer when max_steps runs out in it)
        last_batch = min(steps_per_epoch, first + max(0, total_steps - st.step))
        # TensorBoard's per-step curve: at most ~100 points an epoch, each the mean of the batches
        # since the previous one (a scalar costs ~0.1-0.3 ms: 5% of a small model's step)
        tb_every, tb_sum, tb_count = max(1, steps_per_epoch // 100), 0.0, 0
        # closed when the epoch ends or is interrupted (leave=False: it disappears, the epoch bar stays)
        with tqdm(total=last_batch, initial=first, desc=f"epoch {epoch + 1}", unit="step", leave=False,
                  disable=not self._show_progress) as bar:
            for b in range(first, steps_per_epoch):
                if st.step >= total_steps:
                    break
                step_start = time.perf_counter()
                g = self._batch_rng(epoch, b)
                if perm is None:
                    idx = torch.randint(len(train), (c.batch_size,), generator=g)
                else:
                    idx = perm[b * c.batch_size:(b + 1) * c.batch_size]
                global_size = len(idx)
                if self.world_size > 1:  # this rank's disjoint slice of the global batch every rank drew
                    mine = self._shard(global_size)
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
                ctx = context_rows(context, idx, len(train))
                lr = c.lr * st.lr_scale * self._lr_factor(st.step, total_steps)
                nll = self.train_step(x, ctx, lr, global_size=global_size if self.world_size > 1 else None)
                st.step += 1
                batch_sum = float(nll.sum())
                total += batch_sum
                count += len(x)
                if self._tb is not None:  # rank 0's share of the batches under DDP (the epoch's rows are global)
                    tb_sum, tb_count = tb_sum + batch_sum, tb_count + len(x)
                    if st.step % tb_every == 0 or b + 1 >= last_batch:
                        self._tb.add_scalar("train/batch_nll_nats", tb_sum / max(tb_count, 1), st.step)
                        self._tb.add_scalar("train/lr", lr, st.step)
                        tb_sum, tb_count = 0.0, 0
                seconds, steps = self._step_time
                self._step_time = (seconds + time.perf_counter() - step_start, steps + 1)
                bar.set_postfix(self._loss_postfix(total, count), refresh=False)
                if c.max_seconds is not None:  # the bar ends where the budget will (not at a 10^9-step epoch's end)
                    budget = self._budget_steps(b + 1, last_batch - b - 1)
                    if budget is not None and budget < last_batch and abs(bar.total - budget) > 0.01 * budget:
                        bar.total = budget
                        bar.set_description(f"epoch {epoch + 1} (time budget)")
                bar.update(1)
                if b + 1 >= steps_per_epoch or st.step >= total_steps:
                    break  # the epoch is done: validation and the epoch's last/ follow (and a signal is seen there)
                signum = self._pending_signal()
                # checked every step: a stop inside the epoch saves last/ at this position (exact resume)
                self._budget_stop = c.max_seconds is not None and self._budget_binds(validation=True)
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
                    self._save_last(st)
                    dist_utils.barrier()  # last/ is complete before any rank goes on
                    if signum:
                        self._interrupted(signum, st, steps_per_epoch)
                    if self._budget_stop:
                        break
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

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict[int, Any] | None:
        """Catch SIGINT / SIGTERM (main thread only): the step in progress finishes, then
        :meth:`_interrupted` writes ``last/`` and stops. A second signal stops at once."""
        self._signal = None
        # torchrun's agent sets TORCHELASTIC_RUN_ID; a rank whose parent changes has lost its launcher
        self._launcher = os.getppid() if self.world_size > 1 and "TORCHELASTIC_RUN_ID" in os.environ else None
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:
                raise KeyboardInterrupt
            self._signal = signum

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # not settable here
                pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any] | None) -> None:
        for sig, h in (previous or {}).items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)

    def _pending_signal(self) -> int:
        """The signal received (0: none); under DDP agreed by every rank (any rank's signal counts).
        A rank whose torchrun launcher is gone counts as having received SIGTERM."""
        if self._launcher is not None and self._signal is None and os.getppid() != self._launcher:
            self._signal = signal.SIGTERM
            log.warning("the torchrun launcher (pid %d) is gone: stopping as on SIGTERM", self._launcher)
        sig = self._signal or 0
        if self.world_size > 1:
            flags = torch.tensor([float(sig == signal.SIGINT), float(sig == signal.SIGTERM)], dtype=torch.float64)
            flags = dist_utils.all_reduce_sum(flags)
            sig = int(signal.SIGTERM) if flags[1] > 0 else int(signal.SIGINT) if flags[0] > 0 else 0
        return int(sig)

    def _interrupted(self, signum: int, st: TrainState, steps_per_epoch: int) -> None:
        """Stop after a signal (``last/`` already written): one line on what was saved, then raise."""
        name = signal.Signals(signum).name
        if self._launcher is not None and os.getppid() != self._launcher:
            name = f"the torchrun launcher (pid {self._launcher}) is gone"
        if self.out_dir is not None and self.config.save_last:
            where = (f"in epoch {st.epoch + 1} after batch {st.batch}/{steps_per_epoch}" if st.batch
                     else f"after epoch {st.epoch}")
            msg = (f"chainrule: {name}: stopped after step {st.step}; saved {self.out_dir / LAST_DIR} ({where}); "
                   f"continue with the same command and --resume (fit(..., resume=True))")
        else:
            msg = f"chainrule: {name}: stopped after step {st.step}; nothing saved (no out_dir or save_last=False)"
        if self.is_main:
            tqdm.write(msg, file=sys.stderr)  # above the progress bars, not glued onto them
            sys.stderr.flush()
        raise TrainingInterrupted(msg, signum)

    def _shard(self, n: int) -> slice:
        """This rank's part of a global batch of ``n`` examples: contiguous, disjoint, sizes differing
        by at most one (equal when ``n`` is a multiple of the world size)."""
        r, w = dist_utils.rank(), self.world_size
        return slice(r * n // w, (r + 1) * n // w)

    def _validate(self, val: Any, context: Any, members: Any, st: TrainState, epoch: int, row: dict[str, float]) -> None:
        c = self.config
        t0 = time.perf_counter()
        show = self._show_progress  # a bar of its own: validating 10k images takes minutes on a CPU
        if self.world_size > 1:  # rank 0 evaluates, every rank gets its numbers: identical decisions
            nums = torch.zeros(3, dtype=torch.float64)
            if self.is_main:
                res = self._evaluate(val, context, members, show)
                nums[:] = torch.tensor([res.nll_nats, res.bits_per_dim, res.nll_nats / res.dim], dtype=torch.float64)
            nll_nats, bpd, npd = (float(v) for v in dist_utils.broadcast(nums))
        else:
            res = self._evaluate(val, context, members, show)
            nll_nats, bpd, npd = res.nll_nats, res.bits_per_dim, res.nll_nats / res.dim
        self._eval_seconds_per_example = (time.perf_counter() - t0) / len(val)  # the time budget's estimate
        if self.nll_offset:  # standardized data: the NLL of the data in their own units
            nll_nats += self.nll_offset
            bpd, npd = nll_nats / (self.model.dim * math.log(2)), nll_nats / self.model.dim
        row.update(val_nll_nats=nll_nats, val_bits_per_dim=bpd, val_nats_per_dim=npd)
        if nll_nats < st.result.best_val_nll_nats:
            st.result.best_val_nll_nats, st.result.best_epoch, st.bad_epochs = nll_nats, epoch, 0
            st.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._save_best(st.result)
        else:
            st.bad_epochs += 1
            if c.schedule == "plateau" and c.patience and st.bad_epochs % max(1, c.patience // 2) == 0:
                st.lr_scale *= 0.5

    def _closing_validation(self, val: Any, context: Any, members: Any, st: TrainState, epoch: int,
                            row: dict[str, float], log_file: Any, bar: Any) -> None:
        """After the time budget stopped training inside epoch ``epoch`` (0-based; ``last/`` already
        holds the position, so a resume continues exactly as if nothing had happened): validate the
        weights reached, keep them as the best model if they are (or when there is no best yet), and
        log the row with the fraction of epochs completed (``epoch + batches / steps per epoch``)."""
        steps_per_epoch = self.config.steps_per_epoch or math.ceil(self._train_size / self.config.batch_size)
        done = epoch + st.batch / steps_per_epoch
        row = {"epoch": done, **row}
        if val is not None:
            self._validate(val, context, members, st, done, row)
        elif st.best_state is None:
            self._save_best(st.result)
        st.result.history.append(row)
        st.result.stopped_by_time = True
        self._write_log(log_file, row)
        self._tb_epoch(row, st.step)
        bar.set_postfix(self._epoch_postfix(row), refresh=False)
        bar.set_description(f"train (time budget reached in epoch {epoch + 1})")
        if self.is_main:
            log.info("time budget reached in epoch %d after batch %d of %d (saved %s): %s", epoch + 1, st.batch,
                     steps_per_epoch, self.out_dir / LAST_DIR if self.out_dir else "nothing",
                     ", ".join(f"{k}={v:.5g}" for k, v in row.items() if k != "epoch"))

    def _evaluate(self, val: Any, context: Any, members: Any, progress: bool) -> Any:
        """The validation result: the exact NLL, or what a model with its own objective validates by
        (``validation_nll``: the VQ-VAE's reconstruction NLL -log p(x | z*))."""
        if getattr(self.model, "own_objective", False):
            return summarize(self.model.validation_nll(val, context, self.config.eval_batch_size), self.model.dim)
        return evaluate(self.model, val, context, self.config.eval_batch_size, member=members, progress=progress,
                        desc="validation")

    def _fit_closed_form(self, train: Any, val: Any, train_transform: Any, train_context: Any,
                         val_context: Any) -> TrainResult:
        """Models with a closed-form maximum-likelihood estimate (``closed_form = True``, a
        ``fit_counts(data, context)`` method: the histogram) are fitted in one pass, then validated."""
        start = time.perf_counter()
        data = train if train_transform is None else train_transform(train, self.data_rng)
        model = self.model.base_model
        model.fit_counts(data, train_context)
        self._clear_previous_outputs()
        row: dict[str, float] = {"epoch": 1, "train_nll_nats": evaluate(self.model, data, train_context).nll_nats,
                                 "lr": 0.0}
        result = TrainResult(epochs_run=1, best_epoch=1)
        if val is not None:
            res = evaluate(self.model, val, val_context, self.config.eval_batch_size)
            row.update(val_nll_nats=res.nll_nats, val_bits_per_dim=res.bits_per_dim, val_nats_per_dim=res.nll_nats / res.dim)
            result.best_val_nll_nats = res.nll_nats
        result.train_seconds = row["seconds"] = time.perf_counter() - start
        result.history.append(row)
        log_file = self._open_log()
        if log_file is not None:
            self._write_log(log_file, row)
            log_file.close()
        self._tb = self._open_tensorboard(purge_step=None)
        if self._tb is not None:
            self._tb_epoch(row, 0)
            self._tb.close()
            self._tb = None
        self._save_best(result)
        self.model.eval()
        return result

    # ------------------------------------------------------------------ files
    def _open_log(self, history: list[dict[str, float]] | None = None) -> Any:
        """``out_dir/log.csv`` open for appending rows (rank 0; None elsewhere or without an
        ``out_dir``): a new, empty log, or with ``history`` (a resume) the log rewritten to hold
        exactly those rows, so that a row written after the checkpoint (the process was killed
        between the two) is not there twice once its epoch is redone."""
        if self.out_dir is None or not self.is_main:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "log.csv"
        if history is None:
            return open(path, "w", newline="")

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                for row in history:
                    self._write_log(f, row)
        atomic_write(path, write)
        return open(path, "a", newline="")

    def _write_log(self, f: Any, row: dict[str, float]) -> None:
        if f is None:
            return
        # a model with its own objective may log more columns (the VQ-VAE: codebook usage)
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS + tuple(getattr(self.model, "log_fields", ())))
        if f.tell() == 0:
            writer.writeheader()
        writer.writerow(row)
        f.flush()

    def _open_tensorboard(self, purge_step: int | None) -> Any:
        """A ``SummaryWriter`` on ``out_dir/tensorboard/`` (rank 0, with an ``out_dir``, unless
        ``config.tensorboard`` is False or the package is missing in auto mode), else None.
        ``purge_step``: a resume's first new step, from which TensorBoard hides the earlier
        files' events."""
        if self.out_dir is None or not self.is_main or self.config.tensorboard is False:
            return None
        writer = _summary_writer()
        if writer is None:
            return None
        return writer(log_dir=str(self.out_dir / TENSORBOARD_DIR), purge_step=purge_step or None)

    def _tb_epoch(self, row: dict[str, float], step: int) -> None:
        """An epoch's log row as TensorBoard scalars at optimizer step ``step`` (and flushed: a
        killed run keeps its finished epochs)."""
        if self._tb is None:
            return
        tags = {"train_nll_nats": "train/nll_nats", "val_nll_nats": "val/nll_nats",
                "val_bits_per_dim": "val/bits_per_dim", "val_nats_per_dim": "val/nats_per_dim"}
        for key, tag in tags.items():
            if key in row:
                self._tb.add_scalar(tag, row[key], step)
        self._tb.add_scalar("epoch", row["epoch"], step)
        self._tb.flush()

    def _clear_previous_outputs(self) -> None:
        """A fresh (not resumed) run replaces what a previous run in ``out_dir`` left that it would
        otherwise mix with its own (``best/``, ``last/`` and ``log.csv`` are overwritten anyway): the
        checkpoints in ``checkpoints/`` and the event files in ``tensorboard/`` — only those, only
        chainrule's (``step-N`` checkpoint directories, ``events.out.tfevents.*`` files)."""
        if self.out_dir is None or not self.is_main:
            return
        root = self.out_dir / CHECKPOINTS_DIR
        for path, _ in self._checkpoint_dirs(root):
            shutil.rmtree(path, ignore_errors=True)
        _remove_stale_temporaries(root)
        tb = self.out_dir / TENSORBOARD_DIR
        if tb.is_dir():
            for f in tb.glob("events.out.tfevents.*"):
                if f.is_file():
                    f.unlink()
        for d in (root, tb):
            with contextlib.suppress(OSError):  # only when empty: anything else there stays
                d.rmdir()

    @staticmethod
    def _checkpoint_dirs(root: Path) -> list[tuple[Path, int]]:
        """The checkpoints chainrule wrote in ``root`` (``step-N/`` with a chainrule ``config.json``
        and a ``trainer_state.json``) with their steps, oldest first."""
        if not root.is_dir():
            return []
        found = []
        for path in root.iterdir():
            m = _STEP_DIR.fullmatch(path.name)
            if m is None or path.is_symlink() or not path.is_dir() or not (path / STATE_JSON).is_file():
                continue
            try:
                read_config(path)
            except CheckpointError:  # not chainrule's: left alone
                continue
            found.append((path, int(m.group(1))))
        return sorted(found, key=lambda pair: pair[1])

    def _keep_checkpoint(self, step: int) -> None:
        """Copy the ``last/`` just written to ``checkpoints/step-<step>/`` (hard links where possible;
        into a temporary directory, then renamed) and delete the older ones beyond ``keep_last``.

        Kept: the ``keep_last`` highest steps up to ``step``. A checkpoint of a *later* step (left by
        a run that went further before ``last/`` was replaced by hand) is not this run's past and
        is left alone."""
        assert self.out_dir is not None
        root = self.out_dir / CHECKPOINTS_DIR
        root.mkdir(exist_ok=True)
        _remove_stale_temporaries(root)  # a previous write killed half-way
        name = f"step-{step:06d}"
        tmp, dst, old = root / f".{name}.tmp", root / name, root / f".{name}.old"
        link_or_copy_tree(self.out_dir / LAST_DIR, tmp)
        if dst.exists():  # the same step again (a resumed run re-saving it): replaced
            dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
        past = [path for path, s in self._checkpoint_dirs(root) if s <= step]
        for path in past[:max(0, len(past) - self.config.keep_last)]:
            shutil.rmtree(path, ignore_errors=True)

    def _save_best(self, result: TrainResult) -> None:
        if self.out_dir is None or not self.is_main:
            return
        extra = {**self.extra, "train_config": asdict(self.config), "best_epoch": result.best_epoch,
                 "best_val_nll_nats": None if math.isinf(result.best_val_nll_nats) else result.best_val_nll_nats}
        save_model(self.model, self.out_dir / "best", extra=extra)
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    def _save_last(self, st: TrainState) -> None:
        """Write ``out_dir/last/``: everything :meth:`_load_last` needs to continue the run.

        Written into ``last.tmp/`` and swapped in by renames, so an interruption while writing
        leaves the previous ``last/`` (or ``last.old/``) intact. Written after every epoch and, with
        ``save_every`` or on a signal, mid-epoch (``batch`` > 0: the batches of epoch ``epochs_done``
        already taken, with their running loss). With ``keep_last`` > 1 also kept as
        ``checkpoints/step-<step>/`` (:meth:`_keep_checkpoint`).

        Under DDP every rank calls this (at the same points): the ranks' torch generators are
        gathered to rank 0, which alone writes."""
        if not self.config.save_last:
            return
        rank_rngs = self._gather_rng_states()  # a collective: before the non-writing ranks return
        if self.out_dir is None or not self.is_main:
            return
        tmp = self.out_dir / f"{LAST_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(self.model, tmp, extra={**self.extra, "train_config": asdict(self.config)})
        opt = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, dict[str, Any]] = {}
        for idx, state in opt["state"].items():
            for k, v in state.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optimizer.{idx}.{k}"] = v.detach().cpu().contiguous().clone()
                else:
                    scalars.setdefault(str(idx), {})[k] = v
        for k, v in (st.best_state or {}).items():
            tensors[f"best.{k}"] = v.detach().cpu().contiguous().clone()
        tensors["rng.trainer"] = self.data_rng.get_state()
        tensors["rng.members"] = self.member_rng.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        for r, state in enumerate(rank_rngs[1:], start=1):  # the other ranks' (dropout draws differ per rank)
            tensors[f"rng.torch.{r}"] = state
        if self._cuda_device() is not None:  # dropout on a GPU draws from the device's generator
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self._cuda_device())
        atomic_write(tmp / STATE_TENSORS, lambda p: save_file(tensors, p))
        res = asdict(st.result)
        res["best_val_nll_nats"] = None if math.isinf(st.result.best_val_nll_nats) else st.result.best_val_nll_nats
        state_json = {"version": STATE_VERSION, "epochs_done": st.epoch, "step": st.step, "lr_scale": st.lr_scale, "bad_epochs": st.bad_epochs,
                      "batch": st.batch, "epoch_nll_sum": st.epoch_nll_sum, "epoch_count": st.epoch_count,
                      "has_best": st.best_state is not None,
                      "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars}, "result": res}
        # written last and atomically: its presence marks a complete checkpoint (recover_last)
        atomic_write(tmp / STATE_JSON, lambda p: Path(p).write_text(json.dumps(state_json, indent=1)))
        last, old = self.out_dir / LAST_DIR, self.out_dir / f"{LAST_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if last.exists():
            last.rename(old)
        tmp.rename(last)
        shutil.rmtree(old, ignore_errors=True)
        if self.config.keep_last > 1:
            self._keep_checkpoint(st.step)
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    def _cuda_device(self) -> torch.device | None:
        """The model's CUDA device (None on any other device)."""
        p = next(self.model.parameters(), None)
        return p.device if p is not None and p.device.type == "cuda" else None

    def _gather_rng_states(self) -> list[torch.Tensor]:
        """Every rank's torch (CPU) generator state, on rank 0 (one entry per rank; on the other
        ranks only their own); a single process: its own. Every rank must call it."""
        state = torch.get_rng_state()
        if self.world_size == 1:
            return [state]
        # NCCL moves only CUDA tensors; gloo takes CPU ones
        dev = self._cuda_device() if torch.distributed.get_backend() == "nccl" else None
        mine = state.to(dev) if dev is not None else state
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, mine)
        return [t.cpu() for t in out] if self.is_main else [state]

    def _check_resumed_config(self, saved: Any, batch: int, last: Path) -> None:
        """Compare the training options of the run being resumed (``saved``, the ``asdict`` of its
        :class:`TrainConfig`; None for checkpoints that do not record it) with this trainer's.

        A change that cannot continue the run is refused: another optimizer (the saved state is
        the old one's), or, resuming inside an epoch (after ``batch`` batches), another batch size,
        epoch length or seed (the position is counted in the old batches of the old data order).
        Any other change (a lower learning rate to go on with, another schedule, more epochs) is
        allowed and said once, so that a run resumed with different options is never mistaken for
        the uninterrupted one. Budgets and bookkeeping (max_seconds, which counts from the resume,
        save_every, keep_last, tensorboard, eval_batch_size) are not reported."""
        if not isinstance(saved, dict):
            return
        now = _json_roundtrip(asdict(self.config))
        quiet = {"max_seconds", "save_every", "keep_last", "tensorboard", "eval_batch_size"}
        changed = {k: (saved[k], v) for k, v in now.items() if k in saved and saved[k] != v and k not in quiet}
        flag = {"batch_size": "--batch-size", "steps_per_epoch": "--steps-per-epoch", "seed": "--seed"}
        if "optimizer" in changed:
            old, new = changed["optimizer"]
            raise InputError(f"{last} was trained with optimizer {old!r}, whose state it holds; resuming with "
                             f"{new!r} cannot use it: resume with --optimizer {old} (optimizer={old!r})")
        if batch:
            for key in ("batch_size", "steps_per_epoch", "seed"):
                if key in changed:
                    old, new = changed[key]
                    raise InputError(f"{last} stopped inside an epoch, after batch {batch} of {key} {old} (the data "
                                     f"order depends on it); resuming there with {key} {new} would skip or repeat "
                                     f"examples: resume with {flag[key]} {old} ({key}={old!r}), and change it once "
                                     "an epoch has ended")
        if changed and self.is_main:
            log.warning("resuming %s with changed training options: %s", self.out_dir,
                        ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()))

    def _load_last(self) -> TrainState:
        """Restore model, optimizer and generators from ``out_dir/last/``; returns the loop state."""
        if self.out_dir is None:
            raise InputError("resume needs the run directory: give the Trainer an out_dir")
        last = self.out_dir / LAST_DIR
        if self.is_main:  # rank 0 alone renames; the others wait at the barrier, then read last/
            recover_last(self.out_dir)  # whatever an interrupted write left (its docstring: every state)
        dist_utils.barrier()
        if not (last / STATE_JSON).is_file():
            raise CheckpointError(f"nothing to resume in {self.out_dir}: no {LAST_DIR}/{STATE_JSON} "
                                  "(written after every epoch by runs with save_last=True)")
        model, saved = self.model, read_config(last)
        for key in ("model", "shape", "num_values", "hyperparameters"):
            if _json_roundtrip(saved.get(key)) != _json_roundtrip(model.config.get(key)):
                raise CheckpointError(f"{last} holds a different model ({key}: {saved.get(key)!r}, "
                                      f"this trainer's: {model.config.get(key)!r}); resume with the same model")
        try:
            state = json.loads((last / STATE_JSON).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{last} is damaged ({exc}); cannot resume from it") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{last / STATE_JSON} is damaged (not a JSON object); cannot resume from it")
        # before anything else is read: a newer layout may mean anything
        version = check_version(state.get("version", 1), STATE_VERSION, last / STATE_JSON, "trainer state")
        _check_trainer_state(state, last / STATE_JSON)
        self._check_resumed_config(saved.get("extra", {}).get("train_config"), state.get("batch", 0), last)
        try:
            tensors = load_file(str(last / STATE_TENSORS))
            weights = load_file(str(last / "model.safetensors"))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{last} is damaged ({exc}); cannot resume from it") from None
        model.load_state_dict(weights)
        opt_state: dict[int, dict[str, Any]] = {}
        for key, v in tensors.items():
            if key.startswith("optimizer."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = v
        for idx, sc in state["optimizer"]["scalars"].items():
            opt_state.setdefault(int(idx), {}).update(sc)
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
        self.data_rng.set_state(tensors["rng.trainer"])
        if "rng.members" in tensors:
            self.member_rng.set_state(tensors["rng.members"])
        # this rank's own generator (a checkpoint from before they were all saved: rank 0's)
        torch.set_rng_state(tensors.get(f"rng.torch.{dist_utils.rank()}", tensors["rng.torch"]))
        if "rng.cuda" in tensors and self._cuda_device() is not None and self.world_size == 1:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self._cuda_device())
        best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")} if state["has_best"] else None
        res = state["result"]
        if res["best_val_nll_nats"] is None:
            res["best_val_nll_nats"] = math.inf
        if version < 2:  # version 1 counted epochs from 0 (best_epoch -1: none yet)
            res["history"] = [{**row, "epoch": row["epoch"] + 1} for row in res["history"]]
            res["best_epoch"] += 1
        if self.is_main:
            batch = state.get("batch", 0)
            where = (f"in epoch {state['epochs_done'] + 1} after batch {batch}" if batch
                     else f"after epoch {state['epochs_done']}")
            log.info("resuming %s %s (step %d)", self.out_dir, where, state["step"])
        return TrainState(epoch=state["epochs_done"], step=state["step"], lr_scale=state["lr_scale"],
                          bad_epochs=state["bad_epochs"], batch=state.get("batch", 0),
                          epoch_nll_sum=state.get("epoch_nll_sum", 0.0), epoch_count=state.get("epoch_count", 0),
                          result=TrainResult(**res), best_state=best)


def _summary_writer() -> Any:
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


def _remove_stale_temporaries(root: Path) -> None:
    """The ``.step-N.tmp`` / ``.step-N.old`` directories of ``checkpoints/`` that a write killed
    half-way left behind."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if (path.name.startswith(".step-") and path.name.endswith((".tmp", ".old")) and path.is_dir()
                and not path.is_symlink()):
            shutil.rmtree(path, ignore_errors=True)


def _json_roundtrip(v: Any) -> Any:
    """``v`` as JSON would store it (tuples become lists), to compare a saved config with a live one."""
    return json.loads(json.dumps(v))
