"""The vocoder bake-off of issue 17: quality on held-out LJSpeech against CPU-minutes of training, every candidate
beside Griffin-Lim, the failures included. A benchmark, not a test.

    .venv/bin/python benchmarks/bench_vocoder_bakeoff.py --runs runs/refiner_a runs/refiner_gainonly \\
        [--out benchmarks/results/vocoder_bakeoff]

Candidates and where their figures come from:

- **Refiner runs** (``tools/train_refiner.py`` run folders): each run's ``record.jsonl``, the EMA weights scored on
  the 3 held-out clips, whole, at every evaluation (CPU minutes of the training process). Run labels come from the
  run's stored model config.
- **DiffWave** runs of the quality benchmark (``--diffwave FOLDER:VARIANT``; by default the shipped ``ljspeech-tiny``'s
  curve from issue 11, ``benchmarks/results/vocoder_quality``: held-out clips, first 5 s, 6-step fast schedule,
  Intel Xeon), their steps converted to CPU minutes with that benchmark's measured CPU cost per step.
- **Frame-rate ε-predictor** (the issue's scratch prototype, 30 CPU-minutes): the figures the issue reports, on 4
  other held-out LJSpeech clips; quoted, not rerun.
- **Griffin-Lim** (64 iterations, the baseline): step 0 of every refiner run.

Writes ``OUT/table.md``, ``OUT/results.json`` and ``OUT/quality_vs_cpu_minutes.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402

KEYS = [("log_mel_l1", "log-mel L1 ↓"), ("pesq_wb", "PESQ-WB ↑"), ("stoi", "STOI ↑"), ("dnsmos_p808", "DNSMOS P.808 ↑")]

#: The issue's scratch frame-rate ε-predictor (its own measurement, 4 held-out clips the project does not have).
ISSUE_EPS_PROTOTYPE = {"label": "frame-rate ε-predictor (issue's prototype, quoted)", "cpu_minutes": 30.0,
                       "scores": {"log_mel_l1": 3.92, "pesq_wb": 1.03, "stoi": 0.52, "dnsmos_p808": 2.31},
                       "source": "issue 17: 6231 steps, 2.7M parameters, 2 threads, AMD EPYC; 4 other clips"}


def _label(run: Path) -> str:
    from diffcore.checkpoint import find_latest, load_checkpoint

    latest = find_latest(run)
    if latest is None:
        raise SystemExit(f"{run} holds no checkpoint: give a run folder of tools/train_refiner.py")
    m = load_checkpoint(latest)["config"]["model"]
    phase = "gain + phase" if m.get("correct_phase", True) else "gain only"
    return f"refiner ({phase}, {m['num_blocks']}×{m['dim']})"


def refiner_series(run: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (run / "record.jsonl").read_text().splitlines() if line.strip()]
    points = [{"cpu_minutes": r["cpu_minutes"], "step": r["step"], "scores": r["heldout"]["refiner"],
               "griffinlim": r["heldout"]["griffinlim"]} for r in rows if "heldout" in r]
    return {"label": _label(run), "run": str(run), "points": points,
            "source": "this machine, 1 thread; held-out clips whole"}


#: DiffWave variants of benchmarks/bench_vocoder_quality.py and how the bake-off names them.
DIFFWAVE_LABELS = {"prior": "DiffWave tiny (10×32) + PriorGrad prior (ljspeech-tiny's run)",
                   "prior_small": "DiffWave 12×48 + PriorGrad prior (larger)"}


def diffwave_series(folder: Path, variant: str) -> dict[str, Any] | None:
    """One variant of a quality-benchmark folder (results.json + step_cost.json), its steps turned into CPU minutes
    with the CPU cost per step that benchmark measured."""
    path, cost = folder / "results.json", folder / "step_cost.json"
    if not path.is_file() or not cost.is_file():
        return None
    meta = json.loads(cost.read_text())
    ms = meta["ms_per_step_cpu"].get(variant)
    rows = [r for r in json.loads(path.read_text())["rows"] if r["variant"] == variant]
    if ms is None or not rows:
        return None
    points = [{"cpu_minutes": r["step"] * ms / 6e4, "step": r["step"], "scores": r["diffwave"],
               "griffinlim": r["griffinlim"]} for r in rows]
    machine = meta.get("meta", {}).get("machine", "?")
    return {"label": DIFFWAVE_LABELS.get(variant, f"DiffWave {variant}"), "points": points,
            "source": f"benchmarks/bench_vocoder_quality.py ({folder}): {machine}, 1 thread, first 5 s of the "
                      f"held-out clips, 6-step fast schedule; CPU minutes = steps x {ms:.0f} ms"}


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=[])
    p.add_argument("--diffwave", nargs="*", default=["benchmarks/results/vocoder_quality:prior"],
                   help="FOLDER:VARIANT of benchmarks/bench_vocoder_quality.py results to include")
    p.add_argument("--out", default="benchmarks/results/vocoder_bakeoff")
    a = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [refiner_series(Path(r)) for r in a.runs]
    for spec in a.diffwave:
        folder, _, variant = spec.partition(":")
        dw = diffwave_series(Path(folder), variant)
        if dw:
            series.append(dw)
    gl = series[0]["points"][0]["griffinlim"] if series and series[0]["points"] else {}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"Machine for the refiner runs: {cpu_name()} (2 cores, AVX-512), 1 training thread each, shared with "
             f"other jobs; {dt.date.today().isoformat()}. Held-out clips LJ001-0007, -0013, -0018.", "",
             "| candidate | CPU-min | step | " + " | ".join(k[1] for k in KEYS) + " | gap to Griffin-Lim (PESQ, DNSMOS) |",
             "|---|---:|---:|" + "---:|" * len(KEYS) + "---|"]
    for s in series:
        for pt in s["points"]:
            sc, g = pt["scores"], pt["griffinlim"]
            gap = (f"{sc['pesq_wb'] - g['pesq_wb']:+.3f}, {sc['dnsmos_p808'] - g['dnsmos_p808']:+.3f}"
                   if sc.get("pesq_wb") is not None and g.get("pesq_wb") is not None else "n/a")
            lines.append(f"| {s['label']} | {pt['cpu_minutes']:.1f} | {pt['step']} | "
                         + " | ".join(_fmt(sc.get(k)) for k, _ in KEYS) + f" | {gap} |")
    e = ISSUE_EPS_PROTOTYPE
    lines.append(f"| {e['label']} | {e['cpu_minutes']:.1f} | 6231 | "
                 + " | ".join(_fmt(e["scores"].get(k)) for k, _ in KEYS) + " | (other clips) |")
    lines.append(f"| Griffin-Lim (64 it.) | 0 | — | " + " | ".join(_fmt(gl.get(k)) for k, _ in KEYS) + " | 0, 0 |")
    lines += ["", "Sources: " + "; ".join(f"{s['label']}: {s['source']}" for s in series)
              + f"; {e['label']}: {e['source']}."]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"machine": cpu_name(), "date": dt.date.today().isoformat(),
                                                  "series": series, "quoted": [e]}, indent=1) + "\n")
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, (key, name) in zip(axes, KEYS):
        for s in series:
            xs = [pt["cpu_minutes"] for pt in s["points"]]
            ys = [pt["scores"].get(key) for pt in s["points"]]
            ax.plot(xs, ys, "o-", label=s["label"])
        if gl.get(key) is not None:
            ax.axhline(gl[key], color="k", ls="--", lw=1, label="Griffin-Lim (64 it.)")
        ax.scatter([e["cpu_minutes"]], [e["scores"][key]], marker="x", color="r", label=e["label"])
        ax.set_xlabel("CPU-minutes of training")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Vocoder bake-off: held-out LJSpeech quality per CPU-minute (issue 17)")
    fig.tight_layout()
    fig.savefig(out / "quality_vs_cpu_minutes.png", dpi=110)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
