"""The GPU call's preparation (tools/gpu_checks.py, issue 18), checked without a GPU and without downloading torch:
the version rule and pyproject's ranges agree, what travels is measured and held to the limit, the plan fits the
call's minutes, the wheels come from the lock, and the samples a call brings back go through the FID path."""

from __future__ import annotations

import importlib.util
import itertools
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import diffcore

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_checks", ROOT / "tools" / "gpu_checks.py")
gc = importlib.util.module_from_spec(spec)
sys.modules["gpu_checks"] = gc  # dataclasses look their module up there
spec.loader.exec_module(gc)


def _requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name: Requirement(d) for d in deps}


def _locked() -> dict[str, str]:
    return gc.locked_versions(["torch", "torchaudio", "torchvision"])


@pytest.mark.parametrize("torch_v, audio_v, problem", [
    ("2.10.2+cu128", None, "needs torch >= 2.11"),
    ("2.9.0", "2.9.0", "needs torch >= 2.11"),
    ("2.11.0+cu130", "2.11.0+cu130", None),   # the GPU machines' pair
    ("2.14.1+cu130", "2.11.1+cu132", None),   # the lock
    ("2.12.1", "2.11.1", "torchaudio 2.11.1 loads only with torch 2.14.x"),
    ("2.13.0+cpu", "2.11.1", "pip install 'torchaudio==2.11.0'"),
    ("2.15.0a0+git1234", None, None),
])
def test_the_version_rule_names_what_is_needed(torch_v, audio_v, problem):
    got = diffcore.torch_version_problem(torch_v, audio_v)
    if problem is None:
        assert got is None
    else:
        assert problem in got and torch_v in got


def test_pyproject_lower_bound_is_the_rule_and_the_dry_run_version():
    """The tested lower bound is written in three places that must agree: pyproject's range, diffcore.MIN_TORCH
    and the torch the dry run installs (the GPU machines')."""
    req = _requirements()
    lower = [Version(s.version) for s in req["torch"].specifier if s.operator == ">="]
    assert lower == [Version("%d.%d" % diffcore.MIN_TORCH)]
    script = (ROOT / "tools" / "gpu_checks.sh").read_text()
    pinned = re.search(r'"torch==([\d.]+)"', script).group(1)
    assert Version(pinned).release[:2] == diffcore.MIN_TORCH
    for name, pin in [("torch", pinned), ("torchaudio", re.search(r'"torchaudio==([\d.]+)"', script).group(1)),
                      ("torchvision", re.search(r'"torchvision==([\d.]+)"', script).group(1))]:
        assert req[name].specifier.contains(pin), (name, pin, str(req[name].specifier))


def test_the_lock_is_inside_pyproject_ranges_and_passes_the_rule():
    req, lock = _requirements(), _locked()
    for name, version in lock.items():
        assert req[name].specifier.contains(version), (name, version)
    assert diffcore.torch_version_problem(lock["torch"], lock["torchaudio"]) is None


def test_carried_wheels_are_the_lock_versions_for_python_312():
    cmd = gc.fetch_wheels_command("python3")
    pins = gc.locked_versions([d for d, _ in gc.CARRIED])
    assert {f"{d}=={v}" for d, v in pins.items()} <= set(cmd)
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and "--only-binary=:all:" in cmd and "--no-deps" in cmd
    assert any(p.startswith("manylinux") and p.endswith("x86_64") for p in cmd)
    assert {"soundfile", "cffi", "pycparser"} <= {d for d, _ in gc.CARRIED}


def test_locked_versions_refuses_a_name_the_lock_lacks(tmp_path):
    c = tmp_path / "c.txt"
    c.write_text("# a comment\nSoundFile==0.14.0\npy_cparser==3.12 ; python_version>'3'\n")
    assert gc.locked_versions(["soundfile", "py-cparser"], c) == {"soundfile": "0.14.0", "py-cparser": "3.12"}
    with pytest.raises(SystemExit, match="cffi"):
        gc.locked_versions(["cffi"], c)


def test_carry_report_adds_up_and_refuses_too_much():
    MiB = gc.MiB
    sizes = {"a/x": 3 * MiB, "a/y": 1 * MiB, ".whl/s.whl": 2 * MiB, "README.md": MiB // 2}
    fits, text = gc.carry_report(sizes, limit=7 * MiB)
    assert fits and "6.50" in text and re.search(r"^a\s+4\.00$", text, re.M)
    fits, text = gc.carry_report(sizes, limit=6 * MiB)
    assert not fits and "TOO BIG" in text


def test_travelling_files_are_what_git_sends_plus_the_carried_folders(tmp_path):
    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text(".whl/\n.gpu_carry/\n.venv/\n")
    (tmp_path / "tracked.py").write_text("x" * 10)
    git("add", ".gitignore", "tracked.py")
    (tmp_path / "untracked.py").write_text("y" * 20)          # travels: untracked, not ignored
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "big").write_bytes(b"z" * 1000)     # stays: ignored, not carried
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "w.whl").write_bytes(b"w" * 30)      # travels: carried
    sizes = gc.travelling_files(tmp_path)
    ignore = (tmp_path / ".gitignore").stat().st_size
    assert sizes == {".gitignore": ignore, "tracked.py": 10, "untracked.py": 20, ".whl/w.whl": 30}


