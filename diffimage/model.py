"""The DDPM U-Net (Ho et al. 2020, Appendix B) with the options of Nichol & Dhariwal 2021 ("improved DDPM"); its
configuration is :class:`diffimage.config.UNetConfig`.

The network is a PixelCNN++-style U-Net: a stack of residual blocks and downsamplers, a middle section, and a
mirrored stack of residual blocks and upsamplers that concatenates the skip activations of the way down. Every
residual block receives the timestep embedding; self-attention sits at the chosen resolutions and in the middle.

Notation (the paper's TF code → this module):

| symbol | name | meaning |
| --- | --- | --- |
| ``ch`` | ``base_channels`` | width of level 0; level ``i`` has ``ch * channel_mult[i]`` channels |
| ``ch_mult`` | ``channel_mult`` | width multipliers, one per resolution level |
| ``num_res_blocks`` | ``num_res_blocks`` | residual blocks per level on the way down (one more on the way up) |
| ``attn_resolutions`` | ``attention_resolutions`` | spatial sizes (in pixels) that get self-attention |
| ``temb`` | ``emb`` | sinusoidal embedding of t, through a 2-layer MLP ``ch → 4ch → 4ch`` |
| ``resamp_with_conv`` | ``resample="conv"`` | strided 3×3 conv down, nearest + 3×3 conv up |
| (``False``) | ``resample="resample"`` | 2×2 average pool down, nearest up, no weights |
| ``padding="SAME"`` of the strided conv | ``downsample_padding="same"`` | pad right/bottom only (TF's SAME; diffusers' ``downsample_padding=0``) |

Improvements that are off by default so that the ``cifar10`` preset is the paper's network exactly (35.7M
parameters): ``scale_shift_norm`` (adaptive group norm, Nichol & Dhariwal 2021 / Dhariwal & Nichol 2021),
multi-head attention (``num_heads`` / ``num_head_channels``), ``learned_variance`` (2× output channels: ε and the
interpolation weight v of Σ for the hybrid loss, Eq. 15 of Nichol & Dhariwal 2021), class conditioning with a
reserved null label for classifier-free guidance (Ho & Salimans 2022).

Run-time switches (:meth:`UNet.set_runtime`; how the network runs, not what it computes, so they are neither in the
config nor in the state dict): channels-last memory layout (on by default) and gradient checkpointing (off).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffimage.config import NORM_GROUPS, UNetConfig

__all__ = ["UNet", "unconditional_from_null_label", "deepened", "timestep_embedding", "ResBlock", "AttentionBlock", "Downsample",
           "Upsample"]

# --------------------------------------------------------------------------------------------------------------
# Building blocks


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in DDPM's ``get_timestep_embedding``.

    ``emb[:, j] = sin(t * w_j)`` and ``emb[:, half + j] = cos(t * w_j)`` with
    ``w_j = max_period ** (-j / (half - 1))``, ``half = dim // 2`` (Vaswani et al. 2017, §3.5).

    Args:
        t: ``[B]`` integer step indices or float steps.
        dim: embedding width (an odd width gets one zero column).
    Returns:
        ``[B, dim]`` float32.
    """
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding (Ho et al. 2020, App. B; Wide ResNet ordering).

    ``h = conv1(SiLU(GN(x))) + W·SiLU(emb)``, then ``conv2(dropout(SiLU(GN(h))))``, plus a 1×1 shortcut when the
    width changes. With ``scale_shift_norm`` the embedding instead modulates the second norm:
    ``GN(h)·(1 + s) + b`` with ``[s, b] = W·SiLU(emb)``. ``conv2`` starts at zero, so the block starts as the
    identity (the paper's ``init_scale=0``).

    Shapes: ``x [B, in_ch, H, W]``, ``emb [B, emb_dim]`` → ``[B, out_ch, H, W]``.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, scale_shift_norm: bool = False) -> None:
        super().__init__()
        self.scale_shift_norm = scale_shift_norm
        #: Recompute this block in the backward pass (set by :meth:`UNet.set_runtime`).
        self.gradient_checkpointing = False
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift_norm else out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(F.silu(emb)).to(h.dtype)[:, :, None, None]
        if self.scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H·W`` positions, with a residual connection.

    ``q, k, v = W_qkv GN(x)`` (a 1×1 conv whose ``3C`` outputs are laid out as ``[q | k | v]``, each split into
    ``num_heads`` consecutive groups of ``C / num_heads`` channels), then per head
    ``softmax(qᵀk / √d) v`` (``torch.nn.functional.scaled_dot_product_attention``), then a zero-initialised 1×1
    output projection: ``x + W_o · attn``.

    Shapes: ``x [B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        #: Recompute this block in the backward pass (set by :meth:`UNet.set_runtime`).
        self.gradient_checkpointing = False
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        d = c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, d, height * width)
        # [B, heads, HW, d] for each of q, k, v
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √d) v
        out = out.transpose(-1, -2).reshape(b, c, height, width)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W: a 3×3 stride-2 conv (``with_conv``) or a 2×2 average pool. ``[B,C,H,W] → [B,C,H/2,W/2]``.

    ``padding``: ``"symmetric"`` pads the conv's input by one pixel on every side; ``"same"`` by one at the right
    and bottom only (TF's SAME padding for stride 2 on even sizes, which the DDPM paper's weights were trained with).
    """

    def __init__(self, channels: int, with_conv: bool, padding: Literal["symmetric", "same"] = "symmetric") -> None:
        super().__init__()
        self.same = padding == "same"
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.same else 1) if with_conv else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.same else x)


class Upsample(nn.Module):
    """Double H and W: nearest neighbour, then a 3×3 conv if ``with_conv``. ``[B,C,H,W] → [B,C,2H,2W]``."""

    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class _EmbSequential(nn.Sequential):
    """A sequence of blocks that all take ``(x, emb)``."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb)
        return x


