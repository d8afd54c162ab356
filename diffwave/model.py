"""The DiffWave network ε_θ(x_t, t, mel) of Kong et al., "DiffWave: A Versatile Diffusion Model for Audio Synthesis"
(ICLR 2021), Section 3 and Figure 2.

Notation (paper → code)

    x_t            noisy waveform, ``x_t`` [B, T] (or [B, 1, T])
    t              diffusion step; 0-based index here (index 0 is the paper's t = 1), ``t`` [B] long or float
    C              residual channels, ``config.residual_channels``
    N              residual layers, ``config.residual_layers``
    2^(i mod n)    dilation of layer i, n = ``config.dilation_cycle``
    t_embedding    sinusoidal step encoding (Section 3.1, 128 dims), then two FC layers with swish (SiLU); the
                   table is indexed by the 0-based step, as in lmnt's implementation
    mel            conditioner [B, n_mels, frames], upsampled to [B, n_mels, frames · hop]

Run-time switches (:meth:`DiffWave.set_runtime`: how the network runs, not what it computes, so they are neither in
the config nor in the state dict): ``channels_last`` runs the same modules through the channels-last path of
:mod:`diffwave.runtime` (as does a ``cond`` that is a :class:`~diffwave.runtime.ConditionCache`, from
:meth:`DiffWave.prepare_condition`); ``gradient_checkpointing`` recomputes each residual layer's activations in the
backward pass instead of keeping them (active only while gradients are recorded; same values and gradients). The
code below, the default, is the reference computation, bit for bit lmnt's.

Module and parameter names follow lmnt-com/diffwave's state-dict layout (``input_projection``,
``diffusion_embedding.projection1``, ``spectrogram_upsampler.conv1``, ``residual_layers.{i}.dilated_conv`` ...) so that
its checkpoints load without renaming (see :mod:`diffwave.lmnt`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffwave import runtime
from diffwave.config import DiffWaveConfig
from diffwave.runtime import ConditionCache

__all__ = [
    "DiffWave",
    "DiffusionEmbedding",
    "SpectrogramUpsampler",
    "ResidualBlock",
    "ConditionCache",
    "step_embedding_table",
]


def _value_checks_enabled(x: Tensor) -> bool:
    """False while torch.compile traces or a CUDA graph captures: the input checks that read tensor values (a host
    synchronisation) are skipped then, so that neither breaks on them."""
    if torch.compiler.is_compiling():
        return False
    return not (x.is_cuda and torch.cuda.is_current_stream_capturing())


def step_embedding_table(num_steps: int, dim: int = 128) -> Tensor:
    """Sinusoidal encoding of the integer steps 0 … num_steps−1: [num_steps, dim], float32.

    Row t is [sin(t·ω_0), …, sin(t·ω_{h−1}), cos(t·ω_0), …, cos(t·ω_{h−1})] with h = dim/2 and ω_i = 10^(4·i/(h−1)),
    the paper's t_embedding (Section 3.1: frequencies 10^(0·4/63) … 10^(63·4/63) for dim 128).

    The products t·ω_i reach 10^4·T and are formed in float32, exactly as lmnt's reference trains with: at the highest
    frequencies float32 rounding of the argument changes sin/cos at the 1e-2 level, and a trained model has learned
    those exact values, so computing the table in float64 would not reproduce its outputs.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"the step embedding dimension must be even and at least 4, got {dim}")
    half = dim // 2
    steps = torch.arange(num_steps).unsqueeze(1)  # int64 [T, 1]
    exponents = torch.arange(half).unsqueeze(0) * 4.0 / (half - 1)  # float32 [1, h]
    angles = steps * 10.0**exponents  # float32 [T, h]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class DiffusionEmbedding(nn.Module):
    """Step t → sinusoidal table row (``dim``) → Linear → SiLU → Linear → SiLU: [B] → [B, hidden].

    Integer steps index the table; a fractional step t = k + f (0 ≤ f < 1) uses (1 − f)·row_k + f·row_{k+1}, which is
    how DiffWave's fast-sampling algorithm evaluates the network at the aligned steps t_s^align.
    """

    embedding: Tensor

    def __init__(self, num_steps: int, dim: int = 128, hidden: int = 512):
        super().__init__()
        self.num_steps = num_steps
        # Derived from the config, so not part of the state dict (lmnt's layout does the same).
        self.register_buffer("embedding", step_embedding_table(num_steps, dim), persistent=False)
        self.projection1 = nn.Linear(dim, hidden)
        self.projection2 = nn.Linear(hidden, hidden)

    def table(self, t: Tensor) -> Tensor:
        """The (interpolated) sinusoidal rows for steps ``t`` [B]: [B, dim]."""
        if t.is_floating_point():
            low = torch.floor(t).long()
            high = torch.ceil(t).long()
            frac = (t - low).to(self.embedding.dtype).unsqueeze(-1)
            lo, hi = self.embedding[low], self.embedding[high]
            return lo + (hi - lo) * frac
        return self.embedding[t]

    def forward(self, t: Tensor) -> Tensor:
        x = F.silu(self.projection1(self.table(t)))
        return F.silu(self.projection2(x))


