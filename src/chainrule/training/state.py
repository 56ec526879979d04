"""Where a training run is, and how a resume finds it again.

:class:`TrainResult` (what :meth:`Trainer.fit <chainrule.training.trainer.Trainer.fit>` returns) and
:class:`TrainState` (everything besides the weights and the optimizer that a resume restores), and
the two ends of a checkpoint: :func:`save_last` turns a trainer's optimizer, generators and state
into the files of ``RUN/last/`` and :func:`load_last` turns them back. The files themselves (the
write-and-rename protocol, the recovery of an interrupted write, the kept ``checkpoints/``, the
format version) are :mod:`chainrule.io.run_state`'s.

Under DDP every rank calls :func:`save_last` at the same points (the ranks' torch generators are
gathered to rank 0, which alone writes) and :func:`load_last` (rank 0 recovers ``last/``, every rank
reads it and restores its own torch generator).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from chainrule.errors import InputError
from chainrule.io import run_state
from chainrule.io.checkpoint import save_model
from chainrule.models.registry import upgrade_hyperparameters
from chainrule.training import distributed as dist_utils

if TYPE_CHECKING:
    from chainrule.training.trainer import Trainer

log = logging.getLogger("chainrule.training.trainer")  # the trainer's messages, under the trainer's name


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


def save_best(trainer: Trainer, result: TrainResult) -> None:
    """Write ``out_dir/best/`` (rank 0): the model, its training options and best epoch in its config."""
    if trainer.out_dir is None or not trainer.is_main:
        return
    extra = {**trainer.extra, "train_config": asdict(trainer.config), "best_epoch": result.best_epoch,
             "best_val_nll_nats": None if math.isinf(result.best_val_nll_nats) else result.best_val_nll_nats}
    save_model(trainer.model, trainer.out_dir / "best", extra=extra)
    if trainer.on_checkpoint is not None:
        trainer.on_checkpoint()


def save_last(trainer: Trainer, st: TrainState) -> None:
    """Write ``out_dir/last/``: everything :func:`load_last` needs to continue the run.

    Written after every epoch and, with ``save_every`` or on a signal, mid-epoch (``batch`` > 0:
    the batches of epoch ``epochs_done`` already taken, with their running loss). With
    ``keep_last`` > 1 also kept as ``checkpoints/step-<step>/``."""
    if not trainer.config.save_last:
        return
    rank_rngs = _gather_rng_states(trainer)  # a collective: before the non-writing ranks return
    if trainer.out_dir is None or not trainer.is_main:
        return
    tensors, optimizer = run_state.optimizer_files(trainer.optimizer.state_dict())
    for k, v in (st.best_state or {}).items():
        tensors[f"best.{k}"] = v.detach().cpu().contiguous().clone()
    tensors["rng.trainer"] = trainer.data_rng.get_state()
    tensors["rng.members"] = trainer.member_rng.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    for r, rng in enumerate(rank_rngs[1:], start=1):  # the other ranks' (dropout draws differ per rank)
        tensors[f"rng.torch.{r}"] = rng
    device = _cuda_device(trainer.model)
    if device is not None:  # dropout on a GPU draws from the device's generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    res = asdict(st.result)
    res["best_val_nll_nats"] = None if math.isinf(st.result.best_val_nll_nats) else st.result.best_val_nll_nats
    state = {"epochs_done": st.epoch, "step": st.step, "lr_scale": st.lr_scale, "bad_epochs": st.bad_epochs,
             "batch": st.batch, "epoch_nll_sum": st.epoch_nll_sum, "epoch_count": st.epoch_count,
             "has_best": st.best_state is not None, "optimizer": optimizer, "result": res}
    run_state.write_last(trainer.out_dir, trainer.model, {**trainer.extra, "train_config": asdict(trainer.config)},
                         tensors, state)
    if trainer.config.keep_last > 1:
        run_state.keep_checkpoint(trainer.out_dir, st.step, trainer.config.keep_last)
    if trainer.on_checkpoint is not None:
        trainer.on_checkpoint()


def saved_position(trainer: Trainer, st: TrainState) -> str | None:
    """What the ``last/`` just written holds, for the line a stop prints ("RUN/last (after epoch 3)";
    None: nothing was saved, no ``out_dir`` or ``save_last=False``)."""
    if trainer.out_dir is None or not trainer.config.save_last:
        return None
    where = (f"in epoch {st.epoch + 1} after batch {st.batch}/{trainer.steps_per_epoch}" if st.batch
             else f"after epoch {st.epoch}")
    return f"{trainer.out_dir / run_state.LAST_DIR} ({where})"


def _current_names(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config with its hyperparameters in the current spelling (a run saved before a rename)."""
    if isinstance(config.get("hyperparameters"), dict) and isinstance(config.get("model"), str):
        return {**config, "hyperparameters": upgrade_hyperparameters(config["model"], config["hyperparameters"])}
    return config


