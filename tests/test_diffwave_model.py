"""The DiffWave network and its config: sizes against closed forms, the upsampler's lengths and alignment, the
fractional-step embedding, the receptive field, the model contract and config validation."""

import math

import numpy as np
import pytest
import torch
import yaml

from diffcore.config import ConfigError
from diffwave.config import DiffWaveConfig, suggest_upsample_strides
from diffwave.model import DiffusionEmbedding, DiffWave, SpectrogramUpsampler, step_embedding_table

PRESETS = ["base", "large", "unconditional", "tiny"]


def expected_parameters(cfg: DiffWaveConfig) -> int:
    """Closed-form parameter count of the network in Figure 2 of the paper (weights + biases)."""
    c, n, d, h = cfg.residual_channels, cfg.residual_layers, cfg.embedding_dim, cfg.embedding_hidden
    total = 2 * c  # input 1x1 conv
    total += d * h + h + h * h + h  # step-embedding MLP
    per_layer = (2 * c * c * 3 + 2 * c) + (h * c + c) + (c * 2 * c + 2 * c)  # dilated conv, step proj, output 1x1
    if cfg.conditional:
        per_layer += cfg.n_mels * 2 * c + 2 * c  # conditioner 1x1
        total += sum(3 * (2 * s - s % 2) + 1 for s in cfg.upsample_strides)  # 1-channel ConvTranspose2d stages
    total += n * per_layer
    total += c * c + c + c + 1  # skip 1x1 and output 1x1
    return total


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, exact, paper",
    [
        ("base", 2_619_971, 2.64e6),
        ("large", 6_885_315, 6.91e6),
        ("unconditional", 24_034_305, 24.1e6),
        ("tiny", 210_691, None),
    ],
)
def test_parameter_count_matches_closed_form_and_paper(name, exact, paper):
    cfg = DiffWaveConfig.preset(name)
    model = DiffWave(cfg)
    assert n_params(model) == expected_parameters(cfg) == exact
    if paper is not None:  # Kong et al. (2021) quote 2.64M / 6.91M / 24.1M
        assert abs(exact - paper) / paper < 0.01


@pytest.mark.parametrize("name", PRESETS)
def test_preset_shapes_and_dilations(name):
    cfg = DiffWaveConfig.preset(name)
    model = DiffWave(cfg)
    c = cfg.residual_channels
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["input_projection.weight"] == (c, 1, 1)
    assert shapes["diffusion_embedding.projection1.weight"] == (cfg.embedding_hidden, cfg.embedding_dim)
    assert shapes["output_projection.weight"] == (1, c, 1)
    assert model.diffusion_embedding.embedding.shape == (cfg.diffusion.num_steps, cfg.embedding_dim)
    assert len(model.residual_layers) == cfg.residual_layers
    for i, layer in enumerate(model.residual_layers):
        assert layer.dilated_conv.dilation == (2 ** (i % cfg.dilation_cycle),)
        assert layer.dilated_conv.padding == layer.dilated_conv.dilation  # "same" length
        assert shapes[f"residual_layers.{i}.dilated_conv.weight"] == (2 * c, c, 3)
        assert shapes[f"residual_layers.{i}.diffusion_projection.weight"] == (c, cfg.embedding_hidden)
        assert shapes[f"residual_layers.{i}.output_projection.weight"] == (2 * c, c, 1)
        key = f"residual_layers.{i}.conditioner_projection.weight"
        assert shapes.get(key) == ((2 * c, cfg.n_mels, 1) if cfg.conditional else None)
    assert ("spectrogram_upsampler.conv1.weight" in shapes) == cfg.conditional


def test_paper_settings_of_the_presets():
    base, large, uncond = (DiffWaveConfig.preset(n) for n in ("base", "large", "unconditional"))
    assert DiffWaveConfig() == base
    assert (base.residual_layers, base.residual_channels, base.dilation_cycle) == (30, 64, 10)
    assert (base.diffusion.num_steps, base.diffusion.beta_start, base.diffusion.beta_end) == (50, 1e-4, 0.05)
    assert base.diffusion.loss == "l1" and base.inference_betas == (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5)
    assert (base.mel.preset, base.mel.sample_rate, base.mel.hop_length, base.mel.n_mels) == ("diffwave", 22050, 256, 80)
    assert (large.residual_channels, large.diffusion.num_steps, large.diffusion.beta_end) == (128, 200, 0.02)
    assert large.inference_betas[-1] == 0.7
    assert (uncond.residual_layers, uncond.residual_channels, uncond.dilation_cycle) == (36, 256, 12)
    assert not uncond.conditional and uncond.mel is None and uncond.hop_length is None
    assert (uncond.sample_rate, uncond.audio_length, uncond.diffusion.num_steps) == (16000, 16000, 200)