def upsample_kernel(stride: int) -> tuple[int, int]:
    """Time kernel and padding of one transposed-conv stage: kernel 2s (s even) or 2s − 1 (s odd), padding ⌊s/2⌋.

    A transposed convolution maps L frames to (L − 1)·s − 2p + k samples; with these choices that is exactly L·s,
    each frame spreading over about two hops centred on its own (lmnt's stride 16, kernel 32, padding 8).
    """
    return 2 * stride - stride % 2, stride // 2


class SpectrogramUpsampler(nn.Module):
    """Mel [B, n_mels, L] → [B, n_mels, L·∏strides] by 2-D transposed convolutions over (mel, time).

    Each stage is a single-channel ConvTranspose2d with kernel (3, k_s), stride (1, s), padding (1, p_s) (see
    :func:`upsample_kernel`), followed by leaky ReLU with slope 0.4; the stages are named ``conv1``, ``conv2`` … as in
    lmnt's state dict.
    """

    def __init__(self, strides: tuple[int, ...]):
        super().__init__()
        self.strides = tuple(strides)
        for i, s in enumerate(self.strides):
            k, p = upsample_kernel(s)
            self.add_module(f"conv{i + 1}", nn.ConvTranspose2d(1, 1, (3, k), stride=(1, s), padding=(1, p)))

    @property
    def hop_length(self) -> int:
        return math.prod(self.strides)

    def forward(self, mel: Tensor) -> Tensor:
        x = mel.unsqueeze(1)
        for i in range(len(self.strides)):
            x = F.leaky_relu(getattr(self, f"conv{i + 1}")(x), 0.4)
        return x.squeeze(1)


def _conv1d(*args, **kwargs) -> nn.Conv1d:
    # He-normal weights, as the reference implementation initialises every 1-D convolution.
    layer = nn.Conv1d(*args, **kwargs)
    nn.init.kaiming_normal_(layer.weight)
    return layer


