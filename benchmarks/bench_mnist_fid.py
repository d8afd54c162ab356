"""FID of an MNIST model against digits held out from its training, as its training minutes grow.

    OMP_NUM_THREADS=1 python benchmarks/bench_mnist_fid.py --run runs/mnist_small \
        --data ../shared/data/mnist/train.npz --minutes 15,30,45,60 --num-samples 500 --threads 1
    python benchmarks/bench_mnist_fid.py --model mnist-small --data ../shared/data/mnist/train.npz \
        --num-samples 2000 --samplers ddim50,heun18 --threads 2          # the shipped model

Reference: the shared data has no MNIST test split, so the recipe (``recipes/mnist_small.yaml``: ``data.limit``
50000) trains on the first 50,000 digits of ``train.npz`` and the last 10,000 are never seen in training; they are
the FID reference here (``--reference-limit`` of them, spread evenly over the 10,000). Features: the standard FID
Inception-v3 (:mod:`diffimage.fid`), reference statistics cached in ``--cache-dir``.

``--reference training`` scores against training digits instead (other ones than ``--real`` uses): the reference
for choosing a sampling option such as a guidance scale, so the held-out digits only ever report the choice.
``--real`` scores real training digits in place of samples: the floor a perfect model reaches at those counts.
FID from few samples is biased upwards (the bias shrinks roughly like 1/N), so every figure carries its number of
generated and reference images, and figures are only comparable at equal counts; KID (unbiased) is reported too.
Samples: DDIM (η = 0) with 50 steps, and Heun (Karras et al. 2022, ``heunN`` = N steps, 2N − 1 network
evaluations), from the EMA weights, batches seeded ``seed + i``.

Checkpoints: ``--minutes`` picks, for each value, the last checkpoint of the run folder at or before that many
training minutes (wall-clock minutes of the training process, summed over the intervals of ``log.jsonl``, resumes
not counted); ``--steps`` picks steps directly. Results accumulate in ``--out``/results.json (a point already
measured with the same settings is skipped, so the benchmark can run while the model trains) and are plotted as
``--out``/fid_curve.png. Not a test: it takes tens of minutes on a CPU (Inception-v3 costs about 0.3–0.8 s per image
on one busy core).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Digits of train.npz the recipe trains on; the rest are the held-out FID reference.
TRAIN_DIGITS = 50_000


def heldout_reference(data: str | Path, limit: int | None, first: int = TRAIN_DIGITS) -> torch.Tensor:
    """uint8 ``[N, 1, 28, 28]``: the digits of ``data`` from index ``first`` on (``limit`` of them, spread)."""
    with np.load(data, allow_pickle=False) as d:
        images = d["images"][first:]
    if images.shape[0] == 0:
        raise SystemExit(f"{data} has no images after index {first}")
    if limit is not None and limit < images.shape[0]:
        images = images[((np.arange(limit) + 0.5) * images.shape[0] / limit).astype(np.int64)]
    return torch.from_numpy(np.ascontiguousarray(images))[:, None]


def _training_part(data: str | Path, n: int, offset: float) -> torch.Tensor:
    """uint8 ``[n, 1, 28, 28]``: the digits at ``(k + offset) · 50000 / n`` of the first :data:`TRAIN_DIGITS`."""
    with np.load(data, allow_pickle=False) as d:
        images = d["images"][:TRAIN_DIGITS]
    picks = ((np.arange(n) + offset) * images.shape[0] / n).astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(images[picks]))[:, None]


def tuning_reference(data: str | Path, limit: int) -> torch.Tensor:
    """uint8 ``[limit, 1, 28, 28]``: training digits spread over the first :data:`TRAIN_DIGITS` at other positions
    than :func:`training_digits` picks (``k · 50000 / limit`` against ``(k + 0.5) · 50000 / limit``), the reference
    of ``--reference training``: a sampling option is chosen against it, never against the held-out digits."""
    return _training_part(data, limit, 0.0)


def training_digits(data: str | Path, n: int) -> torch.Tensor:
    """uint8 ``[n, 1, 28, 28]``: ``n`` real digits spread over the first :data:`TRAIN_DIGITS` (the training part), the
    "samples" of the real-vs-real floor (``--real``): what a perfect model's FID is at these counts."""
    return _training_part(data, n, 0.5)


