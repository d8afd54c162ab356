"""``TrainConfig``: the ``train`` section of every recipe (optimisation, precision, EMA, logging, checkpoints)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from diffcore.config import ConfigBase, ConfigError, bounded

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig(ConfigBase):
    """How to train; the engine reads nothing else.

    Optimisation: ``batch_size`` is the *global* batch per optimizer step; each of the ``world_size`` processes
    takes ``batch_size / (world_size * grad_accum)`` examples per micro-step and accumulates ``grad_accum`` of them.
    ``lr`` is the peak learning rate, reached linearly over ``warmup_steps`` and then held (``constant``) or
    decayed to ``min_lr_ratio * lr`` at ``max_steps`` (``cosine`` or ``linear``). ``grad_clip``: clip the global
    gradient norm to this value (``None``: no clipping; the norm is logged either way). ``optimizer``: ``adam``
    (L2 ``weight_decay``) or ``adamw`` (decoupled). ``fused_optimizer``: ``None`` = fused kernels on CUDA.

    Precision: ``auto`` is bf16 autocast on CUDA GPUs that support it and fp32 elsewhere (CPU, older GPUs; the
    rule and why training differs from inference on CPUs with native bf16: :mod:`diffcore.precision`); ``fp16``
    adds dynamic loss scaling. Parameters, optimizer state and EMA stay float32.

    Run-time switches of the model, applied through its optional ``set_runtime(...)`` (a model without it refuses
    a switch that is on): ``channels_last`` (``None`` = the model's default) and ``gradient_checkpointing``
    (recompute activations in the backward pass: less memory, more time). They change how the model computes, not
    what it is, so unlike the ``model`` section they may change when a run is resumed.

    Schedule of side jobs (in optimizer steps; 0 = never): ``log_every`` (scalars, JSONL, progress bar),
    ``ckpt_every`` (a checkpoint is also written at the end, on SIGTERM/SIGINT and on a NaN stop),
    ``val_every`` and ``sample_every`` (the task's hooks, run with the EMA weights). ``keep_last`` checkpoints are kept.

    ``max_nonfinite``: that many NaN/Inf losses in a row stop the run with ``TrainingError``.
    """

    max_steps: int = 100_000
    batch_size: int = bounded(16, limit=1_000_000)
    lr: float = 2e-4
    optimizer: Literal["adam", "adamw"] = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    compile: bool = False
    channels_last: bool | None = None
    gradient_checkpointing: bool = False
    fused_optimizer: bool | None = None
    seed: int = 0
    num_workers: int = 4
    pin_memory: bool = True
    log_every: int = 100
    ckpt_every: int = 5000
    keep_last: int = 3
    val_every: int = 0
    sample_every: int = 0
    max_nonfinite: int = 20
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("lr", "eps", "weight_decay", "min_lr_ratio", "ema_decay", "grad_clip"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):  # NaN passes every comparison below
                raise ConfigError(f"train.{name} must be a finite number, got {value}")
        positive = ("max_steps", "batch_size", "grad_accum", "keep_last", "log_every", "max_nonfinite")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "ckpt_every", "val_every", "sample_every", "num_workers", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not self.eps > 0:
            raise ConfigError(f"train.eps must be positive, got {self.eps}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas must lie in [0, 1), got {list(self.betas)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"train.grad_clip must be positive or null, got {self.grad_clip}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be divisible by train.grad_accum ({self.grad_accum})"
            )
