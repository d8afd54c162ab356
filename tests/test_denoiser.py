"""Denoisers: EDM's preconditioning in closed form, the VP sigma view, one parameterisation layer for every loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffcore.config import ConfigError, DiffusionConfig, EDMConfig
from diffcore.denoiser import EDMDenoiser, VPDenoiser, denoiser_from_config, split_variance
from diffcore.discretization import fast_sampling_steps, fast_schedule, karras_sigmas, respaced
from diffcore.guidance import guided
from diffcore.losses import diffusion_loss, edm_loss, epsilon_loss, v_loss, x0_loss
from diffcore.samplers import ddpm_sample, heun_sample
from diffcore.schedule import NoiseSchedule
from gaussian_refs import (GaussianEps, abar_exact, heun_churn_law, torch_single_thread, v_from_eps,  # noqa: F401
                           v_of, x0_from_eps)

F64 = torch.float64
MU, S = 0.3, 0.45  # data N(MU, S^2) per dimension


def ideal_edm_network(den: EDMDenoiser, mu: float = MU, s: float = S):
    """The network F whose preconditioned denoiser is the exact D*(x; sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)
    of N(mu, s^2) data: F = (D* - c_skip x) / c_out, reading x = input / c_in and sigma back from c_noise."""

    def network(x_in, t, cond=None):
        sigma = torch.exp(4.0 * t.to(F64) / den.params.time_scale).reshape(-1, *(1,) * (x_in.ndim - 1))
        c_skip, c_out, c_in, _ = den.coefficients(sigma)
        x = x_in / c_in
        ideal = mu + s**2 / (s**2 + sigma**2) * (x - mu)
        return ((ideal - c_skip * x) / c_out).to(x_in.dtype)

    return network


def test_edm_coefficients_are_table_1():
    den = EDMDenoiser(lambda x, t, cond=None: x, EDMConfig(sigma_data=0.5))
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 80.0], dtype=F64)
    c_skip, c_out, c_in, c_noise = den.coefficients(sigma)
    sd = 0.5
    for i, s in enumerate(sigma.tolist()):
        assert c_skip[i].item() == pytest.approx(sd**2 / (s**2 + sd**2), rel=1e-14)
        assert c_out[i].item() == pytest.approx(s * sd / math.sqrt(s**2 + sd**2), rel=1e-14)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + sd**2), rel=1e-14)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-14, abs=1e-15)
    # the design rules behind them (Karras et al. App. B.6): unit-variance input and effective target for data of
    # std sigma_data, and lambda(sigma) = 1 / c_out^2 so that every sigma's loss starts at weight 1
    total = sigma**2 + sd**2
    torch.testing.assert_close(c_in**2 * total, torch.ones_like(sigma), rtol=1e-14, atol=0)
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
    torch.testing.assert_close(target_var, torch.ones_like(sigma), rtol=1e-12, atol=0)
    torch.testing.assert_close(den.loss_weight(sigma) * c_out**2, torch.ones_like(sigma), rtol=1e-14, atol=0)


@pytest.mark.parametrize("time_scale", [1.0, 250.0])
def test_edm_denoiser_of_the_ideal_network_is_the_gaussian_posterior_mean(time_scale):
    den = EDMDenoiser(None, EDMConfig(sigma_data=0.5, time_scale=time_scale))
    den = den.with_network(ideal_edm_network(den))
    x = torch.linspace(-3, 3, 11, dtype=F64)[:, None].expand(11, 4).contiguous()
    for sigma in (0.01, 0.7, 20.0):
        want = MU + S**2 / (S**2 + sigma**2) * (x - MU)
        torch.testing.assert_close(den.denoise(x, sigma), want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_edm_loss_of_the_ideal_denoiser_equals_its_analytic_value(sigma):
    """At fixed sigma the ideal D*'s error is Gaussian with variance s^2 sigma^2 / (s^2 + sigma^2) per dimension, so
    E[lambda(sigma) ||D* - x_0||^2] = lambda(sigma) s^2 sigma^2 / (s^2 + sigma^2); 8192 x 16 draws: relative
    standard error sqrt(2 / 131072) = 0.4%, tolerance 4 SE."""
    den = EDMDenoiser(None, EDMConfig(sigma_data=0.5))
    den = den.with_network(ideal_edm_network(den))
    g = torch.Generator().manual_seed(int(sigma * 100))
    x0 = MU + S * torch.randn(8192, 16, generator=g, dtype=F64)
    loss = edm_loss(den, x0, sigma=torch.full((8192,), sigma, dtype=F64), generator=g)
    want = float(den.loss_weight(torch.tensor(sigma, dtype=F64))) * S**2 * sigma**2 / (S**2 + sigma**2)
    assert loss.shape == (8192,)
    assert loss.mean().item() == pytest.approx(want, rel=4 * math.sqrt(2 / (8192 * 16)))


def test_edm_loss_over_the_log_normal_sigma_matches_quadrature():
    """With sigma drawn from ln sigma ~ N(P_mean, P_std^2) the expected loss is the Gauss-Hermite integral of the
    fixed-sigma value; 16384 examples x 8 dims, tolerance 4 standard errors of the estimate."""
    den = EDMDenoiser(None, EDMConfig(sigma_data=0.5, p_mean=-1.2, p_std=1.2))
    den = den.with_network(ideal_edm_network(den))
    g = torch.Generator().manual_seed(3)
    x0 = MU + S * torch.randn(16384, 8, generator=g, dtype=F64)
    loss = edm_loss(den, x0, generator=g)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    sig = np.exp(-1.2 + 1.2 * nodes)
    value = (sig**2 + 0.25) / (sig * 0.5) ** 2 * S**2 * sig**2 / (S**2 + sig**2)
    want = float((weights * value).sum() / math.sqrt(2 * math.pi))
    se = loss.std().item() / math.sqrt(loss.numel())
    assert abs(loss.mean().item() - want) < 4 * se
    # a wrong denoiser scores worse: F + 0.5 adds 0.25 to the expected loss (lambda c_out^2 = 1), far beyond the noise
    worse = den.with_network(lambda x, t, cond=None: ideal_edm_network(den)(x, t) + 0.5)
    assert edm_loss(worse, x0, generator=torch.Generator().manual_seed(3)).mean().item() > want + 10 * se


def test_heun_with_the_ideal_edm_denoiser_follows_the_exact_ode():
    """For N(mu, s^2) data the probability-flow ODE is solved exactly by x(sigma) - mu = (x(sigma_max) - mu)
    sqrt((s^2 + sigma^2) / (s^2 + sigma_max^2)), from the start x = sigma_max z (Karras et al. Algorithm 1). Heun
    over N Karras levels converges to it at second order: the error shrinks about 16x per 4x more steps."""
    den = EDMDenoiser(None, EDMConfig(sigma_data=0.5, sigma_min=0.002, sigma_max=80.0))
    den = den.with_network(ideal_edm_network(den))
    z = torch.linspace(-3, 3, 13, dtype=F64)[:, None]
    want = MU + (80.0 * z - MU) * math.sqrt(S**2 / (S**2 + 80.0**2))
    errors = [(heun_sample(den, (13, 1), karras_sigmas(0.002, 80.0, n), x_T=z) - want).abs().max().item()
              for n in (16, 64, 256)]
    assert errors[2] < 1e-3
    assert errors[0] / errors[1] > 10 and errors[1] / errors[2] > 10, errors


def edm_ideal() -> EDMDenoiser:
    den = EDMDenoiser(None, EDMConfig(sigma_data=0.5, sigma_min=0.002, sigma_max=80.0))
    return den.with_network(ideal_edm_network(den))


@pytest.mark.parametrize("steps, churn, tmin, tmax, noise", [(8, 2.0, 0.0, math.inf, 1.0),  # gamma 0.25, capped at 80
                                                              (8, 40.0, 0.05, 10.0, 1.1),  # gamma sqrt(2) - 1, a window
                                                              (24, 10.0, 0.0, math.inf, 1.0)])
def test_heun_churn_has_the_gaussian_law_of_algorithm_2(steps, churn, tmin, tmax, noise):
    """Karras et al. Algorithm 2 with the exact denoiser of N(mu, s^2) data is affine in x - mu with fresh Gaussian
    noise at each churned level, so its output law is known exactly (``heun_churn_law``). 2^17 samples: the sample
    mean and variance within 4 standard errors of it (variance: relative SE sqrt(2 / n))."""
    sigmas = karras_sigmas(0.002, 80.0, steps)
    n = 2**17
    x = heun_sample(edm_ideal(), (n, 1), sigmas, generator=torch.Generator().manual_seed(steps), dtype=F64,
                    s_churn=churn, s_tmin=tmin, s_tmax=tmax, s_noise=noise)
    mean, var = heun_churn_law(MU, S, sigmas.tolist(), churn, tmin, tmax, noise, cap=80.0)
    assert abs(x.mean().item() - mean) < 4 * math.sqrt(var / n)
    assert x.var().item() / var == pytest.approx(1.0, abs=4 * math.sqrt(2 / n))
    _, ode_var = heun_churn_law(MU, S, sigmas.tolist(), 0.0, 0.0, math.inf, 1.0, cap=80.0)
    assert abs(var - ode_var) > 10 * math.sqrt(2 / n) * var  # the churn moved the law far beyond the tolerance


def test_heun_churn_converges_to_the_data_law_and_zero_churn_is_algorithm_1():
    """As the levels grow the stochastic sampler's law tends to N(mu, s^2) (first order in 1 / N here); with
    s_churn 0 the sampler is Algorithm 1 bit for bit and draws nothing after x_T; a churned run is reproducible
    from its seed."""
    gaps = [abs(heun_churn_law(MU, S, karras_sigmas(0.002, 80.0, n).tolist(), 40.0, 0.0, math.inf, 1.0, 80.0)[1]
                / S**2 - 1) for n in (16, 64, 256)]
    assert gaps[2] < 0.005 and gaps[0] / gaps[1] > 4 and gaps[1] / gaps[2] > 4, gaps
    den, sigmas = edm_ideal(), karras_sigmas(0.002, 80.0, 6)
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    g = torch.Generator().manual_seed(5)
    assert torch.equal(heun_sample(den, (64, 3), sigmas, x_T=z, generator=g, s_churn=0.0, s_tmin=0.1),
                       heun_sample(den, (64, 3), sigmas, x_T=z))
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(5).get_state())
    churned = [heun_sample(den, (64, 3), sigmas, x_T=z, generator=torch.Generator().manual_seed(1), s_churn=5.0)
               for _ in range(2)]
    assert torch.equal(churned[0], churned[1]) and not torch.equal(churned[0], heun_sample(den, (64, 3), sigmas, x_T=z))


def test_heun_churn_never_asks_the_network_above_sigma_max():
    """sigma_hat is capped at the denoiser's sigma_max, so the first level (sigma_max itself) is not churned."""
    den = edm_ideal()
    ideal, seen = den.network, []

    def network(x_in, t, cond=None):
        seen.append(torch.exp(4.0 * t.to(F64) / den.params.time_scale).max().item())
        return ideal(x_in, t, cond)

    heun_sample(den.with_network(network), (4, 2), karras_sigmas(0.002, 80.0, 4), s_churn=100.0, dtype=F64,
                generator=torch.Generator().manual_seed(0))
    assert max(seen) == pytest.approx(80.0, rel=1e-9) and len(seen) == 7


