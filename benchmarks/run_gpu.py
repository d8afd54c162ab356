"""The GPU suite (``make bench-gpu``): every figure of issue 6 on one CUDA GPU inside the time budget (8 minutes).

    python benchmarks/run_gpu.py                 # the suite, budget 400 s; stops and writes what it has at 445 s
    python benchmarks/run_gpu.py --smoke         # every code path for 1-2 iterations, tiny models, on CPU
    python benchmarks/run_gpu.py --no-compile    # (and --no-graphs, --no-bf16, ...) without that fast path

Sections, in order of priority (a section's slow variants are skipped, and marked so, when the budget left would
not cover them and the cheap variants of the sections after it):

1. ``vocode6``  DiffWave BASE, 6-step fast schedule, 10 s of 22.05 kHz audio, batch 1
2. ``train``    DiffWave BASE training, batch 16 × 15872 samples, real loss + Adam; loss agreement over 5 steps
3. ``unet``     U-Net CIFAR-10 (35.7M) training, batch 128
4. ``unetfwd``  U-Net CIFAR-10 forward, batch 256, images/s per network evaluation
5. ``memory``   largest training batch that fits (bf16 + channels-last, eager), DiffWave and U-Net
6. ``vocode16`` the 6-step schedule at batch 16
7. ``vocode50`` the 50-step schedule, batch 1

Writes ``benchmarks/results/gpu_<device>_<date>.json`` and prints a table with the targets of the issue.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.bench_diffwave import bench_train, bench_vocode, build_model, train_trial  # noqa: E402
from benchmarks.bench_unet import bench_unet_forward, bench_unet_train, unet_trial  # noqa: E402
from benchmarks.common import Budget, Report, Row, largest_batch  # noqa: E402
from benchmarks.suites import configure_torch, flags, forward_variants, train_variants, vocode_variants  # noqa: E402
from diffwave.config import DiffWaveConfig  # noqa: E402

SECTIONS = ["vocode6", "train", "unet", "unetfwd", "memory", "vocode16", "vocode50"]

#: Rough seconds each section needs without compiling (what later sections keep in reserve) and the extra a
#: compiled variant costs (inductor on the GPU machine's 16 cores).
EAGER_S = {"vocode6": 20, "train": 25, "unet": 25, "unetfwd": 10, "memory": 50, "vocode16": 15, "vocode50": 15}
COMPILE_S = 90
#: Seconds past the budget after which the suite stops where it is and writes what it has.
HARD_STOP_S = 45


class OutOfTime(BaseException):
    """Raised by the alarm at budget + HARD_STOP_S; a BaseException so that no benchmark's error handler keeps it."""


def _out_of_time(signum, frame):  # noqa: ARG001
    raise OutOfTime()


def main(argv: list[str] | None = None) -> int:
    args = flags(__doc__.splitlines()[0], budget=400).parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("run_gpu.py needs a CUDA GPU (use --smoke for a CPU check of the code paths)", file=sys.stderr)
        return 2
    configure_torch(args)
    device = torch.device("cpu" if args.smoke else "cuda")
    budget = Budget(args.budget)
    report = Report("gpu-smoke" if args.smoke else "gpu", device)
    report.info.update(
        cudnn_benchmark=torch.backends.cudnn.benchmark,
        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        budget_s=args.budget,
    )
    only = [s for s in args.only.split(",") if s] or SECTIONS
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        print(f"unknown section(s) {unknown}; choose from {SECTIONS}", file=sys.stderr)
        return 2
    smoke = args.smoke
    dw_preset = "tiny" if smoke else "base"
    unet_preset = "tiny" if smoke else "cifar10"
    seconds = 0.05 if smoke else 10.0
    reps = dict(repeats=1, warmup=1) if smoke else dict(repeats=3, warmup=1)
    compile_s = 0 if smoke else COMPILE_S

    def reserve(after: str) -> float:
        rest = only[only.index(after) + 1 :] if after in only else []
        return float(sum(EAGER_S[s] for s in rest)) if not smoke else 0.0

    model = build_model(dw_preset)
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _out_of_time)
        signal.alarm(int(args.budget + HARD_STOP_S))
    try:
        run_sections(report, device, args, only, model, budget, smoke, dw_preset, unet_preset, seconds, reps,
                     compile_s, reserve)
    except OutOfTime:
        report.note(f"stopped at {budget.elapsed():.0f} s: past the budget of {args.budget:.0f} s + {HARD_STOP_S} s")
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
    if smoke:
        report.note("smoke run: tiny models, one iteration, CPU; the figures and targets mean nothing")
    else:
        add_targets(report, smoke)
    path = report.write(args.out)
    print()
    print(report.table())
    print(f"\nwrote {path}")
    return 0


