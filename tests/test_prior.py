"""The PriorGrad prior N(0, diag(s^2)) (``prior_std``) through diffcore, proven on Gaussian data.

Data x_0 ~ N(m, diag(tau^2)) per element with a prior std p that varies per element (0.1 .. 1, some elements above
tau, some below): the exact predictor of the scaled noise eps = p z, the exact bound and every sampler's exact output
law are closed forms (``gaussian_refs``: ``DiagGaussian``, ``ancestral_law``, ``affine_law``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffcore.likelihood import nll, nll_terms, prior_kl, vlb_term
from diffcore.losses import (
    UniformTimesteps,
    diffusion_loss,
    epsilon_loss,
    hybrid_loss,
    hybrid_loss_terms,
    v_loss,
    x0_loss,
)
from diffcore.denoiser import VPDenoiser
from diffcore.discretization import fast_schedule, karras_sigmas, respaced
from diffcore.samplers import ddim_sample, ddpm_sample, heun_sample
from diffcore.schedule import NoiseSchedule, evenly_spaced_indices, validate_prior_std
from diffcore.utils import mean_flat
from gaussian_refs import (  # noqa: F401  (torch_single_thread is an autouse fixture)
    DiagGaussian,
    abar_exact,
    abar_log_sigma_linear,
    abar_sqrt_linear,
    affine_law,
    ancestral_law,
    ddim_map,
    gaussian_entropy,
    gaussian_expected_bound,
    heun_map,
    torch_single_thread,
    v_from_eps,
    x0_from_eps,
)

F64 = torch.float64
D = 6
# tau and p per element: p < tau, p = tau and p > tau all occur; p spans [0.1, 1].
DATA = DiagGaussian(mean=[-0.5, 0.3, 0.0, 0.6, -0.2, 0.4], std=[0.3, 0.8, 0.5, 0.2, 0.6, 0.4],
                    prior_std=[0.1, 1.0, 0.5, 0.6, 0.3, 0.8])
P = torch.tensor(DATA.p)  # [D], broadcasts to [B, D]
LINEAR = NoiseSchedule.linear(1000, 1e-4, 0.02)
DIFFWAVE = NoiseSchedule.linear(50, 1e-4, 0.05)
FAST_BETAS = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]


def vp(model, sched, prior_std=None, prediction="eps", learned_variance=False):
    return VPDenoiser(model, sched, prediction=prediction, learned_variance=learned_variance, prior_std=prior_std)


def fast_sample(den, shape, steps, **kw):
    """DiffWave's fast sampling: ancestral steps over the aligned schedule with sigma_s^2 = beta~_s."""
    return ddpm_sample(den, shape, steps, variance="posterior", **kw)


def heun_steps(sched, n):
    return karras_sigmas(float(sched.sigmas[0]), float(sched.sigmas[-1]), n)


