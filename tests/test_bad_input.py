"""Bad input, everywhere a user can hand us a file: every case gets a clear error that names the file and the problem
(or, inside a data set, a logged skip with a count), never a bare exception from deep inside torch/numpy/libsndfile,
and never a half-written output file.

Library entry points are tested here case by case; the commands (``diffwave ...``, ``diffimage ...``) at the end:
exit status 2, one ``error: ...`` line naming the file, no traceback."""

import logging
import os
import re
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
import yaml
from PIL import Image

from diffcore.checkpoint import CheckpointError, atomic_write, export, load_checkpoint, load_for_inference, \
    save_checkpoint
from diffcore.config import ConfigError, load_recipe
from diffcore.train import TrainConfig, Trainer
from diffcore.train.toy import ToyTask
from diffwave import audio as audio_mod
from diffwave import mel as mel_mod
from diffwave.audio import AudioError, audio_info, list_audio_files, load_audio, resampled_length, save_audio
from diffwave.config import DiffWaveConfig
from diffwave.data import AudioMelDataset, UnconditionalAudioDataset
from diffwave.mel import MelConfig, MelError, compute_mel, load_mel_file, validate_mel
from diffwave.model import DiffWave
from diffwave.recipe import DiffWaveRecipe

from cli_helpers import error_line as _error_line, image_cli as _image_cli, wave_cli as _wave_cli

REPO = Path(__file__).resolve().parents[1]
SR = 16000
SMALL_WAVE = {"preset": "tiny", "residual_layers": 2, "residual_channels": 4, "dilation_cycle": 2,
              "embedding_hidden": 16}


def tone(n: int = SR // 2, amp: float = 0.5, channels: int = 1, sr: int = SR) -> np.ndarray:
    t = np.arange(n) / sr
    x = amp * np.sin(2 * np.pi * 440 * t)
    return x if channels == 1 else np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)


def named(path) -> str:
    """A regex matching the file's name in a message."""
    return re.escape(Path(path).name)


# ------------------------------------------------------------------------------------------------ audio files


