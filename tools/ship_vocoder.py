"""Ship a trained vocoder inside the package: EMA weights in float16, the resolved recipe with its provenance, and a
model card whose numbers this script measures itself.

    .venv/bin/python tools/ship_vocoder.py --run runs/vq/runs/prior --name ljspeech-tiny \\
        --state runs/vq/runs/prior.json

1. Export: the run's latest checkpoint's EMA weights, cast to float16, with ``config.json`` (the run's recipe, plus
   ``provenance``) into ``diffwave/pretrained/NAME/``; refused above 8 MiB.
2. Evaluate the shipped files (loaded back as the user gets them, by name) exactly as
   ``diffwave evaluate --model NAME`` does: the recipe's held-out clips, whole, 6-step fast schedule, default fast
   paths, seed 0, beside Griffin-Lim (64 iterations) on the same mels.
3. Speed: vocoding 4 s of mel, CPU time on one thread (best of 3), with the default path and with the kernels an
   AVX2 machine uses, as × real time per core.
4. ``MODEL_CARD.md`` with all of it, and the command that reproduces the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402

MAX_BYTES = 8 * 1024 * 1024

#: The speed measurements: a label and the environment of the child process that times it.
SPEED_SETUPS = {
    "default path, this CPU": {},
    "an AVX2 machine (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, fp32 fast paths)":
        {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "DIFFSTACK_SPEED_FP32": "1"},
}

_SPEED_CHILD = r"""
import os, sys, time, torch
sys.path.insert(0, sys.argv[2])
import diffwave.api as dw
from diffcore.inference import InferenceConfig
torch.set_num_threads(1)
voc = dw.load(sys.argv[1], "cpu")
mel = voc.mel(torch.zeros(4 * voc.sample_rate).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(0)))
inference = InferenceConfig(precision="fp32") if os.environ.get("DIFFSTACK_SPEED_FP32") else None
voc.vocode(mel, generator=torch.Generator().manual_seed(0), inference=inference)
best = float("inf")
for _ in range(3):
    c0 = time.process_time()
    voc.vocode(mel, generator=torch.Generator().manual_seed(0), inference=inference)
    best = min(best, time.process_time() - c0)
