"""The discrete Gaussian diffusion of Ho et al. 2020 as an immutable value: ``NoiseSchedule``.

Forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I); posterior
q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) with (Ho et al. eq. 6-7)

    mu~_t    = sqrt(abar_{t-1}) beta_t / (1 - abar_t) * x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) * x_t
    beta~_t  = beta_t (1 - abar_{t-1}) / (1 - abar_t)

Indices are 0-based everywhere in code: array index ``i`` holds the paper's step ``t = i + 1``; ``abar_0`` of the
paper (= 1) is ``alphas_cumprod_prev[0]``.

| symbol                  | name here                          | shape |
| ----------------------- | ---------------------------------- | ----- |
| T                       | ``num_steps``                      | int   |
| beta_t                  | ``betas``                          | [T]   |
| alpha_t = 1 - beta_t    | ``alphas``                         | [T]   |
| abar_t = prod alpha_i   | ``alphas_cumprod``                 | [T]   |
| abar_{t-1}              | ``alphas_cumprod_prev``            | [T]   |
| beta~_t                 | ``posterior_variance``             | [T]   |
| log beta~_t (clipped)   | ``posterior_log_variance_clipped`` | [T]   |
| coefficient of x_0 in mu~_t | ``posterior_mean_coef1``       | [T]   |
| coefficient of x_t in mu~_t | ``posterior_mean_coef2``       | [T]   |
| SNR_t = abar/(1-abar)   | ``snr(t)``                         | [B]   |
| sigma_t = sqrt((1-abar)/abar) (EDM / variance-exploding view) | ``sigmas`` | [T] |

What a network's output means (eps, x_0 or v) and how it converts is the denoiser's (:mod:`diffcore.denoiser`), and
so is PriorGrad's prior N(0, diag(s^2)) (Lee et al. 2022): its noise eps = s * z is drawn by the denoiser's
``prior_noise`` and passed here as ``noise``; q(x_t | x_0) then has variance (1 - abar_t) s^2 and
q(x_{t-1} | x_t, x_0) variance beta~_t s^2 with the same mean, which the bound and the samplers apply. This module
is the process's coefficients only. ``validate_prior_std`` is the one check of an s against the data.

Storage: every per-step array is a **read-only float64 numpy array** computed once at construction. Methods take
torch tensors ``x`` of any rank ``[B, ...]`` and ``t`` ``[B]`` (long: 0-based step; float: fractional step, arrays
linearly interpolated, see ``diffcore.utils.gather``) and return tensors in ``x``'s dtype and device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from diffcore.utils import gather, randn

__all__ = ["NoiseSchedule", "evenly_spaced_indices", "validate_prior_std"]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def _betas_from_alpha_bar_fn(num_steps: int, alpha_bar, max_beta: float) -> np.ndarray:
    """beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta) for a continuous-time abar on [0, 1]."""
    grid = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    abar = alpha_bar(grid)
    betas = 1.0 - abar[1:] / abar[:-1]
    return np.minimum(betas, max_beta)


def _check_num_steps(num_steps: int) -> None:
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")


def validate_prior_std(
    prior_std: Tensor | None,
    shape: Sequence[int] | torch.Size,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor | None:
    """Check a PriorGrad prior standard deviation s and cast it for use against a tensor of ``shape``.

    ``prior_std`` must be a tensor of positive finite values that broadcasts to ``shape`` without enlarging it:
    ``[B, 1, T]`` for audio ``[B, 1, T]``, ``[B, T]`` for ``[B, T]``; ``[B, 1, ..., 1]`` (one s per example),
    ``[1, C, 1, 1]`` or a 0-d tensor also work.
    It is cast to ``dtype``/``device`` when given (then checked, so a value that underflows in ``dtype`` is caught).

    Returns:
        ``None`` for ``None`` (the standard N(0, I) prior), else the cast tensor.

    Raises:
        ValueError naming ``prior_std`` when it is not a tensor, does not broadcast, or has a value <= 0, inf or NaN.
    """
    if prior_std is None:
        return None
    if not isinstance(prior_std, Tensor):
        raise ValueError(f"prior_std must be a torch.Tensor (or None), got {type(prior_std).__name__}")
    if prior_std.is_complex() or prior_std.dtype == torch.bool:
        raise ValueError(f"prior_std must be a real floating tensor, got dtype {prior_std.dtype}")
    shape = tuple(shape)
    try:
        fits = torch.broadcast_shapes(tuple(prior_std.shape), shape) == shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"prior_std has shape {tuple(prior_std.shape)}, which does not broadcast to the data shape "
                         f"{shape}; give it the data's rank with size-1 dims where s is shared (e.g. s[:, None] "
                         f"turns [B, T] into [B, 1, T])")
    s = prior_std.to(device=device if device is not None else prior_std.device,
                     dtype=dtype if dtype is not None else prior_std.dtype)
    if not s.is_floating_point():
        s = s.to(torch.get_default_dtype())
    # One host sync for both conditions; NaN fails "> 0".
    if not bool(torch.all(torch.isfinite(s) & (s > 0))):
        raise ValueError("prior_std must be positive and finite everywhere (it is a standard deviation s of the "
                         "prior N(0, diag(s^2))); clamp it below, e.g. prior_std.clamp(min=0.1)")
    return s


def evenly_spaced_indices(num_steps: int, count: int) -> list[int]:
    """``count`` distinct step indices from ``0`` to ``num_steps - 1`` inclusive, evenly spaced.

    ``round(linspace(0, T - 1, count))``: both ends are always kept (``count >= 2``); ``count == 1`` keeps the last
    step only. ``diffcore.discretization.respaced`` uses it to choose the steps DDIM and a respaced DDPM walk.
    """
    _check_num_steps(num_steps)
    if not 1 <= count <= num_steps:
        raise ValueError(f"count must be in [1, {num_steps}], got {count}")
    if count == 1:
        return [num_steps - 1]
    idx = np.round(np.linspace(0.0, num_steps - 1, count)).astype(np.int64)
    # Spacing (T-1)/(count-1) >= 1, so rounding keeps the indices distinct.
    assert len(np.unique(idx)) == count
    return idx.tolist()


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Discrete variance-preserving noise schedule (Ho et al. 2020), immutable, float64.

    Build it with ``linear``, ``cosine``, ``sigmoid`` or ``from_betas``; ``respace`` returns a new schedule over a
    subset of the steps. ``timestep_map[i]`` is the step index of the *original* schedule (the one the network was
    trained on) that index ``i`` of this schedule stands for — integer after respacing, fractional for DiffWave's
    aligned fast schedule (:func:`diffcore.discretization.fast_schedule`); denoisers call the network with
    ``model_timesteps(t)``.
    """

    betas: np.ndarray
    timestep_map: np.ndarray | None = None

    alphas: np.ndarray = field(init=False, repr=False)
    alphas_cumprod: np.ndarray = field(init=False, repr=False)
    alphas_cumprod_prev: np.ndarray = field(init=False, repr=False)
    sqrt_alphas_cumprod: np.ndarray = field(init=False, repr=False)
    sqrt_one_minus_alphas_cumprod: np.ndarray = field(init=False, repr=False)
    posterior_variance: np.ndarray = field(init=False, repr=False)
    posterior_log_variance_clipped: np.ndarray = field(init=False, repr=False)
    posterior_mean_coef1: np.ndarray = field(init=False, repr=False)
    posterior_mean_coef2: np.ndarray = field(init=False, repr=False)
    sigmas: np.ndarray = field(init=False, repr=False)
    _torch_cache: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        raw = self.betas.detach().cpu().numpy() if isinstance(self.betas, Tensor) else self.betas
        try:
            betas = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"betas must be a 1-D sequence of numbers: {err}") from None
        if betas.ndim != 1:
            raise ValueError(f"betas must be 1-D, got shape {betas.shape}")
        if betas.size == 0:
            raise ValueError("betas must be non-empty")
        if not np.all(np.isfinite(betas)):
            raise ValueError("betas must be finite")
        if np.any(betas <= 0.0) or np.any(betas > 1.0):
            bad = betas[(betas <= 0.0) | (betas > 1.0)][0]
            raise ValueError(f"every beta must lie in (0, 1], found {bad!r}")
        if self.timestep_map is None:
            tmap = np.arange(betas.size, dtype=np.int64)
        else:
            tmap = np.asarray(self.timestep_map)
            integer = np.issubdtype(tmap.dtype, np.integer)
            if tmap.shape != betas.shape or not (integer or np.issubdtype(tmap.dtype, np.floating)):
                raise ValueError(f"timestep_map must be integer (or fractional steps) with shape {betas.shape}, "
                                 f"got {tmap.dtype} {tmap.shape}")
            if not np.all(np.isfinite(tmap)) or np.any(tmap < 0) or np.any(np.diff(tmap) <= 0):
                raise ValueError("timestep_map must be finite, non-negative and strictly increasing")
            tmap = tmap.astype(np.int64 if integer else np.float64)

        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.append(1.0, abar[:-1])
        # beta~ is 0 at index 0 (abar_prev = 1); 1 - abar >= beta_0 > 0 so no division by zero anywhere.
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # log beta~ clipped as in improved-diffusion: index 0 takes beta~ of index 1 (log 0 = -inf otherwise);
        # a single-step schedule has no index 1 and uses beta_1 instead.
        first = post_var[1] if betas.size > 1 else betas[0]
        post_log_var = np.log(np.append(first, post_var[1:]))
        with np.errstate(divide="ignore"):
            # abar = 0 happens only when some beta is exactly 1 (zero terminal SNR): sigma is then +inf by
            # definition.
            sigmas = np.sqrt((1.0 - abar) / abar)

        values = dict(
            betas=betas,
            timestep_map=tmap,
            alphas=alphas,
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            sqrt_alphas_cumprod=np.sqrt(abar),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log_var,
            posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
            sigmas=sigmas,
        )
        for name, value in values.items():
            object.__setattr__(self, name, _readonly(value))
        object.__setattr__(self, "_torch_cache", {})

    # ----------------------------------------------------------------------------------------------------------
    # constructors

    @classmethod
    def from_betas(cls, betas: Iterable[float] | np.ndarray | Tensor) -> "NoiseSchedule":
        """Schedule with the given ``betas`` ``[T]`` (each in (0, 1])."""
        if not isinstance(betas, (np.ndarray, Tensor)):
            betas = list(betas)
        return cls(betas=betas)

    @classmethod
    def linear(cls, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """beta_t linear from ``beta_start`` to ``beta_end`` inclusive (Ho et al. 2020: 1e-4 .. 0.02, T = 1000;
        DiffWave: 1e-4 .. 0.05, T = 50). No rescaling by 1000 / T."""
        _check_num_steps(num_steps)
        return cls(betas=np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))

    @classmethod
    def cosine(cls, num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Cosine schedule, Nichol & Dhariwal 2021 eq. 17.

        abar(t) = f(t) / f(0) with f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2), beta_t = 1 - abar_t / abar_{t-1}
        clipped to ``max_beta`` (the paper uses 0.999 to avoid the singularity at t = T).
        """
        _check_num_steps(num_steps)
        if not 0.0 < max_beta <= 1.0:
            raise ValueError(f"max_beta must be in (0, 1], got {max_beta}")

        def f(u: np.ndarray) -> np.ndarray:
            return np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2

        return cls(betas=_betas_from_alpha_bar_fn(num_steps, lambda u: f(u) / f(np.zeros(1)), max_beta))

    @classmethod
    def sigmoid(
        cls,
        num_steps: int,
        start: float = -3.0,
        end: float = 3.0,
        tau: float = 1.0,
        clip_min: float = 1e-9,
        max_beta: float = 0.999,
    ) -> "NoiseSchedule":
        """Sigmoid schedule of Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models", Alg. 1.

        Continuous time u in [0, 1]: abar(u) = (sigmoid(end / tau) - sigmoid((u (end - start) + start) / tau)) /
        (sigmoid(end / tau) - sigmoid(start / tau)), clipped below at ``clip_min``; abar(0) = 1. Discretised like the
        cosine schedule: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta). (Not the GeoDiff sigmoid-of-betas.)
        """
        _check_num_steps(num_steps)
        if not tau > 0.0 or not end > start:
            raise ValueError(f"sigmoid schedule needs tau > 0 and end > start, got tau={tau}, start={start}, "
                             f"end={end}")
        if not 0.0 < max_beta <= 1.0:
            raise ValueError(f"max_beta must be in (0, 1], got {max_beta}")

        def sig(z: np.ndarray | float) -> np.ndarray:
            return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))

        v_start, v_end = sig(start / tau), sig(end / tau)

        def alpha_bar(u: np.ndarray) -> np.ndarray:
            out = (v_end - sig((u * (end - start) + start) / tau)) / (v_end - v_start)
            return np.clip(out, clip_min, 1.0)

        return cls(betas=_betas_from_alpha_bar_fn(num_steps, alpha_bar, max_beta))

    # ----------------------------------------------------------------------------------------------------------
    # value semantics

    @property
    def num_steps(self) -> int:
        """Number of steps T of this schedule."""
        return int(self.betas.size)

    def __len__(self) -> int:
        return self.num_steps

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoiseSchedule):
            return NotImplemented
        return np.array_equal(self.betas, other.betas) and np.array_equal(self.timestep_map, other.timestep_map)

    def __hash__(self) -> int:
        return hash((self.betas.tobytes(), self.timestep_map.tobytes()))

    def __reduce__(self):
        # Rebuild from the defining arrays: the copy gets read-only arrays again and an empty device cache.
        return (NoiseSchedule, (np.array(self.betas), np.array(self.timestep_map)))

    def __repr__(self) -> str:
        respaced = "" if np.array_equal(self.timestep_map, np.arange(self.num_steps)) else ", respaced"
        return (f"NoiseSchedule(num_steps={self.num_steps}, beta[0]={self.betas[0]:.4g}, "
                f"beta[-1]={self.betas[-1]:.4g}{respaced})")

    def _at(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """``gather`` of the array ``name`` with the float64 torch copy cached per device."""
        key = (name, t.device)
        table = self._torch_cache.get(key)
        if table is None:
            table = torch.tensor(getattr(self, name)).to(t.device)
            self._torch_cache[key] = table
        return gather(table, t, like)

    # ----------------------------------------------------------------------------------------------------------
    # forward process and posterior

    def model_timesteps(self, t: Tensor) -> Tensor:
        """Step indices ``[B]`` to pass to the network: ``timestep_map[t]`` (identity unless respaced).

        A long ``t`` gives a long result (float64 when ``timestep_map`` holds fractional steps, as DiffWave's
        aligned fast schedule does); a float ``t`` gives the linearly interpolated (float) original step.
        """
        if not np.issubdtype(self.timestep_map.dtype, np.integer) and not t.is_floating_point():
            return self._at("timestep_map", t, t.to(torch.float64))
        if t.is_floating_point():
            return self._at("timestep_map", t, t.to(torch.float64)).to(t.dtype)
        return self._at("timestep_map", t, t)

    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``[B, ...]`` and variance (1 - abar_t) (``[B, 1, ...]``, rank of ``x0``) of q(x_t | x_0) (Ho et al.
        eq. 4)."""
        mean = self._at("sqrt_alphas_cumprod", t, x0) * x0
        var = 1.0 - self._at("alphas_cumprod", t, x0)
        return mean, var

    def q_sample(
        self, x0: Tensor, t: Tensor, noise: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw x_t ~ q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. eq. 4). Shape of ``x0``.

        ``noise`` is eps (drawn as a standard normal from ``generator`` when ``None``); under a PriorGrad prior the
        caller passes the denoiser's ``prior_noise(z)`` = s * z.
        """
        if noise is None:
            noise = randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self._at("sqrt_alphas_cumprod", t, x0) * x0 + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean mu~_t ``[B, ...]`` and variance beta~_t (``[B, 1, ...]``) of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 7).
        (Under a prior s the mean is the same and the variance beta~_t s^2: the bound and the samplers scale it.)"""
        mean = self._at("posterior_mean_coef1", t, x_t) * x0 + self._at("posterior_mean_coef2", t, x_t) * x_t
        var = self._at("posterior_variance", t, x_t)
        return mean, var

    def posterior_log_variance(self, t: Tensor, like: Tensor) -> Tensor:
        """log beta~_t, clipped at index 0 (see ``posterior_log_variance_clipped``), broadcast to ``like``."""
        return self._at("posterior_log_variance_clipped", t, like)

    def at(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """Any per-step array of this schedule (e.g. ``"betas"``) read at ``t`` and broadcast to ``like``."""
        if name.startswith("_") or not isinstance(getattr(self, name, None), np.ndarray):
            raise ValueError(f"NoiseSchedule has no per-step array {name!r}")
        return self._at(name, t, like)

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t), shape of ``x_t`` (DDIM's eps of a clipped x_0; the
        conversions of a network output live on the denoiser, :class:`diffcore.denoiser.VPDenoiser`)."""
        return (x_t - self._at("sqrt_alphas_cumprod", t, x_t) * x0) / self._at("sqrt_one_minus_alphas_cumprod", t, x_t)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t) at steps ``t``: float64 ``[B]`` on ``t``'s device."""
        abar = self._at("alphas_cumprod", t, t.to(torch.float64))
        return abar / (1.0 - abar)

    # ----------------------------------------------------------------------------------------------------------
    # respacing

    def respace(self, use_timesteps: Iterable[int]) -> "NoiseSchedule":
        """Schedule over the kept steps only (Nichol & Dhariwal 2021 sec. 4, improved-diffusion's respacing).

        For kept indices k_0 < k_1 < ... the new betas are 1 - abar_{k_j} / abar_{k_{j-1}} (abar_{k_{-1}} = 1), so
        the new schedule's abar at position j equals this schedule's abar at k_j. ``timestep_map`` composes, so a
        respaced schedule maps straight to the network's original step indices.
        """
        keep = sorted({int(i) for i in use_timesteps})
        if not keep:
            raise ValueError("respace needs at least one step to keep")
        if keep[0] < 0 or keep[-1] >= self.num_steps:
            raise ValueError(f"respace indices must lie in [0, {self.num_steps - 1}], got {keep[0]}..{keep[-1]}")
        abar = self.alphas_cumprod[keep]
        prev = np.append(1.0, abar[:-1])
        betas = 1.0 - abar / prev
        # Where the kept steps are consecutive the new beta *is* the old one; reuse it so that keeping every step
        # reproduces the schedule bit for bit instead of up to rounding.
        idx = np.asarray(keep)
        consecutive = np.append(idx[0] == 0, np.diff(idx) == 1)
        betas[consecutive] = self.betas[idx[consecutive]]
        # 1 - a/b can round to exactly 0 in float64 only if two kept steps have equal abar, which a valid schedule
        # (all betas > 0) never has; betas = 1 survives as abar = 0.
        return NoiseSchedule(betas=betas, timestep_map=self.timestep_map[keep])
