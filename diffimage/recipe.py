"""An image training recipe: ``model`` (:class:`~diffimage.unet.UNetConfig`) + ``data`` (:class:`ImageDataConfig`) +
``train`` (:class:`~diffcore.train.TrainConfig`) + ``sample`` (:class:`ImageSampleConfig`), read from YAML by
:func:`load_image_recipe`.

The ``data`` section names the images; :func:`build_datasets` turns it into the training set and the held-out set
(``data.holdout`` images evenly spread over the data, never trained on; the validation hook and
``diffimage evaluate`` measure bits/dim on them). The image size and channels come from the model config, so the
data is checked against the network, not the other way round. The ``sample`` section holds the sampling defaults
of the training hook and of the ``sample``/``evaluate`` commands (stored with the model, so a class-conditional
model keeps its guidance scale).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from diffcore.config import ConfigBase, ConfigError, load_recipe
from diffcore.split import HoldoutScheme
from diffcore.split import holdout_indices as _holdout_indices
from diffcore.train import TrainConfig
from diffimage.data import ImageFolderDataset, NpzImageDataset, synthetic_images, unit_to_uint8
from diffimage.unet import UNetConfig

__all__ = [
    "ImageDataConfig",
    "ImageSampleConfig",
    "ImageRecipe",
    "load_image_recipe",
    "build_datasets",
    "holdout_indices",
    "dataset_images",
    "RandomFlip",
]

Source = Literal["auto", "synthetic", "npz", "folder", "cifar10", "mnist", "celeba"]
SamplerName = Literal["ddim", "ddpm", "heun"]


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
    Algorithm 2, on ``steps`` respaced steps) or ``heun`` (Karras et al. 2022). ``steps``: null = the sampler's
    default (ddim 50, heun 18, ddpm all T). ``guidance_scale``: classifier-free guidance for a class-conditional
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
    """Everything an image run needs: the model (what inference rebuilds), the data, training and sampling."""

    model: UNetConfig = field(default_factory=UNetConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: ImageSampleConfig = field(default_factory=ImageSampleConfig)

    def __post_init__(self) -> None:
        if self.sample.guidance_scale != 1.0 and self.model.num_classes is None:
            raise ConfigError("sample.guidance_scale != 1 needs a class-conditional model (model.num_classes)")


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
# Data sets


def holdout_indices(n: int, k: int, scheme: HoldoutScheme = "diffimage-v1") -> list[int]:
    """The ``k`` held-out image indices of ``range(n)``: :func:`diffcore.split.holdout_indices` with ``scheme``
    (default: ``diffimage-v1``, the scheme of a data config that names none)."""
    return _holdout_indices(n, k, scheme, item="image")


class RandomFlip(Dataset):
    """Items of ``dataset`` with ``image`` flipped horizontally with probability 1/2 (torch's global RNG, whose
    state the engine checkpoints)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = dict(self.dataset[index])
        if torch.rand(()) < 0.5:
            item["image"] = item["image"].flip(-1)
        return item


def _check_shape(shape: Sequence[int], model: UNetConfig, where: str) -> None:
    """``shape`` = (C, H, W) of the data must be what the network takes."""
    c, h, w = shape
    want = (model.in_channels, model.image_size, model.image_size)
    if (c, h, w) != want:
        raise ConfigError(
            f"{where} holds {c}x{h}x{w} images (channels x height x width) but the model takes {want[0]}x{want[1]}x"
            f"{want[2]}: set model.image_size={h} model.in_channels={c} (and attention_resolutions to sizes that "
            "occur), or use other data"
        )


def _torchvision(data: ImageDataConfig, model: UNetConfig, source: str) -> Dataset:
    from diffimage import data as image_data

    root = Path(str(data.path)).expanduser()
    train = data.split == "train"
    try:
        if source == "cifar10":
            ds = image_data.cifar10(root, train=train, download=data.download, random_flip=False)
            _check_shape((3, 32, 32), model, "CIFAR-10")
        elif source == "mnist":
            ds = image_data.mnist(root, train=train, download=data.download, random_flip=False)
            _check_shape((1, 28, 28), model, "MNIST")
        else:
            ds = image_data.celeba(root, split=data.split, download=data.download, image_size=model.image_size,
                                   random_flip=False)
            _check_shape((3, model.image_size, model.image_size), model, "CelebA")
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise FileNotFoundError(f"{source} under {str(root)!r}: {e} (set data.download=true to fetch it)") from None
    return ds


