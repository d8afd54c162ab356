import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from diffwave import data as D
from diffwave.audio import AudioError, load_audio, save_audio
from diffwave.data import (
    AudioMelDataset,
    UnconditionalAudioDataset,
    fsdd_files,
    fsdd_label,
    ljspeech_files,
    sc09_files,
)
from diffwave.mel import MelConfig, compute_mel
from diffwave.preprocess import mel_cache_path, preprocess
from diffwave.synth import make_dataset, speech_like

HOP = 256


@pytest.fixture(scope="module")
def lj(shared_data):
    files = ljspeech_files(shared_data / "ljspeech")
    return files[:3]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three 1.5 s speech-like clips at 22050 Hz (tests of the pipeline that need no shared data)."""
    return make_dataset(tmp_path_factory.mktemp("synth"), 3, 1.5, 22050, seed=0)


def _find_start(full: torch.Tensor, crop: torch.Tensor, hop: int) -> int:
    starts = [k for k in range(len(full) // hop) if torch.equal(full[k * hop : k * hop + len(crop)], crop)]
    assert len(starts) == 1
    return starts[0]


@pytest.mark.parametrize("preset", ["diffwave", "hifigan"])
def test_crops_are_aligned_slices_of_the_whole_clip_mel(lj, preset):
    cfg = MelConfig.from_dict({"preset": preset})
    ds = AudioMelDataset(lj, cfg, crop_frames=20, generator=torch.Generator().manual_seed(0))
    assert len(ds) == 3
    for i in range(3):
        item = ds[i]
        assert item["audio"].shape == (20 * HOP,) and item["mel"].shape == (80, 20)
        wav, _ = load_audio(lj[i], 22050)
        start = _find_start(wav, item["audio"], HOP)
        full_mel = compute_mel(wav, cfg)
        assert torch.equal(item["mel"], full_mel[:, start : start + 20])
    whole = AudioMelDataset(lj, cfg, crop_frames=None)[0]
    n = len(load_audio(lj[0])[0]) // HOP
    assert whole["audio"].shape == (n * HOP,) and whole["mel"].shape == (80, n)  # trimmed to frames * hop exactly


@pytest.mark.parametrize("preset, frames", [("hifigan", {10}), ("diffwave", {10, 11})])
def test_frame_i_describes_samples_i_hop_to_i_plus_1_hop(tmp_path, preset, frames):
    """A burst in samples [10*hop, 11*hop) of a quiet clip is loudest in frame 10 (hifigan: frames are centred on
    the hop block) or frames 10 and 11 (diffwave: centred on the block's edges, both see the burst equally)."""
    rng = np.random.default_rng(0)
    x = 1e-3 * rng.standard_normal(40 * HOP)
    x[10 * HOP : 11 * HOP] += 0.5 * rng.standard_normal(HOP)
    save_audio(tmp_path / "burst.wav", x, 22050, subtype="FLOAT")
    item = AudioMelDataset([tmp_path / "burst.wav"], MelConfig.from_dict({"preset": preset}), crop_frames=None)[0]
    energy = item["mel"].mean(0)
    top = set(torch.topk(energy, len(frames)).indices.tolist())
    assert top == frames


def test_unusable_files_are_reported_and_skipped(clips, tmp_path, caplog):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF????WAVEjunk" * 10)
    (tmp_path / "empty.wav").write_bytes(b"")
    nan = speech_like(2.0, 22050, seed=0).numpy()
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 22050, subtype="FLOAT")  # header fine: fails only when read
    files = [clips[0], tmp_path / "corrupt.wav", clips[1], tmp_path / "empty.wav", tmp_path / "nan.wav"]
    with caplog.at_level(logging.WARNING, logger="diffwave.data"):
        ds = AudioMelDataset(files, MelConfig.diffwave(), crop_frames=16)
    assert len(ds) == 3 and len(ds.skipped) == 2
    assert "corrupt.wav" in caplog.text and "empty.wav" in caplog.text and "skipped 2 unusable" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffwave.data"):
        items = [ds[i] for i in range(len(ds))]
    assert "nan.wav" in caplog.text and ds.bad == {2}
    wav0, _ = load_audio(clips[0])
    _find_start(wav0, items[2]["audio"], HOP)  # the failed item was replaced by the next usable clip
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["audio"].shape == (3, 16 * HOP) and batch["mel"].shape == (3, 80, 16)


