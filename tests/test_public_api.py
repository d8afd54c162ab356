"""The public surface that outside code imports from ``diffcore`` stays importable and consistent."""

import torch

import diffcore


def test_public_names_exist():
    for name in ["NoiseSchedule", "VPDenoiser", "EDMDenoiser", "epsilon_loss", "edm_loss", "nll", "ddpm_sample",
                 "ddim_sample", "heun_sample", "respaced", "fast_schedule", "karras_sigmas"]:
        assert callable(getattr(diffcore, name)), name
    s = diffcore.NoiseSchedule.linear(10, 1e-4, 0.02)
    assert s.num_steps == 10 and len(s.betas) == len(s.alphas) == len(s.alphas_cumprod) == 10


def test_end_to_end_on_vectors_with_the_exact_denoiser():
    # Data N(0, I) in 3-D: the exact eps-predictor is eps = sqrt(1 - abar) * x_t, and every sampler must then
    # produce unit-variance samples; the residual eps - eps_hat = abar*eps - sqrt(abar(1-abar))*x0 has variance abar,
    # so the expected l2 loss over uniform t is mean(abar).
    s = diffcore.NoiseSchedule.linear(100, 1e-4, 0.05)
    abar = torch.tensor(s.alphas_cumprod.copy())

    def model(x, t, cond=None):
        a = abar.to(x.dtype)
        tt = t.to(x.dtype) if t.is_floating_point() else t.to(x.dtype)
        lo = tt.floor().long().clamp(0, 99)
        hi = (lo + 1).clamp(max=99)
        w = (tt - lo.to(x.dtype)).unsqueeze(-1)
        ab = a[lo].unsqueeze(-1) * (1 - w) + a[hi].unsqueeze(-1) * w
        return torch.sqrt(1 - ab) * x

    g = torch.Generator().manual_seed(0)
    den = diffcore.VPDenoiser(model, s)
    x = diffcore.ddim_sample(den, (4000, 3), diffcore.respaced(s, 20), generator=g, dtype=torch.float64)
    assert abs(x.var().item() - 1) < 0.08
    x0 = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    loss = diffcore.epsilon_loss(den, x0, generator=g)
    assert loss.shape == (4000,)
    assert abs(loss.mean().item() - abar.mean().item()) < 0.03