class ResidualBlock(nn.Module):
    """One residual layer of Figure 2: x [B, C, T] → ((x + residual)/√2 [B, C, T], skip [B, C, T]).

    y = DilatedConv(x + W_t·e_t) + Conv1x1(mel↑);  y = σ(y_gate) ⊙ tanh(y_filter);  [residual, skip] = Conv1x1(y).
    """

    def __init__(self, residual_channels: int, dilation: int, embedding_hidden: int, n_mels: int | None):
        super().__init__()
        c = residual_channels
        self.dilated_conv = _conv1d(c, 2 * c, 3, padding=dilation, dilation=dilation)
        self.diffusion_projection = nn.Linear(embedding_hidden, c)
        self.conditioner_projection = _conv1d(n_mels, 2 * c, 1) if n_mels is not None else None
        self.output_projection = _conv1d(c, 2 * c, 1)

    def forward(self, x: Tensor, step: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """x [B, C, T], step embedding [B, hidden], cond = mel↑ [B, n_mels, T] (``None`` if unconditional)."""
        y = self.dilated_conv(x + self.diffusion_projection(step).unsqueeze(-1))
        gate, filt = y.chunk(2, dim=1)
        if self.conditioner_projection is not None:
            c_gate, c_filt = self.conditioner_projection(cond).chunk(2, dim=1)
            gate, filt = gate + c_gate, filt + c_filt
        residual, skip = self.output_projection(torch.sigmoid(gate) * torch.tanh(filt)).chunk(2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class DiffWave(nn.Module):
    """ε_θ(x_t, t, mel): the bidirectional dilated-convolution network of DiffWave (Kong et al. 2021, Figure 2).

    ``model(x_t, t, cond=None)`` follows the package's model contract:

    - ``x_t``: [B, T] or [B, 1, T] noisy audio; the output has the same shape.
    - ``t``: [B] (or [1] / scalar, broadcast over the batch) 0-based steps in [0, num_steps − 1]; long for the
      training steps, float for fractional (interpolated) steps.
    - ``cond``: [B, n_mels, frames] mel spectrogram with T = frames · hop_length for a conditional model; ``None``
      for an unconditional one.

    Output: the ε-prediction (or x0 / v, as ``config.diffusion.prediction`` says), zero at initialisation because
    the last 1×1 convolution starts at zero.
    """

    def __init__(self, config: DiffWaveConfig):
        super().__init__()
        self.config = config
        c = config.residual_channels
        self.input_projection = _conv1d(1, c, 1)
        self.diffusion_embedding = DiffusionEmbedding(
            config.diffusion.num_steps, config.embedding_dim, config.embedding_hidden
        )
        n_mels = config.n_mels if config.conditional else None
        self.spectrogram_upsampler = SpectrogramUpsampler(config.upsample_strides) if config.conditional else None
        self.residual_layers = nn.ModuleList(
            ResidualBlock(c, 2 ** (i % config.dilation_cycle), config.embedding_hidden, n_mels)
            for i in range(config.residual_layers)
        )
        self.skip_projection = _conv1d(c, c, 1)
        self.output_projection = _conv1d(c, 1, 1)
        nn.init.zeros_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)
        #: Run-time switches (module docstring), set by :meth:`set_runtime`; not in the state dict or the config.
        self.channels_last = False
        self.gradient_checkpointing = False

    def set_runtime(self, *, channels_last: bool | None = None, gradient_checkpointing: bool | None = None) -> None:
        """Switch how the network runs (``None`` leaves a switch as it is): ``channels_last``, the channels-last path
        of :mod:`diffwave.runtime`; ``gradient_checkpointing``, recomputing each residual layer in the backward pass.
        Neither changes the function, the weights or the config."""
        if channels_last is not None:
            self.channels_last = bool(channels_last)
        if gradient_checkpointing is not None:
            self.gradient_checkpointing = bool(gradient_checkpointing)

    def run_layer(self, layer: Callable[..., tuple[Tensor, Tensor]], *args: Any) -> tuple[Tensor, Tensor]:
        """``layer(*args)``, through activation checkpointing when it is on and gradients are being recorded."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    @property
    def hop_length(self) -> int | None:
        """Audio samples per mel frame (None for an unconditional model)."""
        return self.spectrogram_upsampler.hop_length if self.spectrogram_upsampler is not None else None

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | ConditionCache | None = None) -> Tensor:
        if x_t.dim() == 2 or (x_t.dim() == 3 and x_t.shape[1] == 1):
            x = x_t.reshape(x_t.shape[0], 1, x_t.shape[-1])
        else:
            raise ValueError(f"x_t must be audio of shape [B, T] or [B, 1, T], got {list(x_t.shape)}")
        batch, length = x.shape[0], x.shape[-1]
        t = self._check_step(t, batch)
        if self.channels_last or isinstance(cond, ConditionCache):
            return runtime.forward(self, x, t, cond).reshape(x_t.shape)

        cond = self.upsampled_condition(cond, batch, length)
        h = F.relu(self.input_projection(x))
        step = self.diffusion_embedding(t)
        skips: Tensor | None = None
        for layer in self.residual_layers:
            h, skip = self.run_layer(layer, h, step, cond)
            skips = skip if skips is None else skips + skip
        h = F.relu(self.skip_projection(skips / math.sqrt(len(self.residual_layers))))
        return self.output_projection(h).reshape(x_t.shape)

    def prepare_condition(self, mel: Tensor) -> ConditionCache:
        """The upsampled ``mel`` [B, n_mels, frames] projected for every residual layer, once for a whole sampling
        run: pass the :class:`~diffwave.runtime.ConditionCache` as ``cond`` (:func:`diffwave.runtime.prepare_condition`)."""
        return runtime.prepare_condition(self, mel)

    def _check_step(self, t: Tensor, batch: int) -> Tensor:
        if not isinstance(t, Tensor):
            raise TypeError(f"t must be a tensor of steps, got {type(t).__name__}")
        if t.dim() == 0:
            t = t.reshape(1)
        if t.dim() != 1 or t.shape[0] not in (1, batch):
            raise ValueError(f"t must have shape [B] = [{batch}] (or [1]), got {list(t.shape)}")
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"t must be an integer or floating tensor, got {t.dtype}")
        last = self.diffusion_embedding.num_steps - 1
        if _value_checks_enabled(t) and bool(((t < 0) | (t > last)).any()):
            raise ValueError(
                f"diffusion steps must lie in [0, {last}] (0-based, {last + 1} training steps), "
                f"got values from {t.min().item()} to {t.max().item()}"
            )
        return t

    def upsampled_condition(self, cond: Tensor | None, batch: int, length: int) -> Tensor | None:
        """mel↑ [B, n_mels, T] of the conditioner ``cond`` [B, n_mels, frames] checked against x_t's batch and
        length T; ``None`` for an unconditional model (which refuses a conditioner)."""
        if self.spectrogram_upsampler is None:
            if cond is not None:
                raise ValueError("this DiffWave model is unconditional (config.conditional is false) but got a conditioner")
            return None
        n_mels, hop = self.config.n_mels, self.hop_length
        if cond is None:
            raise ValueError(f"this DiffWave model is mel-conditioned: pass cond=mel of shape [B, {n_mels}, frames]")
        if cond.dim() != 3 or cond.shape[0] != batch or cond.shape[1] != n_mels:
            raise ValueError(
                f"the mel conditioner must have shape [B={batch}, {n_mels}, frames], got {list(cond.shape)}"
            )
        frames = cond.shape[-1]
        if frames * hop != length:
            raise ValueError(
                f"audio length {length} does not match the mel: {frames} frames × hop {hop} = {frames * hop} samples"
            )
        return self.spectrogram_upsampler(cond)
