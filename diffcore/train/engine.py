"""The one training engine: ``Trainer(task, train_config, run_dir).fit()``.

Three parts, each set up complete in its constructor:

- :class:`~diffcore.train.step.OptimStep`: the model, EMA, optimizer and loss scaler, and one update (forward and
  backward over ``grad_accum`` micro-batches, clipping, one all-reduce of ``[loss, grad_norm, stop]``, optimizer
  step, EMA update; a non-finite loss, or gradient norm outside fp16, skips the update: no update, no EMA, counted;
  ``max_nonfinite`` in a row → checkpoint + TrainingError);
- :class:`~diffcore.train.after_step.AfterStep`: the work after an update (scalars and progress bar, the task's
  validation/sample hooks with the EMA model, periodic checkpoints);
- :class:`~diffcore.train.loader.TrainLoader`: the data loader, its position ``(epoch, samples)`` and its failures.

:class:`Trainer` ties them together: run folder, lock, processes, resume, checkpoints, signals.

The step counter counts optimizer updates; skipped steps consume data but do not advance it.

Resume: if ``RUN/checkpoints`` holds a checkpoint, ``fit`` restores model, EMA, optimizer, loss scaler, step, the
data position and every rank's RNG states from it, so N steps in one go and N/2 + resume + N/2 give identical
weights (for data pipelines whose randomness lives in the main process, e.g. ``num_workers=0`` or deterministic
workers, and a loss that draws from the global torch RNG). The model section of the stored recipe must match the
new one, which is checked before anything is written (a refused resume leaves the folder as it was); other sections
(e.g. a longer ``max_steps``) may change, and each changed value is logged as a warning (old -> new) and a
``config_changed`` event.

The train section reaches the engine once, as ``Trainer``'s ``config`` argument (a :class:`TrainConfig`): the engine
never reads a task's ``recipe``. The recipe it stores (``RUN/config.yaml`` and every checkpoint's ``config``) is
``task.config`` with its ``train`` section, when it has one, set to that argument, so what is stored is what trained.

One training per run folder: rank 0 holds :class:`~diffcore.train.lock.RunLock` for the whole ``fit``; a second
training on the same folder raises :class:`~diffcore.train.lock.RunLockedError` naming the holder's PID.

Checkpoint failures: a periodic checkpoint that cannot be written (disk full, ...) is reported (a warning on stderr
and a ``checkpoint_failed`` event in ``log.jsonl``) and training continues with the previous checkpoint intact; the
final checkpoint (end of run, ``fit(until=...)``, SIGTERM/SIGINT) raises :class:`~diffcore.checkpoint.CheckpointError`.

Scale-out: launch the same command with ``torchrun``; each process reads RANK/WORLD_SIZE/LOCAL_RANK, joins the
process group (NCCL on GPUs, gloo on CPU), uses ``cuda:LOCAL_RANK`` and takes its share of every global batch
(see :mod:`diffcore.train.data`). Only rank 0 writes files; every rank reads the checkpoint on resume, so with
several machines the run folder must be on a file system they share. In fp16 an overflowing step is skipped by the
loss scaler (which lowers the scale), not counted as non-finite.

Data failures: a batch that cannot be fetched (the dataset raises, or a data-loader worker process dies) stops the
run with :class:`TrainingError` after writing a checkpoint of the last completed step (single process; with several
ranks the previous checkpoint is kept), so the same command resumes once the data is fixed.

CPU-time budget: ``fit(until_cpu_minutes=M)`` stops, with a checkpoint, after the first step at which the run's
training loops have used ``M`` CPU minutes (``time.process_time`` of the process, all its threads: the load of other
jobs on a shared machine does not shorten it; setup is not counted). The count is kept in every checkpoint as
``cpu_seconds``, so it adds up over resumes, and returned in ``fit``'s summary. One process only: the ranks'
clocks differ, so they could not agree on the step to stop at.

Signals: SIGTERM and SIGINT finish the current step on every rank, write a checkpoint, then ``fit`` raises
``SystemExit(143)`` (SIGTERM) or ``KeyboardInterrupt`` (SIGINT). A second signal interrupts at once (the previous
checkpoint stays valid thanks to atomic writes).
"""

from __future__ import annotations

