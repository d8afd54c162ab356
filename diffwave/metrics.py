"""Resynthesis metrics for a vocoder, the Griffin-Lim baseline, and a spectrogram comparison plot.

Every metric compares a reference waveform ``ref`` with an estimate ``est`` (both 1-D float, same sample rate);
lengths are aligned by trimming both to the shorter one (a vocoder returns ``frames * hop`` samples, a little more or
less than the recording).

| metric | what | better | reference |
| --- | --- | --- | --- |
| ``log_mel_l1`` | mean abs. difference of natural-log mels from one fixed analysis (below) | lower | — |
| ``mr_stft`` | multi-resolution STFT distance: spectral convergence + log-magnitude L1, 3 resolutions | lower | Yamamoto et al. 2020 |
| ``pesq_wb`` | PESQ wide-band (ITU-T P.862.2) at 16 kHz, about -0.5 … 4.64 | higher | ``pesq`` package |
| ``stoi`` | short-time objective intelligibility, 0 … 1 | higher | Taal et al. 2011, ``pystoi`` |
| ``dnsmos_*`` | DNSMOS P.808 MOS and P.835 SIG/BAK/OVRL, 1 … 5 (no reference) | higher | Reddy et al. 2021/22, ``speechmos`` |

The analysis mel of ``log_mel_l1`` (and of :func:`plot_spectrograms` for waveforms) is fixed and independent of any
model's mel preset, so that numbers are comparable across models: 80 HTK mel bands from 0 Hz to sr/2 without area
normalisation, n_fft 1024, hop 256, periodic Hann window of 1024, centred frames with zero padding (any clip length
works), magnitude (power 1) spectrum, ``ln(max(M, 1e-5))``.

PESQ, STOI and DNSMOS come from optional packages (the ``eval`` extra). When a package is missing, or a clip is too
short or silent for it, the metric is NaN, a warning is logged, and :func:`evaluate_pair` records the reason under
``"unavailable"``; nothing crashes.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchaudio.functional as AF

from diffcore.checkpoint import atomic_write
from diffwave.mel import MelConfig, mel_filterbank

__all__ = [
    "ANALYSIS_N_FFT",
    "ANALYSIS_HOP",
    "ANALYSIS_N_MELS",
    "MR_STFT_RESOLUTIONS",
    "METRIC_NAMES",
    "analysis_log_mel",
    "log_mel_l1",
    "mr_stft_distance",
    "pesq_wb",
    "stoi",
    "dnsmos",
    "magnitude_from_mel",
    "griffin_lim_from_mel",
    "evaluate_pair",
    "evaluate_resynthesis",
    "ResynthesisTable",
    "plot_spectrograms",
]

log = logging.getLogger(__name__)

ANALYSIS_N_FFT = 1024
ANALYSIS_HOP = 256
ANALYSIS_N_MELS = 80
ANALYSIS_LOG_FLOOR = 1e-5

#: (n_fft, hop, window length) of the multi-resolution STFT distance.
MR_STFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
_MAG_FLOOR = 1e-7

PESQ_RATE = 16000
#: PESQ needs a few voiced frames; below this it raises (or returns garbage), so we decline.
PESQ_MIN_SECONDS = 0.25
DNSMOS_RATE = 16000
#: DNSMOS scores 9 s windows and loops shorter clips to fill one; below this a clip is mostly its own repetition.
DNSMOS_MIN_SECONDS = 0.5

#: The metrics of :func:`evaluate_pair`, in table order, with the direction that is better.
METRIC_NAMES: dict[str, tuple[str, str]] = {
    "log_mel_l1": ("log-mel L1", "lower"),
    "mr_stft": ("MR-STFT", "lower"),
    "pesq_wb": ("PESQ-WB", "higher"),
    "stoi": ("STOI", "higher"),
    "dnsmos_p808": ("DNSMOS P.808", "higher"),
    "dnsmos_sig": ("DNSMOS SIG", "higher"),
    "dnsmos_bak": ("DNSMOS BAK", "higher"),
    "dnsmos_ovrl": ("DNSMOS OVRL", "higher"),
}
_DNSMOS_KEYS = {"dnsmos_p808": "p808_mos", "dnsmos_sig": "sig_mos", "dnsmos_bak": "bak_mos", "dnsmos_ovrl": "ovrl_mos"}

Wave = torch.Tensor | np.ndarray


class _Unavailable(Exception):
    """A metric that cannot be computed for this input; the message is the reason."""


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _as_wave(x: Wave, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D waveform [T], got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a float waveform, got {t.dtype}")
    return t.detach().to("cpu", torch.float32)


def _aligned(ref: Wave, est: Wave) -> tuple[torch.Tensor, torch.Tensor]:
    r, e = _as_wave(ref, "ref"), _as_wave(est, "est")
    n = min(r.numel(), e.numel())
    return r[:n], e[:n]


def _resample(x: torch.Tensor, sr: int, new_sr: int) -> torch.Tensor:
    return x if sr == new_sr else AF.resample(x, int(sr), int(new_sr))


def _magnitude(x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    """|STFT| ``[n_fft//2+1, frames]`` with centred, zero-padded frames and a periodic Hann window."""
    window = torch.hann_window(win, periodic=True, dtype=x.dtype)
    z = torch.stft(x, n_fft, hop, win, window=window, center=True, pad_mode="constant", return_complex=True)
    return z.abs()


def _guard(name: str, fn: Callable[[], Any]) -> tuple[Any, str | None]:
    """Run ``fn``; on :class:`_Unavailable` log a warning and return ``(None, reason)``."""
    try:
        return fn(), None
    except _Unavailable as e:
        log.warning("%s unavailable: %s", name, e)
        return None, str(e)


def _import(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise _Unavailable(f"the {package!r} package is not installed ({e}); pip install 'diffstack[eval]'") from None


# ---------------------------------------------------------------------------------------------------------------
# Spectral distances


def analysis_log_mel(wav: Wave, sr: int) -> torch.Tensor:
    """The fixed analysis log-mel (module docstring) of a waveform ``[T]`` → ``[80, 1 + T // 256]`` (float32)."""
    x = _as_wave(wav, "wav")
    fb = mel_filterbank(sr, ANALYSIS_N_FFT, ANALYSIS_N_MELS, 0.0, sr / 2, scale="htk", norm=None, dtype=torch.float32)
    mel = fb @ _magnitude(x, ANALYSIS_N_FFT, ANALYSIS_HOP, ANALYSIS_N_FFT)
    return mel.clamp(min=ANALYSIS_LOG_FLOOR).log()


def log_mel_l1(ref: Wave, est: Wave, sr: int) -> float:
    """Mean over bands and frames of ``|ln mel(ref) - ln mel(est)|`` with the fixed analysis mel (0 iff equal mels)."""
    r, e = _aligned(ref, est)
    return float((analysis_log_mel(r, sr) - analysis_log_mel(e, sr)).abs().mean())


def mr_stft_distance(ref: Wave, est: Wave) -> float:
    """Multi-resolution STFT distance (Yamamoto et al. 2020, Parallel WaveGAN, eqs. 4-6).

    For each resolution m in :data:`MR_STFT_RESOLUTIONS` (FFT 512/1024/2048, hop 128/256/512, Hann window of the FFT
    size), with magnitudes ``R = |STFT(ref)|``, ``E = |STFT(est)|``::

        L_sc  = ||R - E||_F / ||R||_F                       spectral convergence
        L_mag = mean |ln max(R, 1e-7) - ln max(E, 1e-7)|    log-magnitude L1

    and the distance is ``(1/M) sum_m (L_sc + L_mag)``. Zero for identical signals; independent of the sample rate.
    """
    r, e = _aligned(ref, est)
    total = 0.0
    for n_fft, hop, win in MR_STFT_RESOLUTIONS:
        R, E = _magnitude(r, n_fft, hop, win), _magnitude(e, n_fft, hop, win)
        sc = torch.linalg.norm(R - E) / torch.linalg.norm(R).clamp(min=_MAG_FLOOR)
        mag = (R.clamp(min=_MAG_FLOOR).log() - E.clamp(min=_MAG_FLOOR).log()).abs().mean()
        total += float(sc + mag)
    return total / len(MR_STFT_RESOLUTIONS)


# ---------------------------------------------------------------------------------------------------------------
# Perceptual metrics from optional packages


def _pesq_wb(ref: Wave, est: Wave, sr: int) -> float:
    pesq = _import("pesq", "pesq")
    r, e = _aligned(ref, est)
    if r.numel() < PESQ_MIN_SECONDS * sr:
        raise _Unavailable(f"clip of {r.numel() / sr:.3f} s is shorter than the {PESQ_MIN_SECONDS} s PESQ needs")
    r16, e16 = _resample(r, sr, PESQ_RATE).numpy(), _resample(e, sr, PESQ_RATE).numpy()
    try:
        return float(pesq.pesq(PESQ_RATE, r16.astype(np.float64), e16.astype(np.float64), "wb"))
    except pesq.PesqError as err:  # no utterances (silence), buffer too short, ...
        raise _Unavailable(f"PESQ refused the clip ({type(err).__name__}: {err})") from None


def pesq_wb(ref: Wave, est: Wave, sr: int) -> float:
    """PESQ wide-band (P.862.2) of ``est`` against ``ref``, both resampled to 16 kHz (torchaudio's sinc resampler).

    Returns NaN (with a logged warning) when ``pesq`` is not installed, the clip is shorter than 0.25 s, or PESQ
    finds no speech in it. Identical clips score about 4.64, the top of the wide-band MOS-LQO scale.
    """
    value, _ = _guard("pesq_wb", lambda: _pesq_wb(ref, est, sr))
    return math.nan if value is None else value


def _stoi(ref: Wave, est: Wave, sr: int) -> float:
    pystoi = _import("pystoi", "pystoi")
    r, e = _aligned(ref, est)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi.stoi(r.numpy().astype(np.float64), e.numpy().astype(np.float64), int(sr)))
    for w in caught:
        if "Not enough STFT frames" in str(w.message):
            # pystoi then returns a placeholder 1e-5; the clip (after silence removal) is under ~0.4 s
            raise _Unavailable("clip too short for STOI after removing silent frames (needs about 30 frames)")
    return value


def stoi(ref: Wave, est: Wave, sr: int) -> float:
    """STOI (Taal et al. 2011) via ``pystoi`` (which resamples to 10 kHz itself); in [0, 1], 1 for identical clips.

    NaN with a logged warning when ``pystoi`` is missing or fewer than 30 non-silent 25.6 ms frames remain.
    """
    value, _ = _guard("stoi", lambda: _stoi(ref, est, sr))
    return math.nan if value is None else value


def _dnsmos(est: Wave, sr: int) -> dict[str, float]:
    _import("onnxruntime", "onnxruntime")
    speechmos = _import("speechmos.dnsmos", "speechmos")
    x = _as_wave(est, "est")
    if x.numel() < DNSMOS_MIN_SECONDS * sr:
        raise _Unavailable(f"clip of {x.numel() / sr:.3f} s is shorter than the {DNSMOS_MIN_SECONDS} s we score")
    x16 = _resample(x, sr, DNSMOS_RATE).clamp(-1.0, 1.0).numpy()  # speechmos rejects samples outside [-1, 1]
    out = speechmos.run(x16, sr=DNSMOS_RATE)
    return {key: float(out[src]) for key, src in _DNSMOS_KEYS.items()}


def dnsmos(est: Wave, sr: int) -> dict[str, float]:
    """DNSMOS of a clip (no reference): ``dnsmos_p808`` (P.808 MOS) and ``dnsmos_sig``/``_bak``/``_ovrl`` (P.835).

    Uses the ONNX models shipped inside the ``speechmos`` wheel (Reddy et al. 2021 "DNSMOS", 2022 "DNSMOS P.835"),
    at 16 kHz (resampled with torchaudio), samples clipped to [-1, 1]. All values lie in about [1, 5]. Every value
    is NaN (with a logged warning) when the packages are missing or the clip is shorter than 0.5 s.
    """
    value, _ = _guard("dnsmos", lambda: _dnsmos(est, sr))
    return {k: math.nan for k in _DNSMOS_KEYS} if value is None else value


# ---------------------------------------------------------------------------------------------------------------
# Griffin-Lim baseline


def _linear_mel(mel: torch.Tensor, config: MelConfig) -> torch.Tensor:
    """Undo a preset's log compression: the linear mel magnitude ``H @ S`` (see ``diffwave.mel``)."""
    if config.preset == "diffwave":
        db = 100.0 * mel - 100.0  # mel = (dB + 100) / 100
        return torch.pow(10.0, (db + 20.0) / 20.0)  # dB = 20 log10(M) - 20
    return mel.exp()  # hifigan: mel = ln(M)


def magnitude_from_mel(mel: torch.Tensor, mel_config: MelConfig) -> torch.Tensor:
    """The STFT magnitude a mel asks for, steps 1-2 of :func:`griffin_lim_from_mel`: ``S = max(0, pinv(H) M)``
    ``[..., n_fft // 2 + 1, frames]`` (float64, on the CPU), on the scale of ``|torch.stft(x)|`` with the preset's
    periodic Hann window (the ``diffwave`` preset's ``1/sqrt(sum w^2)`` multiplied back)."""
    c = mel_config
    scale, norm = ("htk", None) if c.preset == "diffwave" else ("slaney", "slaney")  # as diffwave.mel builds them
    fb = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.fmax_hz, scale=scale, norm=norm)  # float64
    linear = torch.linalg.pinv(fb) @ _linear_mel(mel.detach().cpu().double(), c)  # [..., n_freqs, frames]
    spec = linear.clamp(min=0.0)
    if c.preset == "diffwave":
        window = torch.hann_window(c.win_length, periodic=True, dtype=torch.float64)
        spec = spec * window.pow(2).sum().sqrt()
    return spec


