"""Class-conditional MNIST: how well guided digits obey their label, what guidance costs in FID, and how fast a
few-step solver draws them (issue 20).

    OMP_NUM_THREADS=1 python benchmarks/bench_mnist_guidance.py --model mnist-cond \
        --data ../shared/data/mnist/train.npz --scales 0,1,2,3,4 --per-class 20 \
        --samplers dpmpp10,dpmpp20,heun25 --num-samples 200

Three measurements, each with its sample count in the results:

1. **Guidance sweep** (``--scales``): ``--per-class`` digits of each class with DPM-Solver++(2M) at
   ``--guidance-steps`` steps and guidance scale s (Ho & Salimans 2022: D = D_u + s (D_c − D_u); s = 1 is the
   conditional model without guidance, s = 0 the unconditional one). A small CNN classifier, trained here on the
   same 50,000 training digits as the model (``data.limit`` of the recipe) and cached in ``--classifier``, labels
   every generated digit: **class accuracy** is the share classified as the asked-for class. FID of the same digits
   against the held-out digits sits beside it, so the quality–adherence trade-off is one table.
2. **Samplers** (``--samplers``: ``dpmppN`` = N network calls, ``heunN`` = 2N − 1 calls, the 50-call figure is
   ``heun25``): ``--num-samples`` unconditional digits (the null label; an unconditional model, with ``--scales ''``,
   is sampled as it is), their FID, the classifier's count of each class, and the wall-clock and CPU time for 64
   digits. A guided digit costs two network evaluations per call (one batched forward of 2 × the batch).
3. The classifier's own accuracy on held-out digits (what the class accuracy above can be trusted to).

Reference: the last 10,000 digits of train.npz, never trained on (``--reference-limit`` of them, spread evenly);
Inception-v3 features of the standard FID (:mod:`diffimage.fid`), reference features cached in ``--cache-dir``.
FID from a few hundred samples is biased upwards (roughly like 1/N): figures are comparable only at equal counts.
Results go to ``--out``/results.json (a list with one record per run, with the machine and the options), a plot
``guidance.png`` and a Markdown table ``table.md`` of the run, printed at the end. Not a test: minutes of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_mnist_fid import TRAIN_DIGITS, fid_of_features, heldout_reference, machine  # noqa: E402

CLASSIFIER_EPOCHS = 2


class DigitClassifier(nn.Sequential):
    """A small CNN for 28×28 digits in [-1, 1]: two 3×3 conv layers (32 and 64 channels), each followed by 2×2 max
    pooling, then a 128-unit hidden layer and 10 logits (LeNet-like; 0.42M parameters)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
        )


def _to_float(u8: Tensor) -> Tensor:
    return u8.float().div(127.5).sub(1.0)


def load_digits(data: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data, allow_pickle=False) as d:
        if "labels" not in d:
            raise SystemExit(f"{data} has no labels: the classifier needs MNIST with labels")
        return d["images"], d["labels"].astype(np.int64)


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> DigitClassifier:
    """Adam (lr 1e-3), batch 128, :data:`CLASSIFIER_EPOCHS` epochs over the training digits, random ±1 pixel shifts."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x_all = torch.from_numpy(images[:, None])
    y_all = torch.from_numpy(labels)
    n = x_all.shape[0]
    for epoch in range(CLASSIFIER_EPOCHS):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, 128):
            idx = order[i:i + 128]
            x = _to_float(x_all[idx])
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(net(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"classifier epoch {epoch + 1}/{CLASSIFIER_EPOCHS}: loss {loss.item():.3f}", flush=True)
    return net.eval()


@torch.no_grad()
def classify(net: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """Predicted classes ``[N]`` of float images in [-1, 1] (or uint8)."""
    x = _to_float(images) if images.dtype == torch.uint8 else images.float()
    return torch.cat([net(x[i:i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


def classifier(path: Path, data: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The cached classifier at ``path`` (trained and written first when absent) and its record: held-out accuracy
    on the last 10,000 digits of ``data``."""
    images, labels = load_digits(data)
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        net = DigitClassifier()
        net.load_state_dict(blob["state_dict"])
        return net.eval(), blob["record"]
    t0, c0 = time.perf_counter(), time.process_time()
    net = train_classifier(images[:TRAIN_DIGITS], labels[:TRAIN_DIGITS])
    pred = classify(net, torch.from_numpy(images[TRAIN_DIGITS:, None]))
    acc = float((pred == torch.from_numpy(labels[TRAIN_DIGITS:])).float().mean())
    record = {"heldout_accuracy": acc, "num_heldout": int(images.shape[0] - TRAIN_DIGITS),
              "train_digits": TRAIN_DIGITS, "epochs": CLASSIFIER_EPOCHS, "train_wall_s": time.perf_counter() - t0,
              "train_cpu_s": time.process_time() - c0}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": net.state_dict(), "record": record}, path)
    print(f"classifier: held-out accuracy {acc:.4f} ({record['num_heldout']} digits), written to {path}", flush=True)
    return net.eval(), record


