"""Mel-spectrogram front ends: the two conventions a vocoder meets in practice.

``diffwave`` is what lmnt-com/diffwave's ``preprocess.py`` computes (and so what its checkpoints expect)::

    S   = |STFT(x)| / sqrt(sum w^2)          centred frames (reflect pad n_fft/2), periodic Hann window
    M   = H_htk @ S                          HTK mel scale, unnormalised triangles, f_min 20 Hz, f_max sr/2
    dB  = 20 log10(max(M, 1e-5)) - 20
    mel = clip((dB + 100) / 100, 0, 1)       values in [0, 1]

``hifigan`` is jik876/hifi-gan's ``mel_spectrogram`` (used by most TTS acoustic models)::

    x'  = reflect_pad(x, (n_fft - hop) / 2)  then uncentred frames, periodic Hann window
    S   = sqrt(Re^2 + Im^2 + 1e-9)
    M   = H_slaney @ S                       Slaney mel scale, area-normalised triangles (librosa's default)
    mel = ln(max(M, 1e-5))                   natural-log magnitudes, about [-11.5, +2] for speech

Frame counts: ``diffwave`` gives ``T // hop + 1`` frames, ``hifigan`` ``T // hop`` (for even ``n_fft - hop``).
In both, frame ``i`` is aligned with samples ``[i*hop, (i+1)*hop)`` for vocoder training (see ``diffwave.data``).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from diffcore.checkpoint import load_error_detail
from diffcore.config import ConfigBase, ConfigError, bounded

__all__ = [
    "MelConfig",
    "MelError",
    "MelPreset",
    "compute_mel",
    "mel_filterbank",
    "validate_mel",
    "load_mel_file",
    "hz_to_mel",
    "mel_to_hz",
]

MelPreset = Literal["diffwave", "hifigan"]

#: log(1e-5): the floor of a ``hifigan`` mel.
HIFIGAN_LOG_FLOOR = math.log(1e-5)
#: Highest plausible value of a ``hifigan`` mel (full-scale speech stays near +2 to +3).
HIFIGAN_LOG_CEIL = 6.0


#: Longest audio a mel may stand for, as for audio files (:data:`diffwave.audio.MAX_DURATION_S`): one hour.
MAX_MEL_SECONDS = 3600.0
#: Most frames a mel file may claim before its model is known: one hour at 48 kHz with a hop of 64 samples. With a
#: model, :func:`validate_mel` applies the model's own one-hour bound (310,079 frames at 22,050 Hz, hop 256).
MAX_MEL_FILE_FRAMES = int(MAX_MEL_SECONDS * 48_000 / 64) + 1
#: Most bytes of data a mel file may claim (1,024 bands of that length in float64 would be far more).
MAX_MEL_FILE_BYTES = 1 << 31


def max_mel_frames(config: "MelConfig") -> int:
    """The most frames a mel for ``config`` may have: those of :data:`MAX_MEL_SECONDS` of audio."""
    return config.num_frames(int(MAX_MEL_SECONDS * config.sample_rate))


class MelError(ValueError):
    """A mel spectrogram that does not fit the front end a model expects; the message names the source."""


@dataclass
class MelConfig(ConfigBase):
    """A mel front end: the ``preset`` picks the formula (see the module docstring), the fields its parameters.

    ``f_min``/``f_max`` left as ``None`` take the preset's value (``diffwave``: 20 Hz; ``f_max`` stays ``None``
    and means ``sample_rate / 2``, so it follows the rate; ``hifigan``: 0 Hz and 8000 Hz).
    Build one with ``MelConfig.diffwave()``, ``MelConfig.hifigan()`` or ``MelConfig.from_dict({"preset": ...})``
    (the field ``preset`` hides ``ConfigBase.preset()`` on this class).
    """

    preset: MelPreset = "diffwave"
    sample_rate: int = 22050
    n_fft: int = bounded(1024, limit=65_536)
    hop_length: int = bounded(256, limit=65_536)
    win_length: int = bounded(1024, limit=65_536)
    n_mels: int = bounded(80, limit=1024)
    f_min: float | None = None
    f_max: float | None = None

    PRESETS: ClassVar[dict[str, dict]] = {
        "diffwave": {"preset": "diffwave", "f_min": 20.0, "f_max": None},
        "hifigan": {"preset": "hifigan", "f_min": 0.0, "f_max": 8000.0},
    }

    def __post_init__(self) -> None:
        if self.preset not in ("diffwave", "hifigan"):
            raise ConfigError(f"mel.preset must be 'diffwave' or 'hifigan', got {self.preset!r}")
        if self.f_min is None:
            self.f_min = 20.0 if self.preset == "diffwave" else 0.0
        if self.f_max is None and self.preset == "hifigan":
            self.f_max = 8000.0
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"mel.{name} must be positive, got {getattr(self, name)}")
        if self.win_length > self.n_fft:
            raise ConfigError(f"mel.win_length ({self.win_length}) must not exceed mel.n_fft ({self.n_fft})")
        if not 0 <= self.f_min < self.fmax_hz <= self.sample_rate / 2:
            raise ConfigError(
                f"mel frequencies must satisfy 0 <= f_min < f_max <= sample_rate/2 = {self.sample_rate / 2:g}, "
                f"got f_min={self.f_min}, f_max={self.fmax_hz}"
            )
        if self.preset == "hifigan" and (self.n_fft - self.hop_length) % 2:
            raise ConfigError(
                f"the hifigan preset pads (n_fft - hop_length)/2 on each side, which needs an even difference; "
                f"got n_fft={self.n_fft}, hop_length={self.hop_length}"
            )

    @classmethod
    def diffwave(cls, sample_rate: int = 22050) -> "MelConfig":
        """lmnt-com/diffwave's front end (n_fft 1024, hop 256, 80 mels, 20 Hz to sr/2, values in [0, 1])."""
        return cls.from_dict({"preset": "diffwave", "sample_rate": sample_rate})

    @classmethod
    def hifigan(cls, sample_rate: int = 22050) -> "MelConfig":
        """HiFi-GAN's front end (config_v1: n_fft 1024, hop 256, 80 mels, 0 to 8000 Hz, natural-log magnitudes)."""
        return cls.from_dict({"preset": "hifigan", "sample_rate": sample_rate})

    @property
    def fmax_hz(self) -> float:
        """The upper band edge in Hz (``f_max``, or ``sample_rate / 2`` when it is ``None``)."""
        return float(self.sample_rate) / 2 if self.f_max is None else float(self.f_max)

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Frames that :func:`compute_mel` returns for a clip of ``num_samples`` samples."""
        if self.preset == "diffwave":
            return num_samples // self.hop_length + 1
        pad = (self.n_fft - self.hop_length) // 2
        return (num_samples + 2 * pad - self.n_fft) // self.hop_length + 1

    def min_samples(self) -> int:
        """The shortest clip :func:`compute_mel` accepts (reflect padding needs more samples than the pad)."""
        pad = self.n_fft // 2 if self.preset == "diffwave" else (self.n_fft - self.hop_length) // 2
        return max(pad + 1, self.n_fft - 2 * pad)


# ---------------------------------------------------------------------------------------------------------------
# Mel filter banks


def hz_to_mel(f: np.ndarray | float, scale: Literal["htk", "slaney"]) -> np.ndarray:
    """Hz to mel. HTK: ``2595 log10(1 + f/700)``. Slaney: linear ``f / (200/3)`` below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep, f / f_sp)


