"""Faults during training, through the real engine (diffcore.train.Trainer) and the toy task: SIGKILL at random
moments and inside checkpoint writes, a full disk, a NaN batch, a dataset that raises and a data-loader worker that
dies. Nothing may be lost beyond the last completed checkpoint, and resumes must be exact where the engine says so.

The long version of the kill test is ``tools/soak_kill_resume.py`` (minutes, dozens of kills)."""

import errno
import importlib.util
import io
import math
import os
from pathlib import Path

import pytest
import torch

from diffcore.checkpoint import CheckpointError, find_latest, list_checkpoints, load_checkpoint
from diffcore.train import TrainConfig, Trainer, TrainingError, read_log
from diffcore.train.toy import ToyDataset, ToyTask

REPO = Path(__file__).resolve().parents[1]


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak_kill_resume", REPO / "tools" / "soak_kill_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cfg(**kw) -> TrainConfig:
    base = dict(max_steps=8, batch_size=8, lr=1e-2, num_workers=0, log_every=1, ckpt_every=2, keep_last=3,
                device="cpu", progress=False, tensorboard=False, ema_decay=0.9, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def same_state(a: dict, b: dict) -> bool:
    return _soak_module().same_training_state(a, b)


def temp_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------ SIGKILL


def test_sigkill_at_random_moments_and_inside_checkpoint_writes_loses_nothing(tmp_path):
    soak = _soak_module()
    schedule = ("mid_write", "random", "before_rename", "before_pointer", "before_prune")
    summary = soak.soak(tmp_path, kills=len(schedule), schedule=schedule, max_steps=36, ckpt_every=3,
                        step_sleep=0.004, life_s=0.2, report=lambda _: None)
    assert summary["kills"] == len(schedule)
    assert all(summary["kills_by_mode"][m] >= 1 for m in soak.PAUSE_POINTS), summary["kills_by_mode"]
    assert summary["resumes_checked"] >= len(schedule)
    assert summary["steps_lost"] == 0
    assert summary["corrupt_checkpoints"] == 0, summary["corrupt_details"]
    assert summary["dangling_pointers"] == 0 and summary["completed_checkpoints_missing"] == 0
    assert summary["resume_step_mismatches"] == 0 and summary["unreadable_logs"] == 0
    # kills inside writes did leave half-written temporary files, and the resumes cleaned them up
    assert summary["stale_temp_files_seen"] >= 2
    run = tmp_path / "run_000"
    assert temp_files(run) == []
    # the run went on to max_steps and ended exactly where a run without kills ends
    assert summary["runs_finished"] == summary["runs_equal_to_straight_run"] >= 1
    assert load_checkpoint(find_latest(run))["step"] == 36
    # every step of the run appears once in its log, in order, despite the kills
    steps = [r["step"] for r in read_log(run)]
    assert steps == list(range(1, 37))


def test_the_soak_checks_catch_a_torn_checkpoint_and_a_changed_weight(tmp_path):
    """The soak's verdict rests on check_folder and same_training_state; show that they see real damage."""
    soak = _soak_module()
    Trainer(ToyTask(), cfg(max_steps=4), tmp_path / "a").fit()
    Trainer(ToyTask(), cfg(max_steps=4), tmp_path / "b").fit()
    a, b = load_checkpoint(find_latest(tmp_path / "a")), load_checkpoint(find_latest(tmp_path / "b"))
    assert same_state(a, b)
    b["model"]["net.0.weight"][0, 0] += 1e-6
    assert not same_state(a, b)

    assert soak.check_folder(tmp_path / "a")["corrupt"] == []
    victim = tmp_path / "a" / "checkpoints" / "step_00000002.pt"
    victim.write_bytes(victim.read_bytes()[:1000])  # what a non-atomic writer leaves when killed
    report = soak.check_folder(tmp_path / "a")
    assert len(report["corrupt"]) == 1 and "step_00000002.pt" in report["corrupt"][0]


# ------------------------------------------------------------------------------------------------ a full disk


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one_and_reports(tmp_path, monkeypatch, capsys):
    real_save = torch.save
    failures = []

    def half_then_enospc(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 4 and hasattr(f, "write"):
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[:2000])  # the disk fills up part-way through the file
            failures.append(sorted(p.name for p in temp_files(tmp_path)))
            raise _enospc(getattr(f, "name", "?"))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", half_then_enospc)
    summary = Trainer(ToyTask(), cfg(max_steps=6), tmp_path).fit()

    assert summary["step"] == 6 and summary["completed"]  # training went on
    assert len(failures) == 1 and len(failures[0]) == 1  # the failed write was to a temporary file
    assert temp_files(tmp_path) == []  # ... which was removed
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 6]
    assert load_checkpoint(tmp_path / "checkpoints" / "step_00000002.pt")["step"] == 2
    event = read_log(tmp_path, "checkpoint_failed")
    assert [e["step"] for e in event] == [4] and "No space left on device" in event[0]["error"]
    assert "step 4" in capsys.readouterr().err


