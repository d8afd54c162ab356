"""The speed paths of the DiffWave network: the same modules and weights as :mod:`diffwave.model`, run faster.

:mod:`diffwave.model` is the paper's network and the reference computation (bit for bit lmnt's). This module runs
that network's own modules another way; :meth:`DiffWave.forward <diffwave.model.DiffWave.forward>` hands a call
here when ``set_runtime(channels_last=True)`` is on or ``cond`` is a :class:`ConditionCache`:

- **channels-last**: every convolution runs as a 2-D convolution with a 1×k kernel over [B, C, 1, T] tensors in
  channels-last memory (time-major, [B, T, C] in memory), the layout oneDNN and cuDNN run fastest, with the gate
  and the residual/skip arithmetic written as single element-wise expressions (:func:`gated_tanh`,
  :func:`residual_and_skip`) that ``torch.compile`` fuses into one kernel each. Outputs agree with the reference
  path to float32 rounding (different convolution kernels round differently).
- **condition cache** (:func:`prepare_condition` → :class:`ConditionCache`): the upsampled mel and its projection
  for every residual layer, computed once and passed as ``cond`` to every step of a sampling run instead of the mel
  (the mel is the same at every step). Worth it on CPU, where those projections are a quarter of the arithmetic; on
  a GPU they are cheap tensor-core work while the cache is large (BASE, 10 s at batch 1: 1.7 GB in bf16), so
  :mod:`diffcore.inference` leaves it off there. A cache also serves the default layout (its layers are viewed as
  [B, 2C, T]), so the cache alone does not change the convolutions that run.

Every function takes the :class:`~diffwave.model.DiffWave` itself (``model``) and calls its modules, so there is
one set of weights and one state dict; gradient checkpointing (``set_runtime(gradient_checkpointing=True)``) applies
here too, through ``model.run_layer``. This module imports nothing from :mod:`diffwave.model` (the model imports it).
The tests hold each path against the reference (``tests/test_inference.py``).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConditionCache", "prepare_condition", "forward", "gated_tanh", "residual_and_skip"]

_SQRT2 = math.sqrt(2.0)

Conv = Callable[[nn.Conv1d, Tensor], Tensor]


class ConditionCache(NamedTuple):
    """The conditioner's contribution to every residual layer for one mel, reused across sampling steps.

    ``layers[i]`` is Conv1x1_i(mel↑) of layer i, [B, 2C, 1, T] in channels-last memory (a [B, T, 2C] buffer);
    ``frames`` is the mel's frame count. Built by :func:`prepare_condition` (``DiffWave.prepare_condition``); pass it
    as ``cond``.
    """

    layers: tuple[Tensor, ...]
    frames: int


def gated_tanh(y: Tensor, c: Tensor | None = None) -> Tensor:
    """σ(y_gate + c_gate) ⊙ tanh(y_filter + c_filter): [B, 2C, ...] (+ [B, 2C, ...]) → [B, C, ...].

    The gated activation unit of Figure 2 (van den Oord et al. 2016), written as one element-wise expression so that
    a compiler emits one kernel; the conditioner term ``c`` is added after the split, which keeps ``torch.compile``
    from folding it into the convolution as a post-op that copies ``c`` first. The same sums, in the same order, as
    :meth:`diffwave.model.ResidualBlock.forward`.
    """
    gate, filt = y.chunk(2, dim=1)
    if c is not None:
        c_gate, c_filt = c.chunk(2, dim=1)
        gate, filt = gate + c_gate, filt + c_filt
    return torch.sigmoid(gate) * torch.tanh(filt)


def residual_and_skip(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Split the output projection y [B, 2C, ...] into (residual, skip) and return ((x + residual)/√2, skip)."""
    residual, skip = y.chunk(2, dim=1)
    return (x + residual) / _SQRT2, skip


def _conv_nhwc(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """A Conv1d applied as a Conv2d with a 1×k kernel to x [B, C_in, 1, T] (channels-last): [B, C_out, 1, T]."""
    return F.conv2d(
        x, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.padding[0]), dilation=(1, conv.dilation[0])
    )


