"""``diffwave quickstart``: the whole job on a CPU in a few minutes, on a fresh machine without any data.

0. A vocoder that speaks: the shipped default vocoder (:data:`PRETRAINED_MODEL`, ``ljspeech-refiner``: Griffin-Lim
   refined by a frame-rate network, trained by this project on LJSpeech, see its ``MODEL_CARD.md``) vocodes the few seconds of real, public-domain speech that ship with the package
   (:mod:`diffwave.speech`, clips it never trained on) in seconds, beside Griffin-Lim on the same mels:
   ``pretrained/wavs``, ``pretrained/spectrograms.png``, ``pretrained/metrics.md``. ``--no-pretrained`` skips it.
1. Data: 43 clips of 2 s of speech-like audio at 22 050 Hz from :mod:`diffwave.synth` (voiced harmonics with moving
   pitch and formants, fricative noise bursts, pauses), 3 of them held out; or, with ``--data DIR``, your recordings
   (resampled to 22 050 Hz), 3 of them held out. 22 050 Hz and the ``diffwave`` mel preset are LJSpeech's and the
   paper's setting, so the same model config serves synthetic audio and ``--data ../shared/data/ljspeech/wavs``.
2. Training: the ``tiny`` preset (210k parameters) with PriorGrad's energy prior through the training engine, for a wall-clock budget
   (``--minutes``, default 4) or an exact number of steps (``--steps``). The budget is kept by training in
   segments (``Trainer.fit(until=...)``; each segment resumes the previous checkpoint exactly), sized from the
   measured speed. Running the quickstart again continues the same run (``--fresh`` starts over).
3. Evaluation: the held-out clips' mels vocoded with the fast schedule (6 steps) by the EMA weights, and inverted
   by Griffin-Lim (64 iterations) as the baseline; wavs, ``spectrograms.png``, ``metrics.md``/``metrics.json``
   (log-mel L1, MR-STFT, PESQ-WB, STOI, DNSMOS) and a summary of where everything is.

The recipe is :data:`QUICKSTART_RECIPE` (``recipes/quickstart.yaml`` holds the same values for ``diffwave train``).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from diffcore.checkpoint import find_latest, list_checkpoints
from diffcore.train import Trainer, read_log
from diffwave.data import split_files
from diffwave.recipe import DiffWaveRecipe

__all__ = ["QUICKSTART_RECIPE", "DEFAULT_MINUTES", "PRETRAINED_MODEL", "quickstart_recipe", "train_for",
           "vocode_shipped_speech", "run_quickstart"]

#: The shipped vocoder the quickstart starts with (:func:`diffwave.api.available_models`).
PRETRAINED_MODEL = "ljspeech-refiner"

DEFAULT_MINUTES = 4.0
SAMPLE_RATE = 22050
TRAIN_CLIPS = 40
HELDOUT_CLIPS = 3
CLIP_SECONDS = 2.0
#: Held-out recordings longer than this are evaluated on their first seconds only (keeps the CPU run short).
EVAL_SECONDS = 5.0

#: The quickstart's recipe (``data.path`` is filled in at run time). PriorGrad's energy prior (``model.prior``,
#: :mod:`diffwave.prior`): on real held-out speech it lifts STOI from 0.36 to 0.51 after 250 steps (BENCHMARKS.md,
#: vocoder quality per step). Short crops, small batches and a learning rate
#: ten times the paper's, decayed (cosine) over the run, suit a few hundred CPU steps: the tiny network sees only
#: ±62 samples of its input, so longer crops would add cost, not context, and more (smaller) steps learn faster at
#: this stage than fewer large ones. (On the synthetic data, 550 steps: log-mel L1 2.78 with the decay, 3.06 at a
#: constant rate.) ``max_steps`` is replaced by ``--steps`` or by what fits in ``--minutes``.
QUICKSTART_RECIPE: dict[str, Any] = {
    "model": {"preset": "tiny", "prior": {}},
    "data": {"path": None, "holdout": HELDOUT_CLIPS, "crop_frames": 8},
    "train": {
        "max_steps": 2000,
        "batch_size": 8,
        "lr": 2e-3,
        "lr_schedule": "cosine",
        "min_lr_ratio": 0.05,
        "warmup_steps": 20,
        "grad_clip": 1.0,
        "precision": "fp32",
        "ema_decay": 0.999,
        "num_workers": 0,
        "log_every": 10,
        "ckpt_every": 500,
        "keep_last": 2,
        "device": "auto",
        "seed": 0,
    },
}


def quickstart_recipe(data_path: str | Path, **train: Any) -> DiffWaveRecipe:
    """:data:`QUICKSTART_RECIPE` with ``data.path`` set and some ``train`` fields changed."""
    d = {**QUICKSTART_RECIPE, "data": {**QUICKSTART_RECIPE["data"], "path": str(data_path)},
         "train": {**QUICKSTART_RECIPE["train"], **train}}
    return DiffWaveRecipe.from_dict(d)


def train_for(recipe: DiffWaveRecipe, run_dir: str | Path, minutes: float | None,
              steps: int | None = None) -> dict[str, Any]:
    """Train ``recipe`` in ``run_dir`` for ``steps`` steps (exactly: ``train.max_steps = steps``) or for about
    ``minutes`` of wall clock. Returns the last ``Trainer.fit`` summary.

    With a time budget, a first short segment measures the speed; then ``train.max_steps`` (the horizon of the
    learning-rate schedule, cosine in the quickstart recipe) is set to the number of steps that fit in the time left,
    and training runs to it, re-measuring and extending once more if time is left. A run folder that already holds
    a checkpoint continues from it (the cosine is stretched over the new, longer horizon).
    """
    from diffwave.task import make_task

    task = make_task(recipe)
    if steps is not None:
        recipe = recipe.replace(train={"max_steps": steps})
        return Trainer(task, recipe.train, run_dir).fit()
    if minutes is None or minutes <= 0:
        raise ValueError("give a positive time budget in minutes or a number of steps")
    deadline = time.monotonic() + 60.0 * minutes
    found = list_checkpoints(run_dir)
    step = found[-1][0] if found else 0
    target = step + 10  # a first short segment measures the speed
    horizon = step + max(20, int(60.0 * minutes))  # a guess (1 step/s) until the speed is known
    summary: dict[str, Any] = {}
    while True:
        recipe = recipe.replace(train={"max_steps": horizon})
        t0 = time.monotonic()
        summary = Trainer(task, recipe.train, run_dir).fit(until=target)
        rate = max(summary["step"] - step, 1) / max(time.monotonic() - t0, 1e-3)  # setup included: conservative
        step = summary["step"]
        more = int(0.97 * (deadline - time.monotonic()) * rate)
        if more < max(1, step // 20):  # not worth another segment (and a bump of the learning rate)
            return summary
        horizon = target = step + more


def _loss_trend(run_dir: Path) -> tuple[float, float, int] | None:
    """Mean of the first and of the last three logged losses, and the last step."""
    rows = [r for r in read_log(run_dir) if "loss" in r and "event" not in r]
    if len(rows) < 2:
        return None
    k = min(3, len(rows) // 2)
    first = sum(r["loss"] for r in rows[:k]) / k
    last = sum(r["loss"] for r in rows[-k:]) / k
    return first, last, int(rows[-1]["step"])


def _synthetic_data(folder: Path, log) -> Path:
    from diffwave.synth import make_dataset

    n = TRAIN_CLIPS + HELDOUT_CLIPS
    expected = [folder / f"synth_{i:04d}.wav" for i in range(n)]
    if all(p.is_file() for p in expected):
        log(f"using the synthetic clips already in {folder}")
        return folder
    log(f"synthesising {n} clips of {CLIP_SECONDS:g} s of speech-like audio at {SAMPLE_RATE} Hz in {folder} ...")
    make_dataset(folder, n, CLIP_SECONDS, SAMPLE_RATE, seed=0)
    return folder


def vocode_shipped_speech(out: str | Path, device: str = "auto", name: str = PRETRAINED_MODEL, *,
                          with_dnsmos: bool = True, log=print) -> dict[str, Any] | None:
    """Vocode the shipped speech clips with the shipped vocoder ``name`` (fast schedule) beside Griffin-Lim into
    ``out`` and print the metric table; ``None`` (with a note) when no such model ships with this copy."""
    from diffwave.api import available_models, evaluate_resynthesis_files, load
    from diffwave.speech import speech_files

    if name not in available_models():
        log(f"(no shipped vocoder named {name!r} in this copy of the package: skipping the pretrained demo)")
        return None
    t0 = time.monotonic()
    voc = load(name, device)
    files = speech_files()
    log(f"vocoding {len(files)} clips of real speech that ship with the package (LJSpeech, public domain, never "
        f"trained on) with the shipped vocoder {name!r} and with Griffin-Lim ...")
    result = evaluate_resynthesis_files(voc, files, Path(out), "fast", with_dnsmos=with_dnsmos, progress=False)
    log("\n" + result["table"].markdown().rstrip())
    log(f"({time.monotonic() - t0:.1f} s)  listen: {Path(out) / 'wavs'}   look: {result['paths']['png']}\n")
    return result


def run_quickstart(
    out: str | Path = "quickstart_out",
    *,
    minutes: float | None = DEFAULT_MINUTES,
    steps: int | None = None,
    data: str | Path | None = None,
    device: str = "auto",
    fresh: bool = False,
    with_dnsmos: bool = True,
    pretrained: bool = True,
    log=print,
) -> dict[str, Any]:
    """Run the quickstart (module docstring) into ``out``; returns paths, the loss trend and the metrics table."""
    from diffwave.api import evaluate_resynthesis_files, load

    out = Path(out)
    shipped = vocode_shipped_speech(out / "pretrained", device, with_dnsmos=with_dnsmos, log=log) if pretrained else None
    run_dir = out / "run"
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    t_start = time.monotonic()
    data_dir = Path(data).expanduser().resolve() if data is not None else _synthetic_data(out / "data", log)
    recipe = quickstart_recipe(data_dir, device=device)
    train_files, held_out = split_files(recipe.data)
    resumed = find_latest(run_dir)
    if resumed is not None:
        log(f"continuing the run in {run_dir} (from {resumed.name}; --fresh starts over)")
    budget = f"{steps} steps" if steps is not None else f"about {minutes:g} minute(s)"
    log(f"training the tiny DiffWave ({recipe.model.residual_layers} layers x {recipe.model.residual_channels} "
        f"channels) on {len(train_files)} clips for {budget}; {len(held_out)} clips held out")
    summary = train_for(recipe, run_dir, minutes, steps)
    trend = _loss_trend(run_dir)

    log(f"vocoding the {len(held_out)} held-out clips (fast schedule) and running Griffin-Lim on the same mels ...")
    voc = load(run_dir, device)
    result = evaluate_resynthesis_files(voc, held_out, out, "fast", max_seconds=EVAL_SECONDS,
                                        with_dnsmos=with_dnsmos)
    table = result["table"]
    elapsed = time.monotonic() - t_start
    lines = ["", "=" * 78, f"quickstart done in {elapsed / 60:.1f} min ({summary['step']} training steps on "
             f"{summary['device']})"]
    if trend is not None:
        first, last, _ = trend
        lines.append(f"training loss (L1 on the noise): {first:.3f} at the start -> {last:.3f} now "
                     f"({last / first:.0%} of the start)")
    if shipped is not None:
        lines += ["", f"the shipped vocoder {PRETRAINED_MODEL!r} on real held-out speech: "
                  f"{shipped['paths']['markdown']}", "the model trained just now, on its held-out clips:"]
    lines += ["", table.markdown().rstrip(), "",
              f"data:         {data_dir}",
              f"run folder:   {run_dir}  (config.yaml, log.jsonl, tb/, checkpoints/)",
              f"audio:        {out / 'wavs'}  (<clip>.reference / .diffwave / .griffinlim .wav)",
              f"spectrograms: {result['paths']['png']}",
              f"metrics:      {result['paths']['markdown']}  and  {result['paths']['json']}",
              "",
              f"vocode your own audio:  diffwave vocode --model {run_dir} some.wav --out vocoded/",
              f"train longer:           diffwave quickstart --out {out} --minutes 20   (continues this run)",
              "=" * 78]
    log("\n".join(lines))
    sys.stdout.flush()
    return {"summary": summary, "loss_trend": trend, "table": table, "paths": result["paths"], "run_dir": run_dir,
            "heldout": held_out, "elapsed_s": elapsed, "pretrained": shipped}
