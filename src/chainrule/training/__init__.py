"""Training by maximum likelihood (teacher forcing): :class:`Trainer`, :class:`TrainConfig`, and the
:class:`Callback` s the loop reports through."""

from chainrule.training.callbacks import Callback
from chainrule.training.config import OPTIMIZERS, SCHEDULES, TrainConfig
from chainrule.training.precision import PRECISIONS, PrecisionChoice
from chainrule.training.trainer import Trainer, TrainResult, TrainState

__all__ = ["OPTIMIZERS", "PRECISIONS", "SCHEDULES", "Callback", "PrecisionChoice", "TrainConfig", "TrainResult",
           "TrainState", "Trainer"]
