"""Image data sets for diffusion training and evaluation.

Every data set returns ``dict(image=Tensor [C, H, W] float32 in [-1, 1], label=LongTensor [])``, the scaling of
Ho et al. 2020 (§4: "we assume image data consists of integers in {0, 1, …, 255} scaled linearly to [−1, 1]").
A data set without labels returns ``label = -1``, which :class:`diffimage.model.UNet` reads as the null label.

- :class:`ImageFolderDataset`: every image file PIL can open under a folder (recursive), RGB or grey, optional
  resize + centre crop; unreadable files are logged by name and skipped.
- :class:`NpzImageDataset`: ``images`` uint8 ``[N, H, W]`` or ``[N, H, W, C]`` and optional ``labels`` in a
  ``.npz`` (the layout of the shared test data) or in arrays (:meth:`NpzImageDataset.from_arrays`).
- :func:`cifar10`, :func:`mnist`, :func:`celeba`: torchvision's data sets in the same format (``download=``).
- :func:`synthetic_images`: coloured shapes on plain backgrounds, labelled by shape, for a quickstart with no data.
- :func:`build_datasets`: the training and held-out sets a recipe's ``data`` section names, checked against the
  network's image shape and classes; :func:`dataset_images` reads a data set back as uint8 arrays.

Random horizontal flips (``random_flip``) are the only augmentation DDPM used on CIFAR-10 and CelebA; keep them off
for digits and text, whose mirror images are not in the distribution.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, Subset

from diffcore.config import ConfigError
from diffimage.config import UNetConfig
from diffimage.recipe import ImageDataConfig, holdout_indices

__all__ = [
    "ImageFolderDataset",
    "NpzImageDataset",
    "TorchvisionImages",
    "cifar10",
    "mnist",
    "celeba",
    "synthetic_images",
    "uint8_to_unit",
    "unit_to_uint8",
    "SHAPES",
    "RandomFlip",
    "build_datasets",
    "dataset_images",
]

log = logging.getLogger(__name__)

SHAPES = ("disc", "square", "triangle", "ring")  # the classes of synthetic_images


def uint8_to_unit(images: Tensor | np.ndarray) -> Tensor:
    """uint8 ``[0, 255]`` → float32 ``[-1, 1]``: ``x / 127.5 − 1`` (any shape)."""
    return torch.as_tensor(images).float() / 127.5 - 1.0


def unit_to_uint8(images: Tensor) -> Tensor:
    """float ``[-1, 1]`` → uint8 ``[0, 255]``, rounding to the nearest level and clamping (any shape)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


#: Errors of an image file that cannot be used: unreadable, truncated, or a decompression bomb (PIL's limit).
_UNUSABLE = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError,
             Image.DecompressionBombWarning)


@contextlib.contextmanager
def _bombs_are_errors():
    """PIL only warns for images above ``MAX_IMAGE_PIXELS`` (and raises above twice that): both skip the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) grey image scaled to 8 bits by its bit depth.

    ``convert("L")`` would clip every value above 255 to white: a 16-bit PNG came out all white."""
    if img.mode.startswith("I;16"):
        bits = 16
    elif img.mode == "I":  # PNG and TIFF 16-bit greys may open as "I"; a wider range means 32-bit data
        bits = 16 if int(np.asarray(img).max(initial=0)) <= 65535 else 32
    elif img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0  # float images in [0, 1], else already in [0, 255]
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")
    else:
        return img
    arr = np.asarray(img).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(arr * 255.0 / (2.0**bits - 1)), 0, 255).astype(np.uint8), "L")


def _pil_to_chw(img: Image.Image, channels: Literal[1, 3]) -> Tensor:
    """PIL image → uint8 ``[C, H, W]`` with 1 (``L``) or 3 (``RGB``) channels; alpha is composited on black;
    16-bit, 32-bit and float grey images are scaled by their bit depth."""
    img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to ``size`` (bicubic, antialiased by PIL when shrinking), then crop the centre."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _item(image_u8: Tensor, label: int, random_flip: bool) -> dict[str, Tensor]:
    x = uint8_to_unit(image_u8)
    if random_flip and torch.rand(()) < 0.5:
        x = x.flip(-1)
    return {"image": x, "label": torch.tensor(label, dtype=torch.long)}