def parse_sampler(spec: str) -> tuple[str, int, int]:
    """``dpmpp20`` → ("dpmpp", 20, 20 network calls); ``heun25`` → ("heun", 25, 49); ``ddim50`` → ("ddim", 50, 50)."""
    for name in ("dpmpp", "heun", "ddim"):
        if spec.startswith(name) and spec[len(name):].isdigit():
            n = int(spec[len(name):])
            return name, n, 2 * n - 1 if name == "heun" else n
    raise SystemExit(f"--samplers takes dpmppN, heunN or ddimN, got {spec!r}")


def timed_sample(model, n: int, seed: int, batch_size: int, **options) -> tuple[Tensor, float, float]:
    """Samples, wall seconds and CPU seconds of this process."""
    t0, c0 = time.perf_counter(), time.process_time()
    x = model.sample_seeded(n, seed, batch_size, **options)
    return x, time.perf_counter() - t0, time.process_time() - c0


def features(images: Tensor, batch_size: int) -> Tensor:
    from diffimage.fid import extract_features

    return extract_features(images, None, batch_size, "cpu")


def save(out: Path, record: dict[str, Any]) -> None:
    """Write ``record`` into ``out``/results.json, a list of runs (this run's entry replaced as it grows)."""
    path = out / "results.json"
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs = [r for r in runs if r.get("run_id") != record["run_id"]] + [record]
    path.write_text(json.dumps(runs, indent=1) + "\n")


