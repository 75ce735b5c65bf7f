"""FAISS index kinds of sslkit.evaluation.index on a large synthetic bank: build time, query time, memory, recall.

For each kind (flat, ivf-flat, hnsw, ivf-pq with D/2- and D/4-byte 4-bit codes): the build time, the time to
search 1,000 queries for their 10 nearest rows (median of repeats) and the latency of one query, the index's size
(its serialised bytes, which is what it holds in memory, and the growth of the process's resident memory while
building it), and recall@10 against the exact flat index. A sweep of the search-time setting (``nprobe``,
``efSearch``) follows, so the speed/recall trade-off around the defaults is visible.

The bank is synthetic but clustered so that nearest neighbours mean something: ``--clusters`` random unit
centres, each point its centre plus a random vector of a 16-dimensional patch of its cluster plus isotropic noise
(at 50k rows a query's cosine to its 10th neighbour is ≈ 0.6, to a random point ≈ 0). It is generated in
float32 chunks into one array, so memory is the bank plus one index at a time. Run:

    python eval/bench_index.py                 # 1,000,000 × 512 (the issue's benchmark)
    python eval/bench_index.py --n 50000       # a quick check; --quick is --n 20000, 1 repeat
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from machine import at_least, cpu_name, write_results  # eval/machine.py, beside this script

from sslkit.evaluation.index import INDEX_KINDS, build_index, default_pq_m, save_index, search

GEN_CHUNK = 65_536  # rows per generation chunk; fixed, so the data do not depend on how it is chunked
SINGLE_QUERIES = 200  # queries searched one at a time for the latency column


def clustered_features(n: int, d: int = 512, clusters: int = 100, seed: int = 0, stream: int = 0,
                       intrinsic: int = 16, spread: float = 0.5, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Seeded synthetic features near low-dimensional patches around random centres, and their cluster labels.

    ``stream`` draws other points of the same clusters (e.g. queries that are not bank rows).

    Shape:
        -> (n, d) float32, (n,) int64
    """
    base = np.random.default_rng([seed, 0])
    centres = base.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    patches = (base.standard_normal((clusters, intrinsic, d)) * spread / np.sqrt(d)).astype(np.float32)
    x = np.empty((n, d), np.float32)
    labels = np.empty(n, np.int64)
    for i, start in enumerate(range(0, n, GEN_CHUNK)):
        rng = np.random.default_rng([seed, 1 + stream, i])
        m = min(GEN_CHUNK, n - start)
        lab = rng.integers(0, clusters, m)
        a = rng.standard_normal((m, intrinsic), dtype=np.float32)
        chunk = centres[lab] + rng.standard_normal((m, d), dtype=np.float32) * np.float32(noise / np.sqrt(d))
        for c in np.unique(lab):
            rows = lab == c
            chunk[rows] += a[rows] @ patches[c]
        x[start:start + m], labels[start:start + m] = chunk, lab
    return x, labels


def rss_bytes() -> int:
    """Current resident memory of this process (Linux; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact k neighbours found, averaged over queries."""
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(f, e)) / k for f, e in zip(found, exact, strict=True)]))


