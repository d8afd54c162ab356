"""Models shipped inside a package: one export folder per model, found by name, loaded offline.

A model package keeps its shipped models in a ``pretrained/`` folder of its own. Each model is a sub-folder named
after it in the export layout (``config.json`` + ``model.safetensors``, weights stored in float16 to keep the
package small and loaded into float32) with a ``MODEL_CARD.md``. :class:`ShippedModels` lists and finds them, and
turns what a user typed (a shipped name or a path) into the folder or file to load (``locate``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from diffcore.checkpoint import EXPORT_CONFIG, EXPORT_WEIGHTS
from diffcore.errors import CheckpointError

__all__ = ["ShippedModels"]

log = logging.getLogger(__name__)


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
        """The folder of the shipped model when ``path_or_name`` is exactly a shipped name, else the path.

        A bare shipped name always means the shipped model, so what a documented command does cannot depend on the
        folders that happen to be in the working directory (a folder called ``ljspeech-tiny`` there used to replace
        the shipped vocoder without a word). When such a folder exists, a warning names both and how to load the
        folder instead: write it as a path (``./ljspeech-tiny``). An empty path is a ``CheckpointError`` (an unset
        variable would load the working directory)."""
        text = os.fspath(path_or_name)
        if text.strip() == "":
            raise CheckpointError(f"an empty model path (an unset variable?): give a run folder, a checkpoint, an "
                                  f"export folder or a shipped {self.kind} name ({', '.join(self.names()) or 'none'})")
        p = Path(path_or_name)
        if text not in self.names():
            return p
        if p.exists():
            log.warning("%r is the name of a shipped %s and also a path in the working directory (%s): using the "
                        "shipped %s; write ./%s to load the local one", text, self.kind, p.resolve(), self.kind, text)
        return self.folder / text

    def locate(self, path_or_name: str | os.PathLike) -> Path:
        """What ``load`` reads for ``path_or_name``: the shipped model's folder for a shipped name (:meth:`resolve`),
        else the path (``~`` expanded), which must exist: a ``CheckpointError`` names it and the shipped models
        otherwise, so a mistyped name says what could have been meant."""
        where = self.resolve(path_or_name).expanduser()
        if not where.exists():
            raise CheckpointError(f"{os.fspath(path_or_name)}: no such file or folder, and not a shipped model name "
                                  f"(shipped: {', '.join(self.names()) or 'none'})")
        return where
