"""A frame-rate network that starts from Griffin-Lim and refines it: the vocoder that the bake-off of issue 17 ships.

The reverse process of a DiffWave starts from noise and needs hundreds of thousands of steps of a sample-rate
network to find speech. This vocoder starts where the baseline that needs no training ends: the Griffin-Lim
waveform ``g`` of the mel (:func:`diffwave.metrics.griffin_lim_from_mel`, 64 fast iterations from zero phase), and
a network that runs once per STFT frame corrects that waveform's spectrum toward the recording's::

    G      = STFT(g)                                   [B, K, F]   K = n_fft/2 + 1 bins, F frames (hop = mel hop)
    h      = features(G, mel)                          [B, C_in, F]  log|G|, G's phase derivatives, the mel
    Δm, Δφ = head(ConvNeXt(embed(h)))                  [B, K, F] each, the head initialised to zero
    Ŝ      = G · exp(Δm + iΔφ)                         a gain and a phase rotation of every bin
    x̂      = ISTFT(Ŝ)                                 [B, T]

The phase features are shift-invariant, as a convolution over frames needs them: the instantaneous frequency
deviation ``angle(G_f · conj(G_{f−1}) · e^{−iω_k·hop})`` and the group delay ``angle(G_k · conj(G_{k−1}))``, each as
(cos, sin). Because the head starts at zero and ``G`` is the STFT of a real signal, the untrained network returns
``g`` exactly (up to rounding): training can only move it away from Griffin-Lim toward the recording, and a model
is no worse than the baseline at step 0 (tested).

Training (:mod:`diffwave.refiner_train`) minimises a multi-resolution STFT loss plus a log-mel L1 between ``x̂``
and the recording, on crops of clips whose Griffin-Lim waveform is computed once per clip. The network is built
like Vocos's backbone (Siuzdak 2024: ConvNeXt blocks over frames, LayerNorm, layer scale); unlike Vocos it needs no
adversarial loss to find a phase, because it only corrects one.

Receptive field: ``embed_kernel − 1 + num_blocks · (kernel − 1)`` frames in all, half on each side
(:attr:`RefinerConfig.receptive_field`), plus the STFT's window (``n_fft`` samples) at both ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from diffcore.config import ConfigBase, ConfigError, bounded
from diffwave.mel import MelConfig

__all__ = ["NETWORK_NAME", "RefinerConfig", "GriffinLimRefiner", "refiner_features", "FEATURES_PER_BIN", "log_mel_loss"]

#: The value of ``network`` in an export's ``config.json`` that marks this network (DiffWave exports have none).
NETWORK_NAME = "refiner"
#: Per frequency bin: log|G|, cos/sin of the instantaneous-frequency deviation, cos/sin of the group delay.
FEATURES_PER_BIN = 5
#: Bound on the log-gain a bin may receive (exp(±4) = ×55 or ×1/55): keeps a bad step from overflowing.
MAX_LOG_GAIN = 4.0


@dataclass
class RefinerConfig(ConfigBase):
    """The refiner's network and the Griffin-Lim start it refines.

    ``dim``/``intermediate``/``num_blocks``/``kernel``: the ConvNeXt backbone (Vocos-base: 512/1536/8/7; the default
    here is small enough for a CPU and for an 8 MiB fp16 export). ``gl_iters``/``gl_momentum``: the Griffin-Lim
    start (the baseline's own settings by default, so step 0 is the baseline). ``correct_phase: false`` keeps
    Griffin-Lim's phase and learns only the gains (an ablation of the bake-off).
    """

    mel: MelConfig = field(default_factory=MelConfig)
    sample_rate: int = 22050
    dim: int = bounded(256, limit=2048)  # the bounds: beyond them no CPU or GPU recipe goes
    intermediate: int = bounded(768, limit=8192)
    num_blocks: int = bounded(6, limit=64)
    kernel: int = 7
    embed_kernel: int = 1
    gl_iters: int = 64
    gl_momentum: float = 0.99
    layer_scale: float = 1e-2
    correct_phase: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.mel, dict):
            self.mel = MelConfig.from_dict(self.mel)
        for name in ("dim", "intermediate", "num_blocks", "kernel", "embed_kernel", "gl_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"refiner.{name} must be a positive integer, got {value!r}")
        if self.kernel % 2 == 0 or self.embed_kernel % 2 == 0:
            raise ConfigError(f"refiner kernels must be odd (centred), got kernel={self.kernel}, "
                              f"embed_kernel={self.embed_kernel}")
        if not 0.0 <= self.gl_momentum < 1.0:
            raise ConfigError(f"refiner.gl_momentum must be in [0, 1), got {self.gl_momentum}")
        if self.sample_rate != self.mel.sample_rate:
            raise ConfigError(f"sample_rate ({self.sample_rate}) differs from mel.sample_rate ({self.mel.sample_rate})")

    @property
    def n_freqs(self) -> int:
        return self.mel.n_fft // 2 + 1

    @property
    def hop_length(self) -> int:
        return self.mel.hop_length

    @property
    def conditional(self) -> bool:
        """Always: the refiner inverts a mel (the vocoding code asks every model config this)."""
        return True

    @property
    def receptive_field(self) -> int:
        """Frames of features that one output frame depends on (centred: half on each side)."""
        return self.embed_kernel + self.num_blocks * (self.kernel - 1)


def _stft(x: Tensor, c: MelConfig) -> Tensor:
    window = torch.hann_window(c.win_length, periodic=True, dtype=x.dtype, device=x.device)
    return torch.stft(x, c.n_fft, c.hop_length, c.win_length, window=window, center=True, pad_mode="reflect",
                      return_complex=True)


def _istft(spec: Tensor, c: MelConfig, length: int) -> Tensor:
    window = torch.hann_window(c.win_length, periodic=True, dtype=spec.real.dtype, device=spec.device)
    return torch.istft(spec, c.n_fft, c.hop_length, c.win_length, window=window, center=True, length=length)


def _unit(z: Tensor) -> tuple[Tensor, Tensor]:
    """(cos, sin) of the angle of ``z``; 0 where ``z`` is 0."""
    r = z.abs()
    safe = r.clamp(min=1e-12)
    nonzero = (r > 1e-12).to(r.dtype)
    return z.real / safe * nonzero, z.imag / safe * nonzero


def refiner_features(spec: Tensor, mel: Tensor, c: MelConfig) -> Tensor:
    """The network's input ``[B, 5K + n_mels, F]`` from the STFT ``spec`` ``[B, K, F]`` and the mel ``[B, n_mels, F]``.

    Log magnitude; cos/sin of the instantaneous-frequency deviation (the phase advance from the previous frame
    minus the bin's own advance ``ω_k · hop``; 0 at the first frame); cos/sin of the group delay (the phase step from
    the bin below; 0 at bin 0); the mel centred on 0.5.
    """
    K = spec.shape[-2]
    logmag = torch.log(spec.abs() + 1e-5)
    omega = 2 * math.pi * torch.arange(K, device=spec.device, dtype=spec.real.dtype) * c.hop_length / c.n_fft
    advance = torch.polar(torch.ones_like(omega), -omega)[:, None]
    dt = spec[..., 1:] * spec[..., :-1].conj() * advance
    dt = F.pad(torch.view_as_real(dt), (0, 0, 1, 0))  # [B, K, F, 2]: frame 0 gets no derivative
    dt = torch.view_as_complex(dt.contiguous())
    df = spec[..., 1:, :] * spec[..., :-1, :].conj()
    df = torch.view_as_complex(F.pad(torch.view_as_real(df), (0, 0, 0, 0, 1, 0)).contiguous())
    ct, st = _unit(dt)
    cf, sf = _unit(df)
    return torch.cat([logmag, ct, st, cf, sf, mel - 0.5], dim=-2)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (kernel k over frames) → LayerNorm → Linear(d, 3d) → GELU → Linear(3d, d) → layer scale, with
    the residual (Liu et al. 2022, as Vocos uses it over frames)."""

    def __init__(self, dim: int, intermediate: int, kernel: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate)
        self.pwconv2 = nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:  # [B, d, F]
        h = self.dwconv(x).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class GriffinLimRefiner(nn.Module):
    """``forward(mel, start=None) -> waveform``: the Griffin-Lim waveform of ``mel`` refined (module docstring).

    ``mel`` ``[B, n_mels, F]`` in the config's preset; ``start`` ``[B, T]`` a precomputed Griffin-Lim waveform of that
    mel (training passes crops of it; ``None`` computes it). Returns ``[B, T]`` with the baseline's length.
    """

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__()
        self.config = config
        K, c = config.n_freqs, config
        self.embed = nn.Conv1d(FEATURES_PER_BIN * K + c.mel.n_mels, c.dim, c.embed_kernel, padding=c.embed_kernel // 2)
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock(c.dim, c.intermediate, c.kernel, c.layer_scale)
                                    for _ in range(c.num_blocks))
        self.final_norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.head = nn.Linear(c.dim, (2 if c.correct_phase else 1) * K)
        nn.init.zeros_(self.head.weight)  # step 0 returns the Griffin-Lim waveform itself
        nn.init.zeros_(self.head.bias)

    def griffin_lim(self, mel: Tensor) -> Tensor:
        """The start: the baseline's Griffin-Lim waveform ``[B, T]`` of ``mel`` ``[B, n_mels, F]``."""
        from diffwave.metrics import griffin_lim_from_mel

        c = self.config
        return griffin_lim_from_mel(mel, c.mel, n_iter=c.gl_iters, momentum=c.gl_momentum).to(mel)

    def correction(self, spec: Tensor, mel: Tensor) -> tuple[Tensor, Tensor]:
        """(Δm, Δφ), each ``[B, K, F]``, for the STFT ``spec`` of the start and its mel (frames matched)."""
        h = self.embed(refiner_features(spec, mel, self.config.mel))
        h = self.norm(h.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            h = block(h)
        out = self.head(self.final_norm(h.transpose(1, 2))).transpose(1, 2)  # [B, 2K, F] (K: gains only)
        dm, dphi = out.chunk(2, dim=1) if self.config.correct_phase else (out, torch.zeros_like(out))
        return MAX_LOG_GAIN * torch.tanh(dm / MAX_LOG_GAIN), dphi

    @property
    def context_frames(self) -> int:
        """Frames on each side that make a window's correction exact over its core: half the receptive field,
        plus the one frame that the instantaneous-frequency feature looks back."""
        return self.config.receptive_field // 2 + 1

    def forward(self, mel: Tensor, start: Tensor | None = None, max_frames: int | None = None) -> Tensor:
        """``max_frames``: compute the correction in windows of at most this many frames (overlapping by
        :attr:`context_frames` on each side, each keeping its core), which bounds the network's memory; the result
        equals the whole-input one up to float rounding. Griffin-Lim and the inverse STFT run on the whole input."""
        c = self.config.mel
        if mel.ndim != 3 or mel.shape[1] != c.n_mels:
            raise ValueError(f"expected a mel [B, {c.n_mels}, frames], got shape {tuple(mel.shape)}")
        g = self.griffin_lim(mel) if start is None else start
        spec = _stft(g, c)
        mel = _match_frames(mel, spec.shape[-1])
        frames, ctx = spec.shape[-1], self.context_frames
        if max_frames is None or frames <= max_frames:
            dm, dphi = self.correction(spec, mel)
        else:
            core = max_frames - 2 * ctx
            if core < 1:
                raise ValueError(f"max_frames={max_frames} leaves no core with {ctx} context frames on each side "
                                 f"(use max_frames > {2 * ctx})")
            parts = []
            for cs in range(0, frames, core):
                ce = min(cs + core, frames)
                ws, we = max(0, cs - ctx), min(frames, ce + ctx)
                dm_k, dphi_k = self.correction(spec[..., ws:we], mel[..., ws:we])
                parts.append((dm_k[..., cs - ws : ce - ws], dphi_k[..., cs - ws : ce - ws]))
            dm, dphi = torch.cat([p[0] for p in parts], -1), torch.cat([p[1] for p in parts], -1)
        return _istft(spec * torch.polar(torch.exp(dm), dphi), c, g.shape[-1])


def _match_frames(mel: Tensor, frames: int) -> Tensor:
    """``mel`` cut or edge-padded to ``frames`` frames (a ``hifigan`` mel has one frame less than the centred STFT)."""
    if mel.shape[-1] >= frames:
        return mel[..., :frames]
    return F.pad(mel, (0, frames - mel.shape[-1]), mode="replicate")


def log_mel_loss(est: Tensor, ref: Tensor, c: MelConfig) -> Tensor:
    """``[B]``: mean |ln M(ref) − ln M(est)| over mel bins and frames, with M the magnitude mel (floor 1e-5), the
    reconstruction loss of HiFi-GAN and Vocos."""
    from diffwave.mel import _filterbank_for

    window = torch.hann_window(c.win_length, periodic=True, dtype=est.dtype, device=est.device)
    fb = _filterbank_for(c, est.dtype, est.device)
    m = [torch.log((fb @ torch.stft(w, c.n_fft, c.hop_length, c.win_length, window=window, center=True,
                                    return_complex=True).abs()).clamp(min=1e-5)) for w in (est, ref)]
    return (m[0] - m[1]).abs().flatten(1).mean(dim=1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(config: RefinerConfig) -> dict[str, Any]:
    model = GriffinLimRefiner(config)
    return {"parameters": parameter_count(model), "receptive_field_frames": config.receptive_field}
