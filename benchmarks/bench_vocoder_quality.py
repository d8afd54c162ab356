"""Vocoder quality per training minute: each variant trains for the same CPU budget on the same real speech and is
scored on the same held-out clips beside Griffin-Lim (issue 11's ablation). A benchmark, not a test.

    .venv/bin/python benchmarks/bench_vocoder_quality.py --data ../shared/data/ljspeech/wavs \\
        --marks 250,500,1000 --threads 1 --variants baseline,prior,prior_stft

Every variant starts from the same seed, recipe and data (``data.holdout`` clips, evenly spread over the sorted
list, are never trained on). Training runs up to each mark (a step count) and records the training seconds it took
(evaluation not counted); at each mark the EMA weights vocode the held-out clips' mels (first ``--eval-seconds`` of
each, 6-step fast schedule) and are scored with log-mel L1, MR-STFT, PESQ-WB, STOI and DNSMOS P.808. Marks are
steps, not minutes, because on a shared machine the wall clock of a step varies with the load; the minutes are
reported beside them. A variant's learning rate is constant after warm-up, so one run gives the whole curve. Runs
resume: running the command again with more marks continues each variant from its last one.

Writes ``OUT/results.json`` (every mark of every variant, machine, threads, date), ``OUT/table.md`` and
``OUT/quality_vs_steps.png`` (``OUT``: ``--out``, default ``runs/vocoder_quality``; the figures in BENCHMARKS.md are
copies of one such folder's report in ``benchmarks/results/vocoder_quality/``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402

#: The ablation's variants: overrides of the common recipe below.
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "prior": {"model": {"prior": {}}},
    "prior_stft": {"model": {"prior": {}}, "loss": {"stft_weight": 0.1}},
    "stft": {"loss": {"stft_weight": 0.1}},
    "prior_small": {"model": {"prior": {}, "residual_layers": 12, "residual_channels": 48, "dilation_cycle": 6}},
    "prior_lr1e-3": {"model": {"prior": {}}, "train": {"lr": 1e-3}},
}

#: The common recipe: the quickstart's (tiny preset, short crops, small batches, a high learning rate), at a constant
#: rate after warm-up.
COMMON: dict[str, Any] = {
    "model": {"preset": "tiny"},
    "data": {"holdout": 3, "crop_frames": 8},
    "train": {"max_steps": 10_000_000, "batch_size": 8, "lr": 2e-3, "lr_schedule": "constant", "warmup_steps": 20,
              "grad_clip": 1.0, "precision": "fp32", "ema_decay": 0.999, "num_workers": 0, "log_every": 50,
              "ckpt_every": 1_000_000, "keep_last": 2, "device": "cpu", "seed": 0},
}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_variant(name: str, data: str, out: Path, marks: list[int], eval_seconds: float,
                with_dnsmos: bool, log) -> list[dict[str, Any]]:
    """Train variant ``name`` to each mark (a step) and score it there; returns one row per mark."""
    from diffcore.train import Trainer
    from diffwave.api import evaluate_resynthesis_files, load
    from diffwave.data import split_files
    from diffwave.recipe import DiffWaveRecipe
    from diffwave.task import make_task

    recipe = DiffWaveRecipe.from_dict(_merge(_merge(COMMON, VARIANTS[name]), {"data": {"path": data}}))
    run_dir = out / "runs" / name
    state_file = out / "runs" / f"{name}.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"train_seconds": 0.0, "rows": []}
    done = {r["step"] for r in state["rows"]}
    _, held_out = split_files(recipe.data)
    task = make_task(recipe)
    for mark in marks:
        if mark in done:
            continue
        if state.get("step", 0) < mark:
            t0 = time.monotonic()
            summary = Trainer(task, recipe.train, run_dir).fit(until=mark)
            state["train_seconds"] += time.monotonic() - t0
            state["step"] = int(summary["step"])
            state_file.parent.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps(state, indent=1))
        t0 = time.monotonic()
        voc = load(run_dir, "cpu")
        res = evaluate_resynthesis_files(voc, held_out, out / "eval" / name / f"step{mark}", "fast",
                                         max_seconds=eval_seconds, with_dnsmos=with_dnsmos, progress=False)
        table = res["table"].to_dict()
        systems = list(table["means"])
        row = {"variant": name, "minutes": state["train_seconds"] / 60.0, "step": state["step"], "train_seconds": state["train_seconds"],
               "diffwave": table["means"][systems[0]], "griffinlim": table["means"][systems[-1]],
               "eval_seconds": time.monotonic() - t0}
        state["rows"].append(row)
        state_file.write_text(json.dumps(state, indent=1))
        m = row["diffwave"]
        log(f"{name:14s} {row['minutes']:6.1f} min  step {row['step']:6d}  log-mel L1 {m['log_mel_l1']:.3f}  "
            f"PESQ {m.get('pesq_wb') or math.nan:.3f}  STOI {m.get('stoi') or math.nan:.3f}  "
            f"DNSMOS {m.get('dnsmos_p808') or math.nan:.3f}")
    return state["rows"]


def prior_noise_row(data: str, out: Path, eval_seconds: float, with_dnsmos: bool) -> dict[str, Any]:
    """The scores of the prior alone: a network that predicts ε̂ = 0, sampled with the same schedule and noise, so
    the output is noise with the mel's loudness contour. What a prior variant scores beyond this, its network made."""
    import torch

    from diffwave.audio import load_audio
    from diffwave.config import DiffWaveConfig
    from diffwave.mel import compute_mel
    from diffwave.metrics import evaluate_resynthesis
    from diffwave.data import split_files
    from diffwave.recipe import DiffWaveRecipe
    from diffwave.sample import vocode_mels

    class Zero(torch.nn.Module):
        def __init__(self, config: DiffWaveConfig) -> None:
            super().__init__()
            self.config, self.w = config, torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, cond=None):
            return torch.zeros_like(x) * self.w

    recipe = DiffWaveRecipe.from_dict(_merge(_merge(COMMON, VARIANTS["prior"]), {"data": {"path": data}}))
    _, held_out = split_files(recipe.data)
    pairs = []
    for k, f in enumerate(held_out):
        ref, _ = load_audio(f, recipe.model.sample_rate)
        ref = ref.clamp(-1, 1)[: int(eval_seconds * recipe.model.sample_rate)]
        mel = compute_mel(ref, recipe.model.mel)
        est = vocode_mels(Zero(recipe.model), [mel], generator=torch.Generator().manual_seed(k), inference="eager")[0]
        pairs.append((ref, est[: ref.shape[-1]]))
    table = evaluate_resynthesis(pairs, recipe.model.sample_rate, system="prior noise", with_dnsmos=with_dnsmos)
    means = table.to_dict()["means"]["prior noise"]
    return {"variant": "prior noise only (ε̂ = 0)", "minutes": 0.0, "step": 0, "train_seconds": 0.0,
            "diffwave": means, "griffinlim": {}}


