"""One training process per run folder: an exclusive lock on ``RUN/.lock`` held for the whole ``fit``.

Two trainings started on the same folder would overwrite each other's checkpoints, log and ``config.yaml`` and both
report success. The lock is an ``flock`` on ``RUN/.lock``, which also records the holder's PID and host. The kernel
drops an ``flock`` when its process dies, however it dies, so a lock file left by a killed process is stale by
construction and the next run takes it over. Data-loader workers forked by a killed run inherit the lock and hold
it until they notice their parent is gone (seconds); a run that finds the recorded holder dead on this host waits up
to :data:`ORPHAN_WAIT_S` for them. The file is removed on release.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

from diffcore.checkpoint import CheckpointError

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME"]

LOCK_NAME = ".lock"
#: How long to wait for a lock whose recorded holder is dead but whose forked data-loader workers have not yet exited.
ORPHAN_WAIT_S = 15.0


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
        deadline = time.monotonic() + ORPHAN_WAIT_S
        for _ in range(1000):  # the holder may remove the file between our open and our flock: try again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if self._holder_is_dead() and time.monotonic() < deadline:
                    # data-loader workers forked by a killed run still hold the lock until they notice: wait
                    time.sleep(0.2)
                    continue
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

    def _recorded(self) -> dict[str, str]:
        try:
            words = self.path.read_text(errors="replace").split()
        except OSError:
            return {}
        return dict(zip(words[::2], words[1::2]))

    def holder(self) -> str:
        """``PID 1234 on HOST`` as recorded in the lock file (best effort)."""
        info = self._recorded()
        return f"PID {info.get('pid', '?')} on {info.get('host', '?')}" if info else "PID unknown"

    def _holder_is_dead(self) -> bool:
        """The recorded holder ran on this host and is gone (its forked workers may still hold the lock)."""
        info = self._recorded()
        if info.get("host") != socket.gethostname() or not info.get("pid", "").isdigit():
            return False
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

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
