"""Python API: load a trained image model (run folder, checkpoint or export folder), sample, measure.

    import diffimage.api as di
    m = di.load("runs/cifar10")                               # latest checkpoint's EMA weights, GPU if there is one
    x = m.sample(16, sampler="ddim", steps=50)                # float [16, 3, 32, 32] in [-1, 1], on the CPU
    x = m.sample(16, classes=3, guidance_scale=2.0)           # a class-conditional model, guided
    bpd = m.bits_per_dim(images)                              # [N] discretised-ELBO bits/dim (T evaluations each)

The model is always rebuilt from the configuration stored with the weights (``config["model"]``), never from
defaults. Sampling goes through diffcore's samplers; guidance through diffcore's ``ClassifierFreeGuidance`` with the
network's reserved null label; the likelihood through diffcore's ``nll`` with the 8-bit discretised decoder of
Ho et al. 2020 (eq. 13). :func:`fid_kid` measures generated images against a reference set with
:mod:`diffimage.fid` (cached reference statistics).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from diffcore.checkpoint import atomic_write, load_for_inference, rebuild_model
from diffcore.config import ConfigError
from diffcore.utils import resolve_device
from diffcore.guidance import ClassifierFreeGuidance
from diffcore.likelihood import bits_per_dim as nats_to_bits_per_dim
from diffcore.likelihood import nll
from diffcore.samplers import ddim_sample, ddpm_sample, heun_sample
from diffcore.schedule import NoiseSchedule, evenly_spaced_indices
from diffimage.recipe import ImageSampleConfig, SamplerName
from diffimage.unet import UNet, UNetConfig

__all__ = [
    "ImageModel",
    "available_models",
    "load",
    "resolve_device",
    "generate",
    "nll_bits_per_dim",
    "load_reference_images",
    "small_feature_network",
    "fid_kid",
    "DEFAULT_STEPS",
]

#: Steps of each sampler when none are given (``None``: every step of the schedule).
DEFAULT_STEPS: dict[str, int | None] = {"ddim": 50, "heun": 18, "ddpm": None}

Classes = int | Sequence[int] | Tensor | None


class _FirstHalf(nn.Module):
    """The ε half of a learned-variance network's output ``[B, 2C, H, W] → [B, C, H, W]``: diffcore's samplers take
    a prediction shaped like ``x_t`` (their variance is fixed)."""

    def __init__(self, model: Callable[..., Tensor]) -> None:
        super().__init__()
        self.model = model

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.model(x_t, t, cond=cond)[:, : x_t.shape[1]]


def _class_labels(config: UNetConfig, n: int, classes: Classes, device: torch.device) -> Tensor | None:
    """Labels ``[n]`` for a conditional network: ``None`` cycles ``0, 1, …, K−1, 0, …``; an int is used for every
    image; a sequence/tensor gives one label per image (``-1`` = the null label, i.e. unconditional)."""
    if config.num_classes is None:
        if classes is not None:
            raise ValueError("this model is unconditional (num_classes is null): it takes no classes")
        return None
    k = config.num_classes
    if classes is None:
        labels = torch.arange(n) % k
    elif isinstance(classes, int):
        labels = torch.full((n,), classes)
    else:
        labels = torch.as_tensor(classes).long().reshape(-1)
        if labels.numel() != n:
            raise ValueError(f"got {labels.numel()} classes for {n} images")
    if bool(((labels >= k) | (labels < -1)).any()):
        raise ValueError(f"classes must lie in 0..{k - 1} (or -1 for no class), got {labels.unique().tolist()}")
    return labels.long().to(device)


@torch.no_grad()
def generate(
    model: UNet,
    n: int,
    *,
    schedule: NoiseSchedule | None = None,
    sampler: SamplerName = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    classes: Classes = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
) -> Tensor:
    """``n`` images ``[n, C, H, W]`` (float in ``[-1, 1]``, on the model's device) from a :class:`UNet`.

    Samplers (diffcore): ``ddpm`` — ancestral sampling, Algorithm 2 of Ho et al. 2020 with σ_t² = β_t, over all T
    steps or, with ``steps``, over an evenly respaced subsequence (Nichol & Dhariwal 2021 §4); ``ddim`` — Song et al.
    2021 eq. 12 (``eta`` 0: deterministic); ``heun`` — Karras et al. 2022 Algorithm 1 (``2·steps − 1`` network
    calls). A class-conditional network gets ``classes`` (see :func:`_class_labels`) and classifier-free guidance
    ``ε_u + s(ε_c − ε_u)`` with ``s = guidance_scale``. A learned-variance network is sampled with its ε half and
    the sampler's fixed variance. ``generator`` (on the model's device) makes the result reproducible.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    cfg: UNetConfig = model.config
    schedule = schedule if schedule is not None else cfg.diffusion.build()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        cond = _class_labels(cfg, n, classes, device)
        net: Callable[..., Tensor] = model
        if cond is not None and guidance_scale != 1.0:
            net = ClassifierFreeGuidance(model, guidance_scale, null_cond=model.null_label,
                                         learned_variance=cfg.learn_sigma)
        elif cond is None and guidance_scale != 1.0 and cfg.num_classes is None:
            raise ValueError("guidance_scale != 1 needs a class-conditional model")
        if cfg.learn_sigma:
            net = _FirstHalf(net)
        shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
        common: dict[str, Any] = dict(cond=cond, generator=generator, progress=progress, device=device,
                                      dtype=torch.float32, prediction=cfg.diffusion.prediction)
        steps = steps if steps is not None else DEFAULT_STEPS[sampler]
        if sampler == "ddim":
            x = ddim_sample(net, shape, schedule, steps=min(int(steps), schedule.num_steps), eta=eta,
                            clip_denoised=clip_denoised, **common)
        elif sampler == "ddpm":
            sched = schedule if steps is None or steps >= schedule.num_steps else \
                schedule.respace(evenly_spaced_indices(schedule.num_steps, int(steps)))
            x = ddpm_sample(net, shape, sched, clip_denoised=clip_denoised, **common)
        elif sampler == "heun":
            x = heun_sample(net, shape, schedule, steps=int(steps), **common)
        else:
            raise ValueError(f"sampler must be 'ddim', 'ddpm' or 'heun', got {sampler!r}")
    finally:
        model.train(was_training)
    return x.clamp(-1.0, 1.0)


