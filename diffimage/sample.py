"""Sampling a trained U-Net: :func:`denoiser_of` wraps the network in its diffcore denoiser (VP with ε/x0/v and an
optional learned variance, or EDM), and :func:`generate` draws images with one of diffcore's samplers (DDPM, DDIM,
Heun, DPM-Solver++(2M)) over its discretisation, with classifier-free guidance for a class-conditional network;
:func:`inpaint` fills the unknown pixels of images around known ones (the samplers' ``project`` hook with
:func:`keep_known`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from diffcore.denoiser import Denoiser, EDMDenoiser, denoiser_from_config
from diffcore.discretization import karras_sigmas, respaced
from diffcore.guidance import guided
from diffcore.samplers import Projection, ddim_sample, ddpm_sample, dpmpp_2m_sample, heun_sample
from diffcore.schedule import NoiseSchedule
from diffimage.config import UNetConfig
from diffimage.model import UNet
from diffimage.recipe import SIGMA_SAMPLERS, ImageSampleConfig, SamplerName

__all__ = ["generate", "inpaint", "keep_known", "denoiser_of", "class_labels", "resolved_options", "DEFAULT_STEPS",
           "Classes"]

#: Steps of each sampler when none are given (``None``: every step of the schedule).
DEFAULT_STEPS: dict[str, int | None] = {"ddim": 50, "heun": 18, "dpmpp": 20, "ddpm": None}

Classes = int | Sequence[int] | Tensor | None


def denoiser_of(model: nn.Module, schedule: NoiseSchedule | None = None) -> Denoiser:
    """The diffcore denoiser of a :class:`UNet` (or any network with a ``config`` like :class:`UNetConfig`): its
    ``diffusion`` parameterisation and learned variance around ``model``; ``schedule`` (VP only) is the one to use
    instead of building the configured one again."""
    cfg = model.config
    return denoiser_from_config(cfg.diffusion, model, learned_variance=cfg.learned_variance, schedule=schedule)


def class_labels(config: UNetConfig, n: int, classes: Classes, device: torch.device,
                 generator: torch.Generator | None = None) -> Tensor | None:
    """Labels ``[n]`` for a conditional network: ``None`` draws each label from ``config.class_prior`` when the model
    has one (with ``generator``, on its device: a model whose labels are latent, sampled as the data's mixture) and
    otherwise cycles ``0, 1, …, K−1, 0, …``; an int is used for every image; a sequence/tensor gives one label per
    image (``-1`` = the null label, i.e. unconditional)."""
    if config.num_classes is None:
        if classes is not None:
            raise ValueError("this model is unconditional (num_classes is null): it takes no classes")
        return None
    k = config.num_classes
    if classes is None and config.class_prior is not None:
        prior = torch.tensor(config.class_prior, dtype=torch.float64,
                             device=generator.device if generator is not None else None)
        labels = torch.multinomial(prior, n, replacement=True, generator=generator)
    elif classes is None:
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


def keep_known(known: Tensor, mask: Tensor) -> Projection:
    """The inpainting projection ``project(x0_hat, i) = where(mask, known, x0_hat)`` at every step.

    ``known``: ``[n, C, H, W]`` in ``[-1, 1]`` (the values under ``mask``; others are ignored); ``mask``: bool (or
    0/1) broadcastable to it, ``True`` where a pixel is known (e.g. ``[H, W]``, ``[n, 1, H, W]``).

    Design: the denoiser's clean estimate is replaced on the known pixels, and the sampler forms its update from it.
    Every diffcore sampler's last update returns its last x0_hat, so the known pixels of the final image equal
    ``known`` (up to float rounding: DDPM's posterior coefficient at t = 1 is 1 within 1e-10; Heun's last Euler step
    x + (0 - sigma) (x - D) / sigma rounds near sigma_min). Along the way, under ancestral sampling with the posterior
    variance, the known pixels of x_{t-1} are drawn from q(x_{t-1} | x_t, x_0 = known), the true forward posterior:
    the known region's trajectory is then distributed as the forward-noised known image that RePaint's replacement
    (Lugmayr et al. 2022) writes in, so the replacement of x_t would add nothing there; the hook works unchanged for
    the deterministic and sigma-level samplers, which draw no noise. The unknown pixels see the known ones only
    through the network's input x_t (no resampling jumps)."""
    if not known.is_floating_point():
        raise TypeError(f"known must be a float image tensor in [-1, 1], got {known.dtype}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be bool or hold only 0 and 1 (1 = known pixel)")
        mask = mask != 0
    try:
        mask = torch.broadcast_to(mask, known.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to known "
                         f"{tuple(known.shape)}") from None
    values = known.masked_select(mask)
    if values.numel() and (not bool(torch.isfinite(values).all()) or float(values.abs().max()) > 1.0):
        raise ValueError("known pixels must be finite and lie in [-1, 1]")

    def project(x0: Tensor, i: int) -> Tensor:
        return torch.where(mask.to(x0.device), known.to(device=x0.device, dtype=x0.dtype), x0)

    return project


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
    known: Tensor | None = None,
    mask: Tensor | None = None,
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
    ``known`` ``[n, C, H, W]`` with ``mask`` (``True`` = known): inpainting, the known pixels kept
    (:func:`keep_known`, the sampler's ``project`` hook; ``None``: plain sampling, unchanged).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    cfg: UNetConfig = model.config
    den = denoiser_of(model, schedule)
    device = next(model.parameters()).device
    project = None
    if (known is None) != (mask is None):
        raise ValueError("inpainting takes both known= and mask=")
    if known is not None:
        want = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
        if tuple(known.shape) != want:
            raise ValueError(f"known has shape {tuple(known.shape)}, expected {want}")
        project = keep_known(known.to(device), mask.to(device))
    was_training = model.training
    model.eval()
    try:
        cond = class_labels(cfg, n, classes, device, generator)
        if cond is not None and guidance_scale != 1.0:
            den = guided(den, guidance_scale, null_cond=model.null_label)
        elif cond is None and guidance_scale != 1.0 and cfg.num_classes is None:
            raise ValueError("guidance_scale != 1 needs a class-conditional model")
        shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
        common: dict[str, Any] = dict(cond=cond, generator=generator, progress=progress, device=device,
                                      dtype=torch.float32, project=project)
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


def inpaint(model: UNet, known: Tensor, mask: Tensor, **options: Any) -> Tensor:
    """Images ``[n, C, H, W]`` that keep ``known`` ``[n, C, H, W]`` where ``mask`` is ``True`` and are sampled from
    ``model`` elsewhere: :func:`generate` with ``known``/``mask`` (``options``: its keywords, e.g. ``sampler``,
    ``steps``, ``generator``, ``classes``). See :func:`keep_known` for the method and its exactness."""
    return generate(model, int(known.shape[0]), known=known, mask=mask, **options)


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
