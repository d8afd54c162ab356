import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from diffwave.audio import AudioError, audio_info, list_audio_files, load_audio, resampled_length, save_audio

SR = 16000


def _tone(n=SR // 2, freq=440.0, amp=0.5, sr=SR):
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float64)


@pytest.mark.parametrize(
    "fmt, subtype, bits",
    [("WAV", "PCM_U8", 8), ("WAV", "PCM_16", 16), ("WAV", "PCM_24", 24), ("WAV", "PCM_32", 32),
     ("FLAC", "PCM_16", 16), ("FLAC", "PCM_24", 24)],
)
def test_integer_pcm_is_scaled_by_two_to_the_bits_minus_one(tmp_path, fmt, subtype, bits):
    # integers on the file's own grid, written as int32 (libsndfile shifts them down exactly)
    codes = np.round(_tone(amp=0.9) * 2 ** (bits - 1)).astype(np.int64)
    codes[:4] = [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1, 1, -1]  # the extremes and the smallest steps
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, (codes << (32 - bits)).astype(np.int32), SR, format=fmt, subtype=subtype)
    wav, sr = load_audio(path)
    assert sr == SR and wav.dtype == torch.float32 and wav.shape == (len(codes),)
    np.testing.assert_allclose(wav.numpy(), codes / 2.0 ** (bits - 1), rtol=2e-7 if bits > 24 else 0, atol=0)


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_float_files_are_read_unchanged(tmp_path, subtype):
    x = _tone(amp=1.2).astype(np.float32)  # float files may exceed full scale; they are not clipped on reading
    sf.write(tmp_path / "f.wav", x, SR, subtype=subtype)
    wav, _ = load_audio(tmp_path / "f.wav")
    np.testing.assert_array_equal(wav.numpy(), x)


def test_ogg_vorbis_is_decoded(tmp_path):
    x = _tone(SR)
    sf.write(tmp_path / "a.ogg", x, SR, format="OGG", subtype="VORBIS")
    wav, sr = load_audio(tmp_path / "a.ogg")
    assert sr == SR
    n = min(len(wav), len(x))
    corr = np.corrcoef(wav.numpy()[1000:n - 1000], x[1000:n - 1000])[0, 1]
    assert corr > 0.99  # lossy, but the same tone


def test_stereo_is_downmixed_by_averaging(tmp_path):
    x = _tone()
    sf.write(tmp_path / "s.wav", np.stack([x, -0.5 * x], axis=1), SR, subtype="FLOAT")
    mono, _ = load_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(mono.numpy(), 0.25 * x, atol=1e-7)
    both, _ = load_audio(tmp_path / "s.wav", mono=False)
    assert both.shape == (2, len(x))
    np.testing.assert_allclose(both[1].numpy(), -0.5 * x, atol=1e-7)


def test_wrong_rate_is_resampled_with_a_warning_naming_file_and_rates(tmp_path, caplog):
    path = tmp_path / "at16k.wav"
    sf.write(path, _tone(SR, freq=440.0), SR, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="diffwave.audio"):
        wav, sr = load_audio(path, 8000)
    assert sr == 8000 and len(wav) == SR // 2 == resampled_length(SR, SR, 8000)
    msg = caplog.text
    assert "at16k.wav" in msg and "16000" in msg and "8000" in msg
    # band-limited resampling keeps the tone: its spectral peak is still at 440 Hz
    spectrum = np.abs(np.fft.rfft(wav.numpy() * np.hanning(len(wav))))
    assert abs(np.argmax(spectrum) * 8000 / len(wav) - 440.0) <= 2.0
    with pytest.raises(AudioError, match=r"at16k\.wav.*16000 Hz.*8000 Hz"):
        load_audio(path, 8000, strict=True)


def test_resampled_length_matches_torchaudio():
    import torchaudio.functional as AF

    for n, a, b in [(1000, 22050, 16000), (12345, 8000, 22050), (7, 44100, 22050), (16000, 16000, 16000)]:
        assert resampled_length(n, a, b) == AF.resample(torch.zeros(n), a, b).shape[-1]


def test_missing_empty_corrupt_and_zero_length_files_are_named(tmp_path):
    with pytest.raises(AudioError, match=r"nothere\.wav: file not found"):
        load_audio(tmp_path / "nothere.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: empty file"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.wav").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(AudioError, match=r"junk\.wav: unreadable or corrupt"):
        load_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "zero.wav", np.zeros(0), SR)
    with pytest.raises(AudioError, match=r"zero\.wav: zero-length"):
        load_audio(tmp_path / "zero.wav")
    with pytest.raises(AudioError, match=r"zero\.wav: zero-length"):
        audio_info(tmp_path / "zero.wav")