def data(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.tensor(DATA.m) + torch.tensor(DATA.s) * torch.randn(n, D, generator=generator, dtype=F64)


def assert_law(x: torch.Tensor, mean: np.ndarray, var: np.ndarray) -> None:
    """Per-element sample mean and variance of ``x`` ``[N, D]`` within 4 standard errors of a Gaussian law."""
    n = x.shape[0]
    got_mean, got_var = x.mean(0).numpy(), x.var(0).numpy()
    np.testing.assert_array_less(np.abs(got_mean - mean), 4 * np.sqrt(var / n))
    np.testing.assert_array_less(np.abs(got_var - var), 4 * var * math.sqrt(2 / (n - 1)))


# ---------------------------------------------------------------------------------------------------------------
# forward process and posterior


def test_q_sample_q_mean_variance_and_posterior_closed_forms():
    """x_t = sqrt(abar) x_0 + sqrt(1 - abar) p z with the prior's noise drawn by the denoiser (``prior_noise``);
    q(x_{t-1} | x_t, x_0) from Gaussian conditioning in numpy: the schedule's mean, and its variance times p^2 (the
    scaling the bound and the samplers apply)."""
    g = torch.Generator().manual_seed(0)
    sched = NoiseSchedule.linear(100, 1e-4, 0.05)
    x0, z = data(5, g), torch.randn(5, D, generator=g, dtype=F64)
    t = torch.tensor([0, 1, 30, 77, 99])
    ab = sched.alphas_cumprod[t.numpy()][:, None]
    ab_prev = sched.alphas_cumprod_prev[t.numpy()][:, None]
    beta = sched.betas[t.numpy()][:, None]
    x_t = sched.q_sample(x0, t, vp(None, sched, P).prior_noise(z))
    np.testing.assert_allclose(x_t.numpy(), np.sqrt(ab) * x0.numpy() + np.sqrt(1 - ab) * DATA.p * z.numpy(), rtol=1e-12)
    mean, var = sched.q_mean_variance(x0, t)
    np.testing.assert_allclose(mean.numpy(), np.sqrt(ab) * x0.numpy(), rtol=1e-12)
    np.testing.assert_allclose((var * P**2).numpy(), (1 - ab) * DATA.p**2, rtol=1e-12)

    # x_{t-1} ~ N(sqrt(ab_prev) x_0, (1 - ab_prev) p^2), x_t | x_{t-1} ~ N(sqrt(alpha) x_{t-1}, beta p^2)
    post_mean, post_var = sched.q_posterior(x0, x_t, t)
    post_var = post_var * P**2
    k = t.numpy() > 0  # at index 0 x_{t-1} = x_0 is not random
    p2 = DATA.p**2
    ab_prev, beta, xt_np = ab_prev[k], beta[k], x_t.numpy()[k]
    prec = 1 / ((1 - ab_prev) * p2) + (1 - beta) / (beta * p2)
    want_mean = (np.sqrt(ab_prev) * x0.numpy()[k] / ((1 - ab_prev) * p2)
                 + np.sqrt(1 - beta) * xt_np / (beta * p2)) / prec
    np.testing.assert_allclose(post_var.numpy()[k], np.broadcast_to(1 / prec, (k.sum(), D)), rtol=1e-10)
    np.testing.assert_allclose(post_mean.numpy()[k], want_mean, rtol=1e-9)
    log_var = sched.posterior_log_variance(t, x_t)
    np.testing.assert_allclose(log_var.numpy(), sched.posterior_log_variance_clipped[t.numpy()][:, None], rtol=1e-12)


def test_q_sample_moments_by_sampling():
    """Drawing z from a generator and the prior's noise through the denoiser: mean sqrt(abar) x_0 and variance
    (1 - abar) p^2 per element."""
    n, step = 20000, 60
    sched = NoiseSchedule.linear(100, 1e-4, 0.05)
    x0 = torch.tensor(DATA.m).expand(n, D)
    z = torch.randn(n, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    x_t = sched.q_sample(x0, torch.full((n,), step), vp(None, sched, P).prior_noise(z))
    ab = sched.alphas_cumprod[step]
    assert_law(x_t, math.sqrt(ab) * DATA.m, (1 - ab) * DATA.p**2)


# ---------------------------------------------------------------------------------------------------------------
# losses


def test_loss_targets_and_mahalanobis_weighting_are_exact():
    """A model that returns target + c p gives the loss c^2 (l2) / |c| (l1) for the eps target p z, the x0 target
    and the v target sqrt(abar) p z - sqrt(1 - abar) x_0: the distance is taken on (pred - target) / p."""
    g = torch.Generator().manual_seed(2)
    sched = NoiseSchedule.linear(100, 1e-4, 0.05)
    x0, z = data(4, g), torch.randn(4, D, generator=g, dtype=F64)
    t = torch.tensor([0, 10, 50, 99])
    c = torch.tensor([0.5, -2.0, 0.0, 1.5], dtype=F64)[:, None]
    ab = torch.tensor(sched.alphas_cumprod)[t][:, None]
    eps = P * z
    targets = {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}
    for kind, fn in (("eps", epsilon_loss), ("x0", x0_loss), ("v", v_loss)):
        def model(x_t, tt, cond=None, kind=kind):
            # the model also sees the right input: x_t = sqrt(abar) x_0 + sqrt(1 - abar) p z
            torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=1e-12, atol=1e-12)
            return targets[kind] + c * P

        den = vp(model, sched, P, kind)
        torch.testing.assert_close(fn(den, x0, t=t, noise=z), c[:, 0] ** 2, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fn(den, x0, t=t, noise=z, norm="l1"), c[:, 0].abs(), rtol=1e-10, atol=1e-12)

    def hybrid_model(x_t, tt, cond=None):
        return torch.cat([(eps + c * P)[:, None], torch.zeros_like(x_t)], dim=1)

    parts = hybrid_loss_terms(vp(hybrid_model, sched, P, learned_variance=True), x0[:, None], t=t, noise=z[:, None])
    torch.testing.assert_close(parts["simple"], c[:, 0] ** 2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("step", [5, 300, 900])
def test_exact_predictors_minimise_the_weighted_losses(step):
    """At fixed t the exact E[eps | x_t] (and its x0, v forms) reach the minimum expected weighted losses
    E[(r / p)^2] = Var[r | x_t] / p^2, per element: eps a tau^2 / den, x0 tau^2 (1 - a) / den, v tau^2 / den with
    den = a tau^2 + (1 - a) p^2; l1: sqrt(2 W / pi). A shift of the output by delta p adds delta^2 (no first-order
    change: the minimiser), up to the cross term's standard error."""
    n = 4096
    g = torch.Generator().manual_seed(step)
    x0 = data(n, g)
    t = torch.full((n,), step)
    a = LINEAR.alphas_cumprod[step]
    eps_model = DATA.torch_model(abar_exact(LINEAR.alphas_cumprod))

    def x0_model(x_t, tt, cond=None):
        return eps_model.x0(x_t, tt)

    def v_model(x_t, tt, cond=None):
        return v_from_eps(LINEAR, x_t, tt, eps_model(x_t, tt))

    tau2, p2 = DATA.s**2, DATA.p**2
    den = a * tau2 + (1 - a) * p2
    weighted_var = {"eps": a * tau2 / den, "x0": tau2 * (1 - a) / den, "v": tau2 / den}
    for kind, fn, model in (("eps", epsilon_loss, eps_model), ("x0", x0_loss, x0_model), ("v", v_loss, v_model)):
        for norm in ("l2", "l1"):
            loss = fn(vp(model, LINEAR, P, kind), x0, t=t, norm=norm, generator=torch.Generator().manual_seed(7))
            w = weighted_var[kind]
            want = w.mean() if norm == "l2" else np.sqrt(2 * w / math.pi).mean()
            # 4096 x 6 residuals: relative standard error about 1% (l2), 0.6% (l1)
            assert loss.mean().item() == pytest.approx(want, rel=0.05), (kind, norm)
        # the shift test, paired on the same draws
        delta = 0.1

        def shifted(x_t, tt, cond=None, model=model):
            return model(x_t, tt) + delta * P

        base = fn(vp(model, LINEAR, P, kind), x0, t=t, generator=torch.Generator().manual_seed(8))
        moved = fn(vp(shifted, LINEAR, P, kind), x0, t=t, generator=torch.Generator().manual_seed(8))
        se = 2 * delta * math.sqrt(weighted_var[kind].mean() / (n * D))
        assert abs((moved - base).mean().item() - delta**2) < 4 * se + 1e-12, kind


def test_diffusion_and_hybrid_loss_pass_the_prior_through():
    sched = NoiseSchedule.linear(50, 1e-4, 0.05)
    x0 = data(8, torch.Generator().manual_seed(3))
    model = DATA.torch_model(abar_exact(sched.alphas_cumprod))
    got = diffusion_loss(vp(model, sched, P), x0, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    t, _ = UniformTimesteps(50).sample(8, "cpu", g)
    want = epsilon_loss(vp(model, sched, P), x0, t=t, generator=g, weighting=torch.ones(8, dtype=F64))
    assert torch.equal(got, want)
    assert not torch.allclose(got, diffusion_loss(vp(model, sched), x0, generator=torch.Generator().manual_seed(4)))

    def hybrid_model(x_t, tt, cond=None):
        return torch.cat([model(x_t[:, 0], tt)[:, None], torch.full_like(x_t, 0.3)], dim=1)

    x = x0[:, None]
    hybrid = vp(hybrid_model, sched, P, learned_variance=True)
    parts = hybrid_loss_terms(hybrid, x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(parts["loss"], hybrid_loss(hybrid, x, generator=torch.Generator().manual_seed(5)))
    # the vlb part is vlb_term under the prior at the same draws, in bits per dimension
    g = torch.Generator().manual_seed(5)
    t, _ = UniformTimesteps(50).sample(8, "cpu", g)
    z = torch.randn(x.shape, generator=g, dtype=F64)
    x_t = sched.q_sample(x, t, z * P)
    eps_hat = model(x_t[:, 0], sched.model_timesteps(t))[:, None]
    log_var = 0.3 * torch.log(sched.at("betas", t, x)) + 0.7 * sched.posterior_log_variance(t, x)
    vlb = vlb_term(sched, x, x_t, t, x0_from_eps(sched, x_t, t, eps_hat), log_var, prior_std=P)
    torch.testing.assert_close(parts["vlb"], vlb / (D * math.log(2)), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# likelihood


def test_prior_kl_and_vlb_term_are_the_unit_prior_terms_of_x_over_p():
    """KL is invariant under x -> x / p, so under the prior every KL term equals the plain term of the rescaled
    variables, and the Gaussian decoder's -log density gains sum log p (the Jacobian)."""
    g = torch.Generator().manual_seed(6)
    sched = NoiseSchedule.linear(30, 1e-4, 0.1)
    x0 = data(6, g)
    t = torch.tensor([0, 0, 1, 5, 17, 29])
    x_t = sched.q_sample(x0, t, torch.randn(6, D, generator=g, dtype=F64) * P)
    pred = x0 + 0.1 * torch.randn(6, D, generator=g, dtype=F64)
    log_var = torch.log(sched.at("betas", t, x0)) + 0.2 * torch.randn(6, D, generator=g, dtype=F64)
    got = vlb_term(sched, x0, x_t, t, pred, log_var, prior_std=P)
    plain = vlb_term(sched, x0 / P, x_t / P, t, pred / P, log_var)
    jacobian = torch.where(t == 0, torch.log(P).sum(), torch.zeros((), dtype=F64))
    torch.testing.assert_close(got, plain + jacobian, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prior_kl(sched, x0, prior_std=P), prior_kl(sched, x0 / P), rtol=1e-12, atol=1e-14)
    a = sched.alphas_cumprod[-1]
    want = (0.5 * (-math.log(1 - a) + (1 - a) + a * (x0 / P) ** 2 - 1)).sum(1)
    torch.testing.assert_close(prior_kl(sched, x0, prior_std=P), want, rtol=1e-10, atol=1e-14)


def test_discretized_decoder_under_the_prior_matches_scipy():
    """The 8-bit decoder with variance sigma_1^2 p^2: the mass of [x - 1/255, x + 1/255] (edges to +-inf)."""
    sched = NoiseSchedule.linear(30, 1e-4, 0.1)
    x0 = torch.tensor([[-1.0, -127 / 255, 1 / 255, 3 / 255, 129 / 255, 1.0]], dtype=F64)  # 8-bit levels
    pred = x0 + torch.tensor([[0.01, -0.02, 0.003, 0.0, 0.05, -0.01]], dtype=F64)
    t = torch.zeros(1, dtype=torch.long)
    sigma2 = 1e-3
    log_var = torch.full_like(x0, math.log(sigma2))
    got = vlb_term(sched, x0, x0, t, pred, log_var, decoder="discretized", prior_std=P[None])
    d = stats.norm(pred[0].numpy(), np.sqrt(sigma2) * DATA.p)
    x = x0[0].numpy()
    mass = d.cdf(x + 1 / 255) - d.cdf(x - 1 / 255)
    mass[0], mass[-1] = d.cdf(x[0] + 1 / 255)[0], d.sf(x[-1] - 1 / 255)[-1]
    assert got.item() == pytest.approx(-np.log(mass).sum(), rel=1e-9)


def test_nll_with_the_exact_denoiser_is_a_tight_bound_under_the_prior():
    """T = 500 linear steps (1e-4 .. 0.04), sigma_t^2 = beta_t, with the exact predictor of eps = p z.

    Paired with the exact -log p(x_0): the bound is above it (-4 SE) and, with the closed-form expectation
    (``gaussian_expected_bound(prior_std=p)``, independent numpy), within 0.01 nats/dim; each of the T + 1 terms
    agrees with its closed form (|z| < 5). The per-dimension estimator variance is about 1 nat^2, so 4096 x 6
    examples-dims give a standard error of about 0.006 nats/dim.
    """
    n = 4096
    sched = NoiseSchedule.linear(500, 1e-4, 0.04)
    g = torch.Generator().manual_seed(9)
    x0 = data(n, g)
    terms = nll_terms(vp(DATA.torch_model(abar_exact(sched.alphas_cumprod)), sched, P), x0, generator=g)
    bound = terms.sum(1)
    tau = torch.tensor(DATA.s)
    exact = (0.5 * torch.log(2 * math.pi * tau**2) + (x0 - torch.tensor(DATA.m)) ** 2 / (2 * tau**2)).sum(1)
    gap = (bound - exact) / D
    se = gap.std().item() / math.sqrt(n)
    assert se < 0.008
    assert gap.mean().item() >= -4 * se, "the bound fell below the exact NLL"

    expected_total, expected_terms = gaussian_expected_bound(sched.betas, DATA.m, DATA.s, D, "beta", prior_std=DATA.p)
    entropy = sum(gaussian_entropy(s, 1) for s in DATA.s)
    assert 0 <= (expected_total - entropy) / D < 0.01
    assert abs(gap.mean().item() - (expected_total - entropy) / D) < 4 * se
    z = (terms.mean(0).numpy() - expected_terms) / (terms.std(0).numpy() / math.sqrt(n) + 1e-300)
    assert np.abs(z).max() < 5
    # the prior matters: the unit-prior formula for the same data and network is far from these terms
    _, unit_terms = gaussian_expected_bound(sched.betas, DATA.m, DATA.s, D, "beta")
    assert abs(unit_terms[0] - expected_terms[0]) > 1.0


# ---------------------------------------------------------------------------------------------------------------
# samplers: each one's exact output law under the prior


def test_ddpm_reproduces_the_data_under_the_prior():
    """1000 ancestral steps from x_T = p z with noise sigma_t p z: per-element N(m, tau^2) (within 4 SE), and the
    exact law of the discretised chain (``ancestral_law``) for both reverse variances."""
    n = 3000
    model = DATA.torch_model(abar_exact(LINEAR.alphas_cumprod))
    for variance in ("beta", "posterior"):
        x = ddpm_sample(vp(model, LINEAR, P), (n, D), generator=torch.Generator().manual_seed(10), dtype=F64,
                        variance=variance)
        assert_law(x, DATA.m, DATA.s**2)
        law_mean, law_var = ancestral_law(DATA, LINEAR.betas, variance)
        assert_law(x, law_mean, law_var)
        np.testing.assert_allclose(law_mean, DATA.m, atol=0.01)
        np.testing.assert_allclose(law_var, DATA.s**2, rtol=0.03)


def test_ddim_is_the_reference_map_and_reproduces_its_law():
    """eta = 0: DDIM is an affine map per element; sample for sample against ``ddim_map`` with the exact eps, and
    from x_T = p z the law of that map. eta = 1 is ancestral sampling with beta~ on the respaced schedule."""
    keep = evenly_spaced_indices(1000, 50)
    model = DATA.torch_model(abar_exact(LINEAR.alphas_cumprod))
    grid = torch.linspace(-3, 3, 13, dtype=F64)[:, None].expand(13, D).contiguous()
    out = ddim_sample(vp(model, LINEAR), (13, D), respaced(LINEAR, 50), x_T=grid)
    np.testing.assert_allclose(out.numpy(), ddim_map(DATA, LINEAR.alphas_cumprod, keep, grid.numpy()),
                               rtol=1e-9, atol=1e-9)
    n = 4000
    x = ddim_sample(vp(model, LINEAR, P), (n, D), respaced(LINEAR, 50), generator=torch.Generator().manual_seed(11),
                    dtype=F64)
    assert_law(x, *affine_law(lambda v: ddim_map(DATA, LINEAR.alphas_cumprod, keep, v), DATA.p**2))
    x = ddim_sample(vp(model, LINEAR, P), (n, D), respaced(LINEAR, 50), eta=1.0,
                    generator=torch.Generator().manual_seed(12), dtype=F64)
    assert_law(x, *ancestral_law(DATA, LINEAR.respace(keep).betas, "posterior"))


def test_heun_is_the_reference_map_and_reproduces_its_law():
    """The ODE dx/dsigma = (x - D(x; sigma)) / sigma keeps its form; only the start x_T = p z changes."""
    model = DATA.torch_model(abar_log_sigma_linear(LINEAR.alphas_cumprod))
    lo, hi = LINEAR.sigmas[0], LINEAR.sigmas[-1]
    grid = torch.linspace(-3, 3, 13, dtype=F64)[:, None].expand(13, D).contiguous()
    out = heun_sample(vp(model, LINEAR), (13, D), heun_steps(LINEAR, 18), x_T=grid)
    np.testing.assert_allclose(out.numpy(), heun_map(DATA, lo, hi, 18, 7.0, grid.numpy()), rtol=1e-8, atol=1e-8)
    x = heun_sample(vp(model, LINEAR, P), (4000, D), heun_steps(LINEAR, 18),
                    generator=torch.Generator().manual_seed(13), dtype=F64)
    mean, var = affine_law(lambda v: heun_map(DATA, lo, hi, 18, 7.0, v), DATA.p**2)
    assert_law(x, mean, var)
    # Heun-18's discretisation inflates the variance by up to 15% on this data (as much as under the N(0, I) prior);
    # the map's law approaches the data law as the steps grow.
    np.testing.assert_allclose(var, DATA.s**2, rtol=0.2)
    _, var_40 = affine_law(lambda v: heun_map(DATA, lo, hi, 40, 7.0, v), DATA.p**2)
    np.testing.assert_allclose(var_40, DATA.s**2, rtol=0.03)


def test_fast_sampler_reproduces_its_law():
    """DiffWave's 6-step schedule from x_T = p z: Algorithm 2 on the inference betas with noise beta~_s p z."""
    model = DATA.torch_model(abar_sqrt_linear(DIFFWAVE.alphas_cumprod))
    x = fast_sample(vp(model, DIFFWAVE, P), (4000, D), fast_schedule(DIFFWAVE, FAST_BETAS),
                    generator=torch.Generator().manual_seed(14), dtype=F64)
    assert_law(x, *ancestral_law(DATA, FAST_BETAS, "posterior"))


# ---------------------------------------------------------------------------------------------------------------
# no prior: the plain diffusion, bit for bit; unit prior: the same numbers


class Tiny(torch.nn.Module):
    def __init__(self, channels: int = 1):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))
        self.channels = channels

    def forward(self, x_t, t, cond=None):
        out = torch.tanh(self.w * x_t * (1 + t.to(x_t.dtype).reshape(-1, *(1,) * (x_t.ndim - 1)) / 50))
        return torch.cat([out] * self.channels, dim=1)


def test_no_prior_is_the_plain_formula_bit_for_bit():
    """Without a prior the noise is z itself and every path is the plain formula: the same floating-point
    operations in the same order."""
    sched = NoiseSchedule.linear(20, 1e-4, 0.1)
    g = torch.Generator().manual_seed(15)
    x0, z = torch.randn(3, 1, 8, generator=g, dtype=F64), torch.randn(3, 1, 8, generator=g, dtype=F64)
    t = torch.tensor([0, 7, 19])
    sa, s1a = sched.at("sqrt_alphas_cumprod", t, x0), sched.at("sqrt_one_minus_alphas_cumprod", t, x0)
    x_t = sched.q_sample(x0, t, vp(Tiny(), sched).prior_noise(z))
    assert torch.equal(x_t, sa * x0 + s1a * z)
    model = Tiny()
    assert torch.equal(epsilon_loss(vp(model, sched), x0, t=t, noise=z), mean_flat((model(x_t, t) - z) ** 2))

    out = ddpm_sample(vp(model, sched), (3, 1, 8), generator=torch.Generator().manual_seed(16))
    g = torch.Generator().manual_seed(16)
    x = torch.randn(3, 1, 8, generator=g, dtype=F64)
    for k in range(19, -1, -1):
        tt = torch.full((3,), k)
        x0_hat = x0_from_eps(sched, x, tt, model(x, tt))
        mean, _ = sched.q_posterior(x0_hat, x, tt)
        x = mean + sched.at("betas", tt, x).sqrt() * torch.randn(3, 1, 8, generator=g, dtype=F64) if k else mean
    assert torch.equal(out, x)


def test_unit_prior_gives_the_same_numbers_as_no_prior():
    sched = NoiseSchedule.linear(20, 1e-4, 0.1)
    x0 = torch.randn(3, 1, 8, generator=torch.Generator().manual_seed(17), dtype=F64).clamp(-1, 1)
    t = torch.tensor([0, 7, 19])
    ones = torch.ones(3, 1, 8, dtype=F64)

    def both(fn, **kw):
        return fn(prior_std=None, **kw), fn(prior_std=ones, **kw)

    def gen():
        return torch.Generator().manual_seed(18)

    checks = [
        both(lambda prior_std: vp(Tiny(), sched, prior_std).prior_noise(torch.randn(x0.shape, generator=gen(),
                                                                                    dtype=F64))),
        both(lambda **kw: prior_kl(sched, x0, **kw)),
    ]
    for kind, fn in (("eps", epsilon_loss), ("x0", x0_loss), ("v", v_loss)):
        for norm in ("l1", "l2"):
            checks.append(both(lambda fn=fn, k=kind, norm=norm, prior_std=None: fn(vp(Tiny(), sched, prior_std, k), x0,
                                                                                  norm=norm, generator=gen())))
    for prediction in ("eps", "x0", "v"):
        checks.append(both(lambda p=prediction, prior_std=None: diffusion_loss(vp(Tiny(), sched, prior_std, p), x0,
                                                                              generator=gen(), min_snr_gamma=5.0)))
    checks.append(both(lambda prior_std=None: hybrid_loss(vp(Tiny(2), sched, prior_std, learned_variance=True), x0,
                                                          generator=gen(), decoder="discretized")))
    for variance, decoder in (("beta", "gaussian"), ("posterior", "discretized")):
        checks.append(both(lambda v=variance, d=decoder, prior_std=None: nll_terms(vp(Tiny(), sched, prior_std), x0,
                                                                                  variance=v, decoder=d,
                                                                                  generator=gen())))
    checks.append(both(lambda prior_std=None: nll(vp(Tiny(2), sched, prior_std, learned_variance=True), x0,
                                                  generator=gen())))
    shape = (3, 1, 8)
    for sampler, steps, extra in ((ddpm_sample, None, {}), (ddpm_sample, None, dict(variance="posterior")),
                                  (ddim_sample, respaced(sched, 5), {}),
                                  (ddim_sample, respaced(sched, 5), dict(eta=0.5)),
                                  (heun_sample, heun_steps(sched, 4), {}),
                                  (fast_sample, fast_schedule(sched, [1e-4, 0.05, 0.3]), {})):
        checks.append(both(lambda s=sampler, st=steps, e=extra, prior_std=None: s(vp(Tiny(), sched, prior_std), shape,
                                                                                 st, generator=gen(), **e)))
    for plain, unit in checks:
        assert torch.isfinite(plain).all()
        torch.testing.assert_close(unit, plain, rtol=1e-12, atol=1e-12)


def test_prior_shapes_broadcast_for_any_rank():
    """[B, 1, T] audio with a per-sample [B, 1, T] or per-example [B, 1, 1] prior; images with [1, C, 1, 1]."""
    sched = NoiseSchedule.linear(10, 1e-4, 0.2)
    cases = (
        ((2, 1, 16), torch.rand(2, 1, 16) + 0.1),
        ((2, 1, 16), torch.tensor([0.2, 2.0])[:, None, None]),
        ((2, 3, 4, 4), torch.tensor([0.5, 1.0, 2.0])[None, :, None, None]),
        ((2, 5), torch.tensor(0.3)),
    )
    for shape, prior in cases:
        model = Tiny().float()
        for sampler, steps in ((ddpm_sample, None), (ddim_sample, respaced(sched, 5)), (heun_sample, heun_steps(sched, 18)),
                               (fast_sample, fast_schedule(sched, [1e-4, 0.1, 0.3]))):
            out = sampler(vp(model, sched, prior), shape, steps, generator=torch.Generator().manual_seed(0))
            assert out.shape == shape and out.dtype == torch.float32 and torch.isfinite(out).all()
        x0 = torch.randn(shape)
        assert epsilon_loss(vp(model, sched, prior), x0).shape == (2,)
        assert nll(vp(model, sched, prior), x0).shape == (2,)
    # the starting noise is p z: a tiny per-example prior gives a tiny x_T, seen through the callback of step 0
    seen = []
    ddim_sample(vp(lambda x, t, cond=None: torch.zeros_like(x), sched, torch.tensor([1e-3, 1.0])[:, None, None]),
                (2, 1, 64), respaced(sched, 3), callback=lambda i, x: seen.append(x.clone()),
                generator=torch.Generator().manual_seed(1))
    ratio = seen[0][0].std() / seen[0][1].std()
    assert 1e-4 < ratio.item() < 1e-2


BAD = {
    "zero": torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]),
    "negative": torch.tensor([1.0, -0.5, 1.0, 1.0, 1.0, 1.0]),
    "nan": torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0]),
    "inf": torch.tensor([1.0, float("inf"), 1.0, 1.0, 1.0, 1.0]),
    "shape": torch.ones(4, D),
    "enlarges": torch.ones(2, 3, D),
    "not a tensor": 0.5,
    "numpy": np.ones(D),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_prior_std_is_a_value_error_naming_it(name):
    bad = BAD[name]
    sched = NoiseSchedule.linear(10, 1e-4, 0.2)
    x0 = torch.randn(2, D, dtype=F64)
    t = torch.tensor([0, 9])
    model = Tiny()
    calls = [
        lambda: validate_prior_std(bad, x0.shape),
        lambda: vp(model, sched, bad).checked_prior(x0),
        lambda: epsilon_loss(vp(model, sched, bad), x0),
        lambda: diffusion_loss(vp(model, sched, bad, "v"), x0),
        lambda: hybrid_loss(vp(Tiny(2), sched, bad, learned_variance=True), x0),
        lambda: prior_kl(sched, x0, prior_std=bad),
        lambda: vlb_term(sched, x0, x0, t, x0, torch.zeros_like(x0), prior_std=bad),
        lambda: nll(vp(model, sched, bad), x0),
        lambda: ddpm_sample(vp(model, sched, bad), (2, D)),
        lambda: ddim_sample(vp(model, sched, bad), (2, D), respaced(sched, 3)),
        lambda: heun_sample(vp(model, sched, bad), (2, D), heun_steps(sched, 3)),
        lambda: fast_sample(vp(model, sched, bad), (2, D), fast_schedule(sched, [1e-4, 0.2])),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="prior_std"):
            call()


def test_a_prior_that_underflows_in_the_data_dtype_is_rejected():
    with pytest.raises(ValueError, match="prior_std must be positive"):
        validate_prior_std(torch.tensor([1e-50], dtype=F64), (2, 1), dtype=torch.float32)
    assert validate_prior_std(torch.tensor([1e-50], dtype=F64), (2, 1)).dtype == F64
