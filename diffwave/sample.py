"""Sampling with a trained DiffWave: vocoding mels of any length, in batches, without seams; unconditional
generation. (Jobs over files and folders are :mod:`diffwave.jobs`.)

Long inputs. A DiffWave output sample depends on the input only within its receptive field: ``R = Σ_i 2^(i mod
cycle)`` samples on each side (kernel-3 dilated convolutions; the 1×1 convolutions add nothing) plus about one mel
frame of the transposed-convolution upsampler. So the network can be evaluated on overlapping windows of the mel
and the noisy waveform, and each window's ε-prediction is exact (equal to the whole-input one) everywhere farther
than ``R`` samples from the window's cut edges. :class:`ChunkedNetwork` does exactly that inside the sampler:

    windows  = cores of ``max_frames - 2·context`` frames, each widened by ``context`` frames on both sides
    ε(x_t)   = Σ_k w_k · ε_θ(x_t[window_k], t, mel[window_k])      (placed back at the window's position)
    w_k      = 1 on core k, complementary linear ramps of ``crossfade`` frames across each core boundary

while the sampler updates one global state over the whole length: one x_T and one noise draw per step cover all
chunks. With ``context ≥ ⌈R / hop⌉ + 2 + crossfade`` (the default, :func:`context_frames`), the chunked ε equals the
unchunked one up to float rounding, so chunked and whole-input vocoding give the same waveform for the same noise:
there is no seam to hear. A smaller ``context`` still shares the noise and crossfades, and the seams stay faint.

Batching and noise. :func:`vocode_mels` vocodes each mel in its own sampling run with its own noise generator,
seeded from the noise seed and that mel's bytes (:func:`input_seed`; or a copy of the caller's generator), so a
mel's waveform depends on the seed, the mel and the options alone: not on the other mels of a call, their order or
how many there are. That is why inputs are not batched together: a padded batch lets the network hear the padding
through its receptive field, and even rows of exactly equal length may round differently in another batch
composition. A run's windows of equal length share a network call (at most ``batch_size`` per call).
:class:`ChunkedNetwork` can still pack several inputs end to end into one state ``[1, Σ T_i]`` (windows never
cross an input's boundary) for callers with their own noise.

Speed. Sampling runs through :class:`diffcore.inference.InferenceRunner` unless told otherwise (``inference=``;
the chunked network is built once around the runner, so every window goes through it):
bf16 autocast where the hardware has it (the sampler state stays float32), channels-last convolutions, and on the
CPU the conditioner cache (each window's upsampled, per-layer-projected mel is computed once per run instead of once
per step, within :data:`CONDITION_CACHE_BYTES`). CUDA graphs are opt-in (``inference=InferenceConfig()``) until they
have run on a GPU here. ``inference="eager"`` is the eager float32 computation of the reference implementation;
BENCHMARKS.md gives the speed and the deviation of each path.

Mel-consistent sampling (``project=``, default off): GLA-Grad's Griffin-Lim projection of the clean estimate toward
each mel's magnitude at the first reverse steps (:mod:`diffwave.projection`, issue 17). It acts on each packed input
as a whole, never on chunks, so chunked vocoding stays equal to whole-file vocoding up to float rounding (which
Griffin-Lim's phase updates may amplify slightly: the test bounds the difference); off, the output is bit-identical
to sampling without the option.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffcore.denoiser import Network, VPDenoiser, denoiser_from_config, require_vp
from diffcore.discretization import fast_schedule
from diffcore.inference import InferenceConfig, InferenceRunner
from diffcore.samplers import Projection, ddpm_sample
from diffcore.schedule import NoiseSchedule
from diffwave.config import DiffWaveConfig
from diffwave.mel import HIFIGAN_LOG_FLOOR, MelConfig
from diffwave.prior import sample_prior_std
from diffwave.projection import MelProjection, ProjectOption, resolve_projection
from diffwave.refiner import GriffinLimRefiner, RefinerConfig

__all__ = [
    "Steps",
    "receptive_field",
    "context_frames",
    "Chunk",
    "plan_chunks",
    "chunk_weights",
    "ChunkedNetwork",
    "denoiser_of",
    "sample_waveform",
    "num_sampling_steps",
    "Inference",
    "inference_runner",
    "CONDITION_CACHE_BYTES",
    "CALL_BYTES",
    "DEFAULT_MAX_FRAMES",
    "vocode_mels",
    "input_seed",
    "input_generators",
    "MAX_NOISE_SEED",
    "generate_audio",
]

Steps = Literal["fast", "full"]

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
    if isinstance(config, RefinerConfig):  # a frame-rate network: its own receptive field, in frames
        return config.receptive_field // 2 + 1
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


class ChunkedNetwork:
    """``ε(x [1, N], t, cond=None) -> [1, N]``: a DiffWave network evaluated window by window over several packed
    inputs (see the module docstring); a network of the model contract, not a denoiser (its output is the network's
    ε, which a :class:`~diffcore.denoiser.VPDenoiser` around it interprets). ``mels[i]`` ``[n_mels, F_i]`` conditions
    samples ``offsets[i] : offsets[i] + F_i · hop`` of the packed state; ``length`` is ``Σ F_i · hop``."""

    def __init__(
        self,
        network: Network,
        mels: Sequence[Tensor],
        *,
        config: DiffWaveConfig | None = None,
        max_frames: int | None = DEFAULT_MAX_FRAMES,
        context: int | None = None,
        crossfade: int = DEFAULT_CROSSFADE,
        batch_size: int = 16,
        prepare: Callable[[Tensor], object] | None = None,
    ) -> None:
        """``network``: what each window goes through, the DiffWave itself or an
        :class:`~diffcore.inference.InferenceRunner` of it; ``config``: the DiffWave's config, which gives the hop
        and the context (default: ``network.config``, for a bare DiffWave). ``prepare(mel_windows)``, if given,
        turns each call's stacked mel windows into the conditioner once, at the first step
        (:meth:`~diffcore.inference.InferenceRunner.prepare_condition`)."""
        config = getattr(network, "config", None) if config is None else config
        if not isinstance(config, DiffWaveConfig):
            raise TypeError(f"ChunkedNetwork needs the DiffWave's config: pass config= for a "
                            f"{type(network).__name__}")
        hop = config.hop_length
        if hop is None:
            raise ValueError("ChunkedNetwork needs a mel-conditioned model")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        context = context_frames(config, crossfade) if context is None else context
        self.network = network
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

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "ChunkedNetwork":
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
            eps = self.network(xb, step.expand(len(starts)), mel).to(flat.dtype)
            for j, s in enumerate(starts):
                out[s : s + n] += eps[j] * weights[j]
        return out.unsqueeze(0)


def denoiser_of(network: Network, config: DiffWaveConfig, *, schedule: NoiseSchedule | None = None,
                prior_std: Tensor | None = None) -> VPDenoiser:
    """The diffcore denoiser of a DiffWave: ``config.diffusion``'s VP parameterisation around ``network`` (the
    DiffWave of ``config`` or any callable of its contract), under the PriorGrad prior ``prior_std`` when given;
    ``schedule`` is the one to use instead of building the configured one again."""
    den = require_vp(denoiser_from_config(config.diffusion, network, schedule=schedule), "DiffWave")
    return den.with_prior(prior_std) if prior_std is not None else den


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def sample_waveform(
    network: Network,
    config: DiffWaveConfig,
    shape: Sequence[int],
    steps: Steps,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
    progress: bool = False,
    prior_std: Tensor | None = None,
    project: Projection | None = None,
) -> Tensor:
    """Run DiffWave's reverse process through ``network`` for a waveform of ``shape`` and clamp it to [-1, 1].

    ``network``: the callable every step goes through (the DiffWave of ``config``, its
    :class:`~diffcore.inference.InferenceRunner`, or a :class:`ChunkedNetwork` of either); the caller holds the
    context it runs in (``torch.no_grad()`` or the runner's ``context()``). ``steps`` names the discretisation the
    reverse process walks, which is made into data here and nowhere else: ``fast``, the model's ``inference_betas``
    schedule (:func:`~diffcore.discretization.fast_schedule`, Kong et al. 2021, Alg. 2 at the aligned fractional
    steps, σ_s² = β̃ of the inference schedule); ``full``, ancestral sampling over all T training steps
    (:func:`~diffcore.samplers.ddpm_sample` with σ_t² = β̃_t, the DiffWave paper's choice). Either way the state is
    clamped to [-1, 1] after every step, as lmnt's reference does. Noise comes from ``generator`` (on ``device``),
    as the denoiser's prior noise; the state is ``dtype``. ``prior_std``: the per-sample standard deviation of the
    model's prior (PriorGrad; :func:`diffwave.prior.sample_prior_std`), broadcastable to ``shape``, bound to the
    denoiser (``with_prior``), which scales every noise the sampler draws by it. ``project``: a projection of
    the clean estimate at each step (:data:`diffcore.samplers.Projection`, e.g. a
    :class:`~diffwave.projection.MelProjection`; ``None`` = none).
    """
    den = denoiser_of(network, config, prior_std=prior_std)
    if steps == "fast":
        walk = fast_schedule(den.schedule, config.inference_betas)
    elif steps == "full":
        walk = den.schedule
    else:
        raise ValueError(f"steps must be 'fast' or 'full', got {steps!r}")
    x = ddpm_sample(den, tuple(shape), walk, variance="posterior", clip_sample=1.0, generator=generator,
                    device=device, dtype=dtype, callback=callback, progress=progress, project=project)
    return x.float().clamp(-1.0, 1.0)


def num_sampling_steps(config: DiffWaveConfig, steps: Steps) -> int:
    """Network evaluations per sample: ``len(inference_betas)`` or the training T (1 for the refiner)."""
    if isinstance(config, RefinerConfig):
        return 1
    return len(config.inference_betas) if steps == "fast" else config.diffusion.num_steps


def mel_pad_value(mel_config: MelConfig) -> float:
    """The value of silence in a preset's mel: 0 for ``diffwave``, ln(1e-5) for ``hifigan``."""
    return 0.0 if mel_config.preset == "diffwave" else HIFIGAN_LOG_FLOOR


def _refine_mels(model: GriffinLimRefiner, mels: Sequence[Tensor], max_frames: int | None,
                 callback: Callable[[int, Tensor], None] | None) -> list[Tensor]:
    """The refiner's waveforms ``[F_i · hop]`` (Griffin-Lim covers ``(F_i − 1) · hop`` samples; zero-padded)."""
    device = next(model.parameters()).device
    hop, out = model.config.mel.hop_length, []
    for m in mels:
        wav = model(m[None].to(device, torch.float32), max_frames=max_frames)[0].clamp(-1.0, 1.0)
        out.append(F.pad(wav, (0, max(0, m.shape[-1] * hop - wav.shape[-1])))[: m.shape[-1] * hop])
    if callback is not None:
        callback(0, out[-1])
    return out


#: Largest noise seed (the CLI's ``--seed`` and ``seed=`` of the API): seeds are 63-bit non-negative integers.
MAX_NOISE_SEED = 2**63 - 1


def input_seed(seed: int, mel: Tensor) -> int:
    """The noise seed of one input: a 63-bit integer from BLAKE2b over ``seed``, ``mel``'s shape and its float32
    bytes (C order, on the CPU). It depends on the seed and that mel alone, so the same mel gives the same audio
    wherever and whenever it is vocoded with that seed (in a folder run, beside any other files, in any order or
    batch size, or alone), while different mels get independent noise."""
    h = hashlib.blake2b(digest_size=8, person=b"diffwave-noise")
    h.update(int(seed).to_bytes(8, "little", signed=False))
    h.update(struct.pack("<q", mel.ndim) + struct.pack(f"<{mel.ndim}q", *mel.shape))
    h.update(mel.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little") & MAX_NOISE_SEED


def input_generators(
    mels: Sequence[Tensor], device: torch.device | str, *, seed: int | None = None,
    generator: torch.Generator | None = None,
) -> list[torch.Generator]:
    """One noise generator per mel, on ``device``, each a function of its own mel and the seed alone.

    - ``seed``: mel ``i``'s generator is seeded with :func:`input_seed` ``(seed, mels[i])``.
    - ``generator``: each mel gets its own copy of ``generator``'s current state, so each mel draws exactly the
      noise it would draw vocoded alone from that generator (a single mel draws what it always drew). Afterwards
      ``generator`` is advanced as by vocoding the first mel alone, so the next call draws new noise.
    - neither: a seed is drawn from torch's global RNG (``torch.manual_seed`` makes it reproducible), then as
      ``seed``.
    """
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if generator is not None:
        state = generator.get_state()
        gens = [generator]
        for _ in mels[1:]:
            g = torch.Generator(device=generator.device)
            g.set_state(state)
            gens.append(g)
        return gens
    if seed is None:
        seed = int(torch.randint(0, MAX_NOISE_SEED, (1,)))
    return [torch.Generator(device=device).manual_seed(input_seed(seed, m)) for m in mels]


@torch.no_grad()
def vocode_mels(
    model: torch.nn.Module,
    mels: Sequence[Tensor],
    steps: Steps = "fast",
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    context: int | None = None,
    crossfade: int = DEFAULT_CROSSFADE,
    batch_size: int = 16,
    pad_multiple: int = 1,
    callback: Callable[[int, Tensor], None] | None = None,
    progress: bool = False,
    inference: Inference = None,
    project: ProjectOption = None,
) -> list[Tensor]:
    """Waveforms ``[F_i · hop]`` for mels ``[n_mels, F_i]`` of any lengths (module docstring).

    Each mel is its own sampling run with its own noise (:func:`input_generators`: from ``seed`` and the mel, or a
    copy of ``generator``'s state), so a mel's waveform depends on the noise seed, that mel and the options alone,
    never on the other mels of the call or their order: it equals vocoding that mel alone. Network calls batch only
    a mel's own windows (at most ``batch_size`` per call), and the batch size changes a window's result at most in
    the last bits (bit-identical on the default inference path on an AMD EPYC and an earlier Intel Xeon; on an Intel
    Xeon of the Ice Lake kind, and with ``inference="eager"`` anywhere, the convolution kernels oneDNN picks differ
    by batch size, about 1e-7 to 1e-6, for mels longer than ``max_frames``).
    ``pad_multiple``: pad each mel with the preset's silence to a multiple of that many frames before vocoding (cut
    off again; the network sees the padding within its receptive field, so it is off by default).

    The mels are not validated here (see :func:`diffwave.mel.validate_mel`); they are moved to the model's device.
    ``inference``: the inference speed-ups (module docstring; ``"eager"`` = eager float32). ``project``: GLA-Grad's
    mel-consistent projection (``"gla"`` or a :class:`~diffwave.projection.GLAGrad`; default ``None``, off: on held-out
    LJSpeech it lifts ``ljspeech-tiny`` to Griffin-Lim's level, not past it; BENCHMARKS.md, issue 17). With it on,
    chunked output equals whole-input output up to float rounding amplified by Griffin-Lim (module docstring).
    ``callback(i, x)`` is called after every step of every mel's run.
    """
    gla = resolve_projection(project)
    if not mels:
        return []
    if isinstance(model, GriffinLimRefiner):  # deterministic: no schedule, no noise, one network pass per mel
        if gla is not None:
            raise ValueError("project= projects a diffusion vocoder's reverse process; the refiner has none")
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        return _refine_mels(model, mels, max_frames, callback)
    config: DiffWaveConfig = model.config
    if not config.conditional:
        raise ValueError("this model is unconditional: use generate_audio")
    device, dtype = _model_device_dtype(model)
    gens = input_generators(mels, device, seed=seed, generator=generator)
    runner = inference_runner(model, inference)
    return [_vocode_one(runner, config, mel, g, steps, device=device, dtype=dtype, max_frames=max_frames,
                        context=context, crossfade=crossfade, batch_size=batch_size, pad_multiple=pad_multiple,
                        callback=callback, progress=progress, gla=gla)
            for mel, g in zip(mels, gens)]


def _vocode_one(runner: InferenceRunner, config: DiffWaveConfig, mel: Tensor, generator: torch.Generator,
                steps: Steps, *, device: torch.device, dtype: torch.dtype, max_frames: int | None,
                context: int | None, crossfade: int, batch_size: int, pad_multiple: int,
                callback: Callable[[int, Tensor], None] | None, progress: bool, gla: object) -> Tensor:
    """One mel's sampling run: the waveform ``[F · hop]`` of ``mel`` ``[n_mels, F]`` with noise from ``generator``."""
    frames = int(mel.shape[-1])
    if pad_multiple > 1:
        mel = F.pad(mel, (0, -mel.shape[-1] % pad_multiple), value=mel_pad_value(config.mel))
    total = mel.shape[-1] * config.hop_length * (1 + 2 * (max_frames is not None))
    cache_bytes = config.residual_layers * 2 * config.residual_channels * total * (2 if runner.precision != "fp32"
                                                                                  else 4)
    prepare = runner.prepare_condition if runner.cache_condition and cache_bytes <= CONDITION_CACHE_BYTES else None
    network = ChunkedNetwork(runner, [mel.to(device, dtype)], config=config, max_frames=max_frames,
                             context=context, crossfade=crossfade, batch_size=batch_size,
                             prepare=prepare).to(device, dtype)
    prior_std = None
    if config.prior is not None:  # the state's prior: the mel's s[n]
        prior_std = sample_prior_std(mel.float(), config.mel, config.prior).to(device, dtype).unsqueeze(0)
    projection = None
    if gla is not None:
        projection = MelProjection(gla, [mel.float()], network.offsets, config.mel, num_sampling_steps(config, steps))
    with runner.context():
        x = sample_waveform(network, config, (1, network.length), steps, device=device, dtype=dtype,
                            generator=generator, callback=callback, progress=progress, prior_std=prior_std,
                            project=projection)[0]
    return x[: frames * network.hop]


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
    runner = inference_runner(model, inference)
    device, dtype = _model_device_dtype(model)
    with runner.context():
        return sample_waveform(runner, config, (n, length or config.audio_length), steps, device=device, dtype=dtype,
                               generator=generator, callback=callback, progress=progress)