@torch.no_grad()
def nll_bits_per_dim(
    model: nn.Module,
    schedule: NoiseSchedule,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    prediction: Literal["eps", "x0", "v"] = "eps",
    variance: Literal["beta", "posterior", "learned"] = "beta",
    clip_denoised: bool = True,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> Tensor:
    """Negative log-likelihood bound of 8-bit images in bits per dimension, ``[N]`` float64 on the CPU.

    The variational bound of Ho et al. 2020 (eq. 5) with the discretised decoder L_0 (eq. 13), summed over all T
    steps by :func:`diffcore.likelihood.nll` (one Monte-Carlo x_t per step and image, from ``generator``), divided by
    ``D · ln 2`` with ``D = C·H·W``. Cost: T network evaluations per batch of ``batch_size`` images.

    ``images``: uint8 ``[N, C, H, W]`` or float in ``[-1, 1]`` on 8-bit levels (kept in its float dtype).
    ``labels``: classes of a conditional model (``-1`` = null label); ``variance``: σ_t² of the reverse steps
    (``learned`` for a ``learn_sigma`` network); ``clip_denoised`` clamps the predicted x_0 to [-1, 1] as the
    reference implementations do for images.
    """
    device = next(model.parameters()).device
    x_all = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images
    if not x_all.dtype.is_floating_point:
        raise TypeError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
    out = []
    was_training = model.training
    model.eval()
    try:
        for i in range(0, x_all.shape[0], batch_size):
            x0 = x_all[i:i + batch_size].to(device)
            cond = None if labels is None else labels[i:i + batch_size].to(device)
            nats = nll(model, schedule, x0, cond, decoder="discretized", variance=variance, generator=generator,
                       progress=progress, prediction=prediction, clip_denoised=clip_denoised)
            out.append(nats_to_bits_per_dim(nats.double().cpu(), x0.shape))
    finally:
        model.train(was_training)
    return torch.cat(out)


class ImageModel:
    """A :class:`UNet` in evaluation mode with its schedule and stored recipe.

    Attributes: ``model``, ``config`` (:class:`UNetConfig`), ``schedule``, ``source`` (where it was loaded from),
    ``info`` (the stored recipe, plain data), ``sample_defaults`` (the recipe's ``sample`` section).
    """

    def __init__(self, model: UNet, source: str = "<memory>", info: Mapping[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.config: UNetConfig = model.config
        self.schedule = self.config.diffusion.build()
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
        params = sum(p.numel() for p in self.model.parameters())
        return (f"ImageModel({self.source!r}: {c.in_channels}x{c.image_size}x{c.image_size}, {params / 1e6:.2f}M "
                f"parameters, T={c.diffusion.num_steps}{cls}, on {self.device})")

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
        sampler = sampler or d.sampler
        if steps is None and sampler == d.sampler:
            steps = d.steps
        scale = d.guidance_scale if guidance_scale is None else guidance_scale
        if self.num_classes is None and guidance_scale is None:
            scale = 1.0
        labels = _class_labels(self.config, n, classes, torch.device("cpu"))
        bs = n if batch_size is None else max(1, int(batch_size))
        out = []
        for i in range(0, n, bs):
            k = min(bs, n - i)
            x = generate(self.model, k, schedule=self.schedule, sampler=sampler, steps=steps,
                         eta=d.eta if eta is None else eta, guidance_scale=scale,
                         classes=None if labels is None else labels[i:i + k], generator=generator,
                         clip_denoised=d.clip_denoised if clip_denoised is None else clip_denoised,
                         progress=progress)
            out.append(x.float().cpu())
        return torch.cat(out)

    def sample_seeded(self, n: int, seed: int = 0, batch_size: int = 64, on_batch: Callable[[int], None] | None = None,
                      **options: Any) -> Tensor:
        """:meth:`sample` in batches where the batch starting at image ``i`` uses a generator seeded ``seed + i``
        (so with ``batch_size=1`` image ``i`` is seed ``seed + i``). ``on_batch(k)`` is called after each batch of
        ``k`` images (a progress bar). ``classes`` may be one label per image."""
        classes = options.pop("classes", None)
        labels = _class_labels(self.config, n, classes, torch.device("cpu"))
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
        import json

        from safetensors.torch import save as save_safetensors

        from diffcore.checkpoint import EXPORT_CONFIG, EXPORT_WEIGHTS, FORMAT_VERSION

        info = dict(self.info)
        info["model"] = self.config.to_dict()  # the network these weights belong to, whatever info said
        text = json.dumps(info, indent=2) + "\n"
        tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
                   .clone() for k, v in self.model.state_dict().items()}
        meta = {"format": f"diffstack-export-{FORMAT_VERSION}", "source": "ImageModel.save",
                "dtype": str(dtype or "unchanged").replace("torch.", ""), **dict(metadata or {})}
        blob = save_safetensors(tensors, metadata=meta)
        out = Path(out_dir)
        atomic_write(out / EXPORT_WEIGHTS, lambda f: f.write(blob))
        atomic_write(out / EXPORT_CONFIG, lambda f: f.write(text.encode()))
        return out

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
        if labels is None and self.num_classes is not None:
            labels = torch.full((images.shape[0],), -1, dtype=torch.long)
        if labels is not None and self.num_classes is None:
            labels = None
        variance = "learned" if self.config.learn_sigma else "beta"
        return nll_bits_per_dim(self.model, self.schedule, images, labels, prediction=self.config.diffusion.prediction,
                                variance=variance, generator=generator, batch_size=batch_size, progress=progress)


def available_models() -> list[str]:
    """Names of the models shipped inside the package (``diffimage/pretrained/``), which :func:`load` takes."""
    from diffimage.pretrained import available_models as shipped

    return shipped()


def load(path: str | os.PathLike, device: str | torch.device = "auto") -> ImageModel:
    """An :class:`ImageModel` from a run folder (its latest checkpoint), a ``.pt`` checkpoint, an export folder or
    the name of a shipped model (:func:`available_models`; an existing path of the same name wins).

    The EMA weights are used when the checkpoint has them. Raises ``CheckpointError`` for anything that is not a
    diffimage model (the message lists the shipped names when ``path`` neither exists nor is one).
    """
    from diffcore.checkpoint import CheckpointError
    from diffimage.pretrained import model_dir

    where = Path(path).expanduser()
    if not where.exists() and str(path) in available_models():
        where = model_dir(str(path))
    elif not where.exists():
        shipped = ", ".join(available_models()) or "none"
        raise CheckpointError(f"{path}: no such file or folder, and not a shipped model name (shipped: {shipped})")
    config, weights = load_for_inference(where)
    return ImageModel.from_config_and_weights(config, weights, device, source=str(path))


# --------------------------------------------------------------------------------------------------------------
# Evaluation against a reference set


def load_reference_images(
    path: str | os.PathLike, image_size: int | None = None, channels: int | None = None, limit: int | None = None
) -> Tensor:
    """uint8 ``[N, C, H, W]`` images of a reference set: a ``.npz`` (``images`` ``[N, H, W(, C)]``) or a folder
    (every image PIL reads, resized and centre-cropped to ``image_size``, converted to ``channels``). ``limit``
    keeps ``limit`` images spread evenly over the set."""
    from diffimage.data import ImageFolderDataset

    p = Path(path).expanduser()
    if p.is_file():
        with np.load(p, allow_pickle=False) as d:
            if "images" not in d:
                raise ConfigError(f"{p}: no 'images' array (keys: {', '.join(d.files)})")
            arr = d["images"]
        if arr.dtype != np.uint8:
            raise ConfigError(f"{p}: 'images' must be uint8, got {arr.dtype}")
        arr = arr[..., None] if arr.ndim == 3 else arr
        if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
            raise ConfigError(f"{p}: 'images' must be [N, H, W] or [N, H, W, C], got {list(arr.shape)}")
        if limit is not None and limit < arr.shape[0]:
            arr = arr[_spread(arr.shape[0], limit)]
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()
    if p.is_dir():
        try:
            ds = ImageFolderDataset(p, image_size=image_size, channels=channels or 3)  # type: ignore[arg-type]
        except ValueError as e:
            raise ConfigError(str(e)) from None
        index = range(len(ds)) if limit is None or limit >= len(ds) else _spread(len(ds), limit)
        return torch.stack([ds.load(int(i)) for i in index])
    raise FileNotFoundError(f"reference set {str(p)!r} does not exist (give an .npz or a folder of images)")


def _spread(n: int, k: int) -> np.ndarray:
    return ((np.arange(k) + 0.5) * n / k).astype(np.int64)


class _SmallFeatures(nn.Module):
    """A fixed random conv net ``[N, C, H, W] → [N, 16]`` (seeded): FID's code path at test speed, never a metric to
    report."""

    feature_id = "diffimage-small-random-conv-v1"

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


def small_feature_network() -> nn.Module:
    """A tiny fixed feature network for tests of the FID/KID path (values mean nothing; use Inception)."""
    return _SmallFeatures()


def _reference_features(reference: Tensor, net: nn.Module | None, cache_dir: str | os.PathLike | None,
                        batch_size: int, device) -> Tensor:
    """Features ``[N, D]`` (float64) of reference images, cached as ``cache_dir/ref_feats_<hash>.npy`` when the
    network has a stable identity (``feature_id``, as Inception's)."""
    from diffimage.fid import InceptionFeatures, dataset_hash, extract_features

    ident = InceptionFeatures.identity() if net is None else getattr(net, "feature_id", None)
    path = None
    if cache_dir is not None and isinstance(ident, str):
        digest = hashlib.sha256(f"features|{dataset_hash(reference)}|{ident}".encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"ref_feats_{digest}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path, allow_pickle=False))
    feats = extract_features(reference, net, batch_size, device)
    if path is not None:
        arr = feats.numpy()
        atomic_write(path, lambda f: np.save(f, arr))
    return feats


def fid_kid(
    images: Tensor,
    reference: Tensor,
    *,
    cache_dir: str | os.PathLike | None = None,
    feature_extractor: nn.Module | None = None,
    kid: bool = True,
    kid_reference: int = 2000,
    kid_subset_size: int = 1000,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """FID (and KID) of ``images`` against ``reference`` (uint8 or ``[-1, 1]`` float ``[N, C, H, W]``).

    FID comes from :func:`~diffimage.fid.fid_from_stats` with the reference statistics (mean, covariance of the
    features) cached in ``cache_dir`` by :func:`diffimage.fid.reference_stats` (keyed by a hash of the images and
    the feature network). KID (torchmetrics' unbiased MMD², 100 subsets of ``kid_subset_size``) needs features, not
    statistics: it uses ``kid_reference`` reference images spread over the set, whose features are cached too
    (when the whole reference set is that small, the same features give the FID statistics). The default feature
    network is the FID Inception-v3. Returns ``fid``, and ``kid``, ``kid_std`` when asked.
    """
    from diffimage.fid import compute_kid, extract_features, feature_stats, fid_from_stats, reference_stats

    ref_feats = None
    if kid and reference.shape[0] <= kid_reference:  # one feature pass serves both metrics
        ref_feats = _reference_features(reference, feature_extractor, cache_dir, batch_size, device)
        ref_stats = feature_stats(ref_feats)
    else:
        ref_stats = reference_stats(reference, cache_dir, feature_extractor, batch_size, device)
    gen = extract_features(images, feature_extractor, batch_size, device)
    if gen.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 generated images, got {gen.shape[0]}")
    out = {"fid": fid_from_stats(feature_stats(gen), ref_stats)}
    if kid:
        if ref_feats is None:
            subset = reference[_spread(reference.shape[0], kid_reference)]
            ref_feats = _reference_features(subset, feature_extractor, cache_dir, batch_size, device)
        # compute_kid takes images and a feature network; features shaped [N, 1, 1, D] with nn.Flatten as the
        # "network" hand it the features we already have.
        mean, std = compute_kid(ref_feats[:, None, None, :], gen[:, None, None, :], feature_extractor=nn.Flatten(),
                                batch_size=1 << 16, subset_size=kid_subset_size, device="cpu")
        out.update(kid=mean, kid_std=std)
    return out
