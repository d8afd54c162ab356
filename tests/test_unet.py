import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffcore.config import ConfigError, DiffusionConfig
from diffimage.config import UNetConfig
from diffimage.model import AttentionBlock, UNet, timestep_embedding


def _perturb(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Move every weight off its initial value (the output convs start at zero, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


def _tiny(**overrides) -> UNetConfig:
    return UNetConfig.preset("tiny", **overrides)


def _ddpm_param_count(ch, ch_mult, num_res_blocks, attn_res, image_size, in_ch, out_ch) -> int:
    """Parameters of the DDPM network counted from Appendix B / the paper's TF code, layer by layer."""

    def conv(cin, cout, k):
        return k * k * cin * cout + cout

    def gn(c):
        return 2 * c

    def res(cin, cout):
        n = gn(cin) + conv(cin, cout, 3) + (4 * ch * cout + cout) + gn(cout) + conv(cout, cout, 3)
        return n + (conv(cin, cout, 1) if cin != cout else 0)

    def attn(c):
        return gn(c) + 4 * conv(c, c, 1)  # q, k, v, proj_out (NIN layers)

    total = (ch * 4 * ch + 4 * ch) + (4 * ch * 4 * ch + 4 * ch) + conv(in_ch, ch, 3)
    hs, cur, res_now = [ch], ch, image_size
    for i, m in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            total += res(cur, ch * m) + (attn(ch * m) if res_now in attn_res else 0)
            cur = ch * m
            hs.append(cur)
        if i != len(ch_mult) - 1:
            total += conv(cur, cur, 3)
            hs.append(cur)
            res_now //= 2
    total += res(cur, cur) + attn(cur) + res(cur, cur)
    for i, m in reversed(list(enumerate(ch_mult))):
        for _ in range(num_res_blocks + 1):
            total += res(cur + hs.pop(), ch * m) + (attn(ch * m) if res_now in attn_res else 0)
            cur = ch * m
        if i != 0:
            total += conv(cur, cur, 3)
            res_now *= 2
    return total + gn(cur) + conv(cur, out_ch, 3)


def test_cifar10_preset_has_the_papers_35_7m_parameters():
    cfg = UNetConfig.preset("cifar10")
    n = sum(p.numel() for p in UNet(cfg).parameters())
    expected = _ddpm_param_count(128, (1, 2, 2, 2), 2, (16,), 32, 3, 3)
    assert n == expected == 35_746_307
    assert round(n / 1e6, 1) == 35.7  # "35.7 million parameters" (Ho et al. 2020, §4)


@pytest.mark.parametrize("name", ["cifar10", "mnist", "celeba64", "tiny"])
def test_every_preset_maps_images_to_same_shape(name):
    cfg = UNetConfig.preset(name)
    model = UNet(cfg).eval()
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        y = model(x, torch.tensor([0, cfg.diffusion.num_steps - 1]))
    assert y.shape == x.shape
    assert torch.all(y == 0)  # zero-initialised output conv: a fresh network predicts ε = 0


def test_parameter_count_matches_layer_by_layer_count_for_other_shapes():
    cfg = UNetConfig(image_size=16, in_channels=1, base_channels=64, channel_mult=(1, 3), num_res_blocks=3,
                     attention_resolutions=(16, 8), learned_variance=True)
    n = sum(p.numel() for p in UNet(cfg).parameters())
    assert n == _ddpm_param_count(64, (1, 3), 3, (16, 8), 16, 1, 2)


def test_learned_variance_doubles_output_channels_and_variants_keep_shapes():
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([3, 7])
    for cfg in [
        _tiny(learned_variance=True),
        _tiny(resample="resample"),
        _tiny(scale_shift_norm=True),
        _tiny(num_head_channels=32, channel_mult=(1, 2, 4), image_size=16, attention_resolutions=(8, 4)),
    ]:
        y = _perturb(UNet(cfg)).eval()(x, t)
        assert y.shape == (2, cfg.out_channels, 16, 16)
    assert _tiny(learned_variance=True).out_channels == 6
    # non-square inputs other than image_size work too (fully convolutional)
    y = _perturb(UNet(_tiny())).eval()(torch.randn(1, 3, 8, 24), torch.tensor([1]))
    assert y.shape == (1, 3, 8, 24)


def test_resample_without_conv_has_no_resampling_weights():
    with_conv = sum(p.numel() for p in UNet(_tiny()).parameters())
    without = sum(p.numel() for p in UNet(_tiny(resample="resample")).parameters())
    # a downsampler at the end of level 0 (32 channels) and an upsampler at the end of level 1 (64), 3x3 each
    assert with_conv - without == (9 * 32 * 32 + 32) + (9 * 64 * 64 + 64)


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_equals_explicit_softmax_attention(heads):
    torch.manual_seed(0)
    block = _perturb(AttentionBlock(64, num_heads=heads), std=0.2).double()
    x = torch.randn(2, 64, 5, 3, dtype=torch.float64)
    got = block(x)

    # by hand: per head, softmax(q^T k / sqrt(d)) over key positions, applied to v
    h = F.group_norm(x, 32, block.norm.weight, block.norm.bias, block.norm.eps)
    w = block.qkv.weight[:, :, 0, 0]
    qkv = torch.einsum("oc,bcn->bon", w, h.flatten(2)) + block.qkv.bias[None, :, None]  # [B, 3C, N]
    q, k, v = qkv.chunk(3, dim=1)
    d = 64 // heads
    outs = []
    for i in range(heads):
        qi, ki, vi = (z[:, i * d:(i + 1) * d] for z in (q, k, v))  # [B, d, N]
        logits = torch.einsum("bdn,bdm->bnm", qi, ki) / math.sqrt(d)
        weights = torch.softmax(logits, dim=-1)
        outs.append(torch.einsum("bnm,bdm->bdn", weights, vi))
    attn = torch.cat(outs, dim=1)
    proj = torch.einsum("oc,bcn->bon", block.proj.weight[:, :, 0, 0], attn) + block.proj.bias[None, :, None]
    expected = x + proj.reshape(x.shape)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_timestep_embedding_closed_form_and_float_steps():
    t = torch.tensor([0, 1, 999])
    emb = timestep_embedding(t, 8)
    half = 4
    freqs = np.exp(-math.log(10000) * np.arange(half) / (half - 1))
    args = t.numpy()[:, None].astype(np.float64) * freqs[None]
    np.testing.assert_allclose(emb.numpy(), np.concatenate([np.sin(args), np.cos(args)], 1), rtol=1e-5, atol=1e-4)
    # float steps: the integer value gives the integer embedding; a fractional one lies in between smoothly
    torch.testing.assert_close(timestep_embedding(t.float(), 8), emb)
    mid = timestep_embedding(torch.tensor([0.5]), 8)
    ends = timestep_embedding(torch.tensor([0.0, 1.0]), 8)
    assert torch.all(mid >= ends.min(0).values - 1e-6) and torch.all(mid <= ends.max(0).values + 1e-6)
    assert timestep_embedding(torch.tensor([2]), 7).shape == (1, 7)


def test_float_t_accepted_and_matches_integer_t():
    model = _perturb(UNet(_tiny())).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y_long = model(x, torch.tensor([4, 9]))
        y_float = model(x, torch.tensor([4.0, 9.0]))
        y_frac = model(x, torch.tensor([4.5, 9.5]))
        y_scalar = model(x, torch.tensor(4))
    torch.testing.assert_close(y_long, y_float)
    assert not torch.allclose(y_frac, y_long)
    torch.testing.assert_close(y_scalar[0], y_long[0])


def test_determinism_and_dropout_only_in_training():
    torch.manual_seed(1)
    a = _perturb(UNet(_tiny(dropout=0.3)))
    torch.manual_seed(1)
    b = _perturb(UNet(_tiny(dropout=0.3)))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 5])
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x, t), b(x, t), rtol=0, atol=0)
        a.train()
        assert not torch.allclose(a(x, t), a(x, t))