def _conv_plain(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """The Conv1d itself on x [B, C_in, T] (the reference layout)."""
    return conv(x)


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _residual_layer(
    layer: nn.Module, conv: Conv, x: Tensor, step: Tensor, up: Tensor | None, projected: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One :class:`~diffwave.model.ResidualBlock` in either layout: x [B, C, (1,) T], step embedding [B, hidden],
    ``up`` = mel↑ [B, n_mels, (1,) T] or ``projected`` = this layer's cached Conv1x1(mel↑) in x's layout."""
    e = layer.diffusion_projection(step)
    y = conv(layer.dilated_conv, x + e.reshape(*e.shape, *(1,) * (x.dim() - 2)))
    if projected is None and layer.conditioner_projection is not None:
        projected = conv(layer.conditioner_projection, up)
    return residual_and_skip(x, conv(layer.output_projection, gated_tanh(y, projected)))


def forward(model: nn.Module, x: Tensor, t: Tensor, cond: Tensor | ConditionCache | None) -> Tensor:
    """ε_θ(x, t, cond) of ``model``: x [B, 1, T] → [B, 1, (1,) T] (the caller reshapes to x_t's shape).

    ``t`` [B] or [1], checked by the model; ``cond``: the mel [B, n_mels, frames], a :class:`ConditionCache` of
    this model, or ``None`` for an unconditional model. Channels-last when ``model.channels_last`` is on, else the
    reference layout with the cache's projections.
    """
    batch, length = x.shape[0], x.shape[-1]
    cache = check_cache(model, cond, batch, length) if isinstance(cond, ConditionCache) else None
    up = model.upsampled_condition(cond, batch, length) if cache is None else None
    four_d = model.channels_last
    conv = _conv_nhwc if four_d else _conv_plain
    if four_d:
        h = F.relu(_channels_last(_conv_nhwc(model.input_projection, _channels_last(x.unsqueeze(2)))))
        up = _channels_last(up.unsqueeze(2)) if up is not None else None
    else:
        h = F.relu(model.input_projection(x))
    step = model.diffusion_embedding(t)
    skips: Tensor | None = None
    for i, layer in enumerate(model.residual_layers):
        projected = None
        if cache is not None:
            projected = cache.layers[i] if four_d else cache.layers[i].squeeze(2)
        h, skip = model.run_layer(_residual_layer, layer, conv, h, step, up, projected)
        skips = skip if skips is None else skips + skip
    h = F.relu(conv(model.skip_projection, skips / math.sqrt(len(model.residual_layers))))
    return conv(model.output_projection, h)


@torch.no_grad()
def prepare_condition(model: nn.Module, mel: Tensor) -> ConditionCache:
    """Upsample ``mel`` [B, n_mels, frames] and project it for every residual layer, once for a whole sampling run.

    Runs under the caller's autocast, so the cache takes the precision the network will run in. Memory:
    ``residual_layers · 2C · B · frames · hop`` values (BASE, 1 s at 22.05 kHz, batch 1: 85M, 169 MB in bf16).
    """
    if model.spectrogram_upsampler is None:
        raise ValueError("prepare_condition needs a mel-conditioned model (config.conditional is true)")
    if mel.dim() != 3:
        raise ValueError(f"the mel conditioner must have shape [B, {model.config.n_mels}, frames], got {list(mel.shape)}")
    frames = mel.shape[-1]
    up = _channels_last(model.upsampled_condition(mel, mel.shape[0], frames * model.hop_length).unsqueeze(2))
    layers = tuple(_channels_last(_conv_nhwc(layer.conditioner_projection, up)) for layer in model.residual_layers)
    return ConditionCache(layers, frames)


def check_cache(model: nn.Module, cache: ConditionCache, batch: int, length: int) -> ConditionCache:
    """``cache`` when it was built by ``model`` for a batch of ``batch`` × ``length`` samples, else ValueError."""
    if model.spectrogram_upsampler is None:
        raise ValueError("this DiffWave model is unconditional (config.conditional is false) but got a conditioner")
    if len(cache.layers) != len(model.residual_layers):
        raise ValueError(
            f"the condition cache holds {len(cache.layers)} layers, the model has {len(model.residual_layers)}: "
            "build it with this model's prepare_condition"
        )
    shape = tuple(cache.layers[0].shape)
    if shape[0] != batch or shape[-1] != length:
        raise ValueError(
            f"the condition cache is for batch {shape[0]} × {shape[-1]} samples, but x_t is {batch} × {length}"
        )
    return cache
