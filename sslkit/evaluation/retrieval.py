"""Nearest-neighbour retrieval in a run's feature space: ``sslkit neighbors RUN --query 3 17``.

The features of a split come from the same cache as ``sslkit probe`` (``RUN/features``, keyed by the encoder's
hash, the preprocessing and the data), so a probed run searches without running its encoder again. Search goes
through a FAISS index of :mod:`sslkit.evaluation.index` over L2-normalised copies of those features, so inner
products are cosine similarities: ``flat`` (exact, the default) or one of the approximate kinds for very large
splits. The index is saved next to the features it was built from, under a name that carries a digest of their
contents (``RUN/features/<features>.<kind>-<digest>.faiss``): a second search loads it, and features that
changed in any way get a new index instead of a stale one.

``--split val`` searches the part of the labeled train split that ``sslkit probe --split val`` scores on (index i is
its i-th image, in train's file order), with the rows of the train split's cached features the probe uses
(:func:`evaluation_features`).

A query is an image of the split itself, so its own row is always among its best matches; it is dropped from
the answer, which holds the k most similar *other* images.

The table lists every neighbour found, one line each, so queries × k is bounded (:data:`TABLE_MAX_ROWS`) and
checked before any feature is computed (before the split is even loaded where the tokens alone tell,
:func:`check_queries`); the grid draws the first queries and neighbours of a larger request
(:func:`sslkit.viz.neighbor_grid_layout`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sslkit.checkpoint import load_encoder, sha256_file, write_json
from sslkit.console import PipeSafeConsole
from sslkit.data import SPLITS, ImageSource, _did_you_mean, load_sources, split_description
from sslkit.devices import checked_device
from sslkit.errors import UserError
from sslkit.evaluation import index as faiss_index
from sslkit.evaluation.features import (
    cached_features,
    encoder_cache_path,
    extract_features,
    progress_bar,
)
from sslkit.evaluation.features import read_run_meta as read_meta
from sslkit.outputs import FIGURE_SUFFIXES, check_output, check_run_writable

INDEX_KINDS: tuple[str, ...] = faiss_index.INDEX_KINDS
DEFAULT_INDEX = "flat"  # exact: a split of a few hundred thousand images is searched in well under a second
_RANDOM_RE = re.compile(r"^random:(\d+)$")
# Neighbours the printed table may list (queries × k), one line each. Rich builds the whole table before printing
# it, about 1 ms a line here: 10,000 lines print in seconds, while --query random:10000 -k 9999 on Fashion-MNIST's
# test split (99,990,000 lines) held 8 GB after three minutes without printing one. Nobody reads more anyway.
TABLE_MAX_ROWS = 10_000
# Neighbours one search may return without a table (show_table=False): 12 bytes each (cosine, row number), about
# 0.5 GB at the peak of a search of this many; all of a 60,000-image split against itself would take 43 GB.
RESULT_MAX_ROWS = 10_000_000


# --- the run's split and its features ------------------------------------------------------------------------


def load_split(meta: dict[str, Any], split: str) -> ImageSource:
    """One split of the run's data, every image in its file order; indices given to the commands point here.

    An image folder's ``test`` split is the part of it held out of pretraining
    (:func:`~sslkit.data.imagefolder_split`, the same for every seed), ``train`` the rest.

    Raises:
        UserError: an unknown split or missing data files.
    """
    return load_splits(meta, (split,))[0]


def load_splits(meta: dict[str, Any], splits: Sequence[str]) -> tuple[ImageSource, ...]:
    """Several splits of the run's data (:func:`load_split`), in the order asked, from
    :func:`~sslkit.data.load_sources`: an image folder's are all cut from one read of the whole folder.

    Raises:
        UserError: an unknown split or missing data files.
    """
    root = meta.get("data_root")
    if meta["dataset"] == "imagefolder" and root and not Path(root).expanduser().is_dir():
        raise UserError(f"the image folder the run was pretrained on, {root}, is not there any more — give the "
                        "folder's new place with --data-root")
    return load_sources(meta["dataset"], splits, root=root, image_size=int(meta["image_size"]),
                        channels=int(meta["in_chans"]))


SplitLoader = Callable[[dict[str, Any], Sequence[str]], tuple[ImageSource, ...]]
"""What loads splits of a run's data: :func:`load_splits`, or a :class:`SplitMemo` of one command."""


