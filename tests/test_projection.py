"""The samplers' projection of the clean estimate (issue 17, item 3): the core hook, diffimage's inpainting with it,
and diffwave's GLA-Grad (Griffin-Lim toward the mel's magnitude)."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from diffcore.config import ConfigError
from diffcore.denoiser import VPDenoiser
from diffcore.discretization import karras_sigmas, respaced
from diffcore.samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample, heun_sample
from diffcore.schedule import NoiseSchedule
from diffimage.config import UNetConfig
from diffimage.model import UNet
from diffimage.sample import generate, inpaint, keep_known
from diffwave.config import DiffWaveConfig
from diffwave.mel import MelConfig, compute_mel
from diffwave.metrics import magnitude_from_mel
from diffwave.model import DiffWave
from diffwave.projection import GLAGrad, MelProjection, griffin_lim_toward, resolve_projection
from diffwave.sample import vocode_mels
from diffwave.synth import speech_like
from gaussian_refs import GaussianEps, abar_exact, abar_log_sigma_linear, torch_single_thread  # noqa: F401

F64 = torch.float64
SCHED = NoiseSchedule.linear(40, 1e-4, 0.2)


def sampler_run(kind: str, model, shape, **kw):
    """One sampler on SCHED with the exact model ``model(abar_fn)`` of the way it reads time."""
    if kind in ("heun", "dpmpp"):
        den = VPDenoiser(model(abar_log_sigma_linear(SCHED.alphas_cumprod)), SCHED)
        fn = heun_sample if kind == "heun" else dpmpp_2m_sample
        return fn(den, shape, karras_sigmas(den.sigma_min, den.sigma_max, 8), **kw)
    den = VPDenoiser(model(abar_exact(SCHED.alphas_cumprod)), SCHED)
    if kind == "ddim":
        return ddim_sample(den, shape, respaced(SCHED, 10), eta=kw.pop("eta", 0.5), **kw)
    return ddpm_sample(den, shape, None, variance="beta", **kw)


KINDS = ["ddpm", "ddim", "heun", "dpmpp"]


def gauss(abar_fn):
    return GaussianEps(0.3, 0.5, abar_fn)


# ------------------------------------------------------------------------------------------------ the core hook


@pytest.mark.parametrize("kind", KINDS)
def test_identity_projection_changes_nothing_and_sees_every_step(kind):
    """project = identity leaves the samples as they are (bit for bit, except DDIM, which re-derives eps from the
    projected x0_hat, within float64 rounding), and it is called at each step with the callback's index (Heun:
    twice per step but the last, whose Euler step has one evaluation)."""
    seen, states = [], []
    plain = sampler_run(kind, gauss, (6, 3), generator=torch.Generator().manual_seed(0), dtype=F64)
    same = sampler_run(kind, gauss, (6, 3), generator=torch.Generator().manual_seed(0), dtype=F64,
                       project=lambda x0, i: (seen.append(i), x0)[1], callback=lambda i, x: states.append(i))
    if kind == "ddim":
        torch.testing.assert_close(same, plain, rtol=0, atol=1e-12)
    else:
        assert torch.equal(same, plain)
    n = len(states)
    want = [i for i in range(n) for _ in range(2 if kind == "heun" and i < n - 1 else 1)]
    assert seen == want


@pytest.mark.parametrize("kind", KINDS)
def test_a_projection_at_the_last_step_holds_in_the_output(kind):
    """Every sampler's last update returns its last x0_hat: a projection onto the constant c is the output."""
    c = torch.full((5, 2), -0.7, dtype=F64)
    x = sampler_run(kind, gauss, (5, 2), generator=torch.Generator().manual_seed(1), dtype=F64,
                    project=lambda x0, i: c)
    torch.testing.assert_close(x, c, rtol=0, atol=1e-9)


def test_a_projection_that_changes_the_shape_is_refused():
    with pytest.raises(ValueError, match="project"):
        sampler_run("ddpm", gauss, (4, 3), dtype=F64, project=lambda x0, i: x0[:, :1])


