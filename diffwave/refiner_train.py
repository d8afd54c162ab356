"""Training of the Griffin-Lim refiner (:mod:`diffwave.refiner`) on a CPU-time budget, with a held-out record: a
driver over the one engine (:class:`~diffcore.train.Trainer` running :class:`~diffwave.refiner_task.RefinerTask`).

:func:`train_refiner` trains a :class:`~diffwave.refiner_task.RefinerRecipe` in a run folder for ``cpu_minutes``
more CPU minutes of the training loop (``time.process_time``, which the load of other jobs on a shared machine does
not inflate; the engine keeps the count in its checkpoints), as successive ``Trainer.fit(until_cpu_minutes=...)``
calls that stop at every multiple of ``eval_every_minutes``. At each stop the EMA weights are scored
(:func:`score_refiner`: PESQ, STOI, DNSMOS, log-mel L1 beside Griffin-Lim) on the recipe's validation clips, which
pick the best weights, and on its held-out clips, which are only recorded; evaluation is not counted as training
time. The engine gives the rest: exact resume, checkpoints, SIGTERM/SIGINT (the step in flight finishes, a
checkpoint is written).

The run folder is the engine's (``config.yaml``, ``checkpoints/``, ``log.jsonl``) plus ``record.jsonl`` (one line
per evaluation: step, CPU minutes, the Griffin-Lim start, the validation and held-out scores, ``best``),
``periods.jsonl`` (one line per call: its first and last step and CPU minute, threads, the start, what changed) and
``best.pt`` (a checkpoint of the step with the best validation PESQ-WB, without optimiser). :func:`export_refiner`
writes the EMA weights of ``best.pt`` or of the last checkpoint as fp16 safetensors beside ``config.json``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from diffcore.atomic import atomic_write
from diffcore.checkpoint import FORMAT_VERSION, find_latest, load_checkpoint
from diffcore.train import Trainer
from diffwave.refiner import NETWORK_NAME, GriffinLimRefiner
from diffwave.refiner_task import START_FIELDS, RefinerRecipe, RefinerTask

#: Griffin-Lim iterations of the baseline every score is compared with (the evaluation's default).
BASELINE_GL_ITERS = 64
RECORD, PERIODS, BEST = "record.jsonl", "periods.jsonl", "best.pt"

__all__ = ["BASELINE_GL_ITERS", "train_refiner", "score_refiner", "read_record", "export_refiner"]


@torch.no_grad()
def score_refiner(model: GriffinLimRefiner, files: Sequence[str | os.PathLike], *, with_dnsmos: bool = True,
                  max_seconds: float | None = None) -> dict[str, Any]:
    """Mean metrics of the refined waveform and of the baseline (Griffin-Lim, :data:`BASELINE_GL_ITERS` iterations,
    whatever start the model uses) over whole recordings (or their first ``max_seconds``):
    ``{"refiner": {...}, "griffinlim": {...}, "clips": n}``."""
    from diffwave.audio import load_audio
    from diffwave.mel import compute_mel
    from diffwave.metrics import evaluate_resynthesis, griffin_lim_from_mel

    c = model.config
    pairs, base = [], []
    model.eval()
    for f in files:
        wav, _ = load_audio(f, c.sample_rate)
        wav = wav.clamp(-1, 1)
        if max_seconds:
            wav = wav[: int(max_seconds * c.sample_rate)]
        mel = compute_mel(wav, c.mel)[None]
        est = model(mel)[0].clamp(-1, 1)
        pairs.append((wav, est))
        base.append((wav, griffin_lim_from_mel(mel, c.mel, n_iter=BASELINE_GL_ITERS)[0]))  # the baseline's own
    table = evaluate_resynthesis(pairs, c.sample_rate, base, system="refiner", with_dnsmos=with_dnsmos).to_dict()
    return {"refiner": table["means"]["refiner"], "griffinlim": table["means"]["Griffin-Lim"], "clips": len(pairs)}


def read_record(run_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(evaluations, periods)`` of a run folder: the lines of ``record.jsonl`` and of ``periods.jsonl``."""
    def lines(path: Path) -> list[dict[str, Any]]:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []

    run = Path(run_dir)
    return lines(run / RECORD), lines(run / PERIODS)


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # as the engine stops on SIGTERM, so that the period's line is written


