"""Losses: closed-form expectations with the exact denoiser, norms, weights, the hybrid loss's L_vlb."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffcore.likelihood import nll_terms
from diffcore.losses import (
    UniformTimesteps,
    diffusion_loss,
    epsilon_loss,
    hybrid_loss,
    hybrid_loss_terms,
    min_snr_weights,
    v_loss,
    x0_loss,
)
from diffcore.denoiser import VPDenoiser
from diffcore.schedule import NoiseSchedule
from gaussian_refs import GaussianEps, abar_exact, torch_single_thread, v_from_eps  # noqa: F401  (autouse fixture)

F64 = torch.float64


def vp(model, sched, prediction="eps", learned_variance=False):
    return VPDenoiser(model, sched, prediction=prediction, learned_variance=learned_variance)


@pytest.mark.parametrize("step", [0, 100, 500, 999])
def test_exact_predictors_reach_the_analytic_expected_loss(step):
    """For x_0 ~ N(mu, s^2), at fixed t the minimum expected losses are the posterior variances:
    eps: a s^2 / (a s^2 + 1 - a); x0: s^2 (1 - a) / (a s^2 + 1 - a); v: s^2 / (a s^2 + 1 - a); and since the
    residual given x_t is Gaussian with that variance, the l1 losses are sqrt(2 var / pi)."""
    mu, s, shape = 0.3, 0.7, (512, 64)
    sched = NoiseSchedule.linear(1000)
    a = sched.alphas_cumprod[step]
    g = torch.Generator().manual_seed(step)
    x0 = mu + s * torch.randn(shape, generator=g, dtype=F64)
    t = torch.full((shape[0],), step)
    eps_model = GaussianEps(mu, s, abar_exact(sched.alphas_cumprod))

    def x0_model(x_t, tt, cond=None):
        return eps_model.x0(x_t, tt)

    def v_model(x_t, tt, cond=None):
        return v_from_eps(sched, x_t, tt, eps_model(x_t, tt))

    denom = a * s * s + 1 - a
    expected = {"eps": a * s * s / denom, "x0": s * s * (1 - a) / denom, "v": s * s / denom}
    for kind, fn, model in (("eps", epsilon_loss, eps_model), ("x0", x0_loss, x0_model), ("v", v_loss, v_model)):
        for norm in ("l2", "l1"):
            loss = fn(vp(model, sched, kind), x0, t=t, norm=norm, generator=g)
            assert loss.shape == (shape[0],)
            want = expected[kind] if norm == "l2" else math.sqrt(2 * expected[kind] / math.pi)
            # mean over 512 x 64 residuals: relative standard error sqrt(2 / 32768) = 0.8% (l2), 0.5% (l1)
            assert loss.mean().item() == pytest.approx(want, rel=0.04), (kind, norm)


def test_l1_and_l2_of_a_known_offset():
    sched = NoiseSchedule.linear(100)
    x0 = torch.randn(6, 3, 5, dtype=F64)
    noise = torch.randn_like(x0)
    offset = torch.tensor([0.5, -2.0, 0.0, 1.0, 3.0, -0.1], dtype=F64)

    def model(x_t, t, cond=None):
        return noise + offset.reshape(-1, 1, 1)

    l2 = epsilon_loss(vp(model, sched), x0, norm="l2", noise=noise)
    l1 = epsilon_loss(vp(model, sched), x0, norm="l1", noise=noise)
    torch.testing.assert_close(l2, offset**2)
    torch.testing.assert_close(l1, offset.abs())
    with pytest.raises(ValueError, match="norm"):
        epsilon_loss(vp(model, sched), x0, norm="l3", noise=noise)


@pytest.mark.parametrize("shape", [(4, 10), (4, 2, 9), (4, 3, 4, 4)])
def test_losses_are_per_example_for_any_rank(shape):
    sched = NoiseSchedule.cosine(50)
    x0 = torch.randn(shape)

    def model(x_t, t, cond=None):
        return torch.tanh(x_t) * (t.float().reshape((-1,) + (1,) * (x_t.ndim - 1)) / 50)

    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    for kind, fn in (("eps", epsilon_loss), ("x0", x0_loss), ("v", v_loss)):
        den = vp(model, sched, kind)
        loss = fn(den, x0, generator=g())
        assert loss.shape == (4,) and torch.isfinite(loss).all()
        assert torch.equal(loss, fn(den, x0, generator=g()))  # reproducible under a seed
        # example i's loss depends on example i only
        part = fn(den, x0[:2], t=torch.tensor([3, 40]), noise=torch.ones(x0[:2].shape))
        full = fn(den, x0, t=torch.tensor([3, 40, 1, 1]), noise=torch.ones(shape))
        torch.testing.assert_close(part, full[:2])


def test_min_snr_weights_against_numpy_and_in_diffusion_loss():
    sched = NoiseSchedule.linear(1000)
    t = torch.tensor([0, 50, 200, 600, 999])
    snr = sched.alphas_cumprod[t.numpy()] / (1 - sched.alphas_cumprod[t.numpy()])
    gamma = 5.0
    np.testing.assert_allclose(min_snr_weights(sched, t, gamma, "eps").numpy(), np.minimum(snr, gamma) / snr)
    np.testing.assert_allclose(min_snr_weights(sched, t, gamma, "x0").numpy(), np.minimum(snr, gamma))
    np.testing.assert_allclose(min_snr_weights(sched, t, gamma, "v").numpy(), np.minimum(snr, gamma) / (snr + 1))
    # high-noise steps keep weight 1 for eps; low-noise steps are down-weighted
    w = min_snr_weights(sched, t, gamma, "eps")
    assert w[-1] == 1.0 and w[0] < 0.01

    x0 = torch.randn(8, 16, dtype=F64)

    def model(x_t, tt, cond=None):
        return 0.5 * x_t

    for prediction, fn in (("eps", epsilon_loss), ("x0", x0_loss), ("v", v_loss)):
        weighted = diffusion_loss(vp(model, sched, prediction), x0, min_snr_gamma=gamma,
                                  generator=torch.Generator().manual_seed(1))
        # same draws: t first, then the noise
        g = torch.Generator().manual_seed(1)
        tt, _ = UniformTimesteps(1000).sample(8, "cpu", g)
        plain = fn(vp(model, sched, prediction), x0, t=tt, generator=g)
        torch.testing.assert_close(weighted, plain * min_snr_weights(sched, tt, gamma, prediction))


def test_uniform_timesteps():
    sampler = UniformTimesteps(10)
    t, w = sampler.sample(20000, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() == 0 and t.max() == 9 and torch.equal(w, torch.ones(20000))
    counts = torch.bincount(t, minlength=10).double()
    # each count ~ Binomial(20000, 0.1): sd 42, so 5 sd = 210
    assert (counts - 2000).abs().max() < 210
    t2, _ = sampler.sample(20000, "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(t, t2)
    with pytest.raises(ValueError):
        UniformTimesteps(0)


def _learned_variance_model(sched, mu, s, v_value):
    """Exact eps* of N(mu, s^2) data on channel 0, a fixed variance interpolation v on channel 1."""
    eps_model = GaussianEps(mu, s, abar_exact(sched.alphas_cumprod))

    def model(x_t, t, cond=None):
        eps = eps_model(x_t, t)
        return torch.cat([eps, torch.full_like(eps, v_value)], dim=1)

    return model


@pytest.mark.parametrize("decoder", ["gaussian", "discretized"])
def test_hybrid_vlb_term_equals_the_nll_term(decoder):
    """hybrid's L_vlb at step t is the same quantity as column t of nll_terms(variance="learned") for the same
    x_t (nll draws its noise for steps 0, 1, ..., T-1 in order, so we replay that stream)."""
    sched = NoiseSchedule.linear(30, 1e-4, 0.05)
    mu, s = 0.1, 0.4
    x0 = (mu + s * torch.randn(5, 1, 6, dtype=F64, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    model = _learned_variance_model(sched, mu, s, 0.3)
    terms = nll_terms(vp(model, sched, learned_variance=True), x0, decoder=decoder,
                      generator=torch.Generator().manual_seed(9))
    replay = torch.Generator().manual_seed(9)
    noises = [torch.randn(x0.shape, generator=replay, dtype=F64) for _ in range(sched.num_steps)]
    dims = x0[0].numel()
    for k in (0, 1, 13, 29):
        t = torch.full((5,), k)
        out = hybrid_loss_terms(vp(model, sched, learned_variance=True), x0, t=t, noise=noises[k], decoder=decoder)
        torch.testing.assert_close(out["vlb"] * dims * math.log(2), terms[:, k], rtol=1e-10, atol=1e-10)
        # loss = L_simple + lambda T L_t (bits/dim)
        torch.testing.assert_close(out["loss"], out["simple"] + 1e-3 * 30 * out["vlb"])
    # learned variance v = 1 is sigma^2 = beta, v = 0 is the clipped beta~: the nll under the fixed choices
    for v_value, variance in ((1.0, "beta"), (0.0, "posterior")):
        fixed = nll_terms(vp(_learned_variance_model(sched, mu, s, v_value), sched, learned_variance=True), x0,
                          decoder=decoder, generator=torch.Generator().manual_seed(9))
        eps_only = GaussianEps(mu, s, abar_exact(sched.alphas_cumprod))
        ref = nll_terms(vp(eps_only, sched), x0, decoder=decoder, variance=variance,
                        generator=torch.Generator().manual_seed(9))
        torch.testing.assert_close(fixed, ref, rtol=1e-10, atol=1e-10)


def test_hybrid_loss_stops_the_vlb_gradient_at_the_mean():
    sched = NoiseSchedule.linear(20)
    x0 = torch.randn(4, 2, 8)
    eps_param = torch.zeros(1, 2, 1, requires_grad=True)
    v_param = torch.zeros(1, 2, 1, requires_grad=True)

    def model(x_t, t, cond=None):
        return torch.cat([x_t * 0.1 + eps_param, torch.zeros_like(x_t) + v_param], dim=1)

    t = torch.tensor([0, 5, 10, 19])
    den = vp(model, sched, learned_variance=True)
    terms = hybrid_loss_terms(den, x0, t=t, generator=torch.Generator().manual_seed(0))
    terms["vlb"].sum().backward()
    assert eps_param.grad is None or torch.count_nonzero(eps_param.grad) == 0
    assert torch.count_nonzero(v_param.grad) > 0
    # the simple term trains eps, not v
    eps_param.grad, v_param.grad = None, None
    hybrid_loss_terms(den, x0, t=t, generator=torch.Generator().manual_seed(0))["simple"].sum().backward()
    assert torch.count_nonzero(eps_param.grad) > 0 and (v_param.grad is None or torch.count_nonzero(v_param.grad) == 0)
    # the total through hybrid_loss and diffusion_loss of a learned-variance denoiser
    loss = hybrid_loss(den, x0, t=t, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (4,)
    dl = diffusion_loss(den, x0, generator=torch.Generator().manual_seed(0))
    assert dl.shape == (4,) and torch.isfinite(dl).all()
    with pytest.raises(ValueError, match="2C"):
        hybrid_loss(vp(lambda x, t, cond=None: x, sched, learned_variance=True), x0, t=t)


def test_diffusion_loss_dispatches_on_prediction():
    sched = NoiseSchedule.linear(100)
    x0 = torch.randn(6, 4)

    def model(x_t, t, cond=None):
        assert cond == "c"
        return x_t * 0.3

    for prediction, fn in (("eps", epsilon_loss), ("x0", x0_loss), ("v", v_loss)):
        got = diffusion_loss(vp(model, sched, prediction), x0, "c", norm="l1",
                             generator=torch.Generator().manual_seed(2))
        g = torch.Generator().manual_seed(2)
        t, _ = UniformTimesteps(100).sample(6, "cpu", g)
        torch.testing.assert_close(got, fn(vp(model, sched, prediction), x0, "c", norm="l1", t=t, generator=g))
    with pytest.raises(ValueError):
        diffusion_loss(vp(model, sched, "score"), x0, "c")