def real_floor(data: str | Path, reference: torch.Tensor, n: int, cache: Path, batch_size: int) -> dict[str, Any]:
    """FID of ``n`` real training digits against the held-out reference: the small-sample floor."""
    from diffimage.evaluate import reference_features
    from diffimage.fid import extract_features

    ref = reference_features(reference, None, cache, batch_size, "cpu")
    real = extract_features(training_digits(data, n), None, batch_size, "cpu")
    return {"source": "real training digits", "fid": fid_of_features(real, ref), "num_samples": n,
            "num_reference": int(ref.shape[0]), "sampler": "real", "steps": 0, "minutes": None}


def training_minutes(run_dir: Path) -> dict[int, float]:
    """Training minutes at each logged step: the sum of the intervals between consecutive training records (a gap
    over 10 minutes or a step that does not grow, i.e. a resume, adds nothing) plus the first record's own steps."""
    out: dict[int, float] = {}
    prev = None
    total = 0.0
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(r.get("loss"), (int, float)) or "time" not in r or "step" not in r:
            continue
        if prev is None:
            total = r["step"] / max(float(r.get("steps_per_s") or 1.0), 1e-9)
        elif r["step"] > prev["step"] and 0 < r["time"] - prev["time"] < 600:
            total += r["time"] - prev["time"]
        out[int(r["step"])] = total / 60.0
        prev = r
    return out


def minutes_at(step: int, table: dict[int, float]) -> float:
    """Minutes at ``step``, interpolated between logged steps."""
    steps = sorted(table)
    if not steps:
        return float("nan")
    return float(np.interp(step, steps, [table[s] for s in steps]))


def checkpoints(run_dir: Path) -> dict[int, Path]:
    return {int(p.stem.split("_")[-1]): p for p in sorted((run_dir / "checkpoints").glob("step_*.pt"))}


def parse_sampler(spec: str) -> tuple[str, int]:
    """``ddim50`` → ("ddim", 50); ``heun18`` → ("heun", 18); ``dpmpp20`` → ("dpmpp", 20)."""
    for name in ("ddim", "heun", "ddpm", "dpmpp"):
        if spec.startswith(name):
            return name, int(spec[len(name):] or {"ddim": 50, "heun": 18, "ddpm": 1000, "dpmpp": 20}[name])
    raise SystemExit(f"--samplers takes ddimN, heunN, dpmppN or ddpmN, got {spec!r}")


def cpu_record_points(folder: Path, cpu_offset: float, step_offset: int) -> list[tuple[str, float, int, str]]:
    """The checkpoints of ``folder`` (``step_*.pt`` copied while a run trained) with the training process's CPU
    minutes at each, from ``folder/curve.jsonl`` (one ``{"step", "cpu_s"}`` per copy): ``(path, cpu_offset +
    cpu_s / 60, step_offset + step, label)``. The offsets carry a warm-started run's record on from the model it
    started from."""
    record = folder / "curve.jsonl"
    if not record.is_file():
        raise SystemExit(f"{record} does not exist: --points needs the folder's curve.jsonl (step, cpu_s per copy)")
    points = []
    for line in record.read_text().splitlines():
        r = json.loads(line)
        ckpt = folder / f"step_{int(r['step']):08d}.pt"
        if ckpt.is_file():
            step = step_offset + int(r["step"])
            points.append((str(ckpt), cpu_offset + float(r["cpu_s"]) / 60.0, step, f"step {step}"))
    return points


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": list(os.getloadavg()), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def fid_of_features(gen: torch.Tensor, ref: torch.Tensor) -> float:
    """FID of two feature sets ``[n, D]``: the exact low-rank identity when both are smaller than D (an n × m SVD),
    else the D × D statistics (:func:`diffimage.fid.fid_from_stats`)."""
    from diffimage.fid import _fid_low_rank, feature_stats, fid_from_stats

    if max(gen.shape[0], ref.shape[0]) < gen.shape[1]:
        return _fid_low_rank(ref, gen)
    return fid_from_stats(feature_stats(gen), feature_stats(ref))


