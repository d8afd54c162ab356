"""DiffWave benchmarks: vocoding speed (× real time) and training speed (steps/s), eager fp32 vs the inference speed-ups.

The network is untrained (speed does not depend on the weights) except that its last layer gets He-normal weights
instead of zeros, so that its output is not identically zero and the deviation of a speed-up from the float32
output (log-mel L1 and SNR of the waveform) is a real measurement. The mels are those of LJSpeech clips from the
shared data folder when it is there (else a smooth random mel), and the same generator seed drives every variant,
so two variants differ only by their arithmetic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch

from benchmarks.common import Budget, Report, Row, data_root, run_variant, snr_db, sync, time_call
from diffcore.inference import InferenceConfig, InferenceRunner
from diffcore.precision import autocast
from diffcore.losses import diffusion_loss
from diffcore.denoiser import VPDenoiser
from diffcore.discretization import fast_schedule
from diffcore.samplers import ddpm_sample
from diffwave.config import DiffWaveConfig
from diffwave.mel import compute_mel
from diffwave.metrics import log_mel_l1
from diffwave.model import DiffWave

__all__ = ["VocodeVariant", "TrainVariant", "build_model", "speech", "bench_vocode", "bench_train", "train_step_fn"]


def build_model(preset: str, seed: int = 0) -> DiffWave:
    """DiffWave ``preset`` with seeded weights on CPU; the zero-initialised output layer gets He-normal weights."""
    torch.manual_seed(seed)
    model = DiffWave(DiffWaveConfig.preset(preset))
    torch.nn.init.kaiming_normal_(model.output_projection.weight)
    return model


def speech(cfg: DiffWaveConfig, batch: int, frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio [batch, frames·hop], mel [batch, n_mels, frames]): crops of LJSpeech clips (joined end to end when a
    clip is too short), or, without the shared data, 0.1·N(0, 1) audio and its mel."""
    hop = cfg.hop_length
    length = frames * hop
    rng = np.random.default_rng(seed)
    root = data_root() / "ljspeech" / "wavs"
    clips = sorted(root.glob("*.wav")) if root.is_dir() else []
    rows = []
    if clips:
        import soundfile as sf

        joined = np.concatenate([sf.read(str(p), dtype="float32")[0] for p in clips])
        for _ in range(batch):
            start = int(rng.integers(0, max(1, joined.size - length)))
            piece = joined[start : start + length]
            if piece.size < length:
                piece = np.resize(joined, length)
            rows.append(piece)
        audio = torch.from_numpy(np.stack(rows))
    else:
        audio = 0.1 * torch.from_numpy(rng.standard_normal((batch, length)).astype(np.float32))
    mel = compute_mel(audio, cfg.mel)[..., :frames].contiguous()
    return audio, mel


# --------------------------------------------------------------------------------------------------------------
# Vocoding


@dataclass
class VocodeVariant:
    """A named InferenceConfig; ``baseline`` marks the eager fp32 reference."""

    name: str
    config: InferenceConfig
    baseline: bool = False