# --------------------------------------------------------------------------------------------------------------
# The network


class UNet(nn.Module):
    """The DDPM U-Net. ``UNet(config)(x_t [B,C,H,W], t [B], cond=None) -> [B, config.out_channels, H, W]``.

    ``t``: 0-based step indices (LongTensor) or float steps; a 0-d tensor is broadcast to the batch.
    ``cond``: class labels ``[B]`` (LongTensor) for a model with ``num_classes``; ``None`` or a negative label
    means the null label (unconditional branch of classifier-free guidance). In training mode each label is
    replaced by the null label with probability ``config.class_dropout``.
    H and W may differ from ``config.image_size`` (the network is fully convolutional) if divisible by
    ``2**(len(channel_mult) - 1)``. How it runs is switched by :meth:`set_runtime` (channels-last on by default).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        ch = cfg.base_channels
        emb_dim = 4 * ch
        with_conv = cfg.resample == "conv"

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, cfg.dropout, cfg.scale_shift_norm)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, cfg.heads_at(c))

        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embed = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes is not None else None

        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [ch]
        cur = ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(cur, ch * mult)]
                cur = ch * mult
                if cfg.resolutions[level] in cfg.attention_resolutions:
                    layers.append(attn(cur))
                self.down.append(_EmbSequential(*layers))
                skip_channels.append(cur)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(_EmbSequential(Downsample(cur, with_conv, cfg.downsample_padding)))
                skip_channels.append(cur)

        self.middle = _EmbSequential(res(cur, cur), attn(cur), res(cur, cur))

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for block in range(cfg.num_res_blocks + 1):
                layers = [res(cur + skip_channels.pop(), ch * mult)]
                cur = ch * mult
                if cfg.resolutions[level] in cfg.attention_resolutions:
                    layers.append(attn(cur))
                if level != 0 and block == cfg.num_res_blocks:
                    layers.append(Upsample(cur, with_conv))
                self.up.append(_EmbSequential(*layers))
        assert not skip_channels

        self.norm_out = _norm(cur)
        self.conv_out = _zero(nn.Conv2d(cur, cfg.out_channels, 3, padding=1))
        #: Run-time switches (module docstring), set by :meth:`set_runtime`; not in the state dict or the config.
        self.channels_last = False
        self.gradient_checkpointing = False
        self.set_runtime(channels_last=True)

    def set_runtime(self, *, channels_last: bool | None = None, gradient_checkpointing: bool | None = None) -> None:
        """Switch how the network runs (``None`` leaves a switch as it is): ``channels_last``, the channels-last
        memory format of the weights and of the input (NHWC, what cuDNN and oneDNN convolve fastest; on by
        default); ``gradient_checkpointing``, recomputing each residual and attention block in the backward pass
        instead of keeping its activations (less memory, one more forward pass; only while gradients are
        recorded). Neither changes the function, the weights or the config."""
        if channels_last is not None:
            self.channels_last = bool(channels_last)
            self.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        if gradient_checkpointing is not None:
            self.gradient_checkpointing = bool(gradient_checkpointing)
            for block in self.modules():
                if isinstance(block, (ResBlock, AttentionBlock)):
                    block.gradient_checkpointing = self.gradient_checkpointing

    @property
    def null_label(self) -> int | None:
        """The label index meaning "no class" (classifier-free guidance's unconditional branch)."""
        return self.config.num_classes

    def _labels(self, cond: Tensor | None, batch: int, device: torch.device) -> Tensor:
        null = self.config.num_classes
        assert null is not None
        if cond is None:
            return torch.full((batch,), null, dtype=torch.long, device=device)
        labels = torch.as_tensor(cond, device=device)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"class labels must be an integer tensor, got {labels.dtype}")
        labels = labels.long().expand(batch) if labels.ndim == 0 else labels.long()
        if labels.shape != (batch,):
            raise ValueError(f"class labels must have shape [{batch}], got {list(labels.shape)}")
        if bool((labels > null).any()):
            raise ValueError(f"class labels must be < num_classes = {null} (or {null} / negative for no class)")
        labels = torch.where(labels < 0, torch.full_like(labels, null), labels)
        if self.training and self.config.class_dropout > 0:
            drop = torch.rand(batch, device=device) < self.config.class_dropout
            labels = torch.where(drop, torch.full_like(labels, null), labels)
        return labels

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """ε (or x0 / v) prediction ``[B, out_channels, H, W]`` for noisy images ``x [B, in_channels, H, W]``."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape [B, {cfg.in_channels}, H, W], got {list(x.shape)}")
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"H and W must be divisible by {factor}, got {x.shape[2]}×{x.shape[3]}")
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape [{batch}], got {list(t.shape)}")

        emb = self.time_embed(timestep_embedding(t, cfg.base_channels).to(self.conv_in.weight.dtype))
        if self.label_embed is not None:
            emb = emb + self.label_embed(self._labels(cond, batch, x.device))
        elif cond is not None:
            raise ValueError("this model is unconditional (num_classes is null) but cond was given")

        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def unconditional_from_null_label(stored: UNetConfig, target: UNetConfig,
                                  weights: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The weights of an unconditional U-Net ``target`` made from a class-conditional one's (``stored``) at its
    null label, or ``None`` when ``target`` is not that network without its labels.

    The label embedding is added to the output of the time embedding's last linear layer, so folding the null
    label's row into that layer's bias gives a network that computes, for every input, exactly what the
    conditional one computes with no class (classifier-free guidance's unconditional branch). A warm start
    (``init_from``) of an unconditional recipe from a conditional model begins there."""
    if stored.num_classes is None or target.num_classes is not None:
        return None
    if dataclasses.replace(stored, num_classes=None, class_dropout=target.class_dropout, class_prior=None) != target:
        return None
    table = weights.get("label_embed.weight")
    bias = weights.get("time_embed.2.bias")
    if table is None or bias is None or table.shape[0] != stored.num_classes + 1 or table.shape[1:] != bias.shape:
        return None
    out = {k: v for k, v in weights.items() if not k.startswith("label_embed.")}
    out["time_embed.2.bias"] = (bias.float() + table[stored.num_classes].float()).to(bias.dtype)
    return out