def step_cost(data: str, variants: list[str], rounds: int = 3, steps: int = 20) -> dict[str, float]:
    """Milliseconds per training step (loss, backward, Adam) of each variant, one batch from its own data pipeline,
    interleaved over ``rounds`` in this process; the median per variant. Turns the table's steps into CPU time
    independently of the machine's load during the runs."""
    import statistics

    import torch

    from diffwave.model import DiffWave
    from diffwave.recipe import DiffWaveRecipe
    from diffwave.task import make_task

    setups = {}
    for name in variants:
        recipe = DiffWaveRecipe.from_dict(_merge(_merge(COMMON, VARIANTS[name]), {"data": {"path": data}}))
        task = make_task(recipe)
        torch.manual_seed(0)
        model = DiffWave(recipe.model)
        ds = task.train_dataset()
        batch = {k: torch.stack([ds[i][k] for i in range(recipe.train.batch_size)]) for k in ds[0]}
        setups[name] = (task, model, torch.optim.Adam(model.parameters(), recipe.train.lr), batch)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (task, model, opt, batch) in setups.items():
            t0 = time.process_time()
            for _ in range(steps):
                loss = task.loss(model, batch).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            times[name].append(1e3 * (time.process_time() - t0) / steps)
    return {name: statistics.median(v) for name, v in times.items()}


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def write_report(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("log_mel_l1", "log-mel L1 ↓"), ("mr_stft", "MR-STFT ↓"), ("pesq_wb", "PESQ-WB ↑"), ("stoi", "STOI ↑"),
            ("dnsmos_p808", "DNSMOS P.808 ↑")]
    lines = [f"Machine: {meta['machine']}, {meta['threads']} thread(s) per run; {meta['date']}; data: "
             f"{meta['data']} ({meta['eval']}).", "",
             "| variant | training min | steps | " + " | ".join(k[1] for k in keys) + " |",
             "|---|---:|---:|" + "---:|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['minutes']:.1f} | {r['step']} | "
                     + " | ".join(_fmt(r["diffwave"].get(k)) for k, _ in keys) + " |")
    if rows:
        gl = rows[-1]["griffinlim"]
        lines.append("| Griffin-Lim (64 it.) | — | — | " + " | ".join(_fmt(gl.get(k)) for k, _ in keys) + " |")
    cost_file = out / "step_cost.json"
    if cost_file.exists():
        cost = json.loads(cost_file.read_text())["ms_per_step_cpu"]
        base = cost.get("baseline")
        lines += ["", "CPU time per training step (one thread, interleaved in one process, median of 3 rounds of 20):",
                  ""] + [f"- {k}: {v:.0f} ms" + (f" ({v / base:.2f}x baseline)" if base else "") for k, v in cost.items()]
    (out / "table.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, label) in zip(axes, [keys[0], keys[2], keys[3], keys[4]]):
        for variant in dict.fromkeys(r["variant"] for r in rows):
            pts = [(r["step"], r["diffwave"].get(key)) for r in rows if r["variant"] == variant and r["step"] > 0]
            if not pts:
                continue
            pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=variant)
        floor = next((r["diffwave"].get(key) for r in rows if r["step"] == 0), None)
        if floor is not None and math.isfinite(floor):
            ax.axhline(floor, color="gray", ls=":", lw=1, label="prior noise only (ε̂ = 0)")
        if rows and rows[-1]["griffinlim"].get(key) is not None:
            ax.axhline(rows[-1]["griffinlim"][key], color="k", ls="--", lw=1, label="Griffin-Lim")
        ax.set_xlabel("training steps")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"DiffWave vocoder quality per training step — {meta['machine']}, {meta['threads']} thread(s)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_steps.png", dpi=110)
    plt.close(fig)