@pytest.mark.parametrize("bad", [{"s_churn": -1.0}, {"s_churn": math.nan}, {"s_noise": 0.0}, {"s_noise": math.inf},
                                 {"s_tmin": 2.0, "s_tmax": 1.0}, {"s_tmin": math.nan}])
def test_heun_churn_refuses_bad_settings(bad):
    with pytest.raises(ValueError, match="s_churn must be finite >= 0, s_noise finite > 0 and s_tmin <= s_tmax"):
        heun_sample(edm_ideal(), (2, 1), karras_sigmas(0.002, 80.0, 3), **bad)


def test_vp_sigma_view_is_x_minus_sigma_eps():
    """D(x; sigma) of a VP denoiser: the network at x / sqrt(1 + sigma^2) and the fractional step where log sigma
    interpolates the schedule's sigmas; D = x - sigma eps_hat, whatever the parameterisation."""
    sched = NoiseSchedule.linear(100, 1e-4, 0.05)
    seen = []

    def eps_net(x, t, cond=None):
        seen.append(t.clone())
        return 0.25 * x

    den = VPDenoiser(eps_net, sched)
    x = torch.randn(3, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    k = 40
    sigma = float(sched.sigmas[k])
    got = den.denoise(x, sigma)
    torch.testing.assert_close(got, x - sigma * 0.25 * x / math.sqrt(1 + sigma**2), rtol=1e-12, atol=1e-12)
    assert seen[-1].dtype == F64 and seen[-1][0].item() == pytest.approx(k, abs=1e-9)
    # the same network as an x0-predictor: D is then its output read at the VP input
    x0_den = VPDenoiser(lambda xv, t, cond=None: 0.5 * xv, sched, prediction="x0")
    torch.testing.assert_close(x0_den.denoise(x, sigma), 0.5 * x / math.sqrt(1 + sigma**2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 4), (5, 2, 6), (5, 3, 4, 4)])
