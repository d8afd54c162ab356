"""The one training engine of diffstack (see :mod:`diffcore.train.engine`).

Public names: :class:`TrainTask` (what a model family implements), :class:`TrainConfig` (the recipe's ``train``
section), :class:`Trainer` (``Trainer(task, config, run_dir).fit()``), :class:`TrainingError`, the loggers
(:class:`RunLogger`, :class:`NullLogger`, :func:`read_log`) and the distributed helpers.
"""

from diffcore.train.config import TrainConfig
from diffcore.train.distributed import DistInfo, dist_env, is_main_process
from diffcore.train.engine import Trainer, TrainingError
from diffcore.train.logger import NullLogger, RunLogger, read_log
from diffcore.train.optim import lr_at
from diffcore.train.task import TrainTask

__all__ = [
    "TrainTask",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "RunLogger",
    "NullLogger",
    "read_log",
    "lr_at",
    "DistInfo",
    "dist_env",
    "is_main_process",
]
