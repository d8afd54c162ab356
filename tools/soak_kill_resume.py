"""Kill-and-resume soak of the training engine: SIGKILL a run many times, resume it each time, lose nothing.

A *life* is one training process (``Trainer.fit`` of a tiny model through :mod:`diffcore.train`) in a run folder; the
soak kills it with SIGKILL, checks the folder, and starts the next life, which resumes from the latest checkpoint.
Kills land

- ``random``: at a random moment after training started (with ``ckpt_every`` small, a good share of them land while
  a checkpoint is being written);
- ``startup``: at a random moment after the process was spawned (imports, restore, stale-file cleanup);
- inside a checkpoint write, at a point the child announces and then waits at: ``mid_write`` (half of the
  temporary file written and fsync'ed), ``before_rename`` (temporary file complete, not yet renamed),
  ``before_pointer`` (checkpoint renamed into place, ``latest`` not yet updated) and ``before_prune`` (pointer
  updated, old checkpoints not yet deleted).

After every kill: every ``step_*.pt`` must load with :func:`diffcore.checkpoint.load_checkpoint` and hold the step its
name says (else it counts as *corrupt*), ``latest`` must name a loadable file, and ``log.jsonl`` must still read.
When the next life starts, the step it resumed from must be at least the last checkpoint whose write had completed
(the child journals each completed ``save_checkpoint``); the difference is the *steps lost* (must be 0). A run that
reaches ``max_steps`` must end with the same model, EMA and optimizer tensors as a straight run without kills
(``torch.equal``), which the engine promises for ``num_workers=0``; then a new *generation* starts in a fresh
folder, until the time or kill budget is spent.

    python tools/soak_kill_resume.py --minutes 5 --json soak.json            # the soak reported in the README
    python tools/soak_kill_resume.py --kills 8 --max-steps 60                # a quick one (tests/test_faults.py)

Prints a summary table and writes it as JSON. Exit status 0 when no step was lost, no checkpoint was corrupt and
every finished run matched the straight run; 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

PAUSE_POINTS = ("mid_write", "before_rename", "before_pointer", "before_prune")
KILL_MODES = ("random", "startup", *PAUSE_POINTS)
JOURNAL, STARTED, PAUSED = "soak_journal.txt", "soak_started", "soak_paused"


# ------------------------------------------------------------------------------------------------ the child


def _journal(run_dir: Path, line: str) -> None:
    with open(run_dir / JOURNAL, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _touch(path: Path, text: str = "") -> None:
    path.write_text(text)


def _pause(run_dir: Path, point: str) -> None:
    """Tell the parent where we are, then wait to be killed."""
    _touch(run_dir / PAUSED, point)
    while True:
        time.sleep(60)


def _make_task(model: str, step_sleep: float):
    """A tiny task whose loss also sleeps ``step_sleep`` s (so that kills land at random points of a step); the
    sleep leaves the RNG alone, so a killed-and-resumed run and a straight one stay comparable."""
    if model == "toy":
        from diffcore.train.toy import ToyTask

        class SoakToyTask(ToyTask):
            def loss(self, m, batch):
                time.sleep(step_sleep)
                return super().loss(m, batch)

        return SoakToyTask(dim=4, hidden=32, num_steps=50, n=64)

    import torch
    from torch.utils.data import TensorDataset

    from diffcore.denoiser import VPDenoiser
    from diffcore.losses import diffusion_loss
    from diffcore.train.task import TrainTask
    from diffwave.config import DiffWaveConfig
    from diffwave.model import DiffWave

    class SoakDiffWaveTask(TrainTask):
        """An unconditional DiffWave of two residual layers learning 512-sample sine bursts."""

        def __init__(self) -> None:
            self.mcfg = DiffWaveConfig.from_dict({
                "preset": "unconditional", "residual_layers": 2, "residual_channels": 8, "dilation_cycle": 2,
                "embedding_hidden": 32, "audio_length": 512, "diffusion": {"num_steps": 20},
                "inference_betas": [1e-4, 0.01, 0.1],
            })
            self.config = {"model": self.mcfg.to_dict(), "data": {"n": 32}}
            self.schedule = self.mcfg.diffusion.build()

        def build_model(self):
            return DiffWave(self.mcfg)

        def train_dataset(self):
            g = torch.Generator().manual_seed(0)
            f = torch.rand(32, 1, generator=g) * 0.2 + 0.02
            return TensorDataset(0.5 * torch.sin(f * torch.arange(512.0)))

        def loss(self, m, batch):
            time.sleep(step_sleep)
            return diffusion_loss(VPDenoiser(m, self.schedule), batch[0], None, norm="l1")

    return SoakDiffWaveTask()


def child_main(a: argparse.Namespace) -> int:
    """One life: train in ``a.run_dir`` (resuming), journaling completed checkpoints, pausing where asked."""
    import torch

    import diffcore.train.engine as engine
    from diffcore.train import TrainConfig, Trainer

    torch.set_num_threads(1)
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    calls = {"n": 0}
    armed = lambda: a.pause in PAUSE_POINTS and calls["n"] == a.pause_at  # noqa: E731

    real_save_checkpoint = engine.save_checkpoint

    def save_checkpoint(state, folder, step, keep_last):
        calls["n"] += 1
        path = real_save_checkpoint(state, folder, step, keep_last)
        _journal(run_dir, f"saved {step}")  # written only once the checkpoint and its pointer are in place
        return path

    engine.save_checkpoint = save_checkpoint

    real_torch_save = torch.save

    def torch_save(obj, f, *args, **kwargs):
        if armed() and a.pause == "mid_write" and hasattr(f, "write"):
            buf = io.BytesIO()
            real_torch_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            _pause(run_dir, "mid_write")
        return real_torch_save(obj, f, *args, **kwargs)

    torch.save = torch_save

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        name = Path(dst).name
        if armed():
            if a.pause == "before_rename" and name.endswith(".pt"):
                _pause(run_dir, "before_rename")
            if a.pause == "before_pointer" and name == "latest":
                _pause(run_dir, "before_pointer")
        real_replace(src, dst, *args, **kwargs)
        if armed() and a.pause == "before_prune" and name == "latest":
            _pause(run_dir, "before_prune")

    os.replace = replace

    class SoakTrainer(Trainer):
        def _setup(self) -> None:
            super()._setup()
            _journal(run_dir, f"start {self.step}")
            _touch(run_dir / STARTED)

    cfg = TrainConfig(
        max_steps=a.max_steps, batch_size=8, lr=1e-2 if a.model == "toy" else 2e-3, num_workers=0, log_every=1,
        ckpt_every=a.ckpt_every, keep_last=a.keep_last, device="cpu", progress=False, tensorboard=False,
        ema_decay=0.9, seed=0,
    )
    summary = SoakTrainer(_make_task(a.model, a.step_sleep), cfg, run_dir).fit()
    _journal(run_dir, f"finished {summary['step']}")
    return 0


# ------------------------------------------------------------------------------------------------ the parent


def _spawn(run_dir: Path, a: argparse.Namespace, pause: str = "", pause_at: int = 0) -> subprocess.Popen:
    for marker in (STARTED, PAUSED):
        (run_dir / marker).unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(run_dir), "--model", a.model,
           "--max-steps", str(a.max_steps), "--ckpt-every", str(a.ckpt_every), "--keep-last", str(a.keep_last),
           "--step-sleep", str(a.step_sleep), "--pause", pause, "--pause-at", str(pause_at)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "soak_child_stderr.txt", "ab")
    try:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=REPO)
    finally:
        log.close()


def _wait_for(proc: subprocess.Popen, path: Path, timeout: float) -> bool:
    """Wait until ``path`` exists (True) or the process exits or the time is up (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return True
        if proc.poll() is not None:
            return path.exists()
        time.sleep(0.005)
    return False


def _journal_lines(run_dir: Path) -> list[tuple[str, int]]:
    path = run_dir / JOURNAL
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out.append((parts[0], int(parts[1])))
    return out


def check_folder(run_dir: Path) -> dict[str, Any]:
    """Check a run folder after a kill: every checkpoint loads and holds its step; the pointer is valid; the log
    reads. Returns counts, the newest loadable step and the step of the checkpoint a resume must pick
    (:func:`~diffcore.checkpoint.find_latest`: the one ``latest`` names)."""
    from diffcore.checkpoint import CheckpointError, find_latest, list_checkpoints, load_checkpoint
    from diffcore.train import read_log

    corrupt, steps = [], []
    for step, path in list_checkpoints(run_dir):
        try:
            state = load_checkpoint(path)
            if int(state["step"]) != step:
                raise CheckpointError(f"{path}: holds step {state['step']}")
            steps.append(step)
        except CheckpointError as e:
            corrupt.append(str(e))
    pointer = run_dir / "checkpoints" / "latest"
    dangling = 0
    if pointer.is_file():
        name = pointer.read_text().strip()
        if not (pointer.parent / name).is_file():
            dangling = 1
    latest = find_latest(run_dir)
    latest_step = int(latest.name[5:13]) if latest is not None and latest.name[5:13].isdigit() else 0
    stale = [p.name for p in (run_dir / "checkpoints").glob(".*.tmp")] if (run_dir / "checkpoints").is_dir() else []
    try:
        read_log(run_dir)
        log_ok = True
    except Exception:  # noqa: BLE001 - any failure to read the log counts
        log_ok = False
    return {"corrupt": corrupt, "dangling_pointer": dangling, "newest_step": max(steps) if steps else 0,
            "latest_step": latest_step, "stale_temp_files": len(stale), "log_ok": log_ok}


def _final_state(run_dir: Path) -> dict[str, Any]:
    from diffcore.checkpoint import find_latest, load_checkpoint

    return load_checkpoint(find_latest(run_dir))


def _tensors(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor of a nested state, by path."""
    import torch

    out: dict[str, Any] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


def same_training_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Model, EMA and optimizer tensors identical, and the same step."""
    import torch

    if a["step"] != b["step"]:
        return False
    ta = _tensors({k: a[k] for k in ("model", "ema", "optimizer")})
    tb = _tensors({k: b[k] for k in ("model", "ema", "optimizer")})
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def soak(work_dir: str | os.PathLike, *, minutes: float | None = None, kills: int | None = None,
         model: str = "toy", max_steps: int = 120, ckpt_every: int = 3, keep_last: int = 2,
         step_sleep: float = 0.004, seed: int = 0, life_s: float = 1.5, schedule: Sequence[str] | None = None,
         report: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the soak in ``work_dir`` until ``minutes`` have passed or ``kills`` kills were made (whichever comes
    first; at least one of them must be given), then let the current run finish without kills. Kill modes are
    drawn at random from ``KILL_MODES``, or taken in turn from ``schedule``. Returns the summary (see the module
    docstring)."""
    if schedule is not None and not set(schedule) <= set(KILL_MODES):
        raise ValueError(f"unknown kill modes {sorted(set(schedule) - set(KILL_MODES))}; known: {KILL_MODES}")
    if minutes is None and kills is None:
        raise ValueError("give a time budget (minutes) or a number of kills")
    a = argparse.Namespace(model=model, max_steps=max_steps, ckpt_every=ckpt_every, keep_last=keep_last,
                           step_sleep=step_sleep)
    rng = random.Random(seed)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    deadline = t_start + minutes * 60 if minutes is not None else float("inf")

    # the straight run every finished run must match
    ref_dir = work / "straight"
    if _final_step(ref_dir) != max_steps:
        proc = _spawn(ref_dir, a)
        if proc.wait() != 0:
            raise RuntimeError(f"the straight run failed; see {ref_dir / 'soak_child_stderr.txt'}")
    reference = _final_state(ref_dir)

    stats: Counter = Counter()
    modes: Counter = Counter()
    lost: list[int] = []
    corrupt: list[str] = []
    matches: list[bool] = []
    generation = 0
    budget_left = lambda: time.monotonic() < deadline and (kills is None or stats["kills"] < kills)  # noqa: E731
    while True:
        run_dir = work / f"run_{generation:03d}"
        report(f"generation {generation}: {run_dir}")
        while True:
            before = check_folder(run_dir) if run_dir.exists() else {"latest_step": 0}
            saved_before = [s for kind, s in _journal_lines(run_dir) if kind == "saved"]
            last_completed = max(saved_before, default=0)
            starts_before = len([1 for kind, _ in _journal_lines(run_dir) if kind == "start"])
            if not budget_left():
                mode = "none"
            elif schedule:
                mode = schedule[stats["kills"] % len(schedule)]  # a mode is tried until it kills
            else:
                mode = rng.choice(KILL_MODES)
            pause_at = rng.randint(1, 3) if mode in PAUSE_POINTS else 0
            proc = _spawn(run_dir, a, mode if mode in PAUSE_POINTS else "", pause_at)
            stats["lives"] += 1
            killed = False
            if mode == "random":
                if _wait_for(proc, run_dir / STARTED, 120):
                    time.sleep(rng.uniform(0.0, life_s))
                    killed = proc.poll() is None
            elif mode == "startup":
                time.sleep(rng.uniform(0.0, 3.0))
                killed = proc.poll() is None
            elif mode in PAUSE_POINTS:
                killed = _wait_for(proc, run_dir / PAUSED, 300) and proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait()
            # the resume step of this life, against the last checkpoint completed before it started
            starts = [s for kind, s in _journal_lines(run_dir) if kind == "start"]
            if len(starts) > starts_before:
                resumed = starts[starts_before]
                lost.append(max(0, last_completed - resumed))
                if resumed != before["latest_step"]:
                    stats["resume_step_mismatch"] += 1
            if killed:
                stats["kills"] += 1
                modes[mode] += 1
                after = check_folder(run_dir)
                corrupt.extend(after["corrupt"])
                stats["dangling_pointers"] += after["dangling_pointer"]
                stats["stale_temp_files_seen"] += after["stale_temp_files"]
                stats["unreadable_logs"] += 0 if after["log_ok"] else 1
                saved_now = [s for kind, s in _journal_lines(run_dir) if kind == "saved"]
                if saved_now and after["newest_step"] < max(saved_now):
                    stats["completed_checkpoint_missing"] += 1  # a completed write that did not survive
                continue
            if rc != 0:
                raise RuntimeError(f"life {stats['lives']} exited with status {rc} without being killed; see "
                                   f"{run_dir / 'soak_child_stderr.txt'}")
            if _final_step(run_dir) == max_steps:
                same = same_training_state(_final_state(run_dir), reference)
                matches.append(same)
                report(f"  finished after {stats['kills']} kills in total; equal to the straight run: {same}")
                break
        generation += 1
        if not budget_left():
            break

    checked = stats["kills"]
    summary = {
        "model": model,
        "max_steps": max_steps,
        "ckpt_every": ckpt_every,
        "duration_s": round(time.monotonic() - t_start, 1),
        "lives": stats["lives"],
        "kills": checked,
        "kills_by_mode": {m: modes[m] for m in KILL_MODES},
        "resumes_checked": len(lost),
        "steps_lost": int(sum(lost)),
        "max_steps_lost_in_one_resume": int(max(lost, default=0)),
        "corrupt_checkpoints": len(corrupt),
        "corrupt_details": corrupt[:10],
        "dangling_pointers": stats["dangling_pointers"],
        "completed_checkpoints_missing": stats["completed_checkpoint_missing"],
        "resume_step_mismatches": stats["resume_step_mismatch"],
        "stale_temp_files_seen": stats["stale_temp_files_seen"],
        "unreadable_logs": stats["unreadable_logs"],
        "runs_finished": len(matches),
        "runs_equal_to_straight_run": sum(matches),
    }
    summary["ok"] = (summary["steps_lost"] == 0 and summary["corrupt_checkpoints"] == 0
                     and summary["dangling_pointers"] == 0 and summary["completed_checkpoints_missing"] == 0
                     and summary["resume_step_mismatches"] == 0 and summary["unreadable_logs"] == 0
                     and summary["runs_finished"] == summary["runs_equal_to_straight_run"] >= 1)
    return summary


def _final_step(run_dir: Path) -> int | None:
    finished = [s for kind, s in _journal_lines(run_dir) if kind == "finished"]
    return finished[-1] if finished else None


def format_table(s: dict[str, Any]) -> str:
    rows = [
        ("model / max_steps / ckpt_every", f"{s['model']} / {s['max_steps']} / {s['ckpt_every']}"),
        ("duration", f"{s['duration_s']} s"),
        ("training processes started", s["lives"]),
        ("SIGKILLs survived", s["kills"]),
        *[(f"  killed {m}", n) for m, n in s["kills_by_mode"].items()],
        ("resumes checked", s["resumes_checked"]),
        ("steps lost beyond the last completed checkpoint", s["steps_lost"]),
        ("corrupt checkpoints", s["corrupt_checkpoints"]),
        ("dangling 'latest' pointers", s["dangling_pointers"]),
        ("completed checkpoints missing after a kill", s["completed_checkpoints_missing"]),
        ("resumed from another step than the newest checkpoint", s["resume_step_mismatches"]),
        ("unreadable logs", s["unreadable_logs"]),
        ("stale temporary files seen (removed on resume)", s["stale_temp_files_seen"]),
        ("runs finished / equal to a straight run", f"{s['runs_finished']} / {s['runs_equal_to_straight_run']}"),
        ("verdict", "OK" if s["ok"] else "FAILED"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=None, help="time budget (default: 5 unless --kills is given)")
    p.add_argument("--kills", type=int, default=None, help="stop killing after this many kills")
    p.add_argument("--model", choices=("toy", "diffwave"), default="toy")
    p.add_argument("--max-steps", type=int, default=120)
    p.add_argument("--ckpt-every", type=int, default=3)
    p.add_argument("--keep-last", type=int, default=2)
    p.add_argument("--step-sleep", type=float, default=0.004, help="seconds added to every step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="work folder (default: a temporary one, deleted afterwards)")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--child", metavar="RUN_DIR", help=argparse.SUPPRESS)
    p.add_argument("--pause", default="", help=argparse.SUPPRESS)
    p.add_argument("--pause-at", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        a.run_dir = a.child
        return child_main(a)
    minutes = a.minutes if a.minutes is not None or a.kills is not None else 5.0
    kwargs = dict(minutes=minutes, kills=a.kills, model=a.model, max_steps=a.max_steps, ckpt_every=a.ckpt_every,
                  keep_last=a.keep_last, step_sleep=a.step_sleep, seed=a.seed)
    if a.work:
        summary = soak(a.work, **kwargs)
    else:
        with tempfile.TemporaryDirectory(prefix="soak_") as work:
            summary = soak(work, **kwargs)
    print(format_table(summary))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