def test_full_disk_at_the_final_checkpoint_is_an_error_and_the_previous_one_stays_valid(tmp_path, monkeypatch):
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("step_00000006.pt"):
            raise _enospc(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointError, match=r"step_00000006\.pt.*No space left on device"):
        Trainer(ToyTask(), cfg(max_steps=6), tmp_path).fit()
    monkeypatch.setattr(os, "replace", real_replace)

    assert temp_files(tmp_path) == []
    assert find_latest(tmp_path).name == "step_00000004.pt"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000004.pt"
    # once there is space again, the same command resumes from step 4 and ends where a straight run ends
    Trainer(ToyTask(), cfg(max_steps=6), tmp_path).fit()
    Trainer(ToyTask(), cfg(max_steps=6), tmp_path / "straight").fit()
    assert same_state(load_checkpoint(find_latest(tmp_path)), load_checkpoint(find_latest(tmp_path / "straight")))


# ------------------------------------------------------------------------------------------------ bad batches


class PoisonedData(ToyDataset):
    """The toy data with NaN in example ``bad``."""

    def __init__(self, bad: int) -> None:
        super().__init__(64, 4, 0)
        self.x[bad] = float("nan")


class PoisonedTask(ToyTask):
    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad = bad
        self.poisoned_batches = 0

    def train_dataset(self):
        return PoisonedData(self.bad)

    def loss(self, model, batch):
        self.poisoned_batches += int(bool((batch["index"] == self.bad).any()))
        return super().loss(model, batch)


def test_a_nan_batch_is_reported_and_skipped(tmp_path):
    task = PoisonedTask(bad=5)
    summary = Trainer(task, cfg(max_steps=20, ckpt_every=0), tmp_path).fit()
    # 20 updates over 64 examples in batches of 8 = 2.5 epochs: example 5 was met two or three times
    assert task.poisoned_batches >= 2
    assert summary["step"] == 20 and summary["nonfinite_count"] == task.poisoned_batches
    events = read_log(tmp_path, "nonfinite")
    assert len(events) == task.poisoned_batches and all(e["loss"] == "nan" for e in events)
    state = load_checkpoint(find_latest(tmp_path))
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert all(math.isfinite(r["loss"]) for r in read_log(tmp_path))


class FailingData(ToyDataset):
    """Raises on its ``fail_at``-th item while the file ``switch`` exists (a data file that went bad mid-run)."""

    def __init__(self, switch: Path, fail_at: int, exit_worker: bool = False) -> None:
        super().__init__(64, 4, 0)
        self.switch, self.fail_at, self.exit_worker, self.calls = switch, fail_at, exit_worker, 0

    def __getitem__(self, i):
        self.calls += 1
        if self.calls >= self.fail_at and self.switch.exists():
            if self.exit_worker:
                os._exit(7)  # the worker process dies without a word
            raise OSError(errno.EIO, "Input/output error", f"/data/clip_{i:03d}.wav")
        return super().__getitem__(i)


class FailingTask(ToyTask):
    def __init__(self, switch: Path, fail_at: int, exit_worker: bool = False) -> None:
        super().__init__()
        self.args = (switch, fail_at, exit_worker)

    def train_dataset(self):
        return FailingData(*self.args)


def test_a_dataset_error_stops_with_a_checkpoint_and_the_resume_is_exact(tmp_path):
    switch = tmp_path / "broken"
    switch.touch()
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"data pipeline failed during step 6 .*clip_\d+\.wav.*step_00000005\.pt"):
        Trainer(FailingTask(switch, fail_at=5 * 8 + 3), cfg(max_steps=10, ckpt_every=0), run).fit()
    # nothing of step 6 was applied, and steps 1-5 are saved although no periodic checkpoint was due
    assert [s for s, _ in list_checkpoints(run)] == [5]
    assert [e["step"] for e in read_log(run, "data_error")] == [5]
    switch.unlink()  # the data is fixed; the same command resumes
    summary = Trainer(FailingTask(switch, fail_at=10**9), cfg(max_steps=10, ckpt_every=0), run).fit()
    assert summary["resumed_from"].endswith("step_00000005.pt") and summary["step"] == 10
    Trainer(ToyTask(), cfg(max_steps=10, ckpt_every=0), tmp_path / "straight").fit()
    assert same_state(load_checkpoint(find_latest(run)), load_checkpoint(find_latest(tmp_path / "straight")))


def test_a_data_loader_worker_that_dies_stops_the_run_with_a_checkpoint(tmp_path):
    switch = tmp_path / "broken"
    switch.touch()
    run = tmp_path / "run"
    task = FailingTask(switch, fail_at=4 * 8 + 1, exit_worker=True)
    with pytest.raises(TrainingError, match=r"data pipeline failed .*worker process died \(exit code 7\)"):
        Trainer(task, cfg(max_steps=30, ckpt_every=1, num_workers=1), run).fit()
    # no completed step is lost: the newest checkpoint holds the last step that was logged
    logged = max(r["step"] for r in read_log(run))
    assert load_checkpoint(find_latest(run))["step"] == logged >= 1
    assert len(read_log(run, "data_error")) == 1
    switch.unlink()
    summary = Trainer(task, cfg(max_steps=30, ckpt_every=1, num_workers=1), run).fit()
    assert summary["step"] == 30 and summary["resumed_from"].endswith(f"step_{logged:08d}.pt")


def test_a_log_line_torn_by_a_kill_does_not_break_the_log(tmp_path):
    Trainer(ToyTask(), cfg(max_steps=4), tmp_path).fit()
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 5, "time": 1.0, "lo')  # what a power cut in the middle of a write leaves
    Trainer(ToyTask(), cfg(max_steps=6), tmp_path).fit()  # resumes at step 4
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert '{"step": 5, "time": 1.0, "lo' in lines  # the torn line was ended, not glued to the next record
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3, 4, 5, 6]
