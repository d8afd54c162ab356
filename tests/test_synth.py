import numpy as np
import pytest
import soundfile as sf
import torch
from scipy import signal

from diffwave.audio import load_audio
from diffwave.synth import make_dataset, speech_like


def _frames(x: np.ndarray, sr: int, ms: float = 40.0) -> np.ndarray:
    n = int(sr * ms / 1000)
    return np.lib.stride_tricks.sliding_window_view(x, n)[:: n // 2]


def _analyse(x: np.ndarray, sr: int):
    """Per 40 ms frame: active (energy above 1% of the loudest frame), zero-crossing rate, normalised
    autocorrelation peak in the 60-400 Hz lag range and the pitch it implies."""
    fr = _frames(x, sr)
    energy = (fr**2).mean(1)
    active = energy > 0.01 * energy.max()
    zcr = (np.abs(np.diff(np.signbit(fr).astype(np.int8), axis=1)) > 0).mean(1)
    lo, hi = int(sr / 400), int(sr / 60)
    peaks, f0 = np.zeros(len(fr)), np.zeros(len(fr))
    for i, f in enumerate(fr):
        f = f - f.mean()
        ac = np.correlate(f, f, "full")[len(f) - 1 :]
        ac = ac / (ac[0] + 1e-12)
        lag = lo + int(np.argmax(ac[lo:hi]))
        peaks[i], f0[i] = ac[lag], sr / lag
    return active, zcr, peaks, f0


@pytest.mark.parametrize("sr", [8000, 16000, 22050])
def test_deterministic_finite_and_peak_normalised(sr):
    a = speech_like(1.5, sr, seed=7)
    assert a.dtype == torch.float32 and a.shape == (int(1.5 * sr),)
    assert torch.isfinite(a).all()
    assert abs(float(a.abs().max()) - 0.5) < 1e-6
    assert torch.equal(a, speech_like(1.5, sr, seed=7))
    assert not torch.allclose(a, speech_like(1.5, sr, seed=8))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(speech_like(0.5, sr, generator=g1), speech_like(0.5, sr, generator=g2))


@pytest.mark.parametrize("sr, seed", [(16000, 0), (22050, 1), (8000, 2)])
def test_voiced_and_unvoiced_frames_and_pitch_in_range(sr, seed):
    x = speech_like(3.0, sr, seed=seed).numpy().astype(np.float64)
    active, zcr, peaks, f0 = _analyse(x, sr)
    voiced = active & (peaks > 0.6) & (zcr < 0.2)  # periodic, dominated by low formants
    unvoiced = active & (peaks < 0.35) & (zcr > 0.25)  # aperiodic and high-frequency
    pauses = ~active
    assert voiced.mean() > 0.3
    assert unvoiced.sum() >= 3 and pauses.sum() >= 2  # fricatives and pauses, not one long vowel
    # a moving pitch inside the 90-250 Hz contour range (allowing a stray octave error at a transition)
    pitch = f0[voiced]
    assert np.mean((pitch > 85) & (pitch < 260)) > 0.9
    assert 90 <= np.median(pitch) <= 250
    assert np.ptp(np.percentile(pitch, [10, 90])) > 5  # not a fixed tone


def test_spectrum_is_speech_like_not_a_tone():
    sr = 22050
    x = speech_like(3.0, sr, seed=4).numpy().astype(np.float64)
    f, P = signal.welch(x, sr, nperseg=2048)
    band = (f >= 80) & (f <= 8000)
    assert P[band].sum() / P.sum() > 0.95  # energy in the speech band
    assert P[f <= 1000].sum() / P.sum() > 0.5  # most of it in the low formant region
    # broadband: many harmonics and noise, unlike a tone whose energy sits in one or two bins
    assert np.sort(P)[::-1][:3].sum() / P.sum() < 0.5
    # formants: voiced frames have a spectral envelope with a peak in the F1 range 250-900 Hz
    active, zcr, peaks, _ = _analyse(x, sr)
    fr = _frames(x, sr)[active & (peaks > 0.6)]
    spec = (np.abs(np.fft.rfft(fr * np.hanning(fr.shape[1]), axis=1)) ** 2).mean(0)
    freqs = np.fft.rfftfreq(fr.shape[1], 1 / sr)
    assert 200 <= freqs[np.argmax(spec)] <= 900


def test_make_dataset_writes_reproducible_distinct_clips(tmp_path):
    paths = make_dataset(tmp_path / "a", n_clips=3, duration_s=0.5, sample_rate=8000, seed=5)
    again = make_dataset(tmp_path / "b", n_clips=3, duration_s=0.5, sample_rate=8000, seed=5)
    assert [p.name for p in paths] == ["synth_0000.wav", "synth_0001.wav", "synth_0002.wav"]
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    clips = []
    for p in paths:
        info = sf.info(p)
        assert (info.samplerate, info.frames, info.subtype) == (8000, 4000, "PCM_16")
        wav, _ = load_audio(p, 8000, strict=True)
        assert abs(float(wav.abs().max()) - 0.5) < 1e-3
        clips.append(wav)
    assert not torch.allclose(clips[0], clips[1])
    with pytest.raises(ValueError, match="at least 8000"):
        speech_like(1.0, 4000, seed=0)