class SplitMemo:
    """:func:`load_splits` for one command that needs the run's splits in several places, reading each at most once.

    ``sslkit report`` asks for its page's split, then for the pretraining split (the augmentation preview), then for
    the probe's train and evaluation splits (the confusion matrix): each read again, an image folder three times
    over (every file listed, stat'ed and hashed, its decoded cache mapped). One memo passed to each of them reads
    it once. An image folder's splits all come from that one read, so the first split asked for keeps the others.

    Keyed by the data set, its root, image size and channels, and the split. Made by a command and dropped when it
    ends, never kept between commands: the files may change in between.
    """

    def __init__(self) -> None:
        self._loaded: dict[tuple[Any, ...], ImageSource] = {}

    def __call__(self, meta: dict[str, Any], splits: Sequence[str]) -> tuple[ImageSource, ...]:
        data = (meta["dataset"], meta.get("data_root"), int(meta["image_size"]), int(meta["in_chans"]))
        missing = [split for split in dict.fromkeys(splits) if (*data, split) not in self._loaded]
        if missing and meta["dataset"] == "imagefolder":  # one read cuts every split: all kept for later asks
            missing = list(dict.fromkeys([*missing, *SPLITS["imagefolder"]]))
        if missing:
            for split, source in zip(missing, load_splits(meta, missing), strict=True):
                self._loaded[(*data, split)] = source
        return tuple(self._loaded[(*data, split)] for split in splits)


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
    part = "train" if split == "train" else "eval"  # the probe's names for its two feature sets
    path = encoder_cache_path(run, meta, part, source)
    device = checked_device(device)

    def compute() -> torch.Tensor:
        encoder = load_encoder(run, device)
        with progress_bar(console) as bar:
            return extract_features(encoder, source, meta["mean"], meta["std"], device=device, progress=bar,
                                    description=f"{split} features")

    return cached_features(path, source.labels, compute), path


@dataclass(frozen=True)
class EvaluationSplit:
    """The images a reading command (``sslkit neighbors``, ``umap``, ``report``) takes as ``--split``.

    Attributes:
        name: the split as given (``test``, ``val`` …).
        source: its images; indices given to the commands point here.
        described: how a page names it (:func:`~sslkit.data.split_description`).
        labeled_train: for ``val``, the labeled train split it is a part of, whose cached features it is sliced from
            (:func:`evaluation_features`); None for a split of the run's data.
        fitted: for ``val``, the rest of ``labeled_train``, which the probes learn from: with it the report's
            probe predictions use the parts cut here instead of cutting them again; None for a split of the run's data.
    """

    name: str
    source: ImageSource
    described: str
    labeled_train: ImageSource | None = None
    fitted: ImageSource | None = None


def load_evaluation_split(meta: dict[str, Any], split: str, load: SplitLoader | None = None) -> EvaluationSplit:
    """``split`` of the run's data, every image in file order (:func:`load_split`), or
    :data:`~sslkit.evaluation.probe.HELD_OUT` (``val``): the labeled part of train that ``sslkit probe --split val``
    scores on, in train's file order (:func:`~sslkit.evaluation.probe.labeled_splits`).

    ``load`` reads the run's splits (:func:`load_splits` when None): a command's :class:`SplitMemo` where it reads
    them again elsewhere.

    Raises:
        UserError: a split the run's data set does not have, too few labeled train images to hold out ``val``, or
            missing data.
    """
    from sslkit.evaluation.probe import HELD_OUT, labeled_splits  # here, not above: the probe imports this module

    usable = (*SPLITS.get(meta["dataset"], ()), HELD_OUT)
    if split not in usable:
        hint = _did_you_mean(split, usable)
        raise UserError(f"--split: {meta['dataset']} has no split {split!r}{hint} — use one of: {', '.join(usable)} "
                        f"({HELD_OUT}: the part of train that `sslkit probe --split {HELD_OUT}` scores on)")
    if split == HELD_OUT:
        whole, fitted, held, described = labeled_splits(meta, split, load)
        return EvaluationSplit(split, held, described, whole, fitted)
    source = (load or load_splits)(meta, (split,))[0]
    return EvaluationSplit(split, source, split_description(meta["dataset"], split))


