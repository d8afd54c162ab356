"""Denoisers: a network together with its parameterisation, the one object losses, likelihood and samplers take.

A network follows the model contract ``network(x, t, cond=None)``; what its output *means* is the denoiser's
business (k-diffusion's ``external.py`` wrappers and EDM's ``VPPrecond``/``EDMPrecond`` play this role):

- :class:`VPDenoiser` — a network trained on a discrete variance-preserving ``NoiseSchedule`` (Ho et al. 2020) that
  predicts eps, x_0 or v, optionally with a learned variance (2x output channels, Nichol & Dhariwal 2021) and
  optionally under PriorGrad's data-dependent prior N(0, diag(s^2)) (Lee et al. 2022).
- :class:`EDMDenoiser` — Karras et al. 2022's preconditioning D(x; sigma) = c_skip x + c_out F(c_in x, c_noise).

Both give D(x; sigma) (``denoise``) for sigma-space samplers such as Heun; the VP denoiser also gives eps_hat and
x0_hat at a step of its schedule (``predict``) for ancestral samplers, the bound and the losses. The VP denoiser is
the one owner of its parameterisation: every conversion between a network output, eps, x_0 and v
(``from_output``, ``in_space``, ``target``) and the prior's scaling of noise (``prior_noise``) is here; the
schedule holds only the process's coefficients.

| symbol                        | name here                                                         |
| ----------------------------- | ----------------------------------------------------------------- |
| what the network outputs      | ``prediction``: ``"eps"``, ``"x0"`` or ``"v"`` (``PredictionKind``) |
| eps_hat, x0_hat               | ``Prediction.eps``, ``Prediction.x0`` (``predict(x_t, t, cond)``)  |
| v = sqrt(abar) eps - sqrt(1-abar) x_0 | the v-prediction target (``target("v", ...)``, Salimans & Ho 2022) |
| nu (learned variance interp.) | ``Prediction.var`` (raw second half of a learned-variance output; the paper's v, eq. 15) |
| s (PriorGrad prior std)       | ``prior_std`` (``None`` = N(0, I)); ``with_prior(s)`` binds one    |
| eps = s z, z ~ N(0, I)        | ``prior_noise(z)``: the one place noise takes the prior's scale    |
| sigma (EDM) = sqrt((1-abar)/abar) | ``schedule.sigmas`` for a VP denoiser                         |
| x = x_vp / sqrt(abar)         | the sigma-space state of a VP model                               |
| D(x; sigma)                   | ``denoise(x, sigma, cond)``                                        |
| sigma_data                    | ``EDMDenoiser.params.sigma_data`` (0.5 for images in [-1, 1])      |
| c_skip, c_out, c_in, c_noise  | ``EDMDenoiser.coefficients(sigma)`` (Karras et al. Table 1)        |
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from diffcore.config import EDMConfig
from diffcore.schedule import NoiseSchedule, validate_prior_std
from diffcore.utils import append_dims

__all__ = [
    "Network",
    "PredictionKind",
    "Prediction",
    "VPDenoiser",
    "EDMDenoiser",
    "Denoiser",
    "split_variance",
    "denoiser_from_config",
    "require_vp",
]

Network = Callable[..., Tensor]
"""The model contract: ``network(x, t, cond=None) -> Tensor`` (see :mod:`diffcore`)."""

PredictionKind = Literal["eps", "x0", "v"]
"""What a VP network's output means: eps, x_0 or v (Salimans & Ho 2022); ``DiffusionConfig.prediction``."""

_PREDICTIONS = ("eps", "x0", "v")


