"""Mixed precision: which dtype autocast uses, and the loss scaler fp16 needs.

bf16 has float32's exponent range, so it trains without loss scaling; fp16 needs dynamic loss scaling
(``torch.amp.GradScaler``) to keep small gradients from flushing to zero. Parameters stay float32 in every mode.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Literal

import torch

__all__ = ["Precision", "resolve_precision", "autocast", "make_grad_scaler"]

Precision = Literal["bf16", "fp16", "fp32"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: Literal["auto", "bf16", "fp16", "fp32"], device: torch.device) -> Precision:
    """``auto`` → bf16 on a CUDA GPU that supports it, fp32 otherwise (CPU, pre-Ampere GPUs: choose fp16 there
    explicitly if wanted). Explicit choices are returned unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast(precision: Precision, device: torch.device) -> ContextManager:
    """The autocast context for the forward pass and loss (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def make_grad_scaler(precision: Precision, device: torch.device) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16, ``None`` otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