def evaluation_features(run: str | Path, meta: dict[str, Any], split: EvaluationSplit,
                        console: Console | None = None) -> tuple[torch.Tensor, Path]:
    """The encoder's features of ``split.source`` from the run's feature cache (:func:`split_features`), and the
    path the index and map coordinates derived from them are named after.

    ``val``'s are the rows of the train split's features the probe holds out (sliced as the probe slices them,
    :func:`~sslkit.evaluation.probe.probe_features`), named ``<train cache>.val.npy`` (no such file is written) so
    that their index and map never replace the train split's.

    Shape:
        -> (N, D) float32
    """
    from sslkit.evaluation.probe import probe_features

    if split.labeled_train is None:
        return split_features(run, meta, split.source, split.name, console=console)
    paths = []

    def features_of(part: str, images: ImageSource) -> torch.Tensor:
        feats, path = split_features(run, meta, images, part, console=console)
        paths.append(path)
        return feats

    _, feats = probe_features(features_of, split.labeled_train, split.source, split.name)
    return feats, paths[0].with_name(f"{paths[0].stem}.{split.name}.npy")


def features_digest(features: torch.Tensor | np.ndarray) -> str:
    """16 hex digits of a hash of the features' shape and every value: what an index or a map was made from.

    Shape:
        (N, D)
    """
    x = np.ascontiguousarray(torch.as_tensor(features).detach().cpu().float().numpy())
    h = hashlib.blake2b(repr(x.shape).encode(), digest_size=8)
    h.update(memoryview(x).cast("B"))
    return h.hexdigest()


# --- the index -------------------------------------------------------------------------------------------------


def index_path(features_path: Path, kind: str, digest: str) -> Path:
    """Where the ``kind`` index over the features cached at ``features_path`` (with this digest) is kept."""
    features_path = Path(features_path)
    return features_path.with_name(f"{features_path.name[:-len('.npy')]}.{kind}-{digest}.faiss")


def open_index(features: torch.Tensor, features_path: Path, kind: str = DEFAULT_INDEX) -> faiss.Index:
    """The saved index of exactly these features if there is one, else a new one, saved (older ones removed).

    Args:
        features: (N, D) features, any scale.
        features_path: the cache file they came from; the index is kept beside it.
        kind: one of :data:`INDEX_KINDS`.

    Raises:
        UserError: an unknown kind.

    Shape:
        (N, D) -> index with ntotal N, dimension D
    """
    features_path = Path(features_path)
    kind = faiss_index.resolve_kind(kind, len(features))  # an auto index is saved as what it is, not twice
    digest = features_digest(features)
    path = index_path(features_path, kind, digest)
    if path.is_file():
        try:
            index = faiss_index.load_index(path)
        except UserError:  # unreadable (e.g. truncated by a kill): rebuilt below
            index = None
        if index is not None and index.ntotal == len(features) and index.d == features.shape[1]:
            return index
    index = faiss_index.build_index(features, kind)
    faiss_index.save_index(index, path)
    # Indexes of earlier contents of this cache file can never match again.
    for old in path.parent.glob(f"{features_path.name[:-len('.npy')]}.{kind}-*.faiss"):
        if old != path:
            old.unlink(missing_ok=True)
    return index


