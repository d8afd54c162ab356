import librosa
import numpy as np
import pytest
import scipy.signal
import torch
import torchaudio

from diffcore.config import ConfigError
from diffwave.audio import load_audio
from diffwave.mel import MelConfig, MelError, compute_mel, load_mel_file, mel_filterbank, validate_mel
from diffwave.synth import speech_like


@pytest.fixture(scope="module")
def clip():
    """1.3 s of speech-like audio at 22050 Hz, float64."""
    return speech_like(1.3, 22050, seed=3).double()


# ---------------------------------------------------------------------------------------------------------------
# Filter banks


@pytest.mark.parametrize(
    "sr, n_fft, n_mels, fmin, fmax",
    [(22050, 1024, 80, 20.0, 11025.0), (22050, 1024, 80, 0.0, 8000.0), (16000, 512, 40, 0.0, 8000.0),
     (8000, 256, 64, 50.0, 3800.0)],
)
def test_filterbanks_match_librosa_and_torchaudio(sr, n_fft, n_mels, fmin, fmax):
    htk = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, scale="htk", norm=None).numpy()
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=True, norm=None,
                              dtype=np.float64)
    np.testing.assert_allclose(htk, ref, atol=1e-12)
    ta = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, fmin, fmax, n_mels, sr, None, "htk").T.numpy()
    np.testing.assert_allclose(htk, ta, atol=1e-5)

    slaney = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, scale="slaney", norm="slaney").numpy()
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, dtype=np.float64)
    np.testing.assert_allclose(slaney, ref, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# The two presets against independent computations


def _lmnt_reference(y: np.ndarray, sr: int) -> np.ndarray:
    """lmnt's formula, with librosa's STFT and filters in float64."""
    window = scipy.signal.get_window("hann", 1024, fftbins=True)
    S = np.abs(librosa.stft(y, n_fft=1024, hop_length=256, win_length=1024, window="hann", center=True,
                            pad_mode="reflect"))
    S /= np.sqrt((window**2).sum())  # torchaudio's normalized=True
    fb = librosa.filters.mel(sr=sr, n_fft=1024, n_mels=80, fmin=20.0, fmax=sr / 2, htk=True, norm=None,
                             dtype=np.float64)
    db = 20 * np.log10(np.maximum(fb @ S, 1e-5)) - 20
    return np.clip((db + 100) / 100, 0, 1)


def _hifigan_reference(y: np.ndarray, sr: int) -> np.ndarray:
    """HiFi-GAN's formula with numpy framing and FFT and librosa's Slaney filters, float64."""
    n_fft, hop = 1024, 256
    p = np.pad(y, ((n_fft - hop) // 2,), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(p, n_fft)[::hop]  # [frames, n_fft]
    X = np.fft.rfft(frames * scipy.signal.get_window("hann", n_fft, fftbins=True), axis=-1).T
    S = np.sqrt(X.real**2 + X.imag**2 + 1e-9)
    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=80, fmin=0.0, fmax=8000.0, dtype=np.float64)
    return np.log(np.maximum(fb @ S, 1e-5))


@pytest.mark.parametrize("preset, reference", [("diffwave", _lmnt_reference), ("hifigan", _hifigan_reference)])
def test_presets_match_an_independent_float64_computation(clip, preset, reference):
    cfg = MelConfig.from_dict({"preset": preset})
    mel = compute_mel(clip, cfg)
    ref = reference(clip.numpy(), 22050)
    assert mel.dtype == torch.float64 and mel.shape == ref.shape == (80, cfg.num_frames(len(clip)))
    np.testing.assert_allclose(mel.numpy(), ref, atol=1e-9)


def test_diffwave_preset_matches_torchaudio_melspectrogram_as_lmnt_calls_it(clip):
    x = clip.float()
    lmnt = torchaudio.transforms.MelSpectrogram(
        sample_rate=22050, win_length=1024, hop_length=256, n_fft=1024, f_min=20.0, f_max=11025.0, n_mels=80,
        power=1.0, normalized=True,
    )(x)
    lmnt = torch.clamp((20 * torch.log10(torch.clamp(lmnt, min=1e-5)) - 20 + 100) / 100, 0.0, 1.0)
    assert torch.allclose(compute_mel(x, MelConfig.diffwave()), lmnt, atol=2e-5)


@pytest.mark.parametrize("preset", ["diffwave", "hifigan"])
def test_any_leading_shape_and_frame_counts(preset):
    cfg = MelConfig.from_dict({"preset": preset})
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(2, 3, 3000, generator=g, dtype=torch.float64)
    batched = compute_mel(x, cfg)
    assert batched.shape == (2, 3, 80, cfg.num_frames(3000))
    assert torch.allclose(batched[1, 2], compute_mel(x[1, 2], cfg), atol=1e-12)
    for T in (cfg.min_samples(), 256, 1000, 2560, 2561, 2815):
        if T >= cfg.min_samples():
            assert compute_mel(x[0, 0, :T], cfg).shape[-1] == cfg.num_frames(T)
    expected = 3000 // 256 + (1 if preset == "diffwave" else 0)
    assert cfg.num_frames(3000) == expected
    with pytest.raises(ValueError, match="too short"):
        compute_mel(x[0, 0, : cfg.min_samples() - 1], cfg)


def test_real_fixtures_made_by_the_peers_code(shared_data):
    """lmnt's preprocess.py and HiFi-GAN's mel_spectrogram, run by their own code on LJ001-0001 (float32)."""
    wav, _ = load_audio(shared_data / "ljspeech" / "wavs" / "LJ001-0001.wav", 22050, strict=True)
    lmnt_ref = np.load(shared_data / "interop" / "LJ001-0001.lmnt-mel.npy")
    lmnt = compute_mel(wav, MelConfig.diffwave()).numpy()
    assert lmnt.shape == lmnt_ref.shape == (80, 832)
    # float32 rounding; measured max |diff| 7.8e-5 (median 0), at the quietest bins
    assert np.abs(lmnt - lmnt_ref).max() < 2e-4

    hifi_ref = np.load(shared_data / "interop" / "LJ001-0001.hifigan-mel.npy")
    hifi = compute_mel(wav, MelConfig.hifigan()).numpy()
    assert hifi.shape == hifi_ref.shape == (80, 831)
    # log of float32 magnitudes: measured max |diff| 9.4e-4 near the 1e-5 floor, 1.5e-5 where the mel is above -6;
    # in the linear domain the largest difference is 1.2e-6
    assert np.abs(hifi - hifi_ref).max() < 2e-3
    assert np.abs(hifi - hifi_ref)[hifi_ref > -6].max() < 5e-5
    assert np.abs(np.exp(hifi) - np.exp(hifi_ref)).max() < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Config


def test_config_presets_round_trip_and_validation():
    dw, hf = MelConfig.diffwave(), MelConfig.hifigan()
    assert (dw.f_min, dw.fmax_hz, hf.f_min, hf.fmax_hz) == (20.0, 11025.0, 0.0, 8000.0)
    assert MelConfig(preset="hifigan") == hf and MelConfig() == dw
    for cfg in (dw, hf, MelConfig.from_dict({"preset": "hifigan", "n_mels": 128})):
        assert MelConfig.from_dict(cfg.to_dict()) == cfg
    assert MelConfig.diffwave(16000).fmax_hz == 8000.0  # f_max follows the rate
    assert dw.replace(sample_rate=16000).fmax_hz == 8000.0
    with pytest.raises(ConfigError, match="win_length"):
        MelConfig(win_length=2048)
    with pytest.raises(ConfigError, match="f_max"):
        MelConfig.hifigan(8000)  # 8 kHz band edge above the 4 kHz Nyquist frequency
    with pytest.raises(ConfigError, match="even"):
        MelConfig(preset="hifigan", hop_length=255)
    with pytest.raises(ConfigError, match="preset"):
        MelConfig.from_dict({"preset": "tacotron"})


# ---------------------------------------------------------------------------------------------------------------
# Validation and loading


@pytest.fixture(scope="module")
def mels(clip):
    return {p: compute_mel(clip.float(), MelConfig.from_dict({"preset": p})) for p in ("diffwave", "hifigan")}


def test_validate_accepts_matching_mels_in_any_container(mels):
    for preset, mel in mels.items():
        cfg = MelConfig.from_dict({"preset": preset})
        validate_mel(mel, cfg)
        validate_mel(mel.numpy(), cfg)
        validate_mel(mel[None].repeat(2, 1, 1), cfg)


def test_validate_rejects_the_other_preset_naming_the_expected_one(mels):
    with pytest.raises(MelError, match=r"my\.npy: .*negative.*hifigan.*expects a 'diffwave'-preset mel"):
        validate_mel(mels["hifigan"], MelConfig.diffwave(), source="my.npy")
    with pytest.raises(MelError, match=r"x\.pt: .*non-negative.*'diffwave' mel.*expects a 'hifigan'-preset mel"):
        validate_mel(mels["diffwave"], MelConfig.hifigan(), source="x.pt")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m: m[:40], "40 mel bands, not 80"),
        (lambda m: m.T.contiguous(), r"transposed"),
        (lambda m: (m * 100).long(), "not floating point"),
        (lambda m: m[0], "rank 1"),
        (lambda m: torch.where(torch.arange(m.shape[-1]) == 3, float("nan"), m), r"\d+ non-finite"),
        (lambda m: m * 20, r"> 1"),
    ],
)
def test_validate_rejects_bad_mels(mels, make, match):
    with pytest.raises(MelError, match=rf"clip\.npy: .*{match}.*|clip\.npy: {match}"):
        validate_mel(make(mels["diffwave"]), MelConfig.diffwave(), source="clip.npy")


