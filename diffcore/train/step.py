"""One optimizer update: the model, its EMA, the optimizer and the loss scaler, and the arithmetic of a step.

``A = grad_accum`` micro-batches per update::

    zero grads
    for each micro-batch:       (DDP gradient sync only on the last one)
        with autocast:  per_example = loss(model, batch)                        # [b]
        backward(mean(per_example) / A)                                        # × loss scale in fp16
    unscale (fp16); grad_norm = clip_grad_norm_(params, grad_clip)             # or just the norm
    all-reduce [loss, grad_norm, stop flag] across processes                   # one sync per step

then :meth:`OptimStep.apply` (learning rate, optimizer step, loss-scaler update, EMA update) or, for a non-finite
loss or gradient norm, :meth:`OptimStep.skip` (no update; the scaler lowers its scale). Parameters, optimizer
state and EMA stay float32 whatever the autocast precision.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from diffcore.ema import EMA
from diffcore.errors import TrainingError
from diffcore.precision import Precision, autocast, make_grad_scaler
from diffcore.train.config import TrainConfig
from diffcore.train.optim import build_optimizer

__all__ = ["OptimStep"]


class OptimStep:
    """The training state that changes at each update (``model``, ``ema``, ``optimizer``, ``scaler``) and the
    update itself (module docstring). ``wrapped`` is the module the loss is computed with: the model itself, or
    after :meth:`wrap` its compiled and/or DistributedDataParallel form."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device, precision: Precision,
                 world_size: int = 1) -> None:
        self.cfg = cfg
        self.device = device
        self.precision: Precision = precision
        self.world_size = world_size
        self.model = model
        self.ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = build_optimizer(model.parameters(), cfg, device)
        self.scaler = make_grad_scaler(precision, device)
        self.wrapped: nn.Module = model

    def wrap(self) -> None:
        """``torch.compile`` (``train.compile``) and DistributedDataParallel (several processes) around the model;
        called once the weights are final (after a resume), so every rank starts from the same ones."""
        model: nn.Module = self.model
        if self.cfg.compile:
            model = torch.compile(model)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.wrapped = model

    def forward_backward(self, loss_fn: Callable[[nn.Module, Any], torch.Tensor], next_batch: Callable[[], Any],
                         stop_requested: Callable[[], bool] = lambda: False) -> tuple[float, float, bool]:
        """Gradients of one update over ``grad_accum`` micro-batches of ``next_batch()``; returns the global
        ``(loss, grad_norm, stop)``, ``stop`` being true when ``stop_requested()`` (asked once the gradients are
        computed, so a signal that arrives during the step stops the run after it) is true on any process."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        ddp = isinstance(self.wrapped, nn.parallel.DistributedDataParallel)
        for i in range(cfg.grad_accum):
            batch = next_batch()
            sync = contextlib.nullcontext() if (not ddp or i == cfg.grad_accum - 1) else self.wrapped.no_sync()
            with sync:
                with autocast(self.precision, self.device):
                    per_example = loss_fn(self.wrapped, batch)
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
        stats = torch.stack([total / cfg.grad_accum, norm.float().to(self.device),
                             torch.tensor(1.0 if stop_requested() else 0.0, device=self.device)])
        if self.world_size > 1:
            dist.all_reduce(stats)
            stats /= self.world_size
        loss_v, norm_v, stop_v = stats.tolist()
        return loss_v, norm_v, stop_v > 0

    def nonfinite(self, loss: float, grad_norm: float) -> bool:
        """Whether a step must be skipped: a non-finite loss, or a non-finite gradient norm outside fp16 (where the
        loss scaler handles overflow itself)."""
        return not math.isfinite(loss) or (self.scaler is None and not math.isfinite(grad_norm))

    def skip(self) -> None:
        """Drop this step's gradients (no update, no EMA); in fp16 the scaler lowers its scale."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()  # closes the unscale_ of this step

    def apply(self, lr: float) -> None:
        """The update: learning rate ``lr``, optimizer step (through the loss scaler in fp16), EMA update."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.ema.update(self.model)

    def state_dict(self) -> dict[str, Any]:
        """``model``, ``ema``, ``optimizer``, ``scaler`` entries of a checkpoint."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from a checkpoint's entries (``ema`` and ``scaler`` optional); raises what torch raises for
        weights or optimizer state that do not fit."""
        self.model.load_state_dict(state["model"])
        if state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