def _eps_x0(output: Tensor, x_t: Tensor, sqrt_abar: Tensor, sqrt_one_minus_abar: Tensor,
            prediction: PredictionKind) -> tuple[Tensor, Tensor]:
    """``(eps, x_0)`` of a network output that predicts ``prediction``, at the noise level of ``x_t``.

    ``x_t = sqrt_abar * x_0 + sqrt_one_minus_abar * eps`` (coefficients broadcast against ``x_t``). For ``"v"``:
    x_0 = sqrt(abar) x_t - sqrt(1-abar) v and eps = sqrt(1-abar) x_t + sqrt(abar) v (Salimans & Ho 2022, eq. after
    (9)).
    """
    if prediction == "eps":
        eps = output
        x0 = (x_t - sqrt_one_minus_abar * eps) / sqrt_abar
    elif prediction == "x0":
        x0 = output
        eps = (x_t - sqrt_abar * x0) / sqrt_one_minus_abar
    elif prediction == "v":
        x0 = sqrt_abar * x_t - sqrt_one_minus_abar * output
        eps = sqrt_one_minus_abar * x_t + sqrt_abar * output
    else:
        raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
    return eps, x0


def split_variance(out: Tensor, learned_variance: bool) -> tuple[Tensor, Tensor | None]:
    """``(mean_output, var_output)`` of a network output: a learned-variance output ``[B, 2C, ...]`` is split
    along dim 1 into the prediction and the variance interpolation nu (Nichol & Dhariwal eq. 15, where the paper
    writes v; here v is only the v-prediction target); otherwise ``(out, None)``. The one place that knows the
    layout."""
    if not learned_variance:
        return out, None
    if out.ndim < 2 or out.shape[1] % 2:
        raise ValueError(f"a learned-variance network outputs [B, 2C, ...] (the prediction, then the variance "
                         f"output), got shape {tuple(out.shape)}")
    mean_out, var_out = out.chunk(2, dim=1)
    return mean_out, var_out


