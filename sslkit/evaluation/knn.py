"""k-nearest-neighbour classification of frozen features: exact cosine search with FAISS, then a vote.

Temperature-weighted voting follows Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", §3.4): each of the k neighbours votes for its class with weight exp(sim / T); with
``weighted=False`` every neighbour's vote counts once (plain majority, ties to the lowest class index).

Search is exact: inner products of L2-normalised float32 copies of the features (cosine similarities) by a
FAISS ``IndexFlatIP``, or, for large searches, the same flat search pruned by a certified low-rank bound
(:mod:`sslkit.evaluation.search`: same neighbours, far less arithmetic on trained features). Queries are
searched and voted ``chunk_size`` at a time, so memory beyond the bank stays O(chunk_size · k) however many
queries there are. FAISS returns neighbours sorted by similarity, which lets
one search with the largest k answer every smaller k exactly (:func:`knn_evaluate`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import faiss
import numpy as np
import torch

from sslkit.errors import UserError
from sslkit.evaluation.search import exact_index


def unit_rows(x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    """An L2-normalised float32 C-contiguous copy of (N, D) features; the caller's tensor is never modified.

    Raises:
        UserError: when a row holds NaN or Inf (``what`` names the features in the message).
    """
    x = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be (N, D), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise UserError(f"{what}: {bad} of {x.shape[0]} feature rows contain NaN or Inf — the encoder diverged; "
                        "evaluate an earlier checkpoint or retrain with a lower optim.lr")
    # normalize() returns a new tensor, and .numpy() of it shares memory with that copy only.
    return np.ascontiguousarray(torch.nn.functional.normalize(x, dim=1).numpy())


def _set_threads() -> None:
    # FAISS and torch each bring an OpenMP runtime; without this FAISS would start one thread per core on top
    # of torch's pool. Matching torch's count keeps the two from oversubscribing the cores.
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))


def _search_chunks(bank: torch.Tensor | np.ndarray, queries: torch.Tensor | np.ndarray | None, k: int,
                   chunk_size: int, exclude_self: bool) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yields ``(start, sims, idx)`` for consecutive query chunks; ``queries=None`` searches the bank itself."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    b = unit_rows(bank, "bank features")
    q = b if queries is None else unit_rows(queries, "query features")
    n, usable = b.shape[0], b.shape[0] - int(exclude_self)
    if n == 0:
        raise UserError("the k-NN bank is empty — it needs labeled training features")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dimensions but the bank has {b.shape[1]}")
    if exclude_self and q.shape[0] != n:
        raise ValueError("exclude_self needs the queries to be the bank itself (same rows, same order)")
    if not 1 <= k <= usable:
        raise UserError(f"k={k} neighbours asked of a bank of {n} features"
                        f"{' (minus the query itself)' if exclude_self else ''} — use 1 ≤ k ≤ {max(usable, 0)}")
    _set_threads()
    index = exact_index(b, q.shape[0], k + int(exclude_self))
    for start in range(0, q.shape[0], chunk_size):
        sims, idx = index.search(q[start:start + chunk_size], k + int(exclude_self))
        if exclude_self:
            # Drop each query's own row; when a duplicate outranked it and it fell off the list, drop the
            # farthest neighbour instead so that exactly k remain.
            keep = idx != np.arange(start, start + len(idx))[:, None]
            keep[keep.all(axis=1), -1] = False
            sims, idx = sims[keep].reshape(len(idx), k), idx[keep].reshape(len(idx), k)
        yield start, sims, idx


def knn_search(bank: torch.Tensor, queries: torch.Tensor, k: int, chunk_size: int = 4096,
               exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine similarities and indices of the k most similar bank rows for each query.

    Args:
        bank: features to search (any scale; rows are L2-normalised on a copy).
        queries: features to look up.
        k: neighbours per query, 1 ≤ k ≤ N (N − 1 with ``exclude_self``).
        chunk_size: queries searched at a time.
        exclude_self: the queries are the bank itself, row for row; drop each query's own row.

    Returns:
        ``(sims, idx)``, most similar first.

    Raises:
        UserError: NaN/Inf features, or k out of range.

    Shape:
        bank: (N, D), queries: (Q, D) -> sims (Q, k) float32, idx (Q, k) int64
    """
    sims = np.empty((len(queries), k), np.float32)
    idx = np.empty((len(queries), k), np.int64)
    for start, s, j in _search_chunks(bank, queries, k, chunk_size, exclude_self):
        sims[start:start + len(s)], idx[start:start + len(s)] = s, j
    return torch.from_numpy(sims), torch.from_numpy(idx)


def _labels(bank_labels: torch.Tensor, n: int) -> torch.Tensor:
    labels = torch.as_tensor(bank_labels).detach().to("cpu", torch.long)
    if labels.shape != (n,):
        raise ValueError(f"bank_labels must be ({n},), got shape {tuple(labels.shape)}")
    if n and int(labels.min()) < 0:
        raise UserError(f"{int((labels < 0).sum())} bank rows are unlabeled (label −1) — k-NN needs a labeled "
                        "bank; select the labeled rows first")
    return labels