print(4.0 / best)
"""


def _speed(name: str, env: dict[str, str]) -> float:
    """× real time per core of CPU time, vocoding 4 s with the shipped model ``name`` in a child process."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _SPEED_CHILD, name, str(ROOT)], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the run folder to ship (its latest checkpoint)")
    p.add_argument("--name", required=True, help="the shipped name (a folder under diffwave/pretrained/)")
    p.add_argument("--state", help="the quality benchmark's state file of this run (training seconds, curve)")
    p.add_argument("--note", default="", help="a sentence for the card about how the run was made")
    p.add_argument("--step", type=int, default=None, help="ship this step's checkpoint (default: the latest)")
    args = p.parse_args()

    import torch

    from diffcore.checkpoint import find_latest, load_for_inference
    from diffwave.api import Vocoder, evaluate_resynthesis_files, load
    from diffwave.pretrained import SHIPPED
    from diffwave.data import split_files
    from diffwave.recipe import DiffWaveRecipe

    run = Path(args.run)
    ckpt = find_latest(run) if args.step is None else run / "checkpoints" / f"step_{args.step:08d}.pt"
    if ckpt is None or not ckpt.is_file():
        raise SystemExit(f"error: {run}: no checkpoint")
    config, weights = load_for_inference(ckpt)
    recipe = DiffWaveRecipe.from_dict(config)
    step = int(ckpt.stem.split("_")[-1])
    state = json.loads(Path(args.state).read_text()) if args.state else {}
    minutes = state.get("train_seconds", float("nan")) / 60.0
    _, held_out = split_files(recipe.data)
    held_out_names = [Path(f).stem for f in held_out]

    out = SHIPPED.folder / args.name
    provenance = {
        "name": args.name,
        "step": step,
        "training_minutes": round(minutes, 1),
        "hardware": f"{cpu_name()}, {os.cpu_count()} cores, 1 training thread (machine shared with other jobs)",
        "data": "LJSpeech 1.1 clips LJ001-0001 ... LJ001-0024 (public domain), 21 trained on, "
                f"{len(held_out)} held out: {', '.join(held_out_names)}",
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
    }
    voc = Vocoder.from_config_and_weights(config, weights, "cpu", source=str(ckpt))
    voc.info = {**config, "provenance": provenance}
    voc.save(out, dtype=torch.float16)
    size = (out / "model.safetensors").stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"error: {out / 'model.safetensors'} is {size} bytes, over the 8 MiB limit")

    # 2. the shipped files, by name, as a user gets them
    shipped = load(args.name, "cpu")
    eval_dir = run.parent / f"{args.name}_card_eval"
    res = evaluate_resynthesis_files(shipped, held_out, eval_dir, "fast", seed=0, with_dnsmos=True, progress=False)
    table = res["table"]
    means = table.to_dict()["means"]

    # 3. speed, as CPU time on one thread (robust to other jobs on the machine): the default path here, and the
    #    path an ordinary AVX2 machine takes (``auto`` precision is fp32 there) with PyTorch and oneDNN held to AVX2
    speed = {label: _speed(args.name, env) for label, env in SPEED_SETUPS.items()}
    provenance.update({"held_out_metrics": means,
                       "speed_x_realtime_per_core": {k: round(v, 2) for k, v in speed.items()}})
    voc.info = {**config, "provenance": provenance}
    voc.save(out, dtype=torch.float16)

    m = recipe.model
    marks = ",".join(str(k) for k in sorted({int(r["step"]) for r in state.get("rows", [])} | {step}))
    params = sum(v.numel() for v in weights.values())
    curve = ""
    if state.get("rows"):
        curve = "\n".join(
            f"| {r['step']} | {r['minutes']:.1f} | {r['diffwave']['log_mel_l1']:.3f} | {r['diffwave']['pesq_wb']:.3f} "
            f"| {r['diffwave']['stoi']:.3f} | {r['diffwave'].get('dnsmos_p808') or float('nan'):.3f} |"
            for r in state["rows"])
        curve = ("\n## Quality during training\n\nHeld-out clips, first 5 s each (the quality benchmark's marks):\n\n"
                 "| step | training min | log-mel L1 ↓ | PESQ-WB ↑ | STOI ↑ | DNSMOS ↑ |\n|---:|---:|---:|---:|---:|---:|\n"
                 + curve + "\n")
    card = f"""# {args.name}: a small DiffWave vocoder with a PriorGrad prior, trained on a CPU

A mel-to-waveform vocoder for 22 050 Hz speech with lmnt-com/diffwave's mel format (`{m.mel.preset}` preset: n_fft
1024, hop 256, 80 HTK mels 20 Hz - 11 kHz, dB scaled into [0, 1]). It is the `tiny` DiffWave
({m.residual_layers} layers x {m.residual_channels} channels, {params:,} parameters, T = {m.diffusion.num_steps}) with
PriorGrad's data-dependent prior (`prior: {json.dumps(m.prior.to_dict()) if m.prior else None}`), sampled with the
6-step fast schedule. Shipped as float16 safetensors ({size / 1024:.0f} KiB), loaded into float32.

```python
import diffwave.api as dw
voc = dw.load("{args.name}")          # offline, from the package
wav = voc.vocode(mel)                  # [80, F] -> [F * 256]
```

## Training

- Data: {provenance['data']}. The 24 clips are 2.8 minutes of audio, so this is a tiny
  corpus: expect the model to know this one voice and little else.
- Recipe: the `prior` variant of `benchmarks/bench_vocoder_quality.py`, which is `recipes/quickstart.yaml` (tiny
  preset with the prior, batch 8 crops of 8 frames, Adam lr 2e-3, gradient clip 1, EMA 0.999, L1 loss on the noise
  weighted by the prior) with the learning rate constant after 20 warm-up steps instead of a cosine decay.
- {step} steps in {minutes:.0f} minutes on {provenance['hardware']};
  torch {provenance['torch']}; {provenance['date']}. {args.note}
- Reproduce (the run stops after its last mark):

      .venv/bin/python benchmarks/bench_vocoder_quality.py --variants prior --marks {marks}
      .venv/bin/python tools/ship_vocoder.py --run runs/vocoder_quality/runs/prior \\
          --state runs/vocoder_quality/runs/prior.json --name {args.name}

## Evaluation (held-out clips, whole; measured on the shipped float16 file)

{table.markdown()}
Sampling: 6-step fast schedule, default fast paths, seed 0. Griffin-Lim: 64 iterations on the same mels. PESQ-WB and
STOI compare with the recording; DNSMOS P.808 is a no-reference MOS estimate. Reproduce this table, from the
repository root with the shared data beside it:

    diffwave evaluate --model {args.name} --out eval_{args.name.replace('-', '_')}

What this means, plainly: the output follows the speech's loudness contour and spectral envelope, and is intelligible
to a degree STOI measures, but it is rough and noisy; Griffin-Lim on the same mel sounds better. It is a
demonstration that the pipeline makes speech on a CPU in minutes, not a production vocoder; the GPU recipes
(`recipes/ljspeech_base.yaml`) are for that.
{curve}
## Speed

Vocoding 4 s of audio (6 steps), timed as process CPU time on one thread (best of 3; CPU time, unlike wall time,
does not count other jobs on the machine), as × real time per core:

{chr(10).join(f"- {k}: {v:.2f}x" for k, v in speed.items())}

Two threads on two idle cores roughly double these. {cpu_name()}, torch {torch.__version__}, {provenance['date']}.

## Licence

Weights: Apache-2.0, like the package. Training data: LJSpeech 1.1, public domain.
"""
    (out / "MODEL_CARD.md").write_text(card)
    print(card)
    print(f"shipped {out} ({size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
