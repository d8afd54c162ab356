"""Samplers: pure functions from a network and a ``NoiseSchedule`` to samples.

All share one signature::

    sampler(model, shape, schedule, *, cond=None, generator=None, x_T=None, progress=False, callback=None,
            device=None, dtype=None, prediction="eps", prior_std=None, **own_keywords) -> Tensor[shape]

``model(x_t, t, cond=cond)`` follows the diffcore model contract (``t`` = the *original* network's step indices,
``schedule.model_timesteps``); ``prediction`` says whether it outputs eps, x_0 or v. ``x_T`` is the starting
point in the variance-preserving space (prior noise, drawn from ``generator`` when not given).
``generator`` must live on ``device``; with the same seed the output is bit-identical. ``callback(i, x)`` is
called after step ``i`` (0, 1, ... in sampling order) with the current state.

``prior_std`` s (PriorGrad, Lee et al. 2022; a tensor broadcastable to ``shape``, e.g. ``[B, 1, T]`` for audio
``[B, 1, T]``) replaces the N(0, I) prior with N(0, diag(s^2)): x_T = s * z when not given, every added
noise is sigma_t s * z (DDIM's eta part too), and the network is taken to predict the scaled eps = s * z. The
updates that map eps_hat and x0_hat to the next state are unchanged; Heun's ODE dx/dsigma = (x - D(x; sigma)) / sigma
is unchanged and starts from x_T = s * z. A given ``x_T`` is used as is (draw it from N(0, s^2)).

| symbol                          | name here                              |
| ------------------------------- | -------------------------------------- |
| beta_t, alpha_t, abar_t         | ``schedule.betas/alphas/alphas_cumprod`` |
| sigma_t^2 (reverse variance)    | ``variance="beta"`` (beta_t) or ``"posterior"`` (beta~_t) |
| eta (DDIM stochasticity)        | ``eta``                                 |
| gamma_s, gamma-bar_s (DiffWave fast schedule) | ``inference_betas``, its cumprod |
| t_s^align (fractional training step) | ``fast_sampling_steps(...)[s]``   |
| sigma (EDM) = sqrt((1-abar)/abar) | ``schedule.sigmas``                   |
| D(x; sigma) (EDM denoiser)      | ``x - sigma * eps(x * sqrt(abar(sigma)), t(sigma))`` |
| s (PriorGrad prior std)         | ``prior_std`` (``None`` = N(0, I))      |
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffcore.schedule import NoiseSchedule, Prediction, eps_x0_from_output, evenly_spaced_indices, validate_prior_std
from diffcore.utils import Denoiser, clip_value, randn, resolve_device_dtype

__all__ = ["ddpm_sample", "ddim_sample", "fast_sample", "fast_sampling_steps", "heun_sample", "karras_sigmas"]

Callback = Callable[[int, Tensor], None]


def _start(model, shape, x_T, generator, device, dtype, prior_std=None) -> tuple[Tensor, Tensor | None]:
    """The starting state x_T (given, or z resp. s * z drawn from ``generator``) and the checked, cast prior std."""
    device, dtype = resolve_device_dtype(model, x_T, device, dtype)
    prior_std = validate_prior_std(prior_std, shape, dtype, device)
    if x_T is not None:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        return x_T.to(device=device, dtype=dtype), prior_std
    x = randn(shape, generator=generator, device=device, dtype=dtype)
    if prior_std is not None:
        x = prior_std * x
    return x, prior_std


def _noise(x: Tensor, generator, prior_std: Tensor | None) -> Tensor:
    """z ~ N(0, I) shaped like ``x``, times s under a prior."""
    z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return z if prior_std is None else prior_std * z


def _float64_array(values: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().to(torch.float64).numpy().copy()
    return np.array(values, dtype=np.float64)


def _step_dtype(x: Tensor) -> torch.dtype:
    """dtype of fractional steps passed to the network: float64 for float64 runs, else float32 (float16 cannot
    resolve fractions of a step near t = 1000)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _ancestral_loop(
    model: Denoiser,
    x: Tensor,
    steps_schedule: NoiseSchedule,
    model_t: Callable[[int], Tensor],
    *,
    cond,
    generator,
    variance: Literal["beta", "posterior"],
    clip: float | None,
    prediction: Prediction,
    progress: bool,
    callback: Callback | None,
    clip_sample: float | None = None,
    prior_std: Tensor | None = None,
) -> Tensor:
    """Ancestral sampling x_{t-1} ~ N(mu~_t(x0_hat, x_t), sigma_t^2 s^2) over ``steps_schedule`` (Ho et al. Alg. 2;
    s = 1 without a prior).

    The mean is written through x0_hat (posterior mean eq. 7 of Ho et al.), which equals Algorithm 2's
    1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps) when nothing is clipped. No noise at the last step.
    """
    if variance not in ("beta", "posterior"):
        raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")
    var_name = "betas" if variance == "beta" else "posterior_variance"
    n = steps_schedule.num_steps
    batch = x.shape[0]
    for i, k in enumerate(tqdm(range(n - 1, -1, -1), disable=not progress, desc="sampling")):
        t = torch.full((batch,), k, device=x.device, dtype=torch.long)
        out = model(x, model_t(k).expand(batch).contiguous(), cond=cond)
        _, x0 = steps_schedule.eps_x0_from_output(x, t, out, prediction)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        mean, _ = steps_schedule.q_posterior(x0, x, t)
        if k > 0:
            std = steps_schedule.at(var_name, t, x).sqrt()
            x = mean + std * _noise(x, generator, prior_std)
        else:
            x = mean
        if clip_sample is not None:
            x = x.clamp(-clip_sample, clip_sample)
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def ddpm_sample(
    model: Denoiser,
    shape: Sequence[int],
    schedule: NoiseSchedule,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    prediction: Prediction = "eps",
    variance: Literal["beta", "posterior"] = "beta",
    clip_denoised: bool | float | None = None,
    clip_sample: float | None = None,
    prior_std: Tensor | None = None,
) -> Tensor:
    """Ancestral DDPM sampling, Algorithm 2 of Ho et al. 2020, over every step of ``schedule``.

    Args:
        variance: sigma_t^2 = beta_t (``"beta"``) or beta~_t (``"posterior"``), Ho et al. sec. 3.2.
        clip_denoised: clamp the predicted x_0 to ``[-c, c]`` before forming the posterior mean (``True`` = 1.0,
            for images in [-1, 1]); ``None``/``False`` = no clamping (then the update is exactly Algorithm 2).
        clip_sample: clamp the state x_{t-1} to ``[-c, c]`` after every step (lmnt's DiffWave inference clamps
            audio to [-1, 1] this way); ``None`` = no clamping.
        (shared keywords: see the module docstring)

    Returns:
        x_0 samples of ``shape`` (``[B, ...]`` of any rank).
    """
    x, prior_std = _start(model, shape, x_T, generator, device, dtype, prior_std)
    tmap = torch.tensor(schedule.timestep_map, device=x.device)
    return _ancestral_loop(
        model, x, schedule, lambda k: tmap[k : k + 1], cond=cond, generator=generator, variance=variance,
        clip=clip_value(clip_denoised), prediction=prediction, progress=progress, callback=callback,
        clip_sample=clip_sample, prior_std=prior_std,
    )