def test_every_unusable_audio_file_is_an_audio_error_naming_it(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(), SR)
    flac = tmp_path / "good.flac"
    sf.write(flac, tone() + 0.01 * np.random.default_rng(0).standard_normal(SR // 2), SR)
    cases = {  # name: (bytes, whether the header alone shows the problem)
        "missing.wav": (None, True),
        "empty.wav": (b"", True),
        "text.wav": (b"this is not audio at all\n" * 20, True),
        "half.wav": (good.read_bytes()[: len(good.read_bytes()) // 2], True),
        "header_only.wav": (good.read_bytes()[:44], True),
        "half.flac": (flac.read_bytes()[: len(flac.read_bytes()) // 2], False),  # found when decoded
        "png.wav": (b"\x89PNG\r\n\x1a\n" + bytes(100), True),
    }
    for name, (data, in_header) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        for fn in (load_audio, audio_info) if in_header else (load_audio,):
            with pytest.raises(AudioError, match=named(path)):
                fn(path)
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(AudioError, match=r"folder\.wav: is a folder, not a file"):
        load_audio(tmp_path / "folder.wav")


def _pcm_wav(path: Path, codes: np.ndarray, width: int, channels: int = 1) -> None:
    """Write integer PCM with the standard library (an encoder independent of libsndfile)."""
    if width == 1:
        raw = (codes + 128).astype(np.uint8).tobytes()  # 8-bit WAV is unsigned, offset 128
    elif width == 3:
        raw = b"".join(int(c).to_bytes(3, "little", signed=True) for c in codes.reshape(-1))
    else:
        raw = codes.astype({2: "<i2", 4: "<i4"}[width]).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(SR)
        w.writeframes(raw)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_integer_pcm_of_any_width_and_channel_count_decodes_to_the_exact_values(tmp_path, width, channels):
    bits = 8 * width
    rng = np.random.default_rng(bits + channels)
    codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(400, channels))
    codes[0] = -(2 ** (bits - 1))  # full scale negative
    codes[1] = 2 ** (bits - 1) - 1
    path = tmp_path / f"pcm{bits}_{channels}.wav"
    _pcm_wav(path, codes, width, channels)
    expected = codes / 2.0 ** (bits - 1)  # [T, C], float64
    multi, sr = load_audio(path, mono=False, silence_peak=0)
    assert sr == SR and multi.shape == (channels, 400) and multi.dtype == torch.float32
    np.testing.assert_allclose(multi.numpy(), expected.T, rtol=0, atol=6e-8)
    mono, _ = load_audio(path, silence_peak=0)
    np.testing.assert_allclose(mono.numpy(), expected.mean(axis=1), rtol=0, atol=2e-7)


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_float_files_with_nan_inf_or_clipping(tmp_path, subtype):
    x = tone(amp=2.5)  # clipped float audio: peaks far above full scale
    sf.write(tmp_path / "loud.wav", x, SR, subtype=subtype)
    wav, _ = load_audio(tmp_path / "loud.wav")
    assert float(wav.abs().max()) == pytest.approx(2.5, rel=1e-6)  # read as it is ...
    ds = UnconditionalAudioDataset([tmp_path / "loud.wav"], SR, 4000, crop="start")
    assert float(ds[0]["audio"].abs().max()) == 1.0  # ... and clamped to [-1, 1] where it is used for training
    save_audio(tmp_path / "out.wav", wav, SR)  # and written clipped
    assert float(np.abs(sf.read(tmp_path / "out.wav")[0]).max()) <= 1.0
    for bad, count in ((np.nan, 3), (np.inf, 1), (-np.inf, 2)):
        y = tone()
        y[10 : 10 + count] = bad
        sf.write(tmp_path / "bad.wav", y, SR, subtype=subtype)
        with pytest.raises(AudioError, match=rf"bad\.wav: {count} non-finite samples"):
            load_audio(tmp_path / "bad.wav")


def _patch_u32(path: Path, offset: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("rate", [0, 5, 10**9])
def test_an_implausible_sample_rate_in_the_header_is_rejected(tmp_path, rate):
    path = tmp_path / "odd_rate.wav"
    sf.write(path, tone(), SR)
    _patch_u32(path, 24, rate)  # the fmt chunk's sample rate (RIFF, WAVE, fmt, size, format, channels: 24 bytes)
    for fn in (load_audio, audio_info):
        with pytest.raises(AudioError, match=r"odd_rate\.wav: (implausible sample rate|unreadable)"):
            fn(path)


def test_sample_rates_other_than_the_models(tmp_path, caplog):
    path = tmp_path / "at44k.wav"
    sf.write(path, tone(44100, sr=44100), 44100)
    with pytest.raises(AudioError, match=r"at44k\.wav: sample rate is 44100 Hz but 22050 Hz is required"):
        load_audio(path, 22050, strict=True)
    with caplog.at_level(logging.WARNING):
        wav, sr = load_audio(path, 22050)
    assert sr == 22050 and wav.shape[-1] == resampled_length(44100, 44100, 22050) == 22050
    assert "resampling" in caplog.text and "at44k.wav" in caplog.text
    # rates with (almost) no common factor would need a gigantic sinc kernel: a clear error instead
    odd = tmp_path / "odd.wav"
    sf.write(odd, tone(44101, sr=44101), 44101)
    with pytest.raises(AudioError, match=r"odd\.wav: cannot resample 44101 Hz to 22050 Hz"):
        load_audio(odd, 22050)


def test_long_clips_are_resampled_and_transformed_in_pieces_with_the_same_result(monkeypatch):
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 70_001))).float()
    for orig, new in [(44100, 22050), (8000, 22050), (48000, 16000)]:
        whole = AF.resample(x, orig, new)
        pieces = audio_mod._resample(x, orig, new, chunk=4096)  # 9+ pieces
        assert torch.equal(whole, pieces)
    wav = x[0] * 0.3
    for preset in ("diffwave", "hifigan"):
        cfg = MelConfig.from_dict({"preset": preset})
        whole = compute_mel(wav, cfg)
        monkeypatch.setattr(mel_mod, "MEL_CHUNK_FRAMES", 17)
        pieces = compute_mel(wav, cfg)
        monkeypatch.setattr(mel_mod, "MEL_CHUNK_FRAMES", 2048)
        assert pieces.shape == whole.shape == (cfg.n_mels, cfg.num_frames(wav.shape[-1]))
        torch.testing.assert_close(pieces, whole, rtol=0, atol=1e-6)


_PEAK_SCRIPT = """
import resource, sys, torch
torch.set_num_threads(1)
from diffwave.audio import load_audio
from diffwave.mel import MelConfig, compute_mel
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = peak()
wav, sr = load_audio(sys.argv[1], 22050)
mel = compute_mel(wav, MelConfig.diffwave())
print(peak() - base, wav.shape[-1], mel.shape[-1])
"""


def test_a_ten_minute_file_is_handled_without_huge_intermediate_tensors(tmp_path):
    """10 minutes at 44.1 kHz (106 MB as float32) resampled to 22.05 kHz and turned into a mel: the process grows
    by a small multiple of the clip (an unchunked resample + STFT grew by about 14 times it)."""
    path = tmp_path / "ten_minutes.wav"
    n = 600 * 44100
    with sf.SoundFile(path, "w", 44100, 1, "PCM_16") as f:
        block = (0.3 * np.sin(np.arange(44100 * 10) * 0.05)).astype(np.float32)
        for _ in range(60):
            f.write(block)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout.split()
    growth, samples, frames = int(out[0]), int(out[1]), int(out[2])
    assert samples == 600 * 22050 and frames == samples // 256 + 1
    source_bytes = 4 * n
    assert growth < 3.5 * source_bytes, f"grew by {growth / 2**20:.0f} MiB for a {source_bytes / 2**20:.0f} MiB clip"


def test_a_header_announcing_hours_of_audio_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.flac"
    sf.write(path, tone(), SR, format="FLAC")
    data = bytearray(path.read_bytes())
    # STREAMINFO: 8 bytes after "fLaC" + block header; bytes 21..25 hold 4 + 32 bits of the total sample count
    data[21] |= 0x0F
    data[22:26] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    for fn in (load_audio, audio_info):
        with pytest.raises(AudioError, match=r"huge\.flac: too long \(\d+ s; the limit is 3600 s\)"):
            fn(path)
    long = tmp_path / "long.wav"
    sf.write(long, tone(SR * 3), SR)
    with pytest.raises(AudioError, match=r"long\.wav: too long \(3 s; the limit is 2 s\)"):
        load_audio(long, max_duration_s=2)
    assert load_audio(long, max_duration_s=None)[0].shape == (SR * 3,)


def test_a_data_set_skips_unusable_files_with_a_count(tmp_path, caplog):
    for i in range(3):
        sf.write(tmp_path / f"ok{i}.wav", tone(SR), SR)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"junk" * 100)
    sf.write(tmp_path / "nan.wav", np.full(SR, np.nan), SR, subtype="FLOAT")  # passes the header check
    files = sorted(tmp_path.glob("*.wav"))
    with caplog.at_level(logging.WARNING):
        ds = AudioMelDataset(files, MelConfig.diffwave(sample_rate=SR), crop_frames=8)
    assert len(ds) == 4 and len(ds.skipped) == 2
    assert "skipped 2 unusable file(s) of 6" in caplog.text
    items = [ds[i] for i in range(len(ds))]  # nan.wav fails when read: replaced, counted
    assert len(ds.bad) == 1 and all(torch.isfinite(it["audio"]).all() for it in items)
    assert "nan.wav" in caplog.text and "1 unusable so far" in caplog.text
    with pytest.raises(AudioError, match="none of the 2 files is usable"):
        AudioMelDataset([tmp_path / "empty.wav", tmp_path / "junk.wav"], MelConfig.diffwave(sample_rate=SR))


def test_empty_folders_and_lists_that_are_not_lists(tmp_path):
    from diffwave.data import resolve_files
    from diffwave.recipe import DataConfig

    (tmp_path / "empty").mkdir()
    assert list_audio_files(tmp_path / "empty") == []
    with pytest.raises(FileNotFoundError, match=r"empty.*holds no audio files"):
        resolve_files(DataConfig(path=str(tmp_path / "empty")))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        resolve_files(DataConfig(path=str(tmp_path / "nowhere")))
    with pytest.raises(AudioError, match=r"no files given"):
        AudioMelDataset([], MelConfig.diffwave())
    (tmp_path / "list.txt").write_bytes(b"\xff\xd8\xff\xe0 a JPEG, not a list")
    with pytest.raises(AudioError, match=r"list\.txt: not a file list"):
        list_audio_files(tmp_path / "list.txt")
    (tmp_path / "nul.txt").write_text("a\0b.wav\n")
    with pytest.raises(AudioError, match=r"nul\.txt:1: .*NUL"):
        list_audio_files(tmp_path / "nul.txt")


# ------------------------------------------------------------------------------------------------ mel arrays


@pytest.mark.parametrize(
    "preset, make, message",
    [
        ("diffwave", lambda: np.random.rand(100, 80).astype(np.float32), r"transposed\?"),
        ("diffwave", lambda: np.random.rand(80), r"rank 1"),
        ("diffwave", lambda: np.random.rand(1, 1, 80, 5), r"rank 4"),
        ("diffwave", lambda: np.random.rand(64, 20), r"64 mel bands, not 80"),
        ("diffwave", lambda: np.zeros((80, 0)), r"no frames"),
        ("diffwave", lambda: np.zeros((0, 80, 4)), r"empty batch"),
        ("diffwave", lambda: (np.random.rand(80, 9) * 255).astype(np.uint8), r"dtype uint8 is not floating"),
        ("diffwave", lambda: torch.ones(80, 9, dtype=torch.complex64), r"complex64 is not floating"),
        ("diffwave", lambda: np.full((80, 9), np.nan), r"720 non-finite"),
        ("diffwave", lambda: np.random.uniform(-11, 1, (80, 9)), r"negative.*natural-log 'hifigan' mel"),
        ("diffwave", lambda: np.random.uniform(0, 60, (80, 9)), r"reach .* > 1 \(a linear or dB mel\?\)"),
        ("hifigan", lambda: np.random.uniform(0, 1, (80, 9)), r"looks like a \[0, 1\] 'diffwave' mel"),
        ("hifigan", lambda: np.random.uniform(-80, 0, (80, 9)), r"outside the range"),
        ("diffwave", lambda: [[0.5] * 9] * 80, r"expected a numpy array or a torch tensor, got list"),
    ],
)
def test_mels_of_the_wrong_shape_dtype_or_range(preset, make, message):
    config = MelConfig.from_dict({"preset": preset})
    with pytest.raises(MelError, match=rf"^clip\.npy: .*{message}"):
        validate_mel(make(), config, source="clip.npy")


def test_mel_files_that_do_not_hold_a_mel(tmp_path):
    cases = {
        "ints.npy": lambda p: np.save(p, np.ones((80, 5), dtype=np.int32)),
        "truncated.npy": lambda p: (np.save(p, np.random.rand(80, 50)), p.write_bytes(p.read_bytes()[:200])),
        "text.npy": lambda p: p.write_text("0.1 0.2 0.3"),
        "dict.pt": lambda p: torch.save({"audio": torch.rand(10)}, p),
        "list.pt": lambda p: torch.save([1, 2, 3], p),
        "empty.pt": lambda p: p.write_bytes(b""),
        "mel.txt": lambda p: p.write_text("0.5"),
        "missing.npy": lambda p: None,
    }
    for name, make in cases.items():
        path = tmp_path / name
        make(path)
        with pytest.raises(MelError, match=rf"^{re.escape(str(path))}: "):
            load_mel_file(path)


# ------------------------------------------------------------------------------------------------ images


def test_files_that_are_not_images_are_skipped_with_a_count(tmp_path, caplog):
    from diffimage.data import ImageFolderDataset

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"ok{i}.png")
    (folder / "text.png").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    good = (folder / "ok0.png").read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.txt").write_text("ignored: not an image extension")
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(folder)
    assert len(ds) == 2 and ds.num_skipped == 3
    assert "skipped 3 unreadable image(s) of 5" in caplog.text
    for name in ("text.png", "empty.jpg", "cut.png"):
        assert name in caplog.text
    bad_only = tmp_path / "bad_only"
    bad_only.mkdir()
    (bad_only / "x.png").write_text("no")
    with pytest.raises(ValueError, match=r"no readable images under .*bad_only"):
        ImageFolderDataset(bad_only)
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")


def test_image_archives_that_are_not_archives(tmp_path):
    from diffimage.data import NpzImageDataset

    np.savez(tmp_path / "ok.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    cases = {
        "text.npz": b"hello",
        "empty.npz": b"",
        "cut.npz": (tmp_path / "ok.npz").read_bytes()[:100],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name}.*not a readable \.npz image archive"):
            NpzImageDataset(tmp_path / name)
    np.save(tmp_path / "single.npy", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"single\.npy.*not an \.npz archive"):
        NpzImageDataset(tmp_path / "single.npy")
    np.savez(tmp_path / "wrong.npz", pictures=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(KeyError, match=r"wrong\.npz.*no 'images' array \(keys: pictures\)"):
        NpzImageDataset(tmp_path / "wrong.npz")
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 8, 8), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        NpzImageDataset(tmp_path / "float.npz")


# ------------------------------------------------------------------------------------------------ checkpoints


def _wave_run(folder: Path) -> Path:
    cfg = DiffWaveConfig.from_dict(SMALL_WAVE)
    state = {"format": 1, "step": 1, "model": DiffWave(cfg).state_dict(), "ema": None,
             "config": {"model": cfg.to_dict()}}
    save_checkpoint(state, folder / "checkpoints", 1)
    return folder


def _image_run(folder: Path) -> Path:
    from diffimage.config import UNetConfig
    from diffimage.model import UNet

    cfg = UNetConfig.preset("tiny")
    state = {"format": 1, "step": 1, "model": UNet(cfg).state_dict(), "ema": None,
             "config": {"model": cfg.to_dict()}}
    save_checkpoint(state, folder / "checkpoints", 1)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"wave": _wave_run(root / "wave"), "image": _image_run(root / "image")}


