"""``sslkit report RUN``: one self-contained HTML page of a run, and the run-level figures it shows.

The page (``RUN/report.html``) embeds every figure as a ``data:`` URI and its own stylesheet, so it opens
anywhere without a network or the run directory. Each figure is also kept as a PNG in ``RUN/figures``.

What is cheap is computed here: training curves, augmentation preview, first-layer kernels, the split's
features (from the probe's cache when it has run), a UMAP/t-SNE map, k-means samples and a seeded neighbour
grid (drawn by ``sslkit neighbors``' own code); the grids the user made with ``sslkit neighbors`` of the page's split
with the run's current encoder are shown beside it.
What is not (the probe's many fits, fine-tuning) is read from ``probe.json`` / ``finetune.json`` when present;
when absent, the page says which command to run instead of running minutes of work silently. A page is of one
split (``--split``, test by default): ``--split val`` reads the val probe's ``probe-val.json`` and draws the val
images, into ``report-val.html``, and shows no number of another split.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import math
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sslkit.checkpoint import atomic_write
from sslkit.config import load_run_recipe, safe_load
from sslkit.console import PipeSafeConsole
from sslkit.data import ImageSource
from sslkit.errors import UserError
from sslkit.evaluation import retrieval
from sslkit.evaluation.features import atomic_save_npy, progress_bar
from sslkit.evaluation.probe import HELD_OUT, best_score, probe_files
from sslkit.outputs import FIGURE_SUFFIXES, check_output, check_run_writable, split_file

MAX_MAP_POINTS = 10_000
MAP_THUMBNAILS = 24  # images drawn on the report's map, spread out so they do not cover each other
NEIGHBOR_QUERIES = 6  # random queries of the report's own neighbour grid
MAX_EMBED_BYTES = 3_000_000  # a user's neighbour grid larger than this is left out of the page


# --- run-level figures -----------------------------------------------------------------------------------------


def _subsample(n: int, max_points: int, seed: int) -> torch.Tensor:
    """Sorted seeded row numbers: all of them when n ≤ max_points."""
    if n <= max_points:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max_points].sort().values


def map_coordinates(features: torch.Tensor, features_path: Path, rows: torch.Tensor, method: str,
                    seed: int) -> np.ndarray:
    """The 2-D map of ``features[rows]``, cached beside the features under a digest of exactly those rows (a
    seeded map is a pure function of them), so the same features and seed give the same coordinates.

    Shape:
        features: (N, D), rows: (M,) -> (M, 2)
    """
    from sslkit.viz import embed_2d

    stem = Path(features_path).name[: -len(".npy")]
    rows = torch.as_tensor(rows).long()
    digest = retrieval.features_digest(features[rows])  # any change of the mapped features is a new map
    path = Path(features_path).with_name(f"{stem}.{method}-seed{seed}-{digest}.npy")
    if path.is_file():
        try:
            xy = np.load(path)
            if xy.shape == (len(rows), 2):
                return xy
        except (OSError, ValueError, EOFError):
            pass
    xy = embed_2d(features[rows], method, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(path, xy)
    for old in path.parent.glob(f"{stem}.{method}-seed{seed}-*.npy"):  # maps of features that are gone
        if old != path:
            old.unlink(missing_ok=True)
    return xy


def check_map_options(method: str, max_points: int) -> None:
    """The map options ``sslkit map`` and ``sslkit report`` share, checked before any work.

    Raises:
        UserError: an unknown method, or a map of fewer than 5 points.
    """
    from sslkit.viz import MAP_METHODS

    if method not in MAP_METHODS:
        raise UserError(f"--method {method!r} is not a map method — use one of: {', '.join(MAP_METHODS)}")
    if max_points < 5:
        raise UserError(f"--max-points {max_points}: a map needs at least 5 points")


@dataclass(frozen=True)
class MapFigure:
    """A map :func:`draw_map` drew: its PNG, the method's name, the images mapped and the thumbnails drawn."""

    path: Path
    name: str  # UMAP, t-SNE
    points: int
    thumbnails: int  # fewer than asked where the map has no room for more (spread_points)


def draw_map(split: retrieval.EvaluationSplit, features: torch.Tensor, features_path: Path, method: str, path: Path,
             seed: int, max_points: int, thumbnails: int, title: Callable[[str], str]) -> MapFigure:
    """Maps a seeded subset of at most ``max_points`` of the split's images (:func:`map_coordinates`) and draws it,
    coloured by class, unlabeled images as rings, up to ``thumbnails`` images spread over it: what ``sslkit map``
    and the report's map both do once the split's features are read, so that the two cannot draw it apart.

    Args:
        split: the images mapped (:func:`~sslkit.evaluation.retrieval.load_evaluation_split`).
        features, features_path: their features and the file the coordinates are cached beside
            (:func:`~sslkit.evaluation.retrieval.evaluation_features`).
        method: ``umap`` or ``tsne``. path: the figure to write.
        seed: seeds the subset, the map and the thumbnails.
        thumbnails: how many images to draw at their points, at most.
        title: the figure's title, given the images mapped (``"300 of 2,000 test images"``).

    Shape:
        features: (N, D)
    """
    from sslkit.viz import MAP_NAMES, plot_map, spread_points

    source = split.source
    rows = _subsample(len(source), max_points, seed)
    xy = map_coordinates(features, features_path, rows, method, seed)
    shown = f"{len(rows):,} of {len(source):,}" if len(rows) < len(source) else f"{len(rows):,}"
    picks = spread_points(xy, thumbnails, seed)  # fewer than asked where the map has no room for more
    plot_map(xy, source.labels[rows], source.classes, path, title(f"{shown} {split.name} images"), method,
             images=source.images[rows], thumbnails=picks)
    return MapFigure(path, MAP_NAMES[method], len(rows), len(picks))


