"""The one training engine: ``Trainer(task, train_config, run_dir).fit()``.

One optimizer step (``A = grad_accum`` micro-batches of ``batch_size / (world_size · A)`` examples per process)::

    zero grads
    for each micro-batch:       (DDP gradient sync only on the last one)
        with autocast:  per_example = task.loss(model, batch)                  # [b]
        backward(mean(per_example) / A)                                        # × loss scale in fp16
    unscale (fp16); grad_norm = clip_grad_norm_(params, grad_clip)             # or just the norm
    all-reduce [loss, grad_norm, stop flag] across processes                   # one sync per step
    non-finite loss (or gradient norm outside fp16)?  → skip: no update, no EMA, count it;
                                                       max_nonfinite in a row → checkpoint + TrainingError
    else: lr ← lr_at(step); optimizer step; EMA update; step += 1
    then, on rank 0 by schedule: log scalars; on all ranks: validate/sample hooks (EMA model); checkpoint

The step counter counts optimizer updates; skipped steps consume data but do not advance it.

Resume: if ``RUN/checkpoints`` holds a checkpoint, ``fit`` restores model, EMA, optimizer, loss scaler, step, the
data position and every rank's RNG states from it, so N steps in one go and N/2 + resume + N/2 give identical
weights (for data pipelines whose randomness lives in the main process, e.g. ``num_workers=0`` or deterministic
workers, and a loss that draws from the global torch RNG). The model section of the stored recipe must match the
new one, which is checked before anything is written (a refused resume leaves the folder as it was); other sections
(e.g. a longer ``max_steps``) may change, and each changed value is logged as a warning (old -> new) and a
``config_changed`` event.

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

Signals: SIGTERM and SIGINT finish the current step on every rank, write a checkpoint, then ``fit`` raises
``SystemExit(143)`` (SIGTERM) or ``KeyboardInterrupt`` (SIGINT). A second signal interrupts at once (the previous
checkpoint stays valid thanks to atomic writes).
"""

from __future__ import annotations

import contextlib
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
from torch.utils.data import DataLoader

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
from diffcore.train.config import TrainConfig
from diffcore.train.data import ResumableSampler, epoch_seed, move_to_device
from diffcore.train.distributed import DistInfo, all_gather_object, barrier, dist_env, init_distributed
from diffcore.train.lock import RunLock
from diffcore.train.logger import NullLogger, RunLogger
from diffcore.train.optim import build_optimizer, lr_at
from diffcore.train.precision import autocast, make_grad_scaler, resolve_precision
from diffcore.train.task import TrainTask

__all__ = ["Trainer", "TrainingError"]

log = logging.getLogger("diffcore.train")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses in a row); the message names the step."""


def _worker_died(e: BaseException) -> bool:
    """Whether ``e`` is the DataLoader's report of a worker process that exited (raised by torch's SIGCHLD
    handler wherever the main process happens to be, or by the iterator's liveness check)."""
    return isinstance(e, RuntimeError) and "DataLoader worker" in str(e) and "exited unexpectedly" in str(e)


@contextlib.contextmanager
def _sigchld_ignored():
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