import logging
import math
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from diffcore.checkpoint import (
    CKPT_DIR,
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_name,
    find_latest,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from diffcore.config import ConfigError, save_config
from diffcore.device import resolve_device
from diffcore.ema import EMA
from diffcore.errors import TrainingError
from diffcore.precision import Precision, resolve_precision
from diffcore.train.after_step import AfterStep
from diffcore.train.config import TrainConfig
from diffcore.train.data import epoch_seed
from diffcore.train.datacheck import check_first_example
from diffcore.train.distributed import DistInfo, all_gather_object, barrier, dist_env, init_distributed
from diffcore.train.loader import DataFailure, TrainLoader, sigchld_ignored, worker_died
from diffcore.train.lock import RunLock
from diffcore.train.logger import NullLogger, RunLogger
from diffcore.train.optim import lr_at
from diffcore.train.step import OptimStep
from diffcore.train.task import TrainTask

__all__ = ["Trainer", "TrainingError", "config_changes", "apply_runtime"]

log = logging.getLogger("diffcore.train")


# ----------------------------------------------------------------------------------------------------------------
# RNG state as weights_only-loadable data


def _rng_state(device: torch.device) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # only this process's GPU: touching the others would create a CUDA context on each of them
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": [int(v) for v in py_state], "gauss_next": gauss_next},
    }


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state(state["cuda"][0], device)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_plain(obj: Any, where: str = "config") -> None:
    """Checkpoints are loaded with weights_only and exported as JSON: the recipe must be plain data."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: key {k!r} is not a string")
            _check_plain(v, f"{where}.{k}")
        return
    raise ConfigError(f"{where}: {type(obj).__name__} is not plain data (use ConfigBase.to_dict())")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` of every leaf that differs between two plain configs."""
    a, b = _flatten(old, prefix), _flatten(new, prefix)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def apply_runtime(model: nn.Module, cfg: TrainConfig) -> None:
    """Apply the run-time switches of ``cfg`` (``channels_last``, ``gradient_checkpointing``) through the model's
    optional ``set_runtime(*, channels_last=None, gradient_checkpointing=None)``; ``channels_last=None`` leaves
    the model's default. They change how the model computes, not what, so a resume may change them. A model
    without ``set_runtime`` cannot honour a switch that is turned on: that is a :class:`ConfigError`."""
    set_runtime = getattr(model, "set_runtime", None)
    if callable(set_runtime):
        switches: dict[str, bool] = {"gradient_checkpointing": cfg.gradient_checkpointing}
        if cfg.channels_last is not None:
            switches["channels_last"] = cfg.channels_last
        set_runtime(**switches)
        return
    asked = [name for name in ("channels_last", "gradient_checkpointing") if getattr(cfg, name)]
    if asked:
        raise ConfigError(f"train.{asked[0]} is on but {type(model).__name__} has no set_runtime() to apply it "
                          f"(turn it off or null)")