def train_refiner(
    run_dir: str | os.PathLike,
    recipe: RefinerRecipe,
    *,
    cpu_minutes: float = 10.0,
    eval_every_minutes: float = 5.0,
    with_dnsmos: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or resume) ``recipe`` in ``run_dir`` until the run's training loop has used ``cpu_minutes`` more CPU
    minutes or reached ``train.max_steps``, scoring the EMA at every multiple of ``eval_every_minutes`` CPU minutes
    of the run and at step 0 (module docstring). A resumed run keeps its network; it may change its Griffin-Lim
    start (:data:`~diffwave.refiner_task.START_FIELDS`) and its ``train`` settings. Returns the last record line
    written by this call (``{}`` if none)."""
    if not (cpu_minutes > 0 and eval_every_minutes > 0 and math.isfinite(cpu_minutes + eval_every_minutes)):
        raise ValueError(f"cpu_minutes and eval_every_minutes must be positive, got {cpu_minutes}, "
                         f"{eval_every_minutes}")
    run = Path(run_dir)
    task = RefinerTask(recipe)
    log(f"{len(task.train_files)} training clips, validation {[f.name for f in task.validation_files]}, "
        f"held-out {[f.name for f in task.heldout_files]}")
    latest = find_latest(run)
    state = load_checkpoint(latest) if latest is not None else None
    step = int(state["step"]) if state else 0
    cpu = float(state.get("cpu_seconds", 0.0)) if state else 0.0
    stored_model = (state["config"].get("model") or {}) if state else {}
    del state  # the engine reads the checkpoint again: keep one copy of it in memory
    period: dict[str, Any] = {"start_step": step, "start_cpu_minutes": cpu / 60, "threads": torch.get_num_threads(),
                              "gl_iters": recipe.model.gl_iters}
    changed = {k: getattr(recipe.model, k) for k in START_FIELDS
               if stored_model and stored_model.get(k) != getattr(recipe.model, k)}
    if changed:
        period["start_changed"] = changed
    rows, _ = read_record(run)
    best = max([r["val"]["refiner"].get("pesq_wb") or -math.inf for r in rows if "val" in r], default=-math.inf)
    row: dict[str, Any] = {}

    def evaluate(trainer: Trainer) -> dict[str, Any]:
        nonlocal best
        ema, minutes = trainer.ema.module, trainer.cpu_seconds / 60
        line: dict[str, Any] = {"step": trainer.step, "cpu_minutes": minutes, "date": time.strftime("%Y-%m-%d %H:%M"),
                                "gl_iters": recipe.model.gl_iters}
        if task.validation_files:
            line["val"] = score_refiner(ema, task.validation_files, with_dnsmos=with_dnsmos)
            pesq = line["val"]["refiner"].get("pesq_wb") or -math.inf
            if pesq > best:
                best, line["best"] = pesq, True
                parts = trainer.update.state_dict()
                keep = {"format": FORMAT_VERSION, "step": trainer.step, "cpu_seconds": trainer.cpu_seconds,
                        "model": parts["model"], "ema": parts["ema"], "config": trainer.config, "val": line["val"]}
                atomic_write(run / BEST, lambda fh: torch.save(keep, fh))
        if task.heldout_files:
            line["heldout"] = score_refiner(ema, task.heldout_files, with_dnsmos=with_dnsmos)
        _append(run / RECORD, line)
        m = line.get("heldout", line.get("val", {})).get("refiner", {})
        log(f"step {trainer.step:6d}  {minutes:6.1f} CPU-min  held-out PESQ {m.get('pesq_wb') or math.nan:.3f}  "
            f"STOI {m.get('stoi') or math.nan:.3f}  DNSMOS {m.get('dnsmos_p808') or math.nan:.3f}  "
            f"log-mel {m.get('log_mel_l1') or math.nan:.3f}")
        return line

    trainer: Trainer | None = None
    end, every = cpu + 60 * cpu_minutes, 60 * eval_every_minutes
    # between fits (scoring) SIGTERM stops the run too; during a fit the engine's own handler finishes the step first
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
    try:
        if step == 0:  # the start itself: Griffin-Lim (the head starts at zero), or the init_from weights
            trainer = Trainer(task, recipe.train, run)
            trainer.fit(until=0)
            row = evaluate(trainer)
        while cpu < end and step < recipe.train.max_steps:
            due = (math.floor(cpu / every) + 1) * every
            trainer = Trainer(task, recipe.train, run)
            summary = trainer.fit(until_cpu_minutes=min(due, end) / 60)
            step, cpu = summary["step"], summary["cpu_seconds"]
            if cpu >= due:
                row = evaluate(trainer)
    finally:  # also after a signal: the engine has saved the step it stopped at
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if trainer is not None and trainer.update is not None and trainer.step >= step:
            step, cpu = trainer.step, trainer.cpu_seconds
        if step > period["start_step"]:
            _append(run / PERIODS, {**period, "end_step": step, "end_cpu_minutes": cpu / 60})
    return row


def export_refiner(source: str | os.PathLike, out_dir: str | os.PathLike, *, which: str = "best",
                   provenance: dict[str, Any] | None = None) -> Path:
    """Write the EMA weights of a run (``best``: its ``best.pt``, the best validation score; ``last``: its latest
    checkpoint) as an export folder that :func:`diffwave.api.load` reads: ``model.safetensors`` (fp16) and
    ``config.json`` (``network: refiner``, the network's config, ``provenance``); returns ``out_dir``."""
    from diffcore.checkpoint import CheckpointError, write_export

    run = Path(source)
    path = run / BEST if which == "best" else find_latest(run)
    if path is None:
        raise CheckpointError(f"{run}: no checkpoint to export")
    ckpt = load_checkpoint(path)
    step = int(ckpt["step"])
    config = {"network": NETWORK_NAME, "model": ckpt["config"]["model"],
              "provenance": {"step": step, "cpu_minutes": round(float(ckpt.get("cpu_seconds", 0.0)) / 60, 2),
                             **dict(provenance or {})}}
    return write_export(out_dir, ckpt["ema"]["shadow"], config, dtype=torch.float16,
                        metadata={"step": str(step), "source": "ema"})