def conditional_from_unconditional(stored: UNetConfig, target: UNetConfig,
                                   weights: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The weights of a class-conditional U-Net ``target`` made from an unconditional one's (``stored``), or ``None``
    when ``target`` is not that network with labels added.

    The label embedding (``num_classes + 1`` rows, the null label's included) is added to the time embedding, so
    starting it at zero gives a network that computes, for every label, exactly what the unconditional one
    computes; training then teaches it what each label means. A warm start (``init_from``) of a conditional recipe
    from an unconditional model (e.g. one conditioned on clusters, ``tools/mnist_clusters.py``) begins there."""
    if stored.num_classes is not None or target.num_classes is None:
        return None
    if dataclasses.replace(target, num_classes=None, class_dropout=0.0, class_prior=None) != stored:
        return None
    bias = weights.get("time_embed.2.bias")
    if bias is None or any(k.startswith("label_embed.") for k in weights):
        return None
    out = dict(weights)
    out["label_embed.weight"] = torch.zeros(target.num_classes + 1, bias.shape[0], dtype=bias.dtype)
    return out


def _block_map(config: UNetConfig, old_blocks: int) -> tuple[dict[int, int], dict[int, int]]:
    """Where each block of a U-Net with ``old_blocks`` residual blocks per level sits in ``config``'s deeper one:
    ``({old down index: new down index}, {old up index: new up index})``. The down and up indices missing from
    the values are the new blocks (see :func:`deepened`)."""
    new_blocks = config.num_res_blocks
    down: dict[int, int] = {}
    up: dict[int, int] = {}
    old_i = new_i = 0
    for level in range(len(config.channel_mult)):
        for j in range(new_blocks):
            if j < old_blocks:
                down[old_i] = new_i
                old_i += 1
            new_i += 1
        if level != len(config.channel_mult) - 1:  # the downsampler
            down[old_i] = new_i
            old_i += 1
            new_i += 1
    old_i = new_i = 0
    for _level in range(len(config.channel_mult)):
        # new block 0 is old block 0; new blocks 1 … new−old are new; the rest are old blocks 1 … old (the last
        # of them carries the upsampler): see :func:`deepened` for why the skips then line up
        for j in range(new_blocks + 1):
            if j == 0 or j > new_blocks - old_blocks:
                up[old_i] = new_i
                old_i += 1
            new_i += 1
    return down, up


def deepened(stored: UNetConfig, target: UNetConfig, weights: dict[str, Tensor],
             fresh: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """The weights of ``target``, a U-Net like ``stored`` but with more residual blocks per level, that compute
    exactly what ``stored``'s ``weights`` compute (a function-preserving deepening, Chen et al. 2016's Net2DeeperNet
    for this U-Net), or ``None`` when ``target`` is not ``stored`` with a larger ``num_res_blocks``.

    ``fresh``: a freshly initialised ``target`` state dict, which gives the new blocks their first weights.

    On the way down each level gets its new blocks after its old ones: their last convolution starts at zero
    (as every block's does) and their width does not change, so each is the identity, and the skips they add hold
    the old last block's output. On the way up, a level of ``n + 1`` old blocks becomes ``m + 1``: the first keeps
    old block 0 (its skip is a copy of the one it had), the next ``m − n`` are new, and the last ``n`` are old blocks
    1 … n with their own skips. A new up block takes ``[h, skip]`` and must return ``h``: its 1×1 shortcut starts as
    ``[I | 0]`` and its last convolution and attention projection at zero. Training then moves all of it."""
    if not (target.num_res_blocks > stored.num_res_blocks
            and dataclasses.replace(stored, num_res_blocks=target.num_res_blocks) == target):
        return None
    down, up = _block_map(target, stored.num_res_blocks)
    remap = {"down": down, "up": up}
    out = dict(fresh)
    for key, value in weights.items():
        part, _, rest = key.partition(".")
        if part in remap:
            index, _, name = rest.partition(".")
            key = f"{part}.{remap[part][int(index)]}.{name}"
        if key not in out or out[key].shape != value.shape:
            return None
        out[key] = value
    old = {f"down.{i}." for i in down.values()} | {f"up.{i}." for i in up.values()}
    for key in list(out):
        part, _, rest = key.partition(".")
        if part not in remap or any(key.startswith(prefix) for prefix in old):
            continue
        name = rest.partition(".")[2]  # "<layer>.<module>.<param>", layer 0 the residual block
        if name.endswith(("conv2.weight", "conv2.bias", "proj.weight", "proj.bias", "skip.bias")):
            out[key] = torch.zeros_like(out[key])
        elif name.endswith("skip.weight"):  # [out, out + skip, 1, 1]: pass h through, ignore the skip
            eye = torch.zeros_like(out[key])
            width = eye.shape[0]
            eye[:, :width, 0, 0] = torch.eye(width, dtype=eye.dtype)
            out[key] = eye
    return out
