"""The variational bound on -log p(x_0) of Ho et al. 2020 (eq. 5), computed in closed form per step.

    L = L_T + sum_{t >= 2} L_{t-1} + L_0   (nats per example)
    L_T     = KL(q(x_T | x_0) || N(0, I))
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),  p(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I)
    L_0     = -log p(x_0 | x_1), a decoder with mean mu_theta(x_1, 1) (= the predicted x_0) and variance sigma_1^2

One Monte-Carlo sample of x_t ~ q(x_t | x_0) per step and example; the KLs between Gaussians are exact.

| symbol             | name here                                                       |
| ------------------ | --------------------------------------------------------------- |
| sigma_t^2          | ``variance="beta"``: beta_t; ``"posterior"``: beta~_t (clipped); ``None`` with a learned-variance denoiser: exp(nu log beta_t + (1 - nu) log beta~_t) |
| mu_theta(x_t, t)   | posterior mean mu~_t(x0_hat, x_t) with x0_hat from the network  |
| L_{t-1} (index t-1)| column ``t - 1`` of ``nll_terms`` (column 0 = L_0)              |
| L_T                | last column of ``nll_terms``                                    |
| s                  | ``prior_std`` (``None`` = the N(0, I) prior)                    |

PriorGrad prior (Lee et al. 2022), ``prior_std`` s broadcastable to x_0: the prior is N(0, diag(s^2)) and every
variance above is multiplied by s^2 elementwise: L_T = KL(q(x_T | x_0) || N(0, s^2)), q(x_{t-1} | x_t, x_0) has
variance beta~_t s^2, p(x_{t-1} | x_t) variance sigma_t^2 s^2, the decoder N(x0_hat, sigma_1^2 s^2). Since KL is
invariant under x -> x / s, each KL is computed on means divided by s with the unscaled variances.

"Clipped" beta~: beta~_1 = 0, so its log is replaced by log beta~_2 (improved-diffusion's
``posterior_log_variance_clipped``); this gives sigma_1^2 for the decoder under ``variance="posterior"``.
The learned variance is Nichol & Dhariwal 2021 eq. 15 with a network whose output has 2x channels along dim 1
(eps, nu; the paper writes v); the denoiser (``VPDenoiser(learned_variance=True)``) splits it.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffcore.denoiser import VPDenoiser, require_vp
from diffcore.schedule import NoiseSchedule, validate_prior_std
from diffcore.utils import clip_value, randn, sum_flat

__all__ = [
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "continuous_gaussian_log_likelihood",
    "reverse_log_variance",
    "prior_kl",
    "vlb_term",
    "nll_terms",
    "nll",
    "bits_per_dim",
]

Decoder = Literal["gaussian", "discretized"]
FixedVariance = Literal["beta", "posterior"]


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats (arguments broadcast).

    0.5 (logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1).
    """
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def continuous_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Elementwise log N(x; means, exp(log_scales)^2) (a density, in nats). ``log_scales`` = log std."""
    z = (x - means) * torch.exp(-log_scales)
    return -0.5 * math.log(2 * math.pi) - log_scales - 0.5 * z**2


def discretized_gaussian_log_likelihood(
    x: Tensor, means: Tensor, log_scales: Tensor, num_levels: int = 256
) -> Tensor:
    """Elementwise log-probability of the discretised decoder of Ho et al. 2020 (eq. 13), in nats.

    ``x`` holds data in [-1, 1] on ``num_levels`` evenly spaced levels (8-bit images: 256, spacing 2/255). The
    probability is the Gaussian mass of the bin [x - 1/(L-1), x + 1/(L-1)], with the outermost bins extended to
    -inf and +inf. ``log_scales`` = log std. Computed from ``log_ndtr`` so that tiny bin masses keep their
    precision (exact down to masses of about 1e-300 in float64).
    """
    half = 1.0 / (num_levels - 1)
    inv_std = torch.exp(-log_scales)
    centered = x - means
    upper = (centered + half) * inv_std
    lower = (centered - half) * inv_std
    # log(Phi(hi) - Phi(lo)) = log Phi(hi) + log(-expm1(log Phi(lo) - log Phi(hi))), evaluated on the lower-tail
    # side (mirror the bin when it lies above the mean) so that neither tail loses precision; torch's ndtr itself
    # underflows to 0 already near -10.
    flip = centered > 0
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi = torch.special.log_ndtr(hi)
    log_mid = log_hi + torch.log(-torch.expm1(torch.special.log_ndtr(lo) - log_hi))
    log_left = torch.special.log_ndtr(upper)  # x = -1: mass of (-inf, upper]
    log_right = torch.special.log_ndtr(-lower)  # x = +1: mass of [lower, +inf)
    edge = 1.0 - 0.5 * half  # levels closer to +-1 than half a bin are the edge levels
    return torch.where(x < -edge, log_left, torch.where(x > edge, log_right, log_mid))


def reverse_log_variance(
    schedule: NoiseSchedule,
    t: Tensor,
    like: Tensor,
    variance: FixedVariance | None,
    var_out: Tensor | None = None,
) -> Tensor:
    """log sigma_t^2 of the reverse step p(x_{t-1} | x_t), broadcast to ``like``.

    ``"beta"``: log beta_t; ``"posterior"``: log beta~_t clipped; ``None``: the learned interpolation
    nu log beta_t + (1 - nu) log beta~_t (Nichol & Dhariwal eq. 15, where the paper writes v; ``var_out`` = nu, the
    raw variance output of the network, ``Prediction.var``, shaped like ``like``; not the v of v-prediction). Under
    a PriorGrad prior the step's variance is this times s^2; ``vlb_term`` and the samplers apply the s^2, so this
    stays the schedule's.
    """
    if variance == "beta":
        return torch.log(schedule.at("betas", t, like))
    if variance == "posterior":
        return schedule.posterior_log_variance(t, like)
    if variance is None:
        if var_out is None:
            raise ValueError("a learned variance (variance=None) needs the network's variance output var_out")
        log_beta = torch.log(schedule.at("betas", t, var_out))
        return var_out * log_beta + (1.0 - var_out) * schedule.posterior_log_variance(t, var_out)
    raise ValueError(f"variance must be 'beta', 'posterior' or None (learned), got {variance!r}")


def prior_kl(schedule: NoiseSchedule, x0: Tensor, *, prior_std: Tensor | None = None) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example, ``[B]`` nats (summed over non-batch dims).

    With ``prior_std`` s (broadcastable to ``x0``): KL(N(sqrt(abar_T) x_0, (1 - abar_T) s^2) || N(0, s^2)).
    """
    prior_std = validate_prior_std(prior_std, x0.shape, x0.dtype, x0.device)
    t = torch.full((x0.shape[0],), schedule.num_steps - 1, device=x0.device, dtype=torch.long)
    mean, var = schedule.q_mean_variance(x0, t)
    zero = torch.zeros((), dtype=x0.dtype, device=x0.device)
    if prior_std is not None:
        mean = mean / prior_std  # KL(N(m, v s^2) || N(0, s^2)) = KL(N(m / s, v) || N(0, 1))
    return sum_flat(normal_kl(mean, torch.log(var), zero, zero).expand_as(x0))


