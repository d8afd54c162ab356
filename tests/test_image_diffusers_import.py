"""Import of DDPM U-Nets in diffusers' UNet2DModel layout (diffimage.diffusers_ddpm).

Fixtures: a state dict with diffusers' key names and shapes, generated here from a diffusers config by the block
rules of diffusers' UNet2DModel (written out independently of the importer's key map), with random values. The
published google/ddpm-cifar10-32 layout (old attention names) must fill our cifar10 network exactly (35,746,307
parameters, the paper's 35.7M); a tiny network in the new naming must compute what a functional forward pass
written here from diffusers' semantics computes from the diffusers-named tensors.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffimage.diffusers_ddpm import (DiffusersImportError, config_from_diffusers, diffusion_from_scheduler,
                                      load_diffusers_unet, state_dict_from_diffusers)
from diffimage.config import UNetConfig
from diffimage.model import UNet

# google/ddpm-cifar10-32's config.json
CIFAR10 = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
TINY = {**CIFAR10, "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1, "sample_size": 8}


def diffusers_layout(cfg: dict, old_attention: bool) -> dict[str, tuple[int, ...]]:
    """Key → shape of a UNet2DModel state dict, by diffusers' construction rules."""
    ch, n, cin = cfg["block_out_channels"], cfg["layers_per_block"], cfg["in_channels"]
    temb = 4 * ch[0]
    shapes: dict[str, tuple[int, ...]] = {}

    def layer(name, out, inp=None, k=None):
        shapes[f"{name}.weight"] = (out,) if inp is None else ((out, inp) if k is None else (out, inp, k, k))
        shapes[f"{name}.bias"] = (out,)

    def resnet(p, i, o):
        layer(f"{p}.norm1", i), layer(f"{p}.conv1", o, i, 3), layer(f"{p}.time_emb_proj", o, temb)
        layer(f"{p}.norm2", o), layer(f"{p}.conv2", o, o, 3)
        if i != o:
            layer(f"{p}.conv_shortcut", o, i, 1)

    def attention(p, c):
        layer(f"{p}.group_norm", c)
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            layer(f"{p}.{old if old_attention else new}", c, c)

    layer("conv_in", ch[0], cin, 3)
    layer("time_embedding.linear_1", temb, ch[0]), layer("time_embedding.linear_2", temb, temb)
    out = ch[0]
    for i, kind in enumerate(cfg["down_block_types"]):
        inp, out = out, ch[i]
        for j in range(n):
            resnet(f"down_blocks.{i}.resnets.{j}", inp if j == 0 else out, out)
            if kind == "AttnDownBlock2D":
                attention(f"down_blocks.{i}.attentions.{j}", out)
        if i < len(ch) - 1:
            layer(f"down_blocks.{i}.downsamplers.0.conv", out, out, 3)
    resnet("mid_block.resnets.0", ch[-1], ch[-1]), attention("mid_block.attentions.0", ch[-1])
    resnet("mid_block.resnets.1", ch[-1], ch[-1])
    rev = ch[::-1]
    out = rev[0]
    for i, kind in enumerate(cfg["up_block_types"]):
        prev, out, inp = out, rev[i], rev[min(i + 1, len(ch) - 1)]
        for j in range(n + 1):
            skip = inp if j == n else out
            resnet(f"up_blocks.{i}.resnets.{j}", (prev if j == 0 else out) + skip, out)
            if kind == "AttnUpBlock2D":
                attention(f"up_blocks.{i}.attentions.{j}", out)
        if i < len(ch) - 1:
            layer(f"up_blocks.{i}.upsamplers.0.conv", out, out, 3)
    layer("conv_norm_out", ch[0]), layer("conv_out", cfg["out_channels"], ch[0], 3)
    return shapes


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) / math.sqrt(max(1, math.prod(s[1:]))) for k, s in shapes.items()}


def reference_forward(sd: dict[str, torch.Tensor], cfg: dict, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """diffusers' UNet2DModel forward for the DDPM configs, as plain functions over the diffusers-named tensors."""
    ch, n = cfg["block_out_channels"], cfg["layers_per_block"]
    gn = lambda p, h: F.group_norm(h, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)  # noqa: E731
    conv = lambda p, h, **kw: F.conv2d(h, sd[f"{p}.weight"], sd[f"{p}.bias"], **kw)  # noqa: E731
    lin = lambda p, h: F.linear(h, sd[f"{p}.weight"], sd[f"{p}.bias"])  # noqa: E731

    def resnet(p, h, temb):
        y = conv(f"{p}.conv1", F.silu(gn(f"{p}.norm1", h)), padding=1)
        y = y + lin(f"{p}.time_emb_proj", F.silu(temb))[:, :, None, None]
        y = conv(f"{p}.conv2", F.silu(gn(f"{p}.norm2", y)), padding=1)
        return (conv(f"{p}.conv_shortcut", h) if f"{p}.conv_shortcut.weight" in sd else h) + y

    def attention(p, h):
        b, c, hh, ww = h.shape
        s = gn(f"{p}.group_norm", h).reshape(b, c, hh * ww).transpose(1, 2)
        q, k, v = (lin(f"{p}.to_{n_}", s) for n_ in "qkv")
        w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
        return h + lin(f"{p}.to_out.0", w @ v).transpose(1, 2).reshape(b, c, hh, ww)

    half = ch[0] // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - 1))  # freq_shift 1
    args = t.float()[:, None] * freqs[None]
    temb = lin("time_embedding.linear_2", F.silu(lin("time_embedding.linear_1",
                                                      torch.cat([args.sin(), args.cos()], 1))))
    h = conv("conv_in", x, padding=1)
    skips = [h]
    for i, kind in enumerate(cfg["down_block_types"]):
        for j in range(n):
            h = resnet(f"down_blocks.{i}.resnets.{j}", h, temb)
            if kind == "AttnDownBlock2D":
                h = attention(f"down_blocks.{i}.attentions.{j}", h)
            skips.append(h)
        if i < len(ch) - 1:
            h = conv(f"down_blocks.{i}.downsamplers.0.conv", F.pad(h, (0, 1, 0, 1)), stride=2)  # padding 0
            skips.append(h)
    h = resnet("mid_block.resnets.1", attention("mid_block.attentions.0", resnet("mid_block.resnets.0", h, temb)),
               temb)
    for i, kind in enumerate(cfg["up_block_types"]):
        for j in range(n + 1):
            h = resnet(f"up_blocks.{i}.resnets.{j}", torch.cat([h, skips.pop()], 1), temb)
            if kind == "AttnUpBlock2D":
                h = attention(f"up_blocks.{i}.attentions.{j}", h)
        if i < len(ch) - 1:
            h = conv(f"up_blocks.{i}.upsamplers.0.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"),
                     padding=1)
    return conv("conv_out", F.silu(gn("conv_norm_out", h)), padding=1)


