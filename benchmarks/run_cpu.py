"""The CPU suite (``make bench-cpu``): DiffWave 6-step vocoding of 1 s of audio at batch 1, eager fp32 against the
CPU fast paths, and a smoke run of the U-Net (tiny preset). About 6 minutes on 2 idle cores (more on a busy one).

    python benchmarks/run_cpu.py                  # the suite
    python benchmarks/run_cpu.py --smoke          # 1 iteration of everything with tiny models
    python benchmarks/run_cpu.py --no-compile     # (and --no-bf16, --no-cache, --no-allocator, ...)

Two measurements of the vocoder:

1. ``diffwave_vocode_6step``: all cores, wall clock: the figure of the issue. The eager fp32 reference, the fastest
   path, and the fastest without compilation. On a machine shared with other work these figures fall with the load (the load average at
   start and end is in the report).
2. ``diffwave_vocode_6step_1thread``: one thread, process CPU time, in a child process (inductor generates its
   kernels for the thread count it sees): every lever on its own and stacked. A single thread's CPU time hardly
   depends on other processes, so these ratios are the machine's own; with linear scaling, all cores give
   ``cores ×`` these speeds.

The eager fp32 reference runs first, before the allocator tuning (process-wide) of the speed-up variants. Each speed-up
variant's output is compared with the reference output for the same noise: log-mel L1 and SNR in dB.
Writes ``benchmarks/results/cpu_<cpu>_<date>.json`` and prints a table with the targets of the issue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.bench_diffwave import bench_vocode, build_model  # noqa: E402
from benchmarks.bench_unet import bench_unet_forward, bench_unet_train  # noqa: E402
from benchmarks.common import Budget, Report, Row  # noqa: E402
from benchmarks.suites import configure_torch, flags, forward_variants, train_variants, vocode_variants  # noqa: E402

SECTIONS = ["vocode", "vocode1t", "unet"]
ONE_THREAD = "diffwave_vocode_6step_1thread"


def main(argv: list[str] | None = None) -> int:
    parser = flags(__doc__.splitlines()[0], budget=720)
    parser.add_argument("--child-json", type=Path, default=None, help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.child_json is not None:
        return child(args)
    configure_torch(args)
    device = torch.device("cpu")
    budget = Budget(args.budget)
    report = Report("cpu-smoke" if args.smoke else "cpu", device)
    report.info.update(budget_s=args.budget, physical_cores=_physical_cores())
    only = [s for s in args.only.split(",") if s] or SECTIONS
    smoke = args.smoke
    preset = "tiny" if smoke else "base"
    seconds = 0.1 if smoke else 1.0
    for section in only:
        t0 = time.monotonic()
        try:
            if section == "vocode":
                bench_vocode(report, device, vocode_variants(args, "best", cpu=True), model=build_model(preset),
                             preset=preset,
                             seconds=seconds, batch=1, budget=budget, min_left_s=0 if smoke else 300,
                             repeats=1 if smoke else 3, warmup=1)
            elif section == "vocode1t":
                left = budget.left() - (0 if smoke else 90)  # keep time for the U-Net section
                for row in one_thread(args, max(left, 60.0)):
                    report.add(row)
            elif section == "unet":
                cpu_args = dict(budget=budget, min_left_s=0)
                bench_unet_train(report, device, [v for v in train_variants(args, "unet") if not v.compile],
                                 preset="tiny", batch=4 if smoke else 16, steps=1 if smoke else 3,
                                 repeats=1 if smoke else 3, loss_steps=2, **cpu_args)
                bench_unet_forward(report, device, forward_variants(args, cpu=True), preset="tiny",
                                   batch=8 if smoke else 64, repeats=1 if smoke else 3, warmup=1, **cpu_args)
            else:
                report.note(f"unknown section {section!r}; choose from {SECTIONS}")
        except Exception:  # noqa: BLE001
            report.note(f"section {section} failed:\n{traceback.format_exc(limit=6)}")
        report.note(f"section {section}: {time.monotonic() - t0:.0f} s, {budget.left():.0f} s of the budget left")
    try:
        report.info["load_average_end"] = list(os.getloadavg())
    except OSError:
        pass
    if smoke:
        report.note("smoke run: tiny models, one iteration; the figures and targets mean nothing")
    else:
        ratios = [r.ratio for r in report.rows if r.benchmark == "diffwave_vocode_6step" and r.ratio is not None]
        best = report.best("diffwave_vocode_6step", 1)
        report.target("CPU 6-step vocoding of 1 s, x real time (wall clock)", 1.0, best.value if best else None,
                      "x_realtime")
        report.target("CPU 6-step vocoding, best / eager fp32 (wall clock)", 4.0, max(ratios, default=None), "ratio")
        ratios1 = [r.ratio for r in report.rows if r.benchmark == ONE_THREAD and r.ratio is not None]
        report.target("CPU 6-step vocoding, best / eager fp32 (1 thread, CPU time)", 4.0,
                      max(ratios1, default=None), "ratio")
        best1 = report.best(ONE_THREAD, 1)
        cores = report.info.get("physical_cores") or 1
        report.target(f"CPU 6-step vocoding x real time, 1-thread figure x {cores} cores (estimate)", 1.0,
                      best1.value * cores if best1 else None, "x_realtime")
    path = report.write(args.out)
    print()
    print(report.table())
    print(f"\nwrote {path}")
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def one_thread(args, seconds: float) -> list[Row]:
    """Run the single-thread CPU-time measurement in a child process with its own inductor cache; its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-json", str(out), "--threads", "1",
               "--budget", str(seconds)]
        cmd += [f for f in ("--smoke", "--no-bf16", "--no-channels-last", "--no-compile", "--no-cache",
                            "--no-allocator") if getattr(args, f[2:].replace("-", "_"))]
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / "inductor"), OMP_NUM_THREADS="1")
        subprocess.run(cmd, env=env, check=True, timeout=seconds + 120)
        data = json.loads(out.read_text())
    return [Row(**r) for r in data]


def child(args) -> int:
    """The single-thread part: every variant, figures from process CPU time; rows written to ``--child-json``."""
    configure_torch(args)
    budget = Budget(args.budget)
    report = Report("cpu-1thread", "cpu")
    preset = "tiny" if args.smoke else "base"
    rows = bench_vocode(report, torch.device("cpu"), vocode_variants(args, cpu=True), model=build_model(preset),
                        preset=preset, seconds=0.1 if args.smoke else 1.0, batch=1, budget=budget,
                        min_left_s=0 if args.smoke else 90, repeats=1 if args.smoke else 2, warmup=1,
                        benchmark=ONE_THREAD, clock="cpu")
    for r in rows:
        r.settings["threads"] = torch.get_num_threads()
    from benchmarks.common import _finite

    args.child_json.write_text(json.dumps(_finite([r.__dict__ for r in rows]), default=str))
    return 0


def _physical_cores() -> int | None:
    try:
        out = subprocess.run(["lscpu", "-p=CORE,SOCKET"], capture_output=True, text=True, timeout=10).stdout
        cores = {line for line in out.splitlines() if line and not line.startswith("#")}
        return len(cores) or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