def plot(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = record["guidance"]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    s = [r["guidance_scale"] for r in rows]
    ax.plot(s, [100 * r["class_accuracy"] for r in rows], "o-", color="C0", label="class accuracy (%)")
    ax.set_xlabel("guidance scale s (1 = conditional, no guidance)")
    ax.set_ylabel("digits classified as the asked-for class (%)", color="C0")
    ax2 = ax.twinx()
    ax2.plot(s, [r["fid"] for r in rows], "s--", color="C1", label="FID")
    ax2.set_ylabel(f"FID ({rows[0]['num_samples']} samples vs {rows[0]['num_reference']} held-out)", color="C1")
    ax.set_title(f"MNIST class-conditional, DPM-Solver++ {rows[0]['steps']} steps", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(record: dict[str, Any]) -> str:
    lines = []
    if record["guidance"]:
        r0 = record["guidance"][0]
        lines += [f"Guidance sweep: DPM-Solver++(2M) {r0['steps']} steps, {r0['per_class']} digits per class "
                  f"({r0['num_samples']} samples), FID vs {r0['num_reference']} held-out digits", "",
                  "| guidance scale | class accuracy | worst class | FID | wall s / 64 | CPU s / 64 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in record["guidance"]:
            worst = min(r["per_class_accuracy"].items(), key=lambda kv: kv[1])
            lines.append(f"| {r['guidance_scale']:g} | {100 * r['class_accuracy']:.1f} % | {worst[0]}: "
                         f"{100 * worst[1]:.0f} % | {r['fid']:.1f} | {r['wall_s_per_64']:.1f} | "
                         f"{r['cpu_s_per_64']:.1f} |")
        lines.append("")
    if record["samplers"]:
        r0 = record["samplers"][0]
        what = ("labels drawn from the model's class prior" if record.get("class_prior") else "null label"
                if record.get("num_classes") else "unconditional model")
        lines += [f"Samplers: {r0['num_samples']} unconditional samples each ({what}), FID vs "
                  f"{r0['num_reference']} held-out digits", "",
                  "| sampler | network calls | FID | wall s / 64 | CPU s / 64 | classes (classifier's count, 0-9) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in record["samplers"]:
            lines.append(f"| {r['sampler']} {r['steps']} | {r['network_calls']} | {r['fid']:.1f} | "
                         f"{r['wall_s_per_64']:.1f} | {r['cpu_s_per_64']:.1f} | "
                         f"{' '.join(str(c) for c in r['class_histogram'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="mnist-cond", help="a class-conditional MNIST model (or an unconditional one "
                   "with --scales ''): shipped name, export folder, run folder or checkpoint (default: mnist-cond)")
    p.add_argument("--data", type=Path, default=None, help="train.npz (default: $DIFF_DATA/mnist/train.npz)")
    p.add_argument("--scales", default="0,1,2,3,4", help="guidance scales of the sweep ('' = no sweep)")
    p.add_argument("--per-class", type=int, default=20, help="digits per class at each scale (default: 20)")
    p.add_argument("--guidance-steps", type=int, default=20, help="DPM-Solver++ steps of the sweep (default: 20)")
    p.add_argument("--samplers", default="dpmpp10,dpmpp20,heun25",
                   help="unconditional sampler comparison: dpmppN / heunN ('' = none)")
    p.add_argument("--num-samples", type=int, default=200, help="samples per sampler (default: 200)")
    p.add_argument("--reference-limit", type=int, default=1000, help="held-out digits used (default: 1000)")
    p.add_argument("--reference-only", action="store_true",
                   help="only compute (and cache) the reference features and the classifier, then stop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--classifier", type=Path, default=REPO / "runs" / "mnist_classifier.pt",
                   help="the classifier cache (default: runs/mnist_classifier.pt, trained when absent)")
    p.add_argument("--cache-dir", type=Path, default=None, help="reference feature cache (default: $DIFF_CACHE or "
                   "~/.cache/diffstack/fid)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "mnist_guidance")
    p.add_argument("--grid", action="store_true", help="also write a grid of each guidance scale's digits")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffimage.api import load
    from diffimage.evaluate import default_cache_dir, reference_features
    from diffimage.grid import save_grid

    data = args.data or Path(os.environ.get("DIFF_DATA", REPO.parent / "shared" / "data")) / "mnist" / "train.npz"
    if not Path(data).is_file():
        raise SystemExit(f"{data} does not exist: give --data PATH/train.npz")
    cache = args.cache_dir or default_cache_dir()
    reference = heldout_reference(data, args.reference_limit)
    t0 = time.perf_counter()
    ref = reference_features(reference, None, cache, args.batch_size, "cpu")
    print(f"reference: {ref.shape[0]} held-out digits ({time.perf_counter() - t0:.0f} s)", flush=True)
    net, clf_record = classifier(args.classifier, Path(data))
    print(f"classifier held-out accuracy: {100 * clf_record['heldout_accuracy']:.2f} % "
          f"({clf_record['num_heldout']} digits)", flush=True)
    if args.reference_only:
        return 0

    model = load(args.model, "cpu")
    sweep = [float(v) for v in args.scales.split(",") if v.strip()]
    latent = model.config.class_prior is not None  # labels drawn from its prior: an unconditional generator
    if (model.num_classes is None or latent) and sweep:
        raise SystemExit(f"{args.model} is unconditional: it has no digit classes to sweep guidance over (give "
                         f"--scales '' for the samplers' table alone)")
    if model.num_classes not in (None, 10) and not latent:
        raise SystemExit(f"{args.model} is neither unconditional nor a 10-class conditional model (num_classes "
                         f"{model.num_classes})")
    prov = model.info.get("provenance", {})
    record: dict[str, Any] = {"run_id": machine()["date"], "options": {k: str(v) for k, v in vars(args).items()},
                              "model": args.model, "num_classes": model.num_classes, "class_prior": latent,
                              "training_steps": prov.get("training_steps"),
                              "classifier": clf_record, "machine": machine(), "guidance": [], "samplers": []}
    args.out.mkdir(parents=True, exist_ok=True)

    for s in sweep:
        labels = [k for k in range(10) for _ in range(args.per_class)]
        n = len(labels)
        x, wall, cpu = timed_sample(model, n, args.seed, args.batch_size, sampler="dpmpp", steps=args.guidance_steps,
                                    guidance_scale=s, classes=labels)
        pred = classify(net, x)
        want = torch.tensor(labels)
        per_class = {str(k): float((pred[want == k] == k).float().mean()) for k in range(10)}
        fid = fid_of_features(features(x, args.batch_size), ref)
        row = {"guidance_scale": s, "steps": args.guidance_steps, "per_class": args.per_class, "num_samples": n,
               "num_reference": int(ref.shape[0]), "class_accuracy": float((pred == want).float().mean()),
               "per_class_accuracy": per_class, "fid": fid, "wall_s_per_64": wall * 64 / n,
               "cpu_s_per_64": cpu * 64 / n, "network_evaluations_per_digit": 2 * args.guidance_steps
               if s not in (0.0, 1.0) else args.guidance_steps}
        record["guidance"].append(row)
        print(f"scale {s:g}: class accuracy {100 * row['class_accuracy']:.1f} %, FID {fid:.1f} ({n} samples vs "
              f"{ref.shape[0]}), {row['wall_s_per_64']:.1f} s wall / {row['cpu_s_per_64']:.1f} s CPU per 64",
              flush=True)
        if args.grid:
            order = torch.arange(n).reshape(10, args.per_class).t().reshape(-1)  # one class per column
            save_grid(x[order], args.out / f"guidance_{s:g}.png", nrow=10)
        save(args.out, record)

    for spec in (v for v in args.samplers.split(",") if v.strip()):
        name, steps, calls = parse_sampler(spec)
        n = args.num_samples
        # an unconditional model as it is; a conditional one at its null label; one with a class prior draws its
        # labels from the prior (its own unconditional samples)
        unconditional = {} if model.num_classes is None else {"guidance_scale": 1.0} if latent else \
            {"guidance_scale": 1.0, "classes": [-1] * n}
        x, wall, cpu = timed_sample(model, n, args.seed, args.batch_size, sampler=name, steps=steps, **unconditional)
        fid = fid_of_features(features(x, args.batch_size), ref)
        row = {"sampler": name, "steps": steps, "network_calls": calls, "num_samples": n,
               "num_reference": int(ref.shape[0]), "fid": fid, "wall_s_per_64": wall * 64 / n,
               "cpu_s_per_64": cpu * 64 / n, "class_histogram": torch.bincount(classify(net, x), minlength=10).tolist()}
        record["samplers"].append(row)
        print(f"{name} {steps} ({calls} calls): FID {fid:.1f} ({n} unconditional samples vs {ref.shape[0]}), "
              f"{row['wall_s_per_64']:.1f} s wall / {row['cpu_s_per_64']:.1f} s CPU per 64 digits", flush=True)
        save(args.out, record)

    record["machine_end"] = machine()
    save(args.out, record)
    plot(record, args.out / "guidance.png")
    md = table(record)
    (args.out / "table.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