def search_neighbors(index: faiss.Index, features: torch.Tensor | np.ndarray, queries: Sequence[int],
                     k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k rows of the index most similar to each query row, the query itself excluded.

    Args:
        index: built by :func:`sslkit.evaluation.index.build_index` over ``features`` (same rows, same order).
        features: the indexed features; query ``i`` searches with row ``i``.
        queries: row numbers.
        k: neighbours per query, 1 ≤ k ≤ N − 1.

    Returns:
        ``(sims, idx)``: cosine similarities and row numbers, most similar first.

    Raises:
        UserError: k out of range, a query that is not a row number 0 … N − 1, or an approximate index that found
            fewer than k other rows.

    Shape:
        features: (N, D) -> sims (Q, k) float32, idx (Q, k) int64
    """
    check_k(k, int(index.ntotal), "the index")
    q_idx = np.asarray(list(queries), dtype=np.int64).reshape(-1)
    outside = q_idx[(q_idx < 0) | (q_idx >= len(features))]
    if len(outside):  # a negative one would pick a row from the end, then fail to exclude it as itself
        raise UserError(f"query {int(outside[0])} is not a row of the {len(features):,} indexed images — give row "
                        f"numbers 0 to {len(features) - 1}")
    ef_search = max(faiss_index.HNSW_EF_SEARCH, 2 * (k + 1)) if isinstance(index, faiss.IndexHNSW) else None
    sims, idx = faiss_index.search(index, torch.as_tensor(features)[torch.from_numpy(q_idx)], k + 1,
                                   ef_search=ef_search)
    sims, idx = sims.numpy(), idx.numpy()
    # Drop each query's own row and any padding (-1) of an approximate index. A duplicate image scores the same
    # as the query and may push it off the k + 1 found: then the least similar one goes instead.
    keep = (idx != q_idx[:, None]) & (idx >= 0)
    keep &= np.cumsum(keep, axis=1) <= k
    short = np.flatnonzero(keep.sum(axis=1) < k)
    if len(short):
        raise UserError(f"the approximate index found fewer than {k} neighbours for query {int(q_idx[short[0]])} "
                        "— use --index flat (exact)")
    sims, idx = sims[keep].reshape(len(q_idx), k), idx[keep].reshape(len(q_idx), k)
    sims, idx = torch.from_numpy(np.ascontiguousarray(sims)), torch.from_numpy(np.ascontiguousarray(idx)).long()
    if isinstance(index, (faiss.IndexIVFPQ, faiss.IndexIVFPQFastScan)):
        # PQ codes give approximate scores: the neighbours found get their exact cosines, and their order
        sims, idx = _exact_order(torch.as_tensor(features), q_idx, idx)
    return sims, idx


def _exact_order(features: torch.Tensor, q_idx: np.ndarray, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosines of each query's found rows, most similar first.

    Shape:
        features: (N, D), idx: (Q, k) -> sims (Q, k) float32, idx (Q, k) int64
    """
    queries = torch.nn.functional.normalize(features[torch.from_numpy(q_idx)].float(), dim=1)
    found = torch.nn.functional.normalize(features[idx].float(), dim=-1)
    exact = torch.einsum("qd,qkd->qk", queries, found)
    order = exact.argsort(dim=1, descending=True, stable=True)
    return exact.gather(1, order), idx.gather(1, order)


# --- arguments -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomQueries:
    """A ``random:N`` token of ``--query``: N queries drawn with the seed (:func:`parse_queries`)."""

    count: int


def read_query_token(token: str | int) -> int | RandomQueries:
    """One ``--query`` token read: an image index (``3``, ``03``, ``+3``, `` 3 ``) or ``random:N``, unchecked
    against any split.

    The one reader of tokens: :func:`parse_queries` picks the queries with it, :func:`check_queries` refuses a
    request before the split is loaded with it, and :func:`default_output` names the grid with it, so a token
    never reads one way in the search and another in the file name.

    Raises:
        UserError: naming a token that is neither.
    """
    text = str(token).strip()
    m = _RANDOM_RE.match(text)
    if m:
        return RandomQueries(int(m.group(1)))
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--query {text!r} is neither an image index nor random:N — give e.g. --query 3 17 or "
                        "--query random:8") from None


