"""Training by maximum likelihood (teacher forcing): :class:`Trainer`, :class:`TrainConfig`."""

from chainrule.training.config import OPTIMIZERS, SCHEDULES, TrainConfig
from chainrule.training.precision import PRECISIONS, PrecisionChoice
from chainrule.training.trainer import Trainer, TrainResult, TrainState

__all__ = ["OPTIMIZERS", "PRECISIONS", "SCHEDULES", "PrecisionChoice", "TrainConfig", "TrainResult", "TrainState", "Trainer"]
