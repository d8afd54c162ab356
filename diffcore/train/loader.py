"""The training data of one process: a ``DataLoader`` over the task's dataset, its position for exact resume, and
its failures.

:class:`TrainLoader` owns the ``DataLoader`` (a :class:`~diffcore.train.data.ResumableSampler` and a generator of
its own, reseeded per epoch from ``(seed, rank, epoch)``), the position ``(epoch, samples)`` that checkpoints store,
and what happens when a batch cannot be fetched: the dataset raised, or a loader worker process died. Such a
failure comes out of :meth:`TrainLoader.next_batch` as :class:`DataFailure`; :meth:`TrainLoader.describe_failure`
turns it into one line that names a dead worker's exit code. Items a dataset cannot read are its own business
(the model packages' datasets report and skip them); an exception that escapes the dataset is a failure here.

Only public API is used: the loader gets a ``multiprocessing_context`` (the default start method's) that keeps the
``multiprocessing.Process`` objects of the workers it starts, so a dead worker's ``exitcode`` can be read, and the
workers are shut down by dropping the loader and its iterator (PyTorch's iterator shuts its workers down when it is
collected).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
import traceback
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from diffcore.errors import ConfigError, TrainingError
from diffcore.train.config import TrainConfig
from diffcore.train.data import ResumableSampler, epoch_seed, move_to_device
from diffcore.train.distributed import DistInfo

__all__ = ["TrainLoader", "DataFailure", "worker_died", "sigchld_ignored"]


class DataFailure(Exception):
    """Fetching a batch failed; ``error`` is the loader's exception (the engine turns it into a TrainingError)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def worker_died(e: BaseException) -> bool:
    """Whether ``e`` is the DataLoader's report of a worker process that exited (raised by torch's SIGCHLD
    handler wherever the main process happens to be, or by the iterator's liveness check)."""
    return isinstance(e, RuntimeError) and "DataLoader worker" in str(e) and "exited unexpectedly" in str(e)


@contextlib.contextmanager
def sigchld_ignored():
    """Hold off torch's SIGCHLD handler, which raises in the main thread wherever it is when a loader worker
    exits, while the engine is already handling that failure (and writing a checkpoint)."""
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, old if old is not None else signal.SIG_DFL)


def _worker_init(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process handles it and shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _tracking_context(processes: list[multiprocessing.process.BaseProcess]) -> multiprocessing.context.BaseContext:
    """The default multiprocessing context, except that the processes it starts are appended to ``processes``."""
    base = multiprocessing.get_context(multiprocessing.get_start_method())

    class TrackingContext(type(base)):  # type: ignore[misc]
        def Process(self, *args: Any, **kwargs: Any) -> multiprocessing.process.BaseProcess:  # noqa: N802
            process = base.Process(*args, **kwargs)
            processes.append(process)
            return process

    return TrackingContext()


def _ended(process: multiprocessing.process.BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"


class TrainLoader:
    """This process's share of the training set, batch by batch, resumable at any step boundary.

    ``micro_batch`` examples per call of :meth:`next_batch` (``batch_size / (world_size · grad_accum)``), moved to
    ``device``. ``epoch`` and ``samples`` (global examples consumed in the epoch) are the position a checkpoint
    stores (:meth:`position`) and :meth:`seek` restores.
    """

    def __init__(self, dataset: Dataset, cfg: TrainConfig, info: DistInfo, device: torch.device,
                 collate_fn: Any = None) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n < cfg.batch_size:
            raise ConfigError(f"the training set has {n} examples, fewer than one global batch ({cfg.batch_size})")
        self.cfg = cfg
        self.info = info
        self.device = device
        self.micro_batch = cfg.batch_size // (info.world_size * cfg.grad_accum)
        self.sampler = ResumableSampler(n, cfg.batch_size, info.rank, info.world_size, seed=cfg.seed)
        self.generator = torch.Generator()
        workers = cfg.num_workers
        self._workers: list[multiprocessing.process.BaseProcess] = []  # filled as the loader starts them
        self.loader: DataLoader | None = DataLoader(
            dataset,
            batch_size=self.micro_batch,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=cfg.pin_memory and device.type == "cuda",
            drop_last=True,
            collate_fn=collate_fn,
            generator=self.generator,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init if workers > 0 else None,
            multiprocessing_context=_tracking_context(self._workers) if workers > 0 else None,
        )
        self.epoch = 0
        self.samples = 0
        self._iter: Any = None

    # ------------------------------------------------------------------------------------------------ position

    def position(self) -> dict[str, int]:
        """``{"epoch", "samples"}``: where the data stream stands (what a checkpoint stores)."""
        return {"epoch": self.epoch, "samples": self.samples}

    def seek(self, epoch: int, samples: int) -> None:
        """Continue from a stored position (a partial global batch, left by a changed batch size, restarts)."""
        self.start_epoch(epoch, samples - samples % self.cfg.batch_size)

    def start_epoch(self, epoch: int, samples: int = 0) -> None:
        """Iterate epoch ``epoch`` from global sample offset ``samples`` on."""
        self.epoch, self.samples = epoch, samples
        self.sampler.set_epoch(epoch, samples)
        self.generator.manual_seed(epoch_seed(self.cfg.seed, self.info.rank, epoch, 0x10AD))
        self._iter = iter(self.loader)

    def next_batch(self) -> Any:
        """The next micro-batch on the device (a new epoch starts when one ends); :class:`DataFailure` if it cannot
        be fetched."""
        for _ in range(2):
            try:
                batch = next(self._iter)
            except StopIteration:
                self.start_epoch(self.epoch + 1, 0)
                continue
            except Exception as e:  # the dataset raised, or a loader worker died (RuntimeError from the DataLoader)
                # the traceback's frames hold the loader's iterator: clear them so that closing shuts the workers
                traceback.clear_frames(e.__traceback__)
                raise DataFailure(e) from e
            self.samples += self.micro_batch * self.info.world_size
            return move_to_device(batch, self.device)
        raise TrainingError(f"the data loader yielded no batch for a whole epoch (epoch {self.epoch})")

    # ------------------------------------------------------------------------------------------------ failures

    def dead_worker(self, wait_s: float = 1.0) -> str | None:
        """How a worker process that died ended ("exit code 7", "killed by signal SIGKILL"), or ``None`` when none
        did. A dying worker closes its pipes before it exits, so this waits up to ``wait_s`` for the exit."""
        if not self._workers:
            return None
        deadline = time.monotonic() + wait_s
        while True:
            dead = [w for w in self._workers if not w.is_alive()]
            if dead:
                return _ended(dead[0])
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def describe_failure(self, error: BaseException) -> str:
        """One line on why a batch could not be fetched, naming a dead worker's exit status when there is one."""
        first = f"{type(error).__name__}: " + (str(error).strip().splitlines() or ["(no message)"])[0]
        status = self.dead_worker()
        return f"a data-loader worker process died ({status}); {first}" if status is not None else first

    def close(self) -> None:
        """Shut the worker processes down (PyTorch does it when the loader's iterator is collected)."""
        self._iter = None
        self.loader = None
