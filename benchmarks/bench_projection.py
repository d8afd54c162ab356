"""Mel-consistent sampling (GLA-Grad's projection, issue 17 item 3) on vs off, on held-out LJSpeech.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_projection.py [--seconds 4] [--seed 0] [--out FILE.json]

Clips: the 3 held-out LJSpeech clips (LJ001-0007, LJ001-0013, LJ001-0018), their first ``--seconds``. Models: the
shipped ``ljspeech-tiny`` and, when ``../shared/data/interop/lmnt_small_checkpoint.pt`` is there, that lmnt-com/diffwave
checkpoint (imported through :func:`diffwave.api.load`). Each model vocodes each clip's own mel (its preset) with the
6-step fast schedule and the same seed in every variant (the projection draws no noise, so the variants see the same
noise), through :func:`diffwave.sample.vocode_mels`:

- ``off``: no projection (the default);
- ``GLA-Grad``: :class:`~diffwave.projection.GLAGrad` defaults (first 3 steps, 32 fast Griffin-Lim iterations);
- ``GLA-Grad + final``: the same and 32 iterations at the last step;
- ``final only``: 32 iterations at the last step only;

beside Griffin-Lim (64 iterations, :func:`diffwave.metrics.griffin_lim_from_mel`) of the same mel. Metrics:
:func:`diffwave.metrics.evaluate_resynthesis` (PESQ-WB, STOI, DNSMOS P.808, log-mel L1, MR-STFT), means over the
clips. A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402

CLIPS = ("LJ001-0007", "LJ001-0013", "LJ001-0018")
COLUMNS = ("pesq_wb", "stoi", "dnsmos_p808", "log_mel_l1", "mr_stft")


def variants():
    from diffwave.projection import GLAGrad

    return {"off": None, "GLA-Grad": GLAGrad(), "GLA-Grad + final": GLAGrad(final_iterations=32),
            "final only": GLAGrad(steps=0, final_iterations=32)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    import torch

    import diffwave.api as dw
    from diffwave.audio import load_audio
    from diffwave.metrics import evaluate_resynthesis, griffin_lim_from_mel
    from diffwave.sample import vocode_mels

    wavs = ROOT.parent / "shared" / "data" / "ljspeech" / "wavs"
    models = {"ljspeech-tiny": "ljspeech-tiny"}
    lmnt = ROOT.parent / "shared" / "data" / "interop" / "lmnt_small_checkpoint.pt"
    if lmnt.is_file():
        models["lmnt small (interop fixture)"] = str(lmnt)
    results: dict[str, dict[str, dict[str, float]]] = {}
    seconds_taken: dict[str, dict[str, float]] = {}
    for model_name, source in models.items():
        voc = dw.load(source, "cpu")
        sr = voc.sample_rate
        refs = [load_audio(wavs / f"{c}.wav", sr)[0][: int(args.seconds * sr)] for c in CLIPS]
        mels = [voc.mel(r) for r in refs]
        rows: dict[str, dict[str, float]] = {}
        seconds_taken[model_name] = {}
        for name, gla in variants().items():
            start = time.process_time()
            ests = [vocode_mels(voc.model, [m], generator=torch.Generator().manual_seed(args.seed + k), project=gla)[0]
                    for k, m in enumerate(mels)]
            seconds_taken[model_name][name] = time.process_time() - start
            table = evaluate_resynthesis(list(zip(refs, ests)), sr, system=name)
            rows[name] = table.means[name]
            print(f"{model_name} / {name}: " + ", ".join(f"{c} {rows[name].get(c, float('nan')):.3f}" for c in COLUMNS)
                  + f"  ({seconds_taken[model_name][name]:.1f} CPU-s)", flush=True)
        gls = [griffin_lim_from_mel(m, voc.config.mel, n_iter=64) for m in mels]
        rows["Griffin-Lim 64"] = evaluate_resynthesis(list(zip(refs, gls)), sr, system="gl").means["gl"]
        results[model_name] = rows

    machine = cpu_name()
    date = datetime.date.today().isoformat()
    print(f"\nmachine: {machine}; torch {torch.__version__}; {torch.get_num_threads()} thread(s); {date}; "
          f"clips {', '.join(CLIPS)} (first {args.seconds:g} s), seed {args.seed}\n")
    head = "| model | sampling | PESQ-WB ↑ | STOI ↑ | DNSMOS P.808 ↑ | log-mel L1 ↓ | MR-STFT ↓ |"
    print(head)
    print("|---|---|---:|---:|---:|---:|---:|")
    for model_name, rows in results.items():
        for name, row in rows.items():
            cells = " | ".join(f"{row.get(c, float('nan')):.3f}" for c in COLUMNS)
            print(f"| {model_name} | {name} | {cells} |")
    if args.out is not None:
        args.out.write_text(json.dumps({"machine": machine, "date": date, "torch": torch.__version__,
                                        "clips": CLIPS, "seconds": args.seconds, "seed": args.seed,
                                        "results": results, "cpu_seconds": seconds_taken}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
