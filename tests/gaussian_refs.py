"""Closed-form references for testing diffusion mathematics on Gaussian and Gaussian-mixture data.

Written from first principles (numpy / plain torch), independently of diffcore's implementation, so tests can
compare diffcore against them.

For data x_0 ~ N(m, s^2 I) and x_t = sqrt(a) x_0 + sqrt(1 - a) eps (a = abar_t):
    x_t ~ N(sqrt(a) m, (a s^2 + 1 - a) I),
    E[eps | x_t]  = sqrt(1 - a) (x_t - sqrt(a) m) / (a s^2 + 1 - a),
    Var[x_0 | x_t] = s^2 (1 - a) / (a s^2 + 1 - a),   Var[eps | x_t] = a s^2 / (a s^2 + 1 - a).
A mixture's exact eps is the responsibility-weighted sum of its components' eps.

PriorGrad prior N(0, diag(p^2)) (p = ``prior_std``): eps = p z with z ~ N(0, I), so per element
    x_t ~ N(sqrt(a) m, a s^2 + (1 - a) p^2),
    E[eps | x_t]  = sqrt(1 - a) p^2 (x_t - sqrt(a) m) / (a s^2 + (1 - a) p^2),
    Var[x_0 | x_t] = s^2 (1 - a) p^2 / (a s^2 + (1 - a) p^2),  Var[eps | x_t] = a s^2 p^2 / (a s^2 + (1 - a) p^2).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

AbarFn = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------------------------------
# abar at (possibly fractional) steps, one function per interpolation convention


def abar_exact(abar: np.ndarray) -> AbarFn:
    """abar at integer steps only (float steps must be integral)."""
    table = torch.tensor(np.asarray(abar, dtype=np.float64))

    def fn(t: Tensor) -> Tensor:
        idx = t.to(torch.float64)
        if not torch.equal(idx, idx.round()):
            raise AssertionError("this reference model accepts integer steps only")
        return table[idx.long().cpu()].to(t.device)

    return fn


def abar_sqrt_linear(abar: np.ndarray) -> AbarFn:
    """abar(t) with sqrt(abar) linearly interpolated between integer steps (DiffWave's fast-sampling alignment)."""
    root = np.sqrt(np.asarray(abar, dtype=np.float64))
    grid = np.arange(root.size, dtype=np.float64)

    def fn(t: Tensor) -> Tensor:
        vals = np.interp(t.detach().cpu().double().numpy(), grid, root)
        return torch.tensor(vals**2, device=t.device)

    return fn


def abar_log_sigma_linear(abar: np.ndarray) -> AbarFn:
    """abar(t) with log sigma = 0.5 log((1 - abar) / abar) linearly interpolated (Karras-style t(sigma))."""
    abar = np.asarray(abar, dtype=np.float64)
    log_sigma = 0.5 * np.log((1.0 - abar) / abar)
    grid = np.arange(abar.size, dtype=np.float64)

    def fn(t: Tensor) -> Tensor:
        sig2 = np.exp(2.0 * np.interp(t.detach().cpu().double().numpy(), grid, log_sigma))
        return torch.tensor(1.0 / (1.0 + sig2), device=t.device)

    return fn


def _bcast(a: Tensor, x: Tensor) -> Tensor:
    return a.to(x.dtype).reshape(a.shape + (1,) * (x.ndim - a.ndim))


# ---------------------------------------------------------------------------------------------------------------
# the parameterisation, written out independently of diffcore.denoiser (x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps)


def _coefs(schedule, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    return schedule.at("sqrt_alphas_cumprod", t, like), schedule.at("sqrt_one_minus_alphas_cumprod", t, like)


def x0_from_eps(schedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    a, b = _coefs(schedule, t, x_t)
    return (x_t - b * eps) / a


def v_of(schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022)."""
    a, b = _coefs(schedule, t, x0)
    return a * eps - b * x0


def v_from_eps(schedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """v of the x_0 that ``eps`` implies at ``x_t``."""
    return v_of(schedule, x0_from_eps(schedule, x_t, t, eps), t, eps)


# ---------------------------------------------------------------------------------------------------------------
# exact denoisers


class GaussianEps:
    """Exact eps-predictor E[eps | x_t] for data N(mean, std^2 I) (mean: scalar or per-dimension).

    With ``prior_std`` p (a tensor broadcastable to x_t; ``std`` may then be one too) it is the exact predictor of
    the PriorGrad noise eps = p z for data N(mean, diag(std^2)).
    """

    def __init__(self, mean: float | Tensor, std: float | Tensor, abar_fn: AbarFn, prior_std: Tensor | None = None):
        self.mean, self.std, self.abar_fn, self.prior_std = mean, std, abar_fn, prior_std

    def __call__(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        a = _bcast(self.abar_fn(t), x_t)
        mean = torch.as_tensor(self.mean, dtype=x_t.dtype, device=x_t.device)
        if self.prior_std is None:
            return (1 - a).sqrt() * (x_t - a.sqrt() * mean) / (a * self.std**2 + 1 - a)
        p2 = torch.as_tensor(self.prior_std, dtype=x_t.dtype, device=x_t.device) ** 2
        std = torch.as_tensor(self.std, dtype=x_t.dtype, device=x_t.device)
        return (1 - a).sqrt() * p2 * (x_t - a.sqrt() * mean) / (a * std**2 + (1 - a) * p2)

    def x0(self, x_t: Tensor, t: Tensor) -> Tensor:
        """E[x_0 | x_t]."""
        a = _bcast(self.abar_fn(t), x_t)
        return (x_t - (1 - a).sqrt() * self(x_t, t)) / a.sqrt()


class MixtureEps:
    """Exact eps-predictor for the mixture sum_k w_k N(means[k], stds[k]^2 I) in D dims (inputs ``[B, D]``)."""

    def __init__(self, weights: Sequence[float], means: Tensor, stds: Sequence[float], abar_fn: AbarFn):
        self.logw = torch.tensor(weights, dtype=torch.float64).log()
        self.means = torch.as_tensor(means, dtype=torch.float64)  # [K, D]
        self.stds = torch.tensor(stds, dtype=torch.float64)  # [K]
        self.abar_fn = abar_fn
        self.calls = 0

    def __call__(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        self.calls += 1
        x = x_t.to(torch.float64)
        a = self.abar_fn(t).to(torch.float64).reshape(-1, 1, 1)  # [B, 1, 1]
        var = a * self.stds.reshape(1, -1, 1) ** 2 + 1 - a  # [B, K, 1]
        diff = x[:, None, :] - a.sqrt() * self.means[None]  # [B, K, D]
        dim = x.shape[1]
        logp = self.logw[None] - 0.5 * dim * var[..., 0].log() - 0.5 * (diff**2).sum(-1) / var[..., 0]
        resp = torch.softmax(logp, dim=1)[..., None]  # [B, K, 1]
        eps = ((1 - a).sqrt() * diff / var * resp).sum(1)
        return eps.to(x_t.dtype)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n exact samples ``[n, D]`` and their component labels ``[n]``."""
        k = torch.multinomial(self.logw.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z, k


# ---------------------------------------------------------------------------------------------------------------
# the expected variational bound for Gaussian data with the exact denoiser


def gaussian_expected_bound(
    betas: np.ndarray,
    mean: np.ndarray | float,
    std: np.ndarray | float,
    dims: int,
    variance: str = "beta",
    prior_std: np.ndarray | float | None = None,
) -> tuple[float, np.ndarray]:
    """E_q[L] (nats per example) and the expected per-step terms ``[T + 1]`` (L_0 .. L_{T-1}, L_T).

    With the exact E[x_0 | x_t], model and true posterior means differ by c1_t (x_0 - E[x_0 | x_t]), so
    E KL = 0.5 (log(sig2 / beta~) + beta~ / sig2 - 1 + c1^2 Var[x_0 | x_t] / sig2) per dimension;
    the decoder term is 0.5 log(2 pi sig2_1) + Var[x_0 | x_1] / (2 sig2_1); the prior term is
    0.5 (-log(1 - a_T) + (1 - a_T) + a_T E[x_0^2] - 1).

    ``mean``, ``std`` and ``prior_std`` p are scalars or per-dimension ``[dims]``. Under the PriorGrad prior every
    variance (beta~, sig2, the prior's 1) is multiplied by p^2, Var[x_0 | x_t] is as in the module docstring, and
    the prior term reads 0.5 (-log(1 - a_T) + (1 - a_T) + a_T E[x_0^2] / p^2 - 1).
    """
    betas = np.asarray(betas, dtype=np.float64)
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), (dims,))
    return _gaussian_expected_bound_diag(betas, mean, std, dims, variance, 1.0 if prior_std is None else prior_std)


def _gaussian_expected_bound_diag(betas, mean, std, dims, variance, prior_std) -> tuple[float, np.ndarray]:
    """``gaussian_expected_bound`` per dimension: std and prior std p vary per element (arrays ``[T, D]``)."""
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), (dims,))
    p2 = np.broadcast_to(np.asarray(prior_std, dtype=np.float64), (dims,)) ** 2
    abar = np.cumprod(1.0 - betas)[:, None]
    abar_prev = np.concatenate([[1.0], abar[:-1, 0]])[:, None]
    b = betas[:, None]
    post_var = b * (1.0 - abar_prev) / (1.0 - abar)  # beta~ of the unit prior; times p^2 below
    c1 = b * np.sqrt(abar_prev) / (1.0 - abar)
    var_x0 = std**2 * (1.0 - abar) * p2 / (abar * std**2 + (1.0 - abar) * p2)  # [T, D]
    if variance == "beta":
        sig2 = b.copy()
    elif variance == "posterior":
        sig2 = post_var.copy()
        sig2[0] = post_var[1]
    else:
        raise ValueError(variance)
    terms = np.empty(betas.size + 1)
    terms[0] = np.sum(0.5 * np.log(2 * np.pi * sig2[0] * p2) + var_x0[0] / (2 * sig2[0] * p2))
    k = slice(1, betas.size)
    terms[1:-1] = np.sum(0.5 * (np.log(sig2[k] / post_var[k]) + post_var[k] / sig2[k] - 1
                                + c1[k] ** 2 * var_x0[k] / (sig2[k] * p2)), axis=1)
    a_t = abar[-1, 0]
    terms[-1] = np.sum(0.5 * (-np.log(1 - a_t) + (1 - a_t) + a_t * (mean**2 + std**2) / p2 - 1))
    return float(terms.sum()), terms