@pytest.mark.parametrize("name", PRESETS)
def test_config_round_trip_through_dict_and_yaml(name):
    cfg = DiffWaveConfig.preset(name)
    assert DiffWaveConfig.from_dict(cfg.to_dict()) == cfg
    assert DiffWaveConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_every_field_overridable_from_a_preset():
    cfg = DiffWaveConfig.from_dict(
        {
            "preset": "large",
            "residual_layers": 12,
            "diffusion": {"num_steps": 300},
            "mel": {"hop_length": 300, "win_length": 1024},
            "upsample_strides": [15, 20],
        }
    )
    assert (cfg.residual_layers, cfg.residual_channels, cfg.diffusion.num_steps) == (12, 128, 300)
    assert cfg.diffusion.beta_end == 0.02 and cfg.diffusion.loss == "l1"  # the rest of the preset's schedule stays
    assert cfg.hop_length == 300 and cfg.mel.preset == "diffwave"
    assert DiffWave(cfg).hop_length == 300


def test_partial_sections_start_from_the_base_preset():
    cfg = DiffWaveConfig.from_dict({"diffusion": {"num_steps": 40}, "mel": {"win_length": 512}})
    assert (cfg.diffusion.num_steps, cfg.diffusion.beta_end, cfg.diffusion.loss) == (40, 0.05, "l1")
    assert (cfg.mel.win_length, cfg.mel.hop_length, cfg.mel.preset) == (512, 256, "diffwave")
    assert cfg.replace(residual_layers=3).diffusion == cfg.diffusion


@pytest.mark.parametrize(
    "hop, strides", [(256, (16, 16)), (300, (15, 20)), (200, (10, 20)), (275, (11, 25)), (240, (15, 16))]
)
def test_suggested_strides_multiply_to_the_hop(hop, strides):
    assert suggest_upsample_strides(hop) == strides
    assert math.prod(suggest_upsample_strides(hop, stages=3)) == hop


@pytest.mark.parametrize("strides", [(16, 16), (15, 20), (10, 20), (11, 25), (8, 4, 8), (7,), (1, 3)])
@pytest.mark.parametrize("frames", [1, 3, 7])
def test_upsampler_output_length_is_frames_times_hop(strides, frames):
    up = SpectrogramUpsampler(strides)
    mel = torch.rand(2, 5, frames)
    assert up(mel).shape == (2, 5, frames * math.prod(strides))


@pytest.mark.parametrize("strides", [(16, 16), (15, 20), (11, 25)])
def test_upsampler_centres_each_frame_on_its_hop(strides):
    """With all-ones kernels, an impulse at interior frame i spreads symmetrically around samples [i·hop, (i+1)·hop)."""
    up = SpectrogramUpsampler(strides)
    for name, p in up.named_parameters():
        torch.nn.init.ones_(p) if name.endswith("weight") else torch.nn.init.zeros_(p)
    hop, frames, i = math.prod(strides), 9, 4
    mel = torch.zeros(1, 3, frames)
    mel[0, 1, i] = 1.0
    with torch.no_grad():
        response = up(mel)[0, 1]
    assert response.min() >= 0 and response.sum() > 0
    support = torch.nonzero(response).flatten()
    positions = torch.arange(response.numel(), dtype=torch.float64)
    centre = float((positions * response.double()).sum() / response.double().sum())
    assert centre == pytest.approx((i + 0.5) * hop - 0.5, abs=1e-6)
    assert support.min() > (i - 1) * hop and support.max() < (i + 2) * hop  # within one hop either side


def test_mismatched_strides_are_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"upsample_strides \[16, 8\] multiply to 128.*hop_length is 256.*\[16, 16\]"):
        DiffWaveConfig.preset("base", upsample_strides=[16, 8])
    with pytest.raises(ConfigError, match=r"multiply to 256.*hop_length is 300.*\[15, 20\]"):
        DiffWaveConfig.from_dict({"preset": "base", "mel": {"hop_length": 300}})
    with pytest.raises(ConfigError, match="positive"):
        DiffWaveConfig.preset("base", upsample_strides=[256, 0])


def test_inconsistent_configs_are_rejected():
    with pytest.raises(ConfigError, match=r"n_mels \(80\) must equal mel.n_mels \(100\)"):
        DiffWaveConfig.from_dict({"mel": {"n_mels": 100}})
    with pytest.raises(ConfigError, match="sample_rate"):
        DiffWaveConfig.preset("base", sample_rate=16000)
    with pytest.raises(ConfigError, match="needs a mel front end"):
        DiffWaveConfig.preset("base", mel=None)
    with pytest.raises(ConfigError, match="unconditional.*set mel to null"):
        DiffWaveConfig.preset("base", conditional=False)
    with pytest.raises(ConfigError, match="embedding_dim"):
        DiffWaveConfig.preset("tiny", embedding_dim=127)


