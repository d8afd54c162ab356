"""Bad input, second pass (issue 10): the cases a new user broke from outside, one test per class.

Each class keeps the promise of README's Reliability section: one ``error: ...`` line naming the file and the
problem, exit status 2, nothing partial written, nothing lost, and no silently wrong result with exit status 0.
Classes: data loss (run-folder lock, resume validation, --out and export targets), silent wrong results (16-bit
images, NaN options, short WAV headers, labels), memory (size bounds, vocoding length, decompression bombs),
tracebacks (full or read-only disks, devices, malformed exports and pointers, lmnt files, big-endian mels, GSM) and
consistency (one atomic writer, file modes, messages)."""

import json
import logging
import os
import re
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from diffcore.checkpoint import CheckpointError, export, find_latest, load_for_inference, save_checkpoint
from diffcore.config import ConfigError
from diffcore.train import TrainConfig, Trainer
from diffcore.train.lock import RunLock, RunLockedError
from diffcore.train.toy import ToyTask
from diffwave.config import DiffWaveConfig
from diffwave.model import DiffWave

from cli_helpers import error_line as _error_line, image_cli as _image_cli, wave_cli as _wave_cli

REPO = Path(__file__).resolve().parents[1]
SMALL_WAVE = {"preset": "tiny", "residual_layers": 2, "residual_channels": 4, "dilation_cycle": 2,
              "embedding_hidden": 16}


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=4, batch_size=8, lr=1e-2, num_workers=0, log_every=1, ckpt_every=2, keep_last=3,
                device="cpu", progress=False, tensorboard=False, ema_decay=0.9, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# =============================================================================================== data loss