def test_prediction_conversions_round_trip(shape):
    """The denoiser owns the conversions between eps, x_0 and v (and the schedule's one left for DDIM agrees)."""
    s = NoiseSchedule.cosine(100)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 90, 99])
    x_t = s.q_sample(x0, t, eps)
    dens = {kind: VPDenoiser(None, s, prediction=kind) for kind in ("eps", "x0", "v")}
    v = dens["eps"].target("v", x0, eps, t)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)  # noqa: E731
    close(dens["eps"].in_space("x0", x_t, t, eps), x0)
    close(dens["x0"].in_space("eps", x_t, t, x0), eps)
    close(s.predict_eps_from_x0(x_t, t, x0), eps)
    close(dens["v"].in_space("x0", x_t, t, v), x0)
    close(dens["v"].in_space("eps", x_t, t, v), eps)
    close(dens["eps"].in_space("v", x_t, t, eps), v)
    close(dens["x0"].in_space("v", x_t, t, x0), v)
    for kind, out in (("eps", eps), ("x0", x0), ("v", v)):
        e, x = dens[kind].from_output(x_t, t, out)
        close(e, eps)
        close(x, x0)
        assert dens[kind].in_space(kind, x_t, t, out) is out  # the network's own space: its output as it is
        close(dens[kind].target(kind, x0, eps, t), out)
    # v is the rate of change of x_t along the circle of Salimans & Ho: x_t = cos(phi) x0 + sin(phi) eps.
    phi = torch.atan2(s.at("sqrt_one_minus_alphas_cumprod", t, x0), s.at("sqrt_alphas_cumprod", t, x0))
    close(v, -torch.sin(phi) * x0 + torch.cos(phi) * eps)


