"""One training process per run folder: an exclusive lock on ``RUN/.lock`` held for the whole ``fit``.

Two trainings started on the same folder would overwrite each other's checkpoints, log and ``config.yaml`` and both
report success. The lock is an ``flock`` on ``RUN/.lock``, which also records the holder's PID and host. The kernel
drops an ``flock`` when its process dies, however it dies, so a lock file left by a killed process is stale by
construction and the next run takes it over; no PID guessing is needed. The file is removed on release.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from diffcore.checkpoint import CheckpointError

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME"]

LOCK_NAME = ".lock"


class RunLockedError(CheckpointError):
    """Another live process trains in this run folder (the message names the folder and the holder's PID)."""


class RunLock:
    """``RunLock(run_dir).acquire()`` … ``release()`` (or a ``with`` block)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        self._created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise CheckpointError(f"run folder {self.run_dir}: is a file, not a folder") from None
        for _ in range(10):  # the holder may remove the file between our open and our flock: try again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise RunLockedError(
                    f"run folder {self.run_dir}: another training is running in it ({self.holder()}); wait for it "
                    "to finish, stop it, or use another --run-dir"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode())
            os.fsync(fd)
            self._fd = fd
            return self
        raise RunLockedError(f"run folder {self.run_dir}: could not take its lock {self.path}")

    def holder(self) -> str:
        """``PID 1234 on HOST`` as recorded in the lock file (best effort)."""
        try:
            words = self.path.read_text(errors="replace").split()
            info = dict(zip(words[::2], words[1::2]))
            return f"PID {info.get('pid', '?')} on {info.get('host', '?')}"
        except OSError:
            return "PID unknown"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # unlink while still holding the lock, so no one locks a file about to vanish
        except OSError:
            pass
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None
        if getattr(self, "_created", False):  # a run that failed before writing anything leaves no empty folder
            try:
                self.run_dir.rmdir()
            except OSError:
                pass

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