def test_a_second_training_on_a_live_run_folder_is_refused_naming_the_folder_and_the_pid(tmp_path):
    run = tmp_path / "run"
    holder = RunLock(run).acquire()  # a live training (this very process) holds the folder
    try:
        with pytest.raises(RunLockedError, match=rf"{re.escape(str(run))}.*PID {os.getpid()}"):
            Trainer(ToyTask(), cfg(), run).fit()
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing of the refused run was written
    finally:
        holder.release()
    summary = Trainer(ToyTask(), cfg(), run).fit()  # released: the same command now works
    assert summary["step"] == 4 and not (run / ".lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".lock").write_text(f"pid {proc.stdout.strip()} host elsewhere\n")  # its process is gone
    assert Trainer(ToyTask(), cfg(), run).fit()["step"] == 4


def test_two_training_processes_on_one_folder_one_refuses(tmp_path):
    """Two real processes: the second exits 2 naming the holder's PID while the first keeps its folder."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    hold = ("import sys, time; from diffcore.train.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    first = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "held"
        recipe = tmp_path / "r.yaml"
        recipe.write_text(yaml.safe_dump({"model": SMALL_WAVE, "train": {"max_steps": 1, "batch_size": 1}}))
        data = tmp_path / "data"
        data.mkdir()
        for i in range(2):
            sf.write(data / f"{i}.wav", 0.3 * np.sin(np.arange(22050) * (0.05 + 0.01 * i)), 22050)
        proc = subprocess.run([sys.executable, "-m", "diffwave.cli", "train", "--recipe", str(recipe), "--run-dir",
                               str(run), "--data", str(data)], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 2, proc.stderr
        _error_line(proc.stderr, str(run), f"PID {first.pid}")
    finally:
        first.kill()
        first.wait()


def test_a_refused_model_change_on_resume_writes_nothing_and_the_same_command_still_works(tmp_path):
    run = tmp_path / "run"
    Trainer(ToyTask(), cfg(), run).fit()
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match="different model config.*hidden"):
        Trainer(ToyTask(hidden=16), cfg(max_steps=6), run).fit()
    assert _snapshot(run) == before  # config.yaml, log and checkpoints untouched
    assert Trainer(ToyTask(), cfg(max_steps=6), run).fit()["step"] == 6


def test_changed_run_time_fields_on_resume_are_warned_about_with_old_and_new_values(tmp_path, caplog):
    run = tmp_path / "run"
    Trainer(ToyTask(), cfg(), run).fit()
    with caplog.at_level(logging.WARNING, logger="diffcore.train"):
        Trainer(ToyTask(n=32), cfg(max_steps=6, lr=5e-3), run).fit()
    text = caplog.text
    assert re.search(r"train\.lr changed on resume: 0\.01 -> 0\.005", text), text
    assert re.search(r"data\.n changed on resume: 64 -> 32", text), text
    assert "max_steps changed on resume: 4 -> 6" in text
    events = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines() if ln.strip()]
    assert {e.get("key") for e in events if e.get("event") == "config_changed"} >= {"train.lr", "data.n"}


def test_export_refuses_a_run_folder_a_file_and_a_folder_of_other_files(tmp_path):
    run = tmp_path / "run"
    Trainer(ToyTask(), cfg(), run).fit()
    before = _snapshot(run)
    with pytest.raises(CheckpointError, match="run folder"):
        export(run, run)
    with pytest.raises(CheckpointError, match="run folder"):
        export(run, run / "checkpoints")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="notes.txt: is a file"):
        export(run, tmp_path / "notes.txt")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"cat")
    with pytest.raises(CheckpointError, match="photos: already holds other files \\(cat.jpg"):
        export(run, tmp_path / "photos")
    assert _snapshot(run) == before and (tmp_path / "notes.txt").read_text() == "mine"
    out = export(run, tmp_path / "exp")
    assert export(run, out) == out  # an export folder is what export writes: replacing it is fine
    assert find_latest(run).name == "step_00000004.pt"


@pytest.fixture(scope="module")
def wave_run(tmp_path_factory) -> Path:
    """A tiny mel-conditioned DiffWave run folder (one checkpoint) and its export."""
    folder = tmp_path_factory.mktemp("wave") / "run"
    config = DiffWaveConfig.from_dict(SMALL_WAVE)
    state = {"format": 1, "step": 1, "model": DiffWave(config).state_dict(), "ema": None,
             "config": {"model": config.to_dict()}}
    save_checkpoint(state, folder / "checkpoints", 1)
    return folder


@pytest.fixture(scope="module")
def wave_export(wave_run, tmp_path_factory) -> Path:
    return export(wave_run, tmp_path_factory.mktemp("wave_export") / "export")


def _mel(frames: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 0.8, (80, frames)).astype(np.float32)


def test_vocode_out_refuses_an_unrelated_existing_file_and_keeps_it(tmp_path, capsys, wave_export):
    np.save(tmp_path / "m.npy", _mel())
    for name in ("notes.txt", "photo.png"):
        victim = tmp_path / name
        victim.write_text("precious")
        code, err = _wave_cli(capsys, "vocode", tmp_path / "m.npy", "-m", wave_export, "--out", victim)
        assert code == 2
        _error_line(err, name)
        assert victim.read_text() == "precious"
    (tmp_path / "old.wav").write_bytes(b"an earlier output")  # a .wav is what vocode writes: it is replaced
    code, err = _wave_cli(capsys, "vocode", tmp_path / "m.npy", "-m", wave_export, "--out", tmp_path / "old.wav")
    assert code == 0, err
    assert sf.info(str(tmp_path / "old.wav")).frames == 6 * 256


# ======================================================================================= silent wrong results


def test_sixteen_bit_and_other_deep_grey_images_are_scaled_by_their_bit_depth(tmp_path):
    from PIL import Image

    from diffimage.data import ImageFolderDataset

    ramp = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    Image.fromarray(np.round(ramp * 65535).astype(np.uint16)).save(tmp_path / "a16.png")  # mode I;16
    Image.fromarray(np.round(ramp * 65535).astype(np.int32), "I").save(tmp_path / "b32.tiff")  # mode I, 16-bit data
    Image.fromarray(np.round(ramp * 255).astype(np.uint8)).save(tmp_path / "c8.png")
    Image.fromarray(ramp.astype(np.float32), "F").save(tmp_path / "d.tiff")  # float in [0, 1]
    expected = np.round(ramp * 255)
    for channels in (1, 3):
        ds = ImageFolderDataset(tmp_path, channels=channels)
        assert [p.name for p in ds.files] == ["a16.png", "b32.tiff", "c8.png", "d.tiff"]
        for i in range(4):
            img = ds.load(i).numpy().astype(np.float64)
            assert img.shape == (channels, 16, 16)
            assert np.abs(img - expected).max() <= 1, (ds.files[i].name, img.mean(), expected.mean())


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 2.5, 1]), r"labels\[2\] is 2\.5"),
    (np.array([0, -3, 1, 1]), r"labels\[1\] is -3"),
    (np.array(["a", "b", "c", "d"]), "must be integers"),
    (np.array([True, False, True, False]), "must be integers"),
    (np.array([0, 1, np.nan, 1]), r"labels\[2\] is nan"),
])
def test_labels_that_are_not_class_indices_are_refused_naming_the_file_and_value(tmp_path, labels, message):
    from diffimage.config import UNetConfig
    from diffimage.data import build_datasets
    from diffimage.recipe import ImageDataConfig

    path = tmp_path / "data.npz"
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8), labels=labels)
    model = UNetConfig.preset("tiny", image_size=8, in_channels=1, num_classes=3)
    with pytest.raises(ConfigError, match=rf"data\.npz.*{message}"):
        build_datasets(ImageDataConfig.from_dict({"source": "npz", "path": str(path)}), model)


def test_labels_at_or_above_num_classes_are_refused_naming_the_file(tmp_path):
    from diffimage.config import UNetConfig
    from diffimage.data import build_datasets
    from diffimage.recipe import ImageDataConfig

    path = tmp_path / "data.npz"
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 3, 1]))
    model = UNetConfig.preset("tiny", image_size=8, in_channels=1, num_classes=3)
    with pytest.raises(ConfigError, match=r"data\.npz.*label 3 is outside \[0, model\.num_classes=3\)"):
        build_datasets(ImageDataConfig.from_dict({"source": "npz", "path": str(path)}), model)
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 1, 2.0, 1]))  # whole floats are fine
    assert build_datasets(ImageDataConfig.from_dict({"source": "npz", "path": str(path)}), model)[0][2]["label"] == 2


def test_a_wav_header_that_under_states_its_data_is_warned_about_naming_the_file(tmp_path, caplog):
    from diffwave.audio import load_audio

    x = 0.3 * np.sin(np.arange(16000) * 0.05)
    sf.write(tmp_path / "full.wav", x, 16000, subtype="PCM_16")
    data = bytearray((tmp_path / "full.wav").read_bytes())
    at = data.find(b"data")
    size = struct.unpack("<I", data[at + 4 : at + 8])[0]
    data[at + 4 : at + 8] = struct.pack("<I", size // 4)
    (tmp_path / "short_header.wav").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="diffwave.audio"):
        wav, _ = load_audio(tmp_path / "short_header.wav")
    assert wav.shape == (4000,)
    assert "short_header.wav" in caplog.text and "25%" in caplog.text
    caplog.clear()
    sf.write(tmp_path / "tagged.wav", x, 16000, subtype="PCM_16")  # a LIST chunk after the data is no problem
    with open(tmp_path / "tagged.wav", "ab") as f:
        f.write(b"LIST" + struct.pack("<I", 2000) + bytes(2000))
    with caplog.at_level(logging.WARNING, logger="diffwave.audio"):
        assert load_audio(tmp_path / "full.wav")[0].shape == (16000,)
        load_audio(tmp_path / "tagged.wav")
    assert "announces" not in caplog.text


@pytest.mark.parametrize("suffix", [".flac", ".wav"])
def test_a_single_input_with_an_audio_suffix_out_writes_that_file(tmp_path, capsys, wave_export, suffix):
    np.save(tmp_path / "m.npy", _mel())
    out = tmp_path / f"speech{suffix}"
    code, err = _wave_cli(capsys, "vocode", tmp_path / "m.npy", "-m", wave_export, "--out", out)
    assert code == 0, err
    assert out.is_file() and sf.info(str(out)).format == suffix[1:].upper()
    assert sf.info(str(out)).frames == 6 * 256
    np.save(tmp_path / "n.npy", _mel(seed=1))
    code, err = _wave_cli(capsys, "vocode", tmp_path / "m.npy", tmp_path / "n.npy", "-m", wave_export, "--out",
                          tmp_path / f"two{suffix}")
    assert code == 2
    _error_line(err, "names one file", "2 inputs")


OPTION_CASES = [  # (command, option, value, the option named in the error)
    ("vocode", "--batch-size", "0", "--batch-size"), ("vocode", "--batch-size", "-3", "--batch-size"),
    ("vocode", "--batch-size", "100000000", "--batch-size"), ("vocode", "--max-frames", "0", "--max-frames"),
    ("vocode", "--max-frames", "4", "--max-frames"), ("vocode", "--seed", "-1", "--seed"),
    ("generate", "--n", "0", "--n"), ("generate", "--n", "-5", "--n"), ("generate", "--seconds", "nan", "--seconds"),
    ("generate", "--seconds", "inf", "--seconds"), ("generate", "--seconds", "-1", "--seconds"),
    ("generate", "--batch-size", "0", "--batch-size"),
    ("evaluate", "--n", "-1", "--n"), ("evaluate", "--n", "0", "--n"),
    ("evaluate", "--max-seconds", "nan", "--max-seconds"), ("evaluate", "--gl-iters", "0", "--gl-iters"),
    ("quickstart", "--minutes", "nan", "--minutes"), ("quickstart", "--minutes", "0", "--minutes"),
    ("quickstart", "--steps", "-2", "--steps"),
]


@pytest.mark.parametrize("command, option, value, named", OPTION_CASES)
def test_numeric_options_out_of_range_are_one_error_line(tmp_path, capsys, wave_export, command, option, value,
                                                         named):
    np.save(tmp_path / "m.npy", _mel())
    args = {"vocode": [tmp_path / "m.npy", "-m", wave_export, "--out", tmp_path / "o"],
            "generate": ["-m", wave_export, "--out", tmp_path / "o"],
            "evaluate": ["-m", wave_export, "--data", tmp_path, "--out", tmp_path / "o"],
            "quickstart": ["--out", tmp_path / "o"]}[command]
    code, err = _wave_cli(capsys, command, *args, option, value)
    assert code == 2, err
    _error_line(err, named)
    assert not (tmp_path / "o").exists()


def test_preprocess_refuses_a_cache_folder_that_is_a_file_or_under_one(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "a.wav", 0.3 * np.sin(np.arange(22050) * 0.05), 22050)
    (tmp_path / "file.txt").write_text("x")
    for out, text in ((tmp_path / "file.txt", "is a file, not a folder"),
                      (tmp_path / "file.txt" / "cache", "file.txt is a file")):
        code, err = _wave_cli(capsys, "preprocess", "--data", data, "--out", out)
        assert code == 2
        _error_line(err, text)
    assert (tmp_path / "file.txt").read_text() == "x"


@pytest.mark.parametrize("option, value", [("--eta", "nan"), ("--eta", "-1"), ("--eta", "inf"),
                                           ("--guidance-scale", "nan"), ("--steps", "0"), ("--steps", "10000000"),
                                           ("--batch-size", "0"), ("--n", "0"), ("--n", "-4"), ("--nrow", "0"),
                                           ("--seed", "-1"), ("--device", "gpu"), ("--device", "bogus")])
def test_diffimage_sample_options_out_of_range_are_one_error_line(tmp_path, capsys, option, value):
    code, err = _image_cli(capsys, "sample", "-m", tmp_path / "no_model", "--out", tmp_path / "o", option, value)
    assert code == 2, err
    _error_line(err, option if option != "--device" else value)
    assert not (tmp_path / "o").exists()


# ==================================================================================================== memory


@pytest.mark.parametrize("field, value", [("residual_channels", 1e9), ("residual_layers", 100000),
                                          ("n_mels", 10**8), ("embedding_hidden", 10**9)])
def test_size_fields_of_an_export_config_are_bounded_before_anything_is_built(tmp_path, wave_export, field, value):
    from diffwave.api import load

    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((wave_export / "config.json").read_text())
    config["model"][field] = value
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((wave_export / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=rf"bad.*{field}.*larger than the limit"):
        load(bad, "cpu")


def test_a_huge_schedule_in_a_recipe_or_export_is_refused_with_the_field_named(tmp_path, wave_export):
    from diffcore.config import load_recipe
    from diffwave.api import load
    from diffwave.recipe import DiffWaveRecipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {**SMALL_WAVE, "diffusion": {"num_steps": 10**9}}}))
    with pytest.raises(ConfigError, match=r"r\.yaml.*num_steps = 1e\+09 is larger than the limit 100000"):
        load_recipe(DiffWaveRecipe, recipe)
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((wave_export / "config.json").read_text())
    config["model"]["inference_betas"] = [0.5] * 200_000
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((wave_export / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"inference_betas: a list of 200000 items is longer than the limit"):
        load(bad, "cpu")


def test_lmnt_params_asking_for_huge_sizes_or_schedules_are_refused_early(tmp_path):
    from diffwave.lmnt import LmntImportError, load_lmnt_checkpoint

    cases = {"residual_channels": 10**9, "residual_layers": 10**6, "noise_schedule": [1e-4] * (10**7 // 50),
             "inference_noise_schedule": [0.5] * 200_001}
    for key, value in cases.items():
        path = tmp_path / f"{key}.pt"
        torch.save({"model": {}, "params": {key: value}, "step": 0}, path)
        with pytest.raises(LmntImportError, match=rf"{key}"):
            load_lmnt_checkpoint(path)


def test_vocoding_a_long_mel_keeps_each_network_call_within_the_memory_budget():
    """Memory is bounded by the window, not the input: no call holds more windows than CALL_BYTES allows (a 20k-
    frame mel at 16 windows per call took 9 GB), and the chunked result does not depend on the calls' grouping."""
    from diffwave import sample as sampling
    from diffwave.sample import ACTIVATION_FLOATS, CALL_BYTES, ChunkedNetwork

    config = DiffWaveConfig.preset("tiny")
    model = DiffWave(config).eval()
    mel = torch.rand(config.n_mels, 20_000)
    den = ChunkedNetwork(model, [mel], batch_size=16)
    assert den.num_windows >= 20
    for mels, starts, weights in den.calls:
        per_window = weights.shape[-1] * config.residual_channels * 4 * ACTIVATION_FLOATS
        assert len(starts) == 1 or len(starts) * per_window <= CALL_BYTES
    assert max(len(s) for _, s, _ in den.calls) < 16
    # the grouping changes nothing: a short mel with a small budget gives the same ε as one call per length
    small = DiffWaveConfig.from_dict(SMALL_WAVE)
    net = DiffWave(small).eval()
    m = torch.rand(small.n_mels, 300)
    x = torch.randn(1, 300 * small.hop_length)
    t = torch.tensor([3])
    with torch.no_grad():
        ref = ChunkedNetwork(net, [m], max_frames=40, batch_size=64)(x, t)
        saved = sampling.CALL_BYTES
        try:
            sampling.CALL_BYTES = 1
            one = ChunkedNetwork(net, [m], max_frames=40, batch_size=64)
            assert max(len(s) for _, s, _ in one.calls) == 1
            got = one(x, t)
        finally:
            sampling.CALL_BYTES = saved
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_decompression_bombs_in_an_image_folder_are_skipped_and_counted(tmp_path, monkeypatch, caplog):
    from PIL import Image

    from diffimage.data import ImageFolderDataset

    for name, side in (("ok.png", 8), ("warns.png", 40), ("bomb.png", 64)):
        Image.fromarray(np.full((side, side), 100, np.uint8)).save(tmp_path / name)
    # PIL warns above MAX_IMAGE_PIXELS and raises above twice that: 1600 > 1000 warns, 4096 > 2000 raises
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with caplog.at_level(logging.WARNING, logger="diffimage.data"):
        ds = ImageFolderDataset(tmp_path, channels=1)
    assert [p.name for p in ds.files] == ["ok.png"] and ds.num_skipped == 2
    assert "bomb.png" in caplog.text and "warns.png" in caplog.text
    late = ImageFolderDataset(tmp_path, channels=1, verify=False)  # found only when decoded: skipped and counted
    assert len(late) == 3
    items = [late[i]["image"] for i in range(3)]
    assert all(it.shape == (1, 8, 8) for it in items) and late.num_skipped == 2


# ========================================================================================= tracebacks → errors


def _fail_nth_replace(monkeypatch, n: int, errno_: int = 28, text: str = "No space left on device"):
    real = os.replace
    calls = {"n": 0}

    def replace(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] >= n:
            raise OSError(errno_, text, str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


def test_a_full_disk_during_vocode_is_one_line_saying_which_outputs_are_complete(tmp_path, capsys, monkeypatch,
                                                                                   wave_export):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        np.save(inputs / f"m{i}.npy", _mel(seed=i))
    out = tmp_path / "out"
    _fail_nth_replace(monkeypatch, 2)
    code, err = _wave_cli(capsys, "vocode", inputs, "-m", wave_export, "--out", out, "--batch-size", "1")
    monkeypatch.undo()
    assert code == 2
    line = _error_line(err, "m1.wav", "No space left on device", "1 of 3 output(s) are complete", "m0.wav")
    assert sorted(p.name for p in out.iterdir()) == ["m0.wav"], line  # no temporary or partial file
    assert sf.info(str(out / "m0.wav")).frames == 6 * 256


def test_unwritable_outputs_are_found_before_any_work(tmp_path, capsys, monkeypatch, wave_export):
    """A read-only folder, a path under a file, a folder named like the output file, too little free space: each is
    an error before the model is even loaded."""
    import shutil

    import diffwave.api

    np.save(tmp_path / "m.npy", _mel())
    monkeypatch.setattr(diffwave.api, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder.wav").mkdir()
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: Path(p) != readonly and real_access(p, mode))
    cases = [(tmp_path / "file.txt" / "sub", "file.txt is a file"),
             (tmp_path / "folder.wav", "is a folder"),
             (tmp_path / "file.txt", "is a file, not a folder"),
             (readonly / "out", "cannot write into"),
             (readonly / "x.wav", "cannot write into")]
    for out, text in cases:
        code, err = _wave_cli(capsys, "vocode", tmp_path / "m.npy", "-m", wave_export, "--out", out)
        assert code == 2, err
        _error_line(err, text)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=100))
    code, err = _wave_cli(capsys, "vocode", tmp_path / "m.npy", "-m", wave_export, "--out", tmp_path / "o")
    assert code == 2
    _error_line(err, "MiB free", "needed")
    assert not (tmp_path / "o").exists() and list(readonly.iterdir()) == []


