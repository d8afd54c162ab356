"""The one atomic file writer: every file the package writes (checkpoints, configs, exports, media, outputs).

``atomic_write(path, write)`` calls ``write(f)`` on a temporary file in the same folder, flushes and fsyncs it,
renames it over ``path`` with ``os.replace`` (atomic on POSIX) and fsyncs the folder so the rename survives a power
cut. A process killed at any point leaves the previous file untouched (at worst a stray ``.NAME.XXXX.tmp`` file);
a failed write removes its temporary file and raises :class:`~diffcore.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from diffcore.errors import CheckpointError

__all__ = ["atomic_write", "write_json"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms/filesystems cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` atomically: ``write(f)`` into a temporary file of the same folder, flush, fsync, rename,
    fsync the folder. On any failure the temporary file is removed, ``path`` is untouched, and
    :class:`~diffcore.errors.CheckpointError` is raised naming the file and the cause."""
    path = Path(path)
    folder = path.parent
    tmp: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual mode
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(folder)
    except Exception as e:
        raise CheckpointError(f"could not write {path}: {type(e).__name__}: {e}") from e
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 1,
               default: Callable[[Any], Any] | None = None) -> Path:
    """``data`` as indented JSON plus a newline, written with :func:`atomic_write` (``default`` as in
    ``json.dumps``: turns values JSON cannot hold into ones it can). The metrics, manifests and summaries the
    commands write go through here."""
    text = json.dumps(data, indent=indent, default=default) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))
