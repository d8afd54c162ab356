"""Spoken-digit classifier and the DiffWave paper's Table 2 metrics for unconditional generation.

Kong et al. 2021 (DiffWave, section 5.2) judge unconditional SC09 samples with a digit classifier trained on the
real training set: FID on its features, IS, mIS, AM score and NDB. This module provides the same on FSDD (8 kHz
spoken digits, the open stand-in for SC09) or any 10-class digit set.

Notation (``p_i = p(y|x_i)`` the classifier's softmax for sample ``i``, ``p̄ = mean_i p_i``, ``KL`` in nats):

| metric | formula | better | reference |
| --- | --- | --- | --- |
| FID | ``|mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^{1/2})`` on penultimate features | lower | Heusel et al. 2017 |
| IS | ``exp(mean_i KL(p_i || p̄))`` | higher | Salimans et al. 2016 |
| mIS | ``exp(mean_{i != j} KL(p_i || p_j))`` (within-class diversity) | higher | Gurumurthy et al. 2017 |
| AM | ``KL(p̄_ref || p̄) + mean_i H(p_i)`` (``p̄_ref``: mean prediction on the reference set) | lower | Zhou et al. 2018 |
| NDB | bins (k-means cells of the reference features) whose share of generated samples differs from the reference share, two-proportion z-test at level 0.05; also ``NDB/K`` | lower | Richardson & Weiss 2018 |

The classifier's fixed front end (:class:`DigitFeatureConfig`): 8 kHz, every clip peak-normalised and centred in a
1 s window (zero-padded or centre-cropped), periodic Hann STFT n_fft 256 / hop 128 (centred, zero padding), 64 HTK
mel bands 20-4000 Hz, ``ln(max(M, 1e-5))``: ``[64 bands, 63 frames]``. A small 1-D CNN over time maps it to a 128-d
feature vector (the penultimate layer, used by FID and NDB) and 10 logits.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF

from diffcore.checkpoint import atomic_write, load_checkpoint
from diffcore.config import ConfigBase, ConfigError, bounded
from diffwave.audio import AudioError, load_audio
from diffwave.data import fsdd_label
from diffwave.mel import mel_filterbank

__all__ = [
    "DigitFeatureConfig",
    "DigitClassifierConfig",
    "DigitClassifier",
    "split_fsdd_files",
    "train_digit_classifier",
    "load_digit_classifier",
    "classifier_outputs",
    "frechet_distance",
    "inception_score",
    "modified_inception_score",
    "am_score",
    "kmeans",
    "ndb_score",
    "digit_metrics",
]

log = logging.getLogger(__name__)

_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")
_EPS = 1e-12
CHECKPOINT_KIND = "digit_classifier"

Wave = torch.Tensor | np.ndarray


# ---------------------------------------------------------------------------------------------------------------
# Configs


@dataclass
class DigitFeatureConfig(ConfigBase):
    """The classifier's fixed log-mel front end (module docstring); frames = ``1 + num_samples // hop_length``."""

    sample_rate: int = 8000
    num_samples: int = 8000
    n_fft: int = bounded(256, limit=65_536)
    hop_length: int = bounded(128, limit=65_536)
    n_mels: int = bounded(64, limit=1024)
    f_min: float = 20.0
    f_max: float = 4000.0
    log_floor: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("sample_rate", "num_samples", "n_fft", "hop_length", "n_mels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"features.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ConfigError(
                f"features: need 0 <= f_min < f_max <= sample_rate/2, "
                f"got {self.f_min}, {self.f_max}, {self.sample_rate}"
            )

    @property
    def num_frames(self) -> int:
        return 1 + self.num_samples // self.hop_length


@dataclass
class DigitClassifierConfig(ConfigBase):
    """A small CNN over time with the mel bands as input channels (cheap on a CPU): per block
    ``Conv1d(kernel) → BatchNorm → ReLU → MaxPool(2)``, then global average pooling over time, ``Linear → ReLU``
    to ``feature_dim`` (the penultimate features), dropout, ``Linear`` to ``num_classes``."""

    features: DigitFeatureConfig = field(default_factory=DigitFeatureConfig)
    channels: tuple[int, ...] = (64, 96, 128)
    kernel_size: int = 5
    feature_dim: int = 128
    num_classes: int = bounded(10, limit=1_000_000)
    dropout: float = 0.3

    def __post_init__(self) -> None:
        if not self.channels or any(c < 1 for c in self.channels):
            raise ConfigError(f"channels must be a non-empty list of positive integers, got {self.channels}")
        f = self.features
        if f.num_frames < 2 ** len(self.channels):
            raise ConfigError(
                f"{len(self.channels)} pooling blocks need at least {2 ** len(self.channels)} frames, "
                f"got {f.num_frames}"
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be a positive odd number, got {self.kernel_size}")
        if self.feature_dim < 1 or self.num_classes < 2:
            raise ConfigError(f"need feature_dim >= 1 and num_classes >= 2, got {self.feature_dim}, {self.num_classes}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


# ---------------------------------------------------------------------------------------------------------------
# The network


def fit_to_window(wav: torch.Tensor, num_samples: int, offset: int | None = None) -> torch.Tensor:
    """Place a clip ``[T]`` in a window of ``num_samples``: centred (``offset=None``) or starting at ``offset``
    (zero padding when shorter; when longer, ``-offset`` is where the crop starts). Returns ``[num_samples]``."""
    T = wav.shape[-1]
    if T >= num_samples:
        start = (T - num_samples) // 2 if offset is None else min(max(-offset, 0), T - num_samples)
        return wav[start : start + num_samples]
    left = (num_samples - T) // 2 if offset is None else min(max(offset, 0), num_samples - T)
    return F.pad(wav, (left, num_samples - T - left))


def prepare_batch(wavs: Sequence[Wave] | torch.Tensor, features: DigitFeatureConfig) -> torch.Tensor:
    """Clips at ``features.sample_rate`` → ``[B, num_samples]`` float32, each centred in the window."""
    out = [fit_to_window(torch.as_tensor(w, dtype=torch.float32).reshape(-1), features.num_samples) for w in wavs]
    return torch.stack(out)


class DigitClassifier(nn.Module):
    """``forward(wav [B, T]) -> logits [B, C]``; ``embed`` gives the ``[B, feature_dim]`` penultimate features.

    Clips of any length ``T`` are centred in the 1 s window; each is peak-normalised so that the classifier ignores
    the level.
    """

    def __init__(self, config: DigitClassifierConfig) -> None:
        super().__init__()
        self.config = config
        f = config.features
        fb = mel_filterbank(f.sample_rate, f.n_fft, f.n_mels, f.f_min, f.f_max, scale="htk", norm=None)
        self.register_buffer("filterbank", fb.float(), persistent=False)
        self.register_buffer("window", torch.hann_window(f.n_fft, periodic=True), persistent=False)
        blocks: list[nn.Module] = [nn.BatchNorm1d(f.n_mels)]  # learned per-band standardisation of the log-mel
        c_in, k = f.n_mels, config.kernel_size
        for c in config.channels:
            blocks += [nn.Conv1d(c_in, c, k, padding=k // 2, bias=False), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(2)]
            c_in = c
        self.conv = nn.Sequential(*blocks)
        self.project = nn.Sequential(nn.Linear(c_in, config.feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` → ``[B, n_mels, frames]`` (the fixed front end of the module docstring)."""
        f = self.config.features
        if wav.shape[-1] != f.num_samples:
            wav = torch.stack([fit_to_window(w, f.num_samples) for w in wav])
        wav = wav / wav.abs().amax(dim=-1, keepdim=True).clamp(min=1e-4)
        spec = torch.stft(
            wav, f.n_fft, f.hop_length, window=self.window, center=True, pad_mode="constant", return_complex=True
        ).abs()
        return (self.filterbank @ spec).clamp(min=f.log_floor).log()

    def logits_and_features(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T]`` → (logits ``[B, C]``, penultimate features ``[B, feature_dim]``)."""
        h = self.conv(self.log_mel(wav)).mean(dim=-1)
        feats = self.project(h)
        return self.head(self.dropout(feats)), feats

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        return self.logits_and_features(wav)[1]

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.logits_and_features(wav)[0]


# ---------------------------------------------------------------------------------------------------------------
# Data and training


def split_fsdd_files(
    files: Sequence[str | os.PathLike], val_indices: range = range(5, 10)
) -> tuple[list[Path], list[Path]]:
    """Split FSDD files by clip index: ``val_indices`` (default 5-9, i.e. 5 clips of every speaker and digit)
    for validation, the rest for training. FSDD's official test part (index 0-4) should not be among ``files``."""
    train, val = [], []
    for f in files:
        m = _FSDD_NAME.match(Path(f).stem)
        if not m:
            raise ValueError(f"{f}: not an FSDD file name (expected {{digit}}_{{speaker}}_{{index}}.wav)")
        (val if int(m.group(3)) in val_indices else train).append(Path(f))
    return sorted(train), sorted(val)


def _load_clips(
    files: Sequence[str | os.PathLike], labels: Sequence[int] | None, sr: int
) -> tuple[list[torch.Tensor], list[int]]:
    if labels is not None and len(labels) != len(files):
        raise ValueError(f"got {len(labels)} labels for {len(files)} files")
    wavs, kept, skipped = [], [], 0
    for i, f in enumerate(files):
        try:
            wav, _ = load_audio(f, sr)
        except AudioError as e:
            log.warning("skipping %s", e)
            skipped += 1
            continue
        wavs.append(wav)
        kept.append(int(labels[i]) if labels is not None else fsdd_label(f))
    if skipped:
        log.warning("skipped %d of %d digit clips", skipped, len(files))
    if not wavs:
        raise ValueError("no usable digit clips")
    return wavs, kept


def _random_window(wavs: list[torch.Tensor], n: int, g: torch.Generator) -> torch.Tensor:
    """Training augmentation: each clip at a random position in the window (a random crop when longer)."""
    out = []
    for w in wavs:
        slack = abs(n - w.shape[-1])
        shift = int(torch.randint(0, slack + 1, (), generator=g))
        out.append(fit_to_window(w, n, shift if w.shape[-1] < n else -shift))
    return torch.stack(out)


@torch.no_grad()
def _accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
    return correct / len(x)


def train_digit_classifier(
    files: Sequence[str | os.PathLike],
    out_path: str | os.PathLike | None,
    epochs: int = 30,
    *,
    val_files: Sequence[str | os.PathLike] | None = None,
    labels: Sequence[int] | None = None,
    val_labels: Sequence[int] | None = None,
    config: DigitClassifierConfig | None = None,
    batch_size: int = 32,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> tuple[DigitClassifier, dict[str, Any]]:
    """Train a :class:`DigitClassifier` on labelled clips: ``labels`` (e.g. SC09's folder names mapped to digits)
    or, by default, the leading digit of FSDD names ``{digit}_{speaker}_{index}.wav``.

    AdamW with a one-cycle learning rate (warm-up then cosine decay), cross-entropy, random placement of each
    clip in the 1 s window (augmentation).
    When ``out_path`` is given, writes a weights-only checkpoint there (atomically): ``{"format", "kind", "step",
    "config", "model", "val_accuracy"}``.

    Returns:
        the trained model in eval mode and a history ``{"loss": [per epoch], "val_accuracy": [per epoch] | [],
        "train_clips": n, "val_clips": n}``.
    """
    config = config or DigitClassifierConfig()
    f = config.features
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # initial weights and dropout
    wavs, labels_kept = _load_clips(files, labels, f.sample_rate)
    y = torch.tensor(labels_kept)
    if int(y.max()) >= config.num_classes:
        raise ValueError(f"label {int(y.max())} does not fit num_classes={config.num_classes}")
    val_x = val_y = None
    if val_files:
        vw, vl = _load_clips(val_files, val_labels, f.sample_rate)
        val_x, val_y = prepare_batch(vw, f), torch.tensor(vl)
    model = DigitClassifier(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(wavs) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))
    history: dict[str, Any] = {
        "loss": [],
        "val_accuracy": [],
        "train_clips": len(wavs),
        "val_clips": 0 if val_x is None else len(val_x),
    }
    step = 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(wavs), generator=g)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = _random_window([wavs[int(j)] for j in idx], f.num_samples, g)
            loss = F.cross_entropy(model(x), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += float(loss.detach()) * len(idx)
        history["loss"].append(total / len(wavs))
        if val_x is not None:
            history["val_accuracy"].append(_accuracy(model, val_x, val_y, 256))
            log.info(
                "epoch %d: loss %.4f, val accuracy %.3f",
                len(history["loss"]), history["loss"][-1], history["val_accuracy"][-1],
            )
    model.eval()
    if out_path is not None:
        state = {
            "format": 1,
            "kind": CHECKPOINT_KIND,
            "step": step,
            "config": config.to_dict(),
            "model": model.state_dict(),
            "val_accuracy": history["val_accuracy"][-1] if history["val_accuracy"] else None,
        }
        atomic_write(out_path, lambda fh: torch.save(state, fh))
    return model, history


def load_digit_classifier(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DigitClassifier:
    """Rebuild a classifier from its checkpoint (``weights_only`` load, model built from the stored config)."""
    state = load_checkpoint(path, map_location)
    if state.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path}: not a digit-classifier checkpoint (kind {state.get('kind')!r})")
    model = DigitClassifier(DigitClassifierConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Metrics on classifier outputs (numpy, float64)


@torch.no_grad()
def classifier_outputs(
    classifier: DigitClassifier,
    wavs: Sequence[Wave] | torch.Tensor,
    sr: int | None = None,
    batch_size: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``[N, C]`` and penultimate features ``[N, D]`` (float64) of ``N`` clips ``[T_i]``
    (resampled from ``sr`` to the classifier's rate when they differ)."""
    f = classifier.config.features
    classifier.eval()
    device = next(classifier.parameters()).device
    clips = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in wavs]
    if not clips:
        raise ValueError("no clips to classify")
    if sr is not None and sr != f.sample_rate:
        clips = [AF.resample(c, int(sr), f.sample_rate) for c in clips]
    probs, feats = [], []
    for i in range(0, len(clips), batch_size):
        logits, h = classifier.logits_and_features(prepare_batch(clips[i : i + batch_size], f).to(device))
        probs.append(logits.double().softmax(-1).cpu())
        feats.append(h.double().cpu())
    return torch.cat(probs).numpy(), torch.cat(feats).numpy()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID between Gaussians fitted to two feature sets ``[N, D]``, ``[M, D]`` (Heusel et al. 2017, eq. 6).

    The matrix square root is ``scipy.linalg.sqrtm``; when the product is near-singular its result is recomputed
    with ``1e-6`` added to both diagonals (as in the reference TTUR code), and the imaginary round-off dropped.
    """
    from scipy import linalg

    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets [N>=2, D] of the same D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        # ReLU features often have dead units, hence singular covariances; sqrtm still returns the root
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s_a @ s_b)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(s_a)) * 1e-6
            covmean = linalg.sqrtm((s_a + offset) @ (s_b + offset))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))


def _check_probs(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, np.float64)
    if p.ndim != 2 or len(p) == 0 or not np.allclose(p.sum(1), 1.0, atol=1e-6) or (p < 0).any():
        raise ValueError(f"expected probabilities [N, C] with rows summing to 1, got shape {p.shape}")
    return p


def _xlogy(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p * log q`` with ``0 log q = 0`` and ``log`` floored at 1e-12."""
    return np.where(p > 0, p * np.log(np.maximum(q, _EPS)), 0.0)


def inception_score(probs: np.ndarray) -> float:
    """IS = ``exp(mean_i KL(p_i || p̄))`` (Salimans et al. 2016), from 1 (all alike) to C (confident, balanced)."""
    p = _check_probs(probs)
    marginal = p.mean(0, keepdims=True)
    kl = (_xlogy(p, p) - _xlogy(p, marginal)).sum(1)
    return float(np.exp(kl.mean()))


def modified_inception_score(probs: np.ndarray) -> float:
    """mIS = ``exp(E_{i != j} KL(p_i || p_j))`` over all ordered pairs of distinct samples (Gurumurthy et al. 2017,
    DeLiGAN): rewards diversity within a class as well as between classes. Needs at least two samples."""
    p = _check_probs(probs)
    n = len(p)
    if n < 2:
        raise ValueError("modified_inception_score needs at least two samples")
    neg_entropy = _xlogy(p, p).sum(1)  # [N]: sum_c p_ic log p_ic
    cross = p @ np.log(np.maximum(p, _EPS)).T  # [N, N]: sum_c p_ic log p_jc
    kl = neg_entropy[:, None] - cross
    np.fill_diagonal(kl, 0.0)
    return float(np.exp(kl.sum() / (n * (n - 1))))


def am_score(probs: np.ndarray, reference_probs: np.ndarray) -> float:
    """AM score = ``KL(p̄_ref || p̄) + mean_i H(p_i)`` (Zhou et al. 2018, eq. 9): 0 for confident predictions whose
    class frequencies match the reference's; ``p̄_ref`` is the mean prediction on the real (training) clips."""
    p, r = _check_probs(probs), _check_probs(reference_probs)
    marg, ref = p.mean(0), r.mean(0)
    kl = float((_xlogy(ref, ref) - _xlogy(ref, marg)).sum())
    entropy = float(-_xlogy(p, p).sum(1).mean())
    return kl + entropy


def kmeans(x: np.ndarray, k: int, n_iter: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007), squared Euclidean distance.

    Args:
        x: ``[N, D]`` points, ``N >= k``.
    Returns:
        centroids ``[k, D]`` and the label ``[N]`` of each point. An emptied cluster is re-seeded at the point
        farthest from its centroid.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= N, got k={k}, N={n}")
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(n)]]
    d2 = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        i = rng.choice(n, p=d2 / d2.sum()) if d2.sum() > 0 else rng.integers(n)
        centroids.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    c = np.stack(centroids)
    labels = np.full(n, -1)
    for _ in range(n_iter):
        dist = _sq_dist(x, c)
        new = dist.argmin(1)
        if (new == labels).all():
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(0)
            else:
                far = dist[np.arange(n), labels].argmax()
                c[j] = x[far]
    return c, labels


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None], 0.0)


def ndb_score(
    reference_feats: np.ndarray, generated_feats: np.ndarray, bins: int = 20, alpha: float = 0.05, seed: int = 0
) -> dict[str, float]:
    """Number of statistically different bins (Richardson & Weiss 2018).

    The reference features (standardised by their own mean and std) are clustered into ``bins`` k-means cells;
    each generated feature goes to its nearest centroid. For each bin, the proportions ``P`` (reference, ``n_r``
    samples) and ``Q`` (generated, ``n_g``) are compared by the two-proportion z-test
    ``z = (P - Q) / sqrt(p̂ (1 - p̂) (1/n_r + 1/n_g))`` with pooled ``p̂``; a bin differs when its two-sided
    p-value is below ``alpha``.

    Returns:
        ``{"ndb": count, "ndb_k": count / bins, "bins": bins}``.
    """
    from scipy.stats import norm

    r, g = np.asarray(reference_feats, np.float64), np.asarray(generated_feats, np.float64)
    mu, sd = r.mean(0), r.std(0) + 1e-8
    r, g = (r - mu) / sd, (g - mu) / sd
    centroids, r_labels = kmeans(r, bins, seed=seed)
    g_labels = _sq_dist(g, centroids).argmin(1)
    n_r, n_g = len(r), len(g)
    P = np.bincount(r_labels, minlength=bins) / n_r
    Q = np.bincount(g_labels, minlength=bins) / n_g
    pooled = (P * n_r + Q * n_g) / (n_r + n_g)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_r + 1 / n_g))
    z = np.divide(P - Q, se, out=np.zeros_like(P), where=se > 0)
    different = int((2 * norm.sf(np.abs(z)) < alpha).sum())
    return {"ndb": float(different), "ndb_k": different / bins, "bins": float(bins)}


def digit_metrics(
    generated_wavs: Sequence[Wave] | torch.Tensor,
    reference_wavs: Sequence[Wave] | torch.Tensor,
    classifier: DigitClassifier,
    *,
    sr: int | None = None,
    ndb_bins: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """The DiffWave paper's Table 2 metrics of generated clips against real (training) clips.

    Args:
        generated_wavs, reference_wavs: clips ``[T_i]`` (or a ``[N, T]`` tensor) at ``sr`` (default: the
            classifier's rate).
    Returns:
        ``fid``, ``is``, ``mis``, ``am``, ``ndb``, ``ndb_k`` (NDB/K), ``ndb_bins``, and for context the reference
        set's own ``reference_is`` and ``reference_mis``, ``n_generated``, ``n_reference``.
    """
    p_g, h_g = classifier_outputs(classifier, generated_wavs, sr)
    p_r, h_r = classifier_outputs(classifier, reference_wavs, sr)
    ndb = ndb_score(h_r, h_g, bins=ndb_bins, seed=seed)
    return {
        "fid": frechet_distance(h_g, h_r),
        "is": inception_score(p_g),
        "mis": modified_inception_score(p_g),
        "am": am_score(p_g, p_r),
        "ndb": ndb["ndb"],
        "ndb_k": ndb["ndb_k"],
        "ndb_bins": float(ndb_bins),
        "reference_is": inception_score(p_r),
        "reference_mis": modified_inception_score(p_r),
        "n_generated": float(len(p_g)),
        "n_reference": float(len(p_r)),
    }