def test_prior_noise_is_the_one_scaling_by_the_prior():
    """eps = s * z under a prior (cast to z's dtype), z itself without one; a loss draws its eps through it."""
    s = NoiseSchedule.linear(10)
    z = torch.randn(3, 1, 8, dtype=F64)
    prior = torch.rand(3, 1, 8) + 0.1
    den = VPDenoiser(None, s)
    assert den.prior_noise(z) is z
    scaled = den.with_prior(prior).prior_noise(z)
    assert scaled.dtype == F64 and torch.equal(scaled, z * prior.to(F64))


def test_losses_measure_any_space_from_any_parameterisation():
    """x0_loss of an eps denoiser is the x_0-space error of its converted prediction (and so on); with the matching
    parameterisation every loss is the plain distance of the network output."""
    sched = NoiseSchedule.linear(200, 1e-4, 0.05)
    g = torch.Generator().manual_seed(1)
    x0 = MU + S * torch.randn(6, 7, generator=g, dtype=F64)
    z = torch.randn(6, 7, generator=g, dtype=F64)
    t = torch.tensor([0, 3, 50, 100, 150, 199])
    net = GaussianEps(0.0, 1.0, abar_exact(sched.alphas_cumprod))  # the exact eps of N(0, 1): wrong for this data
    den = VPDenoiser(net, sched)
    x_t = sched.q_sample(x0, t, z)
    eps = net(x_t, t)
    x0_hat = x0_from_eps(sched, x_t, t, eps)
    v_hat = v_from_eps(sched, x_t, t, eps)
    torch.testing.assert_close(epsilon_loss(den, x0, t=t, noise=z), ((eps - z) ** 2).mean(1))
    torch.testing.assert_close(x0_loss(den, x0, t=t, noise=z), ((x0_hat - x0) ** 2).mean(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v_loss(den, x0, t=t, noise=z), ((v_hat - v_of(sched, x0, t, z)) ** 2).mean(1),
                               rtol=1e-10, atol=1e-12)
    # the x0-parameterised twin of the same predictor gives the same three numbers
    twin = VPDenoiser(lambda xx, tt, cond=None: x0_from_eps(sched, xx, tt, net(xx, tt)), sched, prediction="x0")
    for fn in (epsilon_loss, x0_loss, v_loss):
        torch.testing.assert_close(fn(twin, x0, t=t, noise=z), fn(den, x0, t=t, noise=z), rtol=1e-9, atol=1e-12)


def test_learned_variance_sampling_uses_the_network_variance():
    """ddpm_sample of a learned-variance denoiser (variance=None) draws with exp(v log beta + (1 - v) log beta~):
    v = 1 replays variance="beta" and v = 0 variance="posterior", sample for sample."""
    sched = NoiseSchedule.linear(30, 1e-4, 0.1)

    def net(v_value):
        def f(x, t, cond=None):
            return torch.cat([0.3 * x, torch.full_like(x, v_value)], dim=1)
        return f

    def plain(x, t, cond=None):
        return 0.3 * x

    shape = (4, 2, 5)
    for v_value, variance in ((1.0, "beta"), (0.0, "posterior")):
        got = ddpm_sample(VPDenoiser(net(v_value), sched, learned_variance=True), shape, dtype=F64,
                          generator=torch.Generator().manual_seed(2))
        want = ddpm_sample(VPDenoiser(plain, sched), shape, variance=variance, dtype=F64,
                           generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="2C"):
        ddpm_sample(VPDenoiser(plain, sched, learned_variance=True), (4, 3, 5))  # odd channels
    with pytest.raises(ValueError, match="2C"):
        ddpm_sample(VPDenoiser(plain, sched, learned_variance=True), (4, 2, 5))  # even, but not 2x
    assert split_variance(torch.ones(2, 4, 3), False)[1] is None


def test_fast_schedule_is_the_aligned_steps_with_the_inference_noise_levels():
    train = NoiseSchedule.linear(50, 1e-4, 0.05)
    betas = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]
    fast = fast_schedule(train, betas)
    np.testing.assert_allclose(fast.betas, betas, rtol=0, atol=0)
    np.testing.assert_allclose(fast.timestep_map, fast_sampling_steps(train, betas).numpy(), rtol=0, atol=0)
    # on a respaced training schedule the aligned steps map on to the network's own steps
    sub = train.respace(range(0, 50, 2))
    np.testing.assert_allclose(fast_schedule(sub, [1e-3, 0.05]).timestep_map,
                               sub.model_timesteps(fast_sampling_steps(sub, [1e-3, 0.05])).numpy(), rtol=1e-12)
    assert respaced(train, 5).timestep_map.tolist() == [0, 12, 24, 37, 49]


