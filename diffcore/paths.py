"""What a path that should be a regular file really is, in words, for error messages.

``Path.is_file()`` is false for a missing path, a folder, a FIFO, a device and a socket alike; a message saying
"does not exist" about a FIFO or a folder sends the user looking in the wrong place.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["not_a_file_reason"]


def not_a_file_reason(path: str | os.PathLike) -> str:
    """Why ``path`` is not a regular file: "does not exist", "is a folder, not a file", "is a FIFO (named pipe),
    not a regular file", "is a device, ...", "is a socket, ..."; "" when it is a regular file."""
    if os.fspath(path) == "":
        return "is an empty path"
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return "does not exist"
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return f"is {kind}, not a regular file"
