"""Evaluation of a trained image model: bits/dim of held-out images (the discretised variational bound of
Ho et al. 2020) and FID/KID of generated images against a reference set (:mod:`diffimage.fid`, cached reference
features), and the held-out and reference images a model's stored recipe names.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Literal

import numpy as np
import torch
from torch import Tensor, nn

from diffcore.checkpoint import atomic_write
from diffcore.config import ConfigError
from diffcore.denoiser import VPDenoiser
from diffcore.likelihood import bits_per_dim as nats_to_bits_per_dim
from diffcore.likelihood import nll
from diffcore.split import holdout_indices
from diffimage.config import UNetConfig

if TYPE_CHECKING:
    from diffimage.api import ImageModel

__all__ = [
    "nll_bits_per_dim",
    "load_reference_images",
    "small_feature_network",
    "fid_kid",
    "reference_features",
    "heldout_images",
    "reference_images",
    "evaluate_model",
    "default_cache_dir",
    "FID_FULL_SAMPLES",
]

#: Fewer generated images than this make :func:`evaluate_model` warn that its FID is biased upwards (10k is the
#: least that papers report; 50k the usual).
FID_FULL_SAMPLES = 10_000


def default_cache_dir() -> Path:
    """Where reference features and statistics are cached: ``$DIFF_CACHE``, else ``~/.cache/diffstack/fid``."""
    return Path(os.environ.get("DIFF_CACHE") or Path.home() / ".cache" / "diffstack" / "fid")


@torch.no_grad()
def nll_bits_per_dim(
    denoiser: VPDenoiser,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    variance: Literal["beta", "posterior"] | None = None,
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
    ``denoiser``: the model (:func:`diffimage.sample.denoiser_of`). ``labels``: classes of a conditional model
    (``-1`` = null label); ``variance``: σ_t² of the reverse steps (``None``: the learned one of a learned-variance
    network, else β_t); ``clip_denoised`` clamps the predicted x_0 to [-1, 1] as the
    reference implementations do for images.
    """
    if not isinstance(denoiser, VPDenoiser):
        raise ValueError("the likelihood bound is computed for VP models (a discrete schedule); this model is "
                         f"{type(denoiser).__name__}")
    model = denoiser.network
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
            nats = nll(denoiser, x0, cond, decoder="discretized", variance=variance, generator=generator,
                       progress=progress, clip_denoised=clip_denoised)
            out.append(nats_to_bits_per_dim(nats.double().cpu(), x0.shape))
    finally:
        model.train(was_training)
    return torch.cat(out)


def load_reference_images(
    path: str | os.PathLike, image_size: int | None = None, channels: int | None = None, limit: int | None = None
) -> Tensor:
    """uint8 ``[N, C, H, W]`` images of a reference set: a ``.npz`` (``images`` ``[N, H, W(, C)]``) or a folder
    (every image PIL reads, resized and centre-cropped to ``image_size``, converted to ``channels``). ``limit``
    keeps ``limit`` images spread evenly over the set."""
    from diffimage.data import ImageFolderDataset

    p = Path(path).expanduser()
    if p.is_file():
        from diffimage.data import read_image_archive

        try:
            arr, _ = read_image_archive(p)
        except KeyError as e:
            raise ConfigError(str(e).strip("\"'")) from None
        except ValueError as e:
            raise ConfigError(str(e)) from None
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
    """``k < n`` indices spread over ``range(n)``: the ``diffimage-v1`` formula of :mod:`diffcore.split`."""
    return np.asarray(holdout_indices(n, k, "diffimage-v1"), dtype=np.int64)


class _SmallFeatures(nn.Module):
    """A fixed random conv net ``[N, C, H, W] → [N, 16]`` (seeded): FID's code path at test speed, never a metric to
    report."""

    feature_id = "diffimage-small-random-conv-v1"
    feature_name = "small-test-network"  # what metrics.json calls it

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


