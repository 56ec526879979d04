"""Models fitted outside the gradient loop: a closed-form maximum-likelihood estimate.

A model with ``closed_form = True`` and a ``fit_counts(data, context)`` method (the histogram of
:mod:`chainrule.models.histogram`: the counts of every value are its maximum-likelihood estimate) is
fitted by :meth:`Trainer.fit <chainrule.training.trainer.Trainer.fit>` in one pass over the
(transformed) training set, then validated; its run looks like a one-epoch run (``best/``, a
one-row ``log.csv`` and the other callbacks' one ``on_epoch_end``), without optimizer, steps,
``last/`` or resume.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from chainrule.inference.likelihood import evaluate
from chainrule.io import run_state
from chainrule.training.state import TrainResult, TrainState, save_best

if TYPE_CHECKING:
    from chainrule.training.trainer import Trainer


def fit_closed_form(trainer: Trainer, train: Any, val: Any, train_transform: Any, train_context: Any,
                    val_context: Any) -> TrainResult:
    """Fit ``trainer.model`` by counting ``train`` (``train_transform`` applied once, with the
    trainer's data generator), validate on ``val``, log the one row and write ``best/``."""
    start = time.perf_counter()
    data = train if train_transform is None else train_transform(train, trainer.data_rng)
    trainer.model.base_model.fit_counts(data, train_context)
    if trainer.out_dir is not None and trainer.is_main:
        run_state.clear_previous_outputs(trainer.out_dir)
    row: dict[str, float] = {"epoch": 1, "train_nll_nats": evaluate(trainer.model, data, train_context).nll_nats,
                             "lr": 0.0}
    result = TrainResult(epochs_run=1, best_epoch=1)
    if val is not None:
        res = evaluate(trainer.model, val, val_context, trainer.config.eval_batch_size)
        row.update(val_nll_nats=res.nll_nats, val_bits_per_dim=res.bits_per_dim, val_nats_per_dim=res.nll_nats / res.dim)
        result.best_val_nll_nats = res.nll_nats
    result.train_seconds = row["seconds"] = time.perf_counter() - start
    result.history.append(row)
    state = TrainState(epoch=1, result=result)  # step 0: no optimizer step was taken
    trainer.total_steps, trainer.validating, trainer.stopping = 0, val is not None, None
    try:
        trainer.emit("on_fit_start", state, False)
        trainer.emit("on_epoch_end", row, state)
    finally:
        trainer.emit("on_fit_end", state)
    save_best(trainer, result)
    trainer.model.eval()
    return result