def test_the_published_cifar10_layout_fills_the_papers_network_exactly():
    shapes = diffusers_layout(CIFAR10, old_attention=True)
    assert sum(math.prod(s) for s in shapes.values()) == 35_746_307  # Ho et al. 2020's 35.7M
    config = config_from_diffusers(CIFAR10)
    assert config == UNetConfig.preset("cifar10", dropout=0.0, downsample_padding="same")
    sd = random_weights(shapes)
    ours = state_dict_from_diffusers(sd, config)
    model = UNet(config)
    model.load_state_dict(ours)  # strict: every parameter filled, none left over
    assert set(ours) == set(model.state_dict())
    # the attention of the 16x16 level: q, k, v stacked in that order into one 1x1 conv
    got = model.state_dict()
    q, k, v = (sd[f"down_blocks.1.attentions.0.{n}.weight"] for n in ("query", "key", "value"))
    assert torch.equal(got["down.3.1.qkv.weight"][:, :, 0, 0], torch.cat([q, k, v]))
    assert torch.equal(got["up.8.2.conv.weight"], sd["up_blocks.2.upsamplers.0.conv.weight"])  # after attention
    assert torch.equal(got["middle.2.conv2.weight"], sd["mid_block.resnets.1.conv2.weight"])


def test_an_imported_network_computes_what_diffusers_computes(tmp_path):
    sd = random_weights(diffusers_layout(TINY, old_attention=False), seed=1)
    model = UNet(config_from_diffusers(TINY))
    model.load_state_dict(state_dict_from_diffusers(sd, model.config))
    model.eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 17, 999])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), reference_forward(sd, TINY, x, t), rtol=1e-4, atol=1e-4)
    # a symmetric-padding network with the same weights computes something else: the padding matters
    other = UNet(config_from_diffusers({**TINY, "downsample_padding": 1}))
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(other.eval()(x, t), model(x, t), atol=1e-3)

    # a pipeline folder (unet/ + scheduler/) loads as an ImageModel with the scheduler's betas
    (tmp_path / "unet").mkdir()
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(TINY))
    save_file(sd, str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 2e-4, "beta_end": 0.03,
         "num_train_timesteps": 500}))
    m = load_diffusers_unet(tmp_path)
    assert m.config.diffusion.num_steps == 500 and m.config.diffusion.beta_end == 0.03
    with torch.no_grad():
        torch.testing.assert_close(m.model(x, t), model(x, t))
    # and saves in our format
    from diffimage.api import load

    back = load(m.save(tmp_path / "ours"), "cpu")
    with torch.no_grad():
        torch.testing.assert_close(back.model(x, t), model(x, t))


def test_bad_diffusers_inputs_are_refused_by_name(tmp_path):
    sd = random_weights(diffusers_layout(TINY, old_attention=False))
    config = config_from_diffusers(TINY)
    with pytest.raises(DiffusersImportError, match="conv_out.bias"):
        state_dict_from_diffusers({k: v for k, v in sd.items() if k != "conv_out.bias"}, config)
    with pytest.raises(DiffusersImportError, match="no place.*extra.weight"):
        state_dict_from_diffusers({**sd, "extra.weight": torch.zeros(1)}, config)
    with pytest.raises(DiffusersImportError, match="resnet_time_scale_shift"):
        config_from_diffusers({**TINY, "resnet_time_scale_shift": "scale_shift"})
    with pytest.raises(DiffusersImportError, match="CrossAttnDownBlock2D"):
        config_from_diffusers({**TINY, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"]})
    with pytest.raises(DiffusersImportError, match="beta_schedule"):
        diffusion_from_scheduler({"beta_schedule": "scaled_linear"})
    with pytest.raises(DiffusersImportError, match="no config.json"):
        load_diffusers_unet(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(DiffusersImportError, match="diffusion_pytorch_model"):
        load_diffusers_unet(tmp_path)
