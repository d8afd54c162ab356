"""Jobs over files and folders with a trained DiffWave: generating clips into a folder, vocoding audio and mel files.

Each job is a loop around :mod:`diffwave.sample` (``generate_audio``, ``vocode_mels``) that reads inputs, samples
them with reproducible seeds (a vocoded file's noise depends on the seed and that file alone), writes every output
atomically and reports what it could not read.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffcore.atomic import write_json
from diffcore.checkpoint import CheckpointError
from diffwave.audio import AUDIO_EXTENSIONS, AudioError, load_audio, save_audio
from diffwave.config import DiffWaveConfig
from diffwave.mel import MelError, compute_mel, load_mel_file, validate_mel
from diffwave.sample import (
    DEFAULT_MAX_FRAMES,
    Inference,
    Steps,
    context_frames,
    generate_audio,
    num_sampling_steps,
    vocode_mels,
)

__all__ = [
    "generate_files",
    "MEL_EXTENSIONS",
    "VocodeError",
    "VocodeInput",
    "collect_inputs",
    "vocode_files",
]

log = logging.getLogger(__name__)

MEL_EXTENSIONS = frozenset({".npy", ".pt", ".pth"})


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


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
    device = _model_device(model)
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


def load_input(item: VocodeInput, config: DiffWaveConfig, strict: bool) -> tuple[Tensor, int | None]:
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



@dataclass
class _Writer:
    """The sampling runs of :func:`vocode_files`: each loaded input is vocoded alone, with noise seeded by
    ``(seed, that input's mel)`` (:func:`diffwave.sample.input_seed`), and written."""

    model: torch.nn.Module
    steps: Steps
    seed: int
    batch_size: int
    max_frames: int | None
    pad_multiple: int
    inference: Inference
    total: int
    bar: tqdm
    written: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = context_frames(self.model.config)

    def add(self, target: Path, mel: Tensor, keep: int | None) -> None:
        """Vocode one loaded input (its output path, its mel, the samples to keep or ``None``) and write it."""
        config: DiffWaveConfig = self.model.config
        per_run = num_sampling_steps(config, self.steps)
        seconds = mel.shape[-1] * config.hop_length / config.sample_rate
        self.bar.set_postfix_str(f"{target.name}, {seconds:.1f} s: step 0/{per_run}")

        def on_step(i: int, x: Tensor) -> None:
            self.bar.set_postfix_str(f"{target.name}, {seconds:.1f} s: step {i + 1}/{per_run}")

        wav = vocode_mels(self.model, [mel], self.steps, seed=self.seed, max_frames=self.max_frames,
                          context=self.context, batch_size=self.batch_size, pad_multiple=self.pad_multiple,
                          callback=on_step, inference=self.inference)[0]
        wav = wav[:keep] if keep is not None else wav
        try:
            self.written.append(save_audio(target, wav.cpu(), config.sample_rate))
        except CheckpointError as e:  # a full disk, a folder gone read-only: say which outputs are complete
            done = ", ".join(str(p) for p in self.written[:5]) + (", ..." if len(self.written) > 5 else "")
            raise VocodeError(f"{e}; {len(self.written)} of {self.total} output(s) are complete"
                              f"{f' ({done})' if self.written else ''} and no partial file is left") from None
        self.bar.update(1)


def vocode_files(
    model: torch.nn.Module,
    inputs: Sequence[VocodeInput],
    out_dir: str | os.PathLike,
    steps: Steps = "fast",
    *,
    seed: int = 0,
    batch_size: int = 16,
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    pad_multiple: int = 1,
    strict: bool = False,
    progress: bool = True,
    single_output: str | os.PathLike | None = None,
    inference: Inference = None,
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Vocode ``inputs`` into ``out_dir/<out_name>`` (each written atomically as 16-bit WAV at the model's rate).

    Each input is vocoded alone, in its own sampling run, with noise seeded by :func:`diffwave.sample.input_seed`
    ``(seed, its mel)``: a file's audio depends on ``seed``, that input and the options alone, never on the other
    inputs, their order or their number, and equals ``vocode_mels(model, [mel], seed=seed)`` of its mel
    (``batch_size``: windows of one long input per network call). Wav inputs are cut back to their own length; mel
    inputs give ``frames · hop`` samples. An input that fails to load is reported and skipped.
    ``pad_multiple``: pad each mel to a multiple of that many frames (off by default: the network hears the
    padding).
    ``single_output``: write the only input to this exact path instead. ``inference``: the inference speed-ups.

    Returns ``(written paths, [(input, reason)] of the failures)``.
    """
    config: DiffWaveConfig = model.config
    out_dir = Path(out_dir)
    targets = [Path(single_output) if single_output is not None else out_dir / item.out_name for item in inputs]
    for item, target in zip(inputs, targets):
        if target.resolve() == item.path.resolve():
            raise VocodeError(f"{item.path}: the output would overwrite this input; choose another output folder")
    for target in targets:  # temporaries an interrupted earlier run left for these outputs (atomic_write's names)
        if target.parent.is_dir():
            for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
                stale.unlink(missing_ok=True)
    failed: list[tuple[Path, str]] = []
    # The bar is created once the first input has loaded, so that a single bad input fails before any output.
    runs = _Writer(model, steps, seed, batch_size, max_frames, pad_multiple, inference, len(inputs),
                   tqdm(total=len(inputs), disable=True))
    try:
        for item, target in zip(inputs, targets):
            try:
                mel, keep = load_input(item, config, strict)
            except (MelError, AudioError) as e:
                if len(inputs) == 1:
                    raise
                log.warning("skipping %s", e)
                if runs.bar.disable and progress:
                    runs.bar = tqdm(total=len(inputs), desc="vocode", unit="file")
                failed.append((item.path, str(e)))
                runs.bar.update(1)
                continue
            if runs.bar.disable and progress:
                runs.bar = tqdm(total=len(inputs), initial=len(failed), desc="vocode", unit="file")
            runs.add(target, mel, keep)
    finally:
        runs.bar.close()
    return runs.written, failed