def test_short_clips_are_padded_or_dropped_and_counted(tmp_path, caplog):
    for name, seconds in [("long.wav", 1.0), ("short.wav", 0.2), ("tiny.wav", 0.03)]:
        save_audio(tmp_path / name, speech_like(seconds, 22050, seed=1), 22050)
    files = sorted(tmp_path.glob("*.wav"))  # long, short, tiny
    with caplog.at_level(logging.WARNING, logger="diffwave.data"):
        padded = AudioMelDataset(files, MelConfig.diffwave(), crop_frames=62)
    # tiny (661 samples = 2 frames) is too short for any mel and dropped; short (17 frames) padded
    assert len(padded) == 2 and (padded.num_dropped, padded.num_padded) == (1, 1)
    assert "dropped 1 clip" in caplog.text and "1 clip(s) shorter than 62 frames will be zero-padded" in caplog.text
    item = padded[1]
    assert item["audio"].shape == (62 * HOP,) and item["mel"].shape == (80, 62)
    n = int(0.2 * 22050)
    assert torch.all(item["audio"][n:] == 0) and item["audio"][:n].abs().max() > 0.1
    assert torch.all(item["mel"][:, -5:] == 0)  # the diffwave mel of silence is its floor
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffwave.data"):
        dropped = AudioMelDataset(files, MelConfig.diffwave(), crop_frames=62, pad_short=False)
    assert len(dropped) == 1 and dropped.num_dropped == 2 and "dropped 2 clip" in caplog.text
    with pytest.raises(AudioError, match="shorter than"):
        AudioMelDataset(files[1:], MelConfig.diffwave(), crop_frames=62, pad_short=False)


