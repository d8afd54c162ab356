"""NoiseSchedule against independent float64 numpy computations and published formulas."""

from __future__ import annotations

import copy as copy_module
import dataclasses
import math
import pickle

import numpy as np
import pytest
import torch

from diffcore.denoiser import VPDenoiser
from diffcore.schedule import NoiseSchedule, evenly_spaced_indices
from diffcore.utils import append_dims, gather
from gaussian_refs import torch_single_thread  # noqa: F401  (autouse fixture)


def all_schedules() -> dict[str, NoiseSchedule]:
    return {
        "linear": NoiseSchedule.linear(1000, 1e-4, 0.02),
        "diffwave": NoiseSchedule.linear(50, 1e-4, 0.05),
        "cosine": NoiseSchedule.cosine(1000),
        "sigmoid": NoiseSchedule.sigmoid(1000),
        "near_one": NoiseSchedule.from_betas([1e-4, 0.5, 0.99, 0.999999]),
    }


# ---------------------------------------------------------------------------------------------------------------
# constructors


def test_linear_matches_numpy():
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas = 1 - betas
    abar = np.array([np.prod(alphas[: i + 1]) for i in range(1000)])  # explicit products, not cumprod
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    assert s.num_steps == 1000 and s.betas.dtype == np.float64
    np.testing.assert_allclose(s.betas, betas, rtol=0, atol=0)
    np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod_prev, abar_prev, rtol=1e-12)
    # Ho et al. eq. 7
    np.testing.assert_allclose(s.posterior_variance, betas * (1 - abar_prev) / (1 - abar), rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef1, np.sqrt(abar_prev) * betas / (1 - abar), rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef2, np.sqrt(alphas) * (1 - abar_prev) / (1 - abar), rtol=1e-12)
    pv = betas * (1 - abar_prev) / (1 - abar)
    np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(pv[1:]), rtol=1e-12)
    assert s.posterior_log_variance_clipped[0] == pytest.approx(np.log(pv[1]), rel=1e-12)
    np.testing.assert_allclose(s.sigmas, np.sqrt((1 - abar) / abar), rtol=1e-12)


def test_cosine_matches_published_formula():
    """Nichol & Dhariwal 2021 eq. 17: abar_t = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s)) pi / 2)."""
    T, s = 1000, 0.008
    sched = NoiseSchedule.cosine(T, s=s)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([f(t) / f(0) for t in range(1, T + 1)])  # paper's t = 1..T
    unclipped = sched.betas < 0.999
    # Until the first clipped beta the cumulative product equals the formula exactly.
    first_clip = int(np.argmin(unclipped)) if not unclipped.all() else T
    assert first_clip >= T - 2, "only the last steps should reach max_beta"
    np.testing.assert_allclose(sched.alphas_cumprod[:first_clip], expected[:first_clip], rtol=1e-9)
    assert sched.betas.max() == pytest.approx(0.999)
    assert np.all(np.diff(sched.alphas_cumprod) < 0)


