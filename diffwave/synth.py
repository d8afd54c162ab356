"""Synthetic speech-like audio, so that the quickstart and the tests need no downloaded data.

A source-filter model of the kind classical formant synthesisers (Klatt 1980) use, kept simple:

- voiced sounds: a band-limited glottal-pulse-like harmonic source (harmonic k with amplitude ``1/(1 + (k/2)^2)``:
  the spectrum of a glottal flow pulse, flat up to about 2 f0 and falling 12 dB/octave above) with a moving pitch
  contour in 90-250 Hz (per-speaker base, declination, per-syllable rise/fall, slow vibrato, jitter), shaped by three
  formant resonators whose frequencies glide between vowel targets, then lip radiation (a first difference,
  +6 dB/octave);
- unvoiced sounds: fricative-like noise bursts, high-passed above 2-4.5 kHz;
- syllable-like amplitude envelopes, short pauses between syllables and longer ones between phrases, and a faint
  noise floor.

Everything is drawn from one ``numpy`` generator, so a seed fixes the clip.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from scipy import signal

from diffwave.audio import save_audio

__all__ = ["speech_like", "make_dataset"]

# (F1, F2, F3) in Hz of a few vowels (Peterson & Barney 1952, adult male means, rounded).
_VOWELS = np.array(
    [
        [730.0, 1090.0, 2440.0],  # /a/
        [270.0, 2290.0, 3010.0],  # /i/
        [300.0, 870.0, 2240.0],  # /u/
        [530.0, 1840.0, 2480.0],  # /e/
        [570.0, 840.0, 2410.0],  # /o/
        [660.0, 1720.0, 2410.0],  # /ae/
        [520.0, 1190.0, 2390.0],  # /schwa/
    ]
)
_BANDWIDTHS = np.array([80.0, 110.0, 160.0])


def _rng(seed: int | None, generator: torch.Generator | None) -> np.random.Generator:
    if generator is not None:
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return np.random.default_rng(seed)


def _envelope(n: int, attack: int, release: int) -> np.ndarray:
    """A raised-cosine attack, a flat body and a raised-cosine release, ``[n]``."""
    env = np.ones(n)
    a, r = min(attack, n // 2), min(release, n // 2)
    if a > 0:
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    if r > 0:
        env[n - r :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(r) + 1) / r)
    return env


def _plan(total: int, sr: int, rng: np.random.Generator) -> list[tuple[str, int, int]]:
    """Segments ``(kind, start, end)`` with kind ``voiced`` or ``unvoiced``; the gaps are pauses."""
    ms = sr / 1000.0
    segs: list[tuple[str, int, int]] = []
    t = int(rng.uniform(20, 80) * ms)
    syllable = 0
    while t < total:
        if syllable == 0 or rng.random() < 0.45:  # fricative onset (always in the first syllable)
            n = int(rng.uniform(50, 130) * ms)
            segs.append(("unvoiced", t, min(t + n, total)))
            t += n + int(rng.uniform(0, 15) * ms)
        n = int(rng.uniform(110, 300) * ms)
        segs.append(("voiced", t, min(t + n, total)))
        t += n
        if rng.random() < 0.25:  # fricative coda
            t += int(rng.uniform(0, 10) * ms)
            n = int(rng.uniform(40, 100) * ms)
            segs.append(("unvoiced", t, min(t + n, total)))
            t += n
        syllable += 1
        t += int((rng.uniform(120, 280) if syllable % 3 == 0 else rng.uniform(25, 70)) * ms)  # pause
    return [s for s in segs if s[1] < s[2]]


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    """Moving average over ``n`` samples (edges repeated), to glide between per-segment targets."""
    if n <= 1:
        return x
    padded = np.concatenate([np.full(n, x[0]), x, np.full(n, x[-1])])
    kernel = np.ones(n) / n
    return np.convolve(padded, kernel, mode="same")[n:-n]


def _resonators(x: np.ndarray, freqs: np.ndarray, sr: int, block: int) -> np.ndarray:
    """A cascade of time-varying two-pole resonators (Klatt 1980), unity gain at DC.

    ``y[n] = A x[n] + B y[n-1] + C y[n-2]`` with ``C = -r^2``, ``B = 2 r cos(2 pi F / sr)``, ``A = 1 - B - C``,
    ``r = exp(-pi BW / sr)``. Coefficients are held for ``block`` samples; the state carries the last two outputs,
    so the recursion is exact across coefficient changes.

    Args:
        x: ``[T]`` input. freqs: ``[T, 3]`` formant frequencies in Hz.
    """
    y = x
    for j in range(freqs.shape[1]):
        r = math.exp(-math.pi * _BANDWIDTHS[j] / sr)
        out = np.empty_like(y)
        y1 = y2 = 0.0
        for start in range(0, len(y), block):
            stop = min(start + block, len(y))
            f = freqs[start:stop, j].mean()
            b, c = 2 * r * math.cos(2 * math.pi * f / sr), -(r**2)
            a = 1 - b - c
            den = [1.0, -b, -c]
            zi = [b * y1 + c * y2, c * y1]  # transposed direct form II state from the last two outputs
            out[start:stop], _ = signal.lfilter([a], den, y[start:stop], zi=zi)
            y1, y2 = (out[stop - 1], out[stop - 2]) if stop - start >= 2 else (out[stop - 1], y1)
        y = out
    return y


def speech_like(
    duration_s: float,
    sample_rate: int = 16000,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    peak: float = 0.5,
) -> torch.Tensor:
    """A clip of synthetic speech-like audio (see the module docstring), ``[T]`` float32 with peak |x| = ``peak``.

    Args:
        duration_s: length in seconds; ``T = round(duration_s * sample_rate)``.
        sample_rate: in Hz (8 kHz and up; formants and fricatives stay below 0.45 ``sample_rate``).
        seed / generator: the clip is a deterministic function of either (``generator`` wins; neither: random).
    """
    if sample_rate < 8000:
        raise ValueError(f"speech_like needs a sample rate of at least 8000 Hz, got {sample_rate}")
    total = int(round(duration_s * sample_rate))
    if total < 1:
        raise ValueError(f"duration_s={duration_s} gives no samples at {sample_rate} Hz")
    rng = _rng(seed, generator)
    sr = sample_rate
    nyq_safe = 0.45 * sr
    t = np.arange(total) / sr
    segs = _plan(total, sr, rng)

    # Pitch: a speaker's base, phrase declination, per-syllable accents, slow vibrato and jitter; within 90-250 Hz.
    base = rng.uniform(105.0, 185.0)
    accent = np.zeros(total)
    vowel_idx = np.zeros(total, dtype=np.int64)
    current = int(rng.integers(len(_VOWELS)))
    for kind, s, e in segs:
        if kind == "voiced":
            current = int(rng.integers(len(_VOWELS)))
            n = e - s
            shape = np.linspace(rng.uniform(-0.15, 0.15), rng.uniform(-0.2, 0.2), n)
            accent[s:e] = shape
            vowel_idx[s:] = current
    accent = _smooth(accent, int(0.04 * sr))
    declination = 1.0 - 0.12 * t / max(t[-1], 1e-9)
    vibrato = 0.02 * np.sin(2 * np.pi * rng.uniform(4.0, 6.0) * t + rng.uniform(0, 2 * np.pi))
    jitter = _smooth(rng.normal(0.0, 0.01, total), max(1, int(0.005 * sr)))
    f0 = np.clip(base * declination * (1.0 + accent + vibrato + jitter), 92.0, 245.0)

    # Glottal-like source: band-limited harmonics, flat to about 2 f0 then -12 dB/octave; a little aspiration noise.
    phase = 2 * np.pi * np.cumsum(f0) / sr + rng.uniform(0, 2 * np.pi)
    source = np.zeros(total)
    for k in range(1, int(nyq_safe / 90.0) + 1):
        band_limited = (k * f0 < nyq_safe).astype(np.float64)
        source += band_limited * np.sin(k * phase) / (1.0 + (k / 2.0) ** 2)
    source += 0.02 * rng.standard_normal(total)

    voiced_env = np.zeros(total)
    for kind, s, e in segs:
        if kind == "voiced":
            n = e - s
            env = _envelope(n, int(rng.uniform(15, 35) * sr / 1000), int(rng.uniform(30, 60) * sr / 1000))
            voiced_env[s:e] = env * rng.uniform(0.6, 1.0) * (1.0 + 0.15 * np.sin(np.linspace(0, np.pi, n)))

    # Formants glide between per-syllable vowel targets (a 60 ms moving average) and stay below 0.45 sr.
    targets = _VOWELS[vowel_idx] * rng.uniform(0.92, 1.12)  # speaker's vocal-tract scale
    freqs = np.stack([_smooth(targets[:, j], int(0.06 * sr)) for j in range(3)], axis=1)
    freqs = np.minimum(freqs, nyq_safe - _BANDWIDTHS)
    voiced = _resonators(source * voiced_env, freqs, sr, block=max(16, sr // 400))
    voiced = np.diff(voiced, prepend=0.0)  # lip radiation
    voiced /= max(np.abs(voiced).max(), 1e-12)

    # Fricatives: high-passed noise with its own envelope, at 0.15-0.4 of the voiced level.
    unvoiced = np.zeros(total)
    for kind, s, e in segs:
        if kind == "unvoiced":
            n = e - s
            cutoff = min(rng.uniform(2000.0, 4500.0), 0.35 * sr)
            sos = signal.butter(4, cutoff, btype="highpass", fs=sr, output="sos")
            noise = signal.sosfilt(sos, rng.standard_normal(n + 256))[256:]  # drop the filter's start-up
            noise /= max(np.abs(noise).max(), 1e-12)
            env = _envelope(n, int(rng.uniform(8, 20) * sr / 1000), int(rng.uniform(15, 30) * sr / 1000))
            unvoiced[s:e] = noise * env * rng.uniform(0.15, 0.4)

    x = voiced + unvoiced + 3e-4 * rng.standard_normal(total)  # a faint noise floor, as in any recording
    x *= peak / max(np.abs(x).max(), 1e-12)
    return torch.from_numpy(x.astype(np.float32))


def make_dataset(
    directory: str | os.PathLike,
    n_clips: int,
    duration_s: float = 2.0,
    sample_rate: int = 16000,
    seed: int = 0,
) -> list[Path]:
    """Write ``n_clips`` clips ``synth_0000.wav ...`` (16-bit PCM) into ``directory``; return their paths.

    Clip ``i`` uses the ``i``-th child of ``numpy.random.SeedSequence(seed)``, so clips are independent and a
    dataset is reproducible from ``seed``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(n_clips)
    paths = []
    for i, child in enumerate(children):
        wav = speech_like(duration_s, sample_rate, seed=int(child.generate_state(1, dtype=np.uint64)[0]))
        paths.append(save_audio(directory / f"synth_{i:04d}.wav", wav, sample_rate))
    return paths
