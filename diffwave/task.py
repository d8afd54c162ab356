"""DiffWave's :class:`~diffcore.train.TrainTask` implementations: what the one training engine needs from this package.

- :class:`VocoderTask`: mel-conditioned vocoder. Examples are aligned (audio, mel) crops of
  ``data.crop_frames`` frames; the loss is the simple loss of Ho et al. 2020 (eq. 14) with the model config's norm
  (L1 for every preset, as lmnt's reference trains) on ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t, mel), t uniform. With
  ``model.prior`` (PriorGrad) ε = s ⊙ z with s from the mel (:mod:`diffwave.prior`) and the distance is taken on
  (ε − ε_θ)/s. With ``loss.stft_weight`` > 0 a multi-resolution STFT loss between x_0 and the denoiser's x̂_0 (from
  the same network call, :func:`diffcore.losses.diffusion_loss_terms`; any parameterisation) is added
  (:func:`mr_stft_loss`).
- :class:`UnconditionalTask`: fixed-length clips of ``model.audio_length`` samples and the same loss without a
  conditioner.

Both validate on the held-out clips (``data.holdout``) with a loss computed from a fixed generator, so values are
comparable across steps, and their sample hook writes audio made with the EMA weights (a held-out clip vocoded
with the fast schedule, or one generated clip). :func:`make_task` picks the task from ``model.conditional``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from diffcore.losses import diffusion_loss, diffusion_loss_terms
from diffcore.train import TrainTask
from diffwave.audio import AudioError, load_audio
from diffwave.data import AudioMelDataset, UnconditionalAudioDataset, split_files
from diffwave.mel import compute_mel
from diffwave.model import DiffWave
from diffwave.prior import sample_prior_std
from diffwave.recipe import DiffWaveRecipe
from diffwave.sample import denoiser_of

__all__ = ["RepeatedDataset", "VocoderTask", "UnconditionalTask", "make_task", "mr_stft_loss"]

log = logging.getLogger(__name__)

#: Held-out crops (vocoder) or clips (unconditional) that the validation loss averages over.
VAL_EXAMPLES = 8
#: Seconds of a held-out clip that the sample hook vocodes (kept short: it runs during training).
SAMPLE_SECONDS = 3.0


def mr_stft_loss(est: torch.Tensor, ref: torch.Tensor, sizes=(256, 512, 1024)) -> torch.Tensor:
    """Multi-resolution STFT loss ``[B]`` between waveforms ``[B, T]`` (Yamamoto et al. 2020, eqs. 3-5): for each
    FFT size n (hop n/4, Hann window of n samples, sizes longer than T skipped) the spectral convergence
    ‖|S_ref| − |S_est|‖_F / ‖|S_ref|‖_F plus the mean |log|S_ref| − log|S_est||, averaged over the sizes."""
    total, used = est.new_zeros(est.shape[0]), 0
    for n in sizes:
        if n > est.shape[-1]:
            continue
        window = torch.hann_window(n, device=est.device, dtype=est.dtype)
        mag = [torch.stft(w, n, n // 4, n, window=window, return_complex=True).abs().clamp(min=1e-7)
               for w in (est, ref)]
        sc = (mag[1] - mag[0]).flatten(1).norm(dim=1) / mag[1].flatten(1).norm(dim=1).clamp(min=1e-7)
        log_l1 = (mag[1].log() - mag[0].log()).abs().flatten(1).mean(dim=1)
        total, used = total + sc + log_l1, used + 1
    if used == 0:
        raise ValueError(f"every loss.stft_sizes entry {list(sizes)} is longer than the crop ({est.shape[-1]} samples)")
    return total / used


class RepeatedDataset(Dataset):
    """``dataset`` seen ``times`` times per epoch: item ``i`` is ``dataset[i % len(dataset)]``."""

    def __init__(self, dataset: Dataset, times: int) -> None:
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index % len(self.dataset)]  # type: ignore[arg-type]


class _DiffWaveTask(TrainTask):
    """Shared parts: the config, the model, the schedule, the loss and the repeat rule."""

    def __init__(self, recipe: DiffWaveRecipe) -> None:
        self.recipe = recipe
        self.config = recipe.to_dict()
        self.schedule = recipe.model.diffusion.build()
        self._train_files, self._heldout_files = split_files(recipe.data)

    @property
    def train_files(self):
        return list(self._train_files)

    @property
    def heldout_files(self):
        return list(self._heldout_files)

    def build_model(self) -> nn.Module:
        return DiffWave(self.recipe.model)

    def _repeated(self, dataset: Dataset) -> Dataset:
        n = len(dataset)  # type: ignore[arg-type]
        times = max(self.recipe.data.repeat, math.ceil(self.recipe.train.batch_size / n))
        if times > self.recipe.data.repeat:
            log.info("%d training clip(s) < one batch of %d: each is repeated %d times per epoch", n,
                     self.recipe.train.batch_size, times)
        return RepeatedDataset(dataset, times) if times > 1 else dataset

    def _loss(self, model: nn.Module, audio: torch.Tensor, mel: torch.Tensor | None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        cfg, d = self.recipe.model, self.recipe.model.diffusion
        prior_std = None
        if cfg.prior is not None and mel is not None:
            prior_std = sample_prior_std(mel, cfg.mel, cfg.prior).to(audio.dtype)[..., : audio.shape[-1]]
        den = denoiser_of(model, cfg, schedule=self.schedule, prior_std=prior_std)
        weight = self.recipe.loss.stft_weight
        if weight == 0:
            return diffusion_loss(den, audio, mel, norm=d.loss, min_snr_gamma=d.min_snr_gamma, generator=generator)
        # the STFT term is on the denoiser's x̂0 from the same network call as the diffusion loss
        terms = diffusion_loss_terms(den, audio, mel, norm=d.loss, min_snr_gamma=d.min_snr_gamma, generator=generator)
        x0_hat = terms["x0_hat"].clamp(-1, 1)
        return terms["loss"] + weight * mr_stft_loss(x0_hat.float(), audio.float(), self.recipe.loss.stft_sizes)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._loss(model, batch["audio"], batch.get("mel"))

    def _val_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
        device = next(model.parameters()).device
        g = torch.Generator(device=device).manual_seed(1234)  # the same t and ε at every validation
        batch = {k: v.to(device) for k, v in batch.items()}
        return float(self._loss(model, batch["audio"], batch.get("mel"), generator=g).mean())


class VocoderTask(_DiffWaveTask):
    """Mel-conditioned DiffWave (see the module docstring)."""

    def __init__(self, recipe: DiffWaveRecipe) -> None:
        if not recipe.model.conditional:
            raise ValueError("VocoderTask needs a conditional model (model.conditional: true)")
        super().__init__(recipe)
        self._val_batch: dict[str, torch.Tensor] | None = None

    def _dataset(self, files, crop_frames: int | None, generator: torch.Generator | None = None) -> AudioMelDataset:
        d = self.recipe.data
        return AudioMelDataset(files, self.recipe.model.mel, crop_frames, cache_dir=d.cache_dir,
                               pad_short=d.pad_short, strict=d.strict, generator=generator)

    def train_dataset(self) -> Dataset:
        return self._repeated(self._dataset(self.train_files, self.recipe.data.crop_frames))

    def _validation_batch(self) -> dict[str, torch.Tensor] | None:
        if self._val_batch is None and self.heldout_files:
            g = torch.Generator().manual_seed(0)  # the same crops every time
            ds = self._dataset(self.heldout_files, self.recipe.data.crop_frames, generator=g)
            items = [ds[i % len(ds)] for i in range(VAL_EXAMPLES)]
            self._val_batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        return self._val_batch

    def validate(self, ema_model: nn.Module, step: int, logger: Any) -> dict[str, float]:
        batch = self._validation_batch()
        return {} if batch is None else {"loss": self._val_loss(ema_model, batch)}

    def sample(self, ema_model: nn.Module, step: int, logger: Any) -> None:
        from diffwave.sample import vocode_mels

        files = self.heldout_files or self.train_files
        cfg = self.recipe.model
        try:
            wav, _ = load_audio(files[0], cfg.sample_rate, strict=self.recipe.data.strict, log_resample=False)
        except AudioError as e:
            log.warning("sample hook: %s", e)
            return
        wav = wav[: int(SAMPLE_SECONDS * cfg.sample_rate)].clamp(-1, 1)
        if wav.shape[-1] < cfg.mel.min_samples():
            return
        device = next(ema_model.parameters()).device
        mel = compute_mel(wav, cfg.mel).to(device)
        g = torch.Generator(device=device).manual_seed(0)
        out = vocode_mels(ema_model, [mel], steps="fast", generator=g, inference="eager")[0]
        logger.audio("vocoded", out.cpu(), cfg.sample_rate, step)
        if step == self.recipe.train.sample_every:
            logger.audio("reference", wav, cfg.sample_rate, step)


class UnconditionalTask(_DiffWaveTask):
    """Unconditional DiffWave on fixed-length clips (see the module docstring)."""

    def __init__(self, recipe: DiffWaveRecipe) -> None:
        if recipe.model.conditional:
            raise ValueError("UnconditionalTask needs an unconditional model (model.conditional: false)")
        super().__init__(recipe)
        self._val_batch: dict[str, torch.Tensor] | None = None

    def _dataset(self, files, crop: str = "random") -> UnconditionalAudioDataset:
        m = self.recipe.model
        return UnconditionalAudioDataset(files, m.sample_rate, m.audio_length, crop=crop,  # type: ignore[arg-type]
                                         strict=self.recipe.data.strict)

    def train_dataset(self) -> Dataset:
        return self._repeated(self._dataset(self.train_files))

    def validate(self, ema_model: nn.Module, step: int, logger: Any) -> dict[str, float]:
        if self._val_batch is None and self.heldout_files:
            ds = self._dataset(self.heldout_files, crop="center")
            self._val_batch = {"audio": torch.stack([ds[i]["audio"] for i in range(min(len(ds), VAL_EXAMPLES))])}
        return {} if self._val_batch is None else {"loss": self._val_loss(ema_model, self._val_batch)}

    def sample(self, ema_model: nn.Module, step: int, logger: Any) -> None:
        from diffwave.sample import generate_audio

        device = next(ema_model.parameters()).device
        g = torch.Generator(device=device).manual_seed(0)
        out = generate_audio(ema_model, 1, steps="fast", generator=g, inference="eager")[0]
        logger.audio("generated", out.cpu(), self.recipe.model.sample_rate, step)


def make_task(recipe: DiffWaveRecipe) -> _DiffWaveTask:
    """The task that trains ``recipe.model``: :class:`VocoderTask` or :class:`UnconditionalTask`."""
    from diffwave.refiner_task import RefinerRecipe, RefinerTask

    if isinstance(recipe, RefinerRecipe):  # network: refiner (diffwave.refiner_task)
        return RefinerTask(recipe)
    return VocoderTask(recipe) if recipe.model.conditional else UnconditionalTask(recipe)