def mel_to_hz(m: np.ndarray | float, scale: Literal["htk", "slaney"]) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=16)
def _filterbank_np(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float, scale: str, norm: str | None
) -> np.ndarray:
    fft_freqs = np.arange(n_fft // 2 + 1, dtype=np.float64) * sample_rate / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2), scale)  # Hz
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_freqs[None] - lower) / (centre - lower)
    falling = (upper - fft_freqs[None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [n_mels, n_freqs]
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # each triangle has unit area in Hz
    weights.setflags(write=False)
    return weights


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float,
    f_max: float,
    *,
    scale: Literal["htk", "slaney"],
    norm: Literal["slaney"] | None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` on the FFT bin frequencies ``k * sr / n_fft``.

    ``n_mels + 2`` edges equally spaced on the mel scale; filter ``m`` rises from edge ``m`` to ``m+1`` and falls to
    ``m+2``. ``norm="slaney"`` scales each by ``2 / (f_{m+2} - f_m)``. Matches ``librosa.filters.mel`` (``htk``,
    ``norm``) and ``torchaudio.functional.melscale_fbanks``.
    """
    w = _filterbank_np(int(sample_rate), int(n_fft), int(n_mels), float(f_min), float(f_max), scale, norm)
    return torch.from_numpy(w.copy()).to(dtype)


def _filterbank_for(config: MelConfig, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    scale, norm = ("htk", None) if config.preset == "diffwave" else ("slaney", "slaney")
    fb = mel_filterbank(
        config.sample_rate, config.n_fft, config.n_mels, config.f_min, config.fmax_hz, scale=scale, norm=norm
    )
    return fb.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# Mel spectrograms


def _mel_of_padded(xp: torch.Tensor, config: MelConfig, window: torch.Tensor) -> torch.Tensor:
    """The preset's mel of the uncentred frames of an already padded signal ``xp`` ``[N, T']``."""
    z = torch.stft(
        xp, config.n_fft, config.hop_length, config.win_length, window=window, center=False, return_complex=True
    )
    if config.preset == "diffwave":
        spec = z.abs() / window.pow(2).sum().sqrt()  # torchaudio's normalized=True ("window" normalisation)
        mel = _filterbank_for(config, xp.dtype, xp.device) @ spec
        db = 20.0 * torch.log10(mel.clamp(min=1e-5)) - 20.0
        return ((db + 100.0) / 100.0).clamp(0.0, 1.0)
    spec = torch.sqrt(z.real.pow(2) + z.imag.pow(2) + 1e-9)
    return torch.log((_filterbank_for(config, xp.dtype, xp.device) @ spec).clamp(min=1e-5))


#: A clip with more frames than twice this is transformed in pieces of this many frames, so the STFT's buffers
#: (about ``piece · n_fft`` values) stay small however long the clip is; frames are computed independently, so the
#: result is the same.
MEL_CHUNK_FRAMES = 2048


def compute_mel(wav: torch.Tensor, config: MelConfig) -> torch.Tensor:
    """The mel spectrogram of ``wav`` under ``config.preset`` (formulas in the module docstring).

    Args:
        wav: ``[..., T]`` float waveform in [-1, 1] at ``config.sample_rate``; any leading dims.
    Returns:
        ``[..., n_mels, frames]`` in ``wav``'s dtype, ``frames = config.num_frames(T)``.
    """
    if not isinstance(wav, torch.Tensor):
        wav = torch.as_tensor(wav)
    if not wav.is_floating_point():
        raise TypeError(f"compute_mel needs a float waveform, got {wav.dtype}")
    if wav.ndim == 0:
        raise ValueError("compute_mel needs a waveform [..., T], got a scalar")
    lead, T = wav.shape[:-1], wav.shape[-1]
    if T < config.min_samples():
        raise ValueError(
            f"a clip of {T} samples is too short for the {config.preset} mel front end "
            f"(needs at least {config.min_samples()} samples)"
        )
    x = wav.reshape(-1, T)
    window = torch.hann_window(config.win_length, periodic=True, dtype=x.dtype, device=x.device)
    frames = config.num_frames(T)
    if config.preset == "diffwave" and frames <= 2 * MEL_CHUNK_FRAMES:
        spec = torch.stft(
            x, config.n_fft, config.hop_length, config.win_length, window=window,
            center=True, pad_mode="reflect", return_complex=True,
        ).abs()
        spec = spec / window.pow(2).sum().sqrt()  # torchaudio's normalized=True ("window" normalisation)
        mel = _filterbank_for(config, x.dtype, x.device) @ spec
        db = 20.0 * torch.log10(mel.clamp(min=1e-5)) - 20.0
        mel = ((db + 100.0) / 100.0).clamp(0.0, 1.0)
    else:
        # diffwave: centred frames = reflect padding of n_fft/2 (what torch.stft(center=True) does internally)
        pad = config.n_fft // 2 if config.preset == "diffwave" else (config.n_fft - config.hop_length) // 2
        xp = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        if frames <= 2 * MEL_CHUNK_FRAMES:
            mel = _mel_of_padded(xp, config, window)
        else:
            hop, step = config.hop_length, MEL_CHUNK_FRAMES
            mel = torch.cat([
                _mel_of_padded(xp[:, f0 * hop : (min(f0 + step, frames) - 1) * hop + config.n_fft], config, window)
                for f0 in range(0, frames, step)
            ], dim=-1)
    return mel.reshape(*lead, config.n_mels, mel.shape[-1])


def validate_mel(mel: torch.Tensor | np.ndarray, config: MelConfig, source: str = "<mel>") -> None:
    """Check that ``mel`` (``[n_mels, frames]`` or ``[B, n_mels, frames]``) fits ``config``; raise :class:`MelError`.

    Checks the rank, ``n_mels``, a float dtype, finiteness and the value range of the preset: ``diffwave`` mels lie
    in [0, 1]; ``hifigan`` mels are natural logs in [ln 1e-5, ~6] and have negative values (a mel wholly in [0, 1]
    is a ``diffwave`` mel). The message names ``source`` and the preset the model expects.
    """
    where = f"{source}: "
    expects = f"the model expects a {config.preset!r}-preset mel [n_mels={config.n_mels}, frames]"
    if isinstance(mel, np.ndarray):
        if not np.issubdtype(mel.dtype, np.floating):
            raise MelError(f"{where}dtype {mel.dtype} is not floating point; {expects}")
        t = torch.from_numpy(np.asarray(mel, dtype=np.float64))
    elif isinstance(mel, torch.Tensor):
        odd = _odd_tensor(mel)
        if odd:
            raise MelError(f"{where}{odd}; {expects}")
        if not mel.is_floating_point():
            raise MelError(f"{where}dtype {mel.dtype} is not floating point; {expects}")
        t = mel.detach()
    else:
        what = ("a path (load it with diffwave.mel.load_mel_file)" if isinstance(mel, (str, os.PathLike))
                else type(mel).__name__)
        raise MelError(f"{where}expected a numpy array or a torch tensor, got {what}; {expects}")
    shape = tuple(t.shape)
    if t.ndim not in (2, 3):
        raise MelError(
            f"{where}shape {shape} has rank {t.ndim}, expected [n_mels, frames] or [B, n_mels, frames]; {expects}"
        )
    if shape[-2] != config.n_mels:
        hint = " (transposed? it looks like [frames, n_mels])" if shape[-1] == config.n_mels else ""
        raise MelError(f"{where}shape {shape} has {shape[-2]} mel bands, not {config.n_mels}{hint}; {expects}")
    if shape[-1] == 0:
        raise MelError(f"{where}shape {shape} has no frames; {expects}")
    if t.numel() == 0:
        raise MelError(f"{where}shape {shape} is an empty batch; {expects}")
    if shape[-1] > max_mel_frames(config):
        seconds = shape[-1] * config.hop_length / config.sample_rate
        raise MelError(f"{where}{shape[-1]} frames stand for {seconds:.0f} s of audio, more than the limit of "
                       f"{MAX_MEL_SECONDS:g} s ({max_mel_frames(config)} frames): split it into shorter mels")
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        raise MelError(f"{where}{int((~finite).sum())} non-finite values (NaN or Inf); {expects}")
    lo, hi = float(t.min()), float(t.max())
    if config.preset == "diffwave":
        if lo < -1e-6:
            guess = (" (it looks like a natural-log 'hifigan' mel; a model for those is trained with "
                     "model.mel.preset=hifigan)") if lo >= HIFIGAN_LOG_FLOOR - 1e-3 else ""
            raise MelError(f"{where}values in [{lo:.3g}, {hi:.3g}] are negative{guess}; {expects}, values in [0, 1]")
        if hi > 1 + 1e-6:
            raise MelError(f"{where}values reach {hi:.3g} > 1 (a linear or dB mel?); {expects}, values in [0, 1]")
    else:
        rng = f"natural-log magnitudes in [{HIFIGAN_LOG_FLOOR:.1f}, {HIFIGAN_LOG_CEIL:g}]"
        if lo >= 0:  # a natural-log mel of any real clip has magnitudes below 1 somewhere
            guess = ("it looks like a [0, 1] 'diffwave' mel; a model for those is trained with "
                     "model.mel.preset=diffwave") if hi <= 1 + 1e-6 else "a linear or dB mel?"
            raise MelError(f"{where}values in [{lo:.3g}, {hi:.3g}] are all non-negative ({guess}); {expects}, {rng}")
        if lo < HIFIGAN_LOG_FLOOR - 1e-3 or hi > HIFIGAN_LOG_CEIL:
            raise MelError(f"{where}values in [{lo:.3g}, {hi:.3g}] are outside the range of {rng}; {expects}")


def _odd_tensor(t: torch.Tensor) -> str:
    """Why ``t`` is not a plain dense tensor with data (sparse, CSR, meta, quantized, nested), or ""."""
    if t.is_meta:
        return "is a meta tensor: it has a shape but no values"
    if t.layout != torch.strided:
        return f"is a {str(t.layout).replace('torch.', '')} (sparse) tensor, not a dense array"
    if t.is_quantized:
        return f"is a quantized tensor ({t.dtype}), not a float array"
    if getattr(t, "is_nested", False):
        return "is a nested tensor, not one array"
    return ""


def load_mel_file(path: str | os.PathLike, config: MelConfig | None = None) -> torch.Tensor:
    """Read a mel from ``.npy`` (no pickles) or ``.pt`` (``weights_only=True``; a tensor, or a dict holding one
    under ``mel`` or ``spectrogram``). Returns a float32 tensor; raises :class:`MelError` naming the file.

    The size a file claims is checked before anything is allocated: a ``.npy`` header against the file's size and
    :data:`MAX_MEL_FILE_BYTES`, a ``.pt`` tensor (memory-mapped) before it is copied; the frames against
    :func:`max_mel_frames` of ``config`` (without one, :data:`MAX_MEL_FILE_FRAMES`). Sparse, CSR, meta and quantized
    tensors are refused."""
    from diffcore.arrays import ArrayFileError, load_npy
    from diffcore.paths import not_a_file_reason
    from diffcore.torchfile import TorchFileError, check_torch_file

    path = Path(path)
    if not path.is_file():
        reason = not_a_file_reason(path)
        raise MelError(f"{path}: mel file not found" if reason == "does not exist" else f"{path}: {reason}")
    suffix = path.suffix.lower()
    limit = max_mel_frames(config) if config is not None else MAX_MEL_FILE_FRAMES
    try:
        if suffix == ".npy":
            _check_npy_frames(path, limit)
            arr, _ = load_npy(path, max_bytes=MAX_MEL_FILE_BYTES)
            obj: object = torch.from_numpy(arr)
        elif suffix in (".pt", ".pth"):
            check_torch_file(path)  # records that claim more than the file holds, before torch.load allocates them
            try:  # memory-mapped: a tensor's size is known before its data are read
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
        else:
            raise MelError(f"{path}: unsupported mel file type {suffix!r} (use .npy or .pt)")
    except MelError:
        raise
    except (ArrayFileError, TorchFileError) as e:
        raise MelError(str(e)) from None
    except Exception as e:  # numpy/torch raise many types for a corrupt file
        refused, detail = load_error_detail(e)
        if refused:
            raise MelError(f"{path}: refused: the file holds objects that weights-only loading will not build "
                           f"({detail})") from None
        raise MelError(f"{path}: cannot read mel file ({detail})") from None
    if isinstance(obj, dict):
        keys = [k for k in ("mel", "spectrogram") if k in obj]
        if not keys:
            raise MelError(f"{path}: a dict without a 'mel' or 'spectrogram' entry (keys: "
                           f"{sorted(map(str, obj))[:10]})")
        obj = obj[keys[0]]
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(obj)
    if not isinstance(obj, torch.Tensor):
        raise MelError(f"{path}: holds a {type(obj).__name__}, not an array")
    odd = _odd_tensor(obj)
    if odd:
        raise MelError(f"{path}: {odd}")
    if not obj.is_floating_point():
        raise MelError(f"{path}: dtype {obj.dtype} is not floating point")
    if obj.ndim >= 1 and obj.shape[-1] > limit:
        raise MelError(f"{path}: {obj.shape[-1]} frames is longer than the limit of {limit} frames "
                       f"({MAX_MEL_SECONDS:g} s of audio): split it into shorter mels")
    if obj.numel() * 4 > MAX_MEL_FILE_BYTES:
        raise MelError(f"{path}: shape {list(obj.shape)} is far too large for a mel")
    return obj.to(torch.float32, copy=True).contiguous()  # a copy: not backed by the memory-mapped file


def _check_npy_frames(path: Path, limit: int) -> None:
    """Check a ``.npy`` mel's claimed frames (the last axis of its header) against ``limit`` before reading it."""
    from diffcore.arrays import read_npy_header

    with open(path, "rb") as f:
        header = read_npy_header(f, str(path))
    if header.shape and header.shape[-1] > limit:
        raise MelError(f"{path}: its header claims {header.shape[-1]} frames (shape {list(header.shape)}), longer "
                       f"than the limit of {limit} frames ({MAX_MEL_SECONDS:g} s of audio): split it into shorter "
                       "mels")