def test_the_known_region_follows_the_forward_posterior_exactly():
    """Closed form. Data N(0.3, 0.5^2) per element with its exact denoiser, DDPM with sigma_t^2 = beta~_t, the
    known elements started from q(x_T | x_0 = k) = N(sqrt(abar_T) k, 1 - abar_T). With x0_hat replaced by k there,
    each step draws from q(x_{t-1} | x_t, k), so the known elements of every state are distributed as the
    forward-noised known image, N(sqrt(abar_{t-1}) k, 1 - abar_{t-1}) (what RePaint's replacement writes in), and end
    at k; the unknown elements are, bit for bit, the unconditional sample (the exact denoiser acts per element)."""
    n = 20000
    k = torch.tensor([[-0.9, 0.0], [0.5, 0.2]], dtype=F64)  # one known "image" [2, 2], broadcast over the batch
    mask = torch.tensor([[True, False], [False, True]])
    known = k.expand(n, 2, 2)
    g = torch.Generator().manual_seed(3)
    abar = torch.tensor(SCHED.alphas_cumprod)
    x_T = torch.randn(n, 2, 2, generator=g, dtype=F64)
    x_T = torch.where(mask, abar[-1].sqrt() * known + (1 - abar[-1]).sqrt() * x_T, x_T)
    den = VPDenoiser(gauss(abar_exact(SCHED.alphas_cumprod)), SCHED)
    moments = []

    def record(i, x):
        t_prev = SCHED.num_steps - 2 - i  # the state after step i is x_{t-1} at index t_prev (-1: x_0)
        a = abar[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=F64)
        z = (x[:, mask] - a.sqrt() * k[mask]) / max(float(1 - a), 1e-300) ** 0.5
        if t_prev >= 0:
            moments.append((z.mean(0), z.var(0)))

    x = ddpm_sample(den, (n, 2, 2), variance="posterior", x_T=x_T, generator=torch.Generator().manual_seed(4),
                    project=keep_known(known, mask), callback=record)
    plain = ddpm_sample(den, (n, 2, 2), variance="posterior", x_T=x_T, generator=torch.Generator().manual_seed(4))
    assert len(moments) == SCHED.num_steps - 1
    for mean, var in moments:  # standardised: N(0, 1) at every step
        assert mean.abs().max() < 5 / n**0.5
        assert (var - 1).abs().max() < 5 * (2 / n) ** 0.5
    torch.testing.assert_close(x[:, mask], known[:, mask], rtol=0, atol=1e-9)
    assert torch.equal(x[:, ~mask], plain[:, ~mask])
    assert (plain[:, mask] - known[:, mask]).abs().mean() > 0.3  # without the projection they are not kept


# ------------------------------------------------------------------------------------------------ diffimage


def image_config(**diffusion) -> UNetConfig:
    return UNetConfig.from_dict({"preset": "tiny", "image_size": 8, "channel_mult": [1], "attention_resolutions": [],
                                 "diffusion": {"num_steps": 40, **diffusion}})


class ExactImageNet(nn.Module):
    """A "U-Net" whose eps is the exact one for images N(0.3, 0.5^2) per pixel (diffimage.generate's contract)."""

    def __init__(self, config: UNetConfig, edm: bool = False):
        super().__init__()
        self.config = config
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the device
        sched = config.diffusion.build()
        self.eps = gauss(abar_exact(sched.alphas_cumprod))
        self.eps_sigma = gauss(abar_log_sigma_linear(sched.alphas_cumprod))

    def forward(self, x, t, cond=None):
        return (self.eps_sigma if t.is_floating_point() else self.eps)(x, t)


def random_unet(**diffusion) -> UNet:
    torch.manual_seed(0)
    model = UNet(image_config(**diffusion))
    with torch.no_grad():  # a fresh U-Net zeroes its output layer; make it say something
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def known_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 1.8 - 0.9


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "heun", "dpmpp"])
def test_inpainting_with_everything_known_returns_the_known_image(sampler):
    model = random_unet()
    known = known_images(2)
    steps = None if sampler == "ddpm" else 5
    x = inpaint(model, known, torch.ones(8, 8, dtype=torch.bool), sampler=sampler, steps=steps,
                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, known, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "heun", "dpmpp"])
def test_inpainting_keeps_known_pixels_and_samples_the_rest_from_the_model(sampler):
    """A random mask: the known pixels are kept (within 1e-5, float32); with the exact per-pixel denoiser the unknown
    pixels are the model's own sample for the same seed; with a real U-Net they differ from plain sampling there,
    because the network sees the known pixels."""
    steps = None if sampler == "ddpm" else 6
    known = known_images(3, seed=1)
    mask = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) < 0.5
    exact = ExactImageNet(image_config())
    x = generate(exact, 3, sampler=sampler, steps=steps, known=known, mask=mask,
                 generator=torch.Generator().manual_seed(5))
    plain = generate(exact, 3, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(5))
    m = mask.expand_as(known)
    torch.testing.assert_close(x[m], known[m], rtol=0, atol=1e-5)
    torch.testing.assert_close(x[~m], plain[~m], rtol=0, atol=1e-5)
    assert (plain[m] - known[m]).abs().mean() > 0.2  # plain sampling does not keep them

    unet = random_unet()
    y = inpaint(unet, known, mask, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(5))
    free = generate(unet, 3, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(y[m], known[m], rtol=0, atol=1e-5)
    assert (y[~m] - free[~m]).abs().max() > 1e-3


@pytest.mark.parametrize("sampler", ["heun", "dpmpp"])
def test_inpainting_an_edm_model_keeps_the_known_pixels(sampler):
    model = random_unet(edm={"sigma_data": 0.5, "time_scale": 250.0})
    known = known_images(2, seed=3)
    mask = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)) < 0.3
    x = inpaint(model, known, mask, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(0))
    free = generate(model, 2, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x[mask], known[mask], rtol=0, atol=1e-5)
    assert (free[mask] - known[mask]).abs().mean() > 0.1


