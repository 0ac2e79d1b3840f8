"""Finding the TensorBoard writer among the Trainer's loggers."""

from __future__ import annotations

from typing import Any


def find_tensorboard(trainer) -> Any | None:
    """The ``SummaryWriter`` of the Trainer's first TensorBoard logger, or None if it has none."""
    from pytorch_lightning.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