def _read_query_tokens(tokens: Sequence[str | int]) -> list[int | RandomQueries]:
    """Every token read (:func:`read_query_token`); UserError when there is none."""
    if not tokens:
        raise UserError("--query needs at least one image index (e.g. --query 3 17) or random:N")
    return [read_query_token(token) for token in tokens]


def parse_queries(tokens: Sequence[str | int], n: int, split: str = "test", seed: int = 0) -> list[int]:
    """Query indices from ``--query`` tokens: indices into the split, or ``random:N`` for N seeded ones.

    Duplicates are dropped (first kept); the order given is kept, random picks in index order. The same seed
    and split size always give the same random picks.

    Raises:
        UserError: naming the token that is not an index, lies outside the split, or asks too many.
    """
    out: list[int] = []
    for token, read in zip(tokens, _read_query_tokens(tokens), strict=True):
        if isinstance(read, RandomQueries):
            if not 1 <= read.count <= n:
                raise UserError(f"--query {str(token).strip()}: the {split} split has {n} images — ask for 1 to {n} "
                                "random queries")
            g = torch.Generator().manual_seed(int(seed))
            out += torch.randperm(n, generator=g)[:read.count].sort().values.tolist()
            continue
        if not 0 <= read < n:
            raise UserError(f"--query {read} is outside the {split} split, which has {n} images — use an index from 0 "
                            f"to {n - 1}")
        out.append(read)
    return list(dict.fromkeys(out))


def check_queries(tokens: Sequence[str | int], k: int, split: str = "test", table: bool = True) -> None:
    """The refusals ``--query`` and ``-k`` earn whatever the split's size, made before the split is loaded (seconds
    for Fashion-MNIST, longer for a large image folder) rather than after: a token that is not one
    (:func:`read_query_token`), a negative index, ``random:0``, k < 1, and more neighbours than the limit
    (:func:`check_request`) for as few queries as the tokens can pick.

    The queries are at least as many as the largest ``random:N`` draws (any two draw from the same permutation of
    the split, so the smaller is part of the larger) and at least the distinct indices given; which of those
    indices a draw picks too depends on the split's size. So the count is exact for indices alone or draws alone,
    and a lower bound (``at least``) for both. What needs the size (an index outside the split, a draw larger
    than it, k ≥ N, the exact count) :func:`parse_queries`, :func:`check_k` and :func:`check_request` check once
    it is loaded.

    Raises:
        UserError: as :func:`parse_queries`, :func:`check_k` and :func:`check_request` would for any split.
    """
    read = _read_query_tokens(tokens)
    for token, q in zip(tokens, read, strict=True):
        if isinstance(q, RandomQueries) and q.count < 1:
            raise UserError(f"--query {str(token).strip()}: ask for at least 1 random query (random:1 or more)")
        if isinstance(q, int) and q < 0:
            raise UserError(f"--query {q} is outside the {split} split: indices count up from 0 — use 0 or more")
    if k < 1:
        check_k(k, 2, split)
    drawn = max((q.count for q in read if isinstance(q, RandomQueries)), default=0)
    given = len({q for q in read if isinstance(q, int)})
    check_request(max(drawn, given), k, table=table, at_least=drawn > 0 and given > 0)


def check_k(k: int, n: int, split: str = "test") -> None:
    """Raises UserError unless 1 ≤ k ≤ n − 1 (the query itself never counts as a neighbour)."""
    if k < 1:
        raise UserError(f"-k {k}: ask for at least 1 neighbour")
    if k > n - 1:
        raise UserError(f"-k {k} is larger than the {split} split allows: it has {n} images, so at most {n - 1} "
                        f"neighbours besides the query — use -k {max(n - 1, 1)} or less")