def test_truncated_checkpoints_are_named_never_a_torch_traceback(tmp_path, runs):
    src = runs["wave"] / "checkpoints" / "step_00000001.pt"
    data = src.read_bytes()
    for cut in (0, 10, 100, len(data) // 3, len(data) - 10):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"cut{cut}\.pt: (is truncated, corrupt|no such)"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match=rf"cut{cut}\.pt"):
            load_for_inference(path)


def test_resuming_a_run_whose_checkpoint_is_damaged_names_it(tmp_path):
    cfg = TrainConfig(max_steps=2, batch_size=8, num_workers=0, device="cpu", progress=False, tensorboard=False,
                      ckpt_every=0)
    Trainer(ToyTask(), cfg, tmp_path).fit()
    ckpt = tmp_path / "checkpoints" / "step_00000002.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:500])  # damaged on disk (not by us: our writes are atomic)
    with pytest.raises(CheckpointError, match=r"step_00000002\.pt: is truncated, corrupt"):
        Trainer(ToyTask(), cfg.replace(max_steps=4), tmp_path).fit()


def test_a_checkpoint_of_another_model_is_named_with_what_it_is(runs):
    from diffimage import api as image_api
    from diffwave import api as wave_api
    from diffwave.lmnt import LmntImportError, load_lmnt_checkpoint

    with pytest.raises(CheckpointError, match=r"image.*not a DiffWave config"):
        wave_api.load(runs["image"], device="cpu")
    with pytest.raises(CheckpointError, match=r"wave.*not a diffimage U-Net config"):
        image_api.load(runs["wave"], device="cpu")
    with pytest.raises(LmntImportError, match=r"step_00000001\.pt: the weights do not fit"):
        load_lmnt_checkpoint(runs["image"] / "checkpoints" / "step_00000001.pt")
    assert isinstance(wave_api.load(runs["wave"], device="cpu").model, DiffWave)  # the right one loads


def test_digit_classifier_loader_refuses_another_checkpoint(runs):
    from diffwave.digits import load_digit_classifier

    with pytest.raises(ValueError, match=r"step_00000001\.pt: not a digit-classifier checkpoint"):
        load_digit_classifier(runs["wave"] / "checkpoints" / "step_00000001.pt")


# ------------------------------------------------------------------------------------------------ recipes


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  lr: 1e-4\n  max_step: 10\n", r"unknown key 'train\.max_step'; did you mean 'max_steps'"),
        ("model:\n  residual_layer: 3\n", r"unknown key 'model\.residual_layer'; did you mean 'residual_layers'"),
        ("train:\n  batch_size: sixteen\n", r"train\.batch_size: expected an integer, got 'sixteen'"),
        ("train:\n  lr: [1, 2]\n", r"train\.lr: expected a number"),
        ("train:\n  precision: fp8\n", r"train\.precision: 'fp8' is not one of"),
        ("data:\n  crop_frames: 0\n", r"data\.crop_frames must be at least 1"),
        ("model: 3\n", r"model: expected a mapping"),
        ("1: 2\n", r"key 1 is not a name"),
        ("model:\n  preset: [base]\n", r"unknown preset \['base'\]"),
        ("train: {lr: 2001-13-01}\n", r"not valid YAML"),
        ("train: [\n", r"not valid YAML"),
        ("- a\n- b\n", r"must hold a mapping at the top level"),
        ("a: &x [*x]\n", r"refers to a value that contains it"),
    ],
)
def test_recipes_with_unknown_keys_or_wrong_types(tmp_path, text, message):
    path = tmp_path / "my_recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"my_recipe\.yaml.*{message}"):
        load_recipe(DiffWaveRecipe, path)


