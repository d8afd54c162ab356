"""Training losses of denoising diffusion, each a per-example loss ``[B]`` (mean over the non-batch dims).

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,  t ~ U{0..T-1},  eps ~ N(0, I)
    eps-loss (Ho et al. 2020, Algorithm 1):  || eps - eps_theta(x_t, t) ||
    x0-loss:                                 || x_0 - x0_theta(x_t, t) ||
    v-loss (Salimans & Ho 2022):             || v - v_theta(x_t, t) ||,  v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
    hybrid (Nichol & Dhariwal 2021 sec. 3.1): L_simple + lambda L_vlb
    EDM (Karras et al. 2022 eq. 8):          lambda(sigma) || D(x_0 + sigma n; sigma) - x_0 ||^2, ln sigma ~ N(P_mean, P_std^2)

Every loss takes a denoiser (:mod:`diffcore.denoiser`), which knows what the network outputs (eps, x_0 or v), whether
it learns its variance and its PriorGrad prior. ``epsilon_loss``/``x0_loss``/``v_loss`` measure the error in their
named space whatever the parameterisation (the network's output converted when it predicts another quantity);
``diffusion_loss`` is the loss in the denoiser's own prediction space, the one the training engine calls.

PriorGrad (Lee et al. 2022), ``prior_std`` s: eps = s * z with z ~ N(0, I) is both the noise of x_t and the eps
target (v uses that eps; the x0 target is unchanged), and every distance is taken on (pred - target) / s, i.e.
||.||^2 becomes the Mahalanobis norm of Sigma^-1 = diag(s^-2) (l1: mean |pred - target| / s). With s = 1 this is the
plain loss. min-SNR weights need no change: the eps, x0 and v errors divided by s relate by the same per-step
factors as without the prior.

| symbol          | name here                                                         |
| --------------- | ----------------------------------------------------------------- |
| ||.||           | ``norm="l2"`` (mean squared error) or ``"l1"`` (mean absolute error, as lmnt DiffWave trains) |
| SNR_t           | ``schedule.snr(t)`` = abar_t / (1 - abar_t)                        |
| gamma (min-SNR) | ``min_snr_gamma`` (Hang et al. 2023)                              |
| lambda          | ``vlb_weight`` (Nichol & Dhariwal: 0.001)                          |
| w_t             | ``weighting``: per-example weights ``[B]`` or a callable t -> ``[B]`` |
| s               | ``prior_std``: PriorGrad prior std, broadcastable to x_0 (``None`` = N(0, I)) |
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from diffcore.denoiser import EDMDenoiser, PredictionKind, VPDenoiser, require_vp
from diffcore.likelihood import Decoder, reverse_log_variance, vlb_term
from diffcore.schedule import NoiseSchedule
from diffcore.utils import append_dims, mean_flat, randn

__all__ = [
    "UniformTimesteps",
    "min_snr_weights",
    "epsilon_loss",
    "x0_loss",
    "v_loss",
    "hybrid_loss",
    "hybrid_loss_terms",
    "diffusion_loss",
    "diffusion_loss_terms",
    "edm_loss",
]

Norm = Literal["l1", "l2"]
Weighting = Tensor | Callable[[Tensor], Tensor] | None


@dataclass(frozen=True)
class UniformTimesteps:
    """Uniform sampling of training steps t ~ U{0, ..., num_steps - 1} (improved-diffusion ``resample.py``).

    ``sample`` returns ``(t, weights)``: long ``[B]`` steps and float32 importance weights ``[B]`` (all ones for
    the uniform sampler; a non-uniform sampler would return 1 / (T p(t)) so the weighted loss stays unbiased).
    """

    num_steps: int

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, numbers.Integral) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {self.num_steps!r}")

    def sample(
        self, batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        t = torch.randint(0, self.num_steps, (batch,), device=device, generator=generator)
        return t, torch.ones(batch, device=device)


def min_snr_weights(schedule: NoiseSchedule, t: Tensor, gamma: float, space: PredictionKind = "eps") -> Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), float64 ``[B]``, for an error measured in ``space``.

    The weight min(SNR_t, gamma) applies to the x_0-space error; for errors in the other spaces it reads
    eps: min(SNR, gamma) / SNR, x0: min(SNR, gamma), v: min(SNR, gamma) / (SNR + 1). ``diffusion_loss`` measures
    the error in the space the denoiser predicts.
    """
    if not gamma > 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma}")
    snr = schedule.snr(t)
    clipped = snr.clamp(max=gamma)
    if space == "eps":
        # min(SNR, gamma) / SNR -> 1 as SNR -> 0 (a zero-terminal-SNR step would otherwise give 0 / 0).
        return torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr))
    if space == "x0":
        return clipped
    if space == "v":
        return clipped / (snr + 1.0)
    raise ValueError(f"space must be 'eps', 'x0' or 'v', got {space!r}")