def gaussian_entropy(std: float, dims: int) -> float:
    """Differential entropy of N(m, std^2 I_dims) in nats = exact -E log p(x_0)."""
    return 0.5 * dims * math.log(2 * math.pi * math.e * std**2)


# ---------------------------------------------------------------------------------------------------------------
# 1-D mixture: independent numpy versions of the samplers' maps and of their output distributions


class Mixture1D:
    """A 1-D Gaussian mixture with exact eps at any noise level abar (numpy, float64)."""

    def __init__(self, weights: Sequence[float], means: Sequence[float], stds: Sequence[float]):
        self.w = np.asarray(weights, dtype=np.float64)
        self.m = np.asarray(means, dtype=np.float64)
        self.s = np.asarray(stds, dtype=np.float64)

    def torch_model(self, abar_fn: AbarFn) -> MixtureEps:
        return MixtureEps(self.w.tolist(), torch.tensor(self.m)[:, None], self.s.tolist(), abar_fn)

    def eps(self, x: np.ndarray, a: float) -> np.ndarray:
        var = a * self.s**2 + 1 - a  # [K]
        diff = x[:, None] - math.sqrt(a) * self.m  # [N, K]
        logp = np.log(self.w) - 0.5 * np.log(var) - 0.5 * diff**2 / var
        resp = np.exp(logp - logp.max(1, keepdims=True))
        resp /= resp.sum(1, keepdims=True)
        return (resp * math.sqrt(1 - a) * diff / var).sum(1)

    def density(self, x: np.ndarray, a: float = 1.0) -> np.ndarray:
        """Density of sqrt(a) x_0 + sqrt(1 - a) eps."""
        var = a * self.s**2 + 1 - a
        return (self.w / np.sqrt(2 * np.pi * var) * np.exp(-0.5 * (x[:, None] - math.sqrt(a) * self.m) ** 2 / var)).sum(1)


