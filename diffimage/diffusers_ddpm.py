"""Import of DDPM U-Nets stored in diffusers' ``UNet2DModel`` layout (e.g. the published google/ddpm-cifar10-32).

A diffusers model folder holds ``config.json`` (``block_out_channels``, ``layers_per_block``, ``down_block_types``
…) and ``diffusion_pytorch_model.safetensors`` (or ``.bin``); a pipeline folder has them under ``unet/`` and the
β schedule in ``scheduler/scheduler_config.json`` (or ``scheduler_config.json`` beside the weights). The network is
our :class:`~diffimage.model.UNet` with another naming of the same parameters:

| diffusers | ours |
| --- | --- |
| ``time_embedding.linear_1`` / ``linear_2`` | ``time_embed.0`` / ``time_embed.2`` |
| ``down_blocks.L.resnets.j`` (``norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut``) | ``down.K.0`` (``norm1, conv1, emb_proj, norm2, conv2, skip``) |
| ``down_blocks.L.attentions.j`` (``group_norm``, ``to_q, to_k, to_v, to_out.0`` — Linear) | ``down.K.1`` (``norm``, ``qkv`` = [q; k; v] as a 1×1 conv, ``proj``) |
| ``down_blocks.L.downsamplers.0.conv`` | ``down.K.0.conv`` |
| ``mid_block.resnets.0``, ``attentions.0``, ``resnets.1`` | ``middle.0``, ``middle.1``, ``middle.2`` |
| ``up_blocks.U.resnets.b``, ``attentions.b``, ``upsamplers.0.conv`` (U = 0 is the lowest resolution) | ``up.K.0``, ``up.K.1``, ``up.K.-1.conv`` |
| ``conv_norm_out``, ``conv_out`` | ``norm_out``, ``conv_out`` |

The published DDPM weights predate diffusers' attention rewrite and name the attention ``query, key, value,
proj_attn``; both namings are read. ``downsample_padding: 0`` (TF's SAME padding of the paper's code) becomes
``downsample_padding="same"``. Only what the DDPM models use is supported: positional time embedding with
``flip_sin_to_cos: false`` and ``freq_shift: 1`` (our :func:`~diffimage.model.timestep_embedding`), ``DownBlock2D`` /
``AttnDownBlock2D`` / ``UpBlock2D`` / ``AttnUpBlock2D``, one attention head, SiLU, GroupNorm(32), additive time
embedding; anything else is refused by name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from diffcore.config import ConfigError, DiffusionConfig
from diffimage.config import NORM_GROUPS, UNetConfig

__all__ = [
    "DiffusersImportError",
    "config_from_diffusers",
    "diffusion_from_scheduler",
    "state_dict_from_diffusers",
    "load_diffusers_unet",
]

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: Old (published DDPM weights) → new attention parameter names.
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class DiffusersImportError(ValueError):
    """A diffusers model that cannot be read or mapped onto our U-Net; the message says what and where."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise DiffusersImportError(message)