def reference_features(reference: Tensor, net: nn.Module | None, cache_dir: str | os.PathLike | None,
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
        ref_feats = reference_features(reference, feature_extractor, cache_dir, batch_size, device)
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
            ref_feats = reference_features(subset, feature_extractor, cache_dir, batch_size, device)
        # compute_kid takes images and a feature network; features shaped [N, 1, 1, D] with nn.Flatten as the
        # "network" hand it the features we already have.
        mean, std = compute_kid(ref_feats[:, None, None, :], gen[:, None, None, :], feature_extractor=nn.Flatten(),
                                batch_size=1 << 16, subset_size=kid_subset_size, device="cpu")
        out.update(kid=mean, kid_std=std)
    return out


# --------------------------------------------------------------------------------------------------------------
# The images a model's stored recipe names


def heldout_images(info: dict, model_cfg: UNetConfig) -> tuple[Tensor, Tensor, str] | None:
    """Held-out images of the recipe stored with a model: ``(uint8 images, labels, where)`` for its
    ``data.holdout`` images, or the test split of a torchvision source; ``None`` if there are none or the data is
    not reachable."""
    from diffimage.data import build_datasets, dataset_images
    from diffimage.recipe import ImageDataConfig

    data = info.get("data")
    if not isinstance(data, dict):
        return None
    try:
        cfg = ImageDataConfig.from_dict(data)
        if cfg.holdout > 0:
            held = build_datasets(cfg, model_cfg)[1]
            where = f"the {cfg.holdout} held-out images of the model's recipe"
        elif cfg.resolved_source() in ("cifar10", "mnist", "celeba"):
            held = build_datasets(cfg.replace(split="test", holdout=0, random_flip=False), model_cfg)[0]
            where = f"the test split of {cfg.resolved_source()}"
        else:
            return None
    except (ConfigError, FileNotFoundError, OSError):
        return None
    if held is None:
        return None
    images, labels = dataset_images(held)
    return images, labels, where


def reference_images(info: dict, model_cfg: UNetConfig, limit: int | None) -> Tensor | None:
    """The training images of the recipe stored with a model (the usual FID reference; ``limit`` of them spread
    over the set), uint8 ``[N, C, H, W]``, or ``None`` if the data is not reachable."""
    from torch.utils.data import Subset

    from diffimage.data import build_datasets, dataset_images
    from diffimage.recipe import ImageDataConfig

    data = info.get("data")
    if not isinstance(data, dict):
        return None
    try:
        cfg = ImageDataConfig.from_dict(data).replace(random_flip=False, holdout=0)
        ds = build_datasets(cfg, model_cfg)[0]
    except (ConfigError, FileNotFoundError, OSError):
        return None
    if limit is not None and len(ds) > limit:  # pick before decoding: a folder may hold many images
        ds = Subset(ds, _spread(len(ds), limit).tolist())
    return dataset_images(ds)[0]


# --------------------------------------------------------------------------------------------------------------
# Evaluating a model


def evaluate_model(
    model: ImageModel,
    metrics: Collection[Literal["nll", "fid", "kid"]] = ("nll", "fid", "kid"),
    *,
    data: str | os.PathLike | None = None,
    num_images: int = 64,
    reference: str | os.PathLike | None = None,
    reference_limit: int | None = None,
    num_samples: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    sampling: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    feature_extractor: nn.Module | None = None,
    log: Callable[[str], None] = lambda message: None,
    progress: bool = False,
) -> tuple[dict[str, Any], Tensor | None]:
    """Bits/dim and/or FID/KID of ``model``: ``(result, samples)`` where ``result`` is the ``metrics.json`` content
    (``nll``: mean bits/dim, its standard error and the images; ``generation``: FID, KID, the sampling settings)
    and ``samples`` the generated images (``None`` without FID/KID).

    Bits/dim (:meth:`ImageModel.bits_per_dim`) is measured on the first ``num_images`` images of ``data`` (an
    ``.npz`` or a folder), by default the held-out images of the model's recipe (:func:`heldout_images`). FID/KID
    (:func:`fid_kid`) compares ``num_samples`` images sampled with ``sampling`` (``sampler``, ``steps``, ``eta``,
    ``guidance_scale``; ``None`` = the recipe's) from seed ``seed`` (:meth:`ImageModel.sample_seeded`) with
    ``reference``, by default the recipe's training images; ``cache_dir`` caches the reference features;
    ``feature_extractor`` replaces the FID Inception-v3. ``log`` receives progress and warning lines. Raises
    ``ConfigError`` when the images a metric needs are not there or do not fit the model.
    """
    from diffimage.sample import resolved_options

    c = model.config
    sampling = dict(sampling or {})
    result: dict[str, Any] = {"model": model.source}
    if "nll" in metrics:
        if data is not None:
            images = load_reference_images(data, c.image_size, c.in_channels, limit=num_images)
            labels, where = None, data
        else:
            found = heldout_images(model.info, c)
            if found is None:
                raise ConfigError("give --data PATH for bits/dim (the model's recipe has no reachable held-out "
                                  "images: data.holdout is 0), or leave nll out of --metrics")
            images, labels, where = found
        images, labels = images[:num_images], None if labels is None else labels[:num_images]
        if tuple(images.shape[1:]) != model.image_shape:
            raise ConfigError(f"the held-out images are {list(images.shape[1:])}, the model makes "
                              f"{list(model.image_shape)}")
        log(f"bits/dim of {images.shape[0]} image(s) from {where}: {c.diffusion.num_steps} steps x "
            f"{-(-images.shape[0] // batch_size)} batch(es) of network evaluations ...")
        g = torch.Generator(device=model.device).manual_seed(seed)
        bpd = model.bits_per_dim(images, labels, generator=g, batch_size=batch_size, progress=progress)
        result["nll"] = {"bits_per_dim": float(bpd.mean()),
                         "stderr": float(bpd.std() / bpd.numel() ** 0.5) if bpd.numel() > 1 else None,
                         "num_images": int(bpd.numel()), "images": str(where)}

    samples = None
    if set(metrics) & {"fid", "kid"}:
        if reference is not None:
            ref = load_reference_images(reference, c.image_size, c.in_channels, reference_limit)
            ref_name = str(reference)
        else:
            ref = reference_images(model.info, c, reference_limit)
            if ref is None:
                raise ConfigError("give --reference PATH (.npz or image folder) for FID/KID: the model's training "
                                  "data is not reachable")
            ref_name = "the training images of the model's recipe"
        if num_samples < FID_FULL_SAMPLES:
            log(f"warning: FID from {num_samples} samples is biased upwards (the bias shrinks roughly like 1/N); "
                f"compare only figures with the same sample count, and use --num-samples {FID_FULL_SAMPLES} or more "
                "for a figure to report (KID is unbiased)")
        from tqdm.auto import tqdm

        with tqdm(total=num_samples, desc="sample", unit="img", disable=None if progress else True) as bar:
            samples = model.sample_seeded(num_samples, seed, batch_size, on_batch=bar.update, **sampling)
        log(f"features of {ref.shape[0]} reference and {samples.shape[0]} generated image(s) ...")
        scores = fid_kid(samples, ref, cache_dir=cache_dir, feature_extractor=feature_extractor,
                         kid="kid" in metrics, batch_size=batch_size, device=model.device)
        result["generation"] = {
            **({"fid": scores["fid"]} if "fid" in metrics else {}),
            **({"kid": scores["kid"], "kid_std": scores["kid_std"]} if "kid" in metrics else {}),
            "num_samples": num_samples, "reference": ref_name, "num_reference": int(ref.shape[0]),
            **resolved_options(model.sample_defaults, c, **sampling), "seed": seed,
            "features": "inception-v3 (FID)" if feature_extractor is None else
            getattr(feature_extractor, "feature_name", type(feature_extractor).__name__),
        }
    return result, samples