def test_guided_wraps_the_network_and_keeps_the_parameterisation():
    sched = NoiseSchedule.linear(20)
    calls = []

    def net(x, t, cond=None):
        calls.append(cond)
        return x * (0.1 if cond is None else 0.2)

    den = VPDenoiser(net, sched, prediction="v")
    g = guided(den, 3.0)
    assert g.prediction == "v" and g.schedule is sched and den.network is net
    x = torch.ones(2, 3)
    out = g.network(x, torch.tensor([1, 2]), torch.tensor([0, 1]))
    torch.testing.assert_close(out, x * (0.1 + 3.0 * 0.1))


def test_denoiser_from_config_builds_either_kind():
    vp = denoiser_from_config(DiffusionConfig(num_steps=30, prediction="v"), lambda x, t, cond=None: x,
                              learned_variance=False)
    assert isinstance(vp, VPDenoiser) and vp.prediction == "v" and vp.schedule.num_steps == 30
    edm = denoiser_from_config(DiffusionConfig.from_dict({"edm": {"sigma_data": 0.4, "time_scale": 250}}),
                               lambda x, t, cond=None: x)
    assert isinstance(edm, EDMDenoiser) and edm.params.sigma_data == 0.4 and edm.params.time_scale == 250
    with pytest.raises(ConfigError, match="edm"):
        DiffusionConfig.from_dict({"edm": {}, "min_snr_gamma": 5.0})
    with pytest.raises(ConfigError, match="sigma_min"):
        DiffusionConfig.from_dict({"edm": {"sigma_min": 10.0, "sigma_max": 1.0}})
    with pytest.raises(ValueError, match="prediction"):
        VPDenoiser(lambda x, t, cond=None: x, NoiseSchedule.linear(5), prediction="score")
    with pytest.raises(TypeError, match="VPDenoiser"):
        ddpm_sample(edm, (2, 3))
    with pytest.raises(TypeError, match="denoiser"):
        ddpm_sample(lambda x, t, cond=None: x, (2, 3))
    with pytest.warns(DeprecationWarning, match="vlb_weight"):
        assert DiffusionConfig.from_dict({"hybrid_lambda": 0.01}).vlb_weight == 0.01


