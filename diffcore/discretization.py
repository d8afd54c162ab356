"""Discretisations: the steps or noise levels a sampler walks, made apart from the samplers that walk them.

A sampler takes its ``steps``, the discretisation as data; these functions make them (k-diffusion's
``get_sigmas_*`` beside its ``sample_*``). How many steps is a ``count``, never ``steps``:

| discretisation                                   | function                | walked by                     |
| ------------------------------------------------ | ----------------------- | ----------------------------- |
| every step of the training schedule              | the schedule itself     | ``ddpm_sample``               |
| N evenly spaced steps (DDIM, respaced DDPM)      | ``respaced``            | ``ddim_sample``, ``ddpm_sample`` |
| DiffWave's inference schedule at aligned fractional steps (Kong et al. 2021, App. B) | ``fast_schedule`` | ``ddpm_sample(variance="posterior")`` |
| Karras et al. 2022 sigma levels (eq. 5)          | ``karras_sigmas``       | ``heun_sample``, ``dpmpp_2m_sample`` |

A step discretisation is a :class:`~diffcore.schedule.NoiseSchedule` whose ``timestep_map`` names, for each of its
positions, the network's (training) step: integer after respacing, fractional for DiffWave's aligned steps. A
sigma discretisation is a decreasing float64 tensor of noise levels ending in 0.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from diffcore.schedule import NoiseSchedule, evenly_spaced_indices

__all__ = ["respaced", "fast_sampling_steps", "fast_schedule", "karras_sigmas", "evenly_spaced_indices"]


def _float64_array(values: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().to(torch.float64).numpy().copy()
    return np.array(values, dtype=np.float64)


def respaced(schedule: NoiseSchedule, count: int) -> NoiseSchedule:
    """``schedule`` over ``count`` evenly spaced steps, ``round(linspace(0, T - 1, count))`` (both ends kept):
    the subsequence DDIM walks (Song et al. 2021) and improved-diffusion's respaced DDPM."""
    return schedule.respace(evenly_spaced_indices(schedule.num_steps, count))


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
        float64 tensor ``[S]`` of steps of ``schedule`` (in its own index space; ``fast_schedule`` maps them to the
        network's steps for a respaced schedule).

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


def fast_schedule(
    schedule: NoiseSchedule, inference_betas: Sequence[float] | np.ndarray | Tensor
) -> NoiseSchedule:
    """DiffWave's fast sampling schedule (Kong et al. 2021, Algorithm 2 with Appendix B) as a step discretisation.

    The returned schedule has the inference betas gamma_1..gamma_S (so its abar is gamma-bar and its beta~ the
    sigma_s^2 of the paper) and, as ``timestep_map``, the fractional training steps
    ``fast_sampling_steps(schedule, inference_betas)`` mapped to the network's steps. Ancestral sampling over it
    with ``variance="posterior"`` is DiffWave's fast sampler:
    ``ddpm_sample(denoiser, shape, fast_schedule(denoiser.schedule, betas), variance="posterior")``.
    """
    steps = fast_sampling_steps(schedule, inference_betas)
    network_steps = schedule.model_timesteps(steps).numpy()
    if np.any(np.diff(network_steps) <= 0):
        raise ValueError("inference_betas must give strictly increasing noise levels (every gamma > 0)")
    return NoiseSchedule(betas=_float64_array(inference_betas), timestep_map=network_steps)


def karras_sigmas(sigma_min: float, sigma_max: float, count: int, rho: float = 7.0) -> Tensor:
    """Noise levels of Karras et al. 2022 eq. 5, float64 ``[count + 1]``, decreasing, with a final 0: the ``steps``
    of ``heun_sample`` and ``dpmpp_2m_sample``.

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i < N = ``count``;
    sigma_N = 0. For a VP denoiser the trained range is ``(denoiser.sigma_min, denoiser.sigma_max)``.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not 0 < sigma_min <= sigma_max or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min <= sigma_max < inf, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, count, dtype=torch.float64) if count > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
