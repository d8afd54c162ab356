"""An image training recipe: ``model`` (:class:`~diffimage.config.UNetConfig`) + ``data`` (:class:`ImageDataConfig`)
+ ``train`` (:class:`~diffcore.train.TrainConfig`) + ``sample`` (:class:`ImageSampleConfig`), read from YAML by
:func:`load_image_recipe`.

The ``data`` section names the images; :func:`diffimage.data.build_datasets` turns it into the training set and
the held-out set (``data.holdout`` images chosen by :func:`holdout_indices`, never trained on). The ``sample``
section holds the sampling defaults of the training hook and of the ``sample``/``evaluate`` commands (stored with
the model, so a class-conditional model keeps its guidance scale).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from diffcore.config import ConfigBase, ConfigError, load_recipe
from diffcore.split import HoldoutScheme
from diffcore.split import holdout_indices as _holdout_indices
from diffcore.train import TrainConfig
from diffimage.config import UNetConfig, split_runtime_keys

__all__ = [
    "ImageDataConfig",
    "ImageSampleConfig",
    "ImageRecipe",
    "load_image_recipe",
    "holdout_indices",
]

Source = Literal["auto", "synthetic", "npz", "folder", "cifar10", "mnist", "celeba"]
SamplerName = Literal["ddim", "ddpm", "heun", "dpmpp"]
#: The samplers that walk noise levels sigma (the denoiser's sigma view) rather than a discrete VP schedule: the
#: only ones an EDM model has.
SIGMA_SAMPLERS: tuple[str, ...] = ("heun", "dpmpp")


@dataclass
class ImageDataConfig(ConfigBase):
    """Where the training images are.

    ``source``: ``auto`` (synthetic shapes when ``path`` is null, a ``.npz`` file, or a folder of images),
    ``synthetic`` (:func:`~diffimage.data.synthetic_images`: ``num_synthetic`` images drawn with ``seed``),
    ``npz`` (``images`` uint8 ``[N, H, W(, C)]`` and optional ``labels``), ``folder`` (every image PIL reads under
    ``path``, resized and centre-cropped to the model's size; no labels), or torchvision's ``cifar10``, ``mnist`` and
    ``celeba`` with ``path`` as their root (``download: true`` fetches them; ``split`` picks the part).
    ``random_flip``: horizontal flips while training (DDPM's only augmentation on CIFAR-10 and CelebA; keep it off
    for digits). ``holdout``: images kept out of training, spread over the set; ``holdout_scheme``: which
    of :mod:`diffcore.split`'s versioned formulas picks them (a config without the field, as in run folders and
    shipped models from before it, means ``diffimage-v1``, the formula they were split with; new recipes say
    ``strata-v1``). ``limit``: use only the
    first ``limit`` images (before the hold-out split).
    """

    source: Source = "auto"
    path: str | None = None
    random_flip: bool = False
    holdout: int = 0
    holdout_scheme: HoldoutScheme = "diffimage-v1"
    limit: int | None = None
    num_synthetic: int = 4096
    seed: int = 0
    download: bool = False
    split: Literal["train", "test"] = "train"

    def __post_init__(self) -> None:
        if self.holdout < 0:
            raise ConfigError(f"data.holdout must not be negative, got {self.holdout}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"data.limit must be at least 1 or null, got {self.limit}")
        if self.num_synthetic < 1:
            raise ConfigError(f"data.num_synthetic must be at least 1, got {self.num_synthetic}")
        if self.source in ("npz", "folder", "cifar10", "mnist", "celeba") and self.path is None:
            raise ConfigError(f"data.source {self.source!r} needs data.path (on the command line: data.path=PATH)")

    def resolved_source(self) -> str:
        """``source`` with ``auto`` decided from ``path``."""
        if self.source != "auto":
            return self.source
        if self.path is None:
            return "synthetic"
        return "npz" if str(self.path).lower().endswith(".npz") else "folder"


@dataclass
class ImageSampleConfig(ConfigBase):
    """Sampling defaults: the training hook's grid, and ``diffimage sample``/``evaluate`` when no option says else.

    ``sampler``: ``ddim`` (Song et al. 2021; ``eta`` 0 = deterministic), ``ddpm`` (ancestral, Ho et al. 2020,
    Algorithm 2, on ``steps`` respaced steps), ``heun`` (Karras et al. 2022) or ``dpmpp`` (DPM-Solver++(2M), Lu
    et al. 2022: one network evaluation per step). ``steps``: null = the sampler's default (ddim 50, heun 18,
    dpmpp 20, ddpm all T). ``guidance_scale``: classifier-free guidance for a class-conditional
    model (1 = plain conditional, 0 = unconditional, > 1 = guided). ``clip_denoised``: clamp the predicted x_0 to
    [-1, 1] at each step (DDPM/DDIM). ``num_images``: images in the hook's grid, drawn with ``seed``.
    ``nll_images``: held-out images whose bits/dim the validation hook reports (each costs T network evaluations;
    0 = only the validation loss).
    """

    sampler: SamplerName = "ddim"
    steps: int | None = None
    eta: float = 0.0
    guidance_scale: float = 1.0
    clip_denoised: bool = True
    num_images: int = 64
    seed: int = 0
    nll_images: int = 0

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"sample.steps must be at least 1 or null, got {self.steps}")
        if self.eta < 0:
            raise ConfigError(f"sample.eta must not be negative, got {self.eta}")
        if self.num_images < 1:
            raise ConfigError(f"sample.num_images must be at least 1, got {self.num_images}")
        if self.nll_images < 0:
            raise ConfigError(f"sample.nll_images must not be negative, got {self.nll_images}")


@dataclass
class ImageRecipe(ConfigBase):
    """Everything an image run needs: the model (what inference rebuilds), the data, training and sampling.

    ``init_from``: a shipped model's name, an export folder or a run folder whose weights (the EMA ones) a new run
    starts from (a warm start: fresh optimizer, step 0; its model section must equal this recipe's, be the
    class-conditional version of this unconditional network, which starts from its null-label branch
    (:func:`diffimage.model.unconditional_from_null_label`), or be this network with fewer residual blocks per
    level, which starts deepened with identity blocks (:func:`diffimage.model.deepened`); either way step 0
    computes what the stored network computes). A resumed run ignores it: the checkpoint's weights win.
    """

    model: UNetConfig = field(default_factory=UNetConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: ImageSampleConfig = field(default_factory=ImageSampleConfig)
    init_from: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, *, _where: str = "") -> "ImageRecipe":
        """:meth:`ConfigBase.from_dict`; a recipe whose ``model`` section still holds the run-time switches of older
        versions has the ones it changed moved to its ``train`` section (:func:`~diffimage.config.split_runtime_keys`;
        ``model.use_checkpoint`` becomes ``train.gradient_checkpointing``), so a resumed run keeps them."""
        if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
            model, switches = split_runtime_keys(data["model"], "model")
            data = {**data, "model": model}
            if switches and (data.get("train") is None or isinstance(data["train"], Mapping)):
                data["train"] = {**switches, **(data.get("train") or {})}
        return super().from_dict(data, _where=_where)

    def __post_init__(self) -> None:
        if self.sample.guidance_scale != 1.0 and self.model.num_classes is None:
            raise ConfigError("sample.guidance_scale != 1 needs a class-conditional model (model.num_classes)")
        if self.model.diffusion.edm is not None and self.sample.sampler not in SIGMA_SAMPLERS:
            raise ConfigError(f"sample.sampler {self.sample.sampler!r} walks a discrete VP schedule; an EDM model "
                              f"(model.diffusion.edm) is sampled with 'heun' or 'dpmpp'")


def load_image_recipe(
    path: str | os.PathLike | None, overrides: Sequence[str] = (), data: str | os.PathLike | None = None
) -> ImageRecipe:
    """Read a recipe file (or the defaults when ``path`` is ``None``) with ``key=value`` overrides.

    ``data`` is the ``--data PATH`` shortcut: ``data.source=auto`` and ``data.path`` (made absolute), applied before
    the overrides.
    """
    extra = ["data.source=auto", f"data.path={Path(data).expanduser().resolve()}"] if data is not None else []
    return load_recipe(ImageRecipe, path, [*extra, *overrides])


# --------------------------------------------------------------------------------------------------------------
# The held-out split


def holdout_indices(n: int, k: int, scheme: HoldoutScheme = "diffimage-v1") -> list[int]:
    """The ``k`` held-out image indices of ``range(n)``: :func:`diffcore.split.holdout_indices` with ``scheme``
    (default: ``diffimage-v1``, the scheme of a data config that names none)."""
    return _holdout_indices(n, k, scheme, item="image")
