"""k-means on frozen features (FAISS), scored against the labels with scikit-learn's metrics.

Clustering runs on L2-normalised features (spherical k-means: centroids renormalised after each update), the
same cosine geometry as the k-NN and the silhouette. FAISS keeps the best of ``restarts`` runs by objective.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.metrics.cluster import contingency_matrix

from sslkit.errors import UserError
from sslkit.evaluation.knn import unit_rows


def kmeans(x: torch.Tensor, k: int, seed: int = 0, restarts: int = 5, iters: int = 50) -> torch.Tensor:
    """Spherical k-means cluster of every row (best of ``restarts`` seeded runs).

    Raises:
        UserError: NaN/Inf features, or fewer rows than clusters.

    Shape:
        (N, D) -> (N,) int64
    """
    z = unit_rows(x, "k-means features")
    if not 1 <= k <= len(z):
        raise UserError(f"k-means with k={k} needs at least k feature rows, got {len(z)} — lower k")
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    # min_points_per_centroid=1 silences FAISS's warning for small sets; the max keeps it from subsampling.
    km = faiss.Kmeans(z.shape[1], k, niter=iters, nredo=restarts, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=10**9)
    km.train(z)
    _, assign = km.index.search(z, 1)
    return torch.from_numpy(assign[:, 0].astype(np.int64))


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Share of samples whose cluster's most frequent class is their own class."""
    m = contingency_matrix(labels, clusters)
    return float(m.max(axis=0).sum() / m.sum())


def hungarian_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes (Hungarian algorithm)."""
    m = contingency_matrix(labels, clusters)
    rows, cols = linear_sum_assignment(-m)
    return float(m[rows, cols].sum() / m.sum())


def cluster_metrics(x: torch.Tensor, labels: torch.Tensor, k: int | None = None, seed: int = 0,
                    restarts: int = 5, silhouette_sample: int = 10_000) -> dict[str, float | int]:
    """k-means, then how well the clusters separate (silhouette) and match the classes (NMI, ARI, purity).

    Args:
        x: features.
        labels: classes, used only to score the clusters.
        k: clusters; the number of distinct labels by default.
        seed: seeds k-means and the silhouette sample.
        restarts: k-means runs; the lowest-objective one is kept.
        silhouette_sample: the silhouette costs O(N²); above this many rows it is computed on a seeded random
            sample of this size, recorded as ``silhouette_n``.

    Raises:
        UserError: unlabeled rows (label −1), NaN/Inf features, or fewer rows than clusters.

    Returns:
        ``k``, ``silhouette`` (cosine; NaN with a single cluster), ``silhouette_n``, ``nmi``, ``ari``,
        ``purity`` and ``hungarian_acc``.

    Shape:
        x: (N, D), labels: (N,) -> metrics
    """
    y = torch.as_tensor(labels).cpu().long().numpy()
    if (y < 0).any():  # −1 would count as a class: in k, and in NMI, ARI and purity
        raise UserError(f"{int((y < 0).sum())} rows are unlabeled (label −1) — the cluster scores need labels; "
                        "select the labeled rows first")
    k = int(k or len(np.unique(y)))
    assign = kmeans(x, k, seed, restarts).numpy()
    n = len(y)
    z = unit_rows(x, "k-means features")
    n_sil = min(n, silhouette_sample)
    rows = np.random.default_rng(seed).choice(n, n_sil, replace=False) if n_sil < n else np.arange(n)
    if 1 < len(np.unique(assign[rows])) < n_sil:
        silhouette = float(silhouette_score(z[rows], assign[rows], metric="cosine"))
    else:
        silhouette = float("nan")  # undefined with one cluster, or one sample per cluster
    return {"k": k, "silhouette": silhouette, "silhouette_n": int(n_sil),
            "nmi": float(normalized_mutual_info_score(y, assign)), "ari": float(adjusted_rand_score(y, assign)),
            "purity": purity(y, assign), "hungarian_acc": hungarian_accuracy(y, assign)}
