"""Ship the Griffin-Lim refiner inside the package: EMA weights in float16, its config with provenance and the
held-out split, and a model card whose numbers this script measures itself from the shipped files.

    .venv/bin/python tools/ship_refiner.py --run runs/refiner_a --name ljspeech-refiner [--which best|last]

The run is a ``tools/train_refiner.py`` run folder (:mod:`diffwave.refiner_train`: the engine's checkpoints plus
``record.jsonl``, ``periods.jsonl`` and ``best.pt``).

1. Export the run's EMA weights (``best``: ``best.pt``, the best validation PESQ-WB; ``last``: the latest checkpoint)
   into ``diffwave/pretrained/NAME/`` (refused above 8 MiB), with the held-out split in ``config.json``'s ``data``.
2. Evaluate the shipped files, loaded by name as a user gets them, exactly as ``diffwave evaluate --model NAME``
   does: the held-out clips, whole, beside Griffin-Lim (64 iterations) on the same mels.
3. Speed: ``benchmarks/bench_vocoder_speed.py`` (10 s of speech, batch 1, one thread: its CPU-time figure is the
   per-core speed, which the load of other jobs barely changes) in a child process.
4. ``MODEL_CARD.md``: the tables, the training record (every period's steps, CPU minutes and scores, from the run's
   ``record.jsonl`` and ``periods.jsonl``), and the commands that reproduce them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name  # noqa: E402

MAX_BYTES = 8 * 1024 * 1024
KEYS = [("log_mel_l1", "log-mel L1 ↓"), ("mr_stft", "MR-STFT ↓"), ("pesq_wb", "PESQ-WB ↑"), ("stoi", "STOI ↑"),
        ("dnsmos_p808", "DNSMOS P.808 ↑")]


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def record_table(rows: list[dict], periods: list[dict] | None = None) -> str:
    def period_of(step: int) -> int:  # a period's first step was scored at the end of the one before
        starts = [p["start_step"] for p in periods or []]
        return max([i + 1 for i, s in enumerate(starts) if s < step] or [1])

    lines = ["| period | step | CPU-min | set | " + " | ".join(k[1] for k in KEYS) + " |",
             "|---:|---:|---:|---|" + "---:|" * len(KEYS)]
    for r in rows:
        r = {**r, "period": period_of(r["step"])}
        for split in ("val", "heldout"):
            if split not in r:
                continue
            m = r[split]["refiner"]
            lines.append(f"| {r.get('period', 1)} | {r['step']} | {r['cpu_minutes']:.1f} | "
                         f"{'validation' if split == 'val' else 'held-out'}{' (new best)' if r.get('best') and split == 'val' else ''} | "
                         + " | ".join(_f(m.get(k)) for k, _ in KEYS) + " |")
    return "\n".join(lines)


def periods_table(periods: list[dict]) -> str:
    lines = ["| period | steps | CPU-min | Griffin-Lim start | threads |", "|---:|---|---|---|---:|"]
    for i, p in enumerate(periods, 1):
        note = f" (changed: {p['start_changed']})" if p.get("start_changed") else ""
        note += f"; {p['note']}" if p.get("note") else ""
        lines.append(f"| {i} | {p['start_step']} → {p['end_step']} | {p['start_cpu_minutes']:.1f} → "
                     f"{p['end_cpu_minutes']:.1f} | {p.get('gl_iters', 64)} iterations{note} | {p['threads']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--name", default="ljspeech-refiner")
    p.add_argument("--which", choices=["best", "last"], default="best")
    p.add_argument("--data", default="../shared/data/ljspeech/wavs")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--note", default=None, help="a Markdown file whose text goes under the training record")
    a = p.parse_args(argv)

    import torch

    import diffwave.api as dw
    from diffwave.refiner_train import export_refiner, read_record

    run = Path(a.run)
    target = ROOT / "diffwave" / "pretrained" / a.name
    rows, periods = read_record(run)
    if not rows:
        raise SystemExit(f"{run}: no record.jsonl (not a tools/train_refiner.py run folder?)")
    with tempfile.TemporaryDirectory() as tmp:
        out = export_refiner(run, Path(tmp) / a.name, which=a.which, provenance={
            "data": "LJSpeech 1.1 LJ001-0001..0024 (public domain): 19 trained on, 2 validation "
                    "(LJ001-0006, LJ001-0019), 3 held out (LJ001-0007, LJ001-0013, LJ001-0018)",
            "machine": f"{cpu_name()}, 2 cores, 1 training thread", "torch": torch.__version__,
            "date": dt.date.today().isoformat(), "periods": periods})
        size = (out / "model.safetensors").stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(f"the export is {size / 2**20:.1f} MiB, over the 8 MiB limit")
        config = json.loads((out / "config.json").read_text())
        config["data"] = {"path": a.data, "layout": "auto", "holdout": 3, "holdout_scheme": "diffwave-v1"}
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        target.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "config.json"):
            (out / name).replace(target / name)
    voc = dw.load(a.name, "cpu")
    from diffwave.evaluate import heldout_files

    files = heldout_files(voc.info)
    res = dw.evaluate_resynthesis_files(voc, files, ROOT / "runs" / f"ship_{a.name}", progress=False)
    table = res["table"].markdown()
    means = res["table"].to_dict()["means"]
    config["provenance"].update(name=a.name, held_out_metrics={"refiner": list(means.values())[0],
                                                               "griffin_lim_64": list(means.values())[-1]})
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    speed = ""
    if not a.skip_speed:
        speed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_vocoder_speed.py"), "--threads", "1",
                                "--repeats", "3"], capture_output=True, text=True, cwd=ROOT).stdout
    prov = config["provenance"]
    note = Path(a.note).read_text().strip() if a.note else ""
    params = sum(p.numel() for p in voc.model.parameters())
    c = voc.config
    card = f"""# {a.name}: Griffin-Lim refined by a frame-rate network, trained on a CPU