def _distance(pred: Tensor, target: Tensor, norm: Norm, prior_std: Tensor | None = None) -> Tensor:
    if prior_std is None:
        if norm == "l2":
            return mean_flat((pred - target) ** 2)
        if norm == "l1":
            return mean_flat((pred - target).abs())
    else:
        # Mahalanobis distance under Sigma = diag(s^2) (PriorGrad's loss); the residual is broadcast to x's shape.
        scaled = (pred - target) / prior_std
        if norm == "l2":
            return mean_flat(scaled**2)
        if norm == "l1":
            return mean_flat(scaled.abs())
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")


def _prepare(den: VPDenoiser, x0, t, noise, generator):
    """``(t, eps, x_t)``: steps, the eps of x_t (the denoiser's ``prior_noise(z)``: z, or s * z under the prior)
    and x_t = q_sample(x0, t, eps)."""
    schedule = den.schedule
    if t is None:
        t, _ = UniformTimesteps(schedule.num_steps).sample(x0.shape[0], x0.device, generator)
    if noise is None:
        noise = randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x0.shape)}")
    eps = den.prior_noise(noise)
    return t, eps, schedule.q_sample(x0, t, eps)


def _apply_weighting(loss: Tensor, t: Tensor, weighting: Weighting) -> Tensor:
    if weighting is None:
        return loss
    w = weighting(t) if callable(weighting) else weighting
    return loss * w.to(device=loss.device, dtype=loss.dtype)


def _target_loss_terms(
    target_kind: PredictionKind,
    denoiser: VPDenoiser,
    x0: Tensor,
    cond,
    norm: Norm,
    t: Tensor | None,
    noise: Tensor | None,
    generator: torch.Generator | None,
    weighting: Weighting,
    with_x0: bool = False,
) -> dict[str, Tensor]:
    """``{"loss", "t"}`` of the loss in ``target_kind``'s space: the weighted per-example loss ``[B]`` and the
    steps; with ``with_x0`` also ``"x0_hat"``, the denoiser's x_0 prediction from the same network call."""
    den = require_vp(denoiser, f"{target_kind}-loss")
    prior_std = den.checked_prior(x0)
    t, eps, x_t = _prepare(den, x0, t, noise, generator)
    out, _ = den.output(x_t, t, cond)
    pred = den.in_space(target_kind, x_t, t, out)
    loss = _apply_weighting(_distance(pred, den.target(target_kind, x0, eps, t), norm, prior_std), t, weighting)
    terms = {"loss": loss, "t": t}
    if with_x0:
        terms["x0_hat"] = den.from_output(x_t, t, out)[1]
    return terms


def _target_loss(target_kind: PredictionKind, denoiser: VPDenoiser, *args: Any) -> Tensor:
    return _target_loss_terms(target_kind, denoiser, *args)["loss"]


def epsilon_loss(
    denoiser: VPDenoiser,
    x0: Tensor,
    cond: Any = None,
    norm: Norm = "l2",
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    weighting: Weighting = None,
) -> Tensor:
    """L_simple of Ho et al. 2020 (Algorithm 1, eq. 14): w_t mean ||eps - eps_hat(x_t, t)||^p, ``[B]``.

    Args:
        denoiser: the model; eps_hat is its output (``prediction="eps"``) or converted from it.
        x0: data ``[B, ...]`` of any rank.
        t: long ``[B]`` steps of ``denoiser.schedule``; drawn uniformly from ``generator`` when ``None``.
        noise: the standard normal z ``[B, ...]`` (eps = z, or s * z under the denoiser's prior); drawn from
            ``generator`` when ``None`` (after t).
        weighting: per-example weights ``[B]``, or a callable ``t -> [B]`` (e.g. min-SNR), or ``None``.

    Under a PriorGrad prior s (``denoiser.prior_std``, e.g. ``[B, 1, T]`` for audio ``[B, 1, T]``): eps = s * z and
    the loss is w_t mean ||(eps - eps_hat) / s||^p.
    """
    return _target_loss("eps", denoiser, x0, cond, norm, t, noise, generator, weighting)


def x0_loss(
    denoiser: VPDenoiser,
    x0: Tensor,
    cond: Any = None,
    norm: Norm = "l2",
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    weighting: Weighting = None,
) -> Tensor:
    """w_t mean ||x_0 - x0_hat(x_t, t)||^p, ``[B]`` (arguments as ``epsilon_loss``; under a prior s:
    mean ||(x_0 - x0_hat) / s||^p)."""
    return _target_loss("x0", denoiser, x0, cond, norm, t, noise, generator, weighting)


