"""Samplers driven by exact denoisers: independent re-implementations, distribution checks, invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffcore.denoiser import VPDenoiser
from diffcore.discretization import fast_sampling_steps, fast_schedule, karras_sigmas, respaced
from diffcore.samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample, heun_sample
from diffcore.schedule import NoiseSchedule, evenly_spaced_indices
from gaussian_refs import (  # noqa: F401  (torch_single_thread is an autouse fixture)
    GaussianEps,
    Mixture1D,
    abar_exact,
    abar_log_sigma_linear,
    abar_sqrt_linear,
    ddim_map,
    diffwave_fast_output,
    diffwave_fast_step,
    dpmpp_2m_map,
    heun_map,
    mode_stats,
    torch_single_thread,
)

F64 = torch.float64
MIX = Mixture1D(weights=(0.3, 0.7), means=(-2.0, 1.5), stds=(0.5, 0.3))
LINEAR = NoiseSchedule.linear(1000, 1e-4, 0.02)
DIFFWAVE = NoiseSchedule.linear(50, 1e-4, 0.05)  # DiffWave base training schedule
FAST_BETAS = [1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5]  # DiffWave base inference schedule


def fast_sample(den, shape, steps, **kw):
    """DiffWave's fast sampling: ancestral steps over the aligned schedule with sigma_s^2 = beta~_s."""
    return ddpm_sample(den, shape, steps, variance="posterior", **kw)


def vp(model, schedule, prediction="eps"):
    return VPDenoiser(model, schedule, prediction=prediction)


def heun_steps(schedule, n, sigma_min=None, sigma_max=None):
    """The Karras levels over the schedule's trained sigma range (the old heun_sample default)."""
    lo = float(schedule.sigmas[0]) if sigma_min is None else sigma_min
    hi = float(schedule.sigmas[-1]) if sigma_max is None else sigma_max
    return karras_sigmas(lo, hi, n)


SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "heun": heun_sample, "fast": fast_sample,
            "dpmpp": dpmpp_2m_sample}
STEPS = {"ddpm": lambda s: None, "ddim": lambda s: respaced(s, 50), "heun": lambda s: heun_steps(s, 18),
         "dpmpp": lambda s: heun_steps(s, 18),
         "fast": lambda s: fast_schedule(s, FAST_BETAS)}


def exact_model(kind: str):
    """The mixture's exact eps, reading abar at fractional steps the way each sampler parametrises time."""
    if kind == "fast":
        return MIX.torch_model(abar_sqrt_linear(DIFFWAVE.alphas_cumprod))
    if kind in ("heun", "dpmpp"):
        return MIX.torch_model(abar_log_sigma_linear(LINEAR.alphas_cumprod))
    return MIX.torch_model(abar_exact(LINEAR.alphas_cumprod))


def run(kind: str, model, shape, prediction="eps", **kw):
    schedule = DIFFWAVE if kind == "fast" else LINEAR
    return SAMPLERS[kind](vp(model, schedule, prediction), shape, STEPS[kind](schedule), **kw)


