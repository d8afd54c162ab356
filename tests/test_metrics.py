"""Resynthesis metrics, the Griffin-Lim baseline and the comparison plot (diffwave.metrics)."""

import json
import logging
import math
import sys

import librosa
import numpy as np
import pytest
import torch

from diffwave.audio import load_audio
from diffwave.mel import MelConfig, compute_mel
from diffwave import metrics as M

pytest.importorskip("pesq")
pytest.importorskip("pystoi")


@pytest.fixture(scope="module")
def speech(shared_data):
    """Two seconds of real speech (LJSpeech, 22.05 kHz)."""
    wav, sr = load_audio(shared_data / "ljspeech" / "wavs" / "LJ001-0001.wav")
    return wav[: 2 * sr].contiguous(), sr


def _noisy(wav: torch.Tensor, snr_db: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(wav.shape, generator=g)
    scale = wav.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt() * 10 ** (-snr_db / 20)
    return wav + scale * noise


def test_identical_signals_score_perfectly(speech):
    wav, sr = speech
    assert M.log_mel_l1(wav, wav, sr) == 0.0
    assert M.mr_stft_distance(wav, wav) < 1e-6
    assert M.stoi(wav, wav, sr) > 0.999
    assert M.pesq_wb(wav, wav, sr) > 4.5  # top of the wide-band MOS-LQO scale is 4.64


def test_analysis_log_mel_matches_librosa(speech):
    wav, sr = speech
    ours = M.analysis_log_mel(wav, sr).double().numpy()
    ref = librosa.feature.melspectrogram(
        y=wav.double().numpy(), sr=sr, n_fft=1024, hop_length=256, win_length=1024, window="hann", center=True,
        pad_mode="constant", power=1.0, n_mels=80, fmin=0.0, fmax=sr / 2, htk=True, norm=None,
    )
    ref = np.log(np.maximum(ref, 1e-5))
    assert ours.shape == ref.shape == (80, 1 + wav.numel() // 256)
    np.testing.assert_allclose(ours, ref, atol=2e-3)
    est = _noisy(wav, 10.0)
    est_ref = np.log(np.maximum(librosa.feature.melspectrogram(
        y=est.double().numpy(), sr=sr, n_fft=1024, hop_length=256, center=True, pad_mode="constant", power=1.0,
        n_mels=80, fmin=0.0, fmax=sr / 2, htk=True, norm=None), 1e-5))
    assert M.log_mel_l1(wav, est, sr) == pytest.approx(np.abs(ref - est_ref).mean(), rel=1e-3)


def test_mr_stft_closed_form_for_a_scaled_signal():
    # est = 2 ref: spectral convergence ||R - 2R|| / ||R|| = 1 and log-magnitude L1 = ln 2 at every resolution
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(16000, generator=g)
    assert M.mr_stft_distance(ref, 2 * ref) == pytest.approx(1 + math.log(2), rel=1e-4)
    # lengths are aligned by trimming: a longer estimate's extra tail is ignored
    assert M.mr_stft_distance(ref, torch.cat([2 * ref, torch.randn(999, generator=g)])) == pytest.approx(
        1 + math.log(2), rel=1e-4
    )


def test_added_noise_lowers_pesq_and_stoi_monotonically(speech):
    wav, sr = speech
    snrs = [30.0, 15.0, 5.0, -5.0]
    noisy = [_noisy(wav, s) for s in snrs]
    pesq = [M.pesq_wb(wav, x, sr) for x in noisy]
    stoi = [M.stoi(wav, x, sr) for x in noisy]
    l1 = [M.log_mel_l1(wav, x, sr) for x in noisy]
    mr = [M.mr_stft_distance(wav, x) for x in noisy]
    assert all(a > b for a, b in zip(pesq, pesq[1:])), pesq
    assert all(a > b for a, b in zip(stoi, stoi[1:])), stoi
    assert all(a < b for a, b in zip(l1, l1[1:])), l1
    assert all(a < b for a, b in zip(mr, mr[1:])), mr
    assert pesq[-1] < 1.5 and stoi[-1] < 0.8


@pytest.mark.parametrize("preset", ["diffwave", "hifigan"])
def test_griffin_lim_baseline_beats_noise_and_is_aligned(speech, preset):
    wav, sr = speech
    cfg = MelConfig.from_dict({"preset": preset, "sample_rate": sr})
    mel = compute_mel(wav, cfg)
    gl = M.griffin_lim_from_mel(mel, cfg, n_iter=32)
    hop = cfg.hop_length
    expected = (mel.shape[-1] - 1) * hop if preset == "diffwave" else mel.shape[-1] * hop
    assert gl.shape == (expected,) and torch.isfinite(gl).all()
    noise = torch.randn(wav.shape, generator=torch.Generator().manual_seed(1)) * wav.std()
    assert M.log_mel_l1(wav, gl, sr) < 0.5 * M.log_mel_l1(wav, noise, sr)
    # the mel inverted and analysed again is close to the input mel (in the preset's own units)
    remel = compute_mel(gl, cfg)
    frames = min(remel.shape[-1], mel.shape[-1])
    scale = 1.0 if preset == "diffwave" else 11.5  # hifigan mels span about [ln 1e-5, 0]
    assert (remel[..., 1 : frames - 1] - mel[..., 1 : frames - 1]).abs().mean() / scale < 0.05
    # alignment: delaying or advancing the output by half a hop makes it worse
    base = M.mr_stft_distance(wav, gl)
    assert base < M.mr_stft_distance(wav, torch.roll(gl, hop // 2))
    assert base < M.mr_stft_distance(wav, torch.roll(gl, -hop // 2))
    assert M.stoi(wav, gl, sr) > 0.85
    # batched input inverts each item the same way: items of a batch identically, and like the single input up to
    # the rounding of batched kernels, which 32 iterations amplify (torch 2.14: 36 dB SNR diffwave, 45 dB hifigan)
    batched = M.griffin_lim_from_mel(torch.stack([mel, mel]), cfg, n_iter=32)
    assert batched.shape == (2, expected)
    assert torch.equal(batched[0], batched[1])
    snr = 10 * torch.log10(gl.pow(2).sum() / (batched[1] - gl).pow(2).sum())
    assert snr > 30.0, float(snr)


def test_unavailable_metrics_are_nan_with_a_reason(speech, caplog, monkeypatch):
    wav, sr = speech
    short = wav[: int(0.1 * sr)]
    with caplog.at_level(logging.WARNING, logger="diffwave.metrics"):
        assert math.isnan(M.pesq_wb(short, short, sr))
    assert "shorter than" in caplog.text
    result = M.evaluate_pair(short, short, sr, with_dnsmos=False)
    assert math.isnan(result["pesq_wb"]) and "shorter than" in result["unavailable"]["pesq_wb"]
    assert math.isnan(result["stoi"]) and "too short" in result["unavailable"]["stoi"]
    assert result["log_mel_l1"] == 0.0  # the spectral distances still work
    monkeypatch.setitem(sys.modules, "pesq", None)  # makes `import pesq` raise ImportError
    result = M.evaluate_pair(wav, wav, sr, with_dnsmos=False)
    assert math.isnan(result["pesq_wb"]) and "not installed" in result["unavailable"]["pesq_wb"]
    assert result["stoi"] > 0.999 and "stoi" not in result["unavailable"]


def test_dnsmos_range_and_ordering(speech):
    pytest.importorskip("speechmos")
    pytest.importorskip("onnxruntime")
    wav, sr = speech
    clean = M.dnsmos(wav, sr)
    noise = M.dnsmos(torch.randn(wav.shape, generator=torch.Generator().manual_seed(2)) * 0.1, sr)
    assert set(clean) == {"dnsmos_p808", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"}
    for scores in (clean, noise):
        assert all(1.0 <= v <= 5.0 for v in scores.values()), scores
    assert clean["dnsmos_p808"] > noise["dnsmos_p808"] + 1.0
    assert clean["dnsmos_bak"] > noise["dnsmos_bak"]
    assert all(math.isnan(v) for v in M.dnsmos(wav[: int(0.2 * sr)], sr).values())


def test_resynthesis_table_rows_columns_and_means(speech):
    wav, sr = speech
    a, b = wav[: sr], wav[sr:]
    model = [(a, _noisy(a, 20.0)), (b, _noisy(b, 20.0))]
    baseline = [(a, _noisy(a, 0.0)), (b, _noisy(b, 0.0))]
    table = M.evaluate_resynthesis(model, sr, baseline, with_dnsmos=False)
    lines = table.markdown().strip().splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["system", "clips", "log-mel L1 ↓", "MR-STFT ↓", "PESQ-WB ↑", "STOI ↑"]
    assert lines[2].startswith("| model | 2 |") and lines[3].startswith("| Griffin-Lim | 2 |")
    # means are the means of the per-pair results
    per_pair = [M.evaluate_pair(r, e, sr, with_dnsmos=False) for r, e in model]
    for key in ("log_mel_l1", "mr_stft", "pesq_wb", "stoi"):
        assert table.means["model"][key] == pytest.approx(np.mean([p[key] for p in per_pair]))
    assert table.means["model"]["pesq_wb"] > table.means["Griffin-Lim"]["pesq_wb"]
    data = json.loads(json.dumps(table.to_dict(), allow_nan=False))
    assert data["clips"] == {"model": 2, "Griffin-Lim": 2}
    assert set(data["means"]["model"]) == {"log_mel_l1", "mr_stft", "pesq_wb", "stoi"}


def test_table_marks_unavailable_values(speech):
    wav, sr = speech
    short = wav[: int(0.1 * sr)]
    table = M.evaluate_resynthesis([(short, short), (wav, wav)], sr, with_dnsmos=False)
    assert table.counts["model"]["pesq_wb"] == 1 and table.counts["model"]["log_mel_l1"] == 2
    assert "shorter than" in table.unavailable["model"]["pesq_wb"][0]
    row = table.markdown().strip().splitlines()[2]
    assert "(1)" in row  # the PESQ mean covers one clip of two
    only_short = M.evaluate_resynthesis([(short, short)], sr, with_dnsmos=False)
    assert "n/a" in only_short.markdown() and only_short.to_dict()["means"]["model"]["pesq_wb"] is None


def test_plot_is_a_png_of_the_expected_size(speech, tmp_path):
    from PIL import Image

    wav, sr = speech
    cfg = MelConfig.from_dict({"preset": "diffwave", "sample_rate": sr})
    mel = compute_mel(wav, cfg)
    out = M.plot_spectrograms(
        tmp_path / "plots" / "compare.png",
        [("input", wav), ("Griffin-Lim", M.griffin_lim_from_mel(mel, cfg, n_iter=8)), ("input mel", mel)],
        sr,
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.size == (1000, 3 * 240)
        assert np.asarray(im.convert("L")).std() > 10  # not a blank image
    assert [p.name for p in out.parent.iterdir()] == ["compare.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="expected a waveform"):
        M.plot_spectrograms(tmp_path / "bad.png", [("x", torch.zeros(1, 2, 3))], sr)
