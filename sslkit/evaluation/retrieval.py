"""Nearest-neighbour retrieval in a run's feature space: ``sslkit neighbors RUN --query 3 17``.

The features of a split come from the same cache as ``sslkit probe`` (``RUN/features``, keyed by the encoder's
hash, the preprocessing and the data), so a probed run searches without running its encoder again. Search goes
through a FAISS index over L2-normalised copies of those features, so inner products are cosine similarities:
``flat`` (exact, the default) or ``hnsw`` (approximate, for splits of millions). The index is written next to
the features it was built from (``RUN/features/<features>.<kind>.faiss``) and reused while they match.

A query is an image of the split itself, so its own row is always its best match; it is dropped from the
answer, which holds the k most similar *other* images.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from sslkit.checkpoint import load_encoder, read_encoder_meta, sha256_file
from sslkit.data import ImageSource, load_source, stratified_split
from sslkit.errors import UserError
from sslkit.evaluation.features import cache_path, cached_features, default_device, extract_features, progress_bar
from sslkit.evaluation.knn import unit_rows

INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw")
HNSW_M = 32  # graph degree of the HNSW index: FAISS's usual choice, > 0.95 recall at efSearch 64 on 512-d features
_RANDOM_RE = re.compile(r"^random:(\d+)$")
_META_KEYS = ("encoder", "stem", "in_chans", "image_size", "mean", "std", "dataset")


# --- the run's split and its features ------------------------------------------------------------------------


def read_meta(run: str | Path) -> dict[str, Any]:
    """A run's ``encoder.json``, checked, with the weights' sha256 filled in when the file lacks it.

    Raises:
        UserError: no exported encoder in the run, or a record missing keys.
    """
    meta, weights = read_encoder_meta(run)
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise UserError(f"{Path(run) / 'encoder.json'} lacks {', '.join(missing)} — re-export the encoder with a "
                        "current sslkit")
    if not meta.get("sha256"):
        meta = dict(meta, sha256=sha256_file(weights))
    return meta


def load_split(meta: dict[str, Any], split: str, seed: int = 0) -> ImageSource:
    """One split of the run's data, every image in its file order; indices given to the commands point here.

    An image folder is one pool of images; as in ``sslkit probe``, its ``test`` split is the stratified, seeded
    held-out part (``IMAGEFOLDER_TEST_FRACTION``) and ``train`` the rest.

    Raises:
        UserError: an unknown split or missing data files.
    """
    kwargs = {"root": meta.get("data_root"), "image_size": int(meta["image_size"]),
              "channels": int(meta["in_chans"])}
    if meta["dataset"] == "imagefolder":
        from sslkit.evaluation.probe import IMAGEFOLDER_TEST_FRACTION

        if split not in ("train", "test"):
            raise UserError(f"an image folder has the splits train and test (a held-out part), not {split!r}")
        pool = load_source("imagefolder", "train", **kwargs)
        test_idx, train_idx = stratified_split(pool.labels, IMAGEFOLDER_TEST_FRACTION, seed)
        return pool.subset(test_idx if split == "test" else train_idx)
    return load_source(meta["dataset"], split, **kwargs)


def split_features(run: str | Path, meta: dict[str, Any], source: ImageSource, split: str,
                   device: torch.device | str | None = None, console: Console | None = None
                   ) -> tuple[torch.Tensor, Path]:
    """The encoder's features of ``source``, from the run's feature cache (shared with ``sslkit probe``).

    Returns:
        ``(features, cache file)``; the encoder is loaded only when the cache misses.

    Shape:
        (N, C, H, W) uint8 -> (N, D) float32
    """
    run = Path(run)
    tag = "train" if split == "train" else "eval"  # the probe's names for its two feature sets
    path = cache_path(run, f"encoder-{meta['sha256'][:16]}", tag, source, meta["mean"], meta["std"])
    device = torch.device(device) if device is not None else default_device()

    def compute() -> torch.Tensor:
        encoder = load_encoder(run, device)
        with progress_bar(console) as bar:
            return extract_features(encoder, source, meta["mean"], meta["std"], device=device, progress=bar,
                                    description=f"{split} features")

    return cached_features(path, source.labels, compute), path


# --- the index -------------------------------------------------------------------------------------------------


def build_index(features: torch.Tensor | np.ndarray, kind: str = "flat") -> faiss.Index:
    """A FAISS inner-product index over L2-normalised copies of ``features`` (so scores are cosines).

    Args:
        features: (N, D) features, any scale.
        kind: ``flat`` (exact) or ``hnsw`` (approximate graph search).
    """
    if kind not in INDEX_KINDS:
        raise UserError(f"unknown index kind {kind!r} — use one of: {', '.join(INDEX_KINDS)}")
    x = unit_rows(features, "features")
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    if kind == "flat":
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        index = faiss.IndexHNSWFlat(x.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    return index


def index_path(features_path: Path, kind: str) -> Path:
    """Where the index built from the features cached at ``features_path`` is kept."""
    features_path = Path(features_path)
    return features_path.with_name(f"{features_path.name[:-len('.npy')]}.{kind}.faiss")


def open_index(features: torch.Tensor, features_path: Path, kind: str = "flat") -> faiss.Index:
    """The saved index of these features if it matches them (size and dimension), else a new one, saved."""
    path = index_path(features_path, kind)
    if path.is_file():
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:  # unreadable (e.g. truncated by a kill): rebuilt below
            index = None
        if index is not None and index.ntotal == len(features) and index.d == features.shape[1]:
            return index
    index = build_index(features, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    try:
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return index


def search_neighbors(index: faiss.Index, features: torch.Tensor | np.ndarray, queries: Sequence[int],
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k rows of the index most similar to each query row, the query itself excluded.

    Args:
        index: built by :func:`build_index` over ``features`` (same rows, same order).
        features: the indexed features; query ``i`` searches with row ``i``.
        queries: row numbers.
        k: neighbours per query, 1 ≤ k ≤ N − 1.

    Returns:
        ``(sims, idx)``: cosine similarities and row numbers, most similar first.

    Shape:
        features: (N, D) -> sims (Q, k) float32, idx (Q, k) int64
    """
    n = int(index.ntotal)
    check_k(k, n, "the index")
    q_idx = np.asarray(list(queries), dtype=np.int64)
    q = unit_rows(torch.as_tensor(features)[torch.from_numpy(q_idx)], "query features")
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(64, 2 * (k + 1))
    sims, idx = index.search(q, k + 1)
    # Drop each query's own row. A duplicate image scores the same and may push it off the list: then the
    # farthest neighbour goes instead, so exactly k remain.
    keep = idx != q_idx[:, None]
    keep[keep.all(axis=1), -1] = False
    sims, idx = sims[keep].reshape(len(q_idx), k), idx[keep].reshape(len(q_idx), k)
    return torch.from_numpy(np.ascontiguousarray(sims)), torch.from_numpy(np.ascontiguousarray(idx)).long()


