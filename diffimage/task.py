"""The image model's :class:`~diffcore.train.TrainTask`: what the one training engine needs from this package.

Loss (per example, ``[B]``): diffcore's :func:`~diffcore.losses.diffusion_loss` with the model config's diffusion
settings — the simple loss of Ho et al. 2020 (eq. 14, Algorithm 1) on ε, x_0 or v, optionally min-SNR-γ weighted,
or, for a ``learned_variance`` network, the hybrid loss L_simple + λ L_vlb of Nichol & Dhariwal 2021 (§3.1) with the
8-bit discretised decoder for L_0; with ``diffusion.edm``, EDM's preconditioned loss (Karras et al. 2022, eq. 8 with
log-normal σ). The network is wrapped in its denoiser (:func:`diffimage.sample.denoiser_of`). A class-conditional
network receives the labels; it drops them itself with probability ``model.class_dropout`` (the null label), which
is what classifier-free guidance needs.

Hooks (EMA weights, rank 0 only — they use no collective operation, so the other ranks skip them):

- ``validate``: the loss on up to 16 held-out images with a fixed generator (comparable across steps) and, when
  ``sample.nll_images`` > 0, the discretised-ELBO bits/dim of that many held-out images (T network evaluations
  each), logged as ``val/loss`` and ``val/bits_per_dim``. Nothing without held-out images (``data.holdout``).
- ``sample``: a grid of ``sample.num_images`` images with the recipe's sampler, seed and guidance (classes cycle
  0, 1, … for a conditional model), written to tensorboard and ``RUN/samples/samples_stepXXXXXXXX.png``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from diffcore.losses import diffusion_loss
from diffcore.train import TrainTask, is_main_process
from diffimage.data import build_datasets, dataset_images
from diffimage.model import UNet
from diffimage.recipe import ImageRecipe
from diffimage.sample import denoiser_of

__all__ = ["ImageTask", "VAL_LOSS_IMAGES"]

log = logging.getLogger(__name__)

#: Held-out images the validation loss averages over.
VAL_LOSS_IMAGES = 16


class ImageTask(TrainTask):
    """DDPM U-Net training on the images of a recipe (see the module docstring)."""

    def __init__(self, recipe: ImageRecipe) -> None:
        self.recipe = recipe
        self.config = recipe.to_dict()
        #: the discrete schedule of a VP model (``None`` with ``diffusion.edm``)
        self.schedule = recipe.model.diffusion.build() if recipe.model.diffusion.edm is None else None
        self._datasets: tuple[Dataset, Dataset | None] | None = None

    def _data(self) -> tuple[Dataset, Dataset | None]:
        if self._datasets is None:
            self._datasets = build_datasets(self.recipe.data, self.recipe.model)
        return self._datasets

    @property
    def heldout(self) -> Dataset | None:
        """The held-out images (``data.holdout`` of them) or ``None``."""
        return self._data()[1]

    def build_model(self) -> nn.Module:
        model = UNet(self.recipe.model)
        if self.recipe.init_from:
            from diffcore.checkpoint import warm_start_weights
            from diffimage.config import UNetConfig
            from diffimage.model import conditional_from_unconditional, deepened, unconditional_from_null_label
            from diffimage.pretrained import SHIPPED

            path = SHIPPED.resolve(self.recipe.init_from)
            target = self.recipe.model
            fresh = {k: v.detach().clone() for k, v in model.state_dict().items()}

            def adapt(stored: UNetConfig, weights: dict) -> dict | None:
                for made in (unconditional_from_null_label(stored, target, weights),
                             conditional_from_unconditional(stored, target, weights)):
                    if made is not None:
                        return made
                return deepened(stored, target, weights, fresh)

            model.load_state_dict(warm_start_weights(
                path, UNetConfig, target, kind="U-Net", source=self.recipe.init_from, adapt=adapt))
            log.info("warm start from %s", self.recipe.init_from)
        return model

    def train_dataset(self) -> Dataset:
        return self._data()[0]

    def _loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        m = self.recipe.model
        d = m.diffusion
        cond = labels if m.num_classes is not None else None
        return diffusion_loss(denoiser_of(model, self.schedule), images, cond, norm=d.loss, min_snr_gamma=d.min_snr_gamma,
                              generator=generator, vlb_weight=d.vlb_weight, decoder="discretized")

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._loss(model, batch["image"], batch.get("label"))

    def validate(self, ema_model: nn.Module, step: int, logger: Any) -> dict[str, float]:
        from diffimage.evaluate import nll_bits_per_dim

        held = self.heldout
        if held is None or not is_main_process():
            return {}
        n = max(VAL_LOSS_IMAGES, self.recipe.sample.nll_images)
        images, labels = dataset_images(held, limit=n)
        device = next(ema_model.parameters()).device
        x0 = images.float().div(127.5).sub(1.0).to(device)
        y = labels.to(device) if self.recipe.model.num_classes is not None else None
        g = torch.Generator(device=device).manual_seed(1234)  # the same t and ε at every validation
        k = min(VAL_LOSS_IMAGES, x0.shape[0])
        out = {"loss": float(self._loss(ema_model, x0[:k], None if y is None else y[:k], generator=g).mean())}
        k = min(self.recipe.sample.nll_images, x0.shape[0])
        if k > 0 and self.recipe.model.diffusion.edm is None:  # the bound is defined for the VP models
            bpd = nll_bits_per_dim(denoiser_of(ema_model, self.schedule), x0[:k], None if y is None else y[:k],
                                   generator=torch.Generator(device=device).manual_seed(4321))
            out["bits_per_dim"] = float(bpd.mean())
        return out

    def sample(self, ema_model: nn.Module, step: int, logger: Any) -> None:
        from diffimage.sample import generate
        from diffimage.grid import make_grid

        if not is_main_process():
            return
        s = self.recipe.sample
        device = next(ema_model.parameters()).device
        g = torch.Generator(device=device).manual_seed(s.seed)
        conditional = self.recipe.model.num_classes is not None
        images = generate(ema_model, s.num_images, sampler=s.sampler, steps=s.steps,
                          eta=s.eta, guidance_scale=s.guidance_scale if conditional else 1.0, generator=g,
                          clip_denoised=s.clip_denoised)
        nrow = self.recipe.model.num_classes if conditional and s.num_images >= 2 * self.recipe.model.num_classes \
            else None
        logger.image("samples", make_grid(images.cpu(), nrow=nrow), step)