def test_truncated_files_are_rejected(tmp_path):
    for fmt in ("wav", "flac"):
        full = tmp_path / f"full.{fmt}"
        sf.write(full, _tone(SR) + 0.01 * np.random.default_rng(0).standard_normal(SR), SR)
        data = full.read_bytes()
        cut = tmp_path / f"cut.{fmt}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(AudioError, match=rf"cut\.{fmt}"):
            load_audio(cut)
    with pytest.raises(AudioError, match=r"cut\.wav: truncated"):
        audio_info(tmp_path / "cut.wav")


def test_non_finite_and_silent_clips_are_rejected(tmp_path):
    x = _tone()
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: 1 non-finite"):
        load_audio(tmp_path / "nan.wav")
    x[100], x[200] = 0.0, np.inf
    sf.write(tmp_path / "inf.wav", x, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"inf\.wav: 1 non-finite"):
        load_audio(tmp_path / "inf.wav")
    sf.write(tmp_path / "silent.wav", np.zeros(SR), SR)
    with pytest.raises(AudioError, match=r"silent\.wav: silent"):
        load_audio(tmp_path / "silent.wav")


def test_save_audio_clips_writes_pcm16_atomically_and_round_trips(tmp_path):
    x = torch.from_numpy(_tone(amp=1.5).astype(np.float32))
    path = save_audio(tmp_path / "sub" / "out.wav", x, SR)
    info = sf.info(path)
    assert (info.subtype, info.samplerate, info.frames) == ("PCM_16", SR, len(x))
    back, _ = load_audio(path)
    assert back.abs().max() <= 1.0 and back.max() >= 32767 / 32768
    inside = x.abs() < 1
    assert (back[inside] - x[inside]).abs().max() <= 2.0**-15
    assert os.listdir(path.parent) == ["out.wav"]  # no temporary file left behind

    y = torch.from_numpy(_tone(amp=0.3).astype(np.float32))
    save_audio(path, y, SR, subtype="FLOAT")  # overwrite in place
    assert sf.info(path).subtype == "FLOAT"
    assert torch.equal(load_audio(path)[0], y)

    stereo = torch.stack([y, -y])
    save_audio(tmp_path / "st.wav", stereo, SR)
    assert sf.info(tmp_path / "st.wav").channels == 2
    with pytest.raises(AudioError, match="non-finite"):
        save_audio(tmp_path / "bad.wav", torch.tensor([0.0, float("nan")]), SR)
    assert not (tmp_path / "bad.wav").exists()


def test_list_audio_files_walks_folders(tmp_path):
    for rel in ["a.wav", "sub/b.FLAC", "sub/deeper/c.ogg", "notes.txt", "sub/d.npy"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_audio_files(tmp_path)]
    assert found == ["a.wav", "sub/b.FLAC", "sub/deeper/c.ogg"]


def test_list_audio_files_reads_file_lists(tmp_path):
    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "LJ001-0001.wav").write_bytes(b"x")
    lst = tmp_path / "train.txt"
    lst.write_text(
        "# comment\n"
        "wavs/a.wav|Some text|some text\n"
        "\n"
        f"{tmp_path / 'b.flac'}\n"
        "LJ001-0001|Printing, in the only sense\n"
    )
    got = list_audio_files(lst)
    assert got == [tmp_path / "wavs" / "a.wav", tmp_path / "b.flac", tmp_path / "wavs" / "LJ001-0001.wav"]

    bad = tmp_path / "escape.txt"
    bad.write_text("wavs/a.wav\n../outside.wav\n")
    with pytest.raises(AudioError, match=r"escape\.txt:2: '\.\./outside\.wav'.*outside the list's folder"):
        list_audio_files(bad)
    assert list_audio_files(bad, allow_outside_root=True)[1] == (tmp_path / ".." / "outside.wav")
    absolute = tmp_path / "abs.txt"
    absolute.write_text("/etc/passwd.wav\n")
    with pytest.raises(AudioError, match="outside"):
        list_audio_files(absolute)
    with pytest.raises(AudioError, match="no such folder or file list"):
        list_audio_files(tmp_path / "missing")


def test_real_recordings(shared_data):
    wav, sr = load_audio(shared_data / "ljspeech" / "wavs" / "LJ001-0001.wav", 22050, strict=True)
    raw, raw_sr = sf.read(shared_data / "ljspeech" / "wavs" / "LJ001-0001.wav", dtype="int16")
    assert sr == raw_sr == 22050 and wav.shape == (len(raw),)
    np.testing.assert_array_equal(wav.numpy(), raw.astype(np.float32) / 32768)
    info = audio_info(shared_data / "fsdd" / "recordings" / "0_george_10.wav")
    assert (info.sample_rate, info.channels) == (8000, 1) and 0.1 < info.duration_s < 2.0
    fsdd, sr = load_audio(info.path)
    assert sr == 8000 and len(fsdd) == info.frames