def test_other_rates_are_resampled_with_one_summary(tmp_path, caplog):
    save_audio(tmp_path / "a16k.wav", speech_like(1.0, 16000, seed=2), 16000)
    with caplog.at_level(logging.WARNING):
        ds = AudioMelDataset([tmp_path / "a16k.wav"] * 3, MelConfig.diffwave(), crop_frames=None)
        items = [ds[i] for i in range(3)]
    assert caplog.text.count("will be resampled") == 1 and "16000 Hz" in caplog.text
    assert "resampling" not in caplog.text  # no per-item warnings
    assert items[0]["audio"].shape == (22050 // HOP * HOP,)
    strict = pytest.raises(AudioError, match="none of the 1 files")
    with strict:
        AudioMelDataset([tmp_path / "a16k.wav"], MelConfig.diffwave(), strict=True)


def test_preprocess_caches_mels_that_the_dataset_reuses(clips, tmp_path):
    (tmp_path / "corrupt.flac").write_bytes(os.urandom(3000))
    cache = tmp_path / "cache"
    files = [*clips, tmp_path / "corrupt.flac"]
    cfg = MelConfig.diffwave()
    summary = preprocess(files, cache, cfg, num_workers=2, progress=False)
    assert (summary["total"], summary["computed"], summary["cached"], summary["failed"]) == (4, 3, 0, 1)
    assert "corrupt.flac" in summary["failures"][0][0] and "corrupt" in summary["failures"][0][1]
    for f in clips:
        cached = np.load(mel_cache_path(f, cfg, cache))
        assert np.array_equal(cached, compute_mel(load_audio(f)[0], cfg).numpy())
    again = preprocess(files, cache, cfg, num_workers=0, progress=False)
    assert (again["computed"], again["cached"], again["failed"]) == (0, 3, 1)
    # a different config never reuses a stale mel
    hifi = MelConfig.hifigan()
    assert mel_cache_path(clips[0], hifi, cache) != mel_cache_path(clips[0], cfg, cache)
    assert mel_cache_path(clips[0], cfg.replace(n_mels=64), cache) != mel_cache_path(clips[0], cfg, cache)
    assert preprocess(clips, cache, hifi, num_workers=0, progress=False)["computed"] == 3
    # nor a mel of a file that changed since (size and modification time are part of the key)
    copy = tmp_path / "copy.wav"
    copy.write_bytes(clips[0].read_bytes())
    before = mel_cache_path(copy, cfg, cache)
    os.utime(copy, ns=(0, 10**9))
    assert mel_cache_path(copy, cfg, cache) != before

    # the dataset reads the cache: plant a recognisable mel and see it come back
    target = mel_cache_path(clips[0], cfg, cache)
    planted = np.load(target)
    planted[:] = 0.5
    np.save(target, planted)
    item = AudioMelDataset([clips[0]], cfg, crop_frames=8, cache_dir=cache)[0]
    assert torch.all(item["mel"] == 0.5)
    # and fills it for files that were never preprocessed
    fresh = tmp_path / "fresh"
    AudioMelDataset([clips[1]], cfg, crop_frames=8, cache_dir=fresh)[0]
    assert mel_cache_path(clips[1], cfg, fresh).is_file()


def test_unconditional_dataset_pads_and_crops_to_a_fixed_length(shared_data, tmp_path):
    files = fsdd_files(shared_data / "fsdd", "train")[:6]
    ds = UnconditionalAudioDataset(files, 8000, 8000, labels=[fsdd_label(f) for f in files])
    for i, f in enumerate(files):
        item = ds[i]
        wav, _ = load_audio(f)
        assert item["audio"].shape == (8000,) and item["label"] == int(f.name[0])
        if len(wav) < 8000:
            assert torch.equal(item["audio"][: len(wav)], wav) and torch.all(item["audio"][len(wav) :] == 0)
    long = tmp_path / "long.wav"
    save_audio(long, speech_like(2.0, 8000, seed=3), 8000, subtype="FLOAT")
    wav, _ = load_audio(long)
    centre = UnconditionalAudioDataset([long], 8000, 8000, crop="center")[0]["audio"]
    assert torch.equal(centre, wav[4000:12000])
    rand = UnconditionalAudioDataset([long], 8000, 8000, generator=torch.Generator().manual_seed(1))[0]["audio"]
    assert len(rand) == 8000 and _find_start(wav, rand, 1) >= 0


def test_layouts_of_the_shared_data(shared_data):
    lj_all = ljspeech_files(shared_data / "ljspeech")
    assert len(lj_all) == 24 and lj_all == sorted(lj_all) and lj_all[0].name == "LJ001-0001.wav"
    assert ljspeech_files(shared_data / "ljspeech" / "wavs") == lj_all
    train = fsdd_files(shared_data / "fsdd", "train")
    assert len(train) == 2700 and fsdd_files(shared_data / "fsdd", "test") == []  # only indices 5-49 are shared


def test_layouts(tmp_path, caplog):
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for name in ["3_jackson_0.wav", "3_jackson_4.wav", "3_jackson_5.wav", "7_theo_49.wav", "readme.wav"]:
        (rec / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert [p.name for p in fsdd_files(tmp_path / "fsdd", "test")] == ["3_jackson_0.wav", "3_jackson_4.wav"]
    assert "ignored 1" in caplog.text
    assert [p.name for p in fsdd_files(rec, "train")] == ["3_jackson_5.wav", "7_theo_49.wav"]
    assert len(fsdd_files(rec, "all")) == 4 and fsdd_label(rec / "7_theo_49.wav") == 7

    lj_root = tmp_path / "LJSpeech-1.1"
    (lj_root / "wavs").mkdir(parents=True)
    for i in ("LJ002-0001", "LJ001-0001"):
        (lj_root / "wavs" / f"{i}.wav").write_bytes(b"")
    (lj_root / "metadata.csv").write_text("LJ002-0001|a|a\nLJ009-0009|b|b\nLJ001-0001|c|c\n")
    assert [p.stem for p in ljspeech_files(lj_root)] == ["LJ002-0001", "LJ001-0001"]  # metadata order, missing out

    sc = tmp_path / "SpeechCommands" / "speech_commands_v0.02"
    for rel in ["zero/a_nohash_0.wav", "zero/b_nohash_0.wav", "nine/c_nohash_1.wav", "yes/d_nohash_0.wav"]:
        (sc / rel).parent.mkdir(parents=True, exist_ok=True)
        (sc / rel).write_bytes(b"")
    (sc / "testing_list.txt").write_text("zero/b_nohash_0.wav\nyes/d_nohash_0.wav\n")
    (sc / "validation_list.txt").write_text("nine/c_nohash_1.wav\n")
    assert [p.name for p in sc09_files(tmp_path, "train")] == ["a_nohash_0.wav"]
    assert [p.name for p in sc09_files(tmp_path, "test")] == ["b_nohash_0.wav"]
    assert [p.name for p in sc09_files(sc, "valid")] == ["c_nohash_1.wav"]
    assert len(sc09_files(sc, "all")) == 3  # "yes" is not a digit
    assert callable(D.download_ljspeech) and callable(D.download_speechcommands)  # need network: not called here
