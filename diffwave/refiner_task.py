"""Training the Griffin-Lim refiner (:mod:`diffwave.refiner`) through the one engine: its recipe and its task.

A recipe whose top level says ``network: refiner`` (``recipes/ljspeech_refiner.yaml``) is a :class:`RefinerRecipe`:
``model`` is a :class:`~diffwave.refiner.RefinerConfig`, ``data`` and ``train`` are DiffWave's sections, ``loss``
weighs the reconstruction terms, and ``init_from`` names an export (a shipped model's name or a folder) whose
weights start the run: training accumulates over working periods by warm-starting from the shipped weights with a
fresh optimiser and the recipe's warm-up. ``validation`` training clips (evenly spaced) are kept out of training
for the CPU-budget driver (:mod:`diffwave.refiner_train`) to pick its best weights with. ``diffwave train --recipe
...`` picks the recipe class from that field (:func:`diffwave.recipe.load_diffwave_recipe`) and the task from the
recipe (:func:`diffwave.task.make_task`).

Examples are aligned crops of (recording, Griffin-Lim start) at frame boundaries, with one random gain on both; the
start is the Griffin-Lim waveform of the whole clip's mel, computed once per clip (and kept in memory, or in
``data.cache_dir``), as the vocoder computes it at inference. The loss is ``mr_stft_loss + loss.mel_weight ·
log_mel_loss`` between the refined crop and the recording.

A resumed run may change the Griffin-Lim start (:data:`START_FIELDS`): it shapes the network's input, not its
weights; any other change of ``model`` is refused by the engine.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from diffcore.config import ConfigBase, ConfigError
from diffcore.train import TrainConfig, TrainTask
from diffwave.audio import AudioError, load_audio
from diffwave.mel import MelConfig, compute_mel
from diffwave.recipe import DataConfig
from diffwave.refiner import GriffinLimRefiner, RefinerConfig, log_mel_loss

__all__ = ["START_FIELDS", "RefinerLossConfig", "RefinerRecipe", "RefinerClips", "RefinerTask"]

log = logging.getLogger(__name__)

#: Fields of :class:`RefinerConfig` that a resumed run may change: they shape the start, not the network.
START_FIELDS = ("gl_iters", "gl_momentum")


@dataclass
class RefinerLossConfig(ConfigBase):
    """The refiner's reconstruction loss: a multi-resolution STFT loss over ``stft_sizes`` plus ``mel_weight`` × the
    log-mel L1; ``gain_db``: the range of the random gain (dB) applied to each training crop and its start."""

    mel_weight: float = 1.0
    stft_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    gain_db: tuple[float, float] = (-6.0, 3.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.mel_weight <= 100.0:
            raise ConfigError(f"loss.mel_weight must lie in [0, 100], got {self.mel_weight}")
        if not self.stft_sizes or any(not 16 <= n <= 16384 for n in self.stft_sizes):
            raise ConfigError(f"loss.stft_sizes must be FFT sizes in [16, 16384], got {list(self.stft_sizes)}")
        lo, hi = self.gain_db
        if not (-40.0 <= lo <= hi <= 20.0):
            raise ConfigError(f"loss.gain_db must be a range [lo, hi] within [-40, 20] dB, got {list(self.gain_db)}")


def _refiner_data() -> DataConfig:
    return DataConfig(crop_frames=32)


def _refiner_train() -> TrainConfig:
    return TrainConfig(batch_size=16, lr=5e-4, optimizer="adamw", betas=(0.8, 0.99), weight_decay=0.01,
                       warmup_steps=200, ema_decay=0.999, grad_clip=1.0, precision="fp32")


@dataclass
class RefinerRecipe(ConfigBase):
    """A refiner run: ``network: refiner`` (what marks the recipe), the model, the data, the training settings, the
    loss, an optional ``init_from`` export to warm-start from and ``validation``, the number of training clips kept
    out of training as the validation set (module docstring)."""

    network: Literal["refiner"] = "refiner"
    model: RefinerConfig = field(default_factory=RefinerConfig)
    data: DataConfig = field(default_factory=_refiner_data)
    train: TrainConfig = field(default_factory=_refiner_train)
    loss: RefinerLossConfig = field(default_factory=RefinerLossConfig)
    init_from: str | None = None
    validation: int = 0

    def __post_init__(self) -> None:
        if self.validation < 0:
            raise ConfigError(f"validation must not be negative, got {self.validation}")
        if self.data.crop_frames < 8:
            raise ConfigError(f"data.crop_frames must be at least 8 for the refiner, got {self.data.crop_frames}")
        if max(self.loss.stft_sizes) > self.data.crop_frames * self.model.mel.hop_length:
            raise ConfigError(f"loss.stft_sizes {list(self.loss.stft_sizes)} has a size longer than a crop of "
                              f"{self.data.crop_frames} frames ({self.data.crop_frames * self.model.mel.hop_length} "
                              f"samples)")


class RefinerClips(Dataset):
    """Whole recordings with their Griffin-Lim starts; item ``i`` is a random crop of clip ``i`` (the global torch
    RNG draws the offset and the gain, so the engine's checkpointed RNG makes resume exact)."""

    def __init__(self, files: list[Path], recipe: RefinerRecipe, *, random_crop: bool = True) -> None:
        self.recipe, self.random_crop = recipe, random_crop
        self.model = GriffinLimRefiner(recipe.model)  # only its griffin_lim() is used: no weights involved
        self.clips: list[tuple[torch.Tensor, torch.Tensor]] = []
        skipped = 0
        for f in files:
            try:
                wav, _ = load_audio(f, recipe.model.sample_rate, strict=recipe.data.strict, log_resample=False)
            except AudioError as e:
                log.warning("skipping %s", e)
                skipped += 1
                continue
            wav = wav.clamp(-1.0, 1.0)
            if wav.shape[-1] < recipe.model.mel.min_samples():
                log.warning("skipping %s: shorter than one STFT window", f)
                skipped += 1
                continue
            start = self._start(Path(f), wav)
            self.clips.append((wav[: start.shape[-1]], start))
        if not self.clips:
            raise FileNotFoundError(f"none of the {len(files)} clips could be read ({skipped} skipped)")

    def _start(self, path: Path, wav: torch.Tensor) -> torch.Tensor:
        cache = self.recipe.data.cache_dir
        key = hashlib.sha1(f"{path.resolve()}|{path.stat().st_size}|{self.recipe.model.mel.to_dict()}|"
                           f"{self.recipe.model.gl_iters}|{self.recipe.model.gl_momentum}".encode()).hexdigest()[:16]
        target = Path(cache) / f"gl_{key}.pt" if cache else None
        if target is not None and target.is_file():
            try:
                from diffcore.torchfile import check_torch_file

                check_torch_file(target)
                return torch.load(target, weights_only=True)
            except Exception:
                log.warning("%s: unreadable cached Griffin-Lim start, recomputing", target)
        with torch.no_grad():
            start = self.model.griffin_lim(compute_mel(wav, self.recipe.model.mel)[None])[0]
        if target is not None:
            from diffcore.atomic import atomic_write

            atomic_write(target, lambda fh: torch.save(start, fh))
        return start

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        wav, start = self.clips[index]
        hop, frames = self.recipe.model.mel.hop_length, self.recipe.data.crop_frames
        length = frames * hop
        available = start.shape[-1] // hop - frames
        if self.random_crop:
            o = int(torch.randint(max(1, available), ())) * hop
            lo, hi = self.recipe.loss.gain_db
            gain = 10 ** (float(torch.empty(()).uniform_(lo, hi)) / 20)
        else:
            o, gain = max(0, available // 2) * hop, 1.0
        r, s = wav[o : o + length], start[o : o + length]
        if r.shape[-1] < length:  # a clip shorter than a crop: both end there
            r, s = (torch.nn.functional.pad(v, (0, length - v.shape[-1])) for v in (r, s))
        return {"audio": r * gain, "start": s * gain}


def refiner_loss(model: nn.Module, audio: torch.Tensor, start: torch.Tensor, mel_config: MelConfig,
                 stft_sizes: tuple[int, ...], mel_weight: float) -> torch.Tensor:
    """``[B]``: MR-STFT (over ``stft_sizes``) + ``mel_weight`` · log-mel L1 of the refined ``start`` against
    ``audio`` (both ``[B, T]``), the mel of ``audio`` being the network's condition. The one loss of both training
    loops (this task and :mod:`diffwave.refiner_train`)."""
    from diffwave.task import mr_stft_loss

    with torch.no_grad():
        mel = compute_mel(audio, mel_config)
    est = model(mel, start)
    return mr_stft_loss(est, audio, stft_sizes) + mel_weight * log_mel_loss(est, audio, mel_config)


def _recipe_loss(model: nn.Module, batch: dict[str, torch.Tensor], recipe: RefinerRecipe) -> torch.Tensor:
    return refiner_loss(model, batch["audio"], batch["start"], recipe.model.mel, recipe.loss.stft_sizes,
                        recipe.loss.mel_weight)


class RefinerTask(TrainTask):
    """The refiner's model, data and loss for the engine (module docstring). ``train_files`` are trained on;
    ``validation_files`` (``recipe.validation`` of the training part, evenly spaced) and ``heldout_files``
    (``data.holdout``) are not. The training clips and their Griffin-Lim starts are read once per task, however
    many fits use it."""

    def __init__(self, recipe: RefinerRecipe) -> None:
        from diffwave.data import split_files

        self.recipe = recipe
        self.config = recipe.to_dict()
        train, self.heldout_files = split_files(recipe.data)
        n = recipe.validation
        if n and n >= len(train):
            raise ConfigError(f"validation={n} would leave none of the {len(train)} training clips to train on")
        every = max(1, len(train) // max(1, n))
        self.validation_files = [train[i] for i in range(every // 2, len(train), every)][:n]
        self.train_files = [f for f in train if f not in self.validation_files]
        self._train_data: Dataset | None = None
        self._val_batch: dict[str, torch.Tensor] | None = None

    def build_model(self) -> nn.Module:
        model = GriffinLimRefiner(self.recipe.model)
        if self.recipe.init_from:
            model.load_state_dict(_init_weights(self.recipe.init_from, model))
            log.info("warm start from %s", self.recipe.init_from)
        return model

    def train_dataset(self) -> Dataset:
        from diffwave.task import RepeatedDataset

        if self._train_data is None:
            ds = RefinerClips(self.train_files, self.recipe)
            times = max(self.recipe.data.repeat, math.ceil(self.recipe.train.batch_size / len(ds)))
            self._train_data = RepeatedDataset(ds, times) if times > 1 else ds
        return self._train_data

    def upgrade_config(self, stored: Mapping[str, Any]) -> Mapping[str, Any]:
        """The stored config in today's names, its Griffin-Lim start (:data:`START_FIELDS`) read as this recipe's:
        a resumed run may change the start (logged here as a warning), the engine refuses any other model change."""
        stored = super().upgrade_config(stored)
        model = stored.get("model")
        if not isinstance(model, Mapping):
            return stored
        new = {k: getattr(self.recipe.model, k) for k in START_FIELDS}
        changed = {k: v for k, v in new.items() if model.get(k) != v}
        for k, v in changed.items():
            log.warning("the Griffin-Lim start changes on resume: model.%s %r -> %r", k, model.get(k), v)
        return {**stored, "model": {**model, **changed}} if changed else stored

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return _recipe_loss(model, batch, self.recipe)

    def validate(self, ema_model: nn.Module, step: int, logger: Any) -> dict[str, float]:
        if not self.heldout_files:
            return {}
        if self._val_batch is None:
            ds = RefinerClips(self.heldout_files, self.recipe, random_crop=False)
            items = [ds[i] for i in range(len(ds))]
            self._val_batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        device = next(ema_model.parameters()).device
        b = {k: v.to(device) for k, v in self._val_batch.items()}
        return {"loss": float(_recipe_loss(ema_model, b, self.recipe).mean())}


def _init_weights(source: str, model: GriffinLimRefiner) -> dict[str, torch.Tensor]:
    """The float32 weights of the export (or shipped model name) ``source``, checked against ``model``."""
    from diffcore.checkpoint import load_for_inference, warm_start_weights
    from diffwave.pretrained import SHIPPED
    from diffwave.refiner_vocoder import is_refiner_config

    path = SHIPPED.resolve(source)
    if not is_refiner_config(load_for_inference(path)[0]):
        raise ConfigError(f"init_from {source!r}: {path} holds no refiner (its config.json has no 'network: refiner')")
    return warm_start_weights(path, RefinerConfig, model.config, kind="refiner", source=source)
