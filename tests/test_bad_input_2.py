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

REPO = Path(__file__).resolve().parents[1]
SMALL_WAVE = {"preset": "tiny", "residual_layers": 2, "residual_channels": 4, "dilation_cycle": 2,
              "embedding_hidden": 16}


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=4, batch_size=8, lr=1e-2, num_workers=0, log_every=1, ckpt_every=2, keep_last=3,
                device="cpu", progress=False, tensorboard=False, ema_decay=0.9, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _error_line(err: str, *must_contain: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for text in must_contain:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def _wave_cli(capsys, *args) -> tuple[int, str]:
    from diffwave.cli import main

    os.environ.pop("DIFFSTACK_DEBUG", None)
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _image_cli(capsys, *args) -> tuple[int, str]:
    from diffimage.cli import main

    os.environ.pop("DIFFSTACK_DEBUG", None)
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


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