def griffin_lim_from_mel(
    mel: torch.Tensor, mel_config: MelConfig, n_iter: int = 64, momentum: float = 0.99
) -> torch.Tensor:
    """Invert a mel of either preset to a waveform: the baseline beside every vocoder result.

    1. Undo the preset's log and normalisation to get the linear mel magnitude ``M``.
    2. ``S = max(0, pinv(H) M)``: the minimum-norm least-squares inverse of the preset's own filter bank ``H``
       (what ``torchaudio.transforms.InverseMelScale`` computes), clamped to be a magnitude. The ``diffwave``
       preset's window normalisation ``1/sqrt(sum w^2)`` is multiplied back.
    3. Fast Griffin-Lim (Perraudin et al. 2013; ``torchaudio.functional.griffinlim``) with ``momentum``, zero initial
       phase (deterministic), the preset's FFT size, hop and periodic Hann window.
    4. Frame alignment: ``hifigan`` frames are uncentred after padding (n_fft-hop)/2, so frame i is centred on
       sample ``i*hop + hop/2``; the output is delayed by ``hop/2`` to line up with the recording.

    Args:
        mel: ``[n_mels, frames]`` or ``[B, n_mels, frames]`` in the preset's format (as ``compute_mel`` returns).
        mel_config: the front end that made it.
    Returns:
        ``[T]`` or ``[B, T]`` float32 with ``T = (frames - 1) * hop`` (``diffwave``) or ``frames * hop``
        (``hifigan``), i.e. the length of the recording rounded down to a whole hop.
    """
    if mel.ndim not in (2, 3) or mel.shape[-2] != mel_config.n_mels:
        raise ValueError(f"expected a mel [..., {mel_config.n_mels}, frames], got shape {tuple(mel.shape)}")
    c = mel_config
    spec = magnitude_from_mel(mel, c)
    window = torch.hann_window(c.win_length, periodic=True, dtype=torch.float64)
    frames, hop = mel.shape[-1], c.hop_length
    length = (frames - 1) * hop if c.preset == "diffwave" else frames * hop - hop // 2
    wav = AF.griffinlim(
        spec.float(), window.float(), c.n_fft, hop, c.win_length, 1.0, n_iter, momentum, length, False
    )
    if c.preset == "hifigan":
        wav = torch.nn.functional.pad(wav, (hop // 2, 0))
    return wav


# ---------------------------------------------------------------------------------------------------------------
# Tables


def evaluate_pair(ref: Wave, est: Wave, sr: int, *, with_dnsmos: bool = True) -> dict[str, Any]:
    """All metrics of one (reference, estimate) pair.

    Returns a JSON-able dict: one float per key of :data:`METRIC_NAMES` (NaN where unavailable; the DNSMOS keys are
    absent when ``with_dnsmos`` is false) and ``"unavailable"``: ``{metric: reason}`` for every NaN.
    """
    out: dict[str, Any] = {"log_mel_l1": log_mel_l1(ref, est, sr), "mr_stft": mr_stft_distance(ref, est)}
    reasons: dict[str, str] = {}
    for name, fn in (("pesq_wb", _pesq_wb), ("stoi", _stoi)):
        value, why = _guard(name, lambda fn=fn: fn(ref, est, sr))
        out[name] = math.nan if value is None else value
        if why:
            reasons[name] = why
    if with_dnsmos:
        values, why = _guard("dnsmos", lambda: _dnsmos(est, sr))
        for key in _DNSMOS_KEYS:
            out[key] = math.nan if values is None else values[key]
            if why:
                reasons[key] = why
    out["unavailable"] = reasons
    return out


@dataclass
class ResynthesisTable:
    """Mean metrics per system over clips. ``means[system][metric]`` averages the finite values, ``counts`` says how
    many clips each mean covers, ``unavailable[system][metric]`` lists the distinct reasons for the rest."""

    means: dict[str, dict[str, float]]
    counts: dict[str, dict[str, int]]
    clips: dict[str, int]
    unavailable: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        seen = {m for row in self.means.values() for m in row}
        return [m for m in METRIC_NAMES if m in seen]

    def markdown(self) -> str:
        """A markdown table: one row per system, one column per metric (↓ lower / ↑ higher is better)."""
        cols = self.metrics
        arrow = {"lower": "↓", "higher": "↑"}
        head = ["system", "clips"] + [f"{METRIC_NAMES[m][0]} {arrow[METRIC_NAMES[m][1]]}" for m in cols]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for system, row in self.means.items():
            cells = [system, str(self.clips[system])]
            for m in cols:
                v, n = row.get(m, math.nan), self.counts[system].get(m, 0)
                cell = "n/a" if not math.isfinite(v) else f"{v:.3f}"
                if math.isfinite(v) and n < self.clips[system]:
                    cell += f" ({n})"  # mean over fewer clips than the row has
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (NaN means become ``None``)."""
        clean = {s: {m: (v if math.isfinite(v) else None) for m, v in row.items()} for s, row in self.means.items()}
        return {"means": clean, "counts": self.counts, "clips": self.clips, "unavailable": self.unavailable}


def _summarise(results: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int], dict[str, list[str]]]:
    means, counts, why = {}, {}, {}
    for m in METRIC_NAMES:
        vals = [r[m] for r in results if m in r]
        if not vals:
            continue
        finite = [v for v in vals if math.isfinite(v)]
        means[m] = float(np.mean(finite)) if finite else math.nan
        counts[m] = len(finite)
        reasons = sorted({r["unavailable"][m] for r in results if m in r.get("unavailable", {})})
        if reasons:
            why[m] = reasons
    return means, counts, why


def evaluate_resynthesis(
    pairs: Sequence[tuple[Wave, Wave]],
    sr: int,
    baseline_pairs: Sequence[tuple[Wave, Wave]] | None = None,
    *,
    system: str = "model",
    baseline: str = "Griffin-Lim",
    with_dnsmos: bool = True,
) -> ResynthesisTable:
    """Mean of :func:`evaluate_pair` over ``(ref, est)`` pairs for the model and (optionally) the baseline.

    Use ``table.markdown()`` for the report and ``table.to_dict()`` for JSON. Rows: ``system``, then ``baseline``.
    """
    if not pairs:
        raise ValueError("evaluate_resynthesis needs at least one (reference, estimate) pair")
    groups = [(system, pairs)] + ([(baseline, baseline_pairs)] if baseline_pairs else [])
    means, counts, clips, unavailable = {}, {}, {}, {}
    for name, group in groups:
        results = [evaluate_pair(r, e, sr, with_dnsmos=with_dnsmos) for r, e in group]
        means[name], counts[name], why = _summarise(results)
        clips[name] = len(results)
        if why:
            unavailable[name] = why
    return ResynthesisTable(means, counts, clips, unavailable)


# ---------------------------------------------------------------------------------------------------------------
# Plot


def plot_spectrograms(
    path: str | os.PathLike,
    items: Sequence[tuple[str, Wave]],
    sr: int,
    *,
    hop_length: int = ANALYSIS_HOP,
    width_in: float = 10.0,
    row_height_in: float = 2.4,
    dpi: int = 100,
) -> Path:
    """Write a PNG with one spectrogram per row, e.g. input, model and Griffin-Lim resyntheses, atomically.

    Each item is ``(title, x)``: a waveform ``[T]`` is shown as its fixed analysis log-mel, all waveform rows on
    one shared colour scale, a 2-D ``[n_mels, frames]`` mel as given, with frames ``hop_length`` samples apart. The image is
    ``round(width_in * dpi)`` × ``round(len(items) * row_height_in * dpi)`` pixels. Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not items:
        raise ValueError("plot_spectrograms needs at least one (title, waveform or mel) item")
    path = Path(path)
    fig = Figure(figsize=(width_in, row_height_in * len(items)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(items), 1, squeeze=False)[:, 0]
    rows = []
    for title, x in items:
        t = torch.as_tensor(x).detach().cpu().float()
        if t.ndim == 1:
            rows.append((title, analysis_log_mel(t, sr), ANALYSIS_HOP, "ln mel"))
        elif t.ndim == 2:
            rows.append((title, t, hop_length, "mel"))
        else:
            raise ValueError(f"{title!r}: expected a waveform [T] or a mel [n_mels, frames], got {tuple(t.shape)}")
    # Waveform rows share one colour scale, so a loud noisy resynthesis looks loud next to the recording.
    wave_rows = [img for _, img, _, label in rows if label == "ln mel"]
    shared = (min(float(i.min()) for i in wave_rows), max(float(i.max()) for i in wave_rows)) if wave_rows else None
    for ax, (title, img, hop, label) in zip(axes, rows):
        seconds = img.shape[-1] * hop / sr
        vmin, vmax = shared if label == "ln mel" else (None, None)
        im = ax.imshow(img.numpy(), origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, img.shape[0]),
                       vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mel band")
        fig.colorbar(im, ax=ax, pad=0.01, label=label)
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return path