def check_request(n_queries: int, k: int, table: bool = True, at_least: bool = False) -> None:
    """Raises UserError when ``n_queries`` × ``k`` neighbours are more than :data:`TABLE_MAX_ROWS` (with the table,
    which lists each on a line of its own) or :data:`RESULT_MAX_ROWS` (without it), naming what fits instead.

    ``at_least``: ``n_queries`` is a lower bound (:func:`check_queries` before the split is loaded), so the message
    says so and suggests no k for that many queries, which would not fit the true count."""
    limit = TABLE_MAX_ROWS if table else RESULT_MAX_ROWS
    total = n_queries * k
    if total <= limit:
        return
    why = ("the table lists each on a line of its own, about 1 ms a line to print, and a longer list is not read"
           if table else "the result holds 12 bytes per neighbour, and a larger one may not fit in memory")

    def queries(n: int) -> str:
        return f"{n:,} {'query' if n == 1 else 'queries'}"

    fits = []
    if k <= limit:
        fits.append(f"at most {queries(limit // k)} at -k {k} (e.g. --query random:{limit // k})")
    if n_queries <= limit and not at_least:
        fits.append(f"-k {limit // n_queries} or less for {queries(n_queries)}")
    at_least_total, or_more = ("at least ", " or more") if at_least else ("", "")
    raise UserError(f"--query and -k ask for {at_least_total}{total:,} neighbours ({queries(n_queries)}{or_more} × "
                    f"{k:,}), more than the {limit:,} allowed: {why} — ask for "
                    f"{' or '.join(fits) or f'{limit:,} or fewer in all'}")


def _token_name(token: str | int) -> str:
    """A ``--query`` token as :func:`read_query_token` reads it: ``3`` for ``03`` or ``+3``, ``random5`` for
    ``random:05``."""
    read = read_query_token(token)
    return f"random{read.count}" if isinstance(read, RandomQueries) else str(read)


def default_output(run: Path, split: str, tokens: Sequence[str | int], queries: Sequence[int], k: int,
                   seed: int = 0, index: str = DEFAULT_INDEX) -> Path:
    """``RUN/neighbors/<split>-<queries>-k<k>[-seed<S>][-<index>].png``: the queries as given (``3-17``,
    ``random8``), the seed where a ``random:N`` token drew with another seed than 0, the index kind where it is not
    the default, so that no other command's grid is overwritten. Tokens are named as :func:`parse_queries` reads
    them (``03`` and ``+3`` are ``3``, a repeated token counts once), so the same grid always gets the same name."""
    label = "-".join(dict.fromkeys(_token_name(t) for t in tokens))
    if len(label) > 60 or not re.fullmatch(r"[A-Za-z0-9_-]+", label):
        label = f"{len(queries)}q-{hashlib.sha256(repr(list(queries)).encode()).hexdigest()[:8]}"
    drawn = seed != 0 and any(isinstance(read_query_token(t), RandomQueries) for t in tokens)
    return run / "neighbors" / (f"{split}-{label}-k{k}{f'-seed{seed}' if drawn else ''}"
                                f"{f'-{index}' if index != DEFAULT_INDEX else ''}.png")


def grid_record(grid: Path) -> Path:
    """Where the record of the grid ``grid`` is kept: ``.<name>.json`` beside it (hidden, so that a folder of grids
    lists grids)."""
    return Path(grid).with_name(f".{Path(grid).name}.json")


def record_grid(grid: Path, encoder_sha256: str, split: str) -> None:
    """Records which encoder drew ``grid`` (its sha256), of which split, and the grid's own sha256: what the report
    decides a grid's freshness and page by (:func:`read_grid_record`), where file times would not do
    (``cp -r`` gives every file a new one)."""
    write_json(grid_record(grid), {"encoder_sha256": encoder_sha256, "split": split,
                                   "grid_sha256": sha256_file(grid)})