def vlb_term(
    schedule: NoiseSchedule,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    pred_x0: Tensor,
    log_variance: Tensor,
    decoder: Decoder = "gaussian",
    *,
    prior_std: Tensor | None = None,
) -> Tensor:
    """Term L_{t} of the bound at 0-based step ``t`` ``[B]`` (may differ per example), ``[B]`` nats.

    t > 0: KL(q(x_{t-1} | x_t, x_0) || N(mu~_t(pred_x0, x_t), exp(log_variance))) summed over dims.
    t = 0: decoder -log p(x_0 | x_1) with mean mu~_1(pred_x0, x_1) = pred_x0 and variance exp(log_variance),
    continuous Gaussian density (``"gaussian"``) or Ho et al.'s 8-bit discretised decoder (``"discretized"``).

    With ``prior_std`` s (broadcastable to ``x_t``) the posterior variance is beta~_t s^2 and the model's variance
    exp(log_variance) s^2: ``log_variance`` stays the schedule's log sigma_t^2 (``reverse_log_variance``).
    """
    prior_std = validate_prior_std(prior_std, x_t.shape, x_t.dtype, x_t.device)
    true_mean, _ = schedule.q_posterior(x0, x_t, t)
    true_log_var = schedule.posterior_log_variance(t, x_t)
    model_mean, _ = schedule.q_posterior(pred_x0, x_t, t)
    if prior_std is None:
        kl = sum_flat(normal_kl(true_mean, true_log_var, model_mean, log_variance).expand_as(x_t))
        log_scales = (0.5 * log_variance).expand_as(x_t)
    else:
        # Both variances carry the same s^2: KL(N(m1, v1 s^2) || N(m2, v2 s^2)) = KL(N(m1 / s, v1) || N(m2 / s, v2)).
        kl = sum_flat(normal_kl(true_mean / prior_std, true_log_var, model_mean / prior_std, log_variance)
                      .expand_as(x_t))
        log_scales = (0.5 * log_variance + torch.log(prior_std)).expand_as(x_t)
    if decoder == "gaussian":
        ll = continuous_gaussian_log_likelihood(x0, model_mean, log_scales)
    elif decoder == "discretized":
        ll = discretized_gaussian_log_likelihood(x0, model_mean, log_scales)
    else:
        raise ValueError(f"decoder must be 'gaussian' or 'discretized', got {decoder!r}")
    return torch.where(t == 0, -sum_flat(ll), kl)


