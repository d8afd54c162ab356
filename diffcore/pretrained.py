"""Models shipped inside a package: one export folder per model, found by name, loaded offline.

A model package keeps its shipped models in a ``pretrained/`` folder of its own. Each model is a sub-folder named
after it in the export layout (``config.json`` + ``model.safetensors``, weights stored in float16 to keep the
package small and loaded into float32) with a ``MODEL_CARD.md``. :class:`ShippedModels` lists and finds them.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffcore.checkpoint import EXPORT_CONFIG, EXPORT_WEIGHTS

__all__ = ["ShippedModels"]


class ShippedModels:
    """The shipped models in ``folder`` (``kind`` names them in messages, e.g. "vocoder")."""

    def __init__(self, folder: str | os.PathLike, kind: str) -> None:
        self.folder = Path(folder)
        self.kind = kind

    def names(self) -> list[str]:
        """Names of the shipped models, sorted: sub-folders holding ``config.json`` and ``model.safetensors``."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir()
                      if p.is_dir() and (p / EXPORT_CONFIG).is_file() and (p / EXPORT_WEIGHTS).is_file())

    def folder_of(self, name: str) -> Path:
        """The folder of the shipped model ``name``; ``KeyError`` naming the shipped ones for an unknown name."""
        if name in self.names():
            return self.folder / name
        raise KeyError(f"no shipped {self.kind} named {name!r} (shipped: {', '.join(self.names()) or 'none'})")

    def resolve(self, path_or_name: str | os.PathLike) -> Path:
        """``path_or_name`` as a path when it exists on disk, else the folder of the shipped model of that name;
        an existing path always wins, so a local folder is never shadowed by a shipped name."""
        p = Path(path_or_name)
        if p.exists() or str(path_or_name) not in self.names():
            return p
        return self.folder / str(path_or_name)
