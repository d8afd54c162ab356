"""The exceptions the core raises, in a leaf module that imports nothing from diffcore.

``ConfigError`` is raised by every configuration check (config classes, recipes, device names), ``CheckpointError``
by every checkpoint or output file that cannot be written or read. Both are re-exported by the modules that
raise them most (``diffcore.config.ConfigError``, ``diffcore.checkpoint.CheckpointError``); they live here so
that any module can raise them without importing those modules (which would make circles of imports).
"""

from __future__ import annotations

__all__ = ["ConfigError", "CheckpointError"]


class ConfigError(ValueError):
    """An invalid configuration: an unknown key, a wrong type, an inconsistent combination or a bad recipe file."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the file and the problem."""
