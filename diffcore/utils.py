"""Tensor helpers shared by the diffusion mathematics.

Every per-step quantity of a schedule is a float64 1-D array indexed by the 0-based step ``t`` (index 0 is the
paper's t = 1). The helpers here turn such an array into a tensor that broadcasts against a batch of any rank,
so no module ever writes a shape literal like ``[B, 1, 1, 1]``.

| symbol | name here        | meaning                                              |
| ------ | ---------------- | ---------------------------------------------------- |
| B      | batch            | leading dimension of every batched tensor            |
| D      | ``x[0].numel()`` | number of non-batch elements of one example          |
| t      | ``t``            | 0-based step index ``[B]`` (long) or fractional step ``[B]`` (float) |
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["append_dims", "gather", "mean_flat", "sum_flat", "randn", "resolve_device_dtype"]


def append_dims(x: Tensor, target_ndim: int) -> Tensor:
    """Append trailing singleton dimensions to ``x`` until it has ``target_ndim`` dimensions.

    ``x`` of shape ``[B]`` becomes ``[B, 1, ..., 1]`` so it broadcasts against a ``[B, ...]`` tensor of rank
    ``target_ndim``. Returns a view.
    """
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(f"append_dims: input has {x.ndim} dims, which is more than target_ndim={target_ndim}")
    return x[(...,) + (None,) * missing]


def gather(values: np.ndarray | Tensor, t: Tensor, like: Tensor) -> Tensor:
    """Read a per-step schedule array at steps ``t`` and broadcast the result to ``like``'s rank.

    Args:
        values: 1-D array ``[T]`` (numpy or torch; float64 is expected so that the lookup and the interpolation
            happen in double precision before the cast).
        t: step indices ``[B]`` (or a 0-d tensor). An integer tensor indexes ``values`` directly. A floating
            tensor is a fractional step: ``values`` is linearly interpolated between ``floor(t)`` and
            ``floor(t) + 1``; ``t`` is clamped to ``[0, T - 1]`` first.
        like: tensor whose dtype, device and rank the result takes.

    Returns:
        ``[B, 1, ..., 1]`` with ``like.ndim`` dimensions (``[1, ..., 1]`` for a 0-d ``t``), dtype and device of
        ``like``.
    """
    table = values if isinstance(values, Tensor) else torch.tensor(np.asarray(values))
    if table.ndim != 1 or table.numel() == 0:
        raise ValueError(f"gather: values must be a non-empty 1-D array, got shape {tuple(table.shape)}")
    table = table.to(device=t.device, dtype=torch.float64)
    if t.is_floating_point():
        tf = t.to(torch.float64).clamp(0.0, table.numel() - 1)
        lo = tf.floor().long()
        hi = (lo + 1).clamp(max=table.numel() - 1)
        w = tf - lo.to(torch.float64)
        out = table[lo] * (1.0 - w) + table[hi] * w
    else:
        out = table[t.long()]
    out = out.to(device=like.device, dtype=like.dtype)
    return append_dims(out, like.ndim) if t.ndim > 0 else out.reshape((1,) * like.ndim)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every non-batch dimension: ``[B, ...] -> [B]`` (a ``[B]`` input is returned as is)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def sum_flat(x: Tensor) -> Tensor:
    """Sum over every non-batch dimension: ``[B, ...] -> [B]``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def randn(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    device: torch.device | str,
    dtype: torch.dtype,
) -> Tensor:
    """Standard normal noise drawn from ``generator`` (which must live on ``device``), or the global RNG.

    ``generator`` may also be a sequence of generators, one per batch row (``shape[0]`` of them): row ``i`` is
    drawn from ``generator[i]`` alone, with the row's shape ``shape[1:]``, so a row's noise does not depend on the
    other rows of the batch (the same input vocoded alone or beside others, with its own generator seeded the same,
    gets the same noise). Every sampler of :mod:`diffcore.samplers` draws through this function, so each takes
    such a list."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    gens = list(generator)
    if not shape or len(gens) != shape[0]:
        raise ValueError(f"generator: {len(gens)} per-row generators for a batch of {shape[0] if shape else 0} rows")
    if not all(isinstance(g, torch.Generator) for g in gens):
        raise TypeError("generator: a per-row sequence must hold torch.Generator objects only")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in gens]) \
        if gens else torch.empty(tuple(shape), device=device, dtype=dtype)


def resolve_device_dtype(
    model: object,
    x_like: Tensor | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> tuple[torch.device, torch.dtype]:
    """Pick the device and dtype of a sampling run.

    Explicit arguments win; otherwise those of ``x_like`` (for instance a given ``x_T``); otherwise those of the
    model's first parameter when the model is an ``nn.Module`` with parameters; otherwise CPU and the default
    floating dtype.
    """
    param = None
    if isinstance(model, torch.nn.Module):
        param = next(iter(model.parameters()), None)
    if device is None:
        device = x_like.device if x_like is not None else (param.device if param is not None else "cpu")
    if dtype is None:
        if x_like is not None:
            dtype = x_like.dtype
        elif param is not None and param.is_floating_point():
            dtype = param.dtype
        else:
            dtype = torch.get_default_dtype()
    return torch.device(device), dtype


def clip_value(clip_denoised: bool | float | None) -> float | None:
    """The bound c of an x_0 clamp to [-c, c]: ``None``/``False`` = no clamp, ``True`` = 1.0 (images in [-1, 1])."""
    if clip_denoised is None or clip_denoised is False:
        return None
    if clip_denoised is True:
        return 1.0
    return float(clip_denoised)