def test_inference_betas_must_align_with_the_training_schedule():
    # base trains to alpha_bar_T = prod(1 - linspace(1e-4, 0.05, 50)) ~ 0.28; ending the fast schedule at 0.7 gives
    # prod(1 - eta) ~ 0.225, below anything the network was trained on.
    alpha_bar_T = float(np.prod(1 - np.linspace(1e-4, 0.05, 50)))
    gamma_bar = float(np.prod(1 - np.array([1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.7])))
    assert gamma_bar < alpha_bar_T
    with pytest.raises(ConfigError, match=r"do not align.*step\(s\) \[5\]"):
        DiffWaveConfig.preset("base", inference_betas=[1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.7])
    with pytest.raises(ConfigError, match="do not align"):  # a first step less noisy than the first training step
        DiffWaveConfig.preset("base", inference_betas=[1e-5, 0.5])
    with pytest.raises(ConfigError, match=r"values in \(0, 1\)"):
        DiffWaveConfig.preset("base", inference_betas=[])
    assert DiffWaveConfig.preset("large").inference_betas[-1] == 0.7  # aligns with T = 200, beta_T = 0.02


def test_the_legacy_key_fast_betas_is_read_as_inference_betas():
    """Configs written before the rename (recipes, run folders, exports) keep their meaning: the old key's value
    becomes inference_betas, with a DeprecationWarning naming both; both keys at once are refused."""
    new = DiffWaveConfig.preset("large", inference_betas=[1e-4, 1e-2, 0.5])
    old = {("fast_betas" if k == "inference_betas" else k): v for k, v in new.to_dict().items()}
    with pytest.warns(DeprecationWarning, match="fast_betas is now called inference_betas"):
        assert DiffWaveConfig.from_dict(old) == new
    assert "fast_betas" not in new.to_dict()
    with pytest.raises(ConfigError, match="give inference_betas only"):
        DiffWaveConfig.from_dict({**new.to_dict(), "fast_betas": [1e-4, 0.5]})


