"""Training by maximum likelihood (teacher forcing): :class:`Trainer`, :class:`TrainConfig`."""

from chainrule.training.trainer import (
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    TrainConfig,
    Trainer,
    TrainResult,
    TrainState,
    autocast_dtype,
)

__all__ = ["OPTIMIZERS", "PRECISIONS", "SCHEDULES", "autocast_dtype", "TrainConfig", "TrainResult", "TrainState", "Trainer"]
