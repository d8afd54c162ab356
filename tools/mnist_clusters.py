"""Label MNIST digits by clusters found without their annotations, for a self-conditioned unconditional model.

    python tools/mnist_clusters.py --data ../shared/data/mnist/train.npz --out runs/mnist_clusters.npz

k-means (scikit-learn, ``--clusters`` centres, fixed seed) on the first ``--fit`` digits' pixels projected onto
their 50 leading principal components. The annotated labels are never read for the clustering; they are only
compared with the clusters afterwards (purity, printed) so a reader sees what the clusters captured. The output
``.npz`` holds every digit of ``--data`` (``images`` unchanged) with ``labels`` replaced by cluster ids (digits past
``--fit``, the held-out reference of the FID benchmark, get their nearest centre's id; no recipe trains on them) and
``class_prior``, the clusters' frequencies over the fitted digits. The tool prints that prior as the YAML line a
recipe's ``model.class_prior`` takes: a model trained on these labels and sampled with labels drawn from it
generates the data's mixture p(x) = Σ_c p(c) p(x | c) (Hu et al. 2023, "Self-Guided Diffusion Models").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def cluster_digits(images: np.ndarray, k: int, fit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ids ``[N]`` (int64) for uint8 digits ``[N, H, W]`` and the clusters' frequencies ``[k]`` over the
    first ``fit`` of them: k-means on the fitted digits' 50 leading principal components."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    if not 1 <= k <= fit <= images.shape[0]:
        raise ValueError(f"need 1 <= clusters ({k}) <= fitted digits ({fit}) <= digits ({images.shape[0]})")
    x = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
    pca = PCA(n_components=min(50, x.shape[1], fit), random_state=seed).fit(x[:fit])
    z = pca.transform(x)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(z[:fit])
    ids = km.predict(z).astype(np.int64)
    counts = np.bincount(ids[:fit], minlength=k).astype(np.float64)
    return ids, counts / counts.sum()


def purity(ids: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of digits whose annotated label is their cluster's most common one."""
    hits = 0
    for c in np.unique(ids):
        hits += np.bincount(labels[ids == c]).max()
    return hits / ids.size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="MNIST .npz with images [N, 28, 28] uint8")
    p.add_argument("--out", type=Path, required=True, help="where to write the .npz with cluster labels")
    p.add_argument("--clusters", type=int, default=20)
    p.add_argument("--fit", type=int, default=50_000, help="cluster the first FIT digits (the recipes' training part)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.data.is_file():
        raise SystemExit(f"{args.data} does not exist")
    with np.load(args.data, allow_pickle=False) as d:
        if "images" not in d:
            raise SystemExit(f"{args.data} has no 'images' array")
        images = d["images"]
        labels = d["labels"] if "labels" in d else None
    ids, prior = cluster_digits(images, args.clusters, args.fit, args.seed)
    # frequencies rounded for the recipe, the last one absorbing the rounding so that they sum to 1 exactly
    rounded = np.round(prior, 6)
    rounded[-1] = round(1.0 - float(rounded[:-1].sum()), 6)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, images=images, labels=ids.astype(np.uint8 if args.clusters <= 256 else np.int64),
             class_prior=rounded)
    print(f"{args.out}: {images.shape[0]} digits, {args.clusters} clusters fitted on the first {args.fit}")
    if labels is not None:
        print(f"purity against the annotated digits (not used for clustering): "
              f"{purity(ids[:args.fit], labels[:args.fit].astype(np.int64)):.3f}")
    print("model.class_prior: [" + ", ".join(f"{v:g}" for v in rounded) + "]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