def test_the_plans_fit_the_call_limits():
    """Worst case of a call (every step to the end of its window) against the call it is made for: one command of
    at most 8 minutes (run) and a second under 4 (rerun), for every choice of steps; the full run keeps its own
    benchmark budget, and any one failed step can be repeated alone."""
    for mode, limit in (("run", 8 * 60), ("rerun", 4 * 60)):
        for k in range(1, len(gc.STEPS) + 1):
            for steps in map(list, itertools.combinations(gc.STEPS, k)):
                plan = gc.plan_for(mode, steps)
                assert gc.worst_case(plan, steps) <= plan.total_s <= limit, (mode, steps)
                assert plan.bench_budget >= gc.MIN_BENCH_BUDGET
    assert gc.plan_for("run", gc.STEPS) == gc.PLANS["run"]
    for step in gc.STEPS:
        assert gc.plan_for("rerun", [step]) == gc.PLANS["rerun"]
    p = gc.PLANS["run"]
    assert gc.worst_case(p, ["bench"]) == gc.INSTALL_S + p.bench_budget + gc.BENCH_STOP_S + gc.GRACE_S


def test_a_plan_that_cannot_fit_is_refused(monkeypatch):
    tight = gc.replace(gc.PLANS["rerun"], total_s=120)
    monkeypatch.setitem(gc.PLANS, "rerun", tight)
    with pytest.raises(SystemExit, match="name fewer steps"):
        gc.plan_for("rerun", ["env", "bench", "mnist"])
    cut = gc.plan_for("rerun", ["bench"])  # alone it fits once its budget is cut
    assert gc.MIN_BENCH_BUDGET <= cut.bench_budget < tight.bench_budget
    assert gc.worst_case(cut, ["bench"]) == pytest.approx(120)


def test_what_comes_back_keeps_to_the_return_limits():
    assert len(gc.OUTPUTS) <= gc.MAX_OUT_FILES
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in gc.OUTPUTS)
    assert gc.STEPS == ["env", "bench", "refiner", "mnist"]


def test_an_unknown_step_is_refused_before_any_work(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    assert gc.main(["rerun", "bench,nope", "--work", str(work), "--out", str(tmp_path / "out")]) == 2
    assert "nope" in capsys.readouterr().err and work.exists() and not (tmp_path / "out").exists()


def test_a_missing_package_without_its_wheel_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "CARRIED", [("no-such-dist", "no_such_module_for_gpu_checks")])
    monkeypatch.setattr(gc, "WHEEL_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="no-such-dist"):
        gc.install_missing(tmp_path / "site")
    monkeypatch.setattr(gc, "CARRIED", [("numpy", "numpy")])  # present: nothing to install, no pip call
    assert gc.install_missing(tmp_path / "site") == []


def test_returned_samples_go_through_the_fid_path(tmp_path):
    """The .npz a call writes (uint8 [N, 28, 28]) is what the FID command here reads; the reference is digits the
    run never trained on. Samples equal to the reference give FID ~ 0, noise gives a large one (tiny features)."""
    from diffimage.evaluate import small_feature_network

    rng = np.random.default_rng(0)
    digits = (rng.random((gc.MNIST_TRAIN + 64, 28, 28)) ** 3 * 255).astype(np.uint8)
    data = tmp_path / "train.npz"
    np.savez(data, images=digits, labels=np.zeros(len(digits), np.uint8))
    same, noise = tmp_path / "same", tmp_path / "noise"
    same.mkdir(), noise.mkdir()
    np.savez_compressed(same / "mnist_samples.npz", images=digits[gc.MNIST_TRAIN:])
    np.savez_compressed(noise / "mnist_samples.npz", images=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8))
    net = small_feature_network()
    a = gc.fid_command(same, data, 64, feature_extractor=net, first=gc.MNIST_TRAIN)
    b = gc.fid_command(noise, data, 64, feature_extractor=net, first=gc.MNIST_TRAIN)
    assert a["samples"] == a["reference"] == 64 and (same / "fid.json").exists()
    assert abs(a["fid"]) < 1e-3 * b["fid"] and b["fid"] > 0
    with pytest.raises(AssertionError, match="did not train on"):
        gc.fid_command(same, data, 64, feature_extractor=net, first=gc.MNIST_TRAIN - 1)


