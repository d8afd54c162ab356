"""Mixed precision, one rule for training and inference: which dtype autocast uses, and the loss scaler of fp16.

``precision`` is ``fp32``, ``bf16``, ``fp16`` or ``auto``. Parameters (and optimizer state and EMA) stay float32
in every mode; only the network's arithmetic runs in the autocast dtype. bf16 has float32's exponent range and
needs no loss scaling; fp16 trains with dynamic loss scaling (:func:`make_grad_scaler`).

``auto`` (:func:`resolve_precision`):

| device                                   | training (``purpose="train"``) | inference (``purpose="inference"``) |
| ---------------------------------------- | ------------------------------ | ----------------------------------- |
| CUDA GPU with bf16 (Ampere and later)    | bf16                           | bf16                                |
| CUDA GPU without bf16                    | fp32                           | fp32                                |
| CPU with native bf16 (AVX-512 BF16, AMX) | **fp32**                       | bf16                                |
| other CPU, MPS                           | fp32                           | fp32                                |

The one difference, and why: on a CPU with native bf16 arithmetic, inference gains the speed of bf16 and its
output is checked against the float32 reference by the benchmarks, while training keeps float32 so that a run is
the same computation on every CPU (a run resumed, or a test repeated, on a machine with or without AMX must not
change its arithmetic half-way) and gradients keep float32's precision where nothing is gained on a small CPU run.
Ask for ``bf16`` explicitly to train in bf16 on such a CPU.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Literal

import torch

__all__ = ["Precision", "PrecisionChoice", "resolve_precision", "cpu_has_bf16", "autocast", "make_grad_scaler"]

Precision = Literal["fp32", "bf16", "fp16"]
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX-BF16) that oneDNN uses for bf16 convolutions
    and matrix products; without it, bf16 on CPU is emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    words = set(flags.split())
    return bool(words & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: PrecisionChoice, device: torch.device | str,
                      purpose: Literal["train", "inference"] = "inference") -> Precision:
    """The precision ``auto`` means on ``device`` for ``purpose`` (the table of the module docstring); explicit
    choices are returned unchanged."""
    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
        return precision
    if purpose not in ("train", "inference"):
        raise ValueError(f"purpose must be 'train' or 'inference', got {purpose!r}")
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and purpose == "inference":
        return "bf16" if cpu_has_bf16() else "fp32"
    return "fp32"


def autocast(precision: Precision, device: torch.device | str, cache_enabled: bool = True) -> ContextManager:
    """Autocast to ``precision`` on ``device``'s type (a no-op context for fp32).

    ``cache_enabled=False`` re-casts the weights at every call instead of caching the casts for the duration of the
    context: required around CUDA-graph capture, whose replays would otherwise read cached casts that the end of the
    context frees."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _DTYPES:
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision], cache_enabled=cache_enabled)


def make_grad_scaler(precision: Precision, device: torch.device | str) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16 training, ``None`` otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)