def _step_dtype(x: Tensor) -> torch.dtype:
    """dtype of fractional steps passed to the network: float64 for float64 states, else float32 (float16 cannot
    resolve fractions of a step near t = 1000)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class Prediction(NamedTuple):
    """What a VP denoiser predicts at one step: eps_hat, x0_hat (both like ``x_t``) and the raw variance output
    (``None`` unless the network learns its variance)."""

    eps: Tensor
    x0: Tensor
    var: Tensor | None


@dataclass(frozen=True, eq=False)
class VPDenoiser:
    """A network on a discrete VP schedule with its parameterisation; an immutable value.

    Args:
        network: ``network(x_t, t, cond=None)``, ``t`` the network's own (training) steps, ``schedule.model_timesteps``.
        schedule: the schedule the denoiser works on. A respaced or DiffWave-aligned schedule (see
            :mod:`diffcore.discretization`) keeps mapping to the network's steps through its ``timestep_map``.
        prediction: the network outputs eps, x_0 or v (Salimans & Ho 2022).
        learned_variance: the output has 2x channels along dim 1: the prediction, then the variance
            interpolation nu of Nichol & Dhariwal eq. 15, the paper's v (``split_variance``).
        prior_std: PriorGrad prior std s, broadcastable to the data (``None`` = N(0, I)). Data-dependent: bind one
            per batch with ``with_prior``.
    """

    network: Network
    schedule: NoiseSchedule
    prediction: PredictionKind = "eps"
    learned_variance: bool = False
    prior_std: Tensor | None = None

    def __post_init__(self) -> None:
        if self.prediction not in _PREDICTIONS:
            raise ValueError(f"prediction must be 'eps', 'x0' or 'v', got {self.prediction!r}")
        if not isinstance(self.schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(self.schedule).__name__}")

    # -- derived denoisers -------------------------------------------------------------------------------------
    def with_schedule(self, schedule: NoiseSchedule) -> "VPDenoiser":
        """The same network on another discretisation of its schedule (respaced, DiffWave-aligned)."""
        return dataclasses.replace(self, schedule=schedule)

    def with_prior(self, prior_std: Tensor | None) -> "VPDenoiser":
        """The same denoiser under the PriorGrad prior N(0, diag(s^2)) (``None`` = N(0, I))."""
        return dataclasses.replace(self, prior_std=prior_std)

    def with_network(self, network: Network) -> "VPDenoiser":
        """The same parameterisation around another callable (an EMA copy, a guidance or inference wrapper)."""
        return dataclasses.replace(self, network=network)

    def checked_prior(self, like: Tensor) -> Tensor | None:
        """``prior_std`` checked against and cast to ``like`` (``None`` without a prior)."""
        return validate_prior_std(self.prior_std, like.shape, like.dtype, like.device)

    def prior_noise(self, z: Tensor) -> Tensor:
        """Noise of this denoiser's prior from the standard normal ``z`` (any shape the prior broadcasts to): eps =
        s * z under N(0, diag(s^2)), z itself under N(0, I). The one place that scales noise by the prior: losses,
        the bound and the samplers draw z (``diffcore.utils.randn``, one generator or one per batch row) and call
        this; ``s`` should have been checked against the data once (``checked_prior``)."""
        if self.prior_std is None:
            return z
        return z * self.prior_std.to(device=z.device, dtype=z.dtype)

    # -- network calls -----------------------------------------------------------------------------------------
    def output(self, x_t: Tensor, t: Tensor, cond: Any = None) -> tuple[Tensor, Tensor | None]:
        """The network's raw output at steps ``t`` ``[B]`` of ``schedule``, split into (prediction, variance)."""
        t_network = self.schedule.model_timesteps(t)
        if t_network.is_floating_point():
            t_network = t_network.to(_step_dtype(x_t))
        out = self.network(x_t, t_network, cond=cond)
        mean_out, var = split_variance(out, self.learned_variance)
        if mean_out.shape != x_t.shape:
            want = f"[B, 2C, ...] = {(x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:])} (the prediction, then the " \
                   f"variance output)" if self.learned_variance and x_t.ndim >= 2 else f"{tuple(x_t.shape)}"
            raise ValueError(f"model output has shape {tuple(out.shape)}, expected {want}")
        return mean_out, var

    def predict(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Prediction:
        """eps_hat, x0_hat and the variance output at steps ``t`` (long or fractional ``[B]``) of ``schedule``."""
        out, var = self.output(x_t, t, cond)
        eps, x0 = self.from_output(x_t, t, out)
        return Prediction(eps, x0, var)

    # -- the parameterisation ----------------------------------------------------------------------------------
    def _coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) at steps ``t`` of ``schedule``, broadcast to ``like``."""
        return (self.schedule.at("sqrt_alphas_cumprod", t, like),
                self.schedule.at("sqrt_one_minus_alphas_cumprod", t, like))

    def from_output(self, x_t: Tensor, t: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """``(eps_hat, x0_hat)`` from the network's (mean) output ``out`` at ``x_t``, step ``t``."""
        a, b = self._coefficients(t, x_t)
        return _eps_x0(out, x_t, a, b, self.prediction)

    def in_space(self, space: PredictionKind, x_t: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """The network's output ``out`` expressed as a prediction of ``space`` (``out`` itself when the network
        predicts it): eps_hat, x0_hat or v_hat = (eps_hat - sqrt(1 - abar) x_t) / sqrt(abar)."""
        if space == self.prediction:
            return out
        eps, x0 = self.from_output(x_t, t, out)
        if space == "eps":
            return eps
        if space == "x0":
            return x0
        if space == "v":
            a, b = self._coefficients(t, x_t)
            return (eps - b * x_t) / a
        raise ValueError(f"space must be 'eps', 'x0' or 'v', got {space!r}")

    def target(self, space: PredictionKind, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The regression target of ``space`` for data ``x0`` noised with ``eps`` at step ``t``: eps, x_0 or
        v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)."""
        if space == "eps":
            return eps
        if space == "x0":
            return x0
        if space == "v":
            a, b = self._coefficients(t, x0)
            return a * eps - b * x0
        raise ValueError(f"space must be 'eps', 'x0' or 'v', got {space!r}")

    # -- the sigma view (EDM) ----------------------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        """The smallest noise level the network was trained on, sigma of the schedule's first step."""
        return float(self.schedule.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """The largest noise level of the schedule (sigma of its last step; ``inf`` if some beta is 1)."""
        return float(self.schedule.sigmas[-1])

    def start_scale(self, sigma: float) -> float:
        """Factor from prior noise (N(0, I), or N(0, s^2) under a prior) to the sigma-space state at ``sigma``:
        x = x_vp / sqrt(abar) with x_vp the VP prior sample, so sqrt(1 + sigma^2)."""
        return math.sqrt(1.0 + sigma**2)

    def denoise(self, x: Tensor, sigma: float, cond: Any = None) -> Tensor:
        """D(x; sigma) = x0_hat for the sigma-space state x = x_vp / sqrt(abar) (Karras et al. 2022, App. C.1).

        sqrt(abar(sigma)) = 1 / sqrt(1 + sigma^2); the network is called at x_vp = x sqrt(abar) and at the
        fractional step t(sigma) where log sigma, interpolated linearly over ``schedule.sigmas``, equals
        log ``sigma``. Under a prior the state is x_0 + sigma s z and eps_hat predicts s z, so D keeps its form.
        """
        table = self.schedule.sigmas
        if not np.isfinite(table).all():
            raise ValueError("the sigma view needs finite sigmas (a schedule with some beta = 1 has sigma = inf)")
        sqrt_abar = 1.0 / math.sqrt(1.0 + sigma**2)
        x_vp = x * sqrt_abar
        n = self.schedule.num_steps
        t_float = float(np.interp(math.log(sigma), np.log(table), np.arange(n, dtype=np.float64))) if n > 1 else 0.0
        t = torch.full((x.shape[0],), t_float, device=x.device, dtype=torch.float64)
        out, _ = self.output(x_vp, t, cond)
        a = torch.tensor(sqrt_abar, dtype=x.dtype, device=x.device)
        b = torch.tensor(sigma * sqrt_abar, dtype=x.dtype, device=x.device)
        eps, _ = _eps_x0(out, x_vp, a, b, self.prediction)
        return x - sigma * eps


@dataclass(frozen=True, eq=False)
class EDMDenoiser:
    """Karras et al. 2022's preconditioned denoiser (``EDMPrecond``): D(x; sigma) = c_skip x + c_out F(c_in x, c_noise).

    ``params`` (:class:`~diffcore.config.EDMConfig`: sigma_data, sigma_min, sigma_max, p_mean, p_std, time_scale,
    checked there) is the one definition of its constants, shared with recipes.

    With sigma_d the data's standard deviation (Table 1, "Ours"):

        c_skip = sigma_d^2 / (sigma^2 + sigma_d^2)       c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2)
        c_in   = 1 / sqrt(sigma^2 + sigma_d^2)           c_noise = ln(sigma) / 4

    so the network's input and its training target (x_0 - c_skip x) / c_out have unit variance at every sigma.
    The network is called as ``network(c_in x, time_scale * c_noise, cond)`` with a float step tensor ``[B]``;
    ``time_scale`` maps c_noise onto the step range a network's time embedding was built for (a DDPM U-Net's
    sinusoidal embedding expects steps of order 1000, hence 250 for it; 1 is the paper's).

    Training draws ln sigma ~ N(p_mean, p_std^2) and weights the squared error by
    lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 = 1 / c_out^2 (``diffcore.losses.edm_loss``).
    Sampling: ``heun_sample`` over ``karras_sigmas(sigma_min, sigma_max, N)``.
    """

    network: Network
    params: EDMConfig = dataclasses.field(default_factory=EDMConfig)

    learned_variance = False
    prior_std = None

    @property
    def sigma_min(self) -> float:
        """The smallest sampling noise level (``params.sigma_min``)."""
        return self.params.sigma_min

    @property
    def sigma_max(self) -> float:
        """The largest sampling noise level (``params.sigma_max``)."""
        return self.params.sigma_max

    def with_network(self, network: Network) -> "EDMDenoiser":
        """The same preconditioning around another callable (an EMA copy, a guidance or inference wrapper)."""
        return dataclasses.replace(self, network=network)

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` at noise levels ``sigma`` (any shape; computed in its dtype)."""
        sd = self.params.sigma_data
        total = sigma**2 + sd**2
        c_skip = sd**2 / total
        c_out = sigma * sd / total.sqrt()
        c_in = 1.0 / total.sqrt()
        c_noise = sigma.log() / 4.0
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 (Karras et al. eq. 8 with Table 1)."""
        sd = self.params.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2

    def prior_noise(self, z: Tensor) -> Tensor:
        """EDM's prior noise is the standard normal ``z`` itself (PriorGrad's prior is defined for the VP
        parameterisation only); the same helper as :meth:`VPDenoiser.prior_noise`, so samplers draw through one."""
        return z

    def start_scale(self, sigma: float) -> float:
        """x at sigma_max starts as sigma_max z (Karras et al. Algorithm 1, line 2)."""
        return float(sigma)

    def raw(self, x: Tensor, sigma: Tensor, cond: Any = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(F, c_skip, c_out)`` broadcast to ``x``: the network output F(c_in x, c_noise) and its two mixing
        coefficients, for ``sigma`` ``[B]``. ``denoise`` is c_skip x + c_out F; the loss uses F directly."""
        sigma = sigma.to(device=x.device, dtype=torch.float64).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] != 1:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        t_network = (self.params.time_scale * c_noise).to(_step_dtype(x))
        out = self.network(x * append_dims(c_in, x.ndim).to(x.dtype), t_network, cond=cond)
        if out.shape != x.shape:
            raise ValueError(f"model output has shape {tuple(out.shape)}, expected {tuple(x.shape)}")
        return out, append_dims(c_skip, x.ndim).to(x.dtype), append_dims(c_out, x.ndim).to(x.dtype)

    def denoise(self, x: Tensor, sigma: float | Tensor, cond: Any = None) -> Tensor:
        """D(x; sigma) ``[B, ...]`` for a scalar sigma or one sigma per example ``[B]``."""
        out, c_skip, c_out = self.raw(x, torch.as_tensor(sigma, dtype=torch.float64), cond)
        return c_skip * x + c_out * out


Denoiser = VPDenoiser | EDMDenoiser
"""Either kind: what ``heun_sample`` and guidance take. Ancestral samplers, the bound and the VP losses need a
:class:`VPDenoiser`."""


def denoiser_from_config(config: Any, network: Network, *, learned_variance: bool = False,
                         schedule: NoiseSchedule | None = None) -> Denoiser:
    """The denoiser a :class:`~diffcore.config.DiffusionConfig` describes, around ``network``.

    ``config.edm`` set: :class:`EDMDenoiser` with its fields; else :class:`VPDenoiser` on ``schedule`` (default:
    ``config.build()``; pass the one a caller already built so that a training step does not rebuild it) with
    ``config.prediction``. ``learned_variance`` comes from the model config (it is the network's output layout).
    """
    edm = getattr(config, "edm", None)
    if edm is not None:
        if learned_variance:
            raise ValueError("a learned variance is defined for the VP parameterisation only, not with diffusion.edm")
        if schedule is not None:
            raise ValueError("an EDM model has no discrete schedule to replace")
        return EDMDenoiser(network, edm)
    if schedule is None:
        schedule = config.build()
    return VPDenoiser(network, schedule, prediction=config.prediction, learned_variance=learned_variance)


def require_vp(denoiser: Any, what: str) -> VPDenoiser:
    """``denoiser`` if it is a :class:`VPDenoiser`, else a clear error naming ``what`` needs one."""
    if isinstance(denoiser, VPDenoiser):
        return denoiser
    if isinstance(denoiser, EDMDenoiser):
        raise TypeError(f"{what} needs a VPDenoiser (a discrete schedule); an EDMDenoiser is sampled with "
                        f"heun_sample and trained with edm_loss")
    raise TypeError(f"{what} takes a denoiser (diffcore.denoiser.VPDenoiser(network, schedule, prediction=...)), "
                    f"got {type(denoiser).__name__}; wrap the network first")