@pytest.mark.parametrize("channels_last", [False, True])
def test_gradient_checkpointing_gives_the_same_values_and_gradients(channels_last, monkeypatch):
    """set_runtime switches how the network runs, not what it computes: the loss and every parameter's gradient
    with activation checkpointing equal the plain path's; None leaves a switch unchanged; the config and the state
    dict do not see the switches."""
    torch.manual_seed(0)
    cfg = DiffWaveConfig.preset("tiny", residual_layers=4, dilation_cycle=2)
    model = DiffWave(cfg)
    torch.nn.init.normal_(model.output_projection.weight, std=0.1)  # a non-zero output, so gradients flow
    x, mel, t = torch.randn(2, 4 * 256), torch.rand(2, 80, 4), torch.tensor([3, 40])
    model.set_runtime(channels_last=channels_last)

    def loss_and_grads():
        model.zero_grad()
        loss = model(x, t, mel).square().mean()
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    import diffwave.model

    calls = []
    real = diffwave.model.checkpoint
    monkeypatch.setattr(diffwave.model, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref_loss, ref_grads = loss_and_grads()
    assert not calls
    keys = set(model.state_dict())
    model.set_runtime(gradient_checkpointing=True)
    assert model.gradient_checkpointing and model.channels_last == channels_last  # None: unchanged
    loss, grads = loss_and_grads()
    assert len(calls) == cfg.residual_layers  # every residual layer went through the checkpoint
    with torch.no_grad():
        model(x, t, mel)
    assert len(calls) == cfg.residual_layers  # nothing to save without gradients: the plain path
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    for k, g in ref_grads.items():
        torch.testing.assert_close(grads[k], g, rtol=1e-6, atol=1e-7, msg=k)
    assert set(model.state_dict()) == keys and model.config == cfg
    assert "gradient_checkpointing" not in cfg.to_dict() and "channels_last" not in cfg.to_dict()


def test_step_table_is_the_papers_sinusoids():
    table = step_embedding_table(50, 128).double().numpy()
    t = np.arange(50)[:, None].astype(np.float64)
    freqs = 10.0 ** (np.arange(64) * 4.0 / 63.0)
    reference = np.concatenate([np.sin(t * freqs), np.cos(t * freqs)], axis=1)
    # float32 arguments t·ω (up to 4.9e5) carry rounding errors of a few |t·ω|·2^-24 radians (ω and the product)
    tol = np.concatenate([t * freqs, t * freqs], axis=1) * 8 * 2.0**-24 + 1e-6
    assert np.all(np.abs(table - reference) <= tol)
    assert np.all(table[0, :64] == 0) and np.all(table[0, 64:] == 1)


def test_fractional_steps_interpolate_between_neighbouring_rows():
    emb = DiffusionEmbedding(num_steps=50, dim=128, hidden=32)
    t = torch.tensor([10.25, 3.0, 48.9, 0.5])
    rows = emb.embedding
    expected = torch.stack(
        [0.75 * rows[10] + 0.25 * rows[11], rows[3], 0.1 * rows[48] + 0.9 * rows[49], 0.5 * rows[0] + 0.5 * rows[1]]
    )
    torch.testing.assert_close(emb.table(t), expected, atol=1e-5, rtol=0)  # float32 fractions: 48.9 - 48 ≠ 0.9
    # an integral float step is exactly the integer step, through the whole MLP
    assert torch.equal(emb(torch.tensor([7.0, 3.0])), emb(torch.tensor([7, 3])))


def test_model_contract_shapes_and_zero_init():
    cfg = DiffWaveConfig.preset("tiny")
    model = DiffWave(cfg).eval()
    mel = torch.rand(3, 80, 4)
    x = torch.randn(3, 4 * 256)
    t = torch.tensor([0, 17, 49])
    with torch.no_grad():
        out2 = model(x, t, mel)
        out3 = model(x.unsqueeze(1), t, mel)
    assert out2.shape == x.shape and out3.shape == (3, 1, 1024)
    assert torch.equal(out2, torch.zeros_like(x))  # the output convolution starts at zero
    torch.nn.init.normal_(model.output_projection.weight)
    with torch.no_grad():
        a = model(x, torch.tensor([0.5, 17.25, 48.75]), mel)
        b = model(x, torch.tensor([17]), mel)  # a [1] step broadcasts over the batch
        c = model(x, torch.tensor([17, 17, 17]), mel)
    assert a.abs().sum() > 0 and torch.isfinite(a).all()
    torch.testing.assert_close(b, c)


def test_model_rejects_bad_inputs_with_clear_messages():
    model = DiffWave(DiffWaveConfig.preset("tiny"))
    x, mel, t = torch.randn(2, 1024), torch.rand(2, 80, 4), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"audio length 1000 does not match the mel: 4 frames × hop 256 = 1024"):
        model(x[:, :1000], t, mel)
    with pytest.raises(ValueError, match="mel-conditioned"):
        model(x, t, None)
    with pytest.raises(ValueError, match=r"\[B=2, 80, frames\]"):
        model(x, t, torch.rand(2, 64, 4))
    with pytest.raises(ValueError, match=r"steps must lie in \[0, 49\]"):
        model(x, torch.tensor([1, 50]), mel)
    with pytest.raises(ValueError, match=r"\[B, T\] or \[B, 1, T\]"):
        model(x.view(2, 2, 512), t, mel)
    uncond = DiffWave(DiffWaveConfig.preset("tiny", conditional=False, mel=None))
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, mel)


def test_receptive_field_follows_the_dilation_cycle():
    """Output sample j depends on input samples within ±Σ dilations = ±(layers/cycle)·(2^cycle − 1) of j only."""
    cfg = DiffWaveConfig.preset("tiny", conditional=False, mel=None, residual_layers=6, dilation_cycle=3)
    torch.manual_seed(0)
    model = DiffWave(cfg)
    torch.nn.init.normal_(model.output_projection.weight)
    half = sum(2 ** (i % 3) for i in range(6))  # 1+2+4 twice = 14
    x = torch.randn(1, 101, requires_grad=True)
    model(x, torch.tensor([5]))[0, 50].backward()
    nonzero = torch.nonzero(x.grad[0]).flatten()
    assert nonzero.min().item() == 50 - half and nonzero.max().item() == 50 + half


def test_network_is_continuous_in_fractional_steps():
    """The network is continuous in t: at t = k + f → k the output tends to that at step k."""
    torch.manual_seed(1)
    model = DiffWave(DiffWaveConfig.preset("tiny")).eval()
    torch.nn.init.normal_(model.output_projection.weight)
    x, mel = torch.randn(1, 512), torch.rand(1, 80, 2)
    with torch.no_grad():
        at_k = model(x, torch.tensor([20]), mel)
        near = model(x, torch.tensor([20.001]), mel)
        mid = model(x, torch.tensor([20.5]), mel)
    assert (near - at_k).abs().max() < 1e-2 * (mid - at_k).abs().max()


def test_a_diffwave_config_with_an_edm_section_is_refused_by_name():
    """DiffWave's training and sampling are VP (Algorithms 1 and 2): an edm section would otherwise be ignored and
    the model trained as VP without a word."""
    with pytest.raises(ConfigError, match=r"diffusion\.edm: DiffWave trains and samples the VP parameterisation"):
        DiffWaveConfig.preset("tiny", diffusion={"edm": {}, "loss": "l2"})
    assert DiffWaveConfig.preset("tiny").diffusion.edm is None