def test_edm_trains_a_small_network_on_gaussian_data():
    """A linear network F(c_in x, c_noise) = a(c_noise) * input + b(c_noise) can represent the ideal EDM denoiser of
    N(mu, s^2) data; 400 Adam steps of edm_loss bring the loss to within 5% of the ideal denoiser's expected loss."""
    torch.manual_seed(0)

    class Affine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))

        def forward(self, x, t, cond=None):
            ab = self.mlp(t.float()[:, None])
            return ab[:, :1] * x + ab[:, 1:]

    den = EDMDenoiser(Affine(), EDMConfig(sigma_data=0.5))
    opt = torch.optim.Adam(den.network.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        x0 = MU + S * torch.randn(256, 4, generator=g)
        loss = diffusion_loss(den, x0, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ideal = EDMDenoiser(None, EDMConfig(sigma_data=0.5))
    ideal = ideal.with_network(ideal_edm_network(ideal))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    x0 = (MU + S * torch.randn(8192, 4, generator=torch.Generator().manual_seed(8))).to(F64)
    with torch.no_grad():
        trained = edm_loss(den, x0.float(), generator=g1).mean().item()
    best = edm_loss(ideal, x0, generator=g2).mean().item()
    untrained = edm_loss(EDMDenoiser(lambda x, t, cond=None: torch.zeros_like(x)), x0,
                         generator=torch.Generator().manual_seed(9)).mean().item()
    assert best <= trained < 1.05 * best < untrained