class _DataFailure(Exception):
    """Fetching a batch failed (wraps the loader's exception until the loop turns it into a TrainingError)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


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


def _worker_init(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process handles it and shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


class Trainer:
    """Train ``task`` with ``config`` in the run folder ``run_dir`` (created if needed; resumed if it holds a
    checkpoint). Construction is cheap; :meth:`fit` sets up devices, processes, model and data, and trains.

    After ``fit``: ``trainer.model`` (the plain module), ``trainer.ema``, ``trainer.optimizer``, ``trainer.step``.
    """

    def __init__(self, task: TrainTask, config: TrainConfig | Mapping[str, Any], run_dir: str | Path) -> None:
        self.task = task
        self.cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / CKPT_DIR
        if not isinstance(getattr(task, "config", None), dict):
            raise ConfigError(f"{type(task).__name__}.config must be the resolved recipe as a dict (recipe.to_dict())")
        _check_plain(task.config, "task.config")
        self.step = 0
        self.model: nn.Module | None = None
        self.ema: EMA | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._signal: int | None = None

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
        info: DistInfo = self.info
        if device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        self.device = device
        self.micro_batch = cfg.batch_size // per_step
        self.precision = resolve_precision(cfg.precision, device)
        if self.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision is 'bf16' but this GPU does not support bfloat16 (use fp16 or fp32)")
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for the fp32 parts

        _seed_everything(cfg.seed)  # identical initial weights on every rank
        raw = task.build_model().to(device)
        raw.train()
        self.model = raw
        self.ema = EMA(raw, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = build_optimizer(raw.parameters(), cfg, device)
        self.scaler = make_grad_scaler(self.precision, device)

        dataset = task.train_dataset()
        n = len(dataset)  # type: ignore[arg-type]
        if n < cfg.batch_size:
            raise ConfigError(f"the training set has {n} examples, fewer than one global batch ({cfg.batch_size})")
        self.sampler = ResumableSampler(n, cfg.batch_size, info.rank, world, seed=cfg.seed)
        self._loader_gen = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=self.micro_batch,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            pin_memory=cfg.pin_memory and device.type == "cuda",
            drop_last=True,
            collate_fn=task.collate_fn,
            generator=self._loader_gen,
            persistent_workers=cfg.num_workers > 0,
            worker_init_fn=_worker_init if cfg.num_workers > 0 else None,
        )

        self.step = 0
        self._epoch, self._samples = 0, 0
        self.resumed_from: Path | None = None
        self._resumed_step: int | None = None
        latest = all_gather_object(str(find_latest(self.run_dir) or "") if info.is_main else "")[0]
        state = load_checkpoint(latest) if latest else None
        changes: list[tuple[str, Any, Any]] = []
        if state is not None:  # validated before anything is written, so a refused resume leaves the folder as it was
            changes = self._check_resume(Path(latest), state)

        self.logger = RunLogger(self.run_dir, cfg.tensorboard) if info.is_main else NullLogger()
        if info.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.ckpt_dir)
            save_config(task.config, self.run_dir / "config.yaml")
        if state is not None:
            self._restore(Path(latest), state)
            for key, old, new in changes:
                log.warning("%s: %s changed on resume: %r -> %r (the new value applies from step %d)",
                            self.run_dir, key, old, new, self.step)
                self.logger.event("config_changed", self.step, key=key, old=str(old), new=str(new))
        else:
            _seed_everything(epoch_seed(cfg.seed, info.rank, 0xD1FF))  # independent noise on every rank
        self._start_epoch(self._epoch, self._samples)

        model: nn.Module = raw
        if cfg.compile:
            model = torch.compile(model)
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.wrapped = model

    def _check_resume(self, path: Path, state: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """Refuse a resume whose model differs from the checkpoint's; return the other settings that changed
        (``(key, old, new)``, warned about once the run starts)."""
        stored = state["config"] if isinstance(state["config"], Mapping) else {}
        old_model, new_model = stored.get("model"), self.task.config.get("model")
        if old_model is not None and new_model is not None and old_model != new_model:
            diff = sorted(k for k in set(old_model) | set(new_model) if old_model.get(k) != new_model.get(k))
            raise CheckpointError(
                f"{path}: the run folder was trained with a different model config (differs in: "
                f"{', '.join(diff)}); use a new run folder or the recipe stored in {self.run_dir / 'config.yaml'}"
            )
        changes = config_changes({k: v for k, v in stored.items() if k != "model"},
                                 {k: v for k, v in self.task.config.items() if k != "model"})
        seen = {k for k, _, _ in changes}
        if isinstance(state.get("train"), Mapping):
            changes += [c for c in config_changes(state["train"], self.cfg.to_dict(), "train.") if c[0] not in seen]
        return changes

    def _restore(self, path: Path, state: Mapping[str, Any] | None = None) -> None:
        if state is None:
            state = load_checkpoint(path)
            self._check_resume(path, state)
        try:
            self.model.load_state_dict(state["model"])
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: does not match the model/optimizer built from the recipe: {e}") from None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        data = state.get("data") or {}
        self._epoch, self._samples = int(data.get("epoch", 0)), int(data.get("samples", 0))
        if self._samples % self.cfg.batch_size:
            self._samples -= self._samples % self.cfg.batch_size  # a changed global batch: restart that batch
        ranks = (state.get("rng") or {}).get("ranks") or []
        if len(ranks) == self.info.world_size:
            _set_rng_state(ranks[self.info.rank], self.device)
        else:
            _seed_everything(epoch_seed(self.cfg.seed, self.info.rank, self.step))
            self.logger.event("rng_reseeded", self.step, reason=f"checkpoint has {len(ranks)} rank states")
        self.resumed_from = path
        self._resumed_step = self.step
        self.logger.resumed_at(self.step, path=str(path))

    def _start_epoch(self, epoch: int, samples: int) -> None:
        self._epoch, self._samples = epoch, samples
        self.sampler.set_epoch(epoch, samples)
        self._loader_gen.manual_seed(epoch_seed(self.cfg.seed, self.info.rank, epoch, 0x10AD))
        self._iter = iter(self.loader)

    def _next_batch(self) -> Any:
        for _ in range(2):
            try:
                batch = next(self._iter)
            except StopIteration:
                self._start_epoch(self._epoch + 1, 0)
                continue
            except Exception as e:  # the dataset raised, or a loader worker died (RuntimeError from the DataLoader)
                raise _DataFailure(e) from e
            self._samples += self.micro_batch * self.info.world_size
            return move_to_device(batch, self.device)
        raise TrainingError(f"the data loader yielded no batch for a whole epoch (epoch {self._epoch})")

    # ------------------------------------------------------------------------------------------------ checkpoints

    def _state(self, rng_all: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {"world_size": self.info.world_size, "ranks": rng_all},
            "data": {"epoch": self._epoch, "samples": self._samples},
            "config": self.task.config,
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

    def _install_signals(self) -> None:
        self._old_handlers: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:
                raise KeyboardInterrupt  # a second signal: stop now
            self._signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        for sig, old in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, old)
        self._old_handlers = {}

    # ------------------------------------------------------------------------------------------------ training

    def _train_step(self) -> tuple[float, float, bool]:
        """Forward/backward over ``grad_accum`` micro-batches; returns the global ``(loss, grad_norm, stop)``."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        ddp = isinstance(self.wrapped, nn.parallel.DistributedDataParallel)
        for i in range(cfg.grad_accum):
            batch = self._next_batch()
            sync = contextlib.nullcontext() if (not ddp or i == cfg.grad_accum - 1) else self.wrapped.no_sync()
            with sync:
                with autocast(self.precision, self.device):
                    per_example = self.task.loss(self.wrapped, batch)
                if not isinstance(per_example, torch.Tensor) or per_example.ndim != 1:
                    shape = tuple(per_example.shape) if isinstance(per_example, torch.Tensor) else type(per_example)
                    raise TrainingError(f"TrainTask.loss must return a per-example loss of shape [B], got {shape}")
                loss = per_example.float().mean()
                scaled = loss / cfg.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        stop = 1.0 if self._signal is not None else 0.0
        stats = torch.stack([total / cfg.grad_accum, norm.float().to(self.device),
                             torch.tensor(stop, device=self.device)])
        if self.info.world_size > 1:
            dist.all_reduce(stats)
            stats /= self.info.world_size
        loss_v, norm_v, stop_v = stats.tolist()
        return loss_v, norm_v, stop_v > 0

    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train to ``max_steps`` (or stop after step ``until`` without changing the LR schedule's horizon),
        writing a checkpoint at the end. Returns a summary dict: ``step``, ``completed``, ``loss`` (mean of the
        last logging window), ``checkpoint``, ``nonfinite_count``, ``resumed_from``, ``run_dir``, ``device``,
        ``precision``, ``world_size``."""
        self._signal = None
        self.last_checkpoint: Path | None = None
        self._install_signals()
        self._in_update = False
        try:
            self._setup()
            try:
                summary = self._loop(until)
            except Exception as e:
                failure = e.error if isinstance(e, _DataFailure) else e if _worker_died(e) else None
                if failure is None:
                    raise
                for _ in range(3):
                    try:
                        with _sigchld_ignored():
                            error = self._data_failure(failure)
                        break
                    except Exception as late:  # torch's report of the dead worker arrived in between
                        if not _worker_died(late):
                            raise
                        failure = late
                else:
                    error = TrainingError(f"the data pipeline failed during step {self.step + 1} ({failure})")
                raise error from failure
            barrier()  # ranks leave together: tearing gloo down while a peer still talks can abort the process
            return summary
        finally:
            self._teardown()

    def _loop(self, until: int | None) -> dict[str, Any]:
        cfg, log = self.cfg, self.logger
        target = cfg.max_steps if until is None else min(cfg.max_steps, until)
        pbar = None
        if self.info.is_main and cfg.progress and self.step < target:
            from tqdm.auto import tqdm

            # a terminal gets a live bar; a log file (batch jobs) a line every 30 s
            pbar = tqdm(total=target, initial=self.step, dynamic_ncols=True, desc="train", file=sys.stderr,
                        mininterval=0.5 if sys.stderr.isatty() else 30.0)
        self._pbar = pbar
        nonfinite_run, nonfinite_total = 0, 0
        win_losses: list[float] = []
        win_norms: list[float] = []
        win_steps, win_time = 0, 0.0
        last_loss = float("nan")
        while self.step < target:
            t0 = time.perf_counter()
            loss_v, norm_v, stop = self._train_step()
            bad = not math.isfinite(loss_v) or (self.scaler is None and not math.isfinite(norm_v))
            if bad:
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.update()  # closes the unscale_ of this step (and lowers the scale)
                nonfinite_run += 1
                nonfinite_total += 1
                log.event("nonfinite", self.step, loss=str(loss_v), grad_norm=str(norm_v), in_a_row=nonfinite_run)
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
                self._in_update = True  # parameters, optimizer and EMA change together: not a state to save
                lr = lr_at(self.step, cfg)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.ema.update(self.model)
                self.step += 1
                self._in_update = False
                win_losses.append(loss_v)
                win_norms.append(norm_v)
                win_steps += 1
                win_time += time.perf_counter() - t0
                if pbar is not None:
                    pbar.update(1)
                if self.step % cfg.log_every == 0 or self.step == target:
                    last_loss = sum(win_losses) / len(win_losses)
                    rate = win_steps / max(win_time, 1e-9)
                    values = {
                        "loss": last_loss,
                        "grad_norm": sum(win_norms) / len(win_norms),
                        "lr": lr,
                        "steps_per_s": rate,
                        "samples_per_s": rate * cfg.batch_size,
                        "nonfinite_count": nonfinite_total,
                        "epoch": self._epoch,
                    }
                    if self.scaler is not None:
                        values["loss_scale"] = self.scaler.get_scale()
                    log.scalars(values, self.step)
                    if pbar is not None:
                        pbar.set_postfix(loss=f"{last_loss:.4g}", samples_s=f"{rate * cfg.batch_size:.1f}")
                    win_losses, win_norms, win_steps, win_time = [], [], 0, 0.0
                self._hooks()
                # The checkpoint of the last step is written after the loop (a failure there is an error).
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < target and not stop:
                    self.save("periodic")
            if stop:
                signum = self._signal or signal.SIGTERM
                self.save("signal")
                barrier()
                log.event("stopped", self.step, signal=signal.Signals(signum).name)
                log.flush()
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                raise SystemExit(128 + int(signum))
        # A resumed run already at its target has nothing new to write: its checkpoint holds this very state.
        if not (self.resumed_from is not None and self._resumed_step == self.step):
            self.save("final" if self.step >= cfg.max_steps else "until")
        log.flush()
        return {
            "step": self.step,
            "completed": self.step >= cfg.max_steps,
            "loss": last_loss,
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
        first = f"{type(error).__name__}: " + (str(error).strip().splitlines() or ["(no message)"])[0]
        # A dead worker surfaces as the loader's RuntimeError or as a broken pipe/queue error: name the cause.
        workers = getattr(self._iter, "_workers", None) or []
        dead = [w for w in workers if not w.is_alive()]
        deadline = time.monotonic() + 1.0
        while workers and not dead and time.monotonic() < deadline:  # a dying worker closes its pipes first
            time.sleep(0.01)
            dead = [w for w in workers if not w.is_alive()]
        if dead:
            first = f"a data-loader worker process died (exit code {dead[0].exitcode}); {first}"
        if self._in_update:  # torch reports a dead worker from its SIGCHLD handler, at any point of the step
            where = f"the last checkpoint is {find_latest(self.run_dir)} (the failure interrupted an update)"
        elif (saved := next((c for c in (self.last_checkpoint, self.resumed_from)
                             if c is not None and c.name == checkpoint_name(self.step)), None)) is not None:
            # this step is saved already, with the RNG state of the step boundary (exact resume): keep that one
            where = f"the state after step {self.step} is saved in {saved}"
        elif self.info.world_size == 1:  # with several ranks the others would wait in the checkpoint's all-gather
            self.optimizer.zero_grad(set_to_none=True)
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

    def _hooks(self) -> None:
        cfg, step = self.cfg, self.step
        run_val = cfg.val_every and step % cfg.val_every == 0
        run_sample = cfg.sample_every and step % cfg.sample_every == 0
        if not (run_val or run_sample):
            return
        with torch.no_grad():
            if run_val:
                metrics = self.task.validate(self.ema.module, step, self.logger) or {}
                self.logger.scalars({f"val/{k}": v for k, v in metrics.items()}, step)
            if run_sample:
                self.task.sample(self.ema.module, step, self.logger)

    def _teardown(self) -> None:
        self._restore_signals()
        pbar = getattr(self, "_pbar", None)
        if pbar is not None:
            pbar.close()
            self._pbar = None
        logger = getattr(self, "logger", None)
        if logger is not None:
            logger.close()
        it = getattr(self, "_iter", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._iter = None
        if getattr(self, "_owns_pg", False) and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_pg = False
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None