def measure(model, reference: torch.Tensor, sampler: str, steps: int, n: int, seed: int, cache: Path,
            batch_size: int, prefixes: list[int], sample_options: dict[str, Any] | None = None
            ) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Sample ``n`` images, extract their Inception features once, and score the first ``k`` of them for each ``k``
    in ``prefixes`` and ``n`` (the first ``k`` are exactly what an ``k``-sample run with the same seed and batch size
    draws). Returns one row per ``k`` and the samples."""
    from torch import nn

    from diffimage.evaluate import reference_features
    from diffimage.fid import compute_kid, extract_features

    ref = reference_features(reference, None, cache, batch_size, "cpu")
    t0 = time.perf_counter()
    samples = model.sample_seeded(n, seed, batch_size, sampler=sampler, steps=steps, **(sample_options or {}))
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = extract_features(samples, None, batch_size, "cpu")
    t_feat = time.perf_counter() - t0
    rows = []
    for k in sorted({n, *[k for k in prefixes if 2 <= k < n]}):
        kid, kid_std = compute_kid(ref[:, None, None, :], gen[:k, None, None, :], feature_extractor=nn.Flatten(),
                                   batch_size=1 << 16, subset_size=min(1000, k, ref.shape[0]), device="cpu")
        rows.append({"fid": fid_of_features(gen[:k], ref), "kid": kid, "kid_std": kid_std, "num_samples": k,
                     "num_reference": int(ref.shape[0]), "sampler": sampler, "steps": steps, "seed": seed,
                     "sample_s": t_sample * k / n, "features_s": t_feat * k / n})
    return rows, samples


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple, list] = {}
    for r in results:
        if r.get("minutes") is None:
            continue
        classes = r.get("classes", "null")
        mode = "" if classes == "null" else ", labels drawn from the prior" if classes == "prior" else \
            f", classes cycled, guidance {r['guidance_scale']:g}"
        groups.setdefault((r["sampler"], r["steps"], r["num_samples"], r["num_reference"], mode,
                           r.get("minutes_kind", "wall")), []).append(r)
    kinds = set()
    for (sampler, steps, n, n_ref, mode, kind), rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: r["minutes"])
        kinds.add(kind)
        ax.plot([r["minutes"] for r in rows], [r["fid"] for r in rows], "o-",
                label=f"{sampler} {steps} steps{mode}, {n} samples vs {n_ref} held-out digits")
    for r in results:
        if r.get("sampler") == "real":
            ax.axhline(r["fid"], color="grey", ls="--", lw=0.8,
                       label=f"real vs real floor: {r['num_samples']} training vs {r['num_reference']} held-out digits")
    ax.set_xlabel("training minutes (1 CPU thread): " + " / ".join(
        {"cpu": "CPU time of the training process", "wall": "wall-clock"}[k] for k in sorted(kinds)))
    ax.set_ylabel("FID (Inception-v3)")
    ax.set_title("MNIST: FID against held-out digits")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="a run folder: its checkpoints at --minutes / --steps")
    src.add_argument("--model", help="one model: a shipped name, export folder or checkpoint")
    src.add_argument("--points", type=Path, help="a folder of checkpoints copied during training, with curve.jsonl "
                     "(step, cpu_s of the training process at each copy): FID against CPU-minutes")
    src.add_argument("--real", action="store_true", help="the real-vs-real floor: --num-samples real training "
                     "digits (spread over the first 50,000) against the held-out reference")
    p.add_argument("--cpu-offset", type=float, default=0.0, help="CPU-minutes before the --points run (a warm "
                   "start's earlier training)")
    p.add_argument("--step-offset", type=int, default=0, help="steps before the --points run (a warm start's)")
    p.add_argument("--classes", choices=("null", "cycle", "prior"), default=None, help="class-conditional model: "
                   "the null label (default, unless the model has a class prior), labels 0, 1, ..., 9, 0, ... "
                   "(balanced) with --guidance-scale (never the model's stored default), or labels drawn from the "
                   "model's class_prior (default for a model that has one: its labels are latent, e.g. clusters, "
                   "and these are its unconditional samples)")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="with --classes cycle (1 = plain conditional)")
    p.add_argument("--data", type=Path, default=None, help="train.npz (default: $DIFF_DATA/mnist/train.npz)")
    p.add_argument("--minutes", default="", help="comma-separated training minutes (with --run)")
    p.add_argument("--steps", default="", help="comma-separated checkpoint steps (with --run)")
    p.add_argument("--samplers", default="ddim50", help="comma-separated ddimN / heunN (default: ddim50)")
    p.add_argument("--num-samples", type=int, default=1000, help="generated images per point (default: 1000)")
    p.add_argument("--also-at", default="", help="also score the first K samples, for each comma-separated K "
                   "(the same samples a K-sample run draws; no extra sampling or features)")
    p.add_argument("--reference", choices=("heldout", "training"), default="heldout", help="FID reference: the "
                   "held-out digits (default; the figures to report) or training digits (to choose a sampling "
                   "option, e.g. the guidance scale, without looking at the held-out ones)")
    p.add_argument("--reference-limit", type=int, default=1000, help="held-out digits used (default: 1000 of 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--cache-dir", type=Path, default=None, help="reference feature cache (default: $DIFF_CACHE or "
                   "~/.cache/diffstack/fid)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "mnist_fid")
    p.add_argument("--grid", action="store_true", help="also write the first 64 samples of each point as a PNG")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffimage.api import load
    from diffimage.evaluate import default_cache_dir
    from diffimage.grid import save_grid

    data = args.data or Path(os.environ.get("DIFF_DATA", REPO.parent / "shared" / "data")) / "mnist" / "train.npz"
    if not Path(data).is_file():
        raise SystemExit(f"{data} does not exist: give --data PATH/train.npz")
    cache = args.cache_dir or default_cache_dir()
    reference = heldout_reference(data, args.reference_limit) if args.reference == "heldout" else \
        tuning_reference(data, args.reference_limit)
    samplers = [parse_sampler(s) for s in args.samplers.split(",") if s]

    if args.real:
        out_file = args.out / "results.json"
        results = json.loads(out_file.read_text()) if out_file.is_file() else []
        row = {**real_floor(data, reference, args.num_samples, cache, args.batch_size), "machine": machine()}
        results = [r for r in results if not (r.get("sampler") == "real" and r["num_samples"] == row["num_samples"]
                                               and r["num_reference"] == row["num_reference"])] + [row]
        args.out.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(results, indent=1) + "\n")
        print(f"real-vs-real floor: FID {row['fid']:.2f} ({row['num_samples']} training digits vs "
              f"{row['num_reference']} held-out digits)")
        return 0

    points: list[tuple[str, float | None, int | None, str]] = []  # (source, minutes, step, label)
    if args.run is not None:
        table = training_minutes(args.run)
        ckpts = checkpoints(args.run)
        if not ckpts:
            raise SystemExit(f"{args.run} has no checkpoints")
        wanted = [int(s) for s in args.steps.split(",") if s]
        for m in (float(v) for v in args.minutes.split(",") if v):
            before = [s for s in ckpts if minutes_at(s, table) <= m + 1e-9]
            if before:
                wanted.append(max(before))
        if not wanted:
            wanted = [max(ckpts)]
        for s in sorted(set(wanted)):
            points.append((str(ckpts[s]), minutes_at(s, table), s, f"step {s}"))
    elif args.points is not None:
        points = cpu_record_points(args.points, args.cpu_offset, args.step_offset)
        if not points:
            raise SystemExit(f"{args.points} holds no checkpoint named in its curve.jsonl")
    else:
        points.append((args.model, None, None, args.model))
    minutes_kind = "cpu" if args.points is not None else "wall"

    out_file = args.out / "results.json"
    results: list[dict[str, Any]] = json.loads(out_file.read_text()) if out_file.is_file() else []
    for source, minutes, step, label in points:
        model = load(source, "cpu")
        # by default the model's own unconditional samples: from its class prior where it has one
        classes = args.classes or ("prior" if model.config.class_prior is not None else "null")
        options: dict[str, Any] = {}  # an unconditional model: no classes
        if classes == "prior" and model.config.class_prior is None:
            raise SystemExit(f"{source} has no class_prior: --classes prior is for a model with one")
        if classes == "prior":  # no labels given: each batch draws its own from the prior
            options = {"guidance_scale": args.guidance_scale}
        elif model.num_classes is not None:  # always explicit: the stored default would cycle the classes
            labels = [-1] * args.num_samples if classes == "null" else \
                [i % model.num_classes for i in range(args.num_samples)]
            options = {"classes": labels, "guidance_scale": 1.0 if classes == "null" else args.guidance_scale}
        if step is None:  # a shipped model or export: its card's record (CPU minutes where it has them)
            prov = model.info.get("provenance", {})
            card_minutes = prov.get("cpu_minutes", prov.get("training_minutes"))
            minutes = float(card_minutes) if card_minutes is not None else None
            minutes_kind = "cpu" if "cpu_minutes" in prov else "wall"
            step = prov.get("training_steps")
        for sampler, steps in samplers:
            key = dict(source=source, sampler=sampler, steps=steps, num_samples=args.num_samples,
                       num_reference=int(reference.shape[0]), seed=args.seed, classes=classes,
                       guidance_scale=args.guidance_scale if classes in ("cycle", "prior") else None)
            if args.reference != "heldout":  # rows from before the option have no "reference": held-out ones
                key["reference"] = args.reference
            if any(all(r.get(k) == v for k, v in key.items()) for r in results):
                print(f"{label} {sampler}{steps}: measured already", flush=True)
                continue
            rows, samples = measure(model, reference, sampler, steps, args.num_samples, args.seed, cache,
                                    args.batch_size, [int(k) for k in args.also_at.split(",") if k], options)
            for row in rows:
                row.update(source=source, step=step, minutes=minutes, minutes_kind=minutes_kind,
                           classes=key["classes"], guidance_scale=key["guidance_scale"], reference=args.reference,
                           machine=machine())
                if not any(all(r.get(k) == row[k] for k in key if k != "num_samples") and
                           r.get("num_samples") == row["num_samples"] for r in results):
                    results.append(row)
                print(f"{label} ({'?' if minutes is None else f'{minutes:.1f}'} min): {sampler} {steps} steps: "
                      f"FID {row['fid']:.2f}, KID {row['kid']:.4f} ± {row['kid_std']:.4f} ({row['num_samples']} "
                      f"samples vs {reference.shape[0]} {'held-out' if args.reference == 'heldout' else 'training'} "
                      f"digits; sampling {row['sample_s']:.0f} s, features {row['features_s']:.0f} s)", flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            out_file.write_text(json.dumps(results, indent=1) + "\n")
            if args.grid:
                save_grid(samples[:64], args.out / f"samples_{Path(source).stem}_{sampler}{steps}.png", nrow=8)
    plot(results, args.out / "fid_curve.png")
    print(f"results: {out_file}; curve: {args.out / 'fid_curve.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
