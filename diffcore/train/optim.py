"""The optimizer and the learning-rate schedule.

The learning rate at (0-based) optimizer step ``s`` with peak ``lr``, ``W = warmup_steps``, ``S = max_steps`` and
``r = min_lr_ratio``:

    warm-up (s < W):  lr · (s + 1) / W
    then, with progress p = (s − W) / max(1, S − W) clamped to [0, 1]:
      constant: lr
      linear:   lr · (r + (1 − r)(1 − p))
      cosine:   lr · (r + (1 − r) · ½(1 + cos πp))            (Loshchilov & Hutter 2017, without restarts)

It is a pure function of the step, set on the optimizer before each step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from diffcore.train.config import TrainConfig

__all__ = ["lr_at", "build_optimizer"]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimizer step ``step`` (0-based); see the module docstring."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    p = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    p = min(max(p, 0.0), 1.0)
    r = cfg.min_lr_ratio
    if cfg.lr_schedule == "linear":
        return cfg.lr * (r + (1.0 - r) * (1.0 - p))
    return cfg.lr * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * p)))


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """Adam or AdamW over ``params`` with the config's betas, eps and weight decay. Fused kernels: on CUDA when
    ``cfg.fused_optimizer`` is ``None`` (auto), always when ``True`` (PyTorch also has CPU kernels), never when
    ``False``."""
    params = [p for p in params if p.requires_grad]
    fused = cfg.fused_optimizer if cfg.fused_optimizer is not None else device.type == "cuda"
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if fused:
        kwargs["fused"] = True
    return cls(params, **kwargs)
