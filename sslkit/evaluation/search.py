"""Exact top-k inner-product search over L2-normalised rows: FAISS flat, or flat pruned by a certified bound.

A flat search multiplies every query with every bank row in all D dimensions. Features of a trained encoder
hold most of their energy in few directions (512-d Fashion-MNIST features: 96–97 % in 64), and for unit vectors
q, x and an orthonormal basis P (D × r) of such directions Cauchy–Schwarz gives

    q·x = (Pᵀq)·(Pᵀx) + q⊥·x⊥ ≤ (Pᵀq)·(Pᵀx) + ‖q⊥‖‖x⊥‖,     q⊥ = q − PPᵀq.

Appending ‖x⊥‖ to each bank row's r coordinates and ‖q⊥‖ to each query's turns that upper bound into one
inner product in r + 1 dimensions. :class:`PrunedFlatIP` searches those (D / (r + 1) times less arithmetic)
for the 2c rows of largest bound (c = 2k + 32), re-scores the first c exactly in D dimensions, and keeps a
query's top k only when a certificate holds: its k-th exact similarity is at least the (c + 1)-th largest bound
plus a rounding margin, so no row left out can be more similar. A query without it has the next c rows
re-scored, from the same bound search (fetching 2c bounds instead of c costs the bound search almost nothing,
where searching again would cost it all), and is certified against the (2c + 1)-th bound. Queries still
without a certificate are searched again with 4c, and so on; once that would be half the bank (features with
a flat spectrum, e.g. random ones) they are searched flat. Results are therefore those of
``faiss.IndexFlatIP`` (up to ties and float rounding) for any input; only the time depends on the spectrum.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

#: Bound slack for float32 rounding of the D-dimensional and (r + 1)-dimensional products of unit vectors.
ROUNDING_MARGIN = 1e-4


def first_candidates(k: int) -> int:
    """c: the rows of largest bound :class:`PrunedFlatIP` re-scores first for k neighbours (it fetches 2c + 1)."""
    return 2 * k + 32


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class PrunedFlatIP:
    """Exact inner-product k-NN over unit bank rows via a certified low-rank bound (see the module docstring).

    Args:
        bank: (N, D) L2-normalised float32 rows; kept by reference, not copied.
        rank: r, the directions kept for the bound (the top principal directions of up to ``sample`` rows;
            any orthonormal basis keeps the bound valid, a good one keeps it tight).
        sample: rows used to estimate the directions.
        groups: k-means groups by which the bank is stored and queries are ordered, for cache reuse during
            re-scoring (0: none); needs N ≥ 39 · groups.

    Attributes:
        retries: query searches so far that needed more than their first c candidates re-scored.
        widened: query searches so far whose 2c candidates did not certify, so that the bound search was repeated
            with more (each also counts as a retry).
        fallbacks: queries so far that no candidate set certified and were searched flat.
    """

    def __init__(self, bank: np.ndarray, rank: int = 64, sample: int = 4096, groups: int = 64) -> None:
        self.bank = _as_f32(bank)
        n, d = self.bank.shape
        if not 1 <= rank < d:
            raise ValueError(f"rank must be in [1, {d}), got {rank}")
        b = torch.from_numpy(self.bank)
        rows = b if n <= sample else b[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:sample]]
        vals, vecs = torch.linalg.eigh((rows.T @ rows).double())  # ascending eigenvalues, orthonormal vectors
        self.basis = vecs[:, -rank:].float().contiguous()
        #: share of the rows' energy in the basis (1 − the mean squared residual norm of the sampled unit rows)
        self.captured = float(vals[-rank:].sum() / vals.sum().clamp_min(1e-30))
        coords = self._bound_coords(b)
        # Re-scoring reads each query's candidate rows at random from a bank larger than the cache. Similar rows
        # are stored together (grouped by k-means in the basis) and similar queries searched one after another,
        # so that consecutive queries find their candidates already cached. Costs one copy of the bank.
        self.groups: faiss.IndexFlatL2 | None = None
        self.order = np.arange(n)
        if groups and n >= 39 * groups:  # FAISS wants ≥ 39 training points per centroid
            km = faiss.Kmeans(rank, groups, niter=8, seed=0)
            km.train(np.ascontiguousarray(coords[:, :-1]))
            self.groups = km.index
            self.order = np.argsort(self.groups.search(np.ascontiguousarray(coords[:, :-1]), 1)[1][:, 0],
                                    kind="stable")
            self.sorted_bank, coords = self.bank[self.order], coords[self.order]
        else:
            self.sorted_bank = self.bank
        self.low = faiss.IndexFlatIP(rank + 1)
        self.low.add(coords)
        self.retries = 0
        self.widened = 0
        self.fallbacks = 0

    def _bound_coords(self, x: torch.Tensor, chunk: int = 16384) -> np.ndarray:
        """(M, r + 1): the r coordinates in the basis and the norm of what the basis leaves out."""
        out = np.empty((len(x), self.basis.shape[1] + 1), np.float32)
        for s in range(0, len(x), chunk):
            xs = x[s:s + chunk]
            p = xs @ self.basis
            out[s:s + len(xs), :-1] = p.numpy()
            out[s:s + len(xs), -1] = torch.linalg.vector_norm(xs - p @ self.basis.T, dim=1).numpy()
        return out

    def _flat_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss.knn(q, self.bank, k, metric=faiss.METRIC_INNER_PRODUCT)  # no copy of the bank

    def _rescore(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top k of each query among its candidate rows (positions in ``sorted_bank``)."""
        cand = np.ascontiguousarray(cand)
        sims = np.empty((len(q), k), np.float32)
        pos = np.empty((len(q), k), np.int64)
        faiss.knn_inner_products_by_idx(
            faiss.swig_ptr(q), faiss.swig_ptr(self.sorted_bank), faiss.swig_ptr(cand), q.shape[1], len(q),
            self.bank.shape[0], cand.shape[1], k, faiss.swig_ptr(sims), faiss.swig_ptr(pos), cand.shape[1])
        return sims, pos

    def _certified(self, q: np.ndarray, coords: np.ndarray, k: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k of each query from the rows of largest bound: its first c re-scored, then its next c where the
        first do not certify, then again with 4c, and flat once 8c would be more than half the bank."""
        n = self.bank.shape[0]
        bound, cand = self.low.search(coords, 2 * c + 1)
        sims, pos = self._rescore(q, cand[:, :c], k)
        bad = np.flatnonzero(sims[:, -1] < bound[:, c] + ROUNDING_MARGIN)
        if len(bad):
            self.retries += len(bad)
            more_sims, more_pos = self._rescore(np.ascontiguousarray(q[bad]), cand[bad, c:2 * c], k)
            both_sims = np.concatenate([sims[bad], more_sims], axis=1)
            both_pos = np.concatenate([pos[bad], more_pos], axis=1)
            top = np.argsort(-both_sims, axis=1, kind="stable")[:, :k]  # the first c's rows first among ties
            sims[bad] = np.take_along_axis(both_sims, top, axis=1)
            pos[bad] = np.take_along_axis(both_pos, top, axis=1)
            bad = bad[sims[bad, -1] < bound[bad, 2 * c] + ROUNDING_MARGIN]
        idx = self.order[pos]
        if len(bad):
            again = np.ascontiguousarray(q[bad])
            if 8 * c + 1 <= n // 2:
                self.widened += len(bad)
                sims[bad], idx[bad] = self._certified(again, np.ascontiguousarray(coords[bad]), k, 4 * c)
            else:
                sims[bad], idx[bad] = self._flat_search(again, k)
                self.fallbacks += len(bad)
        return sims, idx

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Like ``faiss.IndexFlatIP.search``: (Q, k) similarities, most similar first, and bank row indices."""
        q = _as_f32(queries)
        n = self.bank.shape[0]
        c = first_candidates(k)
        if 2 * c + 1 > n // 2:  # little to prune: the flat search is cheaper
            return self._flat_search(q, k)
        coords = self._bound_coords(torch.from_numpy(q))
        if self.groups is not None:  # similar queries one after another (see __init__)
            visit = np.argsort(self.groups.search(np.ascontiguousarray(coords[:, :-1]), 1)[1][:, 0], kind="stable")
            q, coords = q[visit], coords[visit]
        sims, idx = self._certified(q, coords, k, c)
        if self.groups is not None:
            back = np.empty_like(visit)
            back[visit] = np.arange(len(visit))
            sims, idx = sims[back], idx[back]
        return sims, idx


def exact_index(bank: np.ndarray, queries: int, k: int, rank: int | None = None) -> faiss.IndexFlatIP | PrunedFlatIP:
    """The faster exact searcher for ``queries`` searches of k among the (N, D) unit ``bank`` rows.

    Pruning pays when the flat search is big (≥ 10⁸ query-row pairs), the dimension leaves room for a bound of
    rank ``rank`` (default 64, or 96 for k ≥ 50; D ≥ 4·rank), k is small against N, and the top ``rank``
    directions hold ≥ 95 % of the bank's energy (else most queries would fail the certificate and be searched
    twice); otherwise a plain ``faiss.IndexFlatIP``.
    """
    n, d = bank.shape
    many = k >= 50  # many candidates to re-score: a tighter bound (fewer retries) and grouped storage pay
    rank = rank or (96 if many else 64)
    c = first_candidates(k)  # PrunedFlatIP fetches 2c + 1 bounds
    if queries * n >= 10**8 and d >= 4 * rank and 2 * (2 * c + 1) <= n:
        pruned = PrunedFlatIP(bank, rank, groups=64 if many else 0)
        if pruned.captured >= 0.95:
            return pruned
    index = faiss.IndexFlatIP(d)
    index.add(_as_f32(bank))
    return index
