"""Training by maximum likelihood (teacher forcing): :class:`Trainer`, :class:`TrainConfig`."""

from chainrule.training.trainer import OPTIMIZERS, SCHEDULES, TrainConfig, Trainer, TrainResult, TrainState

__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainConfig", "TrainResult", "TrainState", "Trainer"]
