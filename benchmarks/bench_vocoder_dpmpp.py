"""Vocoding at few network calls: DPM-Solver++(2M) against DiffWave's own fast schedule (issue 20's "both
modalities": the few-step solver measured on a vocoder). A benchmark, not a test.

    OMP_NUM_THREADS=1 python benchmarks/bench_vocoder_dpmpp.py --model ljspeech-tiny \\
        --data ../shared/data/ljspeech/wavs --calls 6,10,20 --threads 1

The model's held-out clips (``data.holdout`` of its stored recipe, split from ``--data``; never trained on) are
vocoded from their own mels, whole, with:

- ``fast``: the package's default path for the model, DiffWave's fast schedule (Kong et al. 2021, Algorithm 2;
  ``len(inference_betas)`` network calls, ancestral, clamped every step);
- ``dpmppN``: :func:`diffcore.samplers.dpmpp_2m_sample` (deterministic, N network calls) over Karras et al.'s
  noise levels between the VP model's trained range ``(denoiser.sigma_min, denoiser.sigma_max)``, through the same
  network and denoiser (:func:`diffwave.sample.denoiser_of`), with the PriorGrad prior when the model has one;
- ``full``: ancestral sampling over all T training steps (the model's ceiling at this training; ``--full``).

Each row: PESQ-WB, STOI and log-mel L1 against the recording (:func:`diffwave.metrics.evaluate_pair`, no DNSMOS),
averaged over the clips, with the CPU seconds of sampling (1 thread) and the real-time factor. Written to
``--out``/results.json and table.md. Seeds: one generator per clip, seeded ``--seed`` + clip index, the same for
every row (the fast path's ancestral noise and the solvers' starting noise both come from it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402


def clips_of(model_info: dict[str, Any], data: Path) -> list[Path]:
    """The held-out clips of the model's stored recipe, its data section pointed at ``data``."""
    from diffwave.evaluate import heldout_files

    info = {**model_info, "data": {**model_info.get("data", {}), "path": str(data)}}
    files = heldout_files(info)
    if not files:
        raise SystemExit(f"the model's recipe names no held-out clips under {data}")
    return files


@torch.no_grad()
def vocode(voc, mel: torch.Tensor, kind: str, calls: int, generator: torch.Generator) -> torch.Tensor:
    """``[F · hop]`` audio of ``mel`` ``[n_mels, F]`` with ``kind`` in ``fast``, ``full`` or ``dpmpp``."""
    from diffcore.discretization import karras_sigmas
    from diffcore.samplers import dpmpp_2m_sample
    from diffwave.prior import sample_prior_std
    from diffwave.sample import denoiser_of, sample_waveform

    model, config = voc.model, voc.model.config
    length = mel.shape[-1] * config.hop_length
    cond = mel_cond = mel[None].float()
    prior = sample_prior_std(cond[0], config.mel, config.prior)[None] if config.prior is not None else None

    def network(x, t, cond=cond):  # the whole clip's mel, however the sampler calls it
        return model(x, t, mel_cond)

    if kind in ("fast", "full"):
        x = sample_waveform(network, config, (1, length), kind, device=torch.device("cpu"), generator=generator,
                            prior_std=prior)
    else:
        den = denoiser_of(model, config, prior_std=prior)
        sigmas = karras_sigmas(den.sigma_min, den.sigma_max, calls)
        x = dpmpp_2m_sample(den, (1, length), sigmas, cond=cond, generator=generator).clamp(-1.0, 1.0)
    return x[0].float()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="ljspeech-tiny", help="a DiffWave vocoder: shipped name or export folder")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ljspeech" / "wavs")
    p.add_argument("--calls", default="6,10,20", help="comma-separated DPM-Solver++ network calls")
    p.add_argument("--full", action="store_true", help="also the ancestral sampler over all T steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vocoder_dpmpp")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from diffwave.api import load
    from diffwave.audio import load_audio
    from diffwave.metrics import evaluate_pair
    from diffwave.sample import num_sampling_steps

    voc = load(args.model, "cpu")
    config = voc.model.config
    if not hasattr(config, "inference_betas"):
        raise SystemExit(f"{args.model} is not a diffusion vocoder (the refiner takes no sampling steps)")
    files = clips_of(voc.info, args.data)
    clips = [load_audio(f, config.sample_rate)[0].reshape(-1) for f in files]
    mels = [voc.mel(c.float()) for c in clips]
    seconds = sum(c.shape[-1] for c in clips) / config.sample_rate

    plan = [("fast", num_sampling_steps(config, "fast"))] + [("dpmpp", int(n)) for n in args.calls.split(",") if n]
    if args.full:
        plan.append(("full", config.diffusion.num_steps))
    rows = []
    for kind, calls in plan:
        scores: list[dict[str, Any]] = []
        cpu = 0.0
        for i, (clip, mel) in enumerate(zip(clips, mels)):
            g = torch.Generator().manual_seed(args.seed + i)
            t0 = time.process_time()
            wav = vocode(voc, mel, kind, calls, g)
            cpu += time.process_time() - t0
            n = min(clip.shape[-1], wav.shape[-1])
            scores.append(evaluate_pair(clip[:n], wav[:n], config.sample_rate,
                                        with_dnsmos=False))
        mean = {k: sum(s[k] for s in scores) / len(scores) for k in ("pesq_wb", "stoi", "log_mel_l1")}
        row = {"sampler": kind, "network_calls": calls, **mean, "cpu_s": cpu, "x_real_time_cpu": seconds / cpu}
        rows.append(row)
        print(f"{kind:6s} {calls:4d} calls: PESQ {mean['pesq_wb']:.3f}  STOI {mean['stoi']:.3f}  log-mel L1 "
              f"{mean['log_mel_l1']:.3f}  ({cpu:.1f} CPU s, {seconds / cpu:.2f}x real time per core)", flush=True)

    meta = {"model": args.model, "clips": [f.name for f in files], "audio_seconds": seconds, "seed": args.seed,
            "threads": args.threads, "cpu": cpu_name(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"{args.model}, held-out {', '.join(meta['clips'])} ({seconds:.1f} s), {meta['cpu']}, "
             f"{args.threads} thread, torch {meta['torch']}, {meta['date']}", "",
             "| sampler | network calls | PESQ-WB | STOI | log-mel L1 | × real time (CPU, 1 thread) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        name = {"fast": "fast schedule (default)", "full": "ancestral, all T"}.get(r["sampler"], "DPM-Solver++(2M)")
        lines.append(f"| {name} | {r['network_calls']} | {r['pesq_wb']:.3f} | {r['stoi']:.3f} | "
                     f"{r['log_mel_l1']:.3f} | {r['x_real_time_cpu']:.2f} |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