@pytest.mark.parametrize("device, text", [("gpu", "valid: auto, cpu, cuda, cuda:N, mps"), ("bogus", "valid:"),
                                          ("cuda:x", "valid:"), ("mps", "MPS"), ("cuda", "CUDA")])
def test_device_names_are_checked_with_the_valid_ones_listed(tmp_path, capsys, wave_export, device, text):
    from diffcore.device import resolve_device

    if device == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=re.escape(text)):
        resolve_device(device)
    np.save(tmp_path / "m.npy", _mel())
    for argv in (["vocode", tmp_path / "m.npy", "-m", wave_export, "--out", tmp_path / "o"],
                 ["generate", "-m", wave_export, "--out", tmp_path / "o"]):
        code, err = _wave_cli(capsys, *argv, "--device", device)
        assert code == 2
        _error_line(err, device, text)
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("text, message", [
    ("[1, 2, 3]", "holds list, not the mapping"), ("null", "holds null"), ('"model"', "holds str"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"), ("{not json", "unreadable"),
    ('{"model": [1]}', "no 'model' mapping"), ('{"model": {"residual_channels": "wide"}}', "residual_channels"),
    ('{"model": {"mel": [1, 2]}}', "mel: expected a mapping for MelConfig"), (b"\xff\xfe\x00junk", "unreadable"),
])
def test_a_malformed_export_config_is_one_error_naming_the_file(tmp_path, capsys, wave_export, text, message):
    from diffwave.api import load

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    (bad / "model.safetensors").write_bytes((wave_export / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=rf"bad.*{re.escape(message)}"):
        load(bad, "cpu")
    np.save(tmp_path / "m.npy", _mel())
    code, err = _wave_cli(capsys, "vocode", tmp_path / "m.npy", "-m", bad, "--out", tmp_path / "o")
    assert code == 2
    _error_line(err, "bad")


@pytest.mark.parametrize("pointer", [b"\x80\x81\xfe binary", b"../../../etc/passwd\n", b"step_00000009.pt\n",
                                     b"x" * 10_000_000, b""])
def test_a_corrupt_latest_pointer_falls_back_to_the_newest_checkpoint(tmp_path, wave_run, pointer):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("step_00000001.pt", "step_00000002.pt"):
        (run / "checkpoints" / name).write_bytes((wave_run / "checkpoints" / "step_00000001.pt").read_bytes())
    (run / "checkpoints" / "latest").write_bytes(pointer)
    assert find_latest(run) == run / "checkpoints" / "step_00000002.pt"
    config, weights = load_for_inference(run)
    assert "model" in config and weights


def _lmnt_file(path: Path, params: dict, state: dict | None = None) -> Path:
    from diffwave.lmnt import LMNT_DEFAULTS, config_from_lmnt_params, lmnt_state_dict

    if state is None:
        small = {**LMNT_DEFAULTS, "residual_layers": 2, "residual_channels": 4, "dilation_cycle_length": 2}
        state = lmnt_state_dict(DiffWave(config_from_lmnt_params(small)))
    torch.save({"model": state, "params": params, "step": 3}, path)
    return path


def test_lmnt_weights_of_another_shape_are_one_line_naming_the_first_key(tmp_path, capsys):
    from diffwave.lmnt import LmntImportError, load_lmnt_checkpoint

    small = {"residual_layers": 2, "residual_channels": 4, "dilation_cycle_length": 2}
    path = _lmnt_file(tmp_path / "weights.pt", {**small, "residual_channels": 8})  # weights of 4 channels
    with pytest.raises(LmntImportError) as info:
        load_lmnt_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    assert re.search(r"weights\.pt.*input_projection\.\w+ has shape \[4, 1, 1\], the model needs \[8, 1, 1\]", message)
    code, err = _wave_cli(capsys, "import-lmnt", path, "--out", tmp_path / "exp")
    assert code == 2
    _error_line(err, "weights.pt", "has shape")
    assert len(err.splitlines()) == 1 and not (tmp_path / "exp").exists()


@pytest.mark.parametrize("key, value", [("residual_layers", "30"), ("residual_layers", None),
                                        ("residual_channels", [64]),
                                        ("residual_layers", 2.5), ("n_mels", -80), ("hop_samples", float("nan")),
                                        ("unconditional", "no"), ("noise_schedule", "linear"),
                                        ("noise_schedule", [0.1, "x"]), ("inference_noise_schedule", {"a": 1}),
                                        ("sample_rate", True)])
def test_lmnt_params_of_the_wrong_type_are_refused_naming_the_parameter(tmp_path, key, value):
    from diffwave.lmnt import LmntImportError, load_lmnt_checkpoint

    path = _lmnt_file(tmp_path / "weights.pt", {key: value}, state={})
    with pytest.raises(LmntImportError, match=rf"weights\.pt.*params\.{key}"):
        load_lmnt_checkpoint(path)


def test_a_big_endian_npy_mel_is_read_as_its_values(tmp_path, capsys, wave_export):
    from diffwave.mel import load_mel_file

    mel = _mel()
    np.save(tmp_path / "big.npy", mel.astype(">f4"))
    np.save(tmp_path / "big64.npy", mel.astype(">f8"))
    for name in ("big.npy", "big64.npy"):
        got = load_mel_file(tmp_path / name)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), mel)
    code, err = _wave_cli(capsys, "vocode", tmp_path / "big.npy", "-m", wave_export, "--out", tmp_path / "b.wav")
    assert code == 0, err


def test_gsm_wavs_are_decoded(tmp_path):
    from diffwave.audio import load_audio

    if "GSM610" not in sf.available_subtypes("WAV"):
        pytest.skip("libsndfile without GSM 6.10")
    x = 0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
    sf.write(tmp_path / "gsm.wav", x, 8000, subtype="GSM610", format="WAV")
    wav, sr = load_audio(tmp_path / "gsm.wav")
    assert sr == 8000 and abs(wav.shape[0] - 8000) <= 320
    spectrum = np.abs(np.fft.rfft(wav.numpy()[:7680]))
    assert abs(np.argmax(spectrum) * 8000 / 7680 - 440) < 5  # the tone survives the lossy codec


# =============================================================================================== consistency


def test_every_writer_goes_through_the_one_atomic_writer():
    """A source scan: temporary files and renames exist only in diffcore.atomic.atomic_write."""
    offenders = []
    for path in sorted((REPO / "diffcore").rglob("*.py")) + sorted((REPO / "diffwave").rglob("*.py")) + \
            sorted((REPO / "diffimage").rglob("*.py")):
        if path == REPO / "diffcore" / "atomic.py":
            continue
        text = path.read_text()
        for word in ("mkstemp", "NamedTemporaryFile", "os.replace(", "os.rename(", ".write_text(", ".write_bytes("):
            if word in text:
                offenders.append(f"{path.relative_to(REPO)}: {word}")
    assert offenders == []


def test_outputs_all_get_the_same_file_mode(tmp_path, capsys, wave_export):
    from diffwave.audio import save_audio
    from diffwave.preprocess import write_mel

    old = os.umask(0o022)
    try:
        np.save(tmp_path / "m.npy", _mel())
        code, err = _wave_cli(capsys, "vocode", tmp_path / "m.npy", "-m", wave_export, "--out", tmp_path / "voc")
        assert code == 0, err
        save_audio(tmp_path / "a.flac", np.zeros(100) + 0.1, 16000)
        write_mel(tmp_path / "cache" / "m.npy", _mel())
        run = tmp_path / "run"
        Trainer(ToyTask(), cfg(max_steps=2), run).fit()
        files = [tmp_path / "voc" / "m.wav", tmp_path / "a.flac", tmp_path / "cache" / "m.npy",
                 run / "config.yaml", run / "checkpoints" / "step_00000002.pt", run / "checkpoints" / "latest"]
        modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
        assert set(modes.values()) == {"0o644"}, modes
    finally:
        os.umask(old)


def test_errors_about_paths_from_a_runs_config_yaml_say_so(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": SMALL_WAVE,
                                                     "data": {"path": str(tmp_path / "moved_away")}}))
    code, err = _wave_cli(capsys, "train", "--run-dir", run)
    assert code == 2
    _error_line(err, "moved_away", "config.yaml")


