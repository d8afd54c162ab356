"""The vocoder's data-dependent prior (PriorGrad, Lee et al., ICLR 2022): N(0, diag(s²)) with s from the mel.

DiffWave starts sampling from N(0, I) and teaches the network to carve speech out of white noise. PriorGrad starts
from noise that already has the utterance's loudness contour: each sample's standard deviation ``s`` follows the
energy of the mel frame it belongs to, so silence starts quiet and vowels loud, and the network only has to add the
fine structure. The loss is weighted by Σ⁻¹ (diffcore's ``prior_std``), which keeps every frame's error on the
same footing.

Symbols and names::

    M[k, f]    linear mel magnitude of bin k, frame f      mel_magnitudes(mel, config)
               diffwave preset: 10^(5·mel − 4) (undoes dB = 100·mel − 100 and the −20 dB offset)
               hifigan preset:  exp(mel)
    e[f]       sqrt(mean_k M[k, f]²)                       frame energy (an amplitude)
    c          σ / e(noise of RMS σ, speech's tilt)        calibration of the front end (exact per config)
    r[f]       c · e[f]                                    the frame's RMS amplitude (estimate)
    s[f]       clamp(r[f] / ref_rms, min_std, 1)           the prior's standard deviation   frame_prior_std
    s[n]       s[n // hop]                                 per sample (frame f covers samples [f·hop, (f+1)·hop))

Energy comes from the linear magnitudes each preset encodes, not from the stored numbers, so the same prior config
means the same noise level for a ``diffwave`` and a ``hifigan`` model. The calibration noise has speech's long-term
spectral tilt (white noise through a first-order low-pass, y[n] = x[n] + 0.95·y[n−1], about −6 dB per octave): on
the 24 shared LJSpeech clips the estimate r[f] then matches the true RMS of frames louder than 0.01 with a median
ratio of 1.05 (``diffwave``) and 1.00 (``hifigan``); calibrated on white noise the two presets would disagree by a
factor of 3.8 (0.48 and 1.82). ``ref_rms`` is the RMS amplitude that maps
to s = 1 (loud speech); frames quieter than ``min_std · ref_rms`` keep ``min_std`` (PriorGrad uses 0.1), so no
frame's noise vanishes. The result depends only on the mel and the config, so inference rebuilds it exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.signal
import torch
from torch import Tensor

from diffcore.config import ConfigBase, ConfigError
from diffwave.mel import MelConfig, compute_mel

__all__ = ["PriorConfig", "mel_magnitudes", "frame_prior_std", "sample_prior_std", "noise_calibration"]


#: Pole of the calibration noise's first-order low-pass (speech's long-term spectral tilt).
TILT = 0.95


@dataclass
class PriorConfig(ConfigBase):
    """The energy prior's two numbers (module docstring). ``kind`` names the rule; ``energy`` is the only one."""

    kind: Literal["energy"] = "energy"
    ref_rms: float = 0.25
    min_std: float = 0.1

    def __post_init__(self) -> None:
        if self.kind != "energy":
            raise ConfigError(f"prior.kind must be 'energy', got {self.kind!r}")
        if not 0.0 < self.ref_rms <= 10.0:
            raise ConfigError(f"prior.ref_rms must lie in (0, 10], got {self.ref_rms}")
        if not 0.0 < self.min_std <= 1.0:
            raise ConfigError(f"prior.min_std must lie in (0, 1], got {self.min_std}")


def mel_magnitudes(mel: Tensor, config: MelConfig) -> Tensor:
    """Linear mel magnitudes ``M`` of a stored mel ``[..., n_mels, F]`` (module docstring), in float32 or wider."""
    x = mel if mel.dtype in (torch.float32, torch.float64) else mel.float()
    if config.preset == "diffwave":
        return torch.pow(10.0, 5.0 * x - 4.0)
    return torch.exp(x)


def _frame_energy(mel: Tensor, config: MelConfig) -> Tensor:
    return mel_magnitudes(mel, config).pow(2).mean(dim=-2).sqrt()


#: ``noise_calibration``'s measurements, one per mel configuration (its fields as JSON), kept for the process.
_CALIBRATIONS: dict[str, float] = {}


def noise_calibration(config: MelConfig) -> float:
    """``c``: the RMS amplitude of speech-tilted noise divided by the frame energy its mel shows, for this front end.

    Measured once per mel configuration (equal fields, one measurement; later calls read it back) on 20 s of
    seeded, tilted Gaussian noise (module docstring) at RMS 0.05 (well above every floor and below clipping),
    averaged over frames; deterministic, so the cache changes no value."""
    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in _CALIBRATIONS:
        _CALIBRATIONS[key] = _measure_calibration(config)
    return _CALIBRATIONS[key]


def _measure_calibration(config: MelConfig) -> float:
    sigma = 0.05
    white = np.random.default_rng(0).standard_normal(20 * config.sample_rate)
    tilted = scipy.signal.lfilter([1.0], [1.0, -TILT], white)
    noise = torch.from_numpy(sigma * tilted / tilted.std())
    energy = _frame_energy(compute_mel(noise, config), config)
    return float(sigma / energy[2:-2].mean())  # edge frames see reflect padding


def frame_prior_std(mel: Tensor, mel_config: MelConfig, prior: PriorConfig) -> Tensor:
    """``s[f]`` ``[..., F]`` for a mel ``[..., n_mels, F]``: the prior's standard deviation per frame, in
    [min_std, 1], float32."""
    rms = noise_calibration(mel_config) * _frame_energy(mel, mel_config)
    return (rms / prior.ref_rms).clamp(prior.min_std, 1.0).float()


def sample_prior_std(mel: Tensor, mel_config: MelConfig, prior: PriorConfig, hop_length: int | None = None) -> Tensor:
    """``s[n]`` ``[..., F · hop]``: :func:`frame_prior_std` held over each frame's ``hop`` samples."""
    hop = mel_config.hop_length if hop_length is None else hop_length
    return frame_prior_std(mel, mel_config, prior).repeat_interleave(hop, dim=-1)