@torch.no_grad()
def nll_terms(
    denoiser: VPDenoiser,
    x0: Tensor,
    cond: Any = None,
    decoder: Decoder = "gaussian",
    variance: FixedVariance | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    clip_denoised: bool | float | None = None,
) -> Tensor:
    """Every term of the bound, ``[B, T + 1]`` nats: column i < T is L_i at 0-based step i (column 0 = decoder
    L_0), column T is the prior term L_T.

    ``denoiser``: the model (its schedule, parameterisation, learned variance and PriorGrad prior; see
    :mod:`diffcore.denoiser`). ``variance``: sigma_t^2 of the reverse steps, ``"beta"`` or ``"posterior"``; ``None``
    (default) = the learned interpolation for a learned-variance denoiser, else ``"beta"``.
    Noise: for step t = 0, 1, ..., T - 1 in that order one ``randn(x0.shape)`` z is drawn from ``generator`` and
    x_t = q_sample(x0, t, denoiser.prior_noise(z)). The network is called batch-parallel at each step.
    ``clip_denoised`` clamps the predicted x_0 to [-c, c] (True = 1.0, images). Under a prior s (PriorGrad,
    broadcastable to ``x0``) the bound is that of the model with prior N(0, s^2), whose network predicts the scaled
    eps = s * z; every variance is scaled by s^2 (module docstring).
    """
    den = require_vp(denoiser, "nll_terms")
    if variance not in ("beta", "posterior", None):
        raise ValueError(f"variance must be 'beta', 'posterior' or None (learned), got {variance!r}")
    if variance is None and not den.learned_variance:
        variance = "beta"
    schedule = den.schedule
    prior_std = den.checked_prior(x0)
    batch = x0.shape[0]
    clip = clip_value(clip_denoised)
    terms = torch.empty(batch, schedule.num_steps + 1, dtype=x0.dtype, device=x0.device)
    for k in tqdm(range(schedule.num_steps), disable=not progress, desc="nll"):
        t = torch.full((batch,), k, device=x0.device, dtype=torch.long)
        noise = den.prior_noise(randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype))
        x_t = schedule.q_sample(x0, t, noise)
        _, pred_x0, var_out = den.predict(x_t, t, cond)
        if clip is not None:
            pred_x0 = pred_x0.clamp(-clip, clip)
        log_var = reverse_log_variance(schedule, t, x_t, variance, var_out)
        terms[:, k] = vlb_term(schedule, x0, x_t, t, pred_x0, log_var, decoder, prior_std=prior_std)
    terms[:, -1] = prior_kl(schedule, x0, prior_std=prior_std)
    return terms


@torch.no_grad()
def nll(
    denoiser: VPDenoiser,
    x0: Tensor,
    cond: Any = None,
    decoder: Decoder = "gaussian",
    variance: FixedVariance | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    clip_denoised: bool | float | None = None,
) -> Tensor:
    """Per-example upper bound on -log p(x_0), ``[B]`` nats: L_T + sum_{t>=2} L_{t-1} + L_0 (Ho et al. eq. 5)
    over all T steps of the denoiser's schedule (the sum of ``nll_terms``; same arguments).

    ``decoder="discretized"`` is the 8-bit image decoder (data in [-1, 1]; the result is then a bound on the
    negative log *probability* of the quantised image); ``"gaussian"`` is a continuous decoder N(x_0_hat, sigma_1^2)
    for audio and vectors (a bound on the negative log *density*).
    """
    return nll_terms(
        denoiser, x0, cond, decoder=decoder, variance=variance, generator=generator, progress=progress,
        clip_denoised=clip_denoised,
    ).sum(dim=1)


def bits_per_dim(nll_nats: Tensor | float, x0_shape_or_num_dims: Sequence[int] | torch.Size | int) -> Tensor | float:
    """nats per example -> bits per dimension: nll / (D ln 2).

    ``x0_shape_or_num_dims`` is either D (an int) or the batch shape ``[B, ...]`` of x_0 (D = product of the
    non-batch sizes).
    """
    if isinstance(x0_shape_or_num_dims, int):
        dims = x0_shape_or_num_dims
    else:
        dims = math.prod(tuple(x0_shape_or_num_dims)[1:])
    if dims < 1:
        raise ValueError(f"need at least one dimension per example, got {x0_shape_or_num_dims!r}")
    return nll_nats / (dims * math.log(2.0))