class Trainer:
    """Train ``task`` with ``config`` in the run folder ``run_dir`` (created if needed; resumed if it holds a
    checkpoint). Construction is cheap; :meth:`fit` sets up devices, processes, model and data, and trains.

    After ``fit``: ``trainer.model`` (the plain module), ``trainer.ema``, ``trainer.optimizer``, ``trainer.scaler``
    (the parts of ``trainer.update``, an :class:`~diffcore.train.step.OptimStep`), ``trainer.step``.
    """

    def __init__(self, task: TrainTask, config: TrainConfig | Mapping[str, Any], run_dir: str | Path) -> None:
        self.task = task
        self.cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / CKPT_DIR
        if not isinstance(getattr(task, "config", None), dict):
            raise ConfigError(f"{type(task).__name__}.config must be the resolved recipe as a dict (recipe.to_dict())")
        _check_plain(task.config, "task.config")
        #: The resolved recipe as stored (config.yaml, every checkpoint): the task's, with its ``train`` section (if
        #: it has one) the engine's own ``cfg``, so the stored recipe says what trained (module docstring).
        self.config: dict[str, Any] = task.config if "train" not in task.config \
            else {**task.config, "train": self.cfg.to_dict()}
        # Everything below is (re)built by fit(); None until then.
        self.step = 0
        self.device: torch.device | None = None
        self.info: DistInfo = DistInfo()
        self.precision: Precision | None = None
        self.update: OptimStep | None = None
        self.data: TrainLoader | None = None
        self.after: AfterStep | None = None
        self.logger: RunLogger | NullLogger = NullLogger()
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self._resumed_step: int | None = None
        self._lock: RunLock | None = None
        self._owns_pg = False
        self._signal: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._in_update = False  # parameters, optimizer and EMA are changing together: not a state to save
        self._cpu_base = 0.0  # CPU seconds of the run's training loops before the current one started
        self._cpu_mark: float | None = None  # time.process_time() when the current loop started

    # the parts of the update, under the names users know
    @property
    def model(self) -> nn.Module | None:
        return self.update.model if self.update is not None else None

    @property
    def ema(self) -> EMA | None:
        return self.update.ema if self.update is not None else None

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the run's training loops have used, over all its fits (module docstring)."""
        running = time.process_time() - self._cpu_mark if self._cpu_mark is not None else 0.0
        return self._cpu_base + running

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self.update.optimizer if self.update is not None else None

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.update.scaler if self.update is not None else None

    # ------------------------------------------------------------------------------------------------ setup

    def _setup(self) -> None:
        cfg, task = self.cfg, self.task
        device = resolve_device(cfg.device, what="train.device")
        if dist_env().rank == 0:  # before anything is written: a second training on this folder stops here
            self._lock = RunLock(self.run_dir).acquire()
        world = dist_env().world_size
        per_step = world * cfg.grad_accum
        if cfg.batch_size % per_step:  # checked before joining the process group, so every rank fails fast
            raise ConfigError(
                f"train.batch_size ({cfg.batch_size}) must be divisible by world_size ({world}) x "
                f"train.grad_accum ({cfg.grad_accum}) = {per_step}"
            )
        self.info, self._owns_pg = init_distributed(device.type)
        info = self.info
        if device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        self.device = device
        self.precision = resolve_precision(cfg.precision, device, purpose="train")
        if self.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision is 'bf16' but this GPU does not support bfloat16 (use fp16 or fp32)")
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for the fp32 parts

        _seed_everything(cfg.seed)  # identical initial weights on every rank
        model = task.build_model().to(device)
        model.train()
        apply_runtime(model, cfg)
        self.update = OptimStep(model, cfg, device, self.precision, info.world_size)
        dataset = task.train_dataset()
        check_first_example(dataset)  # before anything is written: bad data is one error, not a step-0 checkpoint
        self.data = TrainLoader(dataset, cfg, info, device, task.collate_fn)

        self.step, self._cpu_base, self._cpu_mark = 0, 0.0, None
        self.resumed_from, self._resumed_step = None, None
        latest = all_gather_object(str(find_latest(self.run_dir) or "") if info.is_main else "")[0]
        state = load_checkpoint(latest) if latest else None
        changes: list[tuple[str, Any, Any]] = []
        if state is not None:  # validated before anything is written, so a refused resume leaves the folder as it was
            changes = self._check_resume(Path(latest), state)

        self.logger = RunLogger(self.run_dir, cfg.tensorboard) if info.is_main else NullLogger()
        if info.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.ckpt_dir)
            save_config(self.config, self.run_dir / "config.yaml")
        if state is not None:
            position = self._restore(Path(latest), state)
            for key, old, new in changes:
                log.warning("%s: %s changed on resume: %r -> %r (the new value applies from step %d)",
                            self.run_dir, key, old, new, self.step)
                self.logger.event("config_changed", self.step, key=key, old=str(old), new=str(new))
        else:
            _seed_everything(epoch_seed(cfg.seed, info.rank, 0xD1FF))  # independent noise on every rank
            position = (0, 0)
        self.data.seek(*position)
        self.update.wrap()
        self.after = AfterStep(cfg, task, self.logger, self.update.ema, self.save,
                               progress=info.is_main and cfg.progress)

    def _check_resume(self, path: Path, state: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """Refuse a resume whose model differs from the checkpoint's; return the other settings that changed
        (``(key, old, new)``, warned about once the run starts). The ``train`` section, run-time switches such
        as ``train.channels_last`` included, may change."""
        stored = state["config"] if isinstance(state["config"], Mapping) else {}
        stored = self.task.upgrade_config(stored)  # older checkpoints name some keys differently
        old_model, new_model = stored.get("model"), self.config.get("model")
        if old_model is not None and new_model is not None and old_model != new_model:
            diff = sorted(k for k in set(old_model) | set(new_model) if old_model.get(k) != new_model.get(k))
            raise CheckpointError(
                f"{path}: the run folder was trained with a different model config (differs in: "
                f"{', '.join(diff)}); use a new run folder or the recipe stored in {self.run_dir / 'config.yaml'}"
            )
        changes = config_changes({k: v for k, v in stored.items() if k != "model"},
                                 {k: v for k, v in self.config.items() if k != "model"})
        seen = {k for k, _, _ in changes}
        if isinstance(state.get("train"), Mapping):
            changes += [c for c in config_changes(state["train"], self.cfg.to_dict(), "train.") if c[0] not in seen]
        return changes

    def _restore(self, path: Path, state: Mapping[str, Any]) -> tuple[int, int]:
        """Load a checkpoint's training state and RNG states; returns the data position ``(epoch, samples)``."""
        try:
            self.update.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: does not match the model/optimizer built from the recipe: {e}") from None
        self.step = int(state["step"])
        self._cpu_base = float(state.get("cpu_seconds", 0.0))
        data = state.get("data") or {}
        ranks = (state.get("rng") or {}).get("ranks") or []
        if len(ranks) == self.info.world_size:
            _set_rng_state(ranks[self.info.rank], self.device)
        else:
            _seed_everything(epoch_seed(self.cfg.seed, self.info.rank, self.step))
            self.logger.event("rng_reseeded", self.step, reason=f"checkpoint has {len(ranks)} rank states")
        self.resumed_from = path
        self._resumed_step = self.step
        self.logger.resumed_at(self.step, path=str(path))
        return int(data.get("epoch", 0)), int(data.get("samples", 0))

    # ------------------------------------------------------------------------------------------------ checkpoints

    def _state(self, rng_all: list[dict[str, Any]]) -> dict[str, Any]:
        parts = self.update.state_dict()
        return {
            "format": FORMAT_VERSION,
            "step": self.step,
            "cpu_seconds": self.cpu_seconds,
            "model": parts["model"],
            "ema": parts["ema"],
            "optimizer": parts["optimizer"],
            "scaler": parts["scaler"],
            "rng": {"world_size": self.info.world_size, "ranks": rng_all},
            "data": self.data.position(),
            "config": self.config,
            "train": self.cfg.to_dict(),
            "world_size": self.info.world_size,
            "precision": self.precision,
        }

    def save(self, reason: str = "manual") -> Path | None:
        """Write a checkpoint of the current state (call on every rank: RNG states are gathered; rank 0 writes).
        Returns its path on rank 0, ``None`` elsewhere or when a periodic write failed."""
        rng_all = all_gather_object(_rng_state(self.device))
        if not self.info.is_main:
            return None
        try:
            path = save_checkpoint(self._state(rng_all), self.ckpt_dir, self.step, self.cfg.keep_last)
        except CheckpointError as e:
            self.logger.event("checkpoint_failed", self.step, error=str(e), reason=reason)
            if reason != "periodic":
                raise
            print(f"warning: step {self.step}: {e}; training goes on, the previous checkpoint is kept",
                  file=sys.stderr)
            return None
        self.last_checkpoint = path
        self.logger.event("checkpoint", self.step, path=str(path), reason=reason)
        return path

    # ------------------------------------------------------------------------------------------------ signals

    def _stop_requested(self) -> bool:
        return self._signal is not None

    def _install_signals(self) -> None:
        self._old_handlers = {}
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:
                raise KeyboardInterrupt  # a second signal: stop now
            self._signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers = {}

    # ------------------------------------------------------------------------------------------------ training

    def fit(self, until: int | None = None, *, until_cpu_minutes: float | None = None) -> dict[str, Any]:
        """Train to ``max_steps`` (or stop after step ``until`` without changing the LR schedule's horizon, or
        once the run has used ``until_cpu_minutes`` CPU minutes in all: module docstring), writing a checkpoint at
        the end. Returns a summary dict: ``step``, ``completed``, ``loss`` (mean of the last logging window),
        ``cpu_seconds``, ``checkpoint``, ``nonfinite_count``, ``resumed_from``, ``run_dir``, ``device``,
        ``precision``, ``world_size``."""
        if until_cpu_minutes is not None:
            if not (until_cpu_minutes >= 0 and math.isfinite(until_cpu_minutes)):
                raise ConfigError(f"until_cpu_minutes must be a finite number >= 0, got {until_cpu_minutes}")
            if dist_env().world_size > 1:
                raise ConfigError("until_cpu_minutes counts one process's CPU time; with several processes their "
                                  "clocks could not agree on the step to stop at (use until or train.max_steps)")
        self._signal = None
        self.last_checkpoint = None
        self._in_update = False
        self._install_signals()
        try:
            self._setup()
            try:
                summary = self._loop(until, until_cpu_minutes)
            except Exception as e:
                failure = e.error if isinstance(e, DataFailure) else e if worker_died(e) else None
                if failure is None:
                    raise
                for _ in range(3):
                    try:
                        with sigchld_ignored():
                            error = self._data_failure(failure)
                        break
                    except Exception as late:  # torch's report of the dead worker arrived in between
                        if not worker_died(late):
                            raise
                        failure = late
                else:
                    error = TrainingError(f"the data pipeline failed during step {self.step + 1} ({failure})")
                raise error from failure
            barrier()  # ranks leave together: tearing gloo down while a peer still talks can abort the process
            return summary
        finally:
            self._teardown()

    def _loop(self, until: int | None, until_cpu_minutes: float | None = None) -> dict[str, Any]:
        cfg, logger, update, data, after = self.cfg, self.logger, self.update, self.data, self.after
        target = cfg.max_steps if until is None else min(cfg.max_steps, until)
        cpu_limit = math.inf if until_cpu_minutes is None else 60.0 * until_cpu_minutes
        after.start(self.step, target)
        nonfinite_run, nonfinite_total = 0, 0
        self._cpu_mark = time.process_time()
        while self.step < target and self.cpu_seconds < cpu_limit:
            t0 = time.perf_counter()
            loss, norm, stop = update.forward_backward(self.task.loss, data.next_batch, self._stop_requested)
            if update.nonfinite(loss, norm):
                update.skip()
                nonfinite_run += 1
                nonfinite_total += 1
                logger.event("nonfinite", self.step, loss=str(loss), grad_norm=str(norm), in_a_row=nonfinite_run)
                if nonfinite_run >= cfg.max_nonfinite:
                    try:
                        path = self.save("nonfinite")
                        where = f"the last good state (step {self.step}) is saved in {path}"
                    except CheckpointError as e:
                        where = f"saving the last good state failed too: {e}"
                    barrier()
                    raise TrainingError(
                        f"{nonfinite_run} non-finite losses in a row at step {self.step} (limit train.max_nonfinite="
                        f"{cfg.max_nonfinite}); {where}. Lower train.lr, set train.grad_clip or check the data."
                    )
            else:
                nonfinite_run = 0
                self._in_update = True
                lr = lr_at(self.step, cfg)
                update.apply(lr)
                self.step += 1
                self._in_update = False

                def extra(total: int = nonfinite_total) -> dict[str, Any]:
                    values: dict[str, Any] = {"nonfinite_count": total, "epoch": data.epoch}
                    if update.scaler is not None:
                        values["loss_scale"] = update.scaler.get_scale()
                    return values

                after(self.step, target, loss=loss, grad_norm=norm, lr=lr, seconds=time.perf_counter() - t0,
                      stop=stop, extra=extra)
            if stop:
                signum = self._signal or signal.SIGTERM
                self.save("signal")
                barrier()
                logger.event("stopped", self.step, signal=signal.Signals(signum).name)
                logger.flush()
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                raise SystemExit(128 + int(signum))
        self._cpu_base, self._cpu_mark = self.cpu_seconds, None  # the loop's clock stops here
        # A resumed run already at its target has nothing new to write: its checkpoint holds this very state.
        if not (self.resumed_from is not None and self._resumed_step == self.step):
            self.save("final" if self.step >= cfg.max_steps else "until")
        logger.flush()
        return {
            "step": self.step,
            "completed": self.step >= cfg.max_steps,
            "loss": after.last_loss,
            "cpu_seconds": self.cpu_seconds,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "nonfinite_count": nonfinite_total,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "run_dir": str(self.run_dir),
            "device": str(self.device),
            "precision": self.precision,
            "world_size": self.info.world_size,
        }

    def _data_failure(self, error: BaseException) -> TrainingError:
        """A batch could not be fetched (a dataset exception, a data-loader worker that died): save the state of
        the last completed step (nothing of the failed step was applied) and return the error to raise."""
        first = self.data.describe_failure(error)
        if self._in_update:  # torch reports a dead worker from its SIGCHLD handler, at any point of the step
            where = f"the last checkpoint is {find_latest(self.run_dir)} (the failure interrupted an update)"
        elif (saved := next((c for c in (self.last_checkpoint, self.resumed_from)
                             if c is not None and c.name == checkpoint_name(self.step)), None)) is not None:
            # this step is saved already, with the RNG state of the step boundary (exact resume): keep that one
            where = f"the state after step {self.step} is saved in {saved}"
        elif self.info.world_size == 1:  # with several ranks the others would wait in the checkpoint's all-gather
            self.update.optimizer.zero_grad(set_to_none=True)
            try:
                where = f"the state after step {self.step} is saved in {self.save('data_error')}"
            except CheckpointError as e:
                where = f"saving a checkpoint failed too: {e}"
        else:
            where = f"the last checkpoint is {find_latest(self.run_dir)}"
        self.logger.event("data_error", self.step, error=first)
        self.logger.flush()
        return TrainingError(
            f"the data pipeline failed during step {self.step + 1} ({first}); {where}. "
            "Fix the data (train.num_workers=0 shows the full error), then run the same command to resume"
        )

    def _teardown(self) -> None:
        self._restore_signals()
        if self.after is not None:
            self.after.close()
        self.logger.close()
        if self.data is not None:
            self.data.close()
        if self._owns_pg and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_pg = False
        if self._lock is not None:
            self._lock.release()
            self._lock = None
