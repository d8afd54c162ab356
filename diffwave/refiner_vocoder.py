"""The Griffin-Lim refiner (:mod:`diffwave.refiner`) behind the same vocoding interface as a DiffWave.

:func:`diffwave.api.load` returns a :class:`RefinerVocoder` for an export whose ``config.json`` says
``"network": "refiner"`` (the shipped ``ljspeech-refiner``), so ``voc.vocode(mel)``, ``voc.mel(wav)``,
``diffwave vocode --model ljspeech-refiner`` and the evaluation functions work unchanged. The refiner is
deterministic: ``steps`` and ``generator`` are accepted for the common signature and have no effect.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from diffcore.checkpoint import CheckpointError
from diffcore.device import resolve_device
from diffwave.mel import compute_mel, validate_mel
from diffwave.refiner import NETWORK_NAME, GriffinLimRefiner, RefinerConfig

__all__ = ["RefinerVocoder", "is_refiner_config", "DEFAULT_REFINER_FRAMES"]

#: Frames per window of the network (the correction); Griffin-Lim runs over the whole input.
DEFAULT_REFINER_FRAMES = 4096


def is_refiner_config(config: Mapping[str, Any]) -> bool:
    """Whether a stored config (``config.json`` of an export) describes a refiner."""
    return isinstance(config, Mapping) and config.get("network") == NETWORK_NAME


class RefinerVocoder:
    """A :class:`~diffwave.refiner.GriffinLimRefiner` in evaluation mode, vocoding like :class:`diffwave.api.Vocoder`.

    Attributes: ``model``, ``config`` (:class:`RefinerConfig`), ``source``, ``info`` (the stored config).
    """

    conditional = True

    def __init__(self, model: GriffinLimRefiner, source: str = "<memory>", info: Mapping[str, Any] | None = None):
        self.model = model.eval()
        self.config: RefinerConfig = model.config
        self.source = source
        self.info = dict(info or {"network": NETWORK_NAME, "model": model.config.to_dict()})

    @classmethod
    def from_config_and_weights(cls, config: Mapping[str, Any], weights: Mapping[str, Tensor],
                                device: str | torch.device = "auto", source: str = "<memory>") -> "RefinerVocoder":
        """Rebuild from a stored config (``{"network": "refiner", "model": ...}``) and a state dict; raises
        ``CheckpointError`` naming ``source`` when they do not fit."""
        try:
            model_config = RefinerConfig.from_dict(config.get("model") or {})
        except Exception as e:
            raise CheckpointError(f"{source}: the refiner's stored config is invalid: {e}") from None
        model = GriffinLimRefiner(model_config)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        if missing or extra:
            raise CheckpointError(f"{source}: weights do not fit the refiner's config "
                                  f"(missing {missing[:3]}, unexpected {extra[:3]})")
        for k, v in weights.items():
            if not v.is_floating_point():
                raise CheckpointError(f"{source}: weight {k!r} has dtype {v.dtype}, expected a float tensor")
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CheckpointError(f"{source}: weight {k!r} has shape {tuple(v.shape)}, the config needs "
                                      f"{tuple(expected[k].shape)}")
            if not torch.isfinite(v).all():
                raise CheckpointError(f"{source}: weight {k!r} holds NaN or infinite values")
        model.load_state_dict({k: v.float() for k, v in weights.items()})
        return cls(model.to(resolve_device(device)), source, config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.mel.hop_length

    def to(self, device: str | torch.device) -> "RefinerVocoder":
        self.model.to(resolve_device(device))
        return self

    def __repr__(self) -> str:
        c = self.config
        params = sum(p.numel() for p in self.model.parameters())
        return (f"RefinerVocoder({self.source!r}: Griffin-Lim ({c.gl_iters} iterations) refined by "
                f"{c.num_blocks} ConvNeXt blocks x {c.dim}, {params / 1e6:.2f}M parameters, {c.mel.preset} mel, "
                f"hop {c.mel.hop_length}, {c.sample_rate} Hz, on {self.device})")

    def mel(self, wav: Tensor | np.ndarray) -> Tensor:
        """The model's own mel ``[..., n_mels, frames]`` of ``wav`` ``[..., T]`` (float in [-1, 1])."""
        return compute_mel(torch.as_tensor(wav, dtype=torch.float32).clamp(-1.0, 1.0), self.config.mel)

    def _checked(self, mel: Tensor | np.ndarray, source: str, ndim: int | None) -> Tensor:
        mel_t = torch.as_tensor(mel)
        if ndim is not None and mel_t.ndim != ndim:
            want = "[n_mels, F]" if ndim == 2 else "[B, n_mels, F]"
            raise ValueError(f"{source} must be {want}, got shape {tuple(mel_t.shape)}")
        validate_mel(mel_t, self.config.mel, source=source)
        return mel_t.float()

    def _one(self, mel: Tensor, max_frames: int | None) -> Tensor:
        """``[n_mels, F]`` → ``[F · hop]`` on the CPU, in [-1, 1]."""
        from diffwave.sample import vocode_mels

        return vocode_mels(self.model, [mel], max_frames=max_frames)[0].float().cpu()

    def vocode(
        self,
        mel: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
        steps: Any = "fast",
        generator: torch.Generator | None = None,
        *,
        lengths: Tensor | np.ndarray | Sequence[int] | None = None,
        max_frames: int | None = DEFAULT_REFINER_FRAMES,
        batch_size: int = 16,
        progress: bool = False,
        inference: Any = None,
        numpy: bool | None = None,
    ) -> Any:
        """Waveforms for mels, in the same shapes as :meth:`diffwave.api.Vocoder.vocode` (one mel, a batch, a padded
        batch with ``lengths``, a list). ``steps``, ``generator``, ``batch_size`` and ``inference`` have no effect
        (the refiner is deterministic and vocodes each mel whole). Returns float32 audio in [-1, 1]."""
        del steps, generator, batch_size, inference
        if isinstance(mel, (list, tuple)):
            if lengths is not None:
                raise ValueError("lengths goes with a padded batch [B, n_mels, F]; a list of mels carries its own")
            as_np = all(isinstance(m, np.ndarray) for m in mel) if numpy is None else numpy
            items = [self._checked(m, f"mel[{i}]", 2) for i, m in enumerate(mel)]
            wavs = [self._one(m, max_frames) for m in _progress(items, progress)]
            return [w.numpy() for w in wavs] if as_np else wavs
        as_np = isinstance(mel, np.ndarray) if numpy is None else numpy
        mel_t = self._checked(mel, "mel", None if lengths is None else 3)
        if lengths is None:
            batch = list(mel_t) if mel_t.ndim == 3 else [mel_t]
            out = torch.stack([self._one(m, max_frames) for m in _progress(batch, progress)])
            out = out if mel_t.ndim == 3 else out[0]
            return out.numpy() if as_np else out
        frames = torch.as_tensor(np.asarray(lengths) if not isinstance(lengths, Tensor) else lengths).cpu()
        if (frames.ndim != 1 or len(frames) != mel_t.shape[0] or frames.is_floating_point() or frames.is_complex()
                or frames.dtype == torch.bool):
            raise ValueError(f"lengths must be {mel_t.shape[0]} integer frame counts [B] for a batch of "
                             f"{mel_t.shape[0]} mels, got {tuple(frames.shape)} {frames.dtype}")
        if int(frames.min()) < 1 or int(frames.max()) > mel_t.shape[-1]:
            raise ValueError(f"lengths must lie in [1, {mel_t.shape[-1]}] (the padded batch's frames), "
                             f"got {frames.tolist()}")
        out = torch.zeros(mel_t.shape[0], mel_t.shape[-1] * self.hop_length)
        for i, (m, f) in enumerate(zip(mel_t, frames)):
            w = self._one(m[:, : int(f)], max_frames)
            out[i, : w.shape[-1]] = w
        wave_lengths = frames.long() * self.hop_length
        return (out.numpy(), wave_lengths.numpy()) if as_np else (out, wave_lengths)

    def generate(self, *args: Any, **kwargs: Any) -> Tensor:
        raise ValueError("the refiner is a vocoder: it needs a mel (use vocode)")

    def save(self, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write this model as an export folder that :func:`diffwave.api.load` reads."""
        from diffcore.checkpoint import write_export

        return write_export(out_dir, self.model.state_dict(), self.info, dtype=dtype, metadata={"source": "model"})


def _progress(items: list, on: bool):
    if not on or len(items) < 2:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="vocoding", unit="mel")