def load_last(trainer: Trainer) -> TrainState:
    """Restore model, optimizer and generators from ``out_dir/last/``; returns the loop state."""
    if trainer.out_dir is None:
        raise InputError("resume needs the run directory: give the Trainer an out_dir")
    out_dir, model = trainer.out_dir, trainer.model
    if trainer.is_main:  # rank 0 alone renames; the others wait at the barrier, then read last/
        run_state.recover_last(out_dir)  # whatever an interrupted write left (its docstring: every state)
    dist_utils.barrier()
    last, saved, state = run_state.read_last_state(out_dir, model.config, _current_names)
    check_resumed_config(trainer, saved.get("extra", {}).get("train_config"), state.get("batch", 0), last)
    tensors, weights = run_state.read_last_tensors(last)
    model.load_state_dict(weights)
    trainer.optimizer.load_state_dict(run_state.optimizer_state(tensors, state["optimizer"]))
    trainer.data_rng.set_state(tensors["rng.trainer"])
    if "rng.members" in tensors:
        trainer.member_rng.set_state(tensors["rng.members"])
    # this rank's own generator (a checkpoint from before they were all saved: rank 0's)
    torch.set_rng_state(tensors.get(f"rng.torch.{dist_utils.rank()}", tensors["rng.torch"]))
    device = _cuda_device(model)
    if "rng.cuda" in tensors and device is not None and trainer.world_size == 1:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")} if state["has_best"] else None
    res = state["result"]
    if res["best_val_nll_nats"] is None:
        res["best_val_nll_nats"] = math.inf
    if trainer.is_main:
        batch = state.get("batch", 0)
        where = (f"in epoch {state['epochs_done'] + 1} after batch {batch}" if batch
                 else f"after epoch {state['epochs_done']}")
        log.info("resuming %s %s (step %d)", out_dir, where, state["step"])
    return TrainState(epoch=state["epochs_done"], step=state["step"], lr_scale=state["lr_scale"],
                      bad_epochs=state["bad_epochs"], batch=state.get("batch", 0),
                      epoch_nll_sum=state.get("epoch_nll_sum", 0.0), epoch_count=state.get("epoch_count", 0),
                      result=TrainResult(**res), best_state=best)


def check_resumed_config(trainer: Trainer, saved: Any, batch: int, last: Path) -> None:
    """Compare the training options of the run being resumed (``saved``, the ``asdict`` of its
    :class:`TrainConfig`; None for checkpoints that do not record it) with the trainer's.

    A change that cannot continue the run is refused: another optimizer (the saved state is
    the old one's), or, resuming inside an epoch (after ``batch`` batches), another batch size,
    epoch length or seed (the position is counted in the old batches of the old data order).
    Any other change (a lower learning rate to go on with, another schedule, more epochs) is
    allowed and said once, so that a run resumed with different options is never mistaken for
    the uninterrupted one. Budgets and bookkeeping (max_seconds, which counts from the resume,
    save_every, keep_last, tensorboard, eval_batch_size) are not reported."""
    if not isinstance(saved, dict):
        return
    now = run_state.json_roundtrip(asdict(trainer.config))
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
    if changed and trainer.is_main:
        log.warning("resuming %s with changed training options: %s", trainer.out_dir,
                    ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()))


def _cuda_device(model: torch.nn.Module) -> torch.device | None:
    """The model's CUDA device (None on any other device)."""
    p = next(model.parameters(), None)
    return p.device if p is not None and p.device.type == "cuda" else None


def _gather_rng_states(trainer: Trainer) -> list[torch.Tensor]:
    """Every rank's torch (CPU) generator state, on rank 0 (one entry per rank; on the other
    ranks only their own); a single process: its own. Every rank must call it."""
    state = torch.get_rng_state()
    if trainer.world_size == 1:
        return [state]
    # NCCL moves only CUDA tensors; gloo takes CPU ones
    dev = _cuda_device(trainer.model) if torch.distributed.get_backend() == "nccl" else None
    mine = state.to(dev) if dev is not None else state
    out = [torch.empty_like(mine) for _ in range(trainer.world_size)]
    torch.distributed.all_gather(out, mine)
    return [t.cpu() for t in out] if trainer.is_main else [state]
