"""The user-facing Python API: load a trained image model (run folder, checkpoint, export folder or shipped name),
sample, measure; and the library's main functions, re-exported.

    import diffimage.api as di
    m = di.load("runs/cifar10")                               # latest checkpoint's EMA weights, GPU if there is one
    x = m.sample(16, sampler="ddim", steps=50)                # float [16, 3, 32, 32] in [-1, 1], on the CPU
    x = m.sample(16, classes=3, guidance_scale=2.0)           # a class-conditional model, guided
    bpd = m.bits_per_dim(images)                              # [N] discretised-ELBO bits/dim (T evaluations each)

The model is always rebuilt from the configuration stored with the weights (``config["model"]``), never from
defaults. Sampling is :mod:`diffimage.sample`'s; bits/dim, FID and KID are :mod:`diffimage.evaluate`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch
from torch import Tensor

from diffcore.arguments import ArgumentError, check_count, check_generator, check_integer_array, check_real, describe
from diffcore.checkpoint import check_export_target, export, load_for_inference, rebuild_model, write_export
from diffcore.config import ConfigError
from diffcore.device import resolve_device
from diffimage.config import UNetConfig
from diffimage.evaluate import (
    evaluate_model,
    fid_kid,
    load_reference_images,
    nll_bits_per_dim,
    small_feature_network,
)
from diffimage.model import UNet
from diffimage.recipe import ImageSampleConfig, SamplerName
from diffimage.sample import DEFAULT_STEPS, Classes, class_labels, denoiser_of, generate

__all__ = [
    "ImageModel",
    "available_models",
    "load",
    "export_run",
    "resolve_device",
    "UNet",
    "UNetConfig",
    "generate",
    "nll_bits_per_dim",
    "load_reference_images",
    "small_feature_network",
    "fid_kid",
    "evaluate_model",
    "DEFAULT_STEPS",
]


class ImageModel:
    """A :class:`UNet` in evaluation mode with its schedule and stored recipe.

    Attributes: ``model``, ``config`` (:class:`UNetConfig`), ``schedule``, ``source`` (where it was loaded from),
    ``info`` (the stored recipe, plain data), ``sample_defaults`` (the recipe's ``sample`` section).
    """

    def __init__(self, model: UNet, source: str = "<memory>", info: Mapping[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.config: UNetConfig = model.config
        #: the discrete schedule of a VP model (``None`` for an EDM model, which has none)
        self.schedule = self.config.diffusion.build() if self.config.diffusion.edm is None else None
        self.source = source
        self.info = dict(info or {})
        stored = self.info.get("sample")
        try:
            self.sample_defaults = ImageSampleConfig.from_dict(stored) if isinstance(stored, Mapping) \
                else ImageSampleConfig()
        except ConfigError:  # a recipe from another version: fall back to the defaults
            self.sample_defaults = ImageSampleConfig()

    @classmethod
    def from_config_and_weights(
        cls, config: Mapping[str, Any], weights: Mapping[str, Tensor], device: str | torch.device = "auto",
        source: str = "<memory>",
    ) -> "ImageModel":
        """Rebuild from a stored recipe (``{"model": ..., ...}``) and a state dict; raises ``CheckpointError``."""
        model = rebuild_model(config, weights, UNetConfig, UNet, source=source, kind="diffimage U-Net")
        return cls(model.to(resolve_device(device)), source, config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_classes(self) -> int | None:
        return self.config.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the model makes."""
        return (self.config.in_channels, self.config.image_size, self.config.image_size)

    def to(self, device: str | torch.device) -> "ImageModel":
        self.model.to(resolve_device(device))
        return self

    def __repr__(self) -> str:
        c = self.config
        cls = f", {c.num_classes} classes" if c.num_classes else ""
        if c.class_prior is not None:
            cls += " drawn from its prior"
        params = sum(p.numel() for p in self.model.parameters())
        process = "EDM" if c.diffusion.edm is not None else f"T={c.diffusion.num_steps}"
        return (f"ImageModel({self.source!r}: {c.in_channels}x{c.image_size}x{c.image_size}, {params / 1e6:.2f}M "
                f"parameters, {process}{cls}, on {self.device})")

    def sample(
        self,
        n: int,
        sampler: SamplerName | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        classes: Classes = None,
        generator: torch.Generator | None = None,
        *,
        eta: float | None = None,
        clip_denoised: bool | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Tensor:
        """``n`` images, float ``[n, C, H, W]`` in ``[-1, 1]`` on the CPU (see :func:`generate`).

        Options left at ``None`` take the stored recipe's ``sample`` section (e.g. the guidance scale of a
        class-conditional recipe). ``batch_size`` splits the work into batches drawn one after another from the
        same ``generator`` (which must live on :attr:`device`).
        """
        d = self.sample_defaults
        n = check_count("n", n, 1, 1_000_000)
        sampler = sampler or d.sampler
        if steps is None and sampler == d.sampler:
            steps = d.steps
        steps, eta, guidance_scale = self._checked_options(sampler, steps, eta, guidance_scale, generator)
        scale = d.guidance_scale if guidance_scale is None else guidance_scale
        if self.num_classes is None and guidance_scale is None:
            scale = 1.0
        labels = self._labels(n, classes)
        bs = n if batch_size is None else check_count("batch_size", batch_size, 1)
        out = []
        for i in range(0, n, bs):
            k = min(bs, n - i)
            x = generate(self.model, k, schedule=self.schedule, sampler=sampler, steps=steps,
                         eta=d.eta if eta is None else eta, guidance_scale=scale,
                         classes=None if labels is None else labels[i:i + k], generator=generator,
                         clip_denoised=d.clip_denoised if clip_denoised is None else clip_denoised,
                         progress=progress)
            out.append(x.float().cpu())
        images = torch.cat(out)
        finite = torch.isfinite(images)
        if not bool(finite.all()):  # clamp(-1, 1) keeps NaN: the promise of [-1, 1] would be broken silently
            raise FloatingPointError(f"{self.source}: the model produced {int((~finite).sum())} non-finite values "
                                     "(NaN or Inf); its weights or schedule are broken")
        return images

    def _labels(self, n: int, classes: Classes) -> Tensor | None:
        """The labels of ``n`` images, or ``None`` where each batch draws its own from the model's ``class_prior``
        (no ``classes`` given), with the batch's generator."""
        classes = _checked_classes(classes)
        if classes is None and self.config.class_prior is not None:
            return None
        return class_labels(self.config, n, classes, torch.device("cpu"))

    def _checked_options(self, sampler: Any, steps: Any, eta: Any, guidance_scale: Any,
                         generator: Any) -> tuple[int | None, float | None, float | None]:
        """Sampling options checked against this model: ``steps`` at most T for the samplers that walk the
        discrete schedule (``steps=5000`` on a T = 1000 model ran 1000 while the manifest said 5000), a finite
        ``eta`` in [0, 10] and guidance scale, a ``torch.Generator`` on the model's device. ArgumentError names the
        argument."""
        from typing import get_args

        if sampler not in get_args(SamplerName):
            raise ArgumentError(f"sampler must be one of {', '.join(get_args(SamplerName))}, got {describe(sampler)}")
        if steps is not None:
            steps = check_count("steps", steps, 1, 100_000)
            t = self.config.diffusion.num_steps
            if sampler in ("ddim", "ddpm") and self.schedule is not None and steps > t:
                raise ArgumentError(f"steps={steps} is more than the model's T = {t} diffusion steps; sampler "
                                    f"{sampler!r} walks a subsequence of them (give at most {t})")
        if eta is not None:
            eta = check_real("eta", eta, 0.0, 10.0)
        if guidance_scale is not None:
            guidance_scale = check_real("guidance_scale", guidance_scale, -1000.0, 1000.0)
        check_generator("generator", generator, self.device)
        return steps, eta, guidance_scale

    def sample_seeded(self, n: int, seed: int = 0, batch_size: int = 64, on_batch: Callable[[int], None] | None = None,
                      **options: Any) -> Tensor:
        """:meth:`sample` in batches where the batch starting at image ``i`` uses a generator seeded ``seed + i``
        (so with ``batch_size=1`` image ``i`` is seed ``seed + i``). ``on_batch(k)`` is called after each batch of
        ``k`` images (a progress bar). ``classes`` may be one label per image."""
        classes = options.pop("classes", None)
        n = check_count("n", n, 1, 1_000_000)
        seed = check_count("seed", seed, 0, 2**63 - 1)
        batch_size = check_count("batch_size", batch_size, 1)
        labels = self._labels(n, classes)
        out = []
        for i in range(0, n, batch_size):
            k = min(batch_size, n - i)
            g = torch.Generator(device=self.device).manual_seed(seed + i)
            out.append(self.sample(k, generator=g, classes=None if labels is None else labels[i:i + k], **options))
            if on_batch is not None:
                on_batch(k)
        return torch.cat(out)

    def save(self, out_dir: str | os.PathLike, dtype: torch.dtype | None = None,
             metadata: Mapping[str, str] | None = None) -> Path:
        """Write the model as an export folder: ``config.json`` (:attr:`info`, the stored recipe) and
        ``model.safetensors`` (the weights, cast to ``dtype`` when given, e.g. ``torch.float16`` to halve the file;
        :func:`load` casts them back to float32). Atomic per file; returns ``out_dir``.

        ``load(out_dir)`` gives a model whose samples equal this one's for the same generator (exactly for float32;
        within float16 rounding otherwise).
        """
        info = dict(self.info)
        info["model"] = self.config.to_dict()  # the network these weights belong to, whatever info said
        meta = {"source": "ImageModel.save", "dtype": str(dtype or "unchanged").replace("torch.", ""),
                **dict(metadata or {})}
        return write_export(out_dir, self.model.state_dict(), info, dtype=dtype, metadata=meta)

    def _checked_images(self, images: Any) -> Tensor:
        """``images`` for :meth:`bits_per_dim`: a uint8 or float tensor ``[N, C, H, W]`` of this model's image shape
        with N ≥ 1 (16x16 images were scored by a 28x28 model without a word), float values finite in [-1, 1]."""
        if not isinstance(images, Tensor):
            import numpy as np

            if not isinstance(images, np.ndarray):
                raise ArgumentError(f"images must be a tensor [N, C, H, W], got {describe(images)}")
            images = torch.from_numpy(images)
        if images.layout != torch.strided or images.is_meta:
            raise ArgumentError("images must be a dense tensor with values")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ArgumentError(f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}")
        want = self.image_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ArgumentError(f"images of shape {list(images.shape)} do not fit this model, which makes [N, "
                                f"{want[0]}, {want[1]}, {want[2]}] images")
        if images.shape[0] == 0:
            raise ArgumentError("images is an empty batch (N = 0): there is nothing to score")
        if images.is_floating_point():
            finite = torch.isfinite(images)
            if not bool(finite.all()):
                raise ArgumentError(f"images holds {int((~finite).sum())} non-finite values")
            if float(images.min()) < -1 - 1e-6 or float(images.max()) > 1 + 1e-6:
                raise ArgumentError(f"float images must lie in [-1, 1], got [{float(images.min()):.3g}, "
                                    f"{float(images.max()):.3g}] (pass uint8 images for [0, 255])")
        return images

    def bits_per_dim(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> Tensor:
        """Discretised-ELBO bits/dim ``[N]`` of 8-bit images (see :func:`nll_bits_per_dim`; T network evaluations
        per batch). A conditional model is scored with ``labels`` (``None``: the null label, i.e. unconditional)."""
        images = self._checked_images(images)
        batch_size = check_count("batch_size", batch_size, 1)
        check_generator("generator", generator, self.device)
        if labels is not None:
            labels = check_integer_array("labels", labels)
            if labels.shape[0] != images.shape[0]:
                raise ArgumentError(f"labels holds {labels.shape[0]} labels for {images.shape[0]} images")
        if labels is None and self.num_classes is not None:
            labels = torch.full((images.shape[0],), -1, dtype=torch.long)
        if labels is not None and self.num_classes is None:
            labels = None
        return nll_bits_per_dim(denoiser_of(self.model, self.schedule), images, labels, generator=generator,
                                batch_size=batch_size, progress=progress)


def _checked_classes(classes: Any) -> Any:
    """``classes`` as :func:`class_labels` takes them, with bools, floats, ``None`` entries and strings refused
    (ArgumentError naming the entry) instead of torch's conversion errors or a silent cast."""
    if classes is None:
        return None
    if isinstance(classes, (int, torch.Tensor)) and not isinstance(classes, bool) and (
            not isinstance(classes, torch.Tensor) or classes.ndim == 0):
        return check_count("classes", classes, -1)
    return check_integer_array("classes", classes)


def export_run(source: str | os.PathLike, out_dir: str | os.PathLike,
               dtype: Literal["fp32", "fp16"] = "fp32") -> tuple[ImageModel, Path]:
    """Export a run folder's (latest) or a checkpoint's EMA weights, after checking that ``source`` holds an image
    model, then load the export back as a check. ``fp32``: the stored weights as they are
    (:func:`diffcore.checkpoint.export`); ``fp16``: cast to float16 (half the file; :func:`load` widens them back),
    with the checkpoint's step in the metadata. Returns ``(the model loaded from source, the export folder)``."""
    model = load(source, "cpu")  # an image model, before anything is written
    if dtype == "fp16":
        from diffcore.checkpoint import find_latest, load_checkpoint

        check_export_target(out_dir)
        src = Path(source)
        ckpt = src if src.is_file() else find_latest(src)
        step = str(int(load_checkpoint(ckpt)["step"])) if ckpt is not None else "unknown"
        out = model.save(out_dir, dtype=torch.float16, metadata={"step": step, "source": "ema"})
    else:
        out = export(source, out_dir)
    load(out, "cpu")
    return model, out


def available_models() -> list[str]:
    """Names of the models shipped inside the package (``diffimage/pretrained/``), which :func:`load` takes."""
    from diffimage.pretrained import SHIPPED

    return SHIPPED.names()


def load(path: str | os.PathLike, device: str | torch.device = "auto") -> ImageModel:
    """An :class:`ImageModel` from a run folder (its latest checkpoint), a ``.pt`` checkpoint, an export folder or
    the name of a shipped model (:func:`available_models`; a bare shipped name means the shipped model, with a
    warning when a folder of that name is in the working directory: write ``./NAME`` for the folder).

    The EMA weights are used when the checkpoint has them. Raises ``CheckpointError`` for anything that is not a
    diffimage model (the message lists the shipped names when ``path`` neither exists nor is one).
    """
    from diffimage.pretrained import SHIPPED

    config, weights = load_for_inference(SHIPPED.locate(path))
    return ImageModel.from_config_and_weights(config, weights, device, source=str(path))
