"""Validation after every epoch, and what it decides: the best model so far (kept in the
:class:`~chainrule.training.state.TrainState` and written as ``best/``), the count of epochs without
improvement that early stopping reads, and the plateau schedule's halving of the learning rate.

The figure is the exact NLL of the validation set (:func:`chainrule.inference.likelihood.evaluate`;
an ensemble's first ``val_components`` members), or what a model with its own objective validates
by (``validation_nll``: the VQ-VAE's reconstruction NLL -log p(x | z*)), plus the trainer's
``nll_offset`` (standardized data: the NLL of the data in their own units). Under DDP rank 0
evaluates and broadcasts its numbers, so every rank takes the same decisions.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from chainrule.inference.likelihood import evaluate, summarize
from chainrule.io import run_state
from chainrule.training import distributed as dist_utils
from chainrule.training.state import TrainState, save_best

if TYPE_CHECKING:
    from chainrule.training.trainer import Trainer

log = logging.getLogger("chainrule.training.trainer")  # the trainer's messages, under the trainer's name


def validate(trainer: Trainer, val: Any, context: Any, members: Any, st: TrainState, epoch: float,
             row: dict[str, float]) -> None:
    """Validate ``trainer.model`` on ``val`` after epoch ``epoch`` (from 1; fractional when the time
    budget stopped inside it): the ``val_*`` figures into ``row``, and ``st`` updated (a new best:
    its weights kept and ``best/`` written; else one more bad epoch, and the plateau schedule)."""
    c, model = trainer.config, trainer.model
    t0 = time.perf_counter()
    show = bool(trainer.progress) and trainer.is_main  # a bar of its own: validating 10k images takes minutes on a CPU
    if trainer.world_size > 1:  # rank 0 evaluates, every rank gets its numbers: identical decisions
        nums = torch.zeros(3, dtype=torch.float64)
        if trainer.is_main:
            res = _evaluate(trainer, val, context, members, show)
            nums[:] = torch.tensor([res.nll_nats, res.bits_per_dim, res.nll_nats / res.dim], dtype=torch.float64)
        nll_nats, bpd, npd = (float(v) for v in dist_utils.broadcast(nums))
    else:
        res = _evaluate(trainer, val, context, members, show)
        nll_nats, bpd, npd = res.nll_nats, res.bits_per_dim, res.nll_nats / res.dim
    trainer.budget.eval_seconds_per_example = (time.perf_counter() - t0) / len(val)  # the time budget's estimate
    if trainer.nll_offset:  # standardized data: the NLL of the data in their own units
        nll_nats += trainer.nll_offset
        bpd, npd = nll_nats / (model.dim * math.log(2)), nll_nats / model.dim
    row.update(val_nll_nats=nll_nats, val_bits_per_dim=bpd, val_nats_per_dim=npd)
    if nll_nats < st.result.best_val_nll_nats:
        st.result.best_val_nll_nats, st.result.best_epoch, st.bad_epochs = nll_nats, epoch, 0
        st.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        save_best(trainer, st.result)
    else:
        st.bad_epochs += 1
        if c.schedule == "plateau" and c.patience and st.bad_epochs % max(1, c.patience // 2) == 0:
            st.lr_scale *= 0.5


def closing_validation(trainer: Trainer, val: Any, context: Any, members: Any, st: TrainState, epoch: int,
                       row: dict[str, float]) -> None:
    """After the time budget stopped training inside epoch ``epoch`` (0-based; ``last/`` already
    holds the position, so a resume continues exactly as if nothing had happened): validate the
    weights reached, keep them as the best model if they are (or when there is no best yet), and
    log the row with the fraction of epochs completed (``epoch + batches / steps per epoch``)."""
    done = epoch + st.batch / trainer.steps_per_epoch
    row = {"epoch": done, **row}
    if val is not None:
        validate(trainer, val, context, members, st, done, row)
    elif st.best_state is None:
        save_best(trainer, st.result)
    st.result.history.append(row)
    st.result.stopped_by_time, trainer.stopping = True, "time budget"
    trainer.emit("on_epoch_end", row, st)
    if trainer.is_main:
        log.info("time budget reached in epoch %d after batch %d of %d (saved %s): %s", epoch + 1, st.batch,
                 trainer.steps_per_epoch, trainer.out_dir / run_state.LAST_DIR if trainer.out_dir else "nothing",
                 ", ".join(f"{k}={v:.5g}" for k, v in row.items() if k != "epoch"))


def _evaluate(trainer: Trainer, val: Any, context: Any, members: Any, progress: bool) -> Any:
    """The validation result: the exact NLL, or what a model with its own objective validates by."""
    model, batch_size = trainer.model, trainer.config.eval_batch_size
    if getattr(model, "own_objective", False):
        return summarize(model.validation_nll(val, context, batch_size), model.dim)
    return evaluate(model, val, context, batch_size, member=members, progress=progress, desc="validation")