def _base_dataset(data: ImageDataConfig, model: UNetConfig) -> Dataset:
    """All images ``data`` names, unflipped, as ``dict(image=[C,H,W] in [-1,1], label=long)`` items."""
    source = data.resolved_source()
    if source == "synthetic":
        images, labels = synthetic_images(data.num_synthetic, model.image_size, model.in_channels,  # type: ignore
                                          seed=data.seed)
        return NpzImageDataset.from_arrays(images, labels)
    path = Path(str(data.path)).expanduser()
    if source == "npz":
        if not path.is_file():
            raise FileNotFoundError(f"data.path {str(path)!r} does not exist")
        try:
            ds = NpzImageDataset(path, limit=data.limit)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"data.path {str(path)!r}: {e}") from None
        _check_shape(tuple(ds.images.shape[1:]), model, str(path))
        return ds
    if source == "folder":
        if model.in_channels not in (1, 3):
            raise ConfigError(f"an image folder gives 1 or 3 channels, but model.in_channels is {model.in_channels}")
        try:
            return ImageFolderDataset(path, image_size=model.image_size, channels=model.in_channels)  # type: ignore
        except ValueError as e:
            raise ConfigError(f"data.path: {e}") from None
    return _torchvision(data, model, source)


def _labels_of(ds: Dataset) -> Tensor | None:
    labels = getattr(ds, "labels", None)
    return labels if isinstance(labels, Tensor) else None


def build_datasets(data: ImageDataConfig, model: UNetConfig) -> tuple[Dataset, Dataset | None]:
    """``(training set, held-out set or None)`` for ``data`` and the network ``model``.

    Checks that the images have the model's shape and, for a class-conditional model, that the data has labels
    below ``model.num_classes``. Flips (``data.random_flip``) apply to the training set only.
    """
    base = _base_dataset(data, model)
    n = len(base)  # type: ignore[arg-type]
    if data.limit is not None and n > data.limit:
        base, n = Subset(base, range(data.limit)), data.limit
    if model.num_classes is not None:
        labels = _labels_of(base.dataset if isinstance(base, Subset) else base)
        if isinstance(base.dataset if isinstance(base, Subset) else base, ImageFolderDataset):
            raise ConfigError("model.num_classes is set but an image folder has no labels: use an .npz with "
                              "'labels', a labelled torchvision source, or an unconditional model")
        if labels is not None and len(labels) and int(labels.max()) >= model.num_classes:
            where = f"data.path {str(data.path)!r}: " if data.path else ""
            raise ConfigError(f"{where}label {int(labels.max())} is outside [0, model.num_classes={model.num_classes})")
    held = holdout_indices(n, data.holdout, data.holdout_scheme)
    held_set = set(held)
    train: Dataset = Subset(base, [i for i in range(n) if i not in held_set]) if held else base
    if data.random_flip:
        train = RandomFlip(train)
    return train, (Subset(base, held) if held else None)


def dataset_images(ds: Dataset, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """``(uint8 images [N, C, H, W], labels long [N])`` of (the first ``limit`` items of) an image data set; read
    from the arrays directly for ``.npz``/synthetic data, item by item otherwise (exact: the items are 8-bit
    levels scaled to [-1, 1])."""
    n = len(ds)  # type: ignore[arg-type]
    n = n if limit is None else min(n, limit)
    inner, index = ds, list(range(n))
    while isinstance(inner, Subset):  # compose nested subsets down to the arrays
        index = [int(inner.indices[i]) for i in index]
        inner = inner.dataset
    if isinstance(inner, NpzImageDataset):
        idx = torch.as_tensor(index, dtype=torch.long)
        labels = inner.labels[idx] if inner.labels is not None else torch.full((len(index),), -1, dtype=torch.long)
        return inner.images[idx].contiguous(), labels
    items = [inner[i] for i in index]
    images = torch.stack([unit_to_uint8(it["image"]) for it in items])
    return images, torch.stack([torch.as_tensor(it["label"], dtype=torch.long) for it in items])

