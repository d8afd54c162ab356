"""Training of the Griffin-Lim refiner (:mod:`diffwave.refiner`) on a CPU budget, resumable, with a held-out record.

Every clip's Griffin-Lim waveform is computed once (from the clip's whole mel, as the vocoder computes it at
inference) and cached in memory; a step draws ``batch`` aligned crops of (recording, Griffin-Lim start) at frame
boundaries, with a random gain applied to both (Griffin-Lim of a scaled magnitude is the scaled waveform), and
minimises ``mr_stft_loss + mel_weight · log_mel_loss`` of the refined crop against the recording (AdamW, warm-up,
EMA). Progress is counted in CPU seconds of this process (``time.process_time``), so that a shared machine's load
does not distort the record.

The run folder holds ``state.pt`` (model, EMA, optimiser, step, CPU seconds, RNG; written atomically, so a killed run
resumes from its last save) and ``record.jsonl`` (one line per evaluation: step, CPU minutes, the validation and
held-out scores). :func:`export_refiner` writes the EMA weights as fp16 safetensors beside ``config.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from diffcore.atomic import atomic_write
from diffcore.config import ConfigBase, ConfigError
from diffwave.refiner import NETWORK_NAME, GriffinLimRefiner, RefinerConfig
from diffwave.refiner_task import refiner_loss

#: Fields of :class:`RefinerConfig` that a resumed run may change: they shape the start, not the network.
START_FIELDS = ("gl_iters", "gl_momentum")
#: Griffin-Lim iterations of the baseline every score is compared with (the evaluation's default).
BASELINE_GL_ITERS = 64

__all__ = ["BASELINE_GL_ITERS", "RefinerTrainConfig", "ClipBank", "train_refiner", "score_refiner", "export_refiner"]


@dataclass
class RefinerTrainConfig(ConfigBase):
    """The training loop's settings (the network's are :class:`RefinerConfig`)."""

    batch_size: int = 16
    crop_frames: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mel_weight: float = 1.0
    gain_db: tuple[float, float] = (-6.0, 3.0)
    stft_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.crop_frames < 8:
            raise ConfigError(f"batch_size must be >= 1 and crop_frames >= 8, got {self.batch_size}, "
                              f"{self.crop_frames}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


class ClipBank:
    """Recordings and their Griffin-Lim starts, whole, in memory: ``items[i] = (wav [T], start [T], mel [M, F])``."""

    def __init__(self, files: Sequence[str | os.PathLike], model: GriffinLimRefiner,
                 log: Callable[[str], None] = print) -> None:
        from diffwave.audio import AudioError, load_audio
        from diffwave.mel import compute_mel

        c = model.config
        self.items: list[tuple[Tensor, Tensor, Tensor]] = []
        self.files: list[Path] = []
        for f in files:
            try:
                wav, _ = load_audio(f, c.sample_rate)
            except (AudioError, OSError) as e:
                log(f"skipped {f}: {e}")
                continue
            wav = wav.clamp(-1, 1)
            mel = compute_mel(wav, c.mel)
            with torch.no_grad():
                start = model.griffin_lim(mel[None])[0]
            self.items.append((wav[: start.shape[-1]], start, mel))
            self.files.append(Path(f))
        if not self.items:
            raise ValueError(f"none of the {len(files)} training clips could be read")

    def batch(self, n: int, crop_frames: int, hop: int, gain_db: tuple[float, float],
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(recording, start)``, each ``[n, crop_frames · hop]``, from random clips at random frame offsets."""
        length = crop_frames * hop
        refs, starts = [], []
        for _ in range(n):
            i = int(torch.randint(len(self.items), (1,), generator=generator))
            wav, start, _ = self.items[i]
            frames = start.shape[-1] // hop
            o = int(torch.randint(max(1, frames - crop_frames), (1,), generator=generator)) * hop
            gain = 10 ** (float(torch.empty(()).uniform_(*gain_db, generator=generator)) / 20)
            r, s = wav[o : o + length], start[o : o + length]
            if r.shape[-1] < length:  # a clip shorter than a crop: zero padding, as both signals end there
                r, s = (torch.nn.functional.pad(v, (0, length - v.shape[-1])) for v in (r, s))
            refs.append(r * gain)
            starts.append(s * gain)
        return torch.stack(refs), torch.stack(starts)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)


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


