"""Sampling a trained U-Net: :func:`denoiser_of` wraps the network in its diffcore denoiser (VP with ε/x0/v and an
optional learned variance, or EDM), and :func:`generate` draws images with one of diffcore's samplers (DDPM, DDIM,
Heun, DPM-Solver++(2M)) over its discretisation, with classifier-free guidance for a class-conditional network.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from diffcore.denoiser import Denoiser, EDMDenoiser, denoiser_from_config
from diffcore.discretization import karras_sigmas, respaced
from diffcore.guidance import guided
from diffcore.samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample, heun_sample
from diffcore.schedule import NoiseSchedule
from diffimage.config import UNetConfig
from diffimage.model import UNet
from diffimage.recipe import SIGMA_SAMPLERS, ImageSampleConfig, SamplerName

__all__ = ["generate", "denoiser_of", "class_labels", "resolved_options", "DEFAULT_STEPS", "Classes"]

#: Steps of each sampler when none are given (``None``: every step of the schedule).
DEFAULT_STEPS: dict[str, int | None] = {"ddim": 50, "heun": 18, "dpmpp": 20, "ddpm": None}

Classes = int | Sequence[int] | Tensor | None


def denoiser_of(model: nn.Module, schedule: NoiseSchedule | None = None) -> Denoiser:
    """The diffcore denoiser of a :class:`UNet` (or any network with a ``config`` like :class:`UNetConfig`): its
    ``diffusion`` parameterisation and learned variance around ``model``; ``schedule`` (VP only) is the one to use
    instead of building the configured one again."""
    cfg = model.config
    return denoiser_from_config(cfg.diffusion, model, learned_variance=cfg.learned_variance, schedule=schedule)


def class_labels(config: UNetConfig, n: int, classes: Classes, device: torch.device) -> Tensor | None:
    """Labels ``[n]`` for a conditional network: ``None`` cycles ``0, 1, …, K−1, 0, …``; an int is used for every
    image; a sequence/tensor gives one label per image (``-1`` = the null label, i.e. unconditional)."""
    if config.num_classes is None:
        if classes is not None:
            raise ValueError("this model is unconditional (num_classes is null): it takes no classes")
        return None
    k = config.num_classes
    if classes is None:
        labels = torch.arange(n) % k
    elif isinstance(classes, int):
        labels = torch.full((n,), classes)
    else:
        labels = torch.as_tensor(classes).long().reshape(-1)
        if labels.numel() != n:
            raise ValueError(f"got {labels.numel()} classes for {n} images")
    if bool(((labels >= k) | (labels < -1)).any()):
        raise ValueError(f"classes must lie in 0..{k - 1} (or -1 for no class), got {labels.unique().tolist()}")
    return labels.long().to(device)


@torch.no_grad()
def generate(
    model: UNet,
    n: int,
    *,
    schedule: NoiseSchedule | None = None,
    sampler: SamplerName = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    classes: Classes = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
) -> Tensor:
    """``n`` images ``[n, C, H, W]`` (float in ``[-1, 1]``, on the model's device) from a :class:`UNet`.

    Samplers (diffcore): ``ddpm`` — ancestral sampling, Algorithm 2 of Ho et al. 2020 with σ_t² = β_t, over all T
    steps or, with ``steps``, over an evenly respaced subsequence (Nichol & Dhariwal 2021 §4); ``ddim`` — Song et al.
    2021 eq. 12 (``eta`` 0: deterministic); ``heun`` — Karras et al. 2022 Algorithm 1 (``2·steps − 1`` network
    calls over ``karras_sigmas``); ``dpmpp`` — DPM-Solver++(2M), Lu et al. 2022 (``steps`` network calls over the
    same levels). Heun and DPM-Solver++ walk the sigma view and are the only samplers of an EDM model. A
    class-conditional network gets ``classes`` (see :func:`class_labels`) and classifier-free guidance
    ``ε_u + s(ε_c − ε_u)`` with ``s = guidance_scale``. A learned-variance network is sampled with its ε half and
    the sampler's fixed variance σ_t² = β_t. ``generator`` (on the model's device) makes the result reproducible.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    cfg: UNetConfig = model.config
    den = denoiser_of(model, schedule)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        cond = class_labels(cfg, n, classes, device)
        if cond is not None and guidance_scale != 1.0:
            den = guided(den, guidance_scale, null_cond=model.null_label)
        elif cond is None and guidance_scale != 1.0 and cfg.num_classes is None:
            raise ValueError("guidance_scale != 1 needs a class-conditional model")
        shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
        common: dict[str, Any] = dict(cond=cond, generator=generator, progress=progress, device=device,
                                      dtype=torch.float32)
        steps = steps if steps is not None else DEFAULT_STEPS[sampler]
        if isinstance(den, EDMDenoiser) and sampler not in SIGMA_SAMPLERS:
            raise ValueError(f"an EDM model is sampled with sampler 'heun' or 'dpmpp', got {sampler!r}")
        if sampler == "ddim":
            x = ddim_sample(den, shape, respaced(den.schedule, min(int(steps), den.schedule.num_steps)), eta=eta,
                            clip_denoised=clip_denoised, **common)
        elif sampler == "ddpm":
            walk = None if steps is None or steps >= den.schedule.num_steps else respaced(den.schedule, int(steps))
            x = ddpm_sample(den, shape, walk, variance="beta", clip_denoised=clip_denoised, **common)
        elif sampler == "heun":
            x = heun_sample(den, shape, karras_sigmas(den.sigma_min, den.sigma_max, int(steps)), **common)
        elif sampler == "dpmpp":
            x = dpmpp_2m_sample(den, shape, karras_sigmas(den.sigma_min, den.sigma_max, int(steps)), **common)
        else:
            raise ValueError(f"sampler must be 'ddim', 'ddpm', 'heun' or 'dpmpp', got {sampler!r}")
    finally:
        model.train(was_training)
    return x.clamp(-1.0, 1.0)


def resolved_options(
    defaults: ImageSampleConfig, config: UNetConfig, sampler: SamplerName | None = None, steps: int | None = None,
    eta: float | None = None, guidance_scale: float | None = None,
) -> dict[str, Any]:
    """The sampler, steps, η and guidance scale a run actually uses when the options left at ``None`` take the
    stored recipe's ``defaults`` (for manifests and metrics files; ``guidance_scale`` is ``None`` for an
    unconditional model)."""
    sampler = sampler or defaults.sampler
    steps = steps if steps is not None else (defaults.steps if sampler == defaults.sampler else None)
    steps = steps if steps is not None else DEFAULT_STEPS[sampler]
    scale = None if config.num_classes is None else (
        guidance_scale if guidance_scale is not None else defaults.guidance_scale)
    return {"sampler": sampler, "steps": steps if steps is not None else config.diffusion.num_steps,
            "eta": eta if eta is not None else defaults.eta, "guidance_scale": scale}