def test_sigmoid_matches_chen_2023():
    """Chen 2023 Alg. 1: abar(u) = (sig(end/tau) - sig((u (end-start) + start)/tau)) / (sig(end/tau) - sig(start/tau))."""
    T, start, end, tau = 200, -3.0, 3.0, 0.7
    sched = NoiseSchedule.sigmoid(T, start=start, end=end, tau=tau)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    gamma = lambda u: (sig(end / tau) - sig((u * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))  # noqa: E731
    expected = np.array([max(gamma((i + 1) / T), 1e-9) for i in range(T)])
    ok = sched.betas < 0.999
    np.testing.assert_allclose(sched.alphas_cumprod[ok], expected[ok], rtol=1e-9)
    assert ok[:-1].all() and not ok[-1]  # only the last step (abar -> clip_min) reaches max_beta
    assert np.all(np.diff(sched.alphas_cumprod) < 0)


def test_from_betas_and_validation():
    s = NoiseSchedule.from_betas([0.1, 0.2, 1.0])
    np.testing.assert_allclose(s.alphas_cumprod, [0.9, 0.72, 0.0])
    for bad, match in [
        ([], "non-empty"),
        ([[0.1, 0.2]], "1-D"),
        ([0.0, 0.1], r"\(0, 1\]"),
        ([0.1, 1.5], r"\(0, 1\]"),
        ([-0.1], r"\(0, 1\]"),
        ([0.1, float("nan")], "finite"),
        (["a"], "sequence of numbers"),
    ]:
        with pytest.raises(ValueError, match=match):
            NoiseSchedule.from_betas(bad)
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            NoiseSchedule.linear(n)


def test_schedule_is_an_immutable_value():
    a, b = NoiseSchedule.linear(10), NoiseSchedule.linear(10)
    assert a == b and hash(a) == hash(b) and a != NoiseSchedule.linear(11)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.betas = np.ones(10)  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        a.alphas_cumprod[0] = 0.5
    # copies stay equal and read-only
    for copy in (pickle.loads(pickle.dumps(a)), copy_module.deepcopy(a)):
        assert copy == a and not copy.alphas_cumprod.flags.writeable
    # A caller's array is copied, so mutating it afterwards changes nothing.
    src = np.linspace(0.1, 0.2, 5)
    s = NoiseSchedule.from_betas(src)
    src[0] = 0.9
    assert s.betas[0] == pytest.approx(0.1)


@pytest.mark.parametrize("name", list(all_schedules()))
def test_no_nan_or_inf_at_either_end(name):
    s = all_schedules()[name]
    for arr in (s.alphas_cumprod, s.posterior_variance, s.posterior_log_variance_clipped, s.posterior_mean_coef1,
                s.posterior_mean_coef2, s.sigmas):
        assert np.all(np.isfinite(arr)), name
    x0 = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(2, 6)
    noise = torch.linspace(1, -1, 12, dtype=torch.float64).reshape(2, 6)
    for k in (0, s.num_steps - 1):
        t = torch.full((2,), k)
        x_t = s.q_sample(x0, t, noise)
        eps_den, v_den = VPDenoiser(None, s), VPDenoiser(None, s, prediction="v")
        outs = [x_t, *s.q_posterior(x0, x_t, t), eps_den.from_output(x_t, t, noise)[1],
                eps_den.target("v", x0, noise, t), *v_den.from_output(x_t, t, noise), s.snr(t)]
        for o in outs:
            assert torch.isfinite(o).all(), (name, k)
        # eps -> x0 round trip stays exact even where beta is close to 1
        torch.testing.assert_close(eps_den.from_output(x_t, t, noise)[1], x0, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# forward process and posterior (the conversions between eps, x0 and v are the denoiser's: test_denoiser.py)


@pytest.mark.parametrize("shape", [(4, 7), (4, 3, 5), (4, 2, 3, 3)])
def test_q_posterior_is_bayes_rule(shape):
    """q(x_{t-1} | x_t, x_0) from the product q(x_t | x_{t-1}) q(x_{t-1} | x_0), in precision form."""
    s = NoiseSchedule.cosine(30)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    x_t = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 7, 18, 29])
    mean, var = s.q_posterior(x0, x_t, t)
    assert mean.shape == shape and var.ndim == len(shape)
    a = torch.tensor(s.alphas[t.numpy()])
    ab_prev = torch.tensor(s.alphas_cumprod_prev[t.numpy()])
    a, ab_prev = append_dims(a, len(shape)), append_dims(ab_prev, len(shape))
    # x_t | x_{t-1} ~ N(sqrt(a) x_{t-1}, 1 - a); x_{t-1} | x_0 ~ N(sqrt(ab_prev) x_0, 1 - ab_prev)
    precision = a / (1 - a) + 1 / (1 - ab_prev)
    expected_mean = (a.sqrt() * x_t / (1 - a) + ab_prev.sqrt() * x0 / (1 - ab_prev)) / precision
    torch.testing.assert_close(mean, expected_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var.expand(shape), (1 / precision).expand(shape), rtol=1e-10, atol=0)