A mel-to-waveform vocoder for 22 050 Hz speech with lmnt-com/diffwave's mel format (`diffwave` preset: n_fft 1024,
hop 256, 80 HTK mels 20 Hz - 11 kHz, dB scaled into [0, 1]). It does not start from noise: it inverts the mel with
Griffin-Lim ({c.gl_iters} fast iterations, momentum {c.gl_momentum}; the baseline beside it uses 64) and a network of
{c.num_blocks} ConvNeXt blocks × {c.dim} channels over STFT frames ({params:,} parameters, receptive field
{c.receptive_field} frames) corrects that waveform's spectrum with a gain and a phase rotation per bin
(`diffwave/refiner.py`). Deterministic: no sampling steps, no seed. Shipped as float16 safetensors
({size / 2**20:.1f} MiB), loaded into float32.

```python
import diffwave.api as dw
voc = dw.load("{a.name}")          # offline, from the package
wav = voc.vocode(mel)                    # [80, F] -> [F * 256]
```

## Evaluation (held-out clips, whole; measured on the shipped float16 file)

{table}
PESQ-WB and STOI compare with the recording; DNSMOS P.808 is a no-reference MOS estimate (the recordings themselves
score about 3.9). Reproduce this table from the repository root with the shared data beside it:

    diffwave evaluate --model {a.name} --out eval_{a.name.replace('-', '_')}

## Training

- Data: {prov['data']}. A tiny corpus of one voice: expect it to know this speaker best.
- Loop: `tools/train_refiner.py` (`diffwave/refiner_train.py`: the one engine running `recipes/ljspeech_refiner.yaml`
  in periods of CPU time, scored between them): batch 16 crops of 32 frames with their Griffin-Lim starts (computed
  once per whole clip), a random gain of -6..+3 dB, loss = MR-STFT (256..2048) + log-mel L1, AdamW 5e-4 (betas 0.8,
  0.99) after 200 warm-up steps, gradient clip 1, EMA 0.999. The weights shipped are the EMA at step
  {prov['step']} ({prov['cpu_minutes']:.1f} CPU-minutes of training; `{a.which}`: {'the best validation PESQ-WB' if a.which == 'best' else 'the last step'}).
- Machine: {prov['machine']}; torch {prov['torch']}; {prov['date']}. CPU minutes are the training loop's CPU
  time (`time.process_time`), so the load of other jobs does not inflate them; evaluation is not counted.
- `diffwave train --recipe recipes/ljspeech_refiner.yaml --data DIR --run-dir RUN` trains the same recipe without
  the budget and the record; the next period continues from these weights with `init_from={a.name}`.

Training periods (each a run of `tools/train_refiner.py` in the same run folder; CPU minutes cumulative):

{periods_table(periods)}

## Training record (every evaluation; validation picks the shipped weights: the last "new best", held-out is only recorded)

{record_table(rows, periods)}

Step 0 is Griffin-Lim itself (the network's head starts at zero).

{note}

## Speed

```
{speed.strip() or 'not measured'}
```
"""
    (target / "MODEL_CARD.md").write_text(card)
    print(card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