def _query_labels(query_labels: torch.Tensor, q: int) -> torch.Tensor:
    """The queries' classes as a (Q,) int64 CPU tensor; a ValueError for any other shape, which ``==`` would broadcast
    against the (Q,) predictions into a (Q, Q) comparison and a meaningless accuracy."""
    labels = torch.as_tensor(query_labels).detach().to("cpu", torch.long)
    if labels.shape != (q,):
        raise ValueError(f"query_labels must be ({q},), one class per query, got shape {tuple(labels.shape)}")
    return labels


def _vote(sims: np.ndarray, idx: np.ndarray, labels: torch.Tensor, num_classes: int, temperature: float,
          weighted: bool) -> torch.Tensor:
    s, j = torch.from_numpy(sims), torch.from_numpy(idx)
    # exp((s − s_max)/T), s_max the row's nearest neighbour's, ranks classes exactly like exp(s/T) but cannot
    # overflow, and at a small T the nearest neighbours cannot all underflow to 0 (with exp((s − 1)/T) they did
    # below T ≈ 0.005, and every query went to class 0): the nearest weighs 1.
    w = torch.exp((s - s.amax(1, keepdim=True)) / temperature) if weighted else torch.ones_like(s)
    return torch.zeros(len(s), num_classes).scatter_add_(1, labels[j], w).argmax(1)


def _num_classes(labels: torch.Tensor, num_classes: int | None) -> int:
    """C: ``num_classes``, or one more than the largest bank label; a UserError where a label is C or more."""
    largest = int(labels.max()) if len(labels) else -1
    if not num_classes:
        return largest + 1 if len(labels) else 1
    if largest >= num_classes:
        raise UserError(f"k-NN num_classes is {num_classes} but the bank holds label {largest} — pass at least "
                        f"{largest + 1}, or leave it unset")
    return int(num_classes)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise UserError(f"k-NN temperature must be > 0, got {temperature}")


def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, weighted: bool = True,
                chunk_size: int = 4096, exclude_self: bool = False) -> torch.Tensor:
    """Predicted class of each query by a weighted (or plain majority) vote of its k nearest bank rows.

    Args:
        bank: labeled features.
        bank_labels: their classes, 0 … C − 1.
        queries: features to classify.
        k: neighbours; clipped to the bank size (an error when k < 1).
        temperature: T of the exp(sim / T) weights.
        num_classes: C; by default one more than the largest bank label.
        weighted: temperature-weighted vote (True) or plain majority (False).
        chunk_size: queries searched and voted at a time.
        exclude_self: the queries are the bank itself (leave-one-out).

    Shape:
        bank: (N, D), bank_labels: (N,), queries: (Q, D) -> (Q,) int64
    """
    _check_temperature(temperature)
    labels = _labels(bank_labels, len(bank))
    c = _num_classes(labels, num_classes)
    k = min(k, len(bank) - int(exclude_self)) if k >= 1 else k
    preds = [_vote(s, j, labels, c, temperature, weighted)
             for _, s, j in _search_chunks(bank, queries, k, chunk_size, exclude_self)]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
             k: int = 20, temperature: float = 0.07, weighted: bool = True) -> float:
    """Top-1 accuracy of :func:`knn_predict` on labeled queries.

    Shape:
        bank: (N, D), bank_labels: (N,), queries: (Q, D), query_labels: (Q,) -> ()
    """
    targets = _query_labels(query_labels, len(queries))
    pred = knn_predict(bank, bank_labels, queries, k, temperature, weighted=weighted)
    return float((pred == targets).float().mean())


def knn_evaluate(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                 ks: Sequence[int] = (20, 200), temperature: float = 0.07, majority: bool = True,
                 num_classes: int | None = None, chunk_size: int = 4096) -> dict[str, float]:
    """Top-1 of weighted (and majority) k-NN for several k from a single search with the largest k.

    Neighbours come sorted, so the first k of the largest-k list are exactly the k-NN list: one pass over the
    bank instead of one per k and vote rule.

    Returns:
        ``{"k20.top1": …, "k200.top1": …, "k20.majority.top1": …, …}``; a k larger than the bank is clipped, and
        the key keeps the k asked for.

    Shape:
        bank: (N, D), bank_labels: (N,), queries: (Q, D), query_labels: (Q,) -> metrics
    """
    _check_temperature(temperature)
    if not ks or min(ks) < 1:
        raise UserError(f"k-NN needs k ≥ 1, got {list(ks)}")
    labels = _labels(bank_labels, len(bank))
    targets = _query_labels(query_labels, len(queries))
    c = _num_classes(labels, num_classes)
    k_max = min(max(ks), len(bank))
    ks = list(dict.fromkeys(ks))  # a k given twice is one metric, not two counts summed into it
    rules = [(k, w) for k in ks for w in ((True, False) if majority else (True,))]
    correct = dict.fromkeys(rules, 0)
    for start, s, j in _search_chunks(bank, queries, k_max, chunk_size, False):
        y = targets[start:start + len(s)]
        for k, w in rules:
            kk = min(k, k_max)
            correct[k, w] += int((_vote(s[:, :kk], j[:, :kk], labels, c, temperature, w) == y).sum())
    n = len(targets)
    return {f"k{k}{'' if w else '.majority'}.top1": correct[k, w] / n if n else float("nan") for k, w in rules}