def test_wrong_preset_names_list_the_valid_ones(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    for text, valid in (({"model": {"preset": "tinyy"}}, "tiny"), ({"model": {"mel": {"preset": "hifi"}}}, "hifigan")):
        recipe.write_text(yaml.safe_dump(text))
        code, err = _wave_cli(capsys, "train", "--recipe", recipe, "--run-dir", tmp_path / "run")
        assert code == 2
        line = _error_line(err, "r.yaml", valid)
        assert "available" in line or "one of" in line
    assert not (tmp_path / "run").exists()


def test_a_mel_of_the_other_preset_says_how_to_get_a_model_for_it(tmp_path, capsys, wave_export):
    log_mel = np.log(np.clip(_mel(), 1e-5, None)).astype(np.float32) - 1.0  # a natural-log 'hifigan' mel
    np.save(tmp_path / "hifi.npy", log_mel)
    code, err = _wave_cli(capsys, "vocode", tmp_path / "hifi.npy", "-m", wave_export, "--out", tmp_path / "o.wav")
    assert code == 2
    _error_line(err, "hifi.npy", "hifigan", "model.mel.preset=hifigan")


def test_diffimage_errors_about_paths_from_a_runs_config_yaml_say_so(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"preset": "tiny"},
                                                     "data": {"source": "npz", "path": str(tmp_path / "gone.npz")}}))
    code, err = _image_cli(capsys, "train", "--run-dir", run)
    assert code == 2
    _error_line(err, "gone.npz", "config.yaml")