def test_inpainting_arguments_are_checked():
    model = random_unet()
    known = known_images(2)
    with pytest.raises(ValueError, match="both"):
        generate(model, 2, known=known)
    with pytest.raises(ValueError, match="broadcast"):
        inpaint(model, known, torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        inpaint(model, known * 3, torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="0 and 1"):
        inpaint(model, known, torch.full((8, 8), 0.5))
    with pytest.raises(ValueError, match="shape"):
        generate(model, 3, known=known, mask=torch.ones(8, 8, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------ diffwave


def small_vocoder(seed: int = 0, scale: float = 0.3) -> DiffWave:
    """A small random DiffWave whose output is not zero (the real output layer starts at zero)."""
    torch.manual_seed(seed)
    cfg = DiffWaveConfig.preset("tiny", residual_layers=4, residual_channels=8, dilation_cycle=3, embedding_hidden=32)
    model = DiffWave(cfg).eval()
    torch.nn.init.normal_(model.output_projection.weight, std=scale)
    return model


def speech_mel(seconds: float = 0.6, seed: int = 0):
    wav = speech_like(seconds, 22050, seed=seed).clamp(-1, 1)
    return wav, compute_mel(wav, MelConfig.diffwave())


def magnitude_error(wav: torch.Tensor, mel: torch.Tensor) -> float:
    """||(|STFT(wav)| - S)|| / ||S|| over the mel's frames, S = pinv(H) M the magnitude the mel asks for."""
    c = MelConfig.diffwave()
    target = magnitude_from_mel(mel, c)
    spec = torch.stft(wav.double(), c.n_fft, c.hop_length, c.win_length,
                      window=torch.hann_window(c.win_length, periodic=True, dtype=F64), center=True,
                      pad_mode="reflect", return_complex=True).abs()[:, : target.shape[-1]]
    return float(torch.linalg.norm(spec - target) / torch.linalg.norm(target))


@pytest.mark.parametrize("preset", ["diffwave", "hifigan"])
def test_griffin_lim_toward_keeps_a_consistent_spectrogram(preset):
    """The true wave is a fixed point of Griffin-Lim toward its own magnitude (started from its own phase); a
    wave with the wrong magnitude is moved toward it."""
    c = MelConfig.diffwave() if preset == "diffwave" else MelConfig.hifigan()
    wav, _ = speech_mel(0.5, seed=1)
    wav = wav[: (wav.numel() // c.hop_length) * c.hop_length].double()
    lead = c.hop_length // 2 if preset == "hifigan" else 0
    window = torch.hann_window(c.win_length, periodic=True, dtype=F64)
    mag = torch.stft(wav[lead:], c.n_fft, c.hop_length, c.win_length, window=window, center=True,
                     pad_mode="reflect", return_complex=True).abs()
    back = griffin_lim_toward(wav, mag, c, n_iter=8)
    torch.testing.assert_close(back, wav, rtol=0, atol=1e-9)
    assert torch.equal(griffin_lim_toward(wav, mag, c, n_iter=0), wav)
    noisy = wav + 0.05 * torch.randn(wav.shape, generator=torch.Generator().manual_seed(0), dtype=F64)

    def err(w):
        s = torch.stft(w[lead:], c.n_fft, c.hop_length, c.win_length, window=window, center=True,
                       pad_mode="reflect", return_complex=True).abs()
        return float(torch.linalg.norm(s - mag) / torch.linalg.norm(mag))

    assert err(griffin_lim_toward(noisy, mag, c, n_iter=16)) < 0.5 * err(noisy)


def test_gla_grad_is_off_by_default_and_off_is_bit_identical():
    assert inspect.signature(vocode_mels).parameters["project"].default is None
    model = small_vocoder()
    _, mel = speech_mel()
    default = vocode_mels(model, [mel], generator=torch.Generator().manual_seed(0))[0]
    off = vocode_mels(model, [mel], generator=torch.Generator().manual_seed(0), project=None)[0]
    on = vocode_mels(model, [mel], generator=torch.Generator().manual_seed(0), project="gla")[0]
    assert torch.equal(default, off)
    assert (on - off).abs().max() > 1e-2  # "on" does something, so "off" is a real choice


def test_gla_grad_moves_the_output_magnitude_toward_the_mel():
    """With a trivial (random, untrained) model the output's STFT magnitude is far from the one the mel asks for;
    GLA-Grad's early projections bring it closer and a final projection closer still."""
    model = small_vocoder(1)
    _, mel = speech_mel(0.8, seed=2)
    errors = {}
    for name, option in {"off": None, "gla": "gla", "final": GLAGrad(final_iterations=32)}.items():
        wav = vocode_mels(model, [mel], generator=torch.Generator().manual_seed(0), project=option)[0]
        errors[name] = magnitude_error(wav, mel)
    assert errors["gla"] < 0.8 * errors["off"], errors
    assert errors["final"] < 0.5 * errors["gla"], errors
    projection = MelProjection(GLAGrad(), [mel], [0], model.config.mel, num_steps=6)
    x0 = torch.zeros(1, mel.shape[-1] * 256)
    for i in range(6):
        projection(x0, i)
    assert projection.calls == [0, 1, 2]  # the first three of six reverse steps, as GLA-Grad does


def test_gla_grad_chunked_equals_whole_and_packed_inputs_stay_apart():
    model = small_vocoder(2)
    mels = [speech_mel(0.7, seed=3)[1], speech_mel(0.3, seed=4)[1]]
    whole = vocode_mels(model, mels, generator=torch.Generator().manual_seed(0), max_frames=None, project="gla")
    chunked = vocode_mels(model, mels, generator=torch.Generator().manual_seed(0), max_frames=24, project="gla")
    plain_whole = vocode_mels(model, mels, generator=torch.Generator().manual_seed(0), max_frames=None)
    plain_chunked = vocode_mels(model, mels, generator=torch.Generator().manual_seed(0), max_frames=24)
    # Without the projection, windows and the whole mel differ by float rounding alone (6e-7 measured). Griffin-Lim's
    # phase updates amplify that rounding, by how much depends on the processor's kernels: below 1e-4 on an AMD EPYC
    # and an earlier Intel Xeon, 3.3e-3 of audio peaking at 1.0 on an Intel Xeon (Ice Lake). A window misplaced or cut
    # without its context would differ by the signal's own size.
    for w, c, pw, pc in zip(whole, chunked, plain_whole, plain_chunked):
        torch.testing.assert_close(pc, pw, rtol=0, atol=1e-5)
        torch.testing.assert_close(c, w, rtol=0, atol=1e-2 * float(w.abs().max()))
    # the packed projection is each input's own projection, toward its own mel
    lengths = [m.shape[-1] * 256 for m in mels]
    x0 = torch.randn(1, sum(lengths), generator=torch.Generator().manual_seed(1))
    packed = MelProjection(GLAGrad(), mels, [0, lengths[0]], MelConfig.diffwave(), num_steps=6)(x0, 0)
    for k, (o, n) in enumerate(zip([0, lengths[0]], lengths)):
        alone = MelProjection(GLAGrad(), [mels[k]], [0], MelConfig.diffwave(), num_steps=6)(x0[:, o : o + n], 0)
        assert torch.equal(packed[:, o : o + n], alone)


def test_gla_grad_options_are_checked():
    assert resolve_projection("gla") == GLAGrad() and resolve_projection(None) is None
    for bad in (dict(steps=0), dict(iterations=0), dict(momentum=1.0), dict(steps=-1), dict(iterations=2.5)):
        with pytest.raises(ConfigError):
            GLAGrad(**bad)
    with pytest.raises(ValueError, match="project"):
        vocode_mels(small_vocoder(), [speech_mel()[1]], project="griffin")
    from diffwave.refiner import GriffinLimRefiner, RefinerConfig

    refiner = GriffinLimRefiner(RefinerConfig(dim=8, intermediate=16, num_blocks=1)).eval()
    with pytest.raises(ValueError, match="refiner"):
        vocode_mels(refiner, [speech_mel()[1]], project="gla")
    assert GLAGrad(steps=0, final_iterations=8).iterations_at(5, 6) == 8
    assert GLAGrad(steps=0, final_iterations=8).iterations_at(0, 6) == 0


def test_vocoder_vocode_takes_project_and_is_off_by_default():
    from diffwave.api import Vocoder

    assert inspect.signature(Vocoder.vocode).parameters["project"].default is None
    model = small_vocoder()
    _, mel = speech_mel()
    voc = Vocoder(model)
    default = vocode_mels(model, [mel], generator=torch.Generator().manual_seed(0))[0]
    on = vocode_mels(model, [mel], generator=torch.Generator().manual_seed(0), project="gla")[0]
    assert torch.equal(voc.vocode(mel, generator=torch.Generator().manual_seed(0)), default)
    via_api = voc.vocode(mel[None], generator=torch.Generator().manual_seed(0), project=GLAGrad())[0]
    torch.testing.assert_close(via_api, on, rtol=0, atol=1e-6)