# --- arguments -----------------------------------------------------------------------------------------------------


def parse_queries(tokens: Sequence[str | int], n: int, split: str = "test", seed: int = 0) -> list[int]:
    """Query indices from ``--query`` tokens: indices into the split, or ``random:N`` for N seeded ones.

    Duplicates are dropped (first kept); the order given is kept, random picks in index order.

    Raises:
        UserError: naming the token that is not an index, lies outside the split, or asks too many.
    """
    if not tokens:
        raise UserError("--query needs at least one image index (e.g. --query 3 17) or random:N")
    out: list[int] = []
    for token in tokens:
        text = str(token).strip()
        m = _RANDOM_RE.match(text)
        if m:
            count = int(m.group(1))
            if not 1 <= count <= n:
                raise UserError(f"--query {text}: the {split} split has {n} images — ask for 1 to {n} random queries")
            g = torch.Generator().manual_seed(int(seed))
            out += torch.randperm(n, generator=g)[:count].sort().values.tolist()
            continue
        try:
            i = int(text)
        except ValueError:
            raise UserError(f"--query {text!r} is neither an image index nor random:N — give e.g. --query 3 17 or "
                            "--query random:8") from None
        if not 0 <= i < n:
            raise UserError(f"--query {i} is outside the {split} split, which has {n} images — use an index from 0 "
                            f"to {n - 1}")
        out.append(i)
    return list(dict.fromkeys(out))


def check_k(k: int, n: int, split: str = "test") -> None:
    """Raises UserError unless 1 ≤ k ≤ n − 1 (the query itself never counts as a neighbour)."""
    if k < 1:
        raise UserError(f"-k {k}: ask for at least 1 neighbour")
    if k > n - 1:
        raise UserError(f"-k {k} is larger than the {split} split allows: it has {n} images, so at most {n - 1} "
                        f"neighbours besides the query — use -k {max(n - 1, 1)} or less")


def default_output(run: Path, split: str, tokens: Sequence[str | int], queries: Sequence[int], k: int) -> Path:
    """``RUN/neighbors/<split>-<queries>-k<k>.png``: the queries as given (``3-17``, ``random8``)."""
    label = "-".join(str(t).strip().replace(":", "") for t in tokens)
    if len(label) > 60 or not re.fullmatch(r"[A-Za-z0-9_-]+", label):
        label = f"{len(queries)}q-{hashlib.sha256(repr(list(queries)).encode()).hexdigest()[:8]}"
    return run / "neighbors" / f"{split}-{label}-k{k}.png"