def test_diffimage_sample_refuses_unusable_outputs_before_loading(tmp_path, capsys, monkeypatch):
    import diffimage.api

    monkeypatch.setattr(diffimage.api, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "report.pdf").write_text("precious")
    for out, text in ((tmp_path / "report.pdf", "is a file, not a folder"),
                      (tmp_path / "report.pdf" / "samples", "report.pdf is a file")):
        code, err = _image_cli(capsys, "sample", "-m", tmp_path / "model", "--out", out)
        assert code == 2
        _error_line(err, text)
    assert (tmp_path / "report.pdf").read_text() == "precious"


def test_a_lock_still_held_by_the_forked_workers_of_a_killed_run_is_taken_over(tmp_path):
    """Data-loader workers inherit the lock; when their parent is killed they hold it for a moment longer. The next
    run sees the recorded holder dead and waits for them instead of refusing."""
    run = tmp_path / "run"
    script = "\n".join([
        "import os, sys, time",
        "from diffcore.train.lock import RunLock",
        "RunLock(sys.argv[1]).acquire()",
        "if os.fork() == 0:",
        "    time.sleep(2)",  # the orphaned worker, still holding the inherited lock
        "    os._exit(0)",
        "os._exit(0)",  # the training process dies without releasing anything
    ])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, str(run)], env=env, check=True, timeout=60)
    lock = RunLock(run).acquire()
    try:
        assert lock.held and f"pid {os.getpid()}" in (run / ".lock").read_text()
    finally:
        lock.release()