def test_batch_elements_are_independent():
    model = _perturb(UNet(_tiny())).eval()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1, 50, 900])
    with torch.no_grad():
        full = model(x, t)
        single = model(x[1:2], t[1:2])
    torch.testing.assert_close(full[1:2], single, rtol=1e-4, atol=1e-5)


def test_channels_last_does_not_change_the_function():
    ref = _perturb(UNet(_tiny())).eval()
    ref.set_runtime(channels_last=False)
    cl = UNet(_tiny()).eval()
    cl.set_runtime(channels_last=True)
    cl.load_state_dict(ref.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    with torch.no_grad():
        torch.testing.assert_close(cl(x, t), ref(x, t), rtol=1e-4, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    plain = _perturb(UNet(_tiny()))
    plain.set_runtime(channels_last=False)
    ckpt = UNet(_tiny())
    ckpt.set_runtime(channels_last=False, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([2, 8])
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        model(x, t).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g1, g2 in zip(*grads):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


def test_class_conditioning_and_null_label():
    model = _perturb(UNet(_tiny(num_classes=10, class_dropout=0.2))).eval()
    assert model.null_label == 10
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 5])
    with torch.no_grad():
        none = model(x, t)
        null = model(x, t, torch.tensor([10, 10]))
        negative = model(x, t, torch.tensor([-1, -1]))
        cls3 = model(x, t, torch.tensor([3, 3]))
        cls7 = model(x, t, torch.tensor([7, 7]))
    torch.testing.assert_close(none, null, rtol=0, atol=0)
    torch.testing.assert_close(none, negative, rtol=0, atol=0)
    assert not torch.allclose(cls3, cls7) and not torch.allclose(cls3, none)
    # classifier-free guidance combination from the two branches keeps the shape
    guided = none + 3.0 * (cls3 - none)
    assert guided.shape == x.shape
    with pytest.raises(ValueError, match="< num_classes"):
        model(x, t, torch.tensor([11, 0]))
    with pytest.raises(TypeError, match="integer"):
        model(x, t, torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("learned_variance", [False, True])
def test_classifier_free_guidance_with_the_null_label(learned_variance):
    from diffcore.guidance import ClassifierFreeGuidance

    model = _perturb(UNet(_tiny(num_classes=4, class_dropout=0.1, learned_variance=learned_variance))).eval()
    x, t, y = torch.randn(3, 3, 16, 16), torch.tensor([1, 10, 100]), torch.tensor([0, 2, 3])
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t)
        lv = learned_variance
        batched = ClassifierFreeGuidance(model, 2.5, null_cond=model.null_label, learned_variance=lv)(x, t, y)
        two_pass = ClassifierFreeGuidance(model, 2.5, null_cond=None, learned_variance=lv)(x, t, y)
    assert batched.shape == (3, model.config.out_channels, 16, 16)
    eps = uncond[:, :3] + 2.5 * (cond[:, :3] - uncond[:, :3])
    torch.testing.assert_close(batched[:, :3], eps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two_pass, batched, rtol=1e-4, atol=1e-5)
    if learned_variance:  # the variance half comes from the conditional branch
        torch.testing.assert_close(batched[:, 3:], cond[:, 3:], rtol=1e-4, atol=1e-5)


def test_class_dropout_rate_in_training_only():
    model = UNet(_tiny(num_classes=10, class_dropout=0.3))
    labels = torch.randint(0, 10, (20000,))
    torch.manual_seed(0)
    model.train()
    dropped = model._labels(labels, labels.numel(), labels.device)
    frac = (dropped == 10).float().mean().item()
    assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20000)
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])
    model.eval()
    assert torch.equal(model._labels(labels, labels.numel(), labels.device), labels)


