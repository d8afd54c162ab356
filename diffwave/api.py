"""Python API: load a trained DiffWave (run folder, checkpoint, export folder or lmnt checkpoint) and use it;
write exports (:func:`save_export`, :func:`export_run`, :func:`import_lmnt`); the evaluation functions of
:mod:`diffwave.evaluate` are re-exported here.

    import diffwave.api as dw
    voc = dw.load("runs/ljspeech")                  # the latest checkpoint's EMA weights, on the GPU if there is one
    wav = voc.vocode(mel)                           # mel [n_mels, F] -> [F * hop];  [B, n_mels, F] -> [B, F * hop]
    wav = voc.vocode(voc.mel(recording))            # resynthesis with the model's own mel preset
    clips = dw.load("runs/sc09").generate(4)        # unconditional models: [4, audio_length]

The model is always rebuilt from the configuration stored with the weights (``config["model"]``), never from
defaults, so a model trained with a ``hifigan`` mel or 16 kHz audio vocodes with exactly that front end.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from diffcore.checkpoint import (
    CheckpointError,
    check_export_target,
    export,
    load_for_inference,
    rebuild_model,
    weights_problem,
    write_export,
)
from diffcore.arguments import ArgumentError, check_count, check_generator, check_integer_array, describe
from diffcore.device import resolve_device
from diffcore.torchfile import TorchFileError, check_torch_file
from diffwave.config import DiffWaveConfig
from diffwave.evaluate import evaluate_generation, evaluate_resynthesis_files
from diffwave.mel import compute_mel, validate_mel
from diffwave.model import DiffWave
from diffwave.pretrained import SHIPPED, available_models
from diffwave.projection import ProjectOption
from diffwave.sample import DEFAULT_MAX_FRAMES, MAX_NOISE_SEED, Inference, Steps, generate_audio, vocode_mels

__all__ = ["Vocoder", "RefinerVocoder", "available_models", "load", "save_export", "export_run", "import_lmnt",
           "resolve_device",
           "evaluate_resynthesis_files", "evaluate_generation"]

Device = Literal["auto", "cpu", "cuda"]  # or "cuda:N"


class Vocoder:
    """A DiffWave model in evaluation mode with what inference needs (its config: mel preset, schedules, rate).

    Attributes: ``model`` (:class:`~diffwave.model.DiffWave`), ``config`` (:class:`DiffWaveConfig`), ``device``,
    ``source`` (where it was loaded from), ``info`` (the stored recipe or the import's metadata, plain data).
    """

    def __init__(self, model: DiffWave, source: str = "<memory>", info: Mapping[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.config: DiffWaveConfig = model.config
        self.source = source
        self.info = dict(info or {})

    # ---------------------------------------------------------------------------------------------- construction

    @classmethod
    def from_config_and_weights(
        cls, config: Mapping[str, Any], weights: Mapping[str, Tensor], device: Device | str | torch.device = "auto",
        source: str = "<memory>",
    ) -> "Vocoder":
        """Rebuild from a stored recipe (``{"model": ..., ...}``) and a state dict; raises ``CheckpointError``."""
        model = rebuild_model(config, weights, DiffWaveConfig, DiffWave, source=source, kind="DiffWave")
        return cls(model.to(resolve_device(device)), source, config)

    @classmethod
    def from_lmnt(cls, path: str | os.PathLike, device: Device | str | torch.device = "auto") -> "Vocoder":
        """Load an lmnt-com/diffwave checkpoint (file or folder with ``weights.pt``); outputs equal lmnt's."""
        from diffwave.lmnt import load_lmnt_checkpoint

        target = Path(path) / "weights.pt" if Path(path).is_dir() else Path(path)
        if target.is_file():
            try:  # records that claim more than the file holds, before torch.load would allocate them
                check_torch_file(target)
            except TorchFileError as e:
                raise CheckpointError(str(e)) from None
        model, config = load_lmnt_checkpoint(path)
        problem = weights_problem(model.state_dict())
        if problem:
            raise CheckpointError(f"{path}: damaged weights: {problem}")
        info = {"model": config.to_dict(), "source": {"kind": "lmnt", "path": str(path)}}
        return cls(model.to(resolve_device(device)), str(path), info)

    # ---------------------------------------------------------------------------------------------- properties

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int | None:
        return self.config.hop_length

    @property
    def conditional(self) -> bool:
        return self.config.conditional

    def to(self, device: Device | str | torch.device) -> "Vocoder":
        self.model.to(resolve_device(device))
        return self

    def __repr__(self) -> str:
        c = self.config
        mel = f"{c.mel.preset} mel, hop {c.mel.hop_length}" if c.mel is not None else "unconditional"
        return (f"Vocoder({self.source!r}: {c.residual_layers} layers x {c.residual_channels} channels, "
                f"T={c.diffusion.num_steps}, {mel}, {c.sample_rate} Hz, on {self.device})")

    # ---------------------------------------------------------------------------------------------- inference

    def mel(self, wav: Tensor | np.ndarray) -> Tensor:
        """The model's own mel ``[..., n_mels, frames]`` of ``wav`` ``[..., T]`` (float in [-1, 1] at
        ``sample_rate``), on the CPU.

        Integer samples are refused rather than guessed at (int16 samples clamped to ±1 gave a full-scale square
        wave): divide by their full scale first (``wav / 32768`` for int16). Float samples beyond ±1 are clipped,
        as when audio files are read; NaN/Inf samples, paths and other types are :class:`ArgumentError`."""
        if not self.conditional:
            raise ValueError("this model is unconditional: it takes no mel")
        if isinstance(wav, (str, os.PathLike)):
            raise ArgumentError(f"wav must be samples (a tensor or numpy array), got the path {describe(wav)}: read "
                                "it with diffwave.audio.load_audio(path, voc.sample_rate) first")
        if not isinstance(wav, (Tensor, np.ndarray)):
            raise ArgumentError(f"wav must be a tensor or numpy array of float samples, got {describe(wav)}")
        t = torch.as_tensor(wav) if not isinstance(wav, np.ndarray) or wav.dtype != object else None
        if t is None or not t.is_floating_point():
            dtype = wav.dtype
            hint = ""
            if t is not None and t.dtype in (torch.int16, torch.int32, torch.int8, torch.uint8):
                bits = {torch.int16: 16, torch.int32: 32, torch.int8: 8, torch.uint8: 8}[t.dtype]
                hint = (f": divide by its full scale first (wav / {2 ** (bits - 1)}"
                        f"{' after subtracting 128' if t.dtype == torch.uint8 else ''})")
            raise ArgumentError(f"wav has dtype {dtype}; float samples in [-1, 1] are needed{hint}")
        if t.layout != torch.strided or t.is_meta:
            raise ArgumentError(f"wav must be a dense tensor with values, got a {t.layout} "
                                f"{'meta ' if t.is_meta else ''}tensor")
        if t.ndim == 0 or t.shape[-1] < self.config.mel.min_samples():
            raise ArgumentError(f"wav of shape {tuple(t.shape)} is too short: at least "
                                f"{self.config.mel.min_samples()} samples are needed")
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            raise ArgumentError(f"wav holds {int((~finite).sum())} non-finite samples (NaN or Inf)")
        return compute_mel(t.detach().cpu().float().clamp(-1.0, 1.0), self.config.mel)

    def vocode(
        self,
        mel: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
        steps: Steps = "fast",
        generator: torch.Generator | None = None,
        *,
        seed: int | None = None,
        lengths: Tensor | np.ndarray | Sequence[int] | None = None,
        max_frames: int | None = DEFAULT_MAX_FRAMES,
        batch_size: int = 16,
        progress: bool = False,
        inference: Inference = None,
        numpy: bool | None = None,
        project: ProjectOption = None,
    ) -> Any:
        """Waveforms for mels, in the shapes TTS front ends hand over:

        - one mel ``[n_mels, F]`` → ``[F · hop]``;
        - a batch ``[B, n_mels, F]`` → ``[B, F · hop]``;
        - a padded batch ``[B, n_mels, F_max]`` with ``lengths`` ``[B]`` (valid frames of each) →
          ``(waves [B, F_max · hop], wave_lengths [B])``, each wave zero past ``lengths[i] · hop`` (the tuple
          torchaudio's and speechbrain's vocoders return);
        - a list of mels ``[n_mels, F_i]`` of any lengths → a list of waveforms ``[F_i · hop]``.

        Each mel is vocoded in its own sampling run with its own noise (ragged inputs are not padded, and nothing
        leaks between mels), so a mel's waveform depends on its noise seed and that mel alone, never on the other
        mels of the call, their order or their number: it equals vocoding that mel alone. ``seed``: each mel's noise
        comes from :func:`diffwave.sample.input_seed` ``(seed, mel)``, a hash of the seed and the mel's float32
        bytes, so the same mel gives the same audio with the same seed wherever it is vocoded (what ``diffwave
        vocode --seed`` does). ``generator`` (on the model's device): each mel draws from its own copy of the
        generator's state, as it would vocoded alone (one mel draws what it always drew), and the generator is then
        advanced as by the first mel. Neither: a seed is drawn from torch's global RNG. ``steps``: ``fast`` (the
        model's ``inference_betas``, 6 network calls for the paper's presets) or ``full`` (all T training steps).
        ``batch_size``: windows of one long mel per network call. Mels longer than ``max_frames`` are vocoded in
        exact overlapping chunks (see :mod:`diffwave.sample`). Raises :class:`~diffwave.mel.MelError` naming the
        preset the model expects when a mel does not fit it, and ``ValueError`` for inconsistent shapes or lengths.
        ``inference``: the inference speed-ups (:mod:`diffwave.sample`; default on, ``"eager"`` = eager float32).
        ``numpy``: return numpy arrays (default: numpy when the input was numpy). ``project``: GLA-Grad's
        mel-consistent projection (``"gla"`` or a :class:`~diffwave.projection.GLAGrad`; default ``None``, off; see
        :func:`diffwave.sample.vocode_mels`).
        Returns float32 audio in [-1, 1] on the CPU.
        """
        if not self.conditional:
            raise ValueError("this model is unconditional: use generate(n)")
        if isinstance(mel, (list, tuple)):
            if lengths is not None:
                raise ValueError("lengths goes with a padded batch [B, n_mels, F]; a list of mels carries its own")
            if not mel:
                return []
            as_np = all(isinstance(m, np.ndarray) for m in mel) if numpy is None else numpy
            items = [self._checked_mel(m, f"mel[{i}]", 2) for i, m in enumerate(mel)]
            wavs = self._vocode_list(items, steps, generator, max_frames, batch_size, progress, inference, project,
                                     seed)
            return [w.numpy() for w in wavs] if as_np else wavs
        as_np = isinstance(mel, np.ndarray) if numpy is None else numpy
        if lengths is None:
            mel_t = self._checked_mel(mel, "mel", None)
            batch = list(mel_t) if mel_t.ndim == 3 else [mel_t]
            out = torch.stack(self._vocode_list(batch, steps, generator, max_frames, batch_size, progress, inference,
                                                project, seed))
            out = out if mel_t.ndim == 3 else out[0]
            return out.numpy() if as_np else out
        mel_t = self._checked_mel(mel, "mel", 3)
        frames = check_integer_array("lengths", lengths)  # bools (True = 1 frame) and floats are refused
        if frames.ndim != 1 or len(frames) != mel_t.shape[0]:
            raise ValueError(f"lengths must be {mel_t.shape[0]} integer frame counts [B] for a batch of "
                             f"{mel_t.shape[0]} mels, got {tuple(frames.shape)} {frames.dtype}")
        if int(frames.min()) < 1 or int(frames.max()) > mel_t.shape[-1]:
            raise ValueError(f"lengths must lie in [1, {mel_t.shape[-1]}] (the padded batch's frames), "
                             f"got {frames.tolist()}")
        wavs = self._vocode_list([m[:, : int(f)] for m, f in zip(mel_t, frames)], steps, generator, max_frames,
                                 batch_size, progress, inference, project, seed)
        hop = self.hop_length
        out = torch.zeros(mel_t.shape[0], mel_t.shape[-1] * hop)
        for i, w in enumerate(wavs):
            out[i, : w.shape[-1]] = w
        wave_lengths = frames.long() * hop
        return (out.numpy(), wave_lengths.numpy()) if as_np else (out, wave_lengths)

    def _checked_mel(self, mel: Tensor | np.ndarray, source: str, ndim: int | None) -> Tensor:
        if not isinstance(mel, (Tensor, np.ndarray)):  # None, a path, a list of numbers: named, not torch's error
            validate_mel(mel, self.config.mel, source=source)
        if isinstance(mel, np.ndarray) and not np.issubdtype(mel.dtype, np.floating):
            validate_mel(mel, self.config.mel, source=source)
        if isinstance(mel, Tensor) and (mel.layout != torch.strided or mel.is_meta):
            validate_mel(mel, self.config.mel, source=source)
        mel_t = torch.as_tensor(mel)
        if ndim is not None and mel_t.ndim != ndim:
            want = "[n_mels, F]" if ndim == 2 else "[B, n_mels, F]"
            raise ValueError(f"{source} must be {want}, got shape {tuple(mel_t.shape)}")
        validate_mel(mel_t, self.config.mel, source=source)
        return mel_t.float()

    def _vocode_list(self, mels: list[Tensor], steps, generator, max_frames, batch_size, progress,
                     inference, project=None, seed=None) -> list[Tensor]:
        self._check_options(steps, generator, batch_size=batch_size, max_frames=max_frames)
        if seed is not None:
            seed = check_count("seed", seed, 0, MAX_NOISE_SEED)
            if generator is not None:
                raise ArgumentError("give seed or generator, not both")
        wavs = vocode_mels(self.model, mels, steps, generator=generator, seed=seed, max_frames=max_frames,
                           batch_size=batch_size, progress=progress, inference=inference, project=project)
        return _checked_audio([w.float().cpu() for w in wavs], self.source)

    def _check_options(self, steps: Any, generator: Any, **counts: Any) -> None:
        """Refuse options torch would misread or report deep inside the sampler (ArgumentError naming them)."""
        if steps not in ("fast", "full"):
            raise ArgumentError(f"steps must be 'fast' or 'full', got {describe(steps)}")
        check_generator("generator", generator, self.device)
        for name, value in counts.items():
            if value is not None or name != "max_frames":
                check_count(name, value, 1)

    def generate(
        self, n: int, generator: torch.Generator | None = None, steps: Steps = "fast", *, length: int | None = None,
        progress: bool = False, inference: Inference = None,
    ) -> Tensor:
        """``n`` clips ``[n, length]`` (default ``config.audio_length``) from an unconditional model, on the CPU
        (``inference``: as in :meth:`vocode`)."""
        check_count("n", n, 1, 100_000)
        self._check_options(steps, generator, length=length if length is not None else 1)
        wav = generate_audio(self.model, n, steps, generator=generator, length=length, progress=progress,
                             inference=inference).cpu()
        return _checked_audio([wav], self.source)[0]

    def save(self, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write this model as an export folder (``config.json`` + ``model.safetensors``) that :func:`load` reads;
        ``dtype=torch.float16`` halves the file (loaded back into float32)."""
        return save_export(self.model, self.info or {"model": self.config.to_dict()}, out_dir, dtype=dtype)


def _checked_audio(wavs: list[Tensor], source: str) -> list[Tensor]:
    """``wavs``, after checking the promise of [-1, 1]: non-finite samples (a model whose weights were damaged
    after loading, or an unstable schedule) are an error instead of NaN audio returned as if it were sound."""
    for w in wavs:
        finite = torch.isfinite(w)
        if not bool(finite.all()):
            raise FloatingPointError(f"{source}: the model produced {int((~finite).sum())} non-finite samples "
                                     "(NaN or Inf); its weights or schedule are broken")
    return wavs


def save_export(model: DiffWave, config: Mapping[str, Any], out_dir: str | os.PathLike,
                metadata: Mapping[str, str] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as an export folder with :func:`diffcore.checkpoint.write_export`: ``out_dir/config.json``
    (``config``, given a ``model`` section from ``model.config`` when it has none) and ``out_dir/model.safetensors``
    (``model``'s weights, cast to ``dtype`` when given; metadata ``source: model`` unless ``metadata`` says
    otherwise)."""
    if "model" not in config:
        config = {**config, "model": model.config.to_dict()}
    return write_export(out_dir, model.state_dict(), config, dtype=dtype,
                        metadata={"source": "model", **dict(metadata or {})})


def export_run(source: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Vocoder, Path]:
    """Export a run folder's (latest) or a checkpoint's EMA weights with :func:`diffcore.checkpoint.export`, after
    checking the target folder and that ``source`` holds a DiffWave model, then load the export back as a check.
    Returns ``(the model loaded from source, the export folder)``."""
    check_export_target(out_dir)
    voc = load(source, "cpu")  # a DiffWave model, before anything is written
    out = export(source, out_dir)
    load(out, "cpu")
    return voc, out


def import_lmnt(source: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Vocoder, int]:
    """Convert an lmnt-com/diffwave checkpoint (``weights.pt`` or its folder) into an export folder of this package
    (its metadata records lmnt's ``step``), then load the export back as a check. Returns ``(the imported model,
    lmnt's training step)``; the imported model gives lmnt's outputs."""
    from diffwave.lmnt import read_lmnt_checkpoint

    check_export_target(out_dir)
    voc = Vocoder.from_lmnt(source, "cpu")
    step = int(read_lmnt_checkpoint(source).get("step", 0))
    save_export(voc.model, voc.info, out_dir, metadata={"step": str(step), "source": "lmnt"})
    load(out_dir, "cpu")
    return voc, step


def __getattr__(name: str) -> Any:  # RefinerVocoder subclasses Vocoder, so it is imported on first use
    if name == "RefinerVocoder":
        from diffwave.refiner_vocoder import RefinerVocoder

        return RefinerVocoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _looks_like_lmnt(path: Path) -> bool:
    target = path / "weights.pt" if path.is_dir() else path
    if not target.is_file():
        return False
    try:
        from diffwave.lmnt import read_lmnt_checkpoint

        check_torch_file(target)  # a forged file's claims are refused before torch.load would allocate them
        ckpt = read_lmnt_checkpoint(target)
    except Exception:
        return False
    return isinstance(ckpt, dict) and "params" in ckpt and "model" in ckpt and "format" not in ckpt


def load(path: str | os.PathLike, device: Device | str | torch.device = "auto") -> Vocoder:
    """Load a model for inference from a run folder (its latest checkpoint), a ``.pt`` checkpoint, an export
    folder (``config.json`` + ``model.safetensors``), an lmnt-com/diffwave checkpoint, or the name of a vocoder
    shipped with the package (:func:`available_models`; a bare shipped name means the shipped model, with a
    warning when a folder of that name is in the working directory: write ``./NAME`` for the folder).

    Checkpoints give their EMA weights. Raises ``CheckpointError`` (naming the path) when nothing loadable is there,
    and naming the shipped vocoders too when the path does not exist (a mistyped name).
    """
    p = SHIPPED.locate(path)
    try:
        config, weights = load_for_inference(p)
    except CheckpointError:
        if _looks_like_lmnt(p):
            return Vocoder.from_lmnt(p, device)
        raise
    from diffwave.refiner_vocoder import RefinerVocoder, is_refiner_config

    if is_refiner_config(config):  # a Griffin-Lim refiner (diffwave.refiner), vocoding through the same interface
        return RefinerVocoder.from_config_and_weights(config, weights, device, source=str(p))
    return Vocoder.from_config_and_weights(config, weights, device, source=str(p))