def config_from_diffusers(cfg: Mapping[str, Any], diffusion: DiffusionConfig | None = None) -> UNetConfig:
    """The :class:`UNetConfig` of a diffusers ``UNet2DModel`` config (``config.json`` as a dict)."""
    _check(cfg.get("_class_name", "UNet2DModel") == "UNet2DModel",
           f"a {cfg.get('_class_name')} config, not UNet2DModel")
    channels = list(cfg.get("block_out_channels", (224, 448, 672, 896)))
    down = list(cfg.get("down_block_types", ()))
    up = list(cfg.get("up_block_types", ()))
    _check(len(down) == len(channels) == len(up), "block_out_channels, down_block_types and up_block_types must "
           f"have one entry per level, got {len(channels)}, {len(down)}, {len(up)}")
    known_down, known_up = {"DownBlock2D", "AttnDownBlock2D"}, {"UpBlock2D", "AttnUpBlock2D"}
    _check(set(down) <= known_down and set(up) <= known_up,
           f"unsupported block types {sorted((set(down) - known_down) | (set(up) - known_up))} (DDPM uses "
           "DownBlock2D, AttnDownBlock2D, UpBlock2D, AttnUpBlock2D)")
    attn_levels = [i for i, t in enumerate(down) if t == "AttnDownBlock2D"]
    _check(attn_levels == [len(up) - 1 - i for i, t in enumerate(up) if t == "AttnUpBlock2D"][::-1],
           "attention must sit at the same resolutions on the way down and up")
    for key, want in (("time_embedding_type", "positional"), ("flip_sin_to_cos", False), ("freq_shift", 1),
                      ("act_fn", "silu"), ("norm_num_groups", NORM_GROUPS), ("resnet_time_scale_shift", "default"),
                      ("center_input_sample", False), ("class_embed_type", None), ("num_class_embeds", None),
                      ("add_attention", True), ("mid_block_scale_factor", 1)):
        if key in cfg:
            _check(cfg[key] == want, f"{key} = {cfg[key]!r} is not supported (DDPM: {want!r})")
    base = channels[0]
    _check(all(c % base == 0 for c in channels), f"block_out_channels {channels} are not multiples of {channels[0]}")
    size = int(cfg.get("sample_size", 32))
    head_dim = cfg.get("attention_head_dim")
    heads = {c // head_dim if head_dim else 1 for i, c in enumerate(channels) if i in attn_levels} | \
        {channels[-1] // head_dim if head_dim else 1}
    _check(heads == {1}, f"attention_head_dim {head_dim} gives {sorted(heads)} heads; only one head is supported")
    try:
        return UNetConfig(
            image_size=size, in_channels=int(cfg.get("in_channels", 3)), base_channels=base,
            channel_mult=tuple(c // base for c in channels), num_res_blocks=int(cfg.get("layers_per_block", 2)),
            attention_resolutions=tuple(size // 2**i for i in attn_levels), dropout=float(cfg.get("dropout", 0.0)),
            resample="conv", downsample_padding="same" if int(cfg.get("downsample_padding", 1)) == 0 else "symmetric",
            diffusion=diffusion or DiffusionConfig(),
        )
    except ConfigError as e:
        raise DiffusersImportError(f"the config does not describe a DDPM U-Net we can build: {e}") from None


def diffusion_from_scheduler(cfg: Mapping[str, Any]) -> DiffusionConfig:
    """A :class:`DiffusionConfig` from a diffusers ``DDPMScheduler`` config (``linear`` or ``trained_betas``)."""
    schedule = cfg.get("beta_schedule", "linear")
    n = int(cfg.get("num_train_timesteps", 1000))
    pred = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}.get(cfg.get("prediction_type", "epsilon"))
    _check(pred is not None, f"prediction_type {cfg.get('prediction_type')!r} is not supported")
    if cfg.get("trained_betas"):
        return DiffusionConfig(schedule="betas", num_steps=n, betas=tuple(cfg["trained_betas"]), prediction=pred)
    if schedule == "linear":
        return DiffusionConfig(schedule="linear", num_steps=n, beta_start=float(cfg.get("beta_start", 1e-4)),
                               beta_end=float(cfg.get("beta_end", 0.02)), prediction=pred)
    if schedule == "squaredcos_cap_v2":
        return DiffusionConfig(schedule="cosine", num_steps=n, prediction=pred)
    raise DiffusersImportError(f"beta_schedule {schedule!r} is not supported (linear, squaredcos_cap_v2, or "
                               "trained_betas)")


def _prefix_map(config: UNetConfig) -> list[tuple[str, str, str]]:
    """``(diffusers prefix, our prefix, kind)`` for every module; kind ∈ resnet, attention, conv, norm, linear."""
    levels = len(config.channel_mult)
    out: list[tuple[str, str, str]] = [("conv_in", "conv_in", "conv"),
                                       ("time_embedding.linear_1", "time_embed.0", "linear"),
                                       ("time_embedding.linear_2", "time_embed.2", "linear")]
    k = 0
    for level in range(levels):
        attn = config.resolutions[level] in config.attention_resolutions
        for j in range(config.num_res_blocks):
            out.append((f"down_blocks.{level}.resnets.{j}", f"down.{k}.0", "resnet"))
            if attn:
                out.append((f"down_blocks.{level}.attentions.{j}", f"down.{k}.1", "attention"))
            k += 1
        if level != levels - 1:
            out.append((f"down_blocks.{level}.downsamplers.0.conv", f"down.{k}.0.conv", "conv"))
            k += 1
    out += [("mid_block.resnets.0", "middle.0", "resnet"), ("mid_block.attentions.0", "middle.1", "attention"),
            ("mid_block.resnets.1", "middle.2", "resnet")]
    k = 0
    for u, level in enumerate(reversed(range(levels))):
        attn = config.resolutions[level] in config.attention_resolutions
        for b in range(config.num_res_blocks + 1):
            out.append((f"up_blocks.{u}.resnets.{b}", f"up.{k}.0", "resnet"))
            if attn:
                out.append((f"up_blocks.{u}.attentions.{b}", f"up.{k}.1", "attention"))
            if level != 0 and b == config.num_res_blocks:
                out.append((f"up_blocks.{u}.upsamplers.0.conv", f"up.{k}.{2 if attn else 1}.conv", "conv"))
            k += 1
    out += [("conv_norm_out", "norm_out", "norm"), ("conv_out", "conv_out", "conv")]
    return out


def state_dict_from_diffusers(weights: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """Our state dict for ``config`` from a diffusers ``UNet2DModel`` state dict (either attention naming).

    Every diffusers tensor must be used and every one of ours filled; :class:`DiffusersImportError` names the first
    missing or unexpected key.
    """
    src = {}
    for key, value in weights.items():
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] in _OLD_ATTENTION:
            key = ".".join(parts[:-2] + [_OLD_ATTENTION[parts[-2]], parts[-1]])
        src[key] = value
    used: set[str] = set()
    out: dict[str, Tensor] = {}

    def take(name: str) -> Tensor:
        _check(name in src, f"the diffusers weights have no {name!r} (is this a DDPM UNet2DModel of this config?)")
        used.add(name)
        return src[name]

    for theirs, ours, kind in _prefix_map(config):
        if kind in ("conv", "norm", "linear"):
            for p in ("weight", "bias"):
                out[f"{ours}.{p}"] = take(f"{theirs}.{p}")
        elif kind == "resnet":
            for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("time_emb_proj", "emb_proj"), ("norm2", "norm2"),
                         ("conv2", "conv2")):
                for p in ("weight", "bias"):
                    out[f"{ours}.{b}.{p}"] = take(f"{theirs}.{a}.{p}")
            if f"{theirs}.conv_shortcut.weight" in src:
                for p in ("weight", "bias"):
                    out[f"{ours}.skip.{p}"] = take(f"{theirs}.conv_shortcut.{p}")
        else:  # attention: three Linear(C, C) → one 1×1 conv with 3C outputs laid out [q | k | v]
            for p in ("weight", "bias"):
                out[f"{ours}.norm.{p}"] = take(f"{theirs}.group_norm.{p}")
            w = torch.cat([take(f"{theirs}.to_{n}.weight") for n in "qkv"])
            out[f"{ours}.qkv.weight"] = w.reshape(*w.shape, *([1, 1] if w.ndim == 2 else []))
            out[f"{ours}.qkv.bias"] = torch.cat([take(f"{theirs}.to_{n}.bias") for n in "qkv"])
            w = take(f"{theirs}.to_out.0.weight")
            out[f"{ours}.proj.weight"] = w.reshape(*w.shape, *([1, 1] if w.ndim == 2 else []))
            out[f"{ours}.proj.bias"] = take(f"{theirs}.to_out.0.bias")
    unused = sorted(set(src) - used)
    _check(not unused, f"{len(unused)} diffusers weight(s) have no place in the DDPM U-Net, e.g. {unused[0]!r}"
           if unused else "")
    return out  # shapes are checked against the config when the model loads them


def _read_weights(folder: Path) -> dict[str, Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            try:
                if name.endswith(".safetensors"):
                    from safetensors.torch import load_file

                    return load_file(str(path))
                from diffcore.torchfile import check_torch_file

                check_torch_file(path)  # a forged record's claims are refused before torch.load allocates them
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise DiffusersImportError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
            _check(isinstance(state, dict), f"{path}: holds {type(state).__name__}, not a state dict")
            return state
    raise DiffusersImportError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DiffusersImportError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    _check(isinstance(data, dict), f"{path}: not a JSON object")
    return data


def load_diffusers_unet(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """An :class:`~diffimage.api.ImageModel` from a diffusers model or pipeline folder (see the module docstring).

    The β schedule comes from the scheduler config when there is one (else T = 1000 linear 1e-4 … 0.02, ε, as
    DDPM). Save it in our format with ``.save(folder)``.
    """
    from diffimage.api import ImageModel

    root = Path(path).expanduser()
    folder = root / "unet" if (root / "unet" / "config.json").is_file() else root
    _check((folder / "config.json").is_file(), f"{root}: no config.json (nor unet/config.json)")
    diffusion = None
    for sched in (root / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if sched.is_file():
            diffusion = diffusion_from_scheduler(_read_json(sched))
            break
    config = config_from_diffusers(_read_json(folder / "config.json"), diffusion)
    weights = state_dict_from_diffusers(_read_weights(folder), config)
    recipe = {"model": config.to_dict(), "source": {"format": "diffusers UNet2DModel", "path": str(root)}}
    return ImageModel.from_config_and_weights(recipe, weights, device, source=str(root))
