"""The image model's configuration: :class:`UNetConfig`, everything inference needs to rebuild a DDPM U-Net
(:class:`diffimage.model.UNet`) and its diffusion process, with the presets of the papers' networks.

How the network runs (channels-last memory, gradient checkpointing) is not part of it: those are run-time switches,
``UNet.set_runtime`` (``train.channels_last`` / ``train.gradient_checkpointing`` for training). Older configs that
still hold them load: :func:`split_runtime_keys` is the one place that reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import warnings
from typing import Any, ClassVar, Literal, Mapping

from diffcore.config import ConfigBase, ConfigError, DiffusionConfig, bounded

__all__ = ["UNetConfig", "NORM_GROUPS", "RUNTIME_KEYS", "split_runtime_keys"]

NORM_GROUPS = 32  # GroupNorm(32) throughout, as in the paper

#: Keys that model configs written before the run-time switches left them still hold: old key -> (the ``train``
#: field that holds the switch now, the value every such config had unless someone changed it).
RUNTIME_KEYS: dict[str, tuple[str, bool]] = {
    "channels_last": ("channels_last", True),
    "use_checkpoint": ("gradient_checkpointing", False),
}


def split_runtime_keys(model: Mapping[str, Any], where: str = "model") -> tuple[dict[str, Any], dict[str, bool]]:
    """An older model config without its run-time keys (:data:`RUNTIME_KEYS`), and the switches it asked for that
    differ from the old defaults, as ``{train field: value}``. The old defaults (channels-last on, no gradient
    checkpointing) are what the network does anyway, so they are dropped silently; any other value gets a
    ``DeprecationWarning`` that names the ``train`` field to use instead."""
    data = dict(model)
    switches: dict[str, bool] = {}
    for old, (new, default) in RUNTIME_KEYS.items():
        if old not in data:
            continue
        value = data.pop(old)
        if value is not None and bool(value) != default:
            switches[new] = bool(value)
            warnings.warn(f"config key {where}.{old} is a run-time switch now, not part of the model: set "
                          f"train.{new}: {str(bool(value)).lower()} instead", DeprecationWarning, stacklevel=3)
    return data, switches


@dataclass
class UNetConfig(ConfigBase):
    """Everything needed to rebuild a DDPM U-Net for inference: the network and its diffusion process.

    ``out_channels`` is derived: ``in_channels`` (ε, x0 or v prediction) or ``2 * in_channels`` when
    ``learned_variance`` is set (Nichol & Dhariwal 2021's learned Σ; formerly ``learn_sigma``, which older configs
    may still say): the prediction and the variance interpolation weight, concatenated on channels.
    ``num_classes``: None for an unconditional model; otherwise labels ``0 .. num_classes - 1`` plus the null label
    ``num_classes`` (what ``cond=None`` or a negative label means), which ``class_dropout`` substitutes at random
    while training so that one network gives both terms of classifier-free guidance.
    ``class_prior``: the labels' frequencies in the training data (one per class, summing to 1), or None. A model
    that has one draws each image's label from it when it is sampled without classes, so that it generates the
    data's own mixture p(x) = Σ_c p(c) p(x | c): an unconditional generator whose labels are latent, such as
    clusters found without annotation (Hu et al. 2023, "Self-Guided Diffusion Models"; ``tools/mnist_clusters.py``).
    ``num_head_channels``: when set, the number of heads at a level is ``channels // num_head_channels`` (as in
    guided-diffusion); otherwise every attention layer has ``num_heads`` heads.
    ``resample``: ``"conv"`` (strided 3×3 conv / nearest + 3×3 conv, DDPM's ``resamp_with_conv=True``) or
    ``"resample"`` (2×2 average pool / nearest, no weights).
    ``downsample_padding``: the strided conv pads one pixel on every side (``"symmetric"``, the default) or, as
    TensorFlow's ``SAME`` padding in the paper's code and diffusers' ``downsample_padding=0`` do, one pixel at the
    right and bottom only (``"same"``); weights trained with one do not fit the other.

    Presets (``UNetConfig.preset(name, **overrides)``):

    - ``cifar10``: Ho et al. 2020's CIFAR-10 model, 32×32×3, ch 128, mult (1, 2, 2, 2), 2 blocks, attention at 16,
      dropout 0.1: 35,746,307 parameters (the paper's "35.7M").
    - ``mnist``: 28×28×1; 28 = 4·7 so three levels (28, 14, 7) with mult (1, 2, 2), ch 64, attention at 14: 6.5M.
    - ``celeba64``: the DDIM paper's CelebA 64×64 network (Song et al. 2021, a DDPM U-Net): ch 128,
      mult (1, 2, 2, 2, 4) over resolutions 64…4, 2 blocks, attention at 16, dropout 0.1: 78.7M parameters.
    - ``tiny``: 16×16×3, ch 32, mult (1, 2), 1 block, attention at 8, scale-shift norm: for tests and the CPU quickstart.
    """

    image_size: int = bounded(32, limit=4096)
    in_channels: int = bounded(3, limit=4096)
    learned_variance: bool = False
    base_channels: int = bounded(128, limit=4096)
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = bounded(2, limit=64)
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = bounded(1, limit=1024)
    num_head_channels: int | None = bounded(None, limit=4096)
    dropout: float = 0.1
    resample: Literal["conv", "resample"] = "conv"
    downsample_padding: Literal["symmetric", "same"] = "symmetric"
    scale_shift_norm: bool = False
    num_classes: int | None = bounded(None, limit=1_000_000)
    class_dropout: float = 0.0
    class_prior: tuple[float, ...] | None = None
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    RENAMED: ClassVar[dict[str, str]] = {"learn_sigma": "learned_variance"}

    PRESETS: ClassVar[dict[str, dict]] = {
        "cifar10": dict(
            image_size=32, in_channels=3, base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
            attention_resolutions=(16,), dropout=0.1,
        ),
        "mnist": dict(
            image_size=28, in_channels=1, base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
            attention_resolutions=(14,), dropout=0.1,
        ),
        "celeba64": dict(
            image_size=64, in_channels=3, base_channels=128, channel_mult=(1, 2, 2, 2, 4), num_res_blocks=2,
            attention_resolutions=(16,), dropout=0.1,
        ),
        "tiny": dict(
            image_size=16, in_channels=3, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(8,), dropout=0.0,
            # 32 channels make one channel per GroupNorm group, which would erase an embedding added before the
            # norm: the tiny model feeds time and class through the norm's scale and shift instead.
            scale_shift_norm=True,
        ),
    }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, *, _where: str = "") -> "UNetConfig":
        """:meth:`ConfigBase.from_dict`, reading an older config's run-time keys with :func:`split_runtime_keys`
        (their values are not applied here: they are how a network runs, set by ``UNet.set_runtime``)."""
        if isinstance(data, Mapping):
            data = split_runtime_keys(data, _where or "model")[0]
        return super().from_dict(data, _where=_where)

    @property
    def out_channels(self) -> int:
        """Channels of the network output: ``in_channels``, doubled when ``learned_variance``."""
        return self.in_channels * (2 if self.learned_variance else 1)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Spatial size of each level, ``image_size / 2**i``."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    def heads_at(self, channels: int) -> int:
        """Number of attention heads for a layer of ``channels`` channels."""
        return channels // self.num_head_channels if self.num_head_channels else self.num_heads

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        if levels < 1:
            raise ConfigError("channel_mult must have at least one level")
        if any(m < 1 for m in self.channel_mult):
            raise ConfigError(f"channel_mult entries must be positive integers, got {self.channel_mult}")
        if self.image_size < 1 or self.image_size % 2 ** (levels - 1):
            raise ConfigError(
                f"image_size {self.image_size} must be divisible by 2**(len(channel_mult) - 1) = {2 ** (levels - 1)} "
                f"so that each of the {levels} levels halves it exactly"
            )
        if self.in_channels < 1:
            raise ConfigError(f"in_channels must be at least 1, got {self.in_channels}")
        if self.base_channels < 1 or self.base_channels % NORM_GROUPS:
            raise ConfigError(
                f"base_channels {self.base_channels} must be a positive multiple of {NORM_GROUPS} (GroupNorm groups)"
            )
        if self.num_res_blocks < 1:
            raise ConfigError(f"num_res_blocks must be at least 1, got {self.num_res_blocks}")
        unknown = [r for r in self.attention_resolutions if r not in self.resolutions]
        if unknown:
            raise ConfigError(
                f"attention_resolutions {unknown} never occur: the levels have resolutions {list(self.resolutions)}"
            )
        if self.num_heads < 1:
            raise ConfigError(f"num_heads must be at least 1, got {self.num_heads}")
        if self.num_head_channels is not None and self.num_head_channels < 1:
            raise ConfigError(f"num_head_channels must be positive or null, got {self.num_head_channels}")
        attn_levels = [i for i, r in enumerate(self.resolutions) if r in self.attention_resolutions]
        for c in {self.base_channels * self.channel_mult[i] for i in attn_levels} | {
            self.base_channels * self.channel_mult[-1]  # the middle block always has attention
        }:
            heads = self.heads_at(c)
            if heads < 1 or c % heads or (self.num_head_channels and c % self.num_head_channels):
                what = f"num_head_channels {self.num_head_channels}" if self.num_head_channels else f"num_heads {heads}"
                raise ConfigError(f"an attention layer with {c} channels cannot be split by {what}")
        if self.resample not in ("conv", "resample"):
            raise ConfigError(f"resample must be 'conv' or 'resample', got {self.resample!r}")
        if self.downsample_padding not in ("symmetric", "same"):
            raise ConfigError(f"downsample_padding must be 'symmetric' or 'same', got {self.downsample_padding!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"num_classes must be null or at least 1, got {self.num_classes}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ConfigError(f"class_dropout must be in [0, 1), got {self.class_dropout}")
        if self.learned_variance and self.diffusion.edm is not None:
            raise ConfigError("learned_variance is defined for the VP parameterisation, not with diffusion.edm")
        if self.learned_variance and self.diffusion.prediction != "eps":
            raise ConfigError(f"learned_variance (the hybrid loss) needs diffusion.prediction = 'eps', got "
                              f"{self.diffusion.prediction!r}")
        if self.class_dropout > 0 and self.num_classes is None:
            raise ConfigError("class_dropout > 0 needs num_classes (an unconditional model has no label to drop)")
        if self.class_prior is not None:
            if self.num_classes is None or len(self.class_prior) != self.num_classes:
                raise ConfigError(f"class_prior needs one frequency per class (num_classes = {self.num_classes}), "
                                  f"got {len(self.class_prior)}")
            if any(not p >= 0 for p in self.class_prior) or not abs(sum(self.class_prior) - 1.0) < 1e-3:
                raise ConfigError("class_prior must hold non-negative frequencies summing to 1, got "
                                  f"{list(self.class_prior)} (sum {sum(self.class_prior):g})")