def test_recipe_files_that_cannot_be_read(tmp_path):
    (tmp_path / "binary.yaml").write_bytes(b"\x00\xff\xfe garbage")
    with pytest.raises(ConfigError, match=r"binary\.yaml.*not UTF-8 text"):
        load_recipe(DiffWaveRecipe, tmp_path / "binary.yaml")
    with pytest.raises(ConfigError, match=r"absent\.yaml.*does not exist"):
        load_recipe(DiffWaveRecipe, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'"):
        load_recipe(DiffWaveRecipe, None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"train\.lr must be a finite number"):
        load_recipe(DiffWaveRecipe, None, ["train.lr=.nan"])


# ------------------------------------------------------------------------------------------------ no partial outputs


def _fail_replace(monkeypatch):
    def replace(src, dst, *args, **kwargs):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", replace)


def test_failed_writes_leave_no_partial_output_file(tmp_path, monkeypatch, runs):
    from diffimage.fid import FeatureStats
    from diffwave.preprocess import write_mel

    out = tmp_path / "out"
    out.mkdir()
    _fail_replace(monkeypatch)
    with pytest.raises(CheckpointError, match=r"a\.wav.*No space left"):  # one atomic writer for every output
        save_audio(out / "a.wav", np.zeros(100) + 0.1, SR)
    with pytest.raises(CheckpointError, match=r"m\.npy.*No space left"):
        write_mel(out / "m.npy", np.zeros((80, 4)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*No space left"):
        export(runs["wave"], out / "export")
    with pytest.raises(CheckpointError, match=r"stats\.npz.*No space left"):
        FeatureStats(mu=np.zeros(2), sigma=np.eye(2), n=3).save(out / "stats.npz")
    with pytest.raises(CheckpointError, match=r"x\.bin"):
        atomic_write(out / "x.bin", lambda f: f.write(b"123"))
    monkeypatch.undo()
    leftovers = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert leftovers == []


def test_a_writer_that_fails_half_way_leaves_the_old_file_untouched(tmp_path):
    target = tmp_path / "result.wav"
    save_audio(target, np.full(100, 0.25), SR)
    before = target.read_bytes()

    def half(f):
        f.write(b"RIFF")
        raise OSError(5, "Input/output error")

    with pytest.raises(CheckpointError, match=r"result\.wav.*Input/output error"):
        atomic_write(target, half)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["result.wav"]


# ------------------------------------------------------------------------------------------------ commands


@pytest.fixture(scope="module")
def wave_export(tmp_path_factory, runs):
    out = tmp_path_factory.mktemp("wave_export") / "export"
    export(runs["wave"], out)
    return out


def test_diffwave_vocode_bad_inputs(tmp_path, capsys, runs, wave_export):
    clip = tmp_path / "clip.wav"
    sf.write(clip, tone(22050, sr=22050), 22050)
    out = tmp_path / "vocoded"
    cases = [
        (["vocode", tmp_path / "nothere.wav", "-m", wave_export], "nothere.wav"),
        (["vocode", clip, "-m", tmp_path / "no_model"], "no_model"),
        (["vocode", clip, "-m", runs["image"]], "not a DiffWave config"),
    ]
    for argv, text in cases:
        code, err = _wave_cli(capsys, *argv, "--out", out)
        assert code == 2, err
        _error_line(err, text)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((runs["wave"] / "checkpoints" / "step_00000001.pt").read_bytes()[:3000])
    code, err = _wave_cli(capsys, "vocode", clip, "-m", truncated, "--out", out)
    assert code == 2
    _error_line(err, "truncated.pt")
    assert not out.exists() or list(out.rglob("*")) == []  # nothing was written for failed runs


def test_diffwave_vocode_reports_each_unusable_input_and_writes_the_rest(tmp_path, capsys, wave_export):
    good = tmp_path / "in" / "good.npy"
    good.parent.mkdir()
    np.save(good, np.random.default_rng(0).uniform(0.2, 0.8, (80, 6)).astype(np.float32))
    (tmp_path / "in" / "junk.wav").write_bytes(b"junk" * 50)
    np.save(tmp_path / "in" / "transposed.npy", np.random.rand(6, 80).astype(np.float32))
    out = tmp_path / "out"
    code, err = _wave_cli(capsys, "vocode", tmp_path / "in", "-m", wave_export, "--out", out, "--steps", "fast")
    assert code != 0 and "Traceback" not in err
    assert "junk.wav" in err and "transposed.npy" in err and "transposed?" in err
    written = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert written == ["good.wav"]  # the usable input was vocoded, no partial file for the others


def test_diffwave_train_and_preprocess_bad_recipes_and_data(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  max_step: 3\n")
    code, err = _wave_cli(capsys, "train", "--recipe", recipe, "--run-dir", tmp_path / "run")
    assert code == 2
    _error_line(err, "bad.yaml", "max_steps")
    recipe.write_text(yaml.safe_dump({"model": SMALL_WAVE}))
    code, err = _wave_cli(capsys, "train", "--recipe", recipe, "--run-dir", tmp_path / "run", "train.batch_size=big")
    assert code == 2
    _error_line(err, "train.batch_size", "integer")
    (tmp_path / "empty").mkdir()
    code, err = _wave_cli(capsys, "preprocess", "--data", tmp_path / "empty", "--out", tmp_path / "cache")
    assert code == 2
    _error_line(err, "empty", "no audio files")


def test_diffimage_commands_bad_inputs(tmp_path, capsys, runs):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model:\n  image_sise: 16\n")
    code, err = _image_cli(capsys, "train", "--recipe", recipe, "--run-dir", tmp_path / "run")
    assert code == 2
    _error_line(err, "bad.yaml", "image_size")
    for model, text in ((runs["wave"], "not a diffimage U-Net config"), (tmp_path / "none", "none")):
        code, err = _image_cli(capsys, "sample", "--model", model, "--out", tmp_path / "samples")
        assert code == 2, err
        _error_line(err, text)
    assert not (tmp_path / "samples").exists()


def test_commands_exit_2_without_a_traceback_in_a_real_process(tmp_path):
    """The same promise through ``python -m``: status 2, one line on stderr, no traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("DIFFSTACK_DEBUG", None)
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02junk")
    proc = subprocess.run([sys.executable, "-m", "diffwave.cli", "vocode", tmp_path / "missing.wav", "-m",
                           tmp_path / "junk.pt"], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    _error_line(proc.stderr, "missing.wav")
    (tmp_path / "clip.wav").write_bytes(b"RIFF")
    proc = subprocess.run([sys.executable, "-m", "diffwave.cli", "vocode", tmp_path / "clip.wav", "-m",
                           tmp_path / "junk.pt"], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    _error_line(proc.stderr, "junk.pt")
