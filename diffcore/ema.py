"""Exponential moving average (EMA) of a model's weights, used for validation, sampling and export.

DDPM (Ho et al. 2020) and DiffWave (Kong et al. 2021) sample from an EMA of the trained weights. After each
optimizer step the shadow weights move towards the live ones:

    θ̄ ← d_n · θ̄ + (1 − d_n) · θ

with the effective decay ``d_n = min(decay, (1 + n) / (10 + n))`` when ``warmup`` is on (``n`` = number of updates
done before this one; the first update uses d_0 = 0.1), and ``d_n = decay`` otherwise. The warm-up keeps the early
average from being dominated by the random initial weights (the formula of TensorFlow's
``ExponentialMovingAverage(num_updates=...)``).

The shadow is a deep copy of the unwrapped model (``ema.module``), kept in float32 and in eval mode with
``requires_grad=False``; floating-point buffers (e.g. batch-norm statistics) and non-floating ones are copied, not
averaged.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["EMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers, however they are nested."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class EMA:
    """Shadow float32 weights of ``model`` updated by :meth:`update`.

    Args:
        model: the live model (may be DDP-wrapped or compiled; it is unwrapped).
        decay: the target decay (0.9999 for DDPM, 0.9999 for DiffWave).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` as the decay of update ``n`` (see the module docstring).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        src = unwrap_model(model)
        self.module: nn.Module = copy.deepcopy(src)
        for p in self.module.parameters():
            p.requires_grad_(False)
        # Floating parameters and buffers in float32, whatever precision the live model is kept in.
        for t in list(self.module.parameters()) + list(self.module.buffers()):
            if t.is_floating_point() and t.dtype != torch.float32:
                t.data = t.data.float()
        self.module.eval()

    def decay_at(self, n: int) -> float:
        """The effective decay d_n of update number ``n`` (0-based)."""
        if self.warmup:
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """θ̄ ← d·θ̄ + (1−d)·θ for every parameter; buffers are copied. Returns the decay d used."""
        d = self.decay_at(self.num_updates)
        src = unwrap_model(model)
        shadow = list(self.module.parameters())
        live = [p.detach() for p in src.parameters()]
        if len(shadow) != len(live):
            raise ValueError("EMA.update: the model does not have the parameters the EMA was built from")
        floats_s = [s for s, p in zip(shadow, live) if s.is_floating_point()]
        floats_p = [p.to(dtype=torch.float32) for s, p in zip(shadow, live) if s.is_floating_point()]
        if floats_s:
            torch._foreach_lerp_(floats_s, floats_p, 1.0 - d)
        for s_buf, buf in zip(self.module.buffers(), src.buffers()):
            s_buf.copy_(buf)
        self.num_updates += 1
        return d

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the EMA ones (cast to the model's dtypes)."""
        unwrap_model(model).load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """Plain data (tensors, numbers) that ``torch.load(weights_only=True)`` accepts."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": OrderedDict((k, v.detach().clone()) for k, v in self.module.state_dict().items()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the decay settings of this object are kept)."""
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["shadow"])

    def to(self, device: torch.device | str) -> "EMA":
        self.module.to(device)
        return self
