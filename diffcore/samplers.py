"""Samplers: pure functions from a denoiser and the steps they walk to samples.

All share one signature::

    sampler(denoiser, shape, steps, *, cond=None, generator=None, x_T=None, progress=False, callback=None,
            device=None, dtype=None, project=None, **own_keywords) -> Tensor[shape]

``denoiser`` (:mod:`diffcore.denoiser`) holds the network and its parameterisation (eps, x_0 or v; learned
variance; a PriorGrad prior). ``steps`` is the discretisation walked, as data (:mod:`diffcore.discretization`
makes it): a ``NoiseSchedule`` of steps for the ancestral and DDIM samplers (``respaced``, ``fast_schedule``, the
training schedule itself), a decreasing tensor of sigma levels ending in 0 for Heun and DPM-Solver++
(``karras_sigmas``). A count of steps is never called ``steps`` in the core: the discretisations take it as
``count``. ``x_T`` is the starting point in the variance-preserving space (prior noise, drawn from ``generator``
when not given). ``generator`` must live on ``device``, or be a sequence of generators, one per batch row (each
row's noise then comes from its own generator alone, :func:`diffcore.utils.randn`); with the same seed the output
is bit-identical. ``callback(i, x)`` is called after step ``i`` (0, 1, ... in sampling order) with the current
state.

Projection. ``project(x0_hat, i) -> x0_hat`` (:data:`Projection`, default ``None``) replaces the denoiser's clean
estimate at step ``i`` (the callback's index) before the update is formed from it: a constraint on the data that the
core knows nothing about (diffimage's inpainting keeps known pixels; diffwave's GLA-Grad moves x0_hat toward a mel's
magnitude with Griffin-Lim). It sees x0_hat after ``clip_denoised``; a projection that only acts at some steps
returns its input unchanged at the others. Each sampler uses the projected estimate wherever it used x0_hat: DDPM's
posterior mean, DDIM's x0_hat and the eps_hat implied by it at x_t (as for clipping), D(x; sigma) in Heun's two
evaluations of step ``i`` and in DPM-Solver++'s multistep history. Every sampler's last update returns the last
x0_hat (DDPM's posterior mean at t = 1 up to the rounding of its coefficient 1), so a projection at the last step
holds in the output. ``None`` leaves every output bit-identical.

Prior noise. Every noise a sampler draws, x_T and each step's fresh noise, is the denoiser's prior noise
``denoiser.prior_noise(z)`` of a standard normal z (the one helper that applies a prior; samplers never scale
noise themselves). Under a PriorGrad prior (``denoiser.prior_std`` = s, Lee et al. 2022) that is s * z: x_T = s * z
when not given, every added noise is sigma_t s * z (DDIM's eta part too), and eps_hat predicts the scaled
eps = s * z. The updates that map eps_hat and x0_hat to the next state are unchanged; Heun's ODE
dx/dsigma = (x - D(x; sigma)) / sigma is unchanged and starts from x_T = s * z. A given ``x_T`` is used as is
(draw it from N(0, s^2)).

| symbol                          | name here                              |
| ------------------------------- | -------------------------------------- |
| beta_t, alpha_t, abar_t         | ``steps.betas/alphas/alphas_cumprod``   |
| sigma_t^2 (reverse variance)    | ``variance="beta"`` (beta_t), ``"posterior"`` (beta~_t), ``None`` (learned) |
| eta (DDIM stochasticity)        | ``eta``                                 |
| sigma_i (Karras et al. eq. 5)   | ``steps`` of Heun, DPM-Solver++ (``karras_sigmas(...)``) |
| D(x; sigma)                     | ``denoiser.denoise(x, sigma, cond)``    |
| s (PriorGrad prior std)         | ``denoiser.prior_std`` (``None`` = N(0, I)) |
| s * z (prior noise)             | ``denoiser.prior_noise(z)``             |
| P(x0_hat) at step i (projection) | ``project(x0_hat, i)`` (``None`` = none; :data:`Projection`) |
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence, TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffcore.denoiser import Denoiser, EDMDenoiser, VPDenoiser, require_vp
from diffcore.likelihood import reverse_log_variance
from diffcore.schedule import NoiseSchedule, validate_prior_std
from diffcore.utils import clip_value, randn, resolve_device_dtype

__all__ = ["ddpm_sample", "ddim_sample", "heun_sample", "dpmpp_2m_sample", "Projection"]

Callback = Callable[[int, Tensor], None]
DenoiserT = TypeVar("DenoiserT", VPDenoiser, EDMDenoiser)
Projection = Callable[[Tensor, int], Tensor]
"""``project(x0_hat, i) -> x0_hat`` of the same shape: a constraint applied to the clean estimate at step ``i``
(module docstring)."""


def _projected(project: Projection, x0: Tensor, i: int) -> Tensor:
    """``project(x0, i)``, checked to keep the shape (a projection must not change what the sampler holds)."""
    out = project(x0, i)
    if not isinstance(out, Tensor) or out.shape != x0.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"project(x0_hat, {i}) returned {got}, expected a tensor of shape {tuple(x0.shape)}")
    return out.to(x0.dtype)


def _start(denoiser: DenoiserT, shape, x_T, generator, device, dtype) -> tuple[DenoiserT, Tensor]:
    """The denoiser with its prior checked against the state and cast to it, and the starting state x_T: the one
    given, or prior noise drawn from ``generator`` (:func:`_noise`)."""
    device, dtype = resolve_device_dtype(denoiser.network, x_T, device, dtype)
    if denoiser.prior_std is not None:
        denoiser = denoiser.with_prior(validate_prior_std(denoiser.prior_std, shape, dtype, device))
    if x_T is not None:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        return denoiser, x_T.to(device=device, dtype=dtype)
    return denoiser, _noise(denoiser, shape, generator, device, dtype)


def _noise(denoiser: Denoiser, shape, generator, device, dtype) -> Tensor:
    """The denoiser's prior noise of ``shape``: ``denoiser.prior_noise(z)``, z ~ N(0, I) from ``generator`` (one
    generator, or one per batch row)."""
    return denoiser.prior_noise(randn(shape, generator=generator, device=device, dtype=dtype))


def _checked_sigmas(denoiser: Denoiser, steps: Tensor, what: str) -> Tensor:
    """The sigma levels ``steps`` as float64 on the CPU, refused unless they are decreasing, positive, finite, end
    in 0 and lie within the noise levels the denoiser was trained on."""
    if isinstance(steps, NoiseSchedule):
        raise TypeError(f"{what}: steps are sigma levels (karras_sigmas(denoiser.sigma_min, denoiser.sigma_max, "
                        f"count)), not a NoiseSchedule of steps")
    sigmas = torch.as_tensor(steps, dtype=torch.float64).detach().cpu().reshape(-1)
    if sigmas.numel() < 2 or sigmas[-1] != 0 or not bool((sigmas[:-1] > 0).all()) \
            or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"{what}: steps must be decreasing positive sigma levels ending in 0 "
                         f"(karras_sigmas(...))")
    lo, hi = float(sigmas[-2]), float(sigmas[0])
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"{what} needs finite sigma levels")
    s_min, s_max = denoiser.sigma_min, denoiser.sigma_max
    if lo < s_min * (1 - 1e-9) or hi > s_max * (1 + 1e-9):
        raise ValueError(f"sigma range [{lo}, {hi}] must lie within the denoiser's [{s_min}, {s_max}]")
    return sigmas


def _steps_of(denoiser: VPDenoiser, steps: NoiseSchedule | None, what: str) -> VPDenoiser:
    if steps is None:
        return denoiser
    if not isinstance(steps, NoiseSchedule):
        raise TypeError(f"{what}: steps must be a NoiseSchedule (e.g. respaced(schedule, 50) or "
                        f"fast_schedule(schedule, betas)), got {type(steps).__name__}")
    return denoiser.with_schedule(steps)


@torch.no_grad()
def ddpm_sample(
    denoiser: VPDenoiser,
    shape: Sequence[int],
    steps: NoiseSchedule | None = None,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    project: Projection | None = None,
    variance: Literal["beta", "posterior"] | None = None,
    clip_denoised: bool | float | None = None,
    clip_sample: float | None = None,
) -> Tensor:
    """Ancestral sampling x_{t-1} ~ N(mu~_t(x0_hat, x_t), sigma_t^2 s^2), Algorithm 2 of Ho et al. 2020
    (s = 1 without a prior), over every position of ``steps`` (default: the denoiser's schedule).

    ``steps`` may be the training schedule, a respaced one (``respaced``: improved-diffusion's fewer-step DDPM) or
    DiffWave's aligned fast schedule (``fast_schedule``; with ``variance="posterior"`` this is DiffWave's
    Algorithm 2 — its sigma_s^2 is beta~ of the inference schedule). The mean is written through x0_hat
    (posterior mean eq. 7 of Ho et al.), which equals Algorithm 2's 1/sqrt(alpha_t) (x_t - beta_t /
    sqrt(1 - abar_t) eps) when nothing is clipped. No noise at the last step.

    Args:
        variance: sigma_t^2 = beta_t (``"beta"``) or beta~_t (``"posterior"``), Ho et al. sec. 3.2. ``None``
            (default): the network's learned interpolation (Nichol & Dhariwal eq. 15) for a learned-variance
            denoiser, else ``"beta"``.
        clip_denoised: clamp the predicted x_0 to ``[-c, c]`` before forming the posterior mean (``True`` = 1.0,
            for images in [-1, 1]); ``None``/``False`` = no clamping (then the update is exactly Algorithm 2).
        clip_sample: clamp the state x_{t-1} to ``[-c, c]`` after every step (lmnt's DiffWave inference clamps
            audio to [-1, 1] this way); ``None`` = no clamping.
        (shared keywords: see the module docstring)

    Returns:
        x_0 samples of ``shape`` (``[B, ...]`` of any rank).
    """
    den = _steps_of(require_vp(denoiser, "ddpm_sample"), steps, "ddpm_sample")
    if variance not in ("beta", "posterior", None):
        raise ValueError(f"variance must be 'beta', 'posterior' or None (learned), got {variance!r}")
    if variance is None and not den.learned_variance:
        variance = "beta"
    den, x = _start(den, shape, x_T, generator, device, dtype)
    clip = clip_value(clip_denoised)
    sched = den.schedule
    batch = x.shape[0]
    for i, k in enumerate(tqdm(range(sched.num_steps - 1, -1, -1), disable=not progress, desc="sampling")):
        t = torch.full((batch,), k, device=x.device, dtype=torch.long)
        pred = den.predict(x, t, cond)
        x0 = pred.x0 if clip is None else pred.x0.clamp(-clip, clip)
        if project is not None:
            x0 = _projected(project, x0, i)
        mean, _ = sched.q_posterior(x0, x, t)
        if k > 0:
            if variance is None:
                std = (0.5 * reverse_log_variance(sched, t, x, None, pred.var)).exp()
            else:
                std = sched.at("betas" if variance == "beta" else "posterior_variance", t, x).sqrt()
            x = mean + std * _noise(den, x.shape, generator, x.device, x.dtype)
        else:
            x = mean
        if clip_sample is not None:
            x = x.clamp(-clip_sample, clip_sample)
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def ddim_sample(
    denoiser: VPDenoiser,
    shape: Sequence[int],
    steps: NoiseSchedule,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    project: Projection | None = None,
    eta: float = 0.0,
    clip_denoised: bool | float | None = None,
) -> Tensor:
    """DDIM sampling, Song et al. 2021 eq. 12, over the positions of ``steps`` (e.g. ``respaced(schedule, 50)``).

    Between consecutive kept steps tau_i > tau_{i-1}:

        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps_hat + s z,
        s = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)

    with abar_prev = 1 after the first position, so the last update returns x0_hat. ``eta = 0`` is deterministic
    given ``x_T``; ``eta = 1`` is ancestral sampling on ``steps``. Under a prior s the fresh noise is s z (eps_hat
    already is scaled noise).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    den = _steps_of(require_vp(denoiser, "ddim_sample"), steps, "ddim_sample")
    sub = den.schedule
    den, x = _start(den, shape, x_T, generator, device, dtype)
    clip = clip_value(clip_denoised)
    batch = x.shape[0]
    for i, k in enumerate(tqdm(range(sub.num_steps - 1, -1, -1), disable=not progress, desc="ddim")):
        t = torch.full((batch,), k, device=x.device, dtype=torch.long)
        eps, x0, _ = den.predict(x, t, cond)
        if clip is not None or project is not None:
            x0 = x0 if clip is None else x0.clamp(-clip, clip)
            x0 = x0 if project is None else _projected(project, x0, i)
            eps = sub.predict_eps_from_x0(x, t, x0)
        abar = sub.at("alphas_cumprod", t, x)
        abar_prev = sub.at("alphas_cumprod_prev", t, x)
        s = eta * ((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)).sqrt()
        x = abar_prev.sqrt() * x0 + (1.0 - abar_prev - s**2).clamp(min=0.0).sqrt() * eps
        if eta > 0 and k > 0:
            x = x + s * _noise(den, x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def heun_sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    steps: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    project: Projection | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """2nd-order Heun sampler of Karras et al. 2022 over the noise levels ``steps``: Algorithm 1 (deterministic,
    the default), or Algorithm 2 (stochastic) with ``s_churn`` > 0.

    ``steps``: the sigma levels sigma_0 > ... > sigma_N = 0, a decreasing tensor ``[N + 1]`` ending in 0
    (``karras_sigmas(denoiser.sigma_min, denoiser.sigma_max, N)``).
    The ODE dx/dsigma = (x - D(x; sigma)) / sigma is integrated with Heun steps and a final Euler step to
    sigma = 0 (2N - 1 network calls). D is the denoiser's: a :class:`~diffcore.denoiser.VPDenoiser` in the
    sigma view x = x_vp / sqrt(abar), or an :class:`~diffcore.denoiser.EDMDenoiser`.

    Start: x = start_scale(sigma_0) * x_T with x_T standard normal (times s under a prior): sqrt(1 + sigma_0^2)
    for a VP denoiser (x_T is then the VP prior sample), sigma_0 for EDM. The result is x at sigma = 0.

    Churn (Algorithm 2; the names are the paper's S_churn, S_tmin, S_tmax, S_noise). Before step ``i``, where
    s_tmin <= sigma_i <= s_tmax, the state is moved up to sigma_hat = sigma_i (1 + gamma), gamma =
    min(s_churn / N, sqrt(2) - 1), by adding fresh prior noise of std s_noise * sqrt(sigma_hat^2 - sigma_i^2); the
    Heun step then runs from sigma_hat to sigma_{i+1}. sigma_hat is capped at the denoiser's sigma_max (the first
    level of ``karras_sigmas`` is churned only to there). The added noise undoes part of the earlier steps' errors
    at the cost of more noise for the later ones (the paper's Section 4); ``s_churn`` 0 is Algorithm 1, bit for
    bit, and draws nothing from ``generator`` after x_T.
    """
    if not (0 <= s_churn < math.inf and 0 < s_noise < math.inf and s_tmin <= s_tmax):  # NaN fails too
        raise ValueError(f"heun_sample: s_churn must be finite >= 0, s_noise finite > 0 and s_tmin <= s_tmax, got "
                         f"s_churn={s_churn}, s_noise={s_noise}, s_tmin={s_tmin}, s_tmax={s_tmax}")
    sigmas = _checked_sigmas(denoiser, steps, "heun_sample")
    denoiser, x = _start(denoiser, shape, x_T, generator, device, dtype)
    x = x * denoiser.start_scale(sigmas[0].item())
    n = sigmas.numel() - 1

    def denoised(x: Tensor, sigma: float, i: int) -> Tensor:
        d = denoiser.denoise(x, sigma, cond)
        return d if project is None else _projected(project, d, i)

    gamma = min(s_churn / n, math.sqrt(2.0) - 1.0)
    for i in tqdm(range(n), disable=not progress, desc="heun"):
        s_cur, s_next = sigmas[i].item(), sigmas[i + 1].item()
        if gamma > 0 and s_tmin <= s_cur <= s_tmax:
            s_hat = min(s_cur * (1.0 + gamma), denoiser.sigma_max)
            if s_hat > s_cur:
                z = _noise(denoiser, x.shape, generator, x.device, x.dtype)
                x = x + s_noise * math.sqrt(s_hat**2 - s_cur**2) * z
                s_cur = s_hat
        d = (x - denoised(x, s_cur, i)) / s_cur
        x_next = x + (s_next - s_cur) * d
        if s_next > 0:
            d_next = (x_next - denoised(x_next, s_next, i)) / s_next
            x_next = x + (s_next - s_cur) * 0.5 * (d + d_next)
        x = x_next
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def dpmpp_2m_sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    steps: Tensor,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    project: Projection | None = None,
) -> Tensor:
    """DPM-Solver++(2M), the deterministic second-order multistep solver of Lu et al. 2022 (arXiv 2211.01095,
    Algorithm 2), over the noise levels ``steps``: one network call per level, ``N`` calls for ``N + 1`` sigmas.

    ``steps``: the sigma levels, decreasing ``[N + 1]`` ending in 0, as for :func:`heun_sample`. In the sigma view (x = x_0 + sigma
    eps; alpha = 1) the probability-flow ODE in lambda = -log sigma is solved exactly for the data-prediction
    term: with h_i = lambda_{i+1} - lambda_i and D_i = D(x_i; sigma_i),

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - expm1(-h_i) D'_i,
        D'_i = (1 + 1 / (2 r_i)) D_i - 1 / (2 r_i) D_{i-1},   r_i = h_{i-1} / h_i,

    with D'_0 = D_0 (the first step is DPM-Solver++(1), i.e. DDIM) and the last step to sigma = 0 returning
    D_{N-1} (x = D, as k-diffusion's ``sample_dpmpp_2m`` does). The same denoisers as Heun: a
    :class:`~diffcore.denoiser.VPDenoiser` in its sigma view or an :class:`~diffcore.denoiser.EDMDenoiser`; the
    start is x = start_scale(sigma_0) * x_T. ``callback(i, x)`` after step ``i``.
    """
    sigmas = _checked_sigmas(denoiser, steps, "dpmpp_2m_sample")
    denoiser, x = _start(denoiser, shape, x_T, generator, device, dtype)
    x = x * denoiser.start_scale(sigmas[0].item())
    lambdas = -sigmas[:-1].log()  # lambda = log(alpha / sigma) with alpha = 1; float64 on the CPU
    n = sigmas.numel() - 1
    old = None
    for i in tqdm(range(n), disable=not progress, desc="dpm++2m"):
        s_cur, s_next = sigmas[i].item(), sigmas[i + 1].item()
        d = denoiser.denoise(x, s_cur, cond)
        if project is not None:
            d = _projected(project, d, i)
        if s_next == 0:
            x = d
        else:
            h = (lambdas[i + 1] - lambdas[i]).item()
            if old is None:
                d_hat = d
            else:
                r = (lambdas[i] - lambdas[i - 1]).item() / h
                d_hat = (1.0 + 1.0 / (2.0 * r)) * d - (1.0 / (2.0 * r)) * old
            x = (s_next / s_cur) * x - math.expm1(-h) * d_hat
        old = d
        if callback is not None:
            callback(i, x)
    return x