def run_map(run: str | Path, method: str = "umap", split: str = "test", out: str | Path | None = None,
            thumbnails: int = 0, max_points: int = MAX_MAP_POINTS, seed: int = 0,
            console: Console | None = None, data_root: str | Path | None = None) -> Path:
    """``sslkit umap RUN``: a seeded 2-D UMAP or t-SNE map of a split's features, coloured by class.

    Args:
        run: the run directory.
        method: ``umap`` or ``tsne``.
        split: the split to map; ``val``: the labeled part of train that ``sslkit probe --split val`` scores on
            (:func:`~sslkit.evaluation.retrieval.load_evaluation_split`).
        out: the PNG; ``RUN/figures/<method>-<split>.png`` by default.
        thumbnails: how many seeded images to draw on the map.
        max_points: above this many images a seeded random subset is mapped.
        seed: seeds the map, the subset and the thumbnails.
        console: where messages go.
        data_root: where the run's data is now, in place of its ``data.root`` (``--data-root``).

    Raises:
        UserError: a run without an encoder, an unknown method or split, bad counts, missing data.
    """
    from sslkit.viz import MAP_NAMES

    console = console or PipeSafeConsole()
    run = Path(run)
    meta = retrieval.read_meta(run, data_root)
    check_map_options(method, max_points)
    if thumbnails < 0:
        raise UserError(f"--thumbnails {thumbnails}: give a number of thumbnails ≥ 0")
    path = check_output(out, "--out", FIGURE_SUFFIXES, run) if out else run / "figures" / f"{method}-{split}.png"
    check_run_writable(run, ("features",) if out else ("features", "figures"),
                       "its features cache and map coordinates" if out else "its features cache, coordinates and map")
    mapped = retrieval.load_evaluation_split(meta, split)
    feats, feats_path = retrieval.evaluation_features(run, meta, mapped, console=console)
    t0 = time.perf_counter()
    drawn = draw_map(mapped, feats, feats_path, method, path, seed, max_points, thumbnails,
                     lambda images: f"{MAP_NAMES[method]} of {run.name}'s {meta['encoder']} features: {images} "
                                    f"(cosine, seed {seed})")  # as the report's map says
    seconds = time.perf_counter() - t0
    short = (f"; {drawn.thumbnails} of the {thumbnails} thumbnails asked for, the most that fit without covering "
             "each other" if drawn.thumbnails < thumbnails else "")
    console.print(f"wrote {path} ({drawn.name} of {drawn.points:,} images, {seconds:.1f} s){short}")
    return path


def read_events(run: Path) -> list[dict[str, Any]]:
    """The events of ``RUN/metrics.jsonl`` (a torn last line, as a killed run may leave, is skipped)."""
    path = Path(run) / "metrics.jsonl"
    events = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "step" in event:
                events.append(event)
    return events


def figure_augmentations(run: Path, meta: dict[str, Any], path: Path, n_images: int = 6, n_views: int = 6,
                         seed: int = 0, load: retrieval.SplitLoader | None = None) -> Path:
    """A few pretraining-pool images and random views of them, made by the run's own recipe and statistics.

    ``load`` reads the pretraining split (:func:`~sslkit.evaluation.retrieval.load_splits` when None; the report's
    :class:`~sslkit.evaluation.retrieval.SplitMemo`), at the run's image size and channels, as it pretrained."""
    from sslkit.augment import SimCLRAugment
    from sslkit.trainer import split_train
    from sslkit.viz import plot_augmentations

    r = load_run_recipe(run)
    d, a = r.data, r.augment
    root = meta.get("data_root", d.root)  # where the data is now (--data-root), else where it was
    source = (load or retrieval.load_splits)(dict(meta, data_root=root), (d.split,))[0]
    _, pool_idx, _ = split_train(r, source.labels)
    g = torch.Generator().manual_seed(seed)
    picked = pool_idx[torch.randperm(len(pool_idx), generator=g)[:n_images]].sort().values
    x = source.images[picked]
    mean, std = meta["mean"], meta["std"]
    augment = SimCLRAugment.from_config(a, source.image_size, source.channels, mean, std, compile=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        views = torch.stack([augment(x) for _ in range(n_views)], dim=1)
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 1, -1, 1, 1)
    views = (views * s + m).clamp(0, 1)  # back to pixels for display
    title = (f"Augmented views from the recipe of {run.name} (crop scale {tuple(a.crop_scale)}, flip p={a.flip_p}, "
             f"jitter p={a.jitter_p} s={a.jitter_strength}, blur p={a.blur_p})")
    return plot_augmentations(x, views, path, title=title)