def ddim_map(mix: Mixture1D, abar: np.ndarray, keep: Sequence[int], x: np.ndarray) -> np.ndarray:
    """Deterministic DDIM (eta = 0, Song et al. eq. 12) over the kept steps, from x_T = ``x``."""
    a_seq = [abar[k] for k in keep]
    for j in range(len(a_seq) - 1, -1, -1):
        a = a_seq[j]
        a_prev = a_seq[j - 1] if j > 0 else 1.0
        eps = mix.eps(x, a)
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def heun_map(mix: Mixture1D, sigma_min: float, sigma_max: float, steps: int, rho: float, z: np.ndarray) -> np.ndarray:
    """Karras et al. Algorithm 1 (no churn) on dx/dsigma = eps(x / sqrt(1 + sigma^2), abar = 1 / (1 + sigma^2)),
    starting at x = z sqrt(1 + sigma_max^2)."""
    i = np.arange(steps)
    ramp = i / (steps - 1)
    sig = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    sig = np.append(sig, 0.0)

    def slope(x, s):
        a = 1.0 / (1.0 + s * s)
        return mix.eps(x * math.sqrt(a), a)

    x = z * math.sqrt(1 + sigma_max**2)
    for n in range(steps):
        d = slope(x, sig[n])
        x_next = x + (sig[n + 1] - sig[n]) * d
        if sig[n + 1] > 0:
            x_next = x + (sig[n + 1] - sig[n]) * 0.5 * (d + slope(x_next, sig[n + 1]))
        x = x_next
    return x


