"""FAISS indexes for cosine search over feature banks of any size: exact, IVF-Flat, HNSW and IVF-PQ.

Every index holds L2-normalised float32 copies of the features under the inner-product metric, so scores are
cosine similarities, as in :mod:`sslkit.evaluation.knn`. The kinds trade exactness for speed and memory
(Jégou et al. 2011 for IVF and product quantisation; Malkov & Yashunin 2018 for HNSW):

========== ===================================== ==================== =======================================
kind       search                                memory per vector    build
========== ===================================== ==================== =======================================
flat       exact, O(N) per query                 4·D bytes            instant
ivf-flat   ``nprobe`` of ``nlist`` cells, exact   4·D + 8 bytes        k-means on a sample, then assignment
           distances inside them
hnsw       greedy walk of a neighbour graph       4·D + ≈8·M bytes     slowest (graph insertion, O(N log N))
ivf-pq     as ivf-flat, on compressed codes       pq_m·pq_bits/8 + 8   k-means + PQ training, then encoding
========== ===================================== ==================== =======================================

``auto`` picks ``flat`` up to :data:`AUTO_FLAT_MAX` rows (exact search is then fast enough on a CPU and needs no
training), else ``ivf-flat``: the memory of flat, a build of one k-means on a sample plus one assignment pass,
and recall@10 near 1 at the default ``nprobe``. ``hnsw`` answers single queries fastest but costs more memory
and a build that grows as N log N; ``ivf-pq`` is for banks whose float32 vectors do not fit in memory.
``eval/bench_index.py`` measures all four. Features are normalised and added ``chunk_size`` rows at a time, so
building never holds a second full copy of the bank beyond the index itself.

The search-time settings (``nprobe``, ``efSearch``) are stored in the index and saved with it; :func:`search`
can override them per call without changing the index.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np
import torch

from sslkit.checkpoint import atomic_write
from sslkit.errors import UserError
from sslkit.evaluation.knn import unit_rows

INDEX_KINDS: tuple[str, ...] = ("auto", "flat", "ivf-flat", "hnsw", "ivf-pq")
AUTO_FLAT_MAX = 100_000  # rows up to which ``auto`` builds an exact index
MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this many training points per k-means centroid
TRAIN_POINTS_PER_LIST = 40  # training sample of the coarse quantiser: 40·nlist rows (FAISS advises 30–256)
HNSW_M = 32  # graph degree: FAISS's usual choice for 128–1024-d features
HNSW_EF_CONSTRUCTION = 40  # candidate list while inserting (FAISS's default); higher builds slower, a better graph
HNSW_EF_SEARCH = 128  # candidate list while searching; recall rises and speed falls with it


def default_nlist(n: int) -> int:
    """Inverted lists for ``n`` rows: 4·√n (FAISS's guideline), at most n / 39 so k-means has enough points."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // MIN_POINTS_PER_CENTROID))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: 1/64 of them, at least 16 (all when fewer). On the clustered 512-d features of
    ``eval/bench_index.py`` (50k rows, 894 lists) this finds 99.8% of the exact 10 neighbours; lower it for
    speed, raise it for recall."""
    return min(nlist, max(16, nlist // 64))


def default_pq_m(d: int) -> int:
    """Sub-quantisers of a PQ code: D, one per dimension — at the default 4 bits a code is D/2 bytes, 8× smaller
    than float32. ``pq_m=D/2`` halves the memory again at a loss of recall (recall@10 0.95 → 0.89 on the 50k
    rows of ``eval/bench_index.py``)."""
    return d


def _check_kind(kind: str) -> None:
    if kind not in INDEX_KINDS:
        raise UserError(f"unknown index kind {kind!r} — use one of: {', '.join(INDEX_KINDS)}")


def resolve_kind(kind: str, n: int) -> str:
    """The kind an index over ``n`` rows is built as: ``auto`` becomes ``flat`` or ``ivf-flat``, others stay (so that
    an ``auto`` index is kept and named as what it is).

    Raises:
        UserError: an unknown kind.
    """
    _check_kind(kind)
    if kind == "auto":
        return "flat" if n <= AUTO_FLAT_MAX else "ivf-flat"
    return kind


def _chunks(features: torch.Tensor | np.ndarray, chunk_size: int):
    for start in range(0, len(features), chunk_size):
        yield unit_rows(features[start:start + chunk_size], "features")


def _training_sample(features: torch.Tensor | np.ndarray, size: int, seed: int) -> np.ndarray:
    n = len(features)
    if size >= n:
        return unit_rows(features, "features")
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    if isinstance(features, torch.Tensor):
        return unit_rows(features[torch.from_numpy(rows)], "features")
    return unit_rows(features[rows], "features")


def build_index(features: torch.Tensor | np.ndarray, kind: str = "auto", *, nlist: int | None = None,
                nprobe: int | None = None, hnsw_m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION,
                ef_search: int = HNSW_EF_SEARCH, pq_m: int | None = None, pq_bits: int | None = None,
                train_size: int | None = None, seed: int = 0, chunk_size: int = 65_536) -> faiss.Index:
    """A FAISS inner-product index over L2-normalised copies of ``features`` (scores are cosines).

    Args:
        features: (N, D) features of any scale, a tensor or an array (a memory-mapped one works: it is read
            ``chunk_size`` rows at a time).
        kind: one of :data:`INDEX_KINDS`; ``auto`` is ``flat`` up to :data:`AUTO_FLAT_MAX` rows, else ``ivf-flat``.
        nlist: inverted lists of the IVF kinds; :func:`default_nlist` by default.
        nprobe: lists searched per query (stored in the index); :func:`default_nprobe` by default.
        hnsw_m: neighbours per node of the HNSW graph.
        ef_construction: HNSW candidate-list size while building.
        ef_search: HNSW candidate-list size while searching (stored in the index).
        pq_m: sub-quantisers of the IVF-PQ code (a divisor of D); :func:`default_pq_m` by default.
        pq_bits: bits per sub-quantiser. 4 (the default) uses FAISS's fast-scan kernels, which keep the look-up
            tables in SIMD registers; against 8-bit codes of the same size (half the sub-quantisers) they train
            and search several times faster at about the same recall. 5–8 builds a classic ``IndexIVFPQ``,
            whose 2^bits-centroid codebooks are slow to train (minutes at 8 bits and D/4 sub-quantisers).
        train_size: rows sampled to train the IVF kinds; ``40·nlist`` (at most N) by default.
        seed: seeds the training sample and k-means.
        chunk_size: rows normalised and added at a time.

    Returns:
        The trained index holding all N rows, in the order given (search returns row numbers).

    Raises:
        UserError: an unknown kind (the message lists the valid ones), no rows, NaN/Inf features, or an
            ``nlist``, ``pq_m`` or ``pq_bits`` out of range.

    Shape:
        (N, D) -> index with ntotal N, dimension D
    """
    _check_kind(kind)
    if getattr(features, "ndim", 0) != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(getattr(features, 'shape', ()))}")
    n, d = int(features.shape[0]), int(features.shape[1])
    if n == 0:
        raise UserError("cannot build an index over 0 feature rows — extract features first")
    kind = resolve_kind(kind, n)
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))  # see knn._set_threads: no oversubscription

    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        nlist = int(nlist or default_nlist(n))
        if not 1 <= nlist <= n:
            raise UserError(f"nlist={nlist} inverted lists for {n} rows — use 1 ≤ nlist ≤ {n} (default 4·√N)")
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf-flat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            need = nlist
        else:
            pq_m = int(pq_m or default_pq_m(d))
            if pq_m < 1 or d % pq_m:
                raise UserError(f"pq_m={pq_m} does not divide the feature dimension {d} — use a divisor of {d}")
            bits = int(pq_bits or 4)
            if not 4 <= bits <= 8:
                raise UserError(f"pq_bits={bits} — use 4 (fast scan, the default) to 8")
            if bits == 4:  # SIMD look-up tables in registers: trains and searches several times faster than 8-bit
                index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, pq_m, 4, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, bits, faiss.METRIC_INNER_PRODUCT)
            need = max(nlist, 2**bits)
            if n < 2**bits:  # FAISS trains 2^bits centroids per sub-quantizer on the rows themselves
                raise UserError(f"ivf-pq with pq_bits={bits} needs at least {2**bits} rows to train its "
                                f"{2**bits}-word codebooks, got {n} — use a flat or ivf-flat index"
                                f"{', or fewer pq_bits' if bits > 4 else ''}")
        index.cp.seed = seed
        index.cp.min_points_per_centroid = 1  # our sample size already respects FAISS's minimum where N allows
        if kind == "ivf-pq":
            index.pq.cp.seed = seed
            index.pq.cp.min_points_per_centroid = 1
            index.pq.cp.niter = 10  # as the coarse k-means; FAISS's 25 only slows the D small codebooks' training
        size = min(n, int(train_size or max(TRAIN_POINTS_PER_LIST * nlist, MIN_POINTS_PER_CENTROID * need)))
        index.cp.max_points_per_centroid = max(1, math.ceil(size / nlist))  # FAISS must not subsample further
        index.train(_training_sample(features, size, seed))
        index.nprobe = int(nprobe or default_nprobe(nlist))
    for x in _chunks(features, chunk_size):
        index.add(x)
    return index


def _search_params(index: faiss.Index, nprobe: int | None, ef_search: int | None) -> faiss.SearchParameters | None:
    if nprobe is not None and isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(nprobe=int(nprobe))
    if ef_search is not None and isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=int(ef_search))
    return None


def search(index: faiss.Index, queries: torch.Tensor | np.ndarray, k: int, *, nprobe: int | None = None,
           ef_search: int | None = None, chunk_size: int = 16_384) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most similar indexed rows of each query (queries are L2-normalised on a copy).

    Args:
        index: from :func:`build_index` or :func:`load_index`.
        queries: (Q, D) features of any scale.
        k: neighbours per query, 1 ≤ k ≤ the number of indexed rows.
        nprobe: IVF lists to visit for this call only (the index's own setting otherwise).
        ef_search: HNSW candidate list for this call only.
        chunk_size: queries searched at a time.

    Returns:
        ``(sims, idx)``: cosine similarities and row numbers, most similar first. An approximate index that
        finds fewer than k candidates (too small ``nprobe``) pads with similarity ``-inf`` and row −1.

    Raises:
        UserError: k out of range, NaN/Inf queries, or queries of another dimension.

    Shape:
        queries: (Q, D) -> sims (Q, k) float32, idx (Q, k) int64
    """
    n = int(index.ntotal)
    if not 1 <= k <= n:
        raise UserError(f"k={k} neighbours asked of an index of {n} rows — use 1 ≤ k ≤ {max(n, 1)}")
    if queries.shape[-1] != index.d:
        raise UserError(f"queries have {queries.shape[-1]} dimensions but the index has {index.d} — search with "
                        "features from the same encoder")
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    params = _search_params(index, nprobe, ef_search)
    sims = np.empty((len(queries), k), np.float32)
    idx = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk_size):
        q = unit_rows(queries[start:start + chunk_size], "query features")
        s, j = index.search(q, k, params=params) if params is not None else index.search(q, k)
        sims[start:start + len(q)], idx[start:start + len(q)] = s, j
    sims[idx < 0] = -np.inf  # FAISS pads with -FLT_MAX for inner product; make "missing" unmistakable
    return torch.from_numpy(sims), torch.from_numpy(idx)


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Writes the index atomically: to a temporary file beside ``path``, then renamed over it.

    A crash or kill mid-write leaves any earlier file at ``path`` intact and no partial file behind.

    Returns:
        ``path``.
    """
    path = Path(path)
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))
    return path


def load_index(path: str | Path) -> faiss.Index:
    """Reads an index written by :func:`save_index` (search settings included).

    Raises:
        UserError: the file is missing or is not a readable FAISS index.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no index file at {path} — build one with build_index and save_index")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unreadable"
        raise UserError(f"{path} is not a readable FAISS index ({first}) — delete it and build it again") from None