def _save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def train_refiner(
    run_dir: str | os.PathLike,
    train_files: Sequence[str | os.PathLike],
    *,
    model_config: RefinerConfig | None = None,
    train_config: RefinerTrainConfig | None = None,
    cpu_minutes: float = 10.0,
    eval_every_minutes: float = 5.0,
    val_files: Sequence[str | os.PathLike] = (),
    heldout_files: Sequence[str | os.PathLike] = (),
    warm_start: str | os.PathLike | None = None,
    save_every_minutes: float = 2.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or resume) in ``run_dir`` until this process has spent ``cpu_minutes`` more CPU minutes in it.

    ``val_files`` score every ``eval_every_minutes`` (the selection: ``best.pt`` keeps the EMA with the best
    validation PESQ-WB); ``heldout_files`` are scored at the same time for the record only. ``warm_start``: an export
    folder whose weights start a new run (a fresh optimiser with the usual warm-up), so training accumulates over
    working periods. Returns the last record line.
    """
    import copy

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    state_path, record_path = run / "state.pt", run / "record.jsonl"
    tc = train_config or RefinerTrainConfig()
    start_change: dict[str, Any] = {}
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        mc = RefinerConfig.from_dict(state["model_config"])
        tc = RefinerTrainConfig.from_dict(state["train_config"])
        if model_config is not None and model_config != mc:
            # only the Griffin-Lim start may change on resume: the network's shape is in its weights
            start_change = {k: getattr(model_config, k) for k in START_FIELDS
                            if getattr(model_config, k) != getattr(mc, k)}
            if RefinerConfig.from_dict({**mc.to_dict(), **start_change}) != model_config:
                raise ConfigError(f"{run}: a resumed run keeps its network; only {', '.join(START_FIELDS)} may "
                                  f"change (the Griffin-Lim start)")
            mc = model_config
    else:
        state = None
        mc = model_config or RefinerConfig()
    torch.manual_seed(tc.seed)
    model = GriffinLimRefiner(mc)
    if state is None and warm_start is not None:
        model.load_state_dict(load_refiner_weights(warm_start))
        log(f"warm start from {warm_start}")
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.8, 0.99))
    gen = torch.Generator().manual_seed(tc.seed)
    step, cpu_s, best = 0, 0.0, -math.inf
    history: dict[str, Any] = {"periods": []}
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, cpu_s, best = state["step"], state["cpu_seconds"], state["best"]
        history = state.get("history", history)
        log(f"resumed at step {step} ({cpu_s / 60:.1f} CPU-min)")
    bank = ClipBank(train_files, model, log)
    log(f"{len(bank.items)} training clips; {sum(p.numel() for p in model.parameters()):,} parameters")
    hop = mc.mel.hop_length

    def save() -> None:
        _save_state(state_path, {
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
            "cpu_seconds": cpu_s, "best": best, "history": history,
            "model_config": mc.to_dict(), "train_config": tc.to_dict(),
        })

    def evaluate() -> dict[str, Any]:
        nonlocal best
        row: dict[str, Any] = {"step": step, "cpu_minutes": cpu_s / 60, "date": time.strftime("%Y-%m-%d %H:%M"),
                               "gl_iters": mc.gl_iters}
        if val_files:
            row["val"] = score_refiner(ema, val_files)
            pesq = row["val"]["refiner"].get("pesq_wb") or -math.inf
            if pesq > best:
                best = pesq
                _save_state(run / "best.pt", {"ema": ema.state_dict(), "model_config": mc.to_dict(), "step": step,
                                              "cpu_minutes": cpu_s / 60, "val": row["val"]})
                row["best"] = True
        if heldout_files:
            row["heldout"] = score_refiner(ema, heldout_files)
        with record_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        m = row.get("heldout", row.get("val", {})).get("refiner", {})
        log(f"step {step:6d}  {cpu_s / 60:6.1f} CPU-min  held-out PESQ {m.get('pesq_wb') or math.nan:.3f}  "
            f"STOI {m.get('stoi') or math.nan:.3f}  DNSMOS {m.get('dnsmos_p808') or math.nan:.3f}  "
            f"log-mel {m.get('log_mel_l1') or math.nan:.3f}")
        return row

    budget_end = cpu_s + 60 * cpu_minutes
    next_eval = (math.floor(cpu_s / (60 * eval_every_minutes)) + 1) * 60 * eval_every_minutes
    next_save = cpu_s + 60 * save_every_minutes
    period = {"start_step": step, "start_cpu_minutes": cpu_s / 60, "threads": torch.get_num_threads(),
              "gl_iters": mc.gl_iters}
    if start_change:
        period["start_changed"] = start_change
        log(f"the Griffin-Lim start changes from this step on: {start_change}")
    if step == 0:
        evaluate()
    row: dict[str, Any] = {}
    model.train()
    losses: list[float] = []
    import signal

    stop = {"signal": None}

    def on_signal(signum, frame):  # finish the step in flight, save, return
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    while cpu_s < budget_end and stop["signal"] is None:
        t0 = time.process_time()
        ref, start = bank.batch(tc.batch_size, tc.crop_frames, hop, tc.gain_db, gen)
        loss = refiner_loss(model, ref, start, mc.mel, tc.stft_sizes, tc.mel_weight).mean()
        lr = tc.lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        _ema_update(ema, model, tc.ema_decay if step > tc.warmup_steps else 0.0)
        step += 1
        losses.append(float(loss.detach()))
        cpu_s += time.process_time() - t0
        if step % 100 == 0:
            log(f"step {step:6d}  {cpu_s / 60:6.1f} CPU-min  loss {sum(losses) / len(losses):.4f}")
            losses = []
        if cpu_s >= next_eval:
            row = evaluate()
            model.train()
            next_eval += 60 * eval_every_minutes
        if cpu_s >= next_save:
            save()
            next_save = cpu_s + 60 * save_every_minutes
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    period.update(end_step=step, end_cpu_minutes=cpu_s / 60)
    history["periods"].append(period)
    save()
    if stop["signal"] is not None:
        log(f"stopped by signal {stop['signal']} at step {step}; saved {state_path}")
    return row


def load_refiner_weights(export_dir: str | os.PathLike) -> dict[str, Tensor]:
    """The float32 state dict of an export folder written by :func:`export_refiner`."""
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(Path(export_dir) / "model.safetensors")).items()}


def export_refiner(source: str | os.PathLike, out_dir: str | os.PathLike, *, which: str = "best",
                   provenance: dict[str, Any] | None = None) -> Path:
    """Write the EMA weights of a run (``best.pt``, the best validation score, or ``state.pt``, the last step) as an
    export folder that :func:`diffwave.api.load` reads: ``model.safetensors`` (fp16) and ``config.json``
    (``network: refiner``, the network's config, ``provenance``); returns ``out_dir``."""
    from diffcore.checkpoint import write_export

    run = Path(source)
    ckpt = torch.load(run / ("best.pt" if which == "best" else "state.pt"), map_location="cpu", weights_only=True)
    minutes = ckpt.get("cpu_minutes", ckpt.get("cpu_seconds", 0.0) / 60)
    config = {"network": NETWORK_NAME, "model": ckpt["model_config"],
              "provenance": {"step": int(ckpt["step"]), "cpu_minutes": round(float(minutes), 2),
                             **dict(provenance or {})}}
    return write_export(out_dir, ckpt["ema"], config, dtype=torch.float16,
                        metadata={"step": str(int(ckpt["step"])), "source": "ema"})