def timed_search(index: faiss.Index, q: np.ndarray, k: int, repeats: int, **params: int) -> tuple[float, np.ndarray]:
    """Median seconds to search all queries, and the neighbours found."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        _, idx = search(index, q, k, **params)
        times.append(time.perf_counter() - t)
    return statistics.median(times), idx.numpy()


def single_query_ms(index: faiss.Index, q: np.ndarray, k: int) -> float:
    """Median milliseconds of a search for one query at a time (an interactive lookup's latency)."""
    times = []
    for row in q:
        t = time.perf_counter()
        search(index, row[None], k)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def describe(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexIVFPQ | faiss.IndexIVFPQFastScan):
        fast = " (fast scan)" if isinstance(index, faiss.IndexIVFPQFastScan) else ""
        return f"nlist {index.nlist}, nprobe {index.nprobe}, {index.pq.M}×{index.pq.nbits}-bit codes{fast}"
    if isinstance(index, faiss.IndexIVF):
        return f"nlist {index.nlist}, nprobe {index.nprobe}"
    if isinstance(index, faiss.IndexHNSW):
        h = index.hnsw
        return f"M {index.hnsw.nb_neighbors(1)}, efConstruction {h.efConstruction}, efSearch {h.efSearch}"
    return "exact"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=at_least(1), default=1_000_000, help="bank rows")
    ap.add_argument("--d", type=at_least(1), default=512)
    ap.add_argument("--queries", type=at_least(1), default=1000)
    ap.add_argument("--k", type=at_least(1), default=10)
    ap.add_argument("--clusters", type=at_least(1), default=100)
    ap.add_argument("--kinds", nargs="+", default=["ivf-flat", "hnsw", "ivf-pq", "ivf-pq-half"],
                    help=f"approximate kinds to compare with flat ({', '.join(INDEX_KINDS[2:])}; ivf-pq-half is "
                         "ivf-pq with half the sub-quantisers: D/4-byte codes)")
    ap.add_argument("--repeats", type=at_least(1), default=3, help="timed searches per setting (median)")
    ap.add_argument("--threads", type=at_least(1), default=None, help="torch/FAISS threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-sweep", action="store_true", help="skip the nprobe / efSearch sweep")
    ap.add_argument("--quick", action="store_true", help="--n 20000, 1 repeat (a smoke run)")
    ap.add_argument("--out", default=None, help="results file (default eval/results/bench_index_cpu.md)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats = min(args.n, 20_000), 1
    if args.threads:
        torch.set_num_threads(args.threads)

    t = time.perf_counter()
    bank, _ = clustered_features(args.n, args.d, args.clusters, args.seed)
    queries, _ = clustered_features(args.queries, args.d, args.clusters, args.seed, stream=1)
    print(f"generated {args.n:,}×{args.d} bank and {args.queries:,} queries in {time.perf_counter() - t:.1f} s")

    rows, sweep = [], []
    tmp = Path(tempfile.mkdtemp(prefix="bench_index-"))

    def measure(label: str, kind: str, **kwargs: int) -> tuple[faiss.Index, np.ndarray]:
        gc.collect()
        before = rss_bytes()
        t = time.perf_counter()
        index = build_index(bank, kind, seed=args.seed, **kwargs)
        build = time.perf_counter() - t
        grown = rss_bytes() - before
        path = save_index(index, tmp / "index.faiss")
        size = path.stat().st_size
        path.unlink()
        q_time, found = timed_search(index, queries, args.k, args.repeats)
        single = single_query_ms(index, queries[:SINGLE_QUERIES], args.k)
        rec = 1.0 if exact is None else recall_at_k(found, exact)
        rows.append((label, describe(index), build, q_time, single, size, grown, rec))
        print(f"{label:10s} build {build:8.2f} s  search {q_time:7.3f} s  {size / 2**20:9.1f} MiB  recall {rec:.4f}")
        return index, found

    exact = None
    flat, exact = measure("flat", "flat")
    del flat
    for label in args.kinds:
        kind, kwargs = label, {}
        if label == "ivf-pq-half":
            kind, kwargs = "ivf-pq", {"pq_m": default_pq_m(args.d) // 2}
        index, _ = measure(label, kind, **kwargs)
        if not args.no_sweep and isinstance(index, faiss.IndexIVF | faiss.IndexHNSW):
            ivf = isinstance(index, faiss.IndexIVF)
            default = index.nprobe if ivf else index.hnsw.efSearch
            values = sorted({max(1, default // 4), max(1, default // 2), default, default * 2, default * 4})
            for v in values:
                if ivf and v > index.nlist:
                    continue
                q_time, found = timed_search(index, queries, args.k, args.repeats,
                                             **({"nprobe": v} if ivf else {"ef_search": v}))
                sweep.append((label, f"{'nprobe' if ivf else 'efSearch'} {v}" + (" (default)" if v == default else ""),
                              q_time, recall_at_k(found, exact)))
        del index
    tmp.rmdir()

    nq = args.queries
    lines = [
        f"# FAISS index kinds — {args.n:,} × {args.d} synthetic features, {nq:,} queries, k = {args.k}",
        "",
        f"Command: `python eval/bench_index.py --n {args.n}" + (f" --threads {args.threads}" if args.threads else "")
        + (" --quick" if args.quick else "") + "`  ",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} threads on {os.cpu_count()} cores; "
        f"faiss {faiss.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}  ",
        f"Data: {args.clusters} clusters, 16-d patches, seed {args.seed} (see the script's docstring); queries are "
        "other points of the same clusters. Cosine similarity (inner product of L2-normalised float32 rows).  ",
        f"Search: all {nq:,} queries in one call, median of {args.repeats}; 1-query latency: median over "
        f"{min(SINGLE_QUERIES, nq)} queries searched one at a time; recall@{args.k} against the flat index.",
        "",
        f"| kind | settings | build s | search s ({nq:,} queries) | queries/s | 1-query latency ms | index MiB | "
        f"RSS growth MiB | recall@{args.k} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, settings, build, q_time, single, size, grown, rec in rows:
        lines.append(f"| {label} | {settings} | {build:.2f} | {q_time:.3f} | {nq / q_time:,.0f} | {single:.2f} | "
                     f"{size / 2**20:,.1f} | {grown / 2**20:,.0f} | {rec:.4f} |")
    if sweep:
        lines += ["", "Search-time setting (same index, no rebuild):", "",
                  f"| kind | setting | search s | queries/s | recall@{args.k} |", "|---|---|---:|---:|---:|"]
        for label, setting, q_time, rec in sweep:
            lines.append(f"| {label} | {setting} | {q_time:.3f} | {nq / q_time:,.0f} | {rec:.4f} |")
    lines += ["", "Index MiB is the serialised index (faiss.write_index), i.e. the vectors or codes plus the lists or "
              "graph; RSS growth is the resident memory the process gained while building it (training buffers "
              "included, freed memory the allocator kept included)."]
    text = "\n".join(lines) + "\n"
    write_results(text, args.out, "bench_index_cpu.md", args.quick)


if __name__ == "__main__":
    main()
