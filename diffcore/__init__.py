"""diffcore: the modality-agnostic diffusion core of diffstack.

Notation of Ho et al. 2020 (see :mod:`diffcore.schedule` for the full table): β_t ``betas``, α_t = 1 − β_t ``alphas``,
ᾱ_t = ∏ α_i ``alphas_cumprod``, β̃_t ``posterior_variance``. Step indices are 0-based: index 0 is the paper's t = 1.

Every network diffcore drives is a callable ``model(x_t, t, cond=None)`` returning a tensor shaped like ``x_t``;
everything here works for tensors of any rank. A denoiser (:mod:`diffcore.denoiser`) wraps a network with its
parameterisation — eps, x_0 or v on a VP schedule, a learned variance, PriorGrad's data-dependent prior, or EDM's
preconditioning — and is what losses, the likelihood and the samplers take. Samplers walk the steps they are given
(:mod:`diffcore.discretization` makes them).
"""

import re

MIN_TORCH = (2, 11)  # the oldest torch tested (the GPU machines' 2.11.0); pyproject.toml's lower bound


def torch_version_problem(torch_version: str, torchaudio_version: str | None = None) -> str | None:
    """What is wrong with this pair of versions, or None: torch older than MIN_TORCH, or torchaudio 2.11.1 (whose
    compiled library loads only with torch 2.14.x) beside an older torch."""
    tv = tuple(int(re.match(r"\d+", p).group()) for p in torch_version.split("+")[0].split(".")[:2])
    if tv < MIN_TORCH:
        return (f"diffstack needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} (tested: 2.11.0 and 2.14.1), but torch "
                f"{torch_version} is installed: pip install 'torch>=2.11,<2.15'")
    if torchaudio_version and torchaudio_version.split("+")[0] == "2.11.1" and tv < (2, 14):
        return (f"torchaudio 2.11.1 loads only with torch 2.14.x, but torch {torch_version} is installed: pip install "
                f"'torchaudio==2.11.0' (for torch 2.11.0) or 'torch>=2.14,<2.15'")
    return None


def _check_torch() -> None:
    import importlib.metadata as md

    import torch

    try:
        ta = md.version("torchaudio")
    except md.PackageNotFoundError:
        ta = None
    problem = torch_version_problem(torch.__version__, ta)
    if problem:
        raise ImportError(problem)


_check_torch()

from diffcore.config import ConfigBase, ConfigError, DiffusionConfig, EDMConfig, load_recipe  # noqa: E402
from diffcore.ema import EMA
from diffcore.denoiser import EDMDenoiser, VPDenoiser, denoiser_from_config
from diffcore.discretization import fast_sampling_steps, fast_schedule, karras_sigmas, respaced
from diffcore.guidance import ClassifierFreeGuidance, guided
from diffcore.likelihood import bits_per_dim, nll, nll_terms
from diffcore.losses import (
    UniformTimesteps,
    diffusion_loss,
    edm_loss,
    epsilon_loss,
    hybrid_loss,
    min_snr_weights,
    v_loss,
    x0_loss,
)
from diffcore.samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample, heun_sample
from diffcore.schedule import NoiseSchedule, validate_prior_std
from diffcore.utils import append_dims

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule",
    "VPDenoiser",
    "EDMDenoiser",
    "denoiser_from_config",
    "validate_prior_std",
    "DiffusionConfig",
    "EDMConfig",
    "ConfigBase",
    "ConfigError",
    "load_recipe",
    "append_dims",
    "epsilon_loss",
    "x0_loss",
    "v_loss",
    "hybrid_loss",
    "diffusion_loss",
    "edm_loss",
    "min_snr_weights",
    "UniformTimesteps",
    "nll",
    "nll_terms",
    "bits_per_dim",
    "ddpm_sample",
    "ddim_sample",
    "heun_sample",
    "dpmpp_2m_sample",
    "respaced",
    "fast_schedule",
    "fast_sampling_steps",
    "karras_sigmas",
    "ClassifierFreeGuidance",
    "guided",
    "EMA",
]