def bench_vocode(
    report: Report,
    device: torch.device,
    variants: list[VocodeVariant],
    *,
    preset: str = "base",
    seconds: float = 10.0,
    batch: int = 1,
    schedule: Literal["fast", "full"] = "fast",
    repeats: int = 3,
    warmup: int = 1,
    budget: Budget | None = None,
    min_left_s: float = 0.0,
    model: DiffWave | None = None,
    benchmark: str | None = None,
    clock: Literal["wall", "cpu"] = "wall",
) -> list[Row]:
    """Vocode ``seconds`` of audio at ``batch`` with each variant; the figure is audio seconds per wall second
    (``clock="cpu"``: per CPU second of the process, which other processes on the machine barely change; with one
    thread it is the single-core speed).

    ``schedule``: ``fast`` = the 6-step fast-sampling schedule (``fast_schedule`` of the preset's ``inference_betas``),
    ``full`` = the 50-step training schedule (``ddpm_sample``). The first variant must be the baseline: its output
    is the reference for the deviation columns. A variant is skipped when less than ``min_left_s`` of the budget is
    left (those that compile need a minute).
    """
    model = model if model is not None else build_model(preset)
    cfg = model.config
    frames = max(1, round(seconds * cfg.sample_rate / cfg.hop_length))
    length = frames * cfg.hop_length
    audio_s = length / cfg.sample_rate
    _, mel = speech(cfg, batch, frames)
    train_schedule = cfg.diffusion.build()
    name = benchmark or f"diffwave_vocode_{'6step' if schedule == 'fast' else f'{cfg.diffusion.num_steps}step'}"
    reference: dict[str, torch.Tensor] = {}
    rows = []
    for variant in variants:
        row = Row(name, variant.name, batch, "x_realtime" if clock == "wall" else "x_rt_cputime", None,
                  settings={"baseline": variant.baseline, "audio_seconds": round(audio_s, 3), "preset": preset})
        if budget is not None and not variant.baseline and not budget.allows(min_left_s):
            row.error = f"skipped: {budget.left():.0f} s of the time budget left, this variant needs ~{min_left_s:.0f} s"
            rows.append(report.add(row))
            continue

        def run(variant: VocodeVariant = variant, row: Row = row) -> None:
            runner = InferenceRunner(model, device, variant.config)
            row.settings.update(runner.describe())
            mel_d = mel.to(device)

            def vocode() -> torch.Tensor:
                gen = torch.Generator(device).manual_seed(1234)
                cond = runner.prepare_condition(mel_d)
                den = VPDenoiser(runner, train_schedule, prediction=cfg.diffusion.prediction)
                if schedule == "fast":
                    return ddpm_sample(den, (batch, length), fast_schedule(train_schedule, cfg.inference_betas),
                                       variance="posterior", cond=cond, generator=gen, device=device)
                return ddpm_sample(den, (batch, length), cond=cond, generator=gen, device=device)

            with runner.context():
                out = {}

                def timed() -> None:
                    out["y"] = vocode()

                cpu_times: list[float] = []
                # eager CPU runs need no warm-up (no compilation, no autotuning) and each takes seconds
                n_warm = warmup if device.type == "cuda" or runner.compiled else 0
                times = time_call(timed, device, warmup=n_warm, repeats=repeats, budget=budget, cpu_times=cpu_times)
                y = out["y"][0].float().cpu()
            row.seconds = times
            if cpu_times:
                row.notes["cpu_seconds"] = cpu_times
            row.value = batch * audio_s / float(np.median(times if clock == "wall" else cpu_times))
            if variant.baseline:
                reference["y"] = y
            elif "y" in reference:
                row.notes["log_mel_l1"] = log_mel_l1(reference["y"], y, cfg.sample_rate)
                row.notes["snr_db"] = snr_db(reference["y"], y)
                row.notes["max_abs_diff"] = float((reference["y"] - y).abs().max())
            row.notes["output_rms"] = float(y.pow(2).mean().sqrt())

        rows.append(run_variant(report, row, run, device))
        model.set_runtime(channels_last=False)
    return rows