def heun_churn_law(m: float, s: float, sigmas: Sequence[float], churn: float, tmin: float, tmax: float,
                   noise: float, cap: float) -> tuple[float, float]:
    """The exact law (mean, variance) of Karras et al. Algorithm 2 (stochastic Heun) for N(m, s^2) data and its
    exact denoiser D(x; sigma) = m + s^2 / (s^2 + sigma^2) (x - m), started at x = sigmas[0] z, z ~ N(0, 1).

    Every operation is affine in x - m with independent Gaussian noise, so the law is carried exactly: the churn
    (sigma_hat = min(sigma (1 + gamma), cap) where tmin <= sigma <= tmax, gamma = min(churn / N, sqrt(2) - 1)) adds
    noise^2 (sigma_hat^2 - sigma^2) to the variance, and the Heun step from sigma_hat to the next level multiplies
    x - m by k = 1 + h (d + d') / 2, with d = (1 - c(sigma_hat)) / sigma_hat, d' = k_euler (1 - c(next)) / next,
    c(sigma) = s^2 / (s^2 + sigma^2), h = next - sigma_hat (Euler, k = 1 + h d, for the last step to 0)."""
    n = len(sigmas) - 1
    gamma = min(churn / n, math.sqrt(2.0) - 1.0)
    mean, var = -m, float(sigmas[0]) ** 2  # of x - m

    def slope(sig: float) -> float:  # (x - D(x; sig)) / sig per unit of x - m
        return (1.0 - s * s / (s * s + sig * sig)) / sig

    for i in range(n):
        cur, nxt = float(sigmas[i]), float(sigmas[i + 1])
        if gamma > 0 and tmin <= cur <= tmax:
            hat = min(cur * (1.0 + gamma), cap)
            var += noise**2 * (hat * hat - cur * cur)
            cur = hat
        k = 1.0 + (nxt - cur) * slope(cur)
        if nxt > 0:
            k = 1.0 + (nxt - cur) * 0.5 * (slope(cur) + k * slope(nxt))
        mean, var = k * mean, k * k * var
    return m + mean, var