# --- the command ---------------------------------------------------------------------------------------------------


@dataclass
class NeighborResult:
    """What ``sslkit neighbors`` found.

    Attributes:
        split: the split searched.
        queries: query indices into the split.
        idx: (Q, k) neighbour indices, most similar first.
        sims: (Q, k) cosine similarities.
        labels: (N,) classes of the split (−1 unlabeled).
        classes: class names.
        path: the PNG written.
    """

    split: str
    queries: list[int]
    idx: torch.Tensor
    sims: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    path: Path

    def matches(self) -> torch.Tensor:
        """(Q, k) bool: the neighbour's class is the query's (never for unlabeled images)."""
        q = self.labels[torch.tensor(self.queries)][:, None]
        return (self.labels[self.idx] == q) & (q >= 0)


def class_name(label: int, classes: Sequence[str]) -> str:
    return classes[label] if 0 <= label < len(classes) else "unlabeled"


def find_neighbors(run: str | Path, queries: Sequence[str | int], k: int = 8, split: str = "test",
                   out: str | Path | None = None, seed: int = 0, index: str = "flat",
                   console: Console | None = None, show_table: bool = True) -> NeighborResult:
    """Finds each query's k nearest images of the split, writes the grid PNG and prints the table.

    Every argument is checked (the run's encoder record, the index kind, the queries and k against the split's
    size) before any feature is computed.

    Args:
        run: the run directory (it needs ``encoder.safetensors`` and ``encoder.json``).
        queries: indices into the split, or ``random:N`` tokens (N seeded picks).
        k: neighbours per query, the query excluded.
        split: which split of the run's data to search (``test`` by default).
        out: the PNG to write; ``RUN/neighbors/<split>-<queries>-k<k>.png`` by default.
        seed: seeds ``random:N``.
        index: ``flat`` (exact) or ``hnsw``.
        console: where the table goes.
        show_table: print the table.

    Raises:
        UserError: a run without an encoder, an index outside the split, k too large, missing data.
    """
    from sslkit.viz import plot_neighbors

    console = console or Console()
    run = Path(run)
    meta = read_meta(run)
    if index not in INDEX_KINDS:
        raise UserError(f"--index {index!r} is not an index kind — use one of: {', '.join(INDEX_KINDS)}")
    if k < 1:
        check_k(k, 2, split)
    source = load_split(meta, split, seed)
    picked = parse_queries(queries, len(source), split, seed)
    check_k(k, len(source), split)

    feats, feats_path = split_features(run, meta, source, split, console=console)
    faiss_index = open_index(feats, feats_path, index)
    sims, idx = search_neighbors(faiss_index, feats, picked, k)
    path = Path(out) if out else default_output(run, split, queries, picked, k)
    result = NeighborResult(split, picked, idx, sims, source.labels.cpu().long(), tuple(source.classes), path)
    title = f"{run.name}: {k} nearest {split} images by cosine similarity ({meta['encoder']} features, {index} index)"
    plot_neighbors(source.images, result.labels, result.classes, picked, idx, sims, path, title=title)
    if show_table:
        print_neighbors(result, console)
        console.print(f"wrote {path}")
    return result


def print_neighbors(result: NeighborResult, console: Console) -> None:
    """One row per query: its class, then each neighbour's index, class and cosine (green same class, red not)."""
    k = result.idx.shape[1]
    table = Table(title=f"nearest neighbours in the {result.split} split (query excluded)", title_justify="left")
    table.add_column("query", no_wrap=True)
    for j in range(k):
        table.add_column(str(j + 1), justify="left")
    table.add_column("same class", justify="right")
    matches = result.matches()
    for row, q in enumerate(result.queries):
        cells = [f"[bold]#{q}[/]\n{class_name(int(result.labels[q]), result.classes)}"]
        for j in range(k):
            i = int(result.idx[row, j])
            colour = "green" if matches[row, j] else ("red" if result.labels[q] >= 0 else "white")
            cells.append(f"[{colour}]#{i}\n{class_name(int(result.labels[i]), result.classes)}\n"
                         f"{float(result.sims[row, j]):.3f}[/]")
        same = int(matches[row].sum())
        cells.append(f"{same}/{k}" if result.labels[q] >= 0 else "—")
        table.add_row(*cells)
    console.print(table)
    if len(result.queries) > 1 and bool((result.labels[torch.tensor(result.queries)] >= 0).all()):
        precision = float(matches.float().mean())
        console.print(f"precision@{k} over {len(result.queries)} queries: {precision:.3f}")