class ImageFolderDataset(Dataset):
    """All images under ``root`` (recursively, sorted by path), with no labels (``label = -1``).

    Args:
        root: folder to search; every file whose extension PIL registers is a candidate.
        image_size: if set, scale the shorter side to it and centre-crop to ``image_size × image_size``.
        channels: 3 (RGB) or 1 (grey).
        random_flip: flip horizontally with probability 1/2 (training augmentation).
        verify: open and verify every file now (``PIL.Image.verify``), so unreadable ones are dropped before
            training. Files that fail only when decoded later are logged and replaced by the next readable one.

    Attributes:
        files: the usable files. ``skipped``: the unreadable ones; ``num_skipped`` their count (logged once).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | None = None,
        channels: Literal[1, 3] = 3,
        random_flip: bool = False,
        verify: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            from diffcore.paths import not_a_file_reason

            reason = not_a_file_reason(self.root)
            if reason != "does not exist":
                raise ValueError(f"image folder {str(self.root)!r} {reason.replace(', not a regular file', '')}, "
                                 "not a folder")
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.image_size = image_size
        self.channels = channels
        self.random_flip = random_flip
        extensions = {ext.lower() for ext in Image.registered_extensions()}
        candidates = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        self.files: list[Path] = []
        self.skipped: list[Path] = []
        for path in candidates:
            if verify and not self._readable(path):
                self.skipped.append(path)
            else:
                self.files.append(path)
        if self.skipped:
            log.warning("skipped %d unreadable image(s) of %d under %s", len(self.skipped), len(candidates), self.root)
        if not self.files:
            raise ValueError(f"no readable images under {str(self.root)!r}")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @staticmethod
    def _readable(path: Path) -> bool:
        try:
            with _bombs_are_errors(), Image.open(path) as img:
                img.verify()
            return True
        except _UNUSABLE as e:
            log.warning("unreadable image %s skipped: %s", path, e)
            return False

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Tensor:
        """The image at ``index`` as uint8 ``[C, H, W]`` (resized/cropped, no flip)."""
        with _bombs_are_errors(), Image.open(self.files[index]) as img:
            img.load()
            img = _to_8bit(img)
            if self.image_size is not None:
                img = _resize_center_crop(img, self.image_size)
            return _pil_to_chw(img, self.channels)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            try:
                image = self.load(i)
            except _UNUSABLE as e:
                log.warning("unreadable image %s skipped: %s", self.files[i], e)
                if self.files[i] not in self.skipped:
                    self.skipped.append(self.files[i])
                continue
            return _item(image, -1, self.random_flip)
        raise RuntimeError(f"no image under {str(self.root)!r} could be decoded")


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Class labels as int64, refusing what would train silently wrong: a non-numeric dtype, fractional values
    (``astype`` would truncate 2.7 to 2) and negative ones. The message names the first bad value and its index."""
    if labels.dtype == np.bool_ or not (np.issubdtype(labels.dtype, np.integer) or
                                        np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if bad.size:
            raise ValueError(f"labels must be whole numbers, but labels[{bad[0]}] is {labels[bad[0]].item()!r}")
    negative = np.flatnonzero(labels < 0)
    if negative.size:
        first = negative[0]
        raise ValueError(f"labels must lie in [0, num_classes), but labels[{first}] is {labels[first].item()!r}")
    if labels.size and labels.max() > np.iinfo(np.int64).max // 2:
        raise ValueError(f"labels must lie in [0, num_classes), but one is {labels.max().item()!r}")
    return labels.astype(np.int64)


#: Most bytes an ``.npz`` image set may unpack to (its ``images`` and ``labels``, after ``limit``): 8 GiB, four
#: times CelebA at 64x64. The members' headers are checked against it before anything is decompressed.
MAX_IMAGE_ARCHIVE_BYTES = 8 << 30


def read_image_archive(path: str | os.PathLike, limit: int | None = None,
                       max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images, labels or None)`` of an ``.npz`` image set, the first ``limit`` of each. The headers are read
    first: an archive that claims more images than it holds, or unpacks to more than ``max_bytes`` (default
    :data:`MAX_IMAGE_ARCHIVE_BYTES`), is a ``ValueError`` naming the file before anything is allocated; with
    ``limit`` only those images are decompressed. ``FileNotFoundError``/``KeyError`` for a missing file or
    ``images`` array."""
    from diffcore.arrays import ArrayFileError, load_npz, npz_headers
    from diffcore.paths import not_a_file_reason

    reason = not_a_file_reason(path)
    if reason == "does not exist":
        raise FileNotFoundError(f"{str(path)!r}: no such .npz file")
    if reason:
        raise ValueError(f"{str(path)!r} {reason}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be at least 0, got {limit}")
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                magic = f.read(6)
            what = "a single .npy array" if magic == b"\x93NUMPY" else "not a zip archive"
            raise ArrayFileError(f"{str(path)!r} is {what}, not an .npz archive with an 'images' array")
        headers = npz_headers(path)
        if "images" not in headers:
            raise KeyError(f"{str(path)!r} has no 'images' array (keys: {', '.join(headers) or 'none'})")
        for name in ("images", "labels"):
            if name in headers and not headers[name][0].shape:
                raise ArrayFileError(f"{str(path)!r}: '{name}' is a single value, not an array")
        arrays = load_npz(path, {"images": limit, "labels": limit},
                          max_bytes=MAX_IMAGE_ARCHIVE_BYTES if max_bytes is None else max_bytes)
    except (KeyError, FileNotFoundError):
        raise
    except (ArrayFileError, OSError) as e:
        raise ValueError(f"{str(path)!r} is not a readable .npz image archive: {e}") from None
    return arrays["images"], arrays.get("labels")


class NpzImageDataset(Dataset):
    """Images held in arrays: ``images`` uint8 ``[N, H, W]`` (grey) or ``[N, H, W, C]``, optional ``labels [N]``.

    ``NpzImageDataset(path)`` reads a ``.npz`` with those keys; :meth:`from_arrays` wraps arrays in memory.
    Items: ``dict(image=[C, H, W] float32 in [-1, 1], label=long)`` (``-1`` when there are no labels).
    """

    def __init__(self, path: str | os.PathLike, random_flip: bool = False, limit: int | None = None) -> None:
        images, labels = read_image_archive(path, limit)
        self._init(images, labels, random_flip)

    @classmethod
    def from_arrays(
        cls, images: np.ndarray, labels: np.ndarray | None = None, random_flip: bool = False
    ) -> "NpzImageDataset":
        self = cls.__new__(cls)
        self._init(np.asarray(images), None if labels is None else np.asarray(labels), random_flip)
        return self

    def _init(self, images: np.ndarray, labels: np.ndarray | None, random_flip: bool) -> None:
        if images.dtype != np.uint8:
            raise TypeError(f"images must be uint8 in [0, 255], got {images.dtype}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be [N, H, W] or [N, H, W, C] with C = 1 or 3, got {list(images.shape)}")
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape [{images.shape[0]}], got {list(labels.shape)}")
        if labels is not None:
            labels = _check_labels(labels)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # [N, C, H, W] view
        self.labels = None if labels is None else torch.from_numpy(labels.astype(np.int64))
        self.random_flip = random_flip

    @property
    def num_classes(self) -> int | None:
        return None if self.labels is None else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        label = -1 if self.labels is None else int(self.labels[index])
        return _item(self.images[index], label, self.random_flip)


# --------------------------------------------------------------------------------------------------------------
# torchvision data sets (these download; tests never call them)


class TorchvisionImages(Dataset):
    """Adapts a torchvision data set of ``(PIL image, target)`` pairs to the dict format of this module."""

    def __init__(
        self, dataset: Dataset, channels: Literal[1, 3], random_flip: bool, image_size: int | None = None,
        crop: int | None = None, label: bool = True,
    ) -> None:
        self.dataset = dataset
        self.channels = channels
        self.random_flip = random_flip
        self.image_size = image_size
        self.crop = crop
        self.label = label

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        img, target = self.dataset[index]
        if self.crop is not None:  # a fixed centre crop before resizing (CelebA's face region)
            w, h = img.size
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            img = img.crop((left, top, left + self.crop, top + self.crop))
        if self.image_size is not None:
            img = _resize_center_crop(img, self.image_size)
        return _item(_pil_to_chw(img, self.channels), int(target) if self.label else -1, self.random_flip)


def cifar10(root: str | os.PathLike, train: bool = True, download: bool = False, random_flip: bool = True) -> Dataset:
    """CIFAR-10 (32×32 RGB, 10 labels) via torchvision; flips on by default as in DDPM."""
    from torchvision.datasets import CIFAR10

    return TorchvisionImages(CIFAR10(str(root), train=train, download=download), 3, random_flip)


def mnist(root: str | os.PathLike, train: bool = True, download: bool = False, random_flip: bool = False) -> Dataset:
    """MNIST (28×28 grey, 10 labels) via torchvision; no flips (a mirrored digit is not a digit)."""
    from torchvision.datasets import MNIST

    return TorchvisionImages(MNIST(str(root), train=train, download=download), 1, random_flip)


def celeba(
    root: str | os.PathLike,
    split: Literal["train", "valid", "test", "all"] = "train",
    download: bool = False,
    image_size: int = 64,
    random_flip: bool = True,
) -> Dataset:
    """CelebA faces via torchvision: centre crop 140×140 of the aligned 178×218 image, then resize to
    ``image_size`` (the 64×64 preprocessing of the DDIM and NCSN code). No labels (``label = -1``)."""
    from torchvision.datasets import CelebA

    ds = CelebA(str(root), split=split, target_type=[], download=download)  # items are (image, None)
    return TorchvisionImages(ds, 3, random_flip, image_size=image_size, crop=140, label=False)


# --------------------------------------------------------------------------------------------------------------
# Synthetic images


def synthetic_images(
    n: int, size: int = 32, channels: Literal[1, 3] = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of one coloured shape on a plain background, for a quickstart that needs no download.

    Each image has a dark background colour and one bright shape (``SHAPES``: disc, square, triangle, ring) of
    random size, position and colour; the label is the shape's index. Deterministic given ``seed``.

    Returns:
        ``images`` uint8 ``[n, size, size, channels]`` and ``labels`` int64 ``[n]``: the layout of
        :class:`NpzImageDataset` (``NpzImageDataset.from_arrays(*synthetic_images(1000))``).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    images = np.empty((n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, len(SHAPES), size=n)
    for i in range(n):
        background = rng.uniform(0, 90, channels)
        colour = rng.uniform(150, 255, channels)
        r = rng.uniform(0.18, 0.32) * size
        cx, cy = rng.uniform(r, size - r, 2)
        dx, dy = xx - cx, yy - cy
        shape = SHAPES[labels[i]]
        if shape == "disc":
            mask = dx**2 + dy**2 <= r**2
        elif shape == "square":
            mask = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
        elif shape == "triangle":  # apex up, base at the bottom
            mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
        else:  # ring
            d2 = dx**2 + dy**2
            mask = (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
        img = np.where(mask[..., None], colour, background)
        images[i] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------------------------------------------
# The data sets of a recipe


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
    root = Path(str(data.path)).expanduser()
    train = data.split == "train"
    try:
        if source == "cifar10":
            ds = cifar10(root, train=train, download=data.download, random_flip=False)
            _check_shape((3, 32, 32), model, "CIFAR-10")
        elif source == "mnist":
            ds = mnist(root, train=train, download=data.download, random_flip=False)
            _check_shape((1, 28, 28), model, "MNIST")
        else:
            ds = celeba(root, split=data.split, download=data.download, image_size=model.image_size,
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
            from diffcore.paths import not_a_file_reason

            reason = not_a_file_reason(path)
            if reason != "does not exist":
                raise ConfigError(f"data.path {str(path)!r} {reason}")
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