def test_the_shell_driver_refuses_an_unknown_mode():
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_checks.sh"), "nonsense"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def _toy_carry(root: Path) -> Path:
    """A carry folder shaped as .gpu_carry/ (fetch-wheels makes the real one from shared/): 8 voiced clips of 1.6 s
    at 22.05 kHz (PCM 16, as LJSpeech) and 200 MNIST-shaped digits."""
    import wave

    rng = np.random.default_rng(0)
    clips = root / "ljspeech"
    clips.mkdir(parents=True)
    sr = 22050
    t = np.arange(int(1.6 * sr)) / sr
    for i in range(8):
        f0 = 110 + 15 * i
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
        x = 0.2 * x / np.abs(x).max() + 0.01 * rng.standard_normal(t.size)
        with wave.open(str(clips / f"LJ900-{i:04d}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr)
            w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    digits = (rng.random((200, 28, 28)) ** 4 * 255).astype(np.uint8)
    np.savez_compressed(root / "mnist_train.npz", images=digits, labels=rng.integers(0, 10, 200).astype(np.uint8))
    return root


def test_the_dry_run_call_goes_through_the_gpu_scripts_commands(tmp_path, monkeypatch):
    """`run --dry-run` end to end, as `make gpu-dryrun` runs it on the GPU machine's torch (here: the locked one),
    on a toy carry folder, with what the GPU machine lacks hidden (pesq, pystoi, speechmos, librosa: their metrics
    read NaN there): the steps that drive the project's commands (the benchmark's smoke sections, the refiner's
    training and evaluations and its returned tar beside them, the MNIST training stopped by SIGTERM and its
    samples) pass, and what comes back keeps to the device tool's limits. ``env`` (a fixed probe importing every
    module, 6 CPU s) is left to `make gpu-dryrun`, where it runs on torch 2.11.0; here the suite's own imports
    cover the modules."""
    import json
    import tarfile

    hide = tmp_path / "hide"
    hide.mkdir()
    for mod in ("pesq", "pystoi", "speechmos", "librosa"):
        (hide / f"{mod}.py").write_text(f"raise ImportError('{mod}: not on the GPU machine (hidden by the test)')\n")
    monkeypatch.setenv("PYTHONPATH", str(hide))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # the dry run's plan, smaller still where only the count changes (the suite's clock): most of what is left is
    # the six interpreters' start (torch's import), not the work
    dry = gc.replace(gc.PLANS["dry"], refiner_cpu_minutes=0.02, refiner_clip_s=1.0, mnist_stop_after=1,
                     mnist_samples=4, mnist_sample_steps=2)
    monkeypatch.setitem(gc.PLANS, "dry", dry)
    out, work = tmp_path / "out", tmp_path / "work"
    rc = gc.main(["run", "bench,refiner,mnist", "--dry-run", "--carry", str(_toy_carry(tmp_path / "carry")), "--out", str(out),
                  "--work", str(work), "--site", str(tmp_path / "site")])
    summary = json.loads((out / "summary.json").read_text())
    assert rc == 0 and summary["failed"] == [], summary
    assert list(summary["steps"]) == ["bench", "mnist", "refiner"]   # the refiner trains beside the others
    steps = summary["steps"]
    assert steps["bench"]["figures"] and not steps["bench"]["failed_sections"]
    assert steps["refiner"]["evaluations"] == 2 and steps["refiner"]["last_step"] > 0
    assert steps["refiner"]["heldout"]["refiner"]["pesq_wb"] is None   # as there: pesq is not on the GPU machine
    assert steps["mnist"]["stopped_by_clock"] and steps["mnist"]["exit"] == 143   # the SIGTERM path, as there
    assert steps["mnist"]["last_step"] >= dry.mnist_stop_after
    names = sorted(p.name for p in out.iterdir())
    assert set(names) <= set(gc.OUTPUTS) and len(names) <= gc.MAX_OUT_FILES
    assert all(p.is_file() and p.stat().st_size <= gc.MAX_OUT_FILE for p in out.iterdir())
    with np.load(out / "mnist_samples.npz") as d:
        assert d["images"].shape == (dry.mnist_samples, 28, 28) and d["images"].dtype == np.uint8
    with tarfile.open(out / "refiner.tar") as tar:
        assert {"export/model.safetensors", "export/config.json", "record.jsonl"} <= set(tar.getnames())
        tar.extractall(tmp_path / "back", filter="data")
    import diffwave.api as dw

    back = dw.load(tmp_path / "back" / "export", device="cpu")   # what refiner-score loads here afterwards
    assert back.info["provenance"]["step"] == steps["refiner"]["last_step"]