def v_loss(
    denoiser: VPDenoiser,
    x0: Tensor,
    cond: Any = None,
    norm: Norm = "l2",
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    weighting: Weighting = None,
) -> Tensor:
    """w_t mean ||v - v_hat(x_t, t)||^p with v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022),
    ``[B]`` (arguments as ``epsilon_loss``; under a prior s, eps = s * z and mean ||(v - v_hat) / s||^p)."""
    return _target_loss("v", denoiser, x0, cond, norm, t, noise, generator, weighting)


def hybrid_loss_terms(
    denoiser: VPDenoiser,
    x0: Tensor,
    cond: Any = None,
    norm: Norm = "l2",
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    weighting: Weighting = None,
    vlb_weight: float = 1e-3,
    decoder: Decoder = "gaussian",
    with_x0: bool = False,
) -> dict[str, Tensor]:
    """The parts of ``hybrid_loss``: dict of ``[B]`` tensors ``loss``, ``simple``, ``vlb`` and the long ``t``; with
    ``with_x0`` also ``x0_hat`` (the denoiser's x_0 prediction from the same network call, with gradients).

    The denoiser must predict eps with a learned variance: its network outputs ``[B, 2C, ...]`` for ``x0`` of
    ``[B, C, ...]``: eps and the variance interpolation nu (the paper's v), Sigma = exp(nu log beta_t + (1 - nu)
    log beta~_t) (Nichol & Dhariwal eq. 15, raw nu, beta~ clipped at t = 1).

    - ``simple``: L_simple on the eps half (``norm``), per dimension.
    - ``vlb``: the bound's term L_t at the sampled step (``likelihood.vlb_term``; decoder NLL at index 0), in
      **bits per dimension**, computed with a stop-gradient on eps so that it trains only nu (Nichol & Dhariwal
      sec. 3.1).
    - ``loss = weighting * (simple + vlb_weight * T * vlb)``: T L_t is the one-sample estimate of the full bound
      L_vlb = sum_t L_t, so ``vlb_weight`` is the paper's lambda (0.001).

    Under a PriorGrad prior s: eps = s * z, ``simple`` is mean ||(eps - eps_hat) / s||^p and ``vlb`` uses the
    posterior and reverse variances scaled by s^2 (``vlb_term(prior_std=...)``).
    """
    den = require_vp(denoiser, "hybrid_loss")
    if not den.learned_variance or den.prediction != "eps":
        raise ValueError("hybrid_loss needs an eps-predicting denoiser with learned_variance=True, got "
                         f"prediction={den.prediction!r}, learned_variance={den.learned_variance}")
    schedule = den.schedule
    prior_std = den.checked_prior(x0)
    t, noise, x_t = _prepare(den, x0, t, noise, generator)
    eps, var_out = den.output(x_t, t, cond)
    simple = _distance(eps, noise, norm, prior_std)
    _, pred_x0 = den.from_output(x_t, t, eps.detach())
    log_var = reverse_log_variance(schedule, t, x_t, None, var_out)
    dims = x0[0].numel()
    vlb = vlb_term(schedule, x0, x_t, t, pred_x0, log_var, decoder, prior_std=prior_std) / (dims * math.log(2.0))
    loss = simple + vlb_weight * schedule.num_steps * vlb
    terms = {"loss": _apply_weighting(loss, t, weighting), "simple": simple, "vlb": vlb, "t": t}
    if with_x0:
        terms["x0_hat"] = den.from_output(x_t, t, eps)[1]
    return terms


def hybrid_loss(
    denoiser: VPDenoiser,
    x0: Tensor,
    cond: Any = None,
    norm: Norm = "l2",
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    weighting: Weighting = None,
    vlb_weight: float = 1e-3,
    decoder: Decoder = "gaussian",
) -> Tensor:
    """L_hybrid = L_simple + lambda L_vlb of Nichol & Dhariwal 2021 for a learned-variance denoiser, ``[B]``.

    See ``hybrid_loss_terms`` for the output layout, units, the stop-gradient and the prior.
    """
    return hybrid_loss_terms(denoiser, x0, cond, norm, t, noise, generator, weighting, vlb_weight, decoder)["loss"]


