"""Image grids and PNG files: 8-bit conversion, tiling, atomic writes.

Model outputs are float images in ``[-1, 1]`` (``[N, C, H, W]``, C = 1 or 3); :func:`to_uint8` maps them to the 256
levels ``round((x + 1) · 127.5)`` (the inverse of the data scaling of Ho et al. 2020, §4), :func:`make_grid` tiles
them, and :func:`save_png` writes through a temporary file and a rename, so a reader never sees half a PNG.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffcore.checkpoint import atomic_write
from diffimage.data import unit_to_uint8

__all__ = ["to_uint8", "grid_shape", "make_grid", "save_png", "save_grid", "save_images"]


def to_uint8(images: Tensor | np.ndarray) -> Tensor:
    """uint8 ``[N, C, H, W]`` of float images in ``[-1, 1]`` (clamped, rounded) or of uint8 images (unchanged).

    A single image ``[C, H, W]`` gets a batch dimension.
    """
    x = torch.as_tensor(images).detach().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, C, H, W] with C = 1 or 3, got {list(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.dtype.is_floating_point:
        raise TypeError(f"images must be float in [-1, 1] or uint8, got {x.dtype}")
    return unit_to_uint8(x)


def grid_shape(n: int, nrow: int | None = None) -> tuple[int, int]:
    """``(rows, columns)`` of a grid of ``n`` images: ``nrow`` images per row (default ``ceil(sqrt(n))``)."""
    if n < 1:
        raise ValueError("a grid needs at least one image")
    cols = nrow if nrow is not None else math.ceil(math.sqrt(n))
    if cols < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    cols = min(cols, n)
    return math.ceil(n / cols), cols


def make_grid(images: Tensor | np.ndarray, nrow: int | None = None, padding: int = 2, pad_value: int = 0) -> Tensor:
    """Tile images into one uint8 image ``[rows·(H+p)+p, cols·(W+p)+p, C]`` (HWC, row-major, ``p = padding``
    pixels of ``pad_value`` around and between the tiles; unused tiles stay ``pad_value``).

    The tiling is ``torchvision.utils.make_grid``'s; this wrapper fixes the layout of the rows (:func:`grid_shape`),
    works on 8-bit levels and keeps grey images grey (torchvision repeats one channel three times).
    """
    from torchvision.utils import make_grid as tv_make_grid

    x = to_uint8(images)
    n, c = x.shape[:2]
    _, cols = grid_shape(n, nrow)
    if padding < 0:
        raise ValueError(f"padding must not be negative, got {padding}")
    grid = tv_make_grid(x, nrow=cols, padding=padding, pad_value=pad_value)  # [3 or C, H', W']
    return grid[:c].permute(1, 2, 0).contiguous()


def save_png(image: Tensor | np.ndarray, path: str | os.PathLike) -> Path:
    """Write one image atomically as PNG: uint8 ``[H, W, C]`` / ``[H, W]``, or one float/uint8 ``[C, H, W]``
    image (``C`` = 1 or 3). Grey images are written as 8-bit grey PNGs."""
    from PIL import Image

    x = torch.as_tensor(image).detach().cpu()
    hwc = x.dtype == torch.uint8 and (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (1, 3)))
    if not hwc:
        x = to_uint8(x)[0].permute(1, 2, 0)  # one CHW image (float or uint8) -> HWC uint8
    arr = x.numpy()
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(f"cannot write an image of shape {list(x.shape)} as PNG")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def save_grid(images: Tensor | np.ndarray, path: str | os.PathLike, nrow: int | None = None,
              padding: int = 2) -> Path:
    """:func:`make_grid` + :func:`save_png`. Returns the path."""
    return save_png(make_grid(images, nrow, padding), path)


def save_images(images: Tensor | np.ndarray, folder: str | os.PathLike, prefix: str = "sample",
                start: int = 0) -> list[Path]:
    """Write each image as ``folder/<prefix>_<index:06d>.png`` (indices from ``start``), atomically."""
    x = to_uint8(images)
    folder = Path(folder)
    return [save_png(x[i], folder / f"{prefix}_{start + i:06d}.png") for i in range(x.shape[0])]