def read_grid_record(grid: Path) -> dict[str, Any] | None:
    """The record of ``grid`` when it is readable and of these exact bytes, else None."""
    try:
        record = json.loads(grid_record(grid).read_text())
        if record["grid_sha256"] == sha256_file(grid):
            return dict(record)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


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
        ids: each image's name in the split where the data has one (an image folder: its file's path), else None.
    """

    split: str
    queries: list[int]
    idx: torch.Tensor
    sims: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    path: Path
    ids: tuple[str, ...] | None = None

    def matches(self) -> torch.Tensor:
        """(Q, k) bool: the neighbour's class is the query's (never where either is unlabeled)."""
        q = self.labels[torch.tensor(self.queries)][:, None]
        n = self.labels[self.idx]
        return (n == q) & (q >= 0) & (n >= 0)


def class_name(label: int, classes: Sequence[str]) -> str:
    """The name of a class label; ``unlabeled`` for −1 (or any label without a name)."""
    return classes[label] if 0 <= label < len(classes) else "unlabeled"


def find_neighbors(run: str | Path, queries: Sequence[str | int], k: int = 8, split: str = "test",
                   out: str | Path | None = None, seed: int = 0, index: str = DEFAULT_INDEX,
                   console: Console | None = None, show_table: bool = True,
                   data_root: str | Path | None = None) -> NeighborResult:
    """Finds each query's k nearest images of the split, writes the grid PNG and prints the table.

    Every argument is checked (the run's encoder record, the index kind, the queries and k against the split's
    size, queries × k against :data:`TABLE_MAX_ROWS` — :data:`RESULT_MAX_ROWS` without the table) before any
    feature is computed or any file written; what the split's size does not decide (:func:`check_queries`), before
    the split is loaded.

    Args:
        run: the run directory (it needs ``encoder.safetensors`` and ``encoder.json``).
        queries: indices into the split, or ``random:N`` tokens (N seeded picks).
        k: neighbours per query, the query excluded.
        split: which split of the run's data to search (``test`` by default), or ``val``: the labeled part of train
            that ``sslkit probe --split val`` scores on (:func:`load_evaluation_split`; its features are rows of the
            train split's, its index kept apart from train's).
        out: the PNG to write; ``RUN/neighbors/<split>-<queries>-k<k>.png`` by default (see :func:`default_output`).
        seed: seeds ``random:N``.
        index: one of :data:`INDEX_KINDS`; ``flat`` (exact) by default.
        console: where the table goes.
        show_table: print the table.
        data_root: where the run's data is now, in place of its ``data.root`` (``--data-root``).

    Returns:
        The queries, their neighbours and similarities, and the PNG's path.

    Raises:
        UserError: a run without an encoder, an unknown index kind, an index outside the split, k too large,
            more neighbours in all than the limit, missing data.
    """
    console = console or PipeSafeConsole()
    run = Path(run)
    meta = read_meta(run, data_root)
    if index not in INDEX_KINDS:
        raise UserError(f"--index {index!r} is not an index kind — use one of: {', '.join(INDEX_KINDS)}")
    if out:
        out = check_output(out, "--out", FIGURE_SUFFIXES, run)
    check_run_writable(run, ("features",) if out else ("features", "neighbors"),
                       "its features cache and index" if out else "its features cache, index and grid")
    check_queries(queries, k, split, table=show_table)  # all that the split's size does not decide, before loading it
    searched = load_evaluation_split(meta, split)
    n = len(searched.source)
    picked = parse_queries(queries, n, split, seed)
    check_k(k, n, split)
    check_request(len(picked), k, table=show_table)
    index = faiss_index.resolve_kind(index, n)  # --index auto: the grid is named as the kind it picks

    feats, feats_path = evaluation_features(run, meta, searched, console=console)
    path = Path(out) if out else default_output(run, split, queries, picked, k, seed, index)
    result = draw_neighbors(run, meta, searched, feats, feats_path, picked, k, path, index)
    if path.parent.resolve() == (run / "neighbors").resolve():  # the grids the report shows (user_grids)
        record_grid(path, meta["sha256"], split)
    if show_table:
        print_neighbors(result, console)
        console.print(f"wrote {path}")
    return result


def draw_neighbors(run: Path, meta: dict[str, Any], split: EvaluationSplit, features: torch.Tensor,
                   features_path: Path, queries: Sequence[int], k: int, path: Path,
                   index: str = DEFAULT_INDEX) -> NeighborResult:
    """Searches each query's k nearest other images of the split and draws the grid to ``path``: what
    ``sslkit neighbors`` and the report's neighbour grid both do, once the queries are picked
    (:func:`parse_queries`) and checked.

    Args:
        run: the run directory (its name titles the grid). meta: its encoder record.
        split: the images searched (:func:`load_evaluation_split`).
        features: their features; features_path: what the index is kept beside (:func:`evaluation_features`).
        queries: row numbers of the split. k: neighbours per query. path: the figure to write.
        index: the index kind, resolved (not ``auto``).

    Shape:
        features: (N, D) -> idx, sims (Q, k)
    """
    from sslkit.viz import plot_neighbors

    sims, idx = search_neighbors(open_index(features, features_path, index), features, queries, k)
    source = split.source
    result = NeighborResult(split.name, list(queries), idx, sims, source.labels.cpu().long(), tuple(source.classes),
                            path, source.ids)
    title = (f"{run.name}: each query (#: its index in the {split.name} split) and its {k} nearest other "
             f"{split.name} images by cosine similarity of the {meta['encoder']} features")
    plot_neighbors(source.images, result.labels, result.classes, result.queries, idx, sims, path, title=title)
    return result


def print_neighbors(result: NeighborResult, console: Console) -> None:
    """One line per neighbour, grouped by query: rank, index, class, cosine, and whether the class matches.

    A long table rather than a wide one, so that it stays readable in any terminal width and for any k.
    """
    table = Table(title=f"nearest neighbours in the {result.split} split (the query itself excluded)",
                  title_justify="left")
    for name, justify in (("query", "left"), ("query class", "left"), ("rank", "right"), ("neighbour", "right"),
                          ("class", "left"), ("cosine", "right"), ("same class", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    if result.ids is not None:  # an image folder: which file each one is (the query's beside its number)
        table.add_column("file", justify="left", no_wrap=True)
    matches = result.matches()
    k = result.idx.shape[1]
    for row, q in enumerate(result.queries):
        ql = int(result.labels[q])
        for j in range(k):
            i = int(result.idx[row, j])
            li = int(result.labels[i])
            if ql < 0 or li < 0:
                same = "[dim]?[/]"
            else:
                same = "[green]yes[/]" if matches[row, j] else "[red]no[/]"
            query = f"#{q}" + (f" {escape(result.ids[q])}" if result.ids is not None else "")
            cells = [query if j == 0 else "", class_name(ql, result.classes) if j == 0 else "", str(j + 1),
                     f"#{i}", class_name(li, result.classes), f"{float(result.sims[row, j]):.3f}", same]
            table.add_row(*cells, *([escape(result.ids[i])] if result.ids is not None else []),
                          end_section=j == k - 1)
    console.print(table)
    labeled = result.labels[torch.tensor(result.queries)] >= 0
    if bool(labeled.any()):
        same = matches[labeled].sum(dim=1).tolist()
        named = [q for q, ok in zip(result.queries, labeled.tolist(), strict=True) if ok]
        parts = [f"#{q} {s}/{k}" for q, s in zip(named, same, strict=True)] if len(named) <= 10 else []
        parts.append(f"precision@{k} {sum(same) / (k * len(same)):.3f}")
        console.print("neighbours of the query's class: " + ", ".join(parts))