def test_unconditional_model_rejects_labels():
    model = UNet(_tiny())
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 3, 16, 16), torch.tensor([0]), torch.tensor([1]))


def test_wrong_input_shapes_are_reported():
    model = UNet(_tiny())
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(1, 1, 16, 16), torch.tensor([0]))
    with pytest.raises(ValueError, match="divisible by 2"):
        model(torch.randn(1, 3, 15, 16), torch.tensor([0]))
    with pytest.raises(ValueError, match="t must have shape"):
        model(torch.randn(2, 3, 16, 16), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    "overrides, msg",
    [
        (dict(image_size=30, channel_mult=(1, 2, 2)), "divisible by 2\\*\\*\\(len\\(channel_mult\\) - 1\\) = 4"),
        (dict(attention_resolutions=(4,)), r"attention_resolutions \[4\] never occur.*\[16, 8\]"),
        (dict(base_channels=48), "multiple of 32"),
        (dict(num_heads=3), "cannot be split"),
        (dict(num_head_channels=48), "cannot be split"),
        (dict(dropout=1.0), "dropout"),
        (dict(class_dropout=0.1), "needs num_classes"),
        (dict(num_classes=0), "num_classes"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(channel_mult=()), "at least one level"),
        (dict(resample="pixelshuffle"), "resample"),
        (dict(learned_variance=True, diffusion={"prediction": "v"}), "learned_variance.*'eps'"),
    ],
)
def test_config_rejects_inconsistent_fields(overrides, msg):
    with pytest.raises(ConfigError, match=msg):
        _tiny(**overrides)


