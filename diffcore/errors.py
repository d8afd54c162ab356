"""The exceptions the core raises, in a leaf module that imports nothing from diffcore.

``ConfigError`` is raised by every configuration check (config classes, recipes, device names), ``CheckpointError``
by every checkpoint or output file that cannot be written or read, ``TrainingError`` when training cannot go on.
They are re-exported where users import them (``diffcore.config.ConfigError``,
``diffcore.checkpoint.CheckpointError``, ``diffcore.train.TrainingError``); they live here so that any module can
raise them without importing those modules (which would make circles of imports).
"""

from __future__ import annotations

__all__ = ["ConfigError", "CheckpointError", "TrainingError"]


class ConfigError(ValueError):
    """An invalid configuration: an unknown key, a wrong type, an inconsistent combination or a bad recipe file."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the file and the problem."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses in a row, a failed data pipeline); the message names
    the step."""