def _report(out: Path, meta: dict[str, Any]) -> None:
    """results.json, table.md and the PNG from every variant's state file in ``out/runs`` (runs of several
    processes that share ``out`` end up in one report)."""
    rows = [r for f in sorted((out / "runs").glob("*.json")) for r in json.loads(f.read_text())["rows"]]
    gl = next((r["griffinlim"] for r in reversed(rows) if r["griffinlim"]), {})
    rows = [{**r, "griffinlim": r["griffinlim"] or gl} for r in rows]
    order = list(VARIANTS)
    rows.sort(key=lambda r: (order.index(r["variant"]) if r["variant"] in order else len(order), r["step"]))
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_report(out, rows, meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/ljspeech/wavs", help="folder of real speech recordings (e.g. ../shared/data/ljspeech/wavs)")
    p.add_argument("--variants", default="baseline,prior,prior_stft", help=f"comma-separated, of {list(VARIANTS)}")
    p.add_argument("--marks", default="250,500,1000", help="comma-separated training steps to score at")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--eval-seconds", type=float, default=5.0, help="seconds of each held-out clip to vocode")
    p.add_argument("--no-dnsmos", action="store_true")
    p.add_argument("--out", default="runs/vocoder_quality",
                   help="working folder: runs, state, report (the committed figures: benchmarks/results/vocoder_quality)")
    p.add_argument("--report", action="store_true", help="only rewrite the report from the runs already in --out")
    p.add_argument("--step-cost", action="store_true",
                   help="also time one training step of each variant (CPU time, interleaved, in this process)")
    args = p.parse_args(argv)
    marks = sorted({int(m) for m in args.marks.split(",")})
    if args.threads < 1 or not marks or marks[0] < 1:
        p.error("--threads and every mark must be positive")
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{cpu_name()} ({os.cpu_count()} cores)", "threads": args.threads,
            "date": dt.date.today().isoformat(), "data": args.data, "torch": torch.__version__,
            "eval": f"held-out clips, first {args.eval_seconds:g} s each, 6-step fast schedule"}
    null_file = out / "runs" / "_prior_noise.json"
    if not null_file.exists() and (args.report or any("prior" in v for v in args.variants.split(","))):
        null_file.parent.mkdir(parents=True, exist_ok=True)
        null_file.write_text(json.dumps({"rows": [prior_noise_row(args.data, out, args.eval_seconds,
                                                                  not args.no_dnsmos)]}, indent=1))
    if args.step_cost:
        asked = set(args.variants.split(",")) | {"baseline", "prior"}  # the variants run, beside the reference ones
        names = [v for v in VARIANTS if v in asked]
        cost = step_cost(args.data, names)
        (out / "step_cost.json").write_text(json.dumps({"meta": meta, "ms_per_step_cpu": cost}, indent=1))
    variants = [] if args.report else args.variants.split(",")
    for name in variants:
        run_variant(name, args.data, out, marks, args.eval_seconds, not args.no_dnsmos, print)
        _report(out, meta)
    _report(out, meta)
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