def dpmpp_2m_map(mix: Mixture1D, sigma_min: float, sigma_max: float, steps: int, rho: float,
                 z: np.ndarray) -> np.ndarray:
    """DPM-Solver++(2M) as Algorithm 2 of Lu et al. 2022 writes it, in the variance-preserving space: alpha_i =
    1 / sqrt(1 + sigma_i^2), s_i = sigma_i alpha_i, lambda_i = log(alpha_i / s_i), data prediction x0_i from the
    exact eps at abar = alpha_i^2, and x~_{i+1} = (s_{i+1} / s_i) x~_i - alpha_{i+1} (e^{-h} - 1) D_i with the
    multistep correction D_i = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}. Starts at the VP prior sample z over the Karras
    levels; the step to sigma = 0 returns x0 of the last level. Returns the data-space result."""
    i = np.arange(steps)
    ramp = i / (steps - 1)
    sig = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    alpha = 1.0 / np.sqrt(1.0 + sig**2)
    s = sig * alpha
    lam = np.log(alpha / s)
    x = z.astype(np.float64)
    prev = None
    for n in range(steps):
        eps = mix.eps(x, alpha[n] ** 2)
        x0 = (x - s[n] * eps) / alpha[n]
        if n == steps - 1:
            return x0
        h = lam[n + 1] - lam[n]
        if prev is None:
            d = x0
        else:
            r = (lam[n] - lam[n - 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev
        x = s[n + 1] / s[n] * x - alpha[n + 1] * (np.exp(-h) - 1) * d
        prev = x0
    return x


def diffwave_fast_step(mix: Mixture1D, gammas: np.ndarray, n: int, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean and std of DiffWave's fast-sampling step n (Kong et al. Alg. 2 with the inference schedule):
    mean = (x - gamma_n / sqrt(1 - gbar_n) eps) / sqrt(1 - gamma_n), std^2 = (1 - gbar_{n-1}) / (1 - gbar_n) gamma_n."""
    gbar = np.cumprod(1 - gammas)
    eps = mix.eps(x, gbar[n])
    mean = (x - gammas[n] / math.sqrt(1 - gbar[n]) * eps) / math.sqrt(1 - gammas[n])
    std = math.sqrt((1 - gbar[n - 1]) / (1 - gbar[n]) * gammas[n]) if n > 0 else 0.0
    return mean, std


def diffwave_fast_output(mix: Mixture1D, gammas: Sequence[float], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output distribution of DiffWave fast sampling started from the exact marginal at gbar_S, by propagating a
    density on ``grid`` through the Gaussian kernels; returns (points, probabilities) of the final push-forward."""
    gammas = np.asarray(gammas, dtype=np.float64)
    gbar = np.cumprod(1 - gammas)
    p = mix.density(grid, gbar[-1])
    p /= p.sum()
    for n in range(gammas.size - 1, 0, -1):
        mean, std = diffwave_fast_step(mix, gammas, n, grid)
        kernel = np.exp(-0.5 * ((grid[None, :] - mean[:, None]) / std) ** 2)  # [from, to]
        kernel /= kernel.sum(1, keepdims=True)
        p = p @ kernel
    mean, _ = diffwave_fast_step(mix, gammas, 0, grid)
    return mean, p


class DiagGaussian:
    """Data N(mean, diag(std^2)) under the PriorGrad prior N(0, diag(prior_std^2)), per element (numpy, float64).

    ``eps(x, a)`` is E[eps | x_t = x] for the scaled noise eps = prior_std z at noise level a; ``x`` is ``[..., D]``
    (a drop-in for ``Mixture1D`` in ``ddim_map`` and ``heun_map``, elementwise).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], prior_std: Sequence[float]):
        self.m = np.asarray(mean, dtype=np.float64)
        self.s = np.asarray(std, dtype=np.float64)
        self.p = np.asarray(prior_std, dtype=np.float64)

    def torch_model(self, abar_fn: AbarFn) -> GaussianEps:
        return GaussianEps(torch.tensor(self.m), torch.tensor(self.s), abar_fn, prior_std=torch.tensor(self.p))

    def eps(self, x: np.ndarray, a: float) -> np.ndarray:
        p2 = self.p**2
        return math.sqrt(1 - a) * p2 * (x - math.sqrt(a) * self.m) / (a * self.s**2 + (1 - a) * p2)


def affine_law(f: Callable[[np.ndarray], np.ndarray], var_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of f(x) for x ~ N(0, diag(var_in)) when f is affine per element: f(x) = A x + b."""
    zeros = np.zeros_like(var_in)
    b = f(zeros)
    gain = f(zeros + 1.0) - b
    return b, gain**2 * var_in


def ancestral_law(g: DiagGaussian, betas: Sequence[float], variance: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-element output mean and variance of Ho et al.'s Algorithm 2 on ``betas`` with g's exact eps,
    started at x_T ~ N(0, p^2): x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t p z, with
    sigma_t^2 = beta_t (``"beta"``) or beta~_t (``"posterior"``). Each step is affine, so the law stays Gaussian."""
    betas = np.asarray(betas, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    mean, var = np.zeros_like(g.p), g.p**2
    for n in range(betas.size - 1, -1, -1):
        def step(x, n=n):
            return (x - betas[n] / math.sqrt(1 - abar[n]) * g.eps(x, abar[n])) / math.sqrt(1 - betas[n])

        b = step(np.zeros_like(mean))
        gain = step(np.ones_like(mean)) - b
        mean, var = gain * mean + b, gain**2 * var
        if n > 0:
            sig2 = betas[n] if variance == "beta" else betas[n] * (1 - abar[n - 1]) / (1 - abar[n])
            var = var + sig2 * g.p**2
    return mean, var


def mode_stats(points: np.ndarray, probs: np.ndarray | None, boundary: float) -> dict[str, float]:
    """Weight, mean, variance and 4th central moment of each side of ``boundary`` (probabilities optional)."""
    points = np.asarray(points, dtype=np.float64)
    probs = np.full(points.size, 1.0 / points.size) if probs is None else np.asarray(probs) / np.sum(probs)
    out = {}
    for k, mask in enumerate([points < boundary, points >= boundary]):
        w = probs[mask].sum()
        mu = (probs[mask] * points[mask]).sum() / w
        out[f"weight{k}"] = w
        out[f"mean{k}"] = mu
        out[f"var{k}"] = (probs[mask] * (points[mask] - mu) ** 2).sum() / w
        out[f"m4_{k}"] = (probs[mask] * (points[mask] - mu) ** 4).sum() / w
        out[f"n{k}"] = int(mask.sum())
    return out


@pytest.fixture(autouse=True)
def torch_single_thread():
    """Run each test with one intra-op thread (function scope, so it runs after conftest's own setting): these
    tests use small tensors, for which a second thread costs far more than it saves (up to 100x slower on a busy
    2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
