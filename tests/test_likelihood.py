"""The variational bound: Gaussian closed forms, scipy references and an oracle denoiser."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diffcore.likelihood import (
    bits_per_dim,
    continuous_gaussian_log_likelihood,
    discretized_gaussian_log_likelihood,
    nll,
    nll_terms,
    normal_kl,
    prior_kl,
)
from diffcore.denoiser import VPDenoiser
from diffcore.schedule import NoiseSchedule
from gaussian_refs import (  # noqa: F401  (torch_single_thread is an autouse fixture)
    GaussianEps,
    abar_exact,
    gaussian_entropy,
    gaussian_expected_bound,
    torch_single_thread,
)

F64 = torch.float64


def test_normal_kl_against_numerical_integration():
    for m1, v1, m2, v2 in [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -1.0, 2.0), (2.0, 3.0, 1.5, 0.2)]:
        p, q = stats.norm(m1, math.sqrt(v1)), stats.norm(m2, math.sqrt(v2))
        expected, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -30, 30, limit=200)
        got = normal_kl(*(torch.tensor(v, dtype=F64) for v in (m1, math.log(v1), m2, math.log(v2))))
        assert got.item() == pytest.approx(expected, abs=1e-9)
    # broadcasting and non-negativity
    kl = normal_kl(torch.randn(4, 3, dtype=F64), torch.zeros(1, 3, dtype=F64), torch.zeros(()), torch.zeros(()))
    assert kl.shape == (4, 3) and (kl >= 0).all()


def test_continuous_gaussian_log_likelihood_matches_scipy():
    x = torch.linspace(-3, 3, 13, dtype=F64)
    means, log_scales = torch.full_like(x, 0.4), torch.full_like(x, math.log(0.7))
    got = continuous_gaussian_log_likelihood(x, means, log_scales)
    np.testing.assert_allclose(got.numpy(), stats.norm(0.4, 0.7).logpdf(x.numpy()), rtol=1e-12)


@pytest.mark.parametrize("mean,scale", [(0.0, 0.01), (0.3, 0.2), (-0.99, 0.004), (0.9, 1.5), (3.0, 0.05)])
def test_discretized_decoder_is_a_distribution_over_256_levels(mean, scale):
    levels = torch.linspace(-1, 1, 256, dtype=F64)
    ll = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), torch.full_like(levels, math.log(scale)))
    assert torch.isfinite(ll).all()
    assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # interior bins are Gaussian masses of [x - 1/255, x + 1/255], edge bins extend to +-inf
    d = stats.norm(mean, scale)
    x = levels.numpy()
    # (upper tail through the survival function: 1 - 1 cancellation would swamp masses below 1e-16)
    expected = np.where(x > mean, d.sf(x - 1 / 255) - d.sf(x + 1 / 255), d.cdf(x + 1 / 255) - d.cdf(x - 1 / 255))
    expected[0], expected[-1] = d.cdf(x[0] + 1 / 255), d.sf(x[-1] - 1 / 255)
    big = expected > 1e-200
    np.testing.assert_allclose(ll.numpy()[big], np.log(expected[big]), rtol=1e-6, atol=1e-9)


def test_prior_kl_closed_form():
    s = NoiseSchedule.linear(1000)
    x0 = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64)
    a = s.alphas_cumprod[-1]
    expected = sum(0.5 * (-math.log(1 - a) + (1 - a) + a * v * v - 1) for v in x0[0].tolist())
    assert prior_kl(s, x0).item() == pytest.approx(expected, rel=1e-10)


def test_bits_per_dim():
    nats = torch.tensor([math.log(2) * 3072 * 3.0])
    assert bits_per_dim(nats, (8, 3, 32, 32)).item() == pytest.approx(3.0)
    assert bits_per_dim(math.log(2) * 10, 10) == pytest.approx(1.0)


def test_nll_of_gaussian_data_with_exact_denoiser_is_a_tight_upper_bound():
    """x_0 ~ N(mu, s^2 I) with the exact eps*; T = 1000 linear steps (1e-4 .. 0.02), sigma_t^2 = beta_t.

    The bound's per-dimension estimator has variance about 1 nat^2 (mostly the decoder term and the first KL
    terms), so B x D = 1024 x 128 examples-dims give a standard error of about 0.003 nats/dim. The expected gap is
    0.0011 nats/dim (``gaussian_expected_bound``), so "gap <= 0.01" holds with > 3 standard errors of margin.
    """
    mu, s, shape = 0.5, 0.5, (1024, 8, 16)
    sched = NoiseSchedule.linear(1000, 1e-4, 0.02)
    g = torch.Generator().manual_seed(1)
    x0 = mu + s * torch.randn(shape, generator=g, dtype=F64)
    dims = 8 * 16
    terms = nll_terms(VPDenoiser(GaussianEps(mu, s, abar_exact(sched.alphas_cumprod)), sched), x0, variance="beta",
                      generator=g)
    bound = terms.sum(1)
    assert bound.shape == (1024,)

    # Paired with the exact -log p(x_0) of the same examples: E[bound - (-log p)] = KL >= 0.
    exact = (0.5 * math.log(2 * math.pi * s * s) + (x0 - mu) ** 2 / (2 * s * s)).flatten(1).sum(1)
    gap = (bound - exact) / dims
    se = gap.std().item() / math.sqrt(len(gap))
    assert se < 0.004
    assert gap.mean().item() >= -4 * se, "the bound fell below the exact NLL"
    assert gap.mean().item() <= 0.01
    # Against the differential entropy itself (unpaired, so a larger standard error).
    entropy = gaussian_entropy(s, dims)
    se_unpaired = bound.std().item() / math.sqrt(len(bound))
    assert bound.mean().item() >= entropy - 4 * se_unpaired
    assert (bound.mean().item() - entropy) / dims <= 0.01 + 4 * se_unpaired / dims

    # Every one of the T + 1 terms agrees with its closed-form expectation (|z| < 5 over 1001 terms).
    expected_total, expected_terms = gaussian_expected_bound(sched.betas, mu, s, dims, "beta")
    z = (terms.mean(0).numpy() - expected_terms) / (terms.std(0).numpy() / math.sqrt(len(bound)) + 1e-300)
    assert np.abs(z).max() < 5
    assert abs(bound.mean().item() - expected_total) < 4 * se_unpaired
    assert 0 <= (expected_total - entropy) / dims < 0.002


def test_nll_posterior_variance_matches_closed_form_and_is_looser():
    """sigma_t^2 = beta~_t (sigma_1^2 = clipped beta~_2): the expected bound is again known in closed form."""
    mu, s, shape = -0.3, 0.8, (256, 32)
    sched = NoiseSchedule.linear(1000, 1e-4, 0.02)
    g = torch.Generator().manual_seed(2)
    x0 = mu + s * torch.randn(shape, generator=g, dtype=F64)
    bound = nll(VPDenoiser(GaussianEps(mu, s, abar_exact(sched.alphas_cumprod)), sched), x0, variance="posterior",
                generator=g)
    expected, _ = gaussian_expected_bound(sched.betas, mu, s, 32, "posterior")
    se = bound.std().item() / math.sqrt(256)
    assert abs(bound.mean().item() - expected) < 4 * se
    expected_beta, _ = gaussian_expected_bound(sched.betas, mu, s, 32, "beta")
    assert expected > expected_beta + 0.3 * 32  # the known looseness of beta~ for non-degenerate data


def test_nll_with_an_oracle_denoiser_leaves_only_decoder_and_prior():
    """A model that knows x_0 makes every KL term with sigma_t^2 = beta~_t exactly zero; the discretised decoder
    term then has a closed form in terms of the normal CDF (scipy)."""
    sched = NoiseSchedule.linear(40, 1e-4, 0.05)
    levels = torch.randint(0, 256, (3, 2, 4, 4), generator=torch.Generator().manual_seed(3))
    x0 = (levels.to(F64) / 127.5 - 1.0)
    abar = torch.tensor(sched.alphas_cumprod)

    def oracle(x_t, t, cond=None):
        a = abar[t].reshape(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    kw = dict(decoder="discretized", variance="posterior")
    terms = nll_terms(VPDenoiser(oracle, sched), x0, generator=torch.Generator().manual_seed(4), **kw)
    assert terms.shape == (3, 41)
    assert terms[:, 1:40].abs().max().item() < 1e-9
    sigma = math.exp(0.5 * sched.posterior_log_variance_clipped[0])
    h = 1 / 255
    x = x0.numpy()
    p = stats.norm.cdf(h / sigma) - stats.norm.cdf(-h / sigma)
    probs = np.where(np.abs(x) > 0.999, stats.norm.cdf(h / sigma), p)
    np.testing.assert_allclose(terms[:, 0].numpy(), -np.log(probs).reshape(3, -1).sum(1), rtol=1e-9)
    np.testing.assert_allclose(terms[:, -1].numpy(), prior_kl(sched, x0).numpy(), rtol=1e-12)
    # the nll is the sum of the terms, with the same draws for the same seed
    total = nll(VPDenoiser(oracle, sched), x0, generator=torch.Generator().manual_seed(4), **kw)
    torch.testing.assert_close(total, terms.sum(1), rtol=0, atol=0)


def test_nll_is_reproducible_and_model_sees_every_step():
    sched = NoiseSchedule.linear(20)
    seen = []

    def model(x_t, t, cond=None):
        seen.append(int(t[0]))
        assert t.dtype == torch.long and t.shape == (x_t.shape[0],)
        return torch.zeros_like(x_t)

    x0 = torch.zeros(2, 5, dtype=F64)
    a = nll(VPDenoiser(model, sched), x0, generator=torch.Generator().manual_seed(0))
    b = nll(VPDenoiser(model, sched), x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (2,)
    assert sorted(seen) == sorted(list(range(20)) * 2)
