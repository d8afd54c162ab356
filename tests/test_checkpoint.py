"""Checkpoints: atomic writes (failed and killed writes keep the previous one), keep-last-K, the latest pointer,
weights_only loading, clear errors for bad files, export and load_for_inference round trips."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import diffcore.checkpoint as ckpt
from diffcore.checkpoint import (
    CheckpointError,
    export,
    find_latest,
    list_checkpoints,
    load_checkpoint,
    load_for_inference,
    remove_stale_temp_files,
    save_checkpoint,
)
from diffcore.train import TrainConfig, Trainer
from diffcore.train.toy import ToyDenoiser, ToyTask

REPO = Path(__file__).resolve().parents[1]


def _state(step, value=0.0, ema=True):
    model = {"w": torch.full((3, 2), float(value)), "b": torch.zeros(2)}
    return {
        "format": ckpt.FORMAT_VERSION,
        "step": step,
        "model": model,
        "ema": {"decay": 0.9, "warmup": True, "num_updates": step,
                "shadow": {k: v + 100.0 for k, v in model.items()}} if ema else None,
        "config": {"model": {"width": 3}, "train": {"lr": 1e-3}},
    }


def test_save_keeps_last_k_and_points_latest(tmp_path):
    for step in (10, 20, 30, 40):
        path = save_checkpoint(_state(step, step), tmp_path, step, keep_last=2)
    assert path.name == "step_00000040.pt"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40]
    assert (tmp_path / "latest").read_text().strip() == "step_00000040.pt"
    assert find_latest(tmp_path) == path
    state = load_checkpoint(path)
    assert state["step"] == 40 and torch.equal(state["model"]["w"], torch.full((3, 2), 40.0))
    # the file holds nothing but weights_only-loadable data
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == {"model": {"width": 3}, "train": {"lr": 1e-3}}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_find_latest_falls_back_when_pointer_dangles(tmp_path):
    save_checkpoint(_state(1), tmp_path, 1)
    save_checkpoint(_state(2), tmp_path, 2)
    (tmp_path / "latest").write_text("step_00000099.pt\n")
    assert find_latest(tmp_path).name == "step_00000002.pt"
    assert find_latest(tmp_path / "nothing-here") is None


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(_state(1, 1.0), tmp_path, 1)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match=r"step_00000002\.pt.*No space left"):
        save_checkpoint(_state(2, 2.0), tmp_path, 2)
    monkeypatch.undo()
    assert find_latest(tmp_path).name == "step_00000001.pt"
    assert not (tmp_path / "step_00000002.pt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(find_latest(tmp_path))["step"] == 1


_KILLED_WRITER = textwrap.dedent(
    """
    import io, sys, time, torch
    import diffcore.checkpoint as ckpt
    folder = sys.argv[1]
    state = {"format": 1, "step": 1, "model": {"w": torch.ones(1000, 1000)}, "config": {}}
    ckpt.save_checkpoint(state, folder, 1)
    real_save = torch.save
    def slow_save(obj, f):
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("MIDWRITE", flush=True)
        time.sleep(60)
    torch.save = slow_save
    ckpt.save_checkpoint(dict(state, step=2, model={"w": torch.zeros(1000, 1000)}), folder, 2)
    """
)


def test_sigkill_in_the_middle_of_a_write_leaves_previous_checkpoint(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()
        assert line.strip() == "MIDWRITE", line
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert partial and partial[0].stat().st_size > 0  # the write really was under way
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    latest = find_latest(tmp_path)
    assert latest.name == "step_00000001.pt"
    state = load_checkpoint(latest)
    assert torch.equal(state["model"]["w"], torch.ones(1000, 1000))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    removed = remove_stale_temp_files(tmp_path)
    assert len(removed) == 1 and not removed[0].exists()


def test_bad_files_raise_checkpoint_error_naming_the_file(tmp_path):
    good = save_checkpoint(_state(5), tmp_path, 5)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(CheckpointError, match=r"truncated\.pt: is truncated, corrupt"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt: is truncated, corrupt or not a torch file"):
        load_checkpoint(text)
    plain = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), plain)
    with pytest.raises(CheckpointError, match=r"tensor\.pt: not a diffstack checkpoint"):
        load_checkpoint(plain)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": 1, "thing": Path("x")}, pickled)  # an arbitrary object: refused, never unpickled
    with pytest.raises(CheckpointError, match=r"pickled\.pt: holds objects that weights-only loading refuses"):
        load_checkpoint(pickled)
    future = tmp_path / "future.pt"
    torch.save(dict(_state(1), format=ckpt.FORMAT_VERSION + 1), future)
    with pytest.raises(CheckpointError, match=r"future\.pt: checkpoint format"):
        load_checkpoint(future)
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"empty: neither a run folder with checkpoints nor an export"):
        load_for_inference(empty)


def test_load_for_inference_prefers_ema_and_falls_back_to_model(tmp_path):
    with_ema = save_checkpoint(_state(3, 1.0), tmp_path / "a", 3)
    config, weights = load_for_inference(with_ema)
    assert config["model"] == {"width": 3}
    assert torch.equal(weights["w"], torch.full((3, 2), 101.0))
    no_ema = save_checkpoint(_state(3, 1.0, ema=False), tmp_path / "b", 3)
    _, weights = load_for_inference(no_ema)
    assert torch.equal(weights["w"], torch.full((3, 2), 1.0))
    # a checkpoints folder resolves through its latest pointer
    _, weights = load_for_inference(tmp_path / "a")
    assert torch.equal(weights["w"], torch.full((3, 2), 101.0))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(max_steps=4, batch_size=8, lr=1e-2, num_workers=0, log_every=2, ckpt_every=0,
                      device="cpu", progress=False, tensorboard=False, ema_decay=0.5)
    trainer = Trainer(ToyTask(n=16), cfg, run)
    trainer.fit()
    return run, trainer


def test_export_round_trip_loads_without_training_code(trained_run, tmp_path):
    run, trainer = trained_run
    out = export(run, tmp_path / "export")
    # read back with json + safetensors only
    from safetensors import safe_open
    from safetensors.torch import load_file

    config = json.loads((out / "config.json").read_text())
    weights = load_file(str(out / "model.safetensors"))
    assert config == trainer.task.config
    ema_state = trainer.ema.module.state_dict()
    assert set(weights) == set(ema_state)
    for k, v in ema_state.items():
        assert torch.equal(weights[k], v), k
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["step"] == "4" and meta["source"] == "ema"
    # the same weights through every path load_for_inference accepts
    for path in (run, find_latest(run), out):
        cfg_i, w_i = load_for_inference(path)
        assert cfg_i == trainer.task.config
        for k, v in ema_state.items():
            assert torch.equal(w_i[k], v), (path, k)
    # the model is rebuilt from the stored config, never from defaults, and computes what the EMA module does
    model = ToyDenoiser(**config["model"])
    model.load_state_dict(weights)
    x, t = torch.randn(5, 4), torch.arange(5)
    torch.testing.assert_close(model(x, t), trainer.ema.module(x, t))


def test_training_checkpoint_is_weights_only_loadable_and_complete(trained_run):
    run, trainer = trained_run
    state = torch.load(find_latest(run), weights_only=True)
    assert state["format"] == ckpt.FORMAT_VERSION and state["step"] == 4
    for key in ("model", "ema", "optimizer", "scaler", "rng", "data", "config", "train"):
        assert key in state
    assert state["config"] == trainer.task.config
    assert state["train"]["max_steps"] == 4
    assert len(state["rng"]["ranks"]) == 1 and set(state["rng"]["ranks"][0]) == {"torch", "cuda", "numpy", "python"}
    # 16 examples, global batch 8: 4 steps consume epochs 0 and 1 completely
    assert state["data"] == {"epoch": 1, "samples": 16}


def test_the_train_section_reaches_the_engine_once_and_the_stored_recipe_says_what_trained(tmp_path):
    """The engine trains with its ``config`` argument; a recipe whose own ``train`` section says otherwise is stored
    (config.yaml, the checkpoint's config) with the section that trained, so resuming from config.yaml repeats it."""
    import yaml

    cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-2, num_workers=0, log_every=1, ckpt_every=0, device="cpu",
                      progress=False, tensorboard=False)
    task = ToyTask(n=16)
    task.config = {**task.config, "train": cfg.replace(max_steps=50, lr=0.5).to_dict()}
    trainer = Trainer(task, cfg, tmp_path / "run")
    assert trainer.fit()["step"] == 3  # the argument's max_steps, not the recipe's 50
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    state = torch.load(find_latest(tmp_path / "run"), weights_only=True)
    assert stored["train"] == state["config"]["train"] == state["train"] == cfg.to_dict()
    assert stored["model"] == task.config["model"] and stored["data"] == task.config["data"]
