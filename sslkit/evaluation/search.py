"""Exact top-k inner-product search over L2-normalised rows: FAISS flat, or flat pruned by a certified bound.

A flat search multiplies every query with every bank row in all D dimensions. Features of a trained encoder
hold most of their energy in few directions (512-d Fashion-MNIST features: 98 % in 64), and for unit vectors
q, x and an orthonormal basis P (D × r) of such directions Cauchy–Schwarz gives

    q·x = (Pᵀq)·(Pᵀx) + q⊥·x⊥ ≤ (Pᵀq)·(Pᵀx) + ‖q⊥‖‖x⊥‖,     q⊥ = q − PPᵀq.

Appending ‖x⊥‖ to each bank row's r coordinates and ‖q⊥‖ to each query's turns that upper bound into one
inner product in r + 1 dimensions. :class:`PrunedFlatIP` searches those (D / (r + 1) times less arithmetic)
for the c = 2k + 32 rows of largest bound, re-scores them exactly in D dimensions, and keeps a query's top k
only when a certificate holds: its k-th exact similarity is at least the (c + 1)-th largest bound plus a
rounding margin, so no row left out can be more similar. Queries without the certificate (features with a
flat spectrum, e.g. random ones) are searched again by the flat index. Results are therefore those of
``faiss.IndexFlatIP`` (up to ties and float rounding) for any input; only the time depends on the spectrum.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

#: Bound slack for float32 rounding of the D-dimensional and (r + 1)-dimensional products of unit vectors.
ROUNDING_MARGIN = 1e-4


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class PrunedFlatIP:
    """Exact inner-product k-NN over unit bank rows via a certified low-rank bound (see the module docstring).

    Args:
        bank: (N, D) L2-normalised float32 rows; kept by reference, not copied.
        rank: r, the directions kept for the bound (the top principal directions of up to ``sample`` rows;
            any orthonormal basis keeps the bound valid, a good one keeps it tight).
        sample: rows used to estimate the directions.

    Attributes:
        fallbacks: queries so far whose candidates could not be certified and were searched flat.
    """

    def __init__(self, bank: np.ndarray, rank: int = 64, sample: int = 4096) -> None:
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
        self.low = faiss.IndexFlatIP(rank + 1)
        self.low.add(self._bound_coords(b))
        self.fallbacks = 0

    @property
    def ntotal(self) -> int:
        return self.bank.shape[0]

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

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Like ``faiss.IndexFlatIP.search``: (Q, k) similarities, most similar first, and bank row indices."""
        q = _as_f32(queries)
        n = self.bank.shape[0]
        c = 2 * k + 32
        if c + 1 > n // 2:  # little to prune: the flat search is cheaper
            return self._flat_search(q, k)
        bound, cand = self.low.search(self._bound_coords(torch.from_numpy(q)), c + 1)
        sims = np.empty((len(q), k), np.float32)
        idx = np.empty((len(q), k), np.int64)
        faiss.knn_inner_products_by_idx(
            faiss.swig_ptr(q), faiss.swig_ptr(self.bank), faiss.swig_ptr(cand), q.shape[1], len(q), n, c, k,
            faiss.swig_ptr(sims), faiss.swig_ptr(idx), c + 1)
        bad = sims[:, -1] < bound[:, c] + ROUNDING_MARGIN
        if bad.any():
            sims[bad], idx[bad] = self._flat_search(np.ascontiguousarray(q[bad]), k)
            self.fallbacks += int(bad.sum())
        return sims, idx


def exact_index(bank: np.ndarray, queries: int, k: int, rank: int = 64) -> faiss.IndexFlatIP | PrunedFlatIP:
    """The faster exact searcher for ``queries`` searches of k among the (N, D) unit ``bank`` rows.

    Pruning pays when the flat search is big (≥ 10⁸ query-row pairs), the dimension leaves room for a bound of
    rank ``rank`` (D ≥ 4·rank), k is small against N, and the top ``rank`` directions hold ≥ 95 % of the bank's
    energy (else most queries would fail the certificate and be searched twice); otherwise a plain
    ``faiss.IndexFlatIP``.
    """
    n, d = bank.shape
    if queries * n >= 10**8 and d >= 4 * rank and 2 * (2 * k + 33) <= n:
        pruned = PrunedFlatIP(bank, rank)
        if pruned.captured >= 0.95:
            return pruned
    index = faiss.IndexFlatIP(d)
    index.add(_as_f32(bank))
    return index