# ---------------------------------------------------------------------------------------------------------------
# each sampler against an independent implementation, sample for sample


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_is_algorithm_2(variance):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, replaying the same noise."""
    sched = DIFFWAVE
    model = MIX.torch_model(abar_exact(sched.alphas_cumprod))
    out = ddpm_sample(vp(model, sched), (64, 1), generator=torch.Generator().manual_seed(0), dtype=F64,
                      variance=variance)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, generator=g, dtype=F64)
    b, a, ab = sched.betas, sched.alphas, sched.alphas_cumprod
    for k in range(sched.num_steps - 1, -1, -1):
        eps = model(x, torch.full((64,), k))
        x = (x - b[k] / math.sqrt(1 - ab[k]) * eps) / math.sqrt(a[k])
        if k > 0:
            var = b[k] if variance == "beta" else b[k] * (1 - ab[k - 1]) / (1 - ab[k])
            x = x + math.sqrt(var) * torch.randn(64, 1, generator=g, dtype=F64)
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


def test_fast_sample_is_diffwave_fast_sampling():
    """Kong et al. Alg. 2 on the inference schedule with the network at the aligned steps, replaying the noise.
    The reference evaluates eps at the inference noise level directly, so this also checks the alignment."""
    model = exact_model("fast")
    out = fast_sample(vp(model, DIFFWAVE), (64, 1), fast_schedule(DIFFWAVE, FAST_BETAS),
                      generator=torch.Generator().manual_seed(1), dtype=F64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, generator=g, dtype=F64).numpy()[:, 0]
    gammas = np.array(FAST_BETAS)
    for n in range(len(FAST_BETAS) - 1, -1, -1):
        mean, std = diffwave_fast_step(MIX, gammas, n, x)
        x = mean + (std * torch.randn(64, 1, generator=g, dtype=F64).numpy()[:, 0] if n > 0 else 0.0)
    np.testing.assert_allclose(out[:, 0].numpy(), x, rtol=1e-9, atol=1e-9)


def test_ddim_and_heun_are_the_reference_maps():
    """Deterministic samplers are maps x_T -> x_0; compare them on a grid with numpy re-implementations."""
    z = np.linspace(-4, 4, 401)
    x_T = torch.tensor(z)[:, None]
    ddim = ddim_sample(vp(exact_model("ddim"), LINEAR), (401, 1), respaced(LINEAR, 50), x_T=x_T)[:, 0].numpy()
    np.testing.assert_allclose(ddim, ddim_map(MIX, LINEAR.alphas_cumprod, evenly_spaced_indices(1000, 50), z),
                               rtol=1e-9, atol=1e-9)
    heun = heun_sample(vp(exact_model("heun"), LINEAR), (401, 1), heun_steps(LINEAR, 18), x_T=x_T)[:, 0].numpy()
    np.testing.assert_allclose(heun, heun_map(MIX, LINEAR.sigmas[0], LINEAR.sigmas[-1], 18, 7.0, z),
                               rtol=1e-9, atol=1e-9)


def test_dpmpp_2m_is_the_reference_map():
    """DPM-Solver++(2M) in the sigma view equals Lu et al.'s Algorithm 2 written in the VP space (numpy), with one
    network call per level."""
    z = np.linspace(-4, 4, 401)
    x_T = torch.tensor(z)[:, None]
    model = exact_model("dpmpp")
    out = dpmpp_2m_sample(vp(model, LINEAR), (401, 1), heun_steps(LINEAR, 18), x_T=x_T)[:, 0].numpy()
    want = dpmpp_2m_map(MIX, LINEAR.sigmas[0], LINEAR.sigmas[-1], 18, 7.0, z)
    np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-9)
    assert model.calls == 18


@pytest.mark.parametrize("kind", ["edm", "vp"])
def test_dpmpp_2m_converges_at_second_order_to_the_exact_ode(kind):
    """For N(mu, s^2) data the probability-flow ODE in the sigma view is solved exactly by x(sigma) - mu =
    (x(sigma_0) - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)). With the exact denoiser (EDM: the ideal
    preconditioned network; VP: the exact eps at fractional steps) DPM-Solver++(2M) over N Karras levels converges to
    the solution at sigma = 0 at second order: 4x more steps cut the error about 16x (first order would give 4x)."""
    mu, s = 0.3, 0.45
    z = torch.linspace(-3, 3, 13, dtype=F64)[:, None]
    if kind == "edm":
        from diffcore.config import EDMConfig
        from diffcore.denoiser import EDMDenoiser
        from test_denoiser import ideal_edm_network

        den = EDMDenoiser(None, EDMConfig(sigma_data=0.5, sigma_min=0.002, sigma_max=80.0))
        den = den.with_network(ideal_edm_network(den, mu, s))
        x_start = 80.0 * z
    else:
        den = vp(GaussianEps(mu, s, abar_log_sigma_linear(LINEAR.alphas_cumprod)), LINEAR)
        x_start = math.sqrt(1 + den.sigma_max**2) * z
    lo, hi = den.sigma_min, den.sigma_max
    want = mu + (x_start - mu) * math.sqrt(s**2 / (s**2 + hi**2))
    errors = [(dpmpp_2m_sample(den, (13, 1), karras_sigmas(lo, hi, n), x_T=z) - want).abs().max().item()
              for n in (20, 80, 320)]
    assert errors[2] < 1e-3, errors
    assert errors[0] / errors[1] > 10 and errors[1] / errors[2] > 10, errors


def test_karras_sigmas():
    sig = karras_sigmas(0.002, 80.0, 18, 7.0)
    assert sig.shape == (19,) and sig[-1] == 0 and sig[0].item() == pytest.approx(80.0)
    assert sig[-2].item() == pytest.approx(0.002) and torch.all(sig[1:] < sig[:-1])
    i = 5
    assert sig[i].item() == pytest.approx((80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7)


# ---------------------------------------------------------------------------------------------------------------
# DiffWave's fast-sampling alignment


def test_fast_sampling_steps_against_direct_computation():
    steps = fast_sampling_steps(DIFFWAVE, FAST_BETAS)
    assert steps.dtype == torch.float64 and steps.shape == (6,)
    abar = DIFFWAVE.alphas_cumprod
    gbar = np.cumprod(1 - np.array(FAST_BETAS))
    # brute force: scan every bracket and apply the paper's formula in float64
    expected = []
    for g in gbar:
        for t in range(len(abar) - 1):
            if abar[t + 1] <= g <= abar[t]:
                expected.append(t + (math.sqrt(abar[t]) - math.sqrt(g)) / (math.sqrt(abar[t]) - math.sqrt(abar[t + 1])))
                break
    np.testing.assert_allclose(steps.numpy(), expected, rtol=0, atol=1e-12)
    # the defining property: sqrt(abar) interpolated linearly at the aligned step is sqrt(gamma-bar)
    np.testing.assert_allclose(np.interp(steps.numpy(), np.arange(50), np.sqrt(abar)), np.sqrt(gbar), rtol=1e-12)
    # gamma_1 = beta_1 aligns with step index 0 (the paper's t = 1): 0-based convention
    assert steps[0].item() == 0.0
    assert torch.all(steps[1:] > steps[:-1])


def test_fast_sampling_steps_validation_and_integer_alignment():
    # an inference schedule that hits training levels exactly lands on integer steps
    sched = NoiseSchedule.linear(20, 1e-3, 0.1)
    respaced_betas = sched.respace([0, 4, 9, 19]).betas
    np.testing.assert_allclose(fast_sampling_steps(sched, respaced_betas).numpy(), [0, 4, 9, 19], atol=1e-9)
    with pytest.raises(ValueError, match="above the first"):
        fast_sampling_steps(sched, [1e-4, 0.1])
    with pytest.raises(ValueError, match="below the last"):
        fast_sampling_steps(sched, [1e-3, 0.9, 0.9])


# ---------------------------------------------------------------------------------------------------------------
# distributions: mode weights, means and variances of a two-component mixture


def reference_stats(kind: str) -> dict[str, float]:
    """The exact output distribution of each (discretised) sampler, by quadrature over its input."""
    if kind == "ddpm":  # 1000 ancestral steps: the data distribution itself
        out = {}
        for k in (0, 1):
            out.update({f"weight{k}": MIX.w[k], f"mean{k}": MIX.m[k], f"var{k}": MIX.s[k] ** 2,
                        f"m4_{k}": 3 * MIX.s[k] ** 4})
        return out
    if kind == "fast":
        return mode_stats(*diffwave_fast_output(MIX, FAST_BETAS, np.linspace(-6, 6, 2401)), boundary=0.0)
    z = np.linspace(-7, 7, 4001)
    if kind == "ddim":
        points = ddim_map(MIX, LINEAR.alphas_cumprod, evenly_spaced_indices(1000, 50), z)
    elif kind == "dpmpp":
        points = dpmpp_2m_map(MIX, LINEAR.sigmas[0], LINEAR.sigmas[-1], 18, 7.0, z)
    else:
        points = heun_map(MIX, LINEAR.sigmas[0], LINEAR.sigmas[-1], 18, 7.0, z)
    return mode_stats(points, np.exp(-0.5 * z * z), boundary=0.0)


# Discretisation bias of each method on this mixture (reference vs. data), documented by assertion:
# DDIM-50 and Heun-18 stay within 10% on the per-mode variance; DiffWave's 6-step schedule (reverse variance
# beta~ of very coarse steps) contracts the narrow mode's variance by about a third and shifts the wide mode's mean.
# DPM-Solver++(2M) over the same 18 levels (18 network calls, half of Heun's 35) widens the wide mode by 20%.
BIAS = {"ddim": (0.01, 0.05, 0.10), "heun": (0.01, 0.07, 0.10), "fast": (0.01, 0.2, 0.35),
        "dpmpp": (0.01, 0.1, 0.25)}


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "heun", "fast", "dpmpp"])
def test_mixture_modes_are_reproduced(kind):
    """4000 samples from the exact eps of 0.3 N(-2, 0.5^2) + 0.7 N(1.5, 0.3^2).

    Tolerances are 4 standard errors of the estimators at this sample size, from the reference distribution:
    mode weight sqrt(w (1 - w) / N) (0.0072), mode mean sqrt(var / n_k), mode variance sqrt((m4 - var^2) / n_k)
    (about 8% and 5% of the variances for Gaussian modes with n = 1200 and 2800).
    """
    n = 4000
    g = torch.Generator().manual_seed(11)
    x_T = None
    if kind == "fast":
        # The DiffWave base schedule stops at abar_T = 0.28, far from pure noise: start from the exact noisy
        # marginal at gamma-bar_S so that the test measures the sampler, not the prior mismatch.
        gbar = float(np.prod(1 - np.array(FAST_BETAS)))
        comp = torch.multinomial(torch.tensor(MIX.w), n, replacement=True, generator=g)
        x0 = torch.tensor(MIX.m)[comp] + torch.tensor(MIX.s)[comp] * torch.randn(n, generator=g, dtype=F64)
        x_T = (math.sqrt(gbar) * x0 + math.sqrt(1 - gbar) * torch.randn(n, generator=g, dtype=F64))[:, None]
    x = run(kind, exact_model(kind), (n, 1), generator=g, x_T=x_T, dtype=F64)[:, 0].numpy()
    got, ref = mode_stats(x, None, boundary=0.0), reference_stats(kind)

    w_se = math.sqrt(ref["weight1"] * (1 - ref["weight1"]) / n)
    assert abs(got["weight1"] - ref["weight1"]) < 4 * w_se
    for k in (0, 1):
        nk = ref[f"weight{k}"] * n
        var = ref[f"var{k}"]
        assert abs(got[f"mean{k}"] - ref[f"mean{k}"]) < 4 * math.sqrt(var / nk), (kind, k)
        assert abs(got[f"var{k}"] - var) < 4 * math.sqrt((ref[f"m4_{k}"] - var**2) / nk), (kind, k)

    if kind != "ddpm":
        w_tol, mean_tol, var_rel = BIAS[kind]
        assert abs(ref["weight1"] - MIX.w[1]) < w_tol
        for k in (0, 1):
            assert abs(ref[f"mean{k}"] - MIX.m[k]) < mean_tol
            assert abs(ref[f"var{k}"] / MIX.s[k] ** 2 - 1) < var_rel


# ---------------------------------------------------------------------------------------------------------------
# invariances


class TinyModel(torch.nn.Module):
    """A smooth stand-in network for any rank: eps = tanh(x * w(t))."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.7))
        self.steps: list[torch.Tensor] = []

    def forward(self, x_t, t, cond=None):
        self.steps.append(t.detach().clone())
        w = 1.0 + t.to(x_t.dtype).reshape((-1,) + (1,) * (x_t.ndim - 1)) / 1000
        out = torch.tanh(self.scale * x_t * w)
        return out if cond is None else out + cond


