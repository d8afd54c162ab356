"""diffcore: the modality-agnostic diffusion core of diffstack.

Notation of Ho et al. 2020 (see :mod:`diffcore.schedule` for the full table): β_t ``betas``, α_t = 1 − β_t ``alphas``,
ᾱ_t = ∏ α_i ``alphas_cumprod``, β̃_t ``posterior_variance``. Step indices are 0-based: index 0 is the paper's t = 1.

Every network diffcore drives is a callable ``model(x_t, t, cond=None)`` returning a tensor shaped like ``x_t``;
everything here works for tensors of any rank. Losses, likelihood and samplers take an optional ``prior_std`` s for
PriorGrad's data-dependent prior N(0, diag(s^2)) (``None`` = N(0, I)).
"""

from diffcore.config import ConfigBase, ConfigError, DiffusionConfig, load_recipe
from diffcore.ema import EMA
from diffcore.guidance import ClassifierFreeGuidance
from diffcore.likelihood import bits_per_dim, nll, nll_terms
from diffcore.losses import (
    UniformTimesteps,
    diffusion_loss,
    epsilon_loss,
    hybrid_loss,
    min_snr_weights,
    v_loss,
    x0_loss,
)
from diffcore.samplers import (
    ddim_sample,
    ddpm_sample,
    fast_sample,
    fast_sampling_steps,
    heun_sample,
    karras_sigmas,
)
from diffcore.schedule import NoiseSchedule, validate_prior_std
from diffcore.utils import append_dims

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule",
    "validate_prior_std",
    "DiffusionConfig",
    "ConfigBase",
    "ConfigError",
    "load_recipe",
    "append_dims",
    "epsilon_loss",
    "x0_loss",
    "v_loss",
    "hybrid_loss",
    "diffusion_loss",
    "min_snr_weights",
    "UniformTimesteps",
    "nll",
    "nll_terms",
    "bits_per_dim",
    "ddpm_sample",
    "ddim_sample",
    "fast_sample",
    "fast_sampling_steps",
    "heun_sample",
    "karras_sigmas",
    "ClassifierFreeGuidance",
    "EMA",
]
