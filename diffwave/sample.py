"""Sampling with a trained DiffWave: vocoding mels of any length, in batches, without seams; unconditional
generation; vocoding files and folders, generating clips into a folder.

Long inputs. A DiffWave output sample depends on the input only within its receptive field: ``R = Σ_i 2^(i mod
cycle)`` samples on each side (kernel-3 dilated convolutions; the 1×1 convolutions add nothing) plus about one mel
frame of the transposed-convolution upsampler. So the network can be evaluated on overlapping windows of the mel
and the noisy waveform, and each window's ε-prediction is exact (equal to the whole-input one) everywhere farther
than ``R`` samples from the window's cut edges. :class:`ChunkedDenoiser` does exactly that inside the sampler:

    windows  = cores of ``max_frames - 2·context`` frames, each widened by ``context`` frames on both sides
    ε(x_t)   = Σ_k w_k · ε_θ(x_t[window_k], t, mel[window_k])      (placed back at the window's position)
    w_k      = 1 on core k, complementary linear ramps of ``crossfade`` frames across each core boundary

while the sampler updates one global state over the whole length: one x_T and one noise draw per step cover all
chunks. With ``context ≥ ⌈R / hop⌉ + 2 + crossfade`` (the default, :func:`context_frames`), the chunked ε equals the
unchunked one up to float rounding, so chunked and whole-input vocoding give the same waveform for the same noise:
there is no seam to hear. A smaller ``context`` still shares the noise and crossfades, and the seams stay faint.

Batching. Several inputs are packed end to end into one state ``[1, Σ T_i]``; their windows never cross an input's
boundary (each input sees zero padding at its own edges, as when it is vocoded alone), and windows of equal length
share a network call (at most ``batch_size`` windows per call). ``pad_multiple`` pads each mel with the preset's
silence to a multiple of that many frames (the padding is cut off), so inputs of similar length share calls.

Speed. Sampling runs through :class:`diffcore.inference.InferenceRunner` unless told otherwise (``inference=``):
bf16 autocast where the hardware has it (the sampler state stays float32), channels-last convolutions, and on the
CPU the conditioner cache (each window's upsampled, per-layer-projected mel is computed once per run instead of once
per step, within :data:`CONDITION_CACHE_BYTES`). CUDA graphs are opt-in (``inference=InferenceConfig()``) until they
have run on a GPU here. ``inference="eager"`` is the eager float32 computation of the reference implementation;
BENCHMARKS.md gives the speed and the deviation of each path.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from diffcore.atomic import write_json
from diffcore.checkpoint import CheckpointError
from diffcore.inference import InferenceConfig, InferenceRunner
from diffcore.denoiser import VPDenoiser
from diffcore.discretization import fast_schedule
from diffcore.samplers import ddpm_sample
from diffwave.audio import AUDIO_EXTENSIONS, AudioError, load_audio, save_audio
from diffwave.config import DiffWaveConfig
from diffwave.mel import HIFIGAN_LOG_FLOOR, MelConfig, MelError, compute_mel, load_mel_file, validate_mel
from diffwave.prior import sample_prior_std

__all__ = [
    "Steps",
    "receptive_field",
    "context_frames",
    "Chunk",
    "plan_chunks",
    "chunk_weights",
    "ChunkedDenoiser",
    "sample_waveform",
    "Inference",
    "inference_runner",
    "CONDITION_CACHE_BYTES",
    "CALL_BYTES",
    "vocode_mels",
    "generate_audio",
    "generate_files",
    "MEL_EXTENSIONS",
    "VocodeError",
    "VocodeInput",
    "collect_inputs",
    "vocode_files",
]

log = logging.getLogger(__name__)

Steps = Literal["fast", "full"]
MEL_EXTENSIONS = frozenset({".npy", ".pt", ".pth"})

#: Default longest window (frames) vocoded in one piece: about 12 s at 22.05 kHz with hop 256.
DEFAULT_MAX_FRAMES = 1024
#: Default crossfade across chunk boundaries, in frames.
DEFAULT_CROSSFADE = 2
#: Largest conditioner cache (bytes) a vocoding run keeps; beyond it the conditioner is recomputed every step.
CONDITION_CACHE_BYTES = 1 << 30
#: Memory budget (bytes) of one network call over a batch of windows. A call holds about
#: :data:`ACTIVATION_FLOATS` float32 activations per sample and residual channel, so a call takes at most
#: ``CALL_BYTES // (window samples · channels · 4 · ACTIVATION_FLOATS)`` windows (at least one, at most
#: ``batch_size``): memory stays bounded by the window size, however long the input (a 20k-frame mel with 16
#: windows per call took 9 GB before).
CALL_BYTES = 1 << 30
ACTIVATION_FLOATS = 16

#: ``inference=`` of the sampling functions: an :class:`~diffcore.inference.InferenceConfig`, ``None`` (its defaults,
#: CUDA graphs off) or ``"eager"`` (the eager float32 reference path).
Inference = InferenceConfig | Literal["eager"] | None


def inference_runner(model: torch.nn.Module, inference: Inference = None) -> InferenceRunner:
    """The model wrapped with the inference speed-ups ``inference`` asks for (module docstring), on the model's device.

    The default leaves CUDA graphs off: their capture has not yet been run on a GPU in this project's tests (the
    GPU benchmark suite exercises them); pass ``InferenceConfig()`` to use them."""
    if inference is None:
        config = InferenceConfig(cuda_graphs=False)
    elif inference == "eager":
        config = InferenceConfig.reference()
    elif isinstance(inference, InferenceConfig):
        config = inference
    else:
        raise ValueError(f"inference must be an InferenceConfig, None or 'eager', got {inference!r}")
    return InferenceRunner(model, _model_device_dtype(model)[0], config)


def receptive_field(config: DiffWaveConfig) -> int:
    """Samples on each side of an output sample that the residual stack sees: ``Σ_i 2^(i mod cycle)``."""
    return sum(2 ** (i % config.dilation_cycle) for i in range(config.residual_layers))


def context_frames(config: DiffWaveConfig, crossfade: int = DEFAULT_CROSSFADE) -> int:
    """Context frames per side that make a chunk exact over its core and its crossfade ramps:
    ``⌈R / hop⌉ + 2 + crossfade`` (2 frames for the upsampler's reach)."""
    if config.hop_length is None:
        raise ValueError("an unconditional model has no mel frames to chunk")
    return math.ceil(receptive_field(config) / config.hop_length) + 2 + crossfade


@dataclass(frozen=True)
class Chunk:
    """One window ``[start, end)`` of an input's frames and the core ``[core_start, core_end)`` it is responsible for."""

    start: int
    end: int
    core_start: int
    core_end: int


def plan_chunks(frames: int, max_frames: int | None, context: int) -> list[Chunk]:
    """Windows covering ``frames`` frames: the whole input when it fits in ``max_frames`` (or ``max_frames`` is
    ``None``), otherwise cores of ``max_frames - 2·context`` frames widened by ``context`` on each side (clipped
    to the input)."""
    if frames < 1:
        raise ValueError(f"cannot vocode a mel with {frames} frames")
    if max_frames is None or frames <= max_frames:
        return [Chunk(0, frames, 0, frames)]
    core = max_frames - 2 * context
    if core < 1:
        raise ValueError(
            f"max_frames={max_frames} leaves no core with {context} context frames on each side "
            f"(use max_frames > {2 * context})"
        )
    chunks = []
    for cs in range(0, frames, core):
        ce = min(cs + core, frames)
        chunks.append(Chunk(max(0, cs - context), min(frames, ce + context), cs, ce))
    return chunks


def chunk_weights(chunks: Sequence[Chunk], k: int, hop: int, crossfade: int) -> Tensor:
    """Weights ``[(end - start) · hop]`` (float64) of window ``k``: 1 on its core, linear ramps of ``crossfade``
    frames centred on each core boundary shared with a neighbour (the neighbours' ramps sum to 1), 0 elsewhere.
    ``crossfade`` is limited to what both windows and the core can hold."""
    c = chunks[k]
    n = (c.end - c.start) * hop
    pos = torch.arange(n, dtype=torch.float64) + c.start * hop  # sample positions in the input
    w = torch.ones(n, dtype=torch.float64)

    def ramp(boundary: int, width_frames: int) -> Tensor:  # rises 0 → 1 across the boundary
        b, x = boundary * hop, width_frames * hop
        if x == 0:
            return (pos >= b).to(torch.float64)
        return ((pos - (b - x / 2) + 0.5) / x).clamp(0.0, 1.0)

    def width(left: Chunk, right: Chunk) -> int:
        room = min(left.end - left.core_end, right.core_start - right.start)  # context on both sides of the cut
        return max(0, min(crossfade, 2 * room, left.core_end - left.core_start, right.core_end - right.core_start))

    if k > 0:
        w = w * ramp(c.core_start, width(chunks[k - 1], c))
    if k < len(chunks) - 1:
        w = w * (1.0 - ramp(c.core_end, width(c, chunks[k + 1])))
    return w


class ChunkedDenoiser:
    """``ε(x [1, N], t, cond=None) -> [1, N]``: a DiffWave network evaluated window by window over several packed
    inputs (see the module docstring). ``mels[i]`` ``[n_mels, F_i]`` conditions samples
    ``offsets[i] : offsets[i] + F_i · hop`` of the packed state; ``length`` is ``Σ F_i · hop``."""

    def __init__(
        self,
        model: torch.nn.Module,
        mels: Sequence[Tensor],
        *,
        max_frames: int | None = DEFAULT_MAX_FRAMES,
        context: int | None = None,
        crossfade: int = DEFAULT_CROSSFADE,
        batch_size: int = 16,
        prepare: Callable[[Tensor], object] | None = None,
    ) -> None:
        """``model`` is the DiffWave network (its config gives the hop and the context); ``self.model``, the callable
        each window goes through, may be replaced afterwards by another with the same contract (a
        :class:`~diffcore.inference.InferenceRunner` of it). ``prepare(mel_windows)``, if given, turns each call's
        stacked mel windows into the conditioner once, at the first step
        (:meth:`~diffcore.inference.InferenceRunner.prepare_condition`)."""
        config: DiffWaveConfig = model.config
        hop = config.hop_length
        if hop is None:
            raise ValueError("ChunkedDenoiser needs a mel-conditioned model")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        context = context_frames(config, crossfade) if context is None else context
        self.model = model
        self.hop = hop
        self.offsets: list[int] = []
        groups: dict[int, list[tuple[Tensor, int, Tensor]]] = defaultdict(list)
        offset = 0
        coverage = []
        for mel in mels:
            frames = mel.shape[-1]
            chunks = plan_chunks(frames, max_frames, context)
            cover = torch.zeros(frames * hop, dtype=torch.float64)
            for k, c in enumerate(chunks):
                w = chunk_weights(chunks, k, hop, crossfade)
                cover[c.start * hop : c.end * hop] += w
                groups[c.end - c.start].append((mel[:, c.start : c.end], offset + c.start * hop, w))
            coverage.append(cover)
            self.offsets.append(offset)
            offset += frames * hop
        self.length = offset
        worst = max(float((cov - 1).abs().max()) for cov in coverage)
        if worst > 1e-9:  # the weights are a partition of unity by construction
            raise AssertionError(f"chunk weights do not sum to 1 (off by {worst:.3g})")
        self.num_windows = sum(len(g) for g in groups.values())
        self.prepare = prepare
        self._prepared: list[object] | None = None
        # Network calls: windows of equal length, at most batch_size per call.
        self.calls: list[tuple[Tensor, list[int], Tensor]] = []
        for length, items in sorted(groups.items()):
            per_window = length * hop * config.residual_channels * 4 * ACTIVATION_FLOATS
            per_call = max(1, min(batch_size, CALL_BYTES // max(1, per_window)))
            for i in range(0, len(items), per_call):
                part = items[i : i + per_call]
                self.calls.append((
                    torch.stack([m for m, _, _ in part]),
                    [s for _, s, _ in part],
                    torch.stack([w for _, _, w in part]),
                ))

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "ChunkedDenoiser":
        self.calls = [(m.to(device, dtype), s, w.to(device, dtype)) for m, s, w in self.calls]
        return self

    def __call__(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        if x.shape != (1, self.length):
            raise ValueError(f"expected the packed state [1, {self.length}], got {list(x.shape)}")
        flat = x[0]
        out = torch.zeros_like(flat)
        step = t.reshape(-1)[:1]
        if self._prepared is None:
            self._prepared = [self.prepare(m) if self.prepare is not None else m for m, _, _ in self.calls]
        for (_, starts, weights), mel in zip(self.calls, self._prepared):
            n = weights.shape[-1]
            xb = torch.stack([flat[s : s + n] for s in starts])
            eps = self.model(xb, step.expand(len(starts)), mel).to(flat.dtype)
            for j, s in enumerate(starts):
                out[s : s + n] += eps[j] * weights[j]
        return out.unsqueeze(0)


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def sample_waveform(
    model: torch.nn.Module,
    shape: Sequence[int],
    steps: Steps,
    *,
    denoiser: Callable | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
    progress: bool = False,
    runner: InferenceRunner | None = None,
    prior_std: Tensor | None = None,
) -> Tensor:
    """Run DiffWave's reverse process for a waveform of ``shape`` and clamp it to [-1, 1].

    ``fast``: the model's ``inference_betas`` schedule (:func:`~diffcore.discretization.fast_schedule`, Kong et al.
    2021, Alg. 2 at the aligned fractional steps, σ_s² = β̃ of the inference schedule), clamping the state to
    [-1, 1] after every step as lmnt's reference
    does. ``full``: ancestral sampling over all T training steps (:func:`~diffcore.samplers.ddpm_sample` with
    σ_t² = β̃_t, the DiffWave paper's choice), clamping after every step in the same way. ``denoiser`` replaces the model call (e.g. a
    :class:`ChunkedDenoiser`); noise comes from ``generator`` (on the model's device). ``runner``: an
    :class:`~diffcore.inference.InferenceRunner` of ``model``; sampling then runs inside its context (inference mode, autocast) and calls
    it instead of the bare network (default: the eager network in float32). ``prior_std``: the per-sample standard
    deviation of the model's prior (PriorGrad; :func:`diffwave.prior.sample_prior_std`), broadcastable to ``shape``.
    """
    config: DiffWaveConfig = model.config
    schedule = config.diffusion.build()
    device, dtype = _model_device_dtype(model)
    net = denoiser if denoiser is not None else (runner if runner is not None else model)
    den = VPDenoiser(net, schedule, prediction=config.diffusion.prediction, prior_std=prior_std)
    if steps == "fast":
        walk = fast_schedule(schedule, config.inference_betas)
    elif steps == "full":
        walk = schedule
    else:
        raise ValueError(f"steps must be 'fast' or 'full', got {steps!r}")
    with runner.context() if runner is not None else torch.no_grad():
        x = ddpm_sample(den, tuple(shape), walk, variance="posterior", clip_sample=1.0, generator=generator,
                        device=device, dtype=dtype, callback=callback, progress=progress)
    return x.float().clamp(-1.0, 1.0)


def num_sampling_steps(config: DiffWaveConfig, steps: Steps) -> int:
    """Network evaluations per sample: ``len(inference_betas)`` or the training T."""
    return len(config.inference_betas) if steps == "fast" else config.diffusion.num_steps


def mel_pad_value(mel_config: MelConfig) -> float:
    """The value of silence in a preset's mel: 0 for ``diffwave``, ln(1e-5) for ``hifigan``."""
    return 0.0 if mel_config.preset == "diffwave" else HIFIGAN_LOG_FLOOR


@torch.no_grad()
def vocode_mels(
    model: torch.nn.Module,
    mels: Sequence[Tensor],
    steps: Steps = "fast",
    *,
    generator: torch.Generator | None = None,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    context: int | None = None,
    crossfade: int = DEFAULT_CROSSFADE,
    batch_size: int = 16,
    pad_multiple: int = 1,
    callback: Callable[[int, Tensor], None] | None = None,
    progress: bool = False,
    inference: Inference = None,
) -> list[Tensor]:
    """Waveforms ``[F_i · hop]`` for mels ``[n_mels, F_i]`` of any lengths, in one sampling run (module docstring).

    The mels are not validated here (see :func:`diffwave.mel.validate_mel`); they are moved to the model's device.
    ``inference``: the inference speed-ups (module docstring; ``"eager"`` = eager float32).
    """
    if not mels:
        return []
    config: DiffWaveConfig = model.config
    if not config.conditional:
        raise ValueError("this model is unconditional: use generate_audio")
    device, dtype = _model_device_dtype(model)
    frames = [int(m.shape[-1]) for m in mels]
    if pad_multiple > 1:
        pad = mel_pad_value(config.mel)
        mels = [F.pad(m, (0, -m.shape[-1] % pad_multiple), value=pad) for m in mels]
    runner = inference_runner(model, inference)
    total = sum(m.shape[-1] for m in mels) * config.hop_length * (1 + 2 * (max_frames is not None))
    cache_bytes = config.residual_layers * 2 * config.residual_channels * total * (2 if runner.precision != "fp32" else 4)
    prepare = runner.prepare_condition if runner.cache_condition and cache_bytes <= CONDITION_CACHE_BYTES else None
    denoiser = ChunkedDenoiser(model, [m.to(device, dtype) for m in mels], max_frames=max_frames, context=context,
                               crossfade=crossfade, batch_size=batch_size, prepare=prepare).to(device, dtype)
    denoiser.model = runner
    prior_std = None
    if config.prior is not None:  # the packed state's prior: each mel's s[n], in packing order
        prior_std = torch.cat([sample_prior_std(m.float(), config.mel, config.prior) for m in mels])
        prior_std = prior_std.to(device, dtype).unsqueeze(0)
    x = sample_waveform(model, (1, denoiser.length), steps, denoiser=denoiser, generator=generator,
                        callback=callback, progress=progress, runner=runner, prior_std=prior_std)[0]
    hop = denoiser.hop
    return [x[o : o + f * hop] for o, f in zip(denoiser.offsets, frames)]


@torch.no_grad()
def generate_audio(
    model: torch.nn.Module,
    n: int,
    steps: Steps = "fast",
    *,
    generator: torch.Generator | None = None,
    length: int | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
    progress: bool = False,
    inference: Inference = None,
) -> Tensor:
    """``n`` clips ``[n, length]`` (default ``config.audio_length``) from an unconditional model (``inference``: the
    inference speed-ups; ``"eager"`` = eager float32)."""
    config: DiffWaveConfig = model.config
    if config.conditional:
        raise ValueError("this model is mel-conditioned: vocode a mel instead of generating unconditionally")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return sample_waveform(model, (n, length or config.audio_length), steps, generator=generator,
                           callback=callback, progress=progress, runner=inference_runner(model, inference))


# ---------------------------------------------------------------------------------------------------------------
# Files and folders


def generate_files(
    model: torch.nn.Module,
    n: int,
    out_dir: str | os.PathLike,
    steps: Steps = "fast",
    *,
    seed: int = 0,
    batch_size: int = 8,
    length: int | None = None,
    source: str = "<memory>",
    progress: bool = True,
    inference: Inference = None,
) -> list[Path]:
    """``n`` clips of an unconditional model written as ``out_dir/sample_{i:04d}.wav`` (16-bit, atomically) with
    ``out_dir/manifest.json`` (``source``: the model's name there; each clip's file, seed and index in its batch).

    Clips ``i .. i + batch_size - 1`` come from one sampling run with a generator seeded by ``seed + i``, so with
    ``batch_size=1`` clip ``i`` is seed ``seed + i``. Returns the written clip paths.
    """
    config: DiffWaveConfig = model.config
    device, _ = _model_device_dtype(model)
    out = Path(out_dir)
    written: list[Path] = []
    manifest = []
    with tqdm(total=n, desc=f"generate ({steps})", unit="clip", disable=not progress) as bar:
        for i in range(0, n, batch_size):
            k = min(batch_size, n - i)
            g = torch.Generator(device=device).manual_seed(seed + i)
            clips = generate_audio(model, k, steps, generator=g, length=length, inference=inference).cpu()
            for j, clip in enumerate(clips):
                path = save_audio(out / f"sample_{i + j:04d}.wav", clip, config.sample_rate)
                written.append(path)
                manifest.append({"file": path.name, "seed": seed + i, "index_in_batch": j})
            bar.update(k)
    write_json(out / "manifest.json", {"model": source, "steps": steps, "clips": manifest})
    return written


class VocodeError(ValueError):
    """Inputs or outputs that cannot be used as given (not audio or a mel, clashing or overwriting outputs)."""


@dataclass(frozen=True)
class VocodeInput:
    """One input file and the relative name of its output (``.wav``)."""

    path: Path
    out_name: Path

    @property
    def is_mel(self) -> bool:
        return self.path.suffix.lower() in MEL_EXTENSIONS


def collect_inputs(paths: Sequence[str | os.PathLike]) -> list[VocodeInput]:
    """Expand files and folders (recursively: audio files and ``.npy``/``.pt`` mels) into inputs with output names
    (the path relative to the folder given, ``.wav``). Raises ``FileNotFoundError``/:class:`VocodeError` for a missing
    path, an empty folder or two inputs that would write the same output."""
    out: list[VocodeInput] = []
    for given in paths:
        p = Path(given)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*")
                           if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS | MEL_EXTENSIONS)
            if not found:
                raise FileNotFoundError(f"{p}: no audio or mel (.npy/.pt) files in this folder")
            out += [VocodeInput(f, f.relative_to(p).with_suffix(".wav")) for f in found]
        elif p.is_file():
            if p.suffix.lower() not in AUDIO_EXTENSIONS | MEL_EXTENSIONS:
                raise VocodeError(f"{p}: not an audio file or a mel (.npy/.pt)")
            out.append(VocodeInput(p, Path(p.with_suffix(".wav").name)))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    seen: dict[Path, Path] = {}
    for item in out:
        if item.out_name in seen:
            raise VocodeError(f"{seen[item.out_name]} and {item.path} would both be written as {item.out_name}")
        seen[item.out_name] = item.path
    return out


def _load_input(item: VocodeInput, config: DiffWaveConfig, strict: bool) -> tuple[Tensor, int | None]:
    """``(mel [n_mels, F], samples to keep or None)`` of one input; raises ``MelError``/``AudioError``."""
    if item.is_mel:
        mel = load_mel_file(item.path)
        validate_mel(mel, config.mel, source=str(item.path))
        if mel.ndim == 3:
            if mel.shape[0] != 1:
                raise MelError(f"{item.path}: holds a batch of {mel.shape[0]} mels; save one mel per file")
            mel = mel[0]
        return mel.float(), None
    wav, _ = load_audio(item.path, config.sample_rate, strict=strict)
    wav = wav.clamp(-1.0, 1.0)
    if wav.shape[-1] < config.mel.min_samples():
        raise AudioError(f"{item.path}: {wav.shape[-1]} samples is too short to vocode")
    return compute_mel(wav, config.mel), wav.shape[-1]


def vocode_files(
    model: torch.nn.Module,
    inputs: Sequence[VocodeInput],
    out_dir: str | os.PathLike,
    steps: Steps = "fast",
    *,
    seed: int = 0,
    batch_size: int = 16,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    pad_multiple: int = 16,
    strict: bool = False,
    progress: bool = True,
    single_output: str | os.PathLike | None = None,
    inference: Inference = None,
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Vocode ``inputs`` into ``out_dir/<out_name>`` (each written atomically as 16-bit WAV at the model's rate).

    Inputs are taken in order and grouped until a group fills ``batch_size`` windows; each group is one sampling
    run with a generator seeded by ``(seed, group index)``. Wav inputs are cut back to their own length; mel
    inputs give ``frames · hop`` samples. An input that fails to load is reported and skipped.
    ``single_output``: write the only input to this exact path instead. ``inference``: the inference speed-ups.

    Returns ``(written paths, [(input, reason)] of the failures)``.
    """
    config: DiffWaveConfig = model.config
    device, _ = _model_device_dtype(model)
    out_dir = Path(out_dir)
    for item in inputs:
        target = Path(single_output) if single_output is not None else out_dir / item.out_name
        if target.resolve() == item.path.resolve():
            raise VocodeError(f"{item.path}: the output would overwrite this input; choose another output folder")
    context = context_frames(config)
    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    per_group = num_sampling_steps(config, steps)
    # Created once the first input has loaded, so that a single bad input fails before any output.
    bar = tqdm(total=len(inputs), disable=True)
    group: list[tuple[VocodeInput, Tensor, int | None]] = []
    windows = 0
    groups_done = 0

    def flush() -> None:
        nonlocal group, windows, groups_done
        if not group:
            return
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + groups_done)
        seconds = sum(m.shape[-1] for _, m, _ in group) * config.hop_length / config.sample_rate
        bar.set_postfix_str(f"{len(group)} file(s), {seconds:.1f} s: step 0/{per_group}")

        def on_step(i: int, x: Tensor) -> None:
            bar.set_postfix_str(f"{len(group)} file(s), {seconds:.1f} s: step {i + 1}/{per_group}")

        wavs = vocode_mels(model, [m for _, m, _ in group], steps, generator=g, max_frames=max_frames,
                           context=context, batch_size=batch_size, pad_multiple=pad_multiple, callback=on_step,
                           inference=inference)
        for (item, _, keep), wav in zip(group, wavs):
            wav = wav[:keep] if keep is not None else wav
            target = Path(single_output) if single_output is not None else out_dir / item.out_name
            try:
                written.append(save_audio(target, wav.cpu(), config.sample_rate))
            except CheckpointError as e:  # a full disk, a folder gone read-only: say which outputs are complete
                done = ", ".join(str(p) for p in written[:5]) + (", ..." if len(written) > 5 else "")
                raise VocodeError(f"{e}; {len(written)} of {len(inputs)} output(s) are complete"
                                  f"{f' ({done})' if written else ''} and no partial file is left") from None
        bar.update(len(group))
        groups_done += 1
        group, windows = [], 0

    try:
        for item in inputs:
            try:
                mel, keep = _load_input(item, config, strict)
            except (MelError, AudioError) as e:
                if len(inputs) == 1:
                    raise
                log.warning("skipping %s", e)
                if bar.disable and progress:
                    bar = tqdm(total=len(inputs), desc="vocode", unit="file")
                failed.append((item.path, str(e)))
                bar.update(1)
                continue
            if bar.disable and progress:
                bar = tqdm(total=len(inputs), initial=len(failed), desc="vocode", unit="file")
            group.append((item, mel, keep))
            frames = mel.shape[-1] + (-mel.shape[-1] % pad_multiple if pad_multiple > 1 else 0)
            windows += len(plan_chunks(frames, max_frames, context))
            if windows >= batch_size:
                flush()
        flush()
    finally:
        bar.close()
    return written, failed