def test_validate_rejects_out_of_range_hifigan_values(mels):
    with pytest.raises(MelError, match="outside the range"):
        validate_mel(mels["hifigan"] * 3, MelConfig.hifigan())  # below ln(1e-5): not a clamped natural log
    with pytest.raises(MelError, match="outside the range"):
        validate_mel(mels["hifigan"] + 10, MelConfig.hifigan())  # log10 of magnitudes scaled up, say
    with pytest.raises(MelError, match=r"all non-negative \(a linear or dB mel\?\)"):
        validate_mel(mels["hifigan"].exp() * 100, MelConfig.hifigan())


def test_load_mel_file(tmp_path, mels):
    m = mels["diffwave"]
    np.save(tmp_path / "a.npy", m.numpy().astype(np.float64))
    torch.save(m, tmp_path / "b.pt")
    torch.save({"mel": m, "text": "hi"}, tmp_path / "c.pt")
    for name in ("a.npy", "b.pt", "c.pt"):
        got = load_mel_file(tmp_path / name)
        assert got.dtype == torch.float32 and torch.allclose(got, m)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(MelError, match=r"bad\.npy: cannot read"):
        load_mel_file(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(MelError, match=r"obj\.npy"):  # pickles are refused
        load_mel_file(tmp_path / "obj.npy")
    torch.save({"other": m}, tmp_path / "d.pt")
    with pytest.raises(MelError, match=r"d\.pt: a dict without"):
        load_mel_file(tmp_path / "d.pt")
    with pytest.raises(MelError, match="not found"):
        load_mel_file(tmp_path / "none.npy")
    m.numpy().tofile(tmp_path / "e.raw")
    with pytest.raises(MelError, match=r"e\.raw: unsupported"):
        load_mel_file(tmp_path / "e.raw")
