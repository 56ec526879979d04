"""Training by maximum likelihood (teacher forcing): :class:`Trainer`, :class:`TrainConfig`."""

from chainrule.training.trainer import (
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    TrainConfig,
    Trainer,
    TrainResult,
    TrainState,
)
from chainrule.training.precision import PrecisionChoice

__all__ = ["OPTIMIZERS", "PRECISIONS", "SCHEDULES", "PrecisionChoice", "TrainConfig", "TrainResult", "TrainState", "Trainer"]