@torch.no_grad()
def ddim_sample(
    model: Denoiser,
    shape: Sequence[int],
    schedule: NoiseSchedule,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    prediction: Prediction = "eps",
    steps: int = 50,
    eta: float = 0.0,
    clip_denoised: bool | float | None = None,
    prior_std: Tensor | None = None,
) -> Tensor:
    """DDIM sampling, Song et al. 2021 eq. 12, over ``steps`` evenly spaced steps of ``schedule``.

    The subsequence is ``round(linspace(0, T - 1, steps))`` (``evenly_spaced_indices``): it always contains the
    first step (index 0, paper t = 1) and the last (T - 1). Between consecutive kept steps tau_i > tau_{i-1}:

        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - s^2) eps_hat + s z,
        s = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)

    with abar_prev = 1 after index 0, so the last update returns x0_hat. ``eta = 0`` is deterministic given
    ``x_T``; ``eta = 1`` is ancestral sampling on the respaced schedule. Under a ``prior_std`` s the fresh noise
    is s z (eps_hat already is scaled noise).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    sub = schedule.respace(evenly_spaced_indices(schedule.num_steps, steps))
    x, prior_std = _start(model, shape, x_T, generator, device, dtype, prior_std)
    clip = clip_value(clip_denoised)
    batch = x.shape[0]
    for i, k in enumerate(tqdm(range(sub.num_steps - 1, -1, -1), disable=not progress, desc="ddim")):
        t = torch.full((batch,), k, device=x.device, dtype=torch.long)
        out = model(x, sub.model_timesteps(t), cond=cond)
        eps, x0 = sub.eps_x0_from_output(x, t, out, prediction)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            eps = sub.predict_eps_from_x0(x, t, x0)
        abar = sub.at("alphas_cumprod", t, x)
        abar_prev = sub.at("alphas_cumprod_prev", t, x)
        s = eta * ((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)).sqrt()
        x = abar_prev.sqrt() * x0 + (1.0 - abar_prev - s**2).clamp(min=0.0).sqrt() * eps
        if eta > 0 and k > 0:
            x = x + s * _noise(x, generator, prior_std)
        if callback is not None:
            callback(i, x)
    return x


def fast_sampling_steps(schedule: NoiseSchedule, inference_betas: Sequence[float] | np.ndarray | Tensor) -> Tensor:
    """Fractional training steps aligned with a short inference schedule (Kong et al. 2021, DiffWave, App. B).

    With gamma-bar_s = prod_{j<=s} (1 - gamma_j) the inference noise levels and abar the training schedule, step s
    is aligned with the training step

        t_s = t + (sqrt(abar_t) - sqrt(gamma-bar_s)) / (sqrt(abar_t) - sqrt(abar_{t+1})),
        where abar_{t+1} <= gamma-bar_s <= abar_t,

    i.e. the point where sqrt(abar), linearly interpolated between integer steps, equals sqrt(gamma-bar_s).
    Index convention: ``t`` is the 0-based array index (``abar_t = schedule.alphas_cumprod[t]``), so the result is
    directly a fractional 0-based step for the network (0.0 = the paper's t = 1); the paper's 1-based formula
    gives the same value plus one. gamma-bar_s above abar_0 by less than 1e-12 (relative) is aligned to 0.

    Returns:
        float64 tensor ``[S]`` of steps of ``schedule`` (in its own index space; apply
        ``schedule.model_timesteps`` for a respaced schedule).

    Raises:
        ValueError if some gamma-bar_s lies outside [abar_{T-1}, abar_0].
    """
    gammas = _float64_array(inference_betas)
    if gammas.ndim != 1 or gammas.size == 0:
        raise ValueError("inference_betas must be a non-empty 1-D sequence")
    gbar = np.cumprod(1.0 - gammas)
    abar = schedule.alphas_cumprod
    root = np.sqrt(abar)
    out = np.empty(gbar.size, dtype=np.float64)
    for s, g in enumerate(gbar):
        if g > abar[0]:
            if g - abar[0] <= 1e-12 * abar[0]:
                out[s] = 0.0
                continue
            raise ValueError(f"inference step {s}: gamma-bar={g:.6g} is above the first training abar={abar[0]:.6g};"
                             " the inference schedule starts with less noise than the training schedule")
        if g < abar[-1]:
            raise ValueError(f"inference step {s}: gamma-bar={g:.6g} is below the last training abar="
                             f"{abar[-1]:.6g}; the inference schedule goes beyond the training noise levels")
        if schedule.num_steps == 1 or g == abar[0]:
            out[s] = 0.0
            continue
        # abar is strictly decreasing: the first index whose abar is <= g closes the bracket [t, t + 1].
        t = int(np.argmax(abar <= g)) - 1
        t = max(t, 0)
        out[s] = t + (root[t] - math.sqrt(g)) / (root[t] - root[t + 1])
    return torch.from_numpy(out)


@torch.no_grad()
def fast_sample(
    model: Denoiser,
    shape: Sequence[int],
    schedule: NoiseSchedule,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    prediction: Prediction = "eps",
    inference_betas: Sequence[float] | np.ndarray | Tensor = (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5),
    clip_sample: float | None = None,
    prior_std: Tensor | None = None,
) -> Tensor:
    """DiffWave's fast sampling (Kong et al. 2021, Algorithm 2 with the schedule of Appendix B).

    Runs the ancestral update of the short *inference* schedule gamma (its own alpha, abar and
    sigma_s^2 = beta~_s of gamma), calling the network at the fractional training steps
    ``fast_sampling_steps(schedule, inference_betas)``. ``schedule`` is the network's training schedule.
    Conversions of x_0/v outputs use the inference noise level gamma-bar_s.

    Args:
        inference_betas: gamma_1..gamma_S (DiffWave base: 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5).
        clip_sample: clamp the state to ``[-c, c]`` after every step (DiffWave's waveform clamp to [-1, 1]);
            ``None`` = no clamping.
    """
    steps = fast_sampling_steps(schedule, inference_betas)
    inference = NoiseSchedule.from_betas(_float64_array(inference_betas))
    x, prior_std = _start(model, shape, x_T, generator, device, dtype, prior_std)
    model_steps = schedule.model_timesteps(steps.to(x.device)).to(_step_dtype(x))
    return _ancestral_loop(
        model, x, inference, lambda k: model_steps[k : k + 1], cond=cond, generator=generator,
        variance="posterior", clip=None, prediction=prediction, progress=progress, callback=callback,
        clip_sample=clip_sample, prior_std=prior_std,
    )


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    """Noise levels of Karras et al. 2022 eq. 5, float64 ``[steps + 1]``, decreasing, with a final 0.

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i < N; sigma_N = 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min <= sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min <= sigma_max < inf, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def heun_sample(
    model: Denoiser,
    shape: Sequence[int],
    schedule: NoiseSchedule,
    *,
    cond: Any = None,
    generator: torch.Generator | None = None,
    x_T: Tensor | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    prediction: Prediction = "eps",
    steps: int = 18,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
    prior_std: Tensor | None = None,
) -> Tensor:
    """Deterministic 2nd-order Heun sampler, Algorithm 1 of Karras et al. 2022, driving a VP (DDPM) network.

    In the EDM view x = x_vp / sqrt(abar) with sigma = sqrt((1 - abar) / abar), so sqrt(abar(sigma)) =
    1 / sqrt(1 + sigma^2), and the denoiser is D(x; sigma) = x - sigma eps(x sqrt(abar(sigma)), t(sigma)), where
    t(sigma) is the fractional step found by linear interpolation of log sigma over ``schedule.sigmas``. The ODE
    dx/dsigma = (x - D(x; sigma)) / sigma is integrated over ``karras_sigmas(sigma_min, sigma_max, steps, rho)``:
    Heun steps, then a final Euler step to sigma = 0 (2 * steps - 1 network calls).

    ``x_T`` (standard normal in VP space) starts the ODE at x = x_T / sqrt(abar(sigma_max)). Default sigma range:
    ``schedule.sigmas[0]`` .. ``schedule.sigmas[T - 1]``.

    Under a ``prior_std`` s the state is x = x_0 + sigma s z and eps_hat predicts s z, so the ODE keeps its form
    and only the start changes: x_T = s z, i.e. x = sqrt(1 + sigma_max^2) s z.
    """
    sig_table = torch.tensor(schedule.sigmas)
    if not torch.isfinite(sig_table).all():
        raise ValueError("heun_sample needs finite sigmas (a schedule with some beta = 1 has sigma = inf)")
    sigma_min = float(sig_table[0]) if sigma_min is None else float(sigma_min)
    sigma_max = float(sig_table[-1]) if sigma_max is None else float(sigma_max)
    if sigma_min < float(sig_table[0]) * (1 - 1e-9) or sigma_max > float(sig_table[-1]) * (1 + 1e-9):
        raise ValueError(f"sigma range [{sigma_min}, {sigma_max}] must lie within the schedule's "
                         f"[{float(sig_table[0])}, {float(sig_table[-1])}]")
    sigmas = karras_sigmas(sigma_min, sigma_max, steps, rho)
    log_table = sig_table.log().numpy()
    index = np.arange(schedule.num_steps, dtype=np.float64)

    x, _ = _start(model, shape, x_T, generator, device, dtype, prior_std)
    batch = x.shape[0]
    x = x * math.sqrt(1.0 + sigmas[0].item() ** 2)

    def eps_hat(x_edm: Tensor, sigma: float) -> Tensor:
        sqrt_abar = 1.0 / math.sqrt(1.0 + sigma**2)
        x_vp = x_edm * sqrt_abar
        t_float = float(np.interp(math.log(sigma), log_table, index)) if schedule.num_steps > 1 else 0.0
        t = torch.full((batch,), t_float, device=x.device, dtype=torch.float64)
        t_model = schedule.model_timesteps(t).to(_step_dtype(x))
        out = model(x_vp, t_model, cond=cond)
        eps, _ = eps_x0_from_output(
            out, x_vp, torch.tensor(sqrt_abar, dtype=x.dtype, device=x.device),
            torch.tensor(sigma * sqrt_abar, dtype=x.dtype, device=x.device), prediction,
        )
        return eps  # (x - D(x; sigma)) / sigma

    for i in tqdm(range(steps), disable=not progress, desc="heun"):
        s_cur, s_next = sigmas[i].item(), sigmas[i + 1].item()
        d = eps_hat(x, s_cur)
        x_next = x + (s_next - s_cur) * d
        if s_next > 0:
            d_next = eps_hat(x_next, s_next)
            x_next = x + (s_next - s_cur) * 0.5 * (d + d_next)
        x = x_next
        if callback is not None:
            callback(i, x)
    return x