# --------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainVariant:
    """Training settings: autocast precision, the channels-last path, torch.compile, fused Adam."""

    name: str
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    fused_adam: bool = False
    baseline: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def train_step_fn(
    model: torch.nn.Module,
    variant: TrainVariant,
    device: torch.device,
    audio: torch.Tensor,
    mel: torch.Tensor,
    seed: int = 0,
) -> tuple[Callable[[], torch.Tensor], torch.optim.Optimizer]:
    """One training step of ``model`` through the real loss (``diffusion_loss`` with the model's prediction target
    and norm) and Adam (lr 2e-4, as lmnt's DiffWave): returns (step() → detached loss, the optimizer)."""
    cfg = model.config
    schedule = cfg.diffusion.build()
    model.set_runtime(channels_last=variant.channels_last)
    net = torch.compile(model) if variant.compile else model
    kwargs: dict[str, Any] = {"fused": True} if variant.fused_adam else {}
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, **kwargs)
    gen = torch.Generator(device).manual_seed(seed)

    def step() -> torch.Tensor:
        with autocast(variant.precision, device):
            den = VPDenoiser(net, schedule, prediction=cfg.diffusion.prediction)
            loss = diffusion_loss(den, audio, mel, norm=cfg.diffusion.loss, generator=gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, opt


def bench_train(
    report: Report,
    device: torch.device,
    variants: list[TrainVariant],
    *,
    preset: str = "base",
    batch: int = 16,
    frames: int = 62,
    steps: int = 10,
    repeats: int = 3,
    loss_steps: int = 5,
    budget: Budget | None = None,
    min_left_s: float = 0.0,
    build: Callable[[], torch.nn.Module] | None = None,
    benchmark: str = "diffwave_train",
    data: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    unit: str = "steps/s",
    per_step: int = 1,
    reference_losses: list[float] | None = None,
) -> list[Row]:
    """Training steps/s at ``batch`` × ``frames``·hop samples for each variant, each from the same initial weights
    and the same data and noise. The first ``loss_steps`` steps (untimed; they include compilation) give the loss
    curve, compared with the baseline's; then ``repeats`` blocks of ``steps`` steps are timed. Peak GPU memory of
    the timed steps is in ``notes``. The figure is ``per_step`` · steps/s in ``unit`` (e.g. images/s with
    ``per_step=batch``). ``build`` makes the network (default: DiffWave ``preset``); ``data`` = (x0, cond);
    ``reference_losses`` carries the baseline's loss curve between calls (filled by a baseline variant)."""
    build = build if build is not None else (lambda: build_model(preset))
    init = build()
    state = copy.deepcopy(init.state_dict())
    cfg = init.config
    if data is None:
        audio, mel = speech(cfg, batch, frames, seed=1)
    else:
        audio, mel = data
    audio, mel = audio.to(device), (mel.to(device) if mel is not None else None)
    batch = audio.shape[0]
    reference: list[float] = reference_losses if reference_losses is not None else []
    rows = []
    for variant in variants:
        row = Row(benchmark, variant.name, batch, unit, None,
                  settings={"baseline": variant.baseline, "precision": variant.precision,
                            "channels_last": variant.channels_last, "compile": variant.compile,
                            "fused_adam": variant.fused_adam, "samples": int(audio[0].numel()), **variant.extra})
        if budget is not None and not variant.baseline and not budget.allows(min_left_s):
            row.error = f"skipped: {budget.left():.0f} s of the time budget left, this variant needs ~{min_left_s:.0f} s"
            rows.append(report.add(row))
            continue

        def run(variant: TrainVariant = variant, row: Row = row) -> None:
            model = build()
            model.load_state_dict(state)
            model.to(device).train()
            step, opt = train_step_fn(model, variant, device, audio, mel)
            losses = [float(step()) for _ in range(max(1, loss_steps))]
            row.notes["losses"] = losses
            if variant.baseline:
                reference[:] = losses
            elif reference:
                n = min(len(reference), len(losses))
                rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(reference[:n], losses[:n])]
                row.notes["loss_rel_diff_max"] = max(rel)
                row.notes["loss_rel_diff_mean"] = sum(rel) / n
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)

            def block() -> None:
                for _ in range(steps):
                    step()

            times = time_call(block, device, warmup=0, repeats=repeats, budget=budget)
            row.seconds = times
            row.value = per_step * steps / float(np.median(times))
            if device.type == "cuda":
                row.notes["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)

        rows.append(run_variant(report, row, run, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows



def train_trial(
    build: Callable[[], torch.nn.Module],
    variant: TrainVariant,
    device: torch.device,
    make_data: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]],
) -> Callable[[int], None]:
    """batch → one training step at that batch of a network from ``build`` (for the largest-batch search)."""
    model = build().to(device).train()

    def trial(batch: int) -> None:
        x, cond = make_data(batch)
        step, opt = train_step_fn(model, variant, device, x.to(device), None if cond is None else cond.to(device))
        try:
            step()
            sync(device)
        finally:
            del step, opt, x, cond
            model.zero_grad(set_to_none=True)

    return trial