def figure_kernels(run: Path, path: Path) -> Path:
    """The encoder's first convolution's kernels."""
    from sslkit.checkpoint import load_encoder
    from sslkit.viz import plot_kernels

    encoder = load_encoder(run)
    conv = next((m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if conv is None:
        raise UserError(f"the encoder of {run} has no 2-D convolution to show")
    meta = encoder.sslkit_meta
    return plot_kernels(conv.weight, path, title=f"First-layer kernels of {meta['encoder']} ({meta['stem']} stem)")


@dataclass
class Predictions:
    """The linear probe's predictions on its evaluation split, aligned with that split's images."""

    split: str
    source: ImageSource  # the labeled images of the split, in the probe's order
    labels: torch.Tensor
    predictions: torch.Tensor
    computed: bool  # True when recomputed here rather than read from the probe's file


def probe_predictions(run: Path, meta: dict[str, Any], probe: dict[str, Any], console: Console | None = None,
                      load: retrieval.SplitLoader | None = None,
                      evaluated: retrieval.EvaluationSplit | None = None) -> Predictions:
    """The full linear probe's evaluation-split predictions: the probe's saved file of that split
    (:func:`~sslkit.evaluation.probe.probe_files`) when it was made for this encoder (its sha256, or for a file from
    before the hash was saved, probe.json's) and these labels, else recomputed with
    :func:`sslkit.evaluation.linear.linear_probe` on the (cached) features. ``load`` reads the probe's splits
    (:func:`~sslkit.evaluation.probe.labeled_splits`); ``evaluated``, the page's split, gives them instead where it
    holds them (``val``'s parts, cut by :func:`~sslkit.evaluation.retrieval.load_evaluation_split`)."""
    from sslkit.evaluation.probe import VAL_FRACTION, labeled_splits, probe_features

    split = probe.get("split", "test")
    seed = int(probe.get("seed", 0))
    if evaluated is not None and evaluated.name == split and evaluated.fitted is not None:
        whole, train, labeled = evaluated.labeled_train, evaluated.fitted, evaluated.source
    else:  # the probe's own (its val split is part of train)
        whole, train, labeled, _ = labeled_splits(meta, split, load)
    saved = probe_files(run, split)[1]
    if saved.is_file():
        try:
            data = torch.load(saved, weights_only=True)
            encoder = data.get("sha256", probe.get("checkpoint_sha256"))
            if encoder == meta["sha256"] and torch.equal(data["labels"].long(), labeled.labels.long()):
                return Predictions(split, labeled, labeled.labels, data["predictions"].long(), False)
        except Exception:  # noqa: BLE001 — an unreadable or foreign file is recomputed, never trusted
            pass
    from sslkit.evaluation.linear import linear_probe

    train_x, test_x = probe_features(  # the probe's feature cache, sliced for a val probe as the probe does
        lambda part, source: retrieval.split_features(run, meta, source, part, console=console)[0], whole, labeled,
        split)
    result = linear_probe(train_x, train.labels, test_x, labeled.labels, len(train.classes),
                          val_fraction=VAL_FRACTION, seed=seed)
    return Predictions(split, labeled, labeled.labels, result.predictions, True)


def user_grids(run: Path, encoder_sha256: str, split: str = "test", most: int = 3) -> list[Path]:
    """The newest ``sslkit neighbors`` grids of the run's ``split`` drawn by its current encoder (``encoder_sha256``;
    others show another encoder's neighbours), newest first, skipping any over :data:`MAX_EMBED_BYTES`.

    A grid's split is the one its record names (:func:`~sslkit.evaluation.retrieval.read_grid_record`); a grid whose
    record does not name one was drawn before ``--split val`` could be searched, and is shown on every page but
    val's, as it was before.

    A grid's encoder is the one its record names (:func:`~sslkit.evaluation.retrieval.read_grid_record`), whatever the
    file times: a copy of the run (``cp -r``) gives every file a new time, in the order they were copied. A grid
    without a record (drawn before grids had one) is counted as the current encoder's when it is no older than
    ``encoder.safetensors``, as it was before."""
    folder, weights = Path(run) / "neighbors", Path(run) / "encoder.safetensors"
    if not folder.is_dir() or not weights.is_file():
        return []
    since = weights.stat().st_mtime

    def shown(grid: Path) -> bool:
        record = retrieval.read_grid_record(grid) or {}  # read (and the grid hashed) once
        drawn_by, searched = record.get("encoder_sha256"), record.get("split")
        current = grid.stat().st_mtime >= since if drawn_by is None else drawn_by == encoder_sha256
        return current and (split != HELD_OUT if searched is None else searched == split)

    grids = [p for p in folder.glob("*.png") if p.stat().st_size <= MAX_EMBED_BYTES and shown(p)]
    return sorted(grids, key=lambda p: p.stat().st_mtime, reverse=True)[:most]


def misclassified_indices(labels: torch.Tensor, predictions: torch.Tensor, n: int = 32, seed: int = 0) -> list[int]:
    """Up to ``n`` seeded misclassified rows, in index order.

    Shape:
        labels: (N,), predictions: (N,) -> ≤ n indices
    """
    wrong = torch.nonzero(torch.as_tensor(labels) != torch.as_tensor(predictions)).flatten()
    g = torch.Generator().manual_seed(seed)
    return wrong[torch.randperm(len(wrong), generator=g)[:n]].sort().values.tolist()


# --- HTML ------------------------------------------------------------------------------------------------------


@dataclass
class Section:
    """One part of the page: an anchor, a heading, and its HTML (or the reason it is missing)."""

    key: str
    title: str
    body: list[str] = field(default_factory=list)
    missing: str | None = None


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


FINETUNE_FIGURES = ("finetune.png", "finetune_fgsm.png")  # written by sslkit finetune into RUN/figures/


def _img(path: Path, alt: str, page: Path) -> str:
    """A figure embedded in the page, linked to its PNG file as seen from ``page`` (where the page will be), to
    open at full size; the embedded copy shows wherever the page is moved."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    href = urllib.parse.quote(Path(os.path.relpath(Path(path).resolve(), Path(page).resolve().parent)).as_posix())
    return (f'<figure><a href="{_esc(href)}" title="open the figure at full size">'
            f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}"></a></figure>')


def _is_rate(key: str) -> bool:
    """Whether ``key`` is an accuracy-like share (shown as a percentage), its mean and spread over seeds included."""
    key = key.removesuffix(".mean").removesuffix(".std")
    return (key.endswith(("top1", "top5", "purity", "hungarian_acc", "accuracy", "acc", "ssl - supervised"))
            or key.startswith("fgsm."))


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if _is_rate(key) and -1 <= v <= 1:
            return f"{v:.2%}" if key.endswith(".std") else f"{v:.1%}"
        if key.startswith("kmeans.") and abs(v) < 1:
            return f"{v:.4f}"  # the clustering scores of a row (silhouette, NMI, ARI) with the same decimals
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return _esc(v)


def _points(key: str, v: Any) -> Any:
    """A difference of two rates as percentage points, its sign always shown (``+3.3 points``); its spread over
    seeds without a sign. Other values as they are."""
    if not isinstance(v, float) or isinstance(v, bool) or math.isnan(v) or not _is_rate(key):
        return v
    return f"{v * 100:.2f} points" if key.endswith(".std") else f"{v * 100:+.1f} points"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()) -> str:
    """An HTML table; cells are given as HTML (escape before), ``classes`` style the columns."""
    cls = list(classes) + [""] * (len(header) - len(classes))
    head = "".join(f'<th class="{c}">{h}</th>' for h, c in zip(header, cls, strict=True))
    body = "".join("<tr>" + "".join(f'<td class="{c}">{v}</td>' for v, c in zip(row, cls, strict=True)) + "</tr>"
                   for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def metrics_table(models: dict[str, dict[str, Any]], rows: Sequence[tuple[str, str]],
                  baselines: Sequence[str] = (), heading: Callable[[str], str] = str) -> str:
    """Metrics as rows, models as columns headed ``heading(name)``, each score row's best value in bold by ``sslkit
    probe``'s rule (:func:`~sslkit.evaluation.probe.best_score`: rows of settings, sizes, times and spreads are not
    bolded)."""
    names = list(models)
    out = []
    for key, label in rows:
        values = [models[n].get(key) for n in names]
        best = best_score(key, values)
        cells = [f"<b>{_fmt(key, v)}</b>" if best is not None and v == best else _fmt(key, v) for v in values]
        out.append([_esc(label), *cells])
    header = ["metric", *[_esc(heading(n)) for n in names]]
    classes = ["", *["num baseline" if n in baselines else "num" for n in names]]
    return _table(header, out, classes)


def _flat_table(d: dict[str, Any]) -> str:
    return _table(["key", "value"], [[_esc(k), _fmt(k, v)] for k, v in d.items()], ["", "num"])


def _cell(key: str, v: Any) -> str:
    """One table cell: a scalar formatted; a mapping of scalars as ``key value`` lines; anything deeper only named
    (it stays in the JSON file)."""
    if not isinstance(v, (dict, list)):
        return _fmt(key, v)
    if not v:
        return "—"
    if isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()):
        return "<br>".join(f"{_esc(k)} {_fmt(f'{key}.{k}', x)}" for k, x in v.items())
    noun = ("entry", "entries") if isinstance(v, dict) else ("item", "items")
    size = f"{len(v)} {noun[len(v) != 1]}"
    return f'<span class="muted">{size} (in the JSON file)</span>'


def generic_tables(obj: Any, title: str = "") -> list[str]:
    """HTML tables for a JSON document of unknown layout (``finetune.json`` is another command's file).

    Scalars become a key–value table; a mapping of mappings a metrics × names table; a list of mappings a
    table with one row each; anything deeper is shown as JSON.
    """
    out: list[str] = []
    if isinstance(obj, dict):
        scalars = {k: v for k, v in obj.items() if not isinstance(v, (dict, list))}
        if scalars:
            out.append((f"<h3>{_esc(title)}</h3>" if title else "") + _flat_table(scalars))
        for k, v in obj.items():
            if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()) and all(
                    not isinstance(y, (dict, list)) for x in v.values() for y in x.values()):
                keys = list(dict.fromkeys(key for x in v.values() for key in x))
                out.append(f"<h3>{_esc(k)}</h3>" + metrics_table(v, [(key, key) for key in keys]))
            elif isinstance(v, dict) and v and all(not isinstance(x, (dict, list)) for x in v.values()):
                out.append(f"<h3>{_esc(k)}</h3>" + _flat_table(v))
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                keys = list(dict.fromkeys(key for x in v for key in x))
                rows = [[_cell(key, x.get(key)) for key in keys] for x in v]
                out.append(f"<h3>{_esc(k)}</h3>" + _table([_esc(key) for key in keys], rows))
            elif isinstance(v, (dict, list)):
                out.append(f"<h3>{_esc(k)}</h3><pre>{_esc(json.dumps(v, indent=2))}</pre>")
    else:
        out.append(f"<pre>{_esc(json.dumps(obj, indent=2))}</pre>")
    return out


CSS = """
:root { --ink:#1d2330; --muted:#5f6b7a; --line:#e3e7ee; --accent:#1f3b73; --bg:#f6f8fb; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:var(--accent); color:white; padding:28px 0 20px; }
header h1 { margin:0 0 4px; font-size:26px; font-weight:600; }
header p { margin:0; opacity:.85; }
.wrap { max-width:1180px; margin:0 auto; padding:0 24px; }
nav { position:sticky; top:0; background:white; border-bottom:1px solid var(--line); z-index:2; }
nav .wrap { display:flex; flex-wrap:wrap; gap:4px 16px; padding-top:8px; padding-bottom:8px; font-size:13px; }
nav a { color:var(--accent); text-decoration:none; white-space:nowrap; }
nav a.off { color:var(--muted); }
section { background:white; border:1px solid var(--line); border-radius:8px; margin:22px 0; padding:6px 24px 18px;
          scroll-margin-top:120px; }
h2 { font-size:20px; margin:16px 0 10px; }
h3 { font-size:15px; margin:16px 0 6px; color:var(--muted); }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(190px, 1fr)); gap:12px; margin:14px 0 4px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 14px; background:#fbfcfe; }
.card .k { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:20px; font-weight:600; margin-top:2px; }
.card .s { font-size:12px; color:var(--muted); }
figure { margin:10px 0; text-align:center; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
.scroll { overflow-x:auto; }
.scroll tr > :first-child { white-space:nowrap; }  /* a metric's name on one line: a narrow screen scrolls the table */
table { border-collapse:collapse; margin:8px 0 12px; font-size:14px; }
th, td { padding:5px 12px; border-bottom:1px solid var(--line); text-align:left; }
th { background:#f0f3f8; font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.baseline, th.baseline { color:var(--muted); text-align:right; font-variant-numeric:tabular-nums; }
tbody tr:nth-child(even) { background:#fafbfd; }
.note { background:#fff8e6; border:1px solid #f3d48b; border-radius:6px; padding:10px 14px; margin:10px 0; }
.note code, p code { background:#f0f3f8; padding:1px 5px; border-radius:3px; }
.muted { color:var(--muted); font-size:13px; }
pre { background:#f6f8fb; border:1px solid var(--line); border-radius:6px; padding:12px; overflow-x:auto;
      font-size:12.5px; line-height:1.4; }
details summary { cursor:pointer; color:var(--accent); margin:6px 0; }
.recipe { display:grid; grid-template-columns:repeat(auto-fill, minmax(250px, 1fr)); gap:12px; margin:12px 0; }
.kv { border:1px solid var(--line); border-radius:8px; padding:8px 12px; background:#fbfcfe; }
.kv .k { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; margin-bottom:4px; }
.kv table { margin:0; font-size:12.5px; width:100%; }
.kv td { padding:2px 0; border:none; font-family:ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
.kv td:last-child { text-align:right; color:var(--ink); }
.kv tbody tr:nth-child(even), .kv tr:nth-child(even) { background:none; }
footer { color:var(--muted); font-size:12px; padding:10px 0 30px; }
@media (max-width:760px) {
  .wrap { padding:0 10px; } section { padding:4px 12px 12px; }
  figure a { text-decoration:none; }
  figure a::after { content:"tap to open at full size"; display:block; font-size:12px; color:var(--muted); }
  /* A table wider than the screen scrolls sideways under its names, which stay; the hint says there is more (the
     baselines' columns were cut off at a column's edge, with nothing to tell they were there). */
  .scroll tr > :first-child { position:sticky; left:0; z-index:1; background:white; box-shadow:2px 0 3px -2px #0003; }
  .scroll thead tr > :first-child { background:#f0f3f8; }
  .scroll tbody tr:nth-child(even) > :first-child { background:#fafbfd; }
  .scroll::before { content:"wider than the screen? swipe the table sideways for every column"; display:block;
                   font-size:12px; color:var(--muted); position:sticky; left:0; }
}
"""


def recipe_html(text: str) -> str:
    """The recipe's sections side by side, one compact box each (``key  value`` lines); the YAML text itself
    when it is not a mapping of sections."""
    try:
        recipe = safe_load(text)
    except yaml.YAMLError:
        recipe = None
    if not isinstance(recipe, dict):
        return f"<pre>{_esc(text)}</pre>"
    top = {k: v for k, v in recipe.items() if not isinstance(v, dict)}
    boxes = [("run", top)] if top else []
    boxes += [(k, v) for k, v in recipe.items() if isinstance(v, dict)]
    parts = []
    for name, values in boxes:
        rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_yaml_value(v))}</td></tr>" for k, v in values.items())
        parts.append(f'<div class="kv"><div class="k">{_esc(name)}</div><table>{rows}</table></div>')
    return f'<div class="recipe">{"".join(parts)}</div>'


def _yaml_value(v: Any) -> str:
    """A recipe value as YAML writes it inline (``null``, ``[0.2, 1.0]``, ``true``)."""
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _without_one_seed_std(d: Any) -> Any:
    """``d`` without its ``….std`` keys where it is of one seed: finetune.json stores 0.0 there (its spread is
    unknown, not 0), which the page would show as "± 0.00%"; ``sslkit finetune``'s own table shows the mean alone."""
    if not isinstance(d, dict) or not isinstance(d.get("seeds"), int) or d["seeds"] > 1:
        return d
    return {k.removesuffix(".mean"): v for k, v in d.items() if not k.endswith(".std")}  # the one seed's value


def _finetune_headline(finetune: dict[str, Any]) -> dict[str, Any]:
    """The summary per arm and the difference ssl − supervised (a signed gap, in points) of finetune.json, without
    the spread of one seed."""
    headline = {k: finetune[k] for k in ("summary", "difference") if k in finetune}
    if isinstance(headline.get("summary"), dict):
        headline["summary"] = {arm: _without_one_seed_std(m) for arm, m in headline["summary"].items()}
    if isinstance(headline.get("difference"), dict):
        headline["difference"] = {k: _points(k, v) for k, v in _without_one_seed_std(headline["difference"]).items()}
    return headline


def _finetune_card(finetune: dict[str, Any]) -> str:
    """The overview's fine-tuning card: the SSL arm's test top-1 against the supervised one, from finetune.json."""
    try:
        arms, diff = finetune["summary"], finetune["difference"]
        ssl, sup = arms["ssl"]["test_top1.mean"], arms["supervised"]["test_top1.mean"]
        labels = finetune["sizes"]["labeled"]
        seeds = (f"ssl ahead in {diff['ssl_wins']}/{diff['seeds']} seeds" if diff["seeds"] > 1 else
                 "one seed")
        return _card(f"fine-tuning ({finetune.get('split', 'test')})", f"{ssl:.1%}",
                     f"{labels:,} labels; from scratch {sup:.1%} ({diff['test_top1.mean'] * 100:+.1f} points, "
                     f"{seeds})")
    except (KeyError, TypeError):  # another command's file: its layout may change
        return _card("fine-tuning", "done", "see the last section")


def _card(key: str, value: str, sub: str = "") -> str:
    return (f'<div class="card"><div class="k">{_esc(key)}</div><div class="v">{value}</div>'
            f'<div class="s">{sub}</div></div>')


def render_html(title: str, subtitle: str, sections: Sequence[Section], footer: str) -> str:
    """The whole page: header, a sticky table of contents, the sections; no external resource of any kind."""
    nav = "".join(f'<a href="#{s.key}"{" class=off" if s.missing else ""}>{_esc(s.title)}</a>' for s in sections)
    parts = []
    for s in sections:
        body = "".join(s.body)
        if s.missing:
            body += f'<div class="note">{s.missing}</div>'
        parts.append(f'<section id="{s.key}"><h2>{_esc(s.title)}</h2>{body}</section>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
            f'<header><div class="wrap"><h1>{_esc(title)}</h1><p>{subtitle}</p></div></header>'
            f'<nav><div class="wrap">{nav}</div></nav><main class="wrap">{"".join(parts)}</main>'
            f'<footer class="wrap">{footer}</footer></body></html>\n')


# --- the report ------------------------------------------------------------------------------------------------


def _monitor_text(recipe_text: str | None) -> str:
    """What the online k-NN monitor scored, from the run's recipe (k and image counts); generic without one."""
    try:
        monitor = (safe_load(recipe_text or "") or {}).get("monitor") or {}
        return (f"k={int(monitor['k'])}, {int(monitor['val_size']):,} held-out images, bank of "
                f"{int(monitor['bank_size']):,}")
    except (yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError):
        return "held-out images"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}) — re-run the command that wrote "
                        "it") from None
    return data if isinstance(data, dict) else {"value": data}


def _check_probe_json(probe: dict[str, Any] | None, path: Path, command: str) -> None:
    """A ``UserError`` when ``probe.json`` lacks the layout the report reads (a table of models, each a mapping of
    scores; its split; numeric label fractions): the report died on it with a traceback after drawing its figures.
    ``command`` is the probe that writes the file again."""
    if probe is None:
        return
    models, fractions = probe.get("models"), probe.get("fractions", [])
    problem = None
    if not isinstance(models, dict) or not models or not all(isinstance(m, dict) for m in models.values()):
        problem = "no 'models' table of scores"
    elif not isinstance(probe.get("split"), str):
        problem = "no 'split'"
    elif not isinstance(fractions, list) or not all(isinstance(f, (int, float)) for f in fractions):
        problem = "'fractions' that are not a list of numbers"
    if problem:
        raise UserError(f"{path} is not as `sslkit probe` writes it ({problem}) — run `{command}` again, or move the "
                        "file away")


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def _split_arg(split: str) -> str:
    """`` --split SPLIT`` for a command line, nothing for the default split (test)."""
    return "" if split == "test" else f" --split {split}"


def _cmd(text: str) -> str:
    return f"<code>{_esc(text)}</code>"


def probe_protocol(probe: dict[str, Any]) -> str:
    """How the probe chose the linear probes' L2 strength, as a sentence (plain text), from ``probe.json``'s
    protocol and each label fraction's ``folds``; empty for a probe.json that does not record it.

    The choice is part of what a label-efficiency number means: at 1 % of the labels one validation part is a
    few dozen images, so the rule (one part, or cross-validation below ``linear_cv_below`` held-out images) is
    stated beside the table.
    """
    protocol = probe.get("protocol") or {}
    share = protocol.get("linear_val_fraction")
    if not isinstance(share, (int, float)):
        return ""
    text = f"The linear probes' L2 strength is chosen on the labeled train images alone: on a stratified {share:.0%} "
    below, folds = protocol.get("linear_cv_below"), protocol.get("linear_cv_folds")
    if not isinstance(below, int) or not isinstance(folds, int):
        return text + "validation part."
    text += (f"validation part, or, where that part would hold fewer than {below:,} images, by {folds}-fold "
             "stratified cross-validation scored on every held-out prediction")
    first = next(iter((probe.get("models") or {}).values()), {})
    used = []
    for f in probe.get("fractions", []):
        k = first.get(f"label_fraction.{f:g}.folds") if isinstance(f, (int, float)) else None
        if isinstance(k, int):
            way = {0: "none (too few labels to choose)", 1: "one validation part"}.get(k, f"{k} folds")
            used.append(f"{'all labels' if f >= 1 else f'{100 * f:g}% of labels'}: {way}")
    return text + (f" (here {'; '.join(used)})." if used else ".")


def knn_protocol(probe: dict[str, Any]) -> str:
    """How the k-NN rows vote, as a sentence (plain text), from ``probe.json``'s protocol; empty for a probe.json that
    does not record its temperature. The table's "weighted" and "majority" mean nothing without it."""
    temperature = (probe.get("protocol") or {}).get("knn_temperature")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
        return ""
    return ("k-NN: the k labeled train images nearest to each scored image by cosine similarity of the features vote "
            f"for their class, each with weight exp(similarity / {temperature:g}) (weighted) or one vote "
            "(majority).")


def build_report(run: str | Path, split: str = "test", method: str = "umap", out: str | Path | None = None,
                 seed: int = 0, max_points: int = MAX_MAP_POINTS, console: Console | None = None,
                 data_root: str | Path | None = None) -> Path:
    """Writes ``RUN/report.html``: recipe, training, augmentations, probe, clusters, map, neighbours, errors,
    kernels and fine-tuning of one run, on one self-contained page.

    The page is of one split: the probe's numbers are those of that split's probe (``probe.json`` for test,
    ``probe-<split>.json`` for another, as ``sslkit probe --split`` writes them), and its map, neighbours and clusters
    are drawn from it. ``val`` is the labeled part of train the val probe scores on. A page of another split than
    test is written to ``RUN/report-<split>.html``, so that the test split's page is kept, and shows no test-split
    number (the fine-tuning results, of the test split, are left to that page).

    Args:
        run: the run directory (it needs an exported encoder).
        split: the split the probe results, map, neighbours and clusters are of.
        method: the map: ``umap`` or ``tsne``.
        out: where to write the page; ``RUN/report.html`` (``RUN/report-<split>.html``) by default.
        seed: seeds every sampled figure.
        max_points: most images on the map (a seeded subset beyond).
        console: where progress and the summary go.
        data_root: where the run's data is now, in place of its ``data.root`` (``--data-root``).

    Returns:
        The page's path.

    Raises:
        UserError: a run without an encoder, an unknown split or map method, missing data, or a broken
            ``probe.json`` / ``finetune.json``.
    """
    from sslkit.data import scored_splits, split_description, unscored_reason
    from sslkit.evaluation.clustering import kmeans
    from sslkit.evaluation.probe import BASELINES, KMEANS_RESTARTS, ROWS, column_name, score_rows
    from sslkit.viz import (
        MAP_NAMES,
        plot_clusters,
        plot_confusion,
        plot_label_efficiency,
        plot_misclassified,
        plot_training_curves,
    )

    t0 = time.perf_counter()
    console = console or PipeSafeConsole()
    run = Path(run)
    meta = retrieval.read_meta(run, data_root)  # a run without an exported encoder stops here, before any work
    check_map_options(method, max_points)
    own = split_file("report.html", split)
    out_path = check_output(out, "--out", (".html", ".htm"), run, own=own) if out else run / own
    check_run_writable(run, ("features", "figures"), "its features cache and figures")
    results, _, efficiency_png = probe_files(run, split)  # the predictions' file: probe_predictions
    # The command that writes this split's probe; None for a split the probes learn from or that has no labels.
    probed = split == HELD_OUT or split in scored_splits(meta["dataset"])
    probe_cmd = f"sslkit probe {run}{_split_arg(split)}" if probed else None
    probe = _read_json(results)
    _check_probe_json(probe, results, probe_cmd or f"sslkit probe {run}")
    elsewhere = None  # the split of a probe file that holds another split's probe (an older sslkit's val probe)
    if probe and probe["split"] != split:
        elsewhere, probe = probe["split"], None
    finetune = _read_json(run / "finetune.json")
    foreign = None  # a finetune.json written here by the fine-tune of another run's encoder (its --out)
    if finetune and finetune.get("encoder_sha256") not in (None, meta["sha256"]):
        foreign, finetune = finetune, None
    # finetune.json names its split as split_description does: "test" for most data sets, but for an image folder
    # "test (20% of the image folder, held out of pretraining)", which is no split's name: the page hid those results
    # and sent its reader to a --split of that name. The description is read back as the split it describes.
    described_as = {split_description(meta["dataset"], s): s for s in scored_splits(meta["dataset"])}
    finetune_split = described_as.get(v := finetune.get("split", "test"), v) if finetune else None
    if finetune_split not in (None, split):  # its numbers are of another split: left to that split's page
        finetune = None
    # Each split of the run's data read once for the whole page (this split, the pretraining one, the probe's).
    load = retrieval.SplitMemo()
    evaluated = retrieval.load_evaluation_split(meta, split, load)  # the images of the map, neighbours and clusters
    source, described = evaluated.source, evaluated.described
    # Why the probe's sections are empty, and what fills them (HTML).
    if probe_cmd is None:
        why = unscored_reason(meta["dataset"], split, "they learn from")
        no_probe = (f"The probes are not scored on the {_esc(split)} split (it {_esc(why)}): the probe's results are "
                    f"on the test split's page, {_cmd(f'sslkit report {run}')}.")
    elif elsewhere is not None:
        no_probe = (f"{_esc(results.name)} holds a probe of the {_esc(elsewhere)} split, not of {_esc(split)} (an "
                    f"older sslkit wrote every split's probe there): run {_cmd(probe_cmd)}.")
    else:
        no_probe = None
    figures = run / "figures"
    events = read_events(run)
    sections: list[Section] = []

    def img(path: Path, alt: str) -> str:
        return _img(path, alt, page=out_path)

    def attempt(section: Section, make: Callable[[], None]) -> None:
        # A figure that cannot be made (data moved, an old recipe) becomes a note on the page, not a failed report.
        try:
            make()
        except UserError as e:
            section.missing = f"Could not be made: {_esc(e)}"

    steps = 11
    with progress_bar(console) as bar:
        task = bar.add_task("report", total=steps)

        def done(what: str) -> None:
            bar.update(task, advance=1, description=f"report: {what}")

        # overview
        overview = Section("overview", "Overview")
        pretrained_on = meta.get("split", "train")  # runs from before data.split pretrained on train
        data_line = f"{meta['image_size']}px, {meta['in_chans']} channel(s)"
        cards = [_card("data", _esc(meta["dataset"]),
                       data_line if pretrained_on == "train" else f"{_esc(pretrained_on)} split, {data_line}"),
                 _card("encoder", _esc(meta["encoder"]), f"{_esc(meta['stem'])} stem, sha256 {meta['sha256'][:12]}")]
        train_events = [e for e in events if "loss" in e]
        knn_events = [e for e in events if "knn/top1" in e]
        if train_events:
            last = train_events[-1]
            ips = [e["img_per_s"] for e in train_events if isinstance(e.get("img_per_s"), (int, float))]
            cards.append(_card("training", f"{last['step']:,} steps",
                               f"{last.get('epoch', 0):.2f} epochs, median {np.median(ips):,.0f} img/s" if ips
                               else f"{last.get('epoch', 0):.2f} epochs"))
            # The loss is noisy from step to step: the mean of the last tenth of the logs (at most 10), which a
            # short run's few logs keep close to its end.
            tail = [e["loss"] for e in train_events[-min(10, -(-len(train_events) // 10)):]]
            cards.append(_card("final loss", f"{float(np.mean(tail)):.3f}",
                               (f"mean of the last {len(tail)} logs (last {last['loss']:.3f})" if len(tail) > 1 else
                                "the last log") + f"; first logged {train_events[0]['loss']:.3f}"))
        if knn_events:
            cards.append(_card("online k-NN top-1", f"{knn_events[-1]['knn/top1']:.1%}",
                               f"from {knn_events[0]['knn/top1']:.1%} at step {knn_events[0]['step']}"
                               f"{' (untrained)' if knn_events[0]['step'] == 0 else ''}"))
        if probe:
            enc = probe["models"].get("encoder", {})
            base = {b: probe["models"][b].get("linear.top1") for b in BASELINES if b in probe["models"]}
            sub = ", ".join(f"{b.replace('_', ' ')} {v:.1%}" for b, v in base.items() if v is not None)
            if enc.get("linear.top1") is not None:
                if probe.get("checkpoint_sha256") and probe["checkpoint_sha256"] != meta["sha256"]:
                    sub = f"of another encoder than the run's — re-run {_cmd(probe_cmd)}"
                cards.append(_card(f"linear probe ({probe['split']})", f"{enc['linear.top1']:.1%}", sub))
        if finetune:
            cards.append(_finetune_card(finetune))
        overview.body.append(f'<div class="cards">{"".join(cards)}</div>')
        todo = []
        if probe is None and no_probe is None:
            todo.append(_cmd(probe_cmd))
        if finetune is None and finetune_split is None:
            todo.append(_cmd(f"sslkit finetune {run}"))
        if todo:
            said = ("their sections below say what they", "its section below says what it")[len(todo) == 1]
            overview.body.append(f'<p class="muted">Not run yet for this run: {", ".join(todo)} — {said} would '
                                 "add.</p>")
        sections.append(overview)

        # recipe
        recipe = Section("recipe", "Recipe")
        recipe_path = run / "recipe.yaml"
        text = recipe_path.read_text() if recipe_path.is_file() else None  # read once: this section, the curves
        if text is not None:
            recipe.body.append(f'<p class="muted">{_esc(recipe_path)}, every default written out; '
                               f"{_cmd(f'sslkit pretrain {recipe_path} --out NEW_RUN')} repeats the run.</p>"
                               + recipe_html(text)
                               + f"<details><summary>recipe.yaml as written</summary><pre>{_esc(text)}</pre>"
                               "</details>")
        else:
            recipe.missing = "This run has no recipe.yaml."
        recipe.body.append(f"<details><summary>encoder.json</summary><pre>{_esc(json.dumps(meta, indent=2))}"
                           "</pre></details>")
        sections.append(recipe)
        done("recipe")

        # training curves
        curves = Section("training", "Training curves")
        if events:
            steps_done = train_events[-1]["step"] if train_events else 0
            path = plot_training_curves(events, figures / "training_curves.png",
                                        title=f"{run.name}: pretraining, {steps_done:,} steps (loss logged "
                                              f"{len(train_events):,} times)", knn_what=_monitor_text(text))
            curves.body.append(img(path, "training curves"))
        else:
            curves.missing = f"No metrics.jsonl events in {_esc(run)}."
        sections.append(curves)
        done("training curves")

        augment = Section("augmentations", "Augmentation preview")
        augment.body.append('<p class="muted">Pretraining-pool images (left) and random views of them, drawn with '
                            "the run's own augmentation settings and normalisation statistics, as the trainer saw "
                            "them.</p>")

        def make_augment() -> None:
            if not recipe_path.is_file():
                raise UserError("the run has no recipe.yaml")
            augment.body.append(img(figure_augmentations(run, meta, figures / "augmentations.png", seed=seed,
                                                         load=load), "augmentation preview"))

        attempt(augment, make_augment)
        sections.append(augment)
        done("augmentations")

        # probe
        heading = functools.partial(column_name, probe) if probe else str  # the run named beside --compare runs
        probe_sec = Section("probe", "Linear probe, k-NN and baselines")
        eff = Section("label-efficiency", "Label efficiency")
        if probe:
            models = probe["models"]
            rows = score_rows(models)
            fr = [f for f in probe.get("fractions", []) if f < 1]
            first = next(iter(models.values()))
            rows += [(f"label_fraction.{f:g}.top1", f"linear top-1, {100 * f:g}% of labels "
                      f"(n={_count(first.get(f'label_fraction.{f:g}.n'))})") for f in fr]
            rows += [("linear.weight_decay", "linear weight decay (chosen on train)"), ("dim", "feature dim")]
            sizes = probe.get("sizes", {})
            probe_sec.body.append(
                f'<p class="muted">Probes trained on {_count(sizes.get("train"))} labeled train images and scored on '
                f'{_count(sizes.get(probe["split"]))} {_esc(probe.get("split_description", probe["split"]))} images. '
                "Baselines: <b>raw_pixels</b> (the images, normalised and flattened) and <b>random_init</b> (the "
                "same architecture with random weights), both on images normalised with the labeled train "
                "split's own mean and std. Best score of each row in bold (not silhouette's, which does not "
                f"compare across feature spaces). {_esc(probe_protocol(probe))} {_esc(knn_protocol(probe))}</p>")
            probe_sec.body.append(metrics_table(models, rows, BASELINES, heading))
            probe_sec.body += [f'<div class="note">{_esc(note)}</div>' for note in probe.get("notes", [])]
            if probe.get("checkpoint_sha256") and probe["checkpoint_sha256"] != meta["sha256"]:
                probe_sec.body.append(f'<div class="note">{_esc(results.name)} was measured on another encoder '
                                      f"(sha256 {_esc(probe['checkpoint_sha256'][:12])}) than the run's "
                                      f"current one — re-run {_cmd(probe_cmd)}.</div>")
            if probe.get("fractions"):
                plot_label_efficiency(probe, efficiency_png)
                eff.body.append(img(efficiency_png, "label efficiency"))
                eff_rows = []
                for f in probe["fractions"]:
                    key = f"label_fraction.{f:g}"
                    eff_rows.append((f"{key}.top1", f"{100 * f:g}% of labels (n={_count(first.get(f'{key}.n'))})"))
                eff.body.append(metrics_table(models, eff_rows, BASELINES, heading))
            else:
                eff.missing = f"{_esc(results.name)} holds no label fractions."
        elif no_probe is not None:
            probe_sec.missing = eff.missing = no_probe
        else:
            probe_sec.missing = (f"{_cmd(probe_cmd)} has not been run for this run: it fits the linear "
                                 "probe, k-NN and k-means of the encoder beside raw-pixel and random-init baselines "
                                 f"and writes {_esc(results.name)}; then run this report again.")
            eff.missing = f"Comes from the probe: run {_cmd(probe_cmd)}."
        sections += [probe_sec, eff]
        done("probe")

        # features for the split-level figures
        feats, feats_path = retrieval.evaluation_features(run, meta, evaluated, console=console)
        done(f"{split} features")

        clusters = Section("clusters", "k-means clusters")
        if probe:
            km_rows = [(k, label) for k, label in ROWS if k.startswith("kmeans.")]
            clusters.body.append('<p class="muted">Spherical k-means with k = number of classes on the '
                                 f"{_esc(probe['split'])} features; scored against the labels.</p>")
            clusters.body.append(metrics_table(probe["models"], km_rows, BASELINES, heading))
        else:
            clusters.body.append(f'<div class="note">Metrics (silhouette, NMI, ARI, purity) come from '
                                 f"{_cmd(probe_cmd)}, which has not been run.</div>" if no_probe is None else
                                 f'<div class="note">{no_probe}</div>')
        k = max(2, len(torch.unique(source.labels[source.labels >= 0]))) if bool((source.labels >= 0).any()) else 10
        k = min(k, len(source))
        # The probe's seed and restarts: the clusters drawn are the ones its table beside them scored (with the
        # page's --seed they were another clustering whenever that seed differed). --seed picks the members shown.
        km_seed = int(probe.get("seed", seed)) if probe else seed
        assign = kmeans(feats, k, seed=km_seed, restarts=KMEANS_RESTARTS)
        path = plot_clusters(source.images, assign, source.labels, source.classes,
                             figures / split_file("kmeans_clusters.png", split),
                             seed=seed, title=f"k-means (k={k}, seed {km_seed}) on {len(source):,} {split} images: "
                                              "random members, green = the cluster's majority class, red = another "
                                              "(named)")
        clusters.body.append(img(path, "k-means cluster samples"))
        sections.append(clusters)
        done("k-means")

        name = MAP_NAMES[method]
        map_sec = Section("map", f"{name} map")
        mapped = min(len(source), max_points)  # the images draw_map maps: a thumbnail per 20, MAP_THUMBNAILS at most
        path = draw_map(evaluated, feats, feats_path, method, figures / f"report-{method}-{split}.png", seed,
                        max_points, min(MAP_THUMBNAILS, mapped // 20),
                        lambda images: f"{name} of {images} (cosine, seed {seed})").path
        map_sec.body.append(img(path, f"{name} map"))
        sections.append(map_sec)
        done(f"{name} map")

        nn_sec = Section("neighbors", "Nearest neighbours")
        neighbors_cmd = f"sslkit neighbors {run} --query 3 17{_split_arg(split)}"
        nn_sec.body.append('<p class="muted">Each row: a query image, then its most similar images by cosine '
                           "similarity of the encoder's features (the query excluded); green frames share the "
                           f"query's class, red ones do not. More with {_cmd(neighbors_cmd)}.</p>")
        n_q, k_nn = min(NEIGHBOR_QUERIES, len(source)), min(8, len(source) - 1)
        if k_nn >= 1:  # as `sslkit neighbors RUN --query random:N` draws them, exact search
            picked = retrieval.parse_queries([f"random:{n_q}"], len(source), split, seed)
            path = retrieval.draw_neighbors(run, meta, evaluated, feats, feats_path, picked, k_nn,
                                            figures / f"neighbors-{split}.png").path
            nn_sec.body.append(f"<h3>{n_q} random {_esc(split)} images (seed {seed})</h3>"
                               + img(path, "nearest neighbours of random queries"))
        else:
            nn_sec.missing = "The split is too small for a neighbour search."
        for g in user_grids(run, meta["sha256"], split):
            nn_sec.body.append(f"<h3>{_esc(g.name)} (from <code>sslkit neighbors</code>)</h3>"
                               + img(g, f"neighbours {g.name}"))
        sections.append(nn_sec)
        done("neighbours")

        conf = Section("confusion", "Confusion matrix (linear probe)")
        mis = Section("misclassified", "Misclassified examples")
        if probe:
            pred = probe_predictions(run, meta, probe, console, load, evaluated)
            how = " (recomputed here for the run's encoder)" if pred.computed else ""
            path = plot_confusion(pred.labels, pred.predictions, pred.source.classes,
                                  figures / split_file("confusion_matrix.png", split),
                                  title=f"Linear probe on {pred.split}{how}")
            conf.body.append(img(path, "confusion matrix"))
            wrong = misclassified_indices(pred.labels, pred.predictions, 32, seed)
            n_wrong = int((pred.labels != pred.predictions).sum())
            path = plot_misclassified(pred.source.images, pred.labels, pred.predictions, pred.source.classes, wrong,
                                      figures / split_file("misclassified.png", split),
                                      title=f"{len(wrong)} of the {n_wrong:,} {pred.split} images the linear probe "
                                            f"gets wrong{'' if len(wrong) == n_wrong else f' (random, seed {seed})'}")
            mis.body.append('<p class="muted">Indices refer to the labeled images of the split, in file order.</p>')
            mis.body.append(img(path, "misclassified examples"))
        else:
            conf.missing = no_probe or f"Needs the linear probe's predictions: run {_cmd(probe_cmd)}."
            mis.missing = conf.missing
        sections += [conf, mis]
        done("confusion matrix")

        kern = Section("kernels", "First-layer kernels")
        attempt(kern, lambda: kern.body.append(img(figure_kernels(run, figures / "kernels.png"), "kernels")))
        sections.append(kern)
        done("kernels")

        ft = Section("finetune", "Fine-tuning")
        if finetune:
            ft.body.append('<p class="muted">From finetune.json (SSL initialisation against a supervised baseline '
                           "trained on the same labels).</p>")
            # The charts sslkit finetune drew beside finetune.json, then its headline tables; the whole document
            # (per-seed runs with their epoch curves, FGSM, the recipe) stays one click away.
            ft.body += [f'<div class="note">{_esc(note)}</div>' for note in finetune.get("notes", [])]
            ft.body += [img(figures / name, name) for name in FINETUNE_FIGURES if (figures / name).is_file()]
            ft.body += generic_tables(_finetune_headline(finetune))
            rest = {k: v for k, v in finetune.items() if k not in ("summary", "difference", "notes")}
            ft.body.append("<details><summary>the rest of finetune.json (per-seed runs, sizes, protocol, recipe)"
                           "</summary>" + "".join(generic_tables(rest)) + "</details>")
        elif foreign is not None:
            ft.missing = (f"finetune.json here fine-tuned another encoder than this run's (run "
                          f"{_esc(foreign.get('run', '?'))}, sha256 {_esc(str(foreign['encoder_sha256'])[:12])}; this "
                          f"run's is now {_esc(meta['sha256'][:12])}), so it is not shown: "
                          f"{_cmd(f'sslkit finetune {run}')} fine-tunes this one.")
        elif finetune_split is not None:
            ft.missing = (f"Fine-tuning was scored on the {_esc(finetune_split)} split, so its results are on that "
                          f"split's page, not on this {_esc(split)} page: "
                          f"{_cmd(f'sslkit report {run}{_split_arg(finetune_split)}')}.")
        else:
            ft.missing = (f"{_cmd(f'sslkit finetune {run}')} has not been run for this run: it fine-tunes the "
                          "encoder and a supervised model from scratch on the same labels and writes "
                          "finetune.json.")
        sections.append(ft)
        done("fine-tuning")

    stamp = time.strftime("%Y-%m-%d %H:%M")
    named = f"{split} split{described.removeprefix(split)}"  # val split (a fixed, stratified sixth of …)
    subtitle = (f"{_esc(meta['dataset'])} · {_esc(meta['encoder'])} ({_esc(meta['stem'])} stem) · scores and figures "
                f"of the {_esc(named)} · made {stamp}")
    title = f"sslkit report — {run.name}" + ("" if split == "test" else f" ({split} split)")
    command = f"sslkit report {run}{_split_arg(split)}"
    page = render_html(title, subtitle, sections,
                       f"{_esc(command)} · seed {seed} · self-contained: every figure is embedded")
    atomic_write(out_path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    _print_summary(sections, out_path, time.perf_counter() - t0, console)
    return out_path


def _print_summary(sections: Sequence[Section], path: Path, seconds: float, console: Console) -> None:
    """Each section's status under a line naming the page. The line is printed on its own: as the table's title rich
    wrapped it to the table's width, which cut the page's path in two in a log."""
    console.print(f"sslkit report → {path}", highlight=False, soft_wrap=not console.is_terminal)
    table = Table()
    table.add_column("section")
    table.add_column("status")
    for s in sections:
        if s.missing:
            text = html.unescape(re.sub(r"<[^>]+>", "", s.missing))
            table.add_row(s.title, Text(text, style="yellow"))
        else:
            table.add_row(s.title, Text("included", style="green"))
    console.print(table)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {seconds:.0f} s)")