def run_sections(report, device, args, only, model, budget, smoke, dw_preset, unet_preset, seconds, reps,
                 compile_s, reserve) -> None:
    """The sections in ``only``, in order; a failing section is noted and the next one runs."""
    for section in only:
        t0 = time.monotonic()
        need = compile_s + reserve(section)
        try:
            if section == "vocode6":
                bench_vocode(report, device, vocode_variants(args), model=model, preset=dw_preset, seconds=seconds,
                             batch=1, budget=budget, min_left_s=need, **reps)
            elif section == "vocode16":
                bench_vocode(report, device, vocode_variants(args, "best"), model=model, preset=dw_preset,
                             seconds=seconds, batch=2 if smoke else 16, budget=budget, min_left_s=need, **reps)
            elif section == "vocode50":
                bench_vocode(report, device, vocode_variants(args, "best"), model=model, preset=dw_preset,
                             seconds=seconds, batch=1, schedule="full", budget=budget, min_left_s=need, **reps)
            elif section == "train":
                bench_train(report, device, train_variants(args), preset=dw_preset, batch=2 if smoke else 16,
                            frames=8 if smoke else 62, steps=1 if smoke else 10, repeats=1 if smoke else 3,
                            loss_steps=2 if smoke else 5, budget=budget, min_left_s=need)
            elif section == "unet":
                bench_unet_train(report, device, train_variants(args, "unet"), preset=unet_preset,
                                 batch=4 if smoke else 128, steps=1 if smoke else 10, repeats=1 if smoke else 3,
                                 loss_steps=2 if smoke else 5, budget=budget, min_left_s=need)
            elif section == "unetfwd":
                bench_unet_forward(report, device, forward_variants(args), preset=unet_preset,
                                   batch=8 if smoke else 256, repeats=1 if smoke else 5, warmup=1 if smoke else 2,
                                   budget=budget, min_left_s=need)
            elif section == "memory":
                memory_section(report, device, args, smoke, budget, reserve("memory"))
        except Exception:  # noqa: BLE001 - report and go on with the next section
            report.note(f"section {section} failed:\n{traceback.format_exc(limit=6)}")
        report.note(f"section {section}: {time.monotonic() - t0:.0f} s, {budget.left():.0f} s of the budget left")


def memory_section(report: Report, device: torch.device, args, smoke: bool, budget: Budget, keep: float) -> None:
    """Largest training batch (bf16 + channels-last, eager: no recompilation per batch) for DiffWave BASE and the
    CIFAR-10 U-Net, each search bounded in time; peak memory at the recipe batch is in the train rows' notes."""
    if device.type != "cuda":
        report.note("memory: the largest-batch search needs a CUDA GPU (skipped)")
        return
    from benchmarks.bench_diffwave import TrainVariant

    variant = TrainVariant("bf16 + channels-last", precision="bf16", channels_last=not args.no_channels_last)
    cfg = DiffWaveConfig.preset("base")

    def cleanup() -> None:
        torch.cuda.empty_cache()

    searches = [
        ("diffwave_max_batch", 16, 4096,
         train_trial(lambda: build_model("base"), variant, device,
                     lambda b: (0.1 * torch.randn(b, 62 * cfg.hop_length), torch.rand(b, cfg.n_mels, 62)))),
        ("unet_max_batch", 128, 16384, unet_trial("cifar10", device, variant)),
    ]
    for name, start, cap, trial in searches:
        seconds = max(0.0, min(25.0, budget.left() - keep - 5))
        row = Row(name, variant.name, start, "batch", None, settings={"baseline": False})
        if seconds < 5:
            row.error = "skipped: no time left in the budget"
            report.add(row)
            continue
        try:
            found = largest_batch(trial, start, cap=cap, seconds=seconds, resolution=1 / 16, cleanup=cleanup)
            row.value = found.largest_ok
            row.notes.update(smallest_failed=found.smallest_failed, trials=found.trials, stopped=found.stopped,
                             gpu_memory_gib=report.info.get("gpu_memory_gib"))
        except Exception as e:  # noqa: BLE001
            row.error = f"{type(e).__name__}: {e}"
        del trial
        torch.cuda.empty_cache()
        report.add(row)


def add_targets(report: Report, smoke: bool) -> None:
    """The goals of issue 6 (absolute goals were set on an H200; the ratios hold on any card)."""

    def best(benchmark: str, batch: int | None = None) -> float | None:
        r = report.best(benchmark, batch)
        return r.value if r else None

    def best_ratio(benchmark: str, batch: int | None = None) -> float | None:
        rows = [r for r in report.rows if r.benchmark == benchmark and r.ratio is not None
                and (batch is None or r.batch == batch)]
        return max(r.ratio for r in rows) if rows else None

    b16 = 2 if smoke else 16
    report.target("DiffWave training, best / eager fp32 steps/s", 3.0, best_ratio("diffwave_train"), "ratio")
    report.target("DiffWave training steps/s (H200 goal)", 45.0, best("diffwave_train"), "steps/s")
    report.target("6-step vocoding, batch 1, x real time", 600.0, best("diffwave_vocode_6step", 1), "x_realtime")
    report.target(f"6-step vocoding, batch {b16}, x real time", 1000.0, best("diffwave_vocode_6step", b16),
                  "x_realtime")
    report.target("50-step vocoding, batch 1, x real time", 80.0, best("diffwave_vocode_50step", 1), "x_realtime")
    report.target("U-Net training images/s (H200 goal: 1.5 x diffusers bf16 2313)", 3500.0, best("unet_train"),
                  "images/s")
    report.target("U-Net forward images/s (2 x diffusers fp32 4730)", 9460.0, best("unet_forward"), "images/s")


if __name__ == "__main__":
    sys.exit(main())