@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_same_generator_seed_gives_bit_identical_samples(kind):
    model = TinyModel()
    kw = dict(eta=1.0) if kind == "ddim" else {}
    a = run(kind, model, (3, 5), generator=torch.Generator().manual_seed(5), **kw)
    b = run(kind, model, (3, 5), generator=torch.Generator().manual_seed(5), **kw)
    c = run(kind, model, (3, 5), generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32  # the model's parameter dtype


@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_per_row_generators_make_each_row_independent_of_the_batch(kind):
    """A list of generators, one per row: a row's sample is the one it gets alone with its own generator, whatever
    else is in the batch and in which order (the contract per-input seeding in diffwave vocode builds on)."""
    model = TinyModel()
    kw = dict(eta=1.0) if kind == "ddim" else {}
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    alone = run(kind, model, (1, 5), generator=gens(11), **kw)
    batch = run(kind, model, (3, 5), generator=gens(7, 11, 3), **kw)
    swapped = run(kind, model, (2, 5), generator=gens(11, 7), **kw)
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(swapped[0:1], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(swapped[1], batch[0], rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[2])
    with pytest.raises(ValueError, match="2 per-row generators for a batch of 3"):
        run(kind, model, (3, 5), generator=gens(1, 2), **kw)


@pytest.mark.parametrize("kind", list(SAMPLERS))
@pytest.mark.parametrize("shape", [(2, 6), (2, 3, 5), (2, 3, 4, 4)])
def test_shapes_of_any_rank(kind, shape):
    model = TinyModel()
    cond = torch.full(shape, 0.01)
    out = run(kind, model, shape, cond=cond, generator=torch.Generator().manual_seed(0))
    assert out.shape == shape and torch.isfinite(out).all()
    assert all(t.shape == (2,) for t in model.steps)
    assert all(t.dtype == (torch.long if kind in ("ddpm", "ddim") else torch.float32) for t in model.steps)


@pytest.mark.parametrize("schedule_name", ["cosine", "sigmoid", "linear_short"])
def test_no_nan_or_inf_with_beta_near_one(schedule_name):
    sched = {"cosine": NoiseSchedule.cosine(100), "sigmoid": NoiseSchedule.sigmoid(100),
             "linear_short": NoiseSchedule.linear(10, 1e-4, 0.9)}[schedule_name]
    model = TinyModel()
    for fn, steps, kw in ((ddpm_sample, None, {}), (ddpm_sample, None, dict(variance="posterior")),
                          (ddim_sample, respaced(sched, 10), {}), (ddim_sample, respaced(sched, 10), dict(eta=1.0)),
                          (heun_sample, heun_steps(sched, 6), {}),
                          (fast_sample, fast_schedule(sched, [float(sched.betas[0]), 0.3, 0.6]), {})):
        for prediction in ("eps", "x0", "v"):
            out = fn(vp(model, sched, prediction), (4, 3), steps, generator=torch.Generator().manual_seed(0), **kw)
            assert torch.isfinite(out).all(), (schedule_name, fn.__name__, kw, prediction)


@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_x0_and_v_predicting_models_give_the_same_samples(kind):
    eps_model = exact_model(kind)

    def abar_at(t):
        return eps_model.abar_fn(t).reshape(-1, 1)

    def x0_model(x_t, t, cond=None):
        a = abar_at(t)
        return (x_t - (1 - a).sqrt() * eps_model(x_t, t)) / a.sqrt()

    def v_model(x_t, t, cond=None):
        a = abar_at(t)
        return (eps_model(x_t, t) - (1 - a).sqrt() * x_t) / a.sqrt()

    shape, seed = (32, 1), 3
    ref = run(kind, eps_model, shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    for prediction, model in (("x0", x0_model), ("v", v_model)):
        out = run(kind, model, shape, generator=torch.Generator().manual_seed(seed), dtype=F64, prediction=prediction)
        torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7)


def test_respaced_schedules_call_the_network_with_original_steps():
    model = TinyModel()
    ddpm_sample(vp(model, LINEAR), (2, 3), LINEAR.respace([0, 10, 500, 999]), generator=torch.Generator().manual_seed(0))
    assert [int(t[0]) for t in model.steps] == [999, 500, 10, 0]
    model.steps.clear()
    ddim_sample(vp(model, LINEAR), (2, 3), respaced(LINEAR, 5), generator=torch.Generator().manual_seed(0))
    assert [int(t[0]) for t in model.steps] == [999, 749, 500, 250, 0]
    model.steps.clear()
    fast_sample(vp(model, DIFFWAVE), (2, 3), fast_schedule(DIFFWAVE, FAST_BETAS),
                generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose([float(t[0]) for t in model.steps], fast_sampling_steps(DIFFWAVE, FAST_BETAS).flip(0),
                               rtol=1e-6)


def test_callback_progress_and_clipping(capsys):
    seen = []
    out = ddim_sample(vp(TinyModel(), LINEAR), (2, 4), respaced(LINEAR, 7),
                      callback=lambda i, x: seen.append((i, x.clone())),
                      progress=True, generator=torch.Generator().manual_seed(0))
    assert [i for i, _ in seen] == list(range(7)) and torch.equal(seen[-1][1], out)
    assert "ddim" in capsys.readouterr().err  # tqdm bar
    heun_calls = []
    heun_sample(vp(TinyModel(), LINEAR), (2, 4), heun_steps(LINEAR, 5), callback=lambda i, x: heun_calls.append(i))
    assert heun_calls == list(range(5))

    def wild(x_t, t, cond=None):  # predicts x0 far outside [-1, 1]
        return -10 * torch.ones_like(x_t)

    clipped = ddpm_sample(vp(wild, DIFFWAVE), (3, 4), clip_denoised=True, generator=torch.Generator().manual_seed(0))
    assert clipped.abs().max() <= 1.0
    free = ddpm_sample(vp(wild, DIFFWAVE), (3, 4), generator=torch.Generator().manual_seed(0))
    assert free.abs().max() > 1.0
    with pytest.raises(ValueError, match="sigma range"):
        heun_sample(vp(TinyModel(), LINEAR), (1, 2), heun_steps(LINEAR, 18, sigma_max=1e4))
    with pytest.raises(ValueError, match="x_T"):
        ddpm_sample(vp(TinyModel(), LINEAR), (1, 2), x_T=torch.zeros(2, 2))


def test_ddpm_clip_sample_clamps_every_state():
    """``clip_sample`` bounds every intermediate state, and without it the states leave the interval."""
    import torch

    from diffcore.denoiser import VPDenoiser
    from diffcore.samplers import ddpm_sample
    from diffcore.schedule import NoiseSchedule

    schedule = NoiseSchedule.linear(20, 1e-4, 0.05)

    def model(x, t, cond=None):
        return -3.0 * torch.ones_like(x)  # a poor eps-predictor that pushes samples far out

    seen = []
    g = torch.Generator().manual_seed(0)
    ddpm_sample(VPDenoiser(model, schedule), (64, 8), generator=g, clip_sample=1.0,
                callback=lambda i, x: seen.append(x.abs().max()))
    assert len(seen) == 20 and max(float(v) for v in seen) <= 1.0
    seen.clear()
    g = torch.Generator().manual_seed(0)
    ddpm_sample(VPDenoiser(model, schedule), (64, 8), generator=g, callback=lambda i, x: seen.append(x.abs().max()))
    assert max(float(v) for v in seen) > 1.0


def test_every_noise_a_sampler_draws_is_the_denoisers_prior_noise(monkeypatch):
    """x_T and each step's fresh noise go through ``denoiser.prior_noise`` (the one helper that applies a prior):
    a prior noise that is replaced shows in every sampler's output, at the number of draws the algorithm makes."""
    from diffcore.denoiser import EDMDenoiser

    sched = NoiseSchedule.linear(6, 1e-3, 0.2)
    shapes = []
    for cls in (VPDenoiser, EDMDenoiser):
        monkeypatch.setattr(cls, "prior_noise", lambda self, z: shapes.append(tuple(z.shape)) or torch.zeros_like(z))
    net = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731  (eps = 0 and x0_hat = x_t / sqrt(abar))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(ddpm_sample(vp(net, sched), (2, 3), generator=g()), torch.zeros(2, 3))
    assert shapes == [(2, 3)] * 6  # x_T, then one draw at each step but the last
    shapes.clear()
    assert torch.equal(ddim_sample(vp(net, sched), (2, 3), respaced(sched, 4), eta=1.0, generator=g()),
                       torch.zeros(2, 3))
    assert shapes == [(2, 3)] * 4
    for sampler in (heun_sample, dpmpp_2m_sample):
        shapes.clear()
        assert torch.equal(sampler(vp(net, sched), (2, 3), heun_steps(sched, 3), generator=g()), torch.zeros(2, 3))
        assert shapes == [(2, 3)]  # only x_T: the ODE adds no noise
        shapes.clear()
        edm = EDMDenoiser(lambda x, t, cond=None: torch.zeros_like(x))
        sampler(edm, (2, 3), karras_sigmas(edm.sigma_min, edm.sigma_max, 3), generator=g())
        assert shapes == [(2, 3)]


def test_sigma_samplers_take_sigma_levels_as_their_steps():
    """Heun and DPM-Solver++ take the discretisation as ``steps`` like the others, as sigma levels: a schedule of
    steps is refused with a message naming what to pass."""
    for sampler in (heun_sample, dpmpp_2m_sample):
        with pytest.raises(TypeError, match="karras_sigmas"):
            sampler(vp(TinyModel(), LINEAR), (1, 2), respaced(LINEAR, 5))
        with pytest.raises(ValueError, match="steps must be decreasing"):
            sampler(vp(TinyModel(), LINEAR), (1, 2), torch.tensor([1.0, 2.0, 0.0]))
        out = sampler(vp(TinyModel(), LINEAR), (1, 2), steps=heun_steps(LINEAR, 3),
                      generator=torch.Generator().manual_seed(0))
        assert out.shape == (1, 2) and torch.isfinite(out).all()


def test_every_sampler_has_the_one_signature_and_counts_are_count():
    """The module docstring's promise: ``sampler(denoiser, shape, steps, *, shared keywords..., own keywords)``,
    the discretisation as ``steps``; a discretisation's length is ``count``, never ``steps``."""
    import inspect

    shared = ["cond", "generator", "x_T", "progress", "callback", "device", "dtype", "project"]
    for sampler in (ddpm_sample, ddim_sample, heun_sample, dpmpp_2m_sample):
        params = inspect.signature(sampler).parameters
        assert list(params)[:3] == ["denoiser", "shape", "steps"], sampler.__name__
        assert list(params)[3:3 + len(shared)] == shared, sampler.__name__
        assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in list(params)[3:]), sampler.__name__
    for make in (respaced, karras_sigmas):
        assert "count" in inspect.signature(make).parameters and "steps" not in inspect.signature(make).parameters