def test_q_sample_and_q_mean_variance():
    s = NoiseSchedule.linear(100)
    x0 = torch.full((3, 2, 2), 0.7, dtype=torch.float64)
    noise = torch.full_like(x0, -1.3)
    t = torch.tensor([0, 50, 99])
    mean, var = s.q_mean_variance(x0, t)
    ab = torch.tensor(s.alphas_cumprod[[0, 50, 99]]).reshape(3, 1, 1)
    torch.testing.assert_close(mean, ab.sqrt() * x0)
    torch.testing.assert_close(var, 1 - ab)
    torch.testing.assert_close(s.q_sample(x0, t, noise), mean + var.sqrt() * noise)
    # q_sample draws from the generator when no noise is given, reproducibly
    a = s.q_sample(x0, t, generator=torch.Generator().manual_seed(3))
    b = s.q_sample(x0, t, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_snr_and_sigmas():
    s = NoiseSchedule.linear(1000)
    t = torch.arange(1000)
    snr = s.snr(t)
    assert snr.dtype == torch.float64 and snr.shape == (1000,)
    np.testing.assert_allclose(snr.numpy(), s.alphas_cumprod / (1 - s.alphas_cumprod), rtol=1e-12)
    assert torch.all(snr[1:] < snr[:-1])
    np.testing.assert_allclose(s.sigmas**2, 1 / snr.numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# gather and respacing


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_gather_indexes_interpolates_and_broadcasts(ndim):
    values = np.array([1.0, 3.0, 7.0, 15.0])
    like = torch.zeros((3,) + (2,) * (ndim - 1), dtype=torch.float32)
    out = gather(values, torch.tensor([0, 2, 3]), like)
    assert out.shape == (3,) + (1,) * (ndim - 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == [1.0, 7.0, 15.0]
    frac = gather(values, torch.tensor([0.25, 2.5, 3.0], dtype=torch.float64), like.double()).flatten()
    np.testing.assert_allclose(frac.numpy(), np.interp([0.25, 2.5, 3.0], np.arange(4), values))
    assert append_dims(torch.ones(3), 4).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError):
        append_dims(torch.ones(3, 3), 1)


def test_respace_keeps_alpha_bar_and_maps_timesteps():
    s = NoiseSchedule.linear(1000)
    keep = [0, 10, 250, 500, 999]
    r = s.respace(keep)
    assert r.num_steps == 5
    np.testing.assert_allclose(r.alphas_cumprod, s.alphas_cumprod[keep], rtol=1e-12)
    np.testing.assert_array_equal(r.timestep_map, keep)
    assert r.model_timesteps(torch.tensor([0, 3, 4])).tolist() == [0, 500, 999]
    # fractional steps interpolate the map
    assert r.model_timesteps(torch.tensor([1.5], dtype=torch.float64)).item() == pytest.approx(130.0)
    # respacing a respaced schedule composes the maps
    rr = r.respace([1, 3])
    np.testing.assert_array_equal(rr.timestep_map, [10, 500])
    np.testing.assert_allclose(rr.alphas_cumprod, s.alphas_cumprod[[10, 500]], rtol=1e-12)
    # an identity respacing is the same value
    assert s.respace(range(1000)) == s
    with pytest.raises(ValueError):
        s.respace([])
    with pytest.raises(ValueError):
        s.respace([5, 1000])


def test_evenly_spaced_indices():
    idx = evenly_spaced_indices(1000, 50)
    assert idx[0] == 0 and idx[-1] == 999 and len(set(idx)) == 50 and idx == sorted(idx)
    np.testing.assert_allclose(np.diff(idx), 999 / 49, atol=1.0)
    assert evenly_spaced_indices(10, 10) == list(range(10))
    with pytest.raises(ValueError):
        evenly_spaced_indices(10, 11)
