"""Weighted k-nearest-neighbour classification on L2-normalised features with FAISS.

Temperature-weighted voting follows Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", §3.4): each of the k neighbours votes for its class with weight exp(sim / T).
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from sslkit.errors import UserError


def _normalised(x: torch.Tensor) -> np.ndarray:
    x = torch.as_tensor(x).detach().float().cpu()
    if not torch.isfinite(x).all():
        raise UserError("features contain NaN or Inf — the encoder diverged; evaluate an earlier checkpoint")
    return np.ascontiguousarray(torch.nn.functional.normalize(x, dim=1).numpy())


def knn_search(bank: torch.Tensor, queries: torch.Tensor, k: int, chunk_size: int = 4096,
               exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and indices of the k nearest bank rows for each query (exact, inner product).

    Args:
        bank: features to search.
        queries: features to look up.
        k: neighbours per query.
        chunk_size: queries searched at a time (bounds memory for large query sets).
        exclude_self: the queries are the bank itself; drop each query's own row.

    Shape:
        bank: (N, D), queries: (Q, D) -> sims (Q, k) float32, idx (Q, k) int64
    """
    n = bank.shape[0]
    if k < 1 or k > n - int(exclude_self):
        raise UserError(f"k={k} neighbours asked of a bank of {n} — use 1 ≤ k ≤ {n - int(exclude_self)}")
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    b, q = _normalised(bank), _normalised(queries)
    index = faiss.IndexFlatIP(b.shape[1])
    index.add(b)
    kk = k + int(exclude_self)
    sims, idx = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    for i in range(0, len(q), chunk_size):
        s, j = index.search(q[i:i + chunk_size], kk)
        if exclude_self:
            own = np.arange(i, i + len(s))[:, None]
            keep = j != own
            keep[keep.sum(1) > k, -1] = False  # self not among the kk: drop the farthest instead
            s, j = s[keep].reshape(len(s), k), j[keep].reshape(len(s), k)
        sims[i:i + len(s)], idx[i:i + len(s)] = s, j
    return torch.from_numpy(sims), torch.from_numpy(idx)


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, weighted: bool = True,
                chunk_size: int = 4096, exclude_self: bool = False) -> torch.Tensor:
    """Predicted class per query by weighted (or plain majority) vote of its k nearest neighbours.

    Shape:
        bank: (N, D), bank_labels: (N,), queries: (Q, D) -> (Q,) int64
    """
    labels = torch.as_tensor(bank_labels).long().cpu()
    c = int(num_classes or int(labels.max()) + 1)
    sims, idx = knn_search(bank, queries, min(k, bank.shape[0] - int(exclude_self)), chunk_size, exclude_self)
    preds = []
    for i in range(0, len(sims), chunk_size):
        s, j = sims[i:i + chunk_size], idx[i:i + chunk_size]
        w = torch.exp((s - 1) / temperature) if weighted else torch.ones_like(s)  # −1: no overflow, same argmax
        preds.append(torch.zeros(len(s), c).scatter_add_(1, labels[j], w).argmax(1))
    return torch.cat(preds)


def knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
             k: int = 20, temperature: float = 0.07, weighted: bool = True) -> float:
    """Top-1 accuracy of :func:`knn_predict` on labeled queries."""
    pred = knn_predict(bank, bank_labels, queries, k, temperature, weighted=weighted)
    return float((pred == torch.as_tensor(query_labels).cpu()).float().mean())