def test_config_round_trip_and_diffusion_default():
    cfg = UNetConfig.preset("cifar10", num_classes=10, class_dropout=0.1, learned_variance=True)
    d = cfg.to_dict()
    assert d["channel_mult"] == [1, 2, 2, 2] and d["diffusion"]["num_steps"] == 1000
    assert UNetConfig.from_dict(d) == cfg
    assert UNetConfig.from_dict({"preset": "mnist", "diffusion": {"schedule": "cosine"}}).diffusion.schedule == "cosine"
    default = UNetConfig().diffusion
    assert default == DiffusionConfig(schedule="linear", num_steps=1000, beta_start=1e-4, beta_end=0.02,
                                      prediction="eps", loss="l2")
    # the stored config rebuilds the same network
    a = UNet(cfg)
    b = UNet(UNetConfig.from_dict(d))
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


def test_set_runtime_switches_layout_and_checkpointing_without_touching_the_config():
    model = UNet(_tiny())
    conv = model.conv_in.weight
    assert model.channels_last and not model.gradient_checkpointing  # the defaults
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    model.set_runtime(channels_last=False)
    assert not model.channels_last and model.conv_in.weight.is_contiguous()
    model.set_runtime(gradient_checkpointing=True)  # None: channels_last unchanged
    assert not model.channels_last and model.gradient_checkpointing
    blocks = [m for m in model.modules() if hasattr(m, "gradient_checkpointing") and m is not model]
    assert blocks and all(b.gradient_checkpointing for b in blocks)
    model.set_runtime(gradient_checkpointing=False)
    assert not any(b.gradient_checkpointing for b in blocks)
    d = model.config.to_dict()
    assert not {"channels_last", "use_checkpoint", "gradient_checkpointing", "learn_sigma"} & set(d)


def test_older_configs_load_with_their_old_keys(recwarn):
    old = _tiny(learned_variance=True).to_dict()
    old["learn_sigma"] = old.pop("learned_variance")
    old.update(channels_last=True, use_checkpoint=False)  # what every older config stored
    with pytest.warns(DeprecationWarning, match="learn_sigma is now called learned_variance"):
        cfg = UNetConfig.from_dict(old)
    assert cfg == _tiny(learned_variance=True)
    assert not [w for w in recwarn if "run-time switch" in str(w.message)]  # the old defaults say nothing
    for key, value, field in (("use_checkpoint", True, "gradient_checkpointing"), ("channels_last", False,
                                                                                      "channels_last")):
        with pytest.warns(DeprecationWarning, match=rf"model\.{key} is a run-time switch now.*train\.{field}"):
            assert UNetConfig.from_dict({**_tiny().to_dict(), key: value}) == _tiny()
    with pytest.raises(ConfigError, match="give learned_variance only"):
        UNetConfig.from_dict({"learn_sigma": True, "learned_variance": True})