def edm_loss(
    denoiser: EDMDenoiser,
    x0: Tensor,
    cond: Any = None,
    sigma: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Karras et al. 2022 eq. 8 with Table 1's choices, per example ``[B]`` (mean over the non-batch dims):

        lambda(sigma) || D(x_0 + sigma n; sigma) - x_0 ||^2,   ln sigma ~ N(P_mean, P_std^2),  n ~ N(0, I)

    computed as || F(c_in x, c_noise) - (x_0 - c_skip x) / c_out ||^2, which is the same number since
    lambda = 1 / c_out^2 (EDM's "effective training target").

    Args:
        sigma: noise levels ``[B]``; drawn from ``generator`` (log-normal, ``denoiser.params.p_mean/p_std``) when
            ``None``.
        noise: the standard normal n ``[B, ...]``; drawn from ``generator`` when ``None`` (after sigma).
    """
    if not isinstance(denoiser, EDMDenoiser):
        raise TypeError(f"edm_loss takes an EDMDenoiser, got {type(denoiser).__name__}")
    batch = x0.shape[0]
    if sigma is None:
        z = randn((batch,), generator=generator, device=x0.device, dtype=torch.float64)
        sigma = (z * denoiser.params.p_std + denoiser.params.p_mean).exp()
    sigma = sigma.to(device=x0.device, dtype=torch.float64).reshape(batch)
    if noise is None:
        noise = randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x0.shape)}")
    x = x0 + append_dims(sigma, x0.ndim).to(x0.dtype) * noise
    out, c_skip, c_out = denoiser.raw(x, sigma, cond)
    target = (x0 - c_skip * x) / c_out
    return mean_flat((out - target) ** 2)


def diffusion_loss(
    denoiser: VPDenoiser | EDMDenoiser,
    x0: Tensor,
    cond: Any = None,
    *,
    norm: Norm = "l2",
    min_snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
    timesteps: UniformTimesteps | None = None,
    vlb_weight: float = 1e-3,
    decoder: Decoder = "gaussian",
) -> Tensor:
    """The per-example training loss ``[B]`` the training engine calls, in the denoiser's own terms.

    VP denoiser: draws t from ``timesteps`` (default uniform; its importance weights multiply the loss) and eps
    from ``generator``, and measures the error in the space the network predicts (eps, x_0 or v);
    ``min_snr_gamma`` adds min-SNR-gamma weights for that space; a learned-variance denoiser trains with
    ``hybrid_loss`` (eps prediction only). Under a PriorGrad prior (``denoiser.prior_std``): eps = s * z and the
    Sigma^-1-weighted distance, as in ``epsilon_loss``.

    EDM denoiser: ``edm_loss`` (its own log-normal sigma sampling and weighting; ``norm``, ``min_snr_gamma`` and
    ``timesteps`` do not apply and must be left at their defaults).
    """
    if isinstance(denoiser, EDMDenoiser):
        if norm != "l2" or min_snr_gamma is not None or timesteps is not None:
            raise ValueError("the EDM loss has its own weighting: norm='l2', no min_snr_gamma, no timesteps")
        return edm_loss(denoiser, x0, cond, generator=generator)
    return _vp_loss_terms(require_vp(denoiser, "diffusion_loss"), x0, cond, norm, min_snr_gamma, generator,
                          timesteps, vlb_weight, decoder, with_x0=False)["loss"]


def diffusion_loss_terms(
    denoiser: VPDenoiser,
    x0: Tensor,
    cond: Any = None,
    *,
    norm: Norm = "l2",
    min_snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
    timesteps: UniformTimesteps | None = None,
    vlb_weight: float = 1e-3,
    decoder: Decoder = "gaussian",
) -> dict[str, Tensor]:
    """``diffusion_loss`` of a VP denoiser with what else its one network call gives: ``{"loss" [B], "t" [B],
    "x0_hat" [B, ...]}`` (plus ``simple`` and ``vlb`` for a learned variance). ``x0_hat`` is the denoiser's x_0
    prediction (for any parameterisation, with gradients), for a loss on x_0 such as DiffWave's STFT term."""
    return _vp_loss_terms(require_vp(denoiser, "diffusion_loss_terms"), x0, cond, norm, min_snr_gamma, generator,
                          timesteps, vlb_weight, decoder, with_x0=True)


def _vp_loss_terms(den: VPDenoiser, x0: Tensor, cond: Any, norm: Norm, min_snr_gamma: float | None,
                   generator: torch.Generator | None, timesteps: UniformTimesteps | None, vlb_weight: float,
                   decoder: Decoder, with_x0: bool) -> dict[str, Tensor]:
    schedule = den.schedule
    sampler = timesteps if timesteps is not None else UniformTimesteps(schedule.num_steps)
    t, weights = sampler.sample(x0.shape[0], x0.device, generator)
    weights = weights.to(torch.float64)
    if min_snr_gamma is not None:
        weights = weights * min_snr_weights(schedule, t, min_snr_gamma, den.prediction)
    if den.learned_variance:
        if den.prediction != "eps":
            raise ValueError("a learned variance (hybrid loss) is defined for prediction='eps' only")
        return hybrid_loss_terms(den, x0, cond, norm, t, None, generator, weights, vlb_weight=vlb_weight,
                                 decoder=decoder, with_x0=with_x0)
    return _target_loss_terms(den.prediction, den, x0, cond, norm, t, None, generator, weights, with_x0)
