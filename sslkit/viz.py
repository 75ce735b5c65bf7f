"""Figures made from run artefacts (matplotlib, Agg backend: no display needed).

Every function takes plain arrays (uint8 images (N, C, H, W), labels, features …) and a PNG path, writes the
figure and returns the path; none of them reads a run directory (that is :mod:`sslkit.report`'s job). Frames
are green where a shown image's class matches what it is compared with and red where it does not.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.offsetbox import AnnotationBbox, OffsetImage  # noqa: E402

from sslkit.checkpoint import atomic_write  # noqa: E402
from sslkit.errors import UserError  # noqa: E402

COLOURS = {"encoder": "#1f77b4", "raw_pixels": "#7f7f7f", "random_init": "#d62728"}
OTHER_COLOURS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2")  # --compare runs: none of those
MATCH, MISMATCH, NEUTRAL, QUERY = "#2ca02c", "#d62728", "#9e9e9e", "#1f3b73"
# Unlabeled points of a map: unfilled, opaque black rings beside the filled discs of the classes. A grey one was taken
# for a class: tab10's class 7 is #7f7f7f, tab20's classes 14 and 15 are #7f7f7f and #c7c7c7.
UNLABELED = "#000000"
# An unlabeled thumbnail's frame: UNLABELED, then a white line inside it (the frame's white fill, left showing by a
# wider pad). Black alone vanished around a dark image (Fashion-MNIST's black backgrounds); black and white show
# against dark and light images and the white page alike, and match no class's solid frame.
UNLABELED_INNER, UNLABELED_PAD = "#ffffff", 0.3
MAP_NAMES = {"umap": "UMAP", "tsne": "t-SNE"}  # a map method's name in titles, axes and the report's headings
MAP_METHODS: tuple[str, ...] = tuple(MAP_NAMES)
DPI = 120


# --- helpers -------------------------------------------------------------------------------------------------


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Writes ``fig`` to ``path`` atomically (:func:`~sslkit.checkpoint.atomic_write`) and closes it: a command
    interrupted mid-write leaves the figure it replaces whole, never a truncated file. The format is the extension's.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or None  # the temporary file's name does not end in it
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, facecolor="white", format=fmt))
    finally:
        plt.close(fig)
    return path


def _hwc(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """A (C, H, W) image as what ``imshow`` wants: (H, W) for one channel, (H, W, 3) for three."""
    a = np.asarray(torch.as_tensor(img).detach().cpu())
    if a.shape[0] == 1:
        return a[0]
    if a.shape[0] == 3:
        return a.transpose(1, 2, 0)
    return a[0]  # other channel counts: the first channel


def _show(ax: plt.Axes, img: torch.Tensor | np.ndarray, frame: str | None = None, width: float = 3.0) -> None:
    """Draws one (C, H, W) image (uint8, or float in [0, 1]) without ticks, optionally in a coloured frame."""
    a = _hwc(img)
    vmax = 255 if a.dtype == np.uint8 else 1.0
    small = max(a.shape[:2]) <= 64  # tiny images keep their pixels crisp instead of being smoothed
    ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=vmax,
              interpolation="nearest" if small else "antialiased")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(width)


def _name(label: int, classes: Sequence[str]) -> str:
    return classes[label] if 0 <= label < len(classes) else "unlabeled"


def class_colours(n: int) -> list[Any]:
    """``n`` distinguishable colours: tab10 up to 10 classes, tab20 up to 20, then evenly spaced hues."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def _empty(path: Path, title: str, message: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, color="#555555")
    return save_figure(fig, path)


# --- probe ---------------------------------------------------------------------------------------------------------


def plot_label_efficiency(report: dict[str, Any], path: Path) -> Path:
    """Test error of the linear probe against the number of labeled training images, log-log, per model.

    Args:
        report: what ``sslkit probe`` writes to ``probe.json`` (``models``, ``fractions``, ``split``, ``dataset``).
        path: the PNG.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    # A perfect score has no place on a log axis: it is drawn at half an error (annotated with its true value),
    # or, where probe.json does not give the split's size, at half the smallest error there is.
    n_test = int(report.get("sizes", {}).get(report.get("split"), 0) or 0)
    errors = [1 - m[k] for m in report["models"].values() for k in m
              if k.startswith("label_fraction.") and k.endswith(".top1") and isinstance(m[k], (int, float))]
    floor = 0.5 / n_test if n_test else 0.5 * min([e for e in errors if e > 0], default=0.01)
    floored, counts = False, set()
    for i, (name, m) in enumerate(report["models"].items()):
        points = [(m[f"label_fraction.{f:g}.n"], 1 - m[f"label_fraction.{f:g}.top1"]) for f in report["fractions"]
                  if isinstance(m.get(f"label_fraction.{f:g}.top1"), (int, float))
                  and math.isfinite(m[f"label_fraction.{f:g}.top1"])]
        if not points:
            continue
        ns, err = zip(*points, strict=True)
        counts.update(ns)
        colour = COLOURS.get(name, OTHER_COLOURS[i % len(OTHER_COLOURS)])
        ax.plot(ns, [max(e, floor) for e in err], marker="o", label=name.replace("_", " "), color=colour,
                linestyle="--" if name in ("raw_pixels", "random_init") else "-")
        for n, e in points:
            ax.annotate(f"{e:.1%}", (n, max(e, floor)), textcoords="offset points", xytext=(5, 3), fontsize=7)
            if e <= 0:  # no error at all: an open triangle over the point, explained below the plot
                ax.plot([n], [floor], marker="v", markersize=11, markerfacecolor="none", color=colour)
                floored = True
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the labels of the last points
    # The x ticks are the label counts probed, whatever their range (matplotlib would label a range of about a
    # decade with minor ticks in scientific notation).
    ticks: list[float] = []
    for n in sorted(counts):  # every count, less those too close to the last one kept for both labels to fit
        if not ticks or n >= 2.5 * ticks[-1] or n == max(counts):
            ticks = ticks[:-1] if ticks and n < 2.5 * ticks[-1] else ticks
            ticks.append(n)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    # Errors often span less than a decade (11–35 %): there the ticks are evenly spaced round values (10 %, 15 %,
    # …), so that every curve has labels beside it; over wider ranges 1, 2, 3, 5 × 10^k keep the labels apart.
    low, high = ax.get_ylim()
    if high / max(low, 1e-12) > 8:
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    else:
        # The axis starts at the round value at or below the lowest point, so that the lowest curve (the encoder's,
        # as a rule) has a label under it too: 11.4 % sat under the lowest label, 15 %, with none below. Of the
        # round steps for 5 to 8 ticks, the one whose value under the point is nearest it is taken: a step of 6 %
        # drew 16.9 % on an axis from 12 %, a quarter of it empty, where 8 % starts it at 16 %. A point on that
        # value is lifted off the axis's foot by about a marker's radius, so that it is drawn whole.
        lowest = ax.dataLim.y0

        def framing(nbins: int) -> tuple[float, np.ndarray, float]:  # (the share left empty, the ticks, the foot)
            values = MaxNLocator(nbins=nbins).tick_values(low, high)
            foot = max([v for v in values if 0 < v and (v <= lowest or math.isclose(v, lowest))], default=low)
            return math.log(lowest / foot) / math.log(high / foot), values, foot

        _, values, low = min((framing(nbins) for nbins in range(5, 9)), key=lambda option: option[0])
        lift = (high / low) ** 0.02
        ax.set_ylim(low if lowest >= low * lift else low / lift, high)
        ticks = [v for v in values if low <= v <= high and v > 0]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("labeled training images")
    ax.set_ylabel(f"{report['split']} error of the linear probe (1 − top-1)")
    ax.set_title(f"Label efficiency — {report['dataset']} (lower is better)", fontsize=11)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(fontsize=8)
    if floored:
        fig.text(0.01, 0.01, "▽ no error: drawn at half of one error, which a log axis can show", fontsize=7,
                 color="#555555")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(labels: torch.Tensor, predictions: torch.Tensor, classes: Sequence[str], path: Path,
                   title: str = "Linear probe: confusion matrix") -> Path:
    """Row-normalised confusion matrix (each true class sums to 100%), with the percentages written in.

    Shape:
        labels: (N,), predictions: (N,)
    """
    y = torch.as_tensor(labels).cpu().long()
    p = torch.as_tensor(predictions).cpu().long()
    c = len(classes)
    counts = torch.zeros(c, c, dtype=torch.long)
    counts.index_put_((y, p), torch.ones_like(y), accumulate=True)
    rows = counts.sum(1, keepdim=True).clamp_min(1)
    share = (counts.double() / rows).numpy()
    side = max(4.5, 0.55 * c + 2)
    fig, ax = plt.subplots(figsize=(side + 2, side), layout="constrained")  # room for the labels of both sides
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if c <= 30:
        for i in range(c):
            for j in range(c):
                if counts[i, j] > 0:
                    text = f"{share[i, j]:.0%}" if round(100 * share[i, j]) >= 1 else "<1%"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7 if c > 12 else 8,
                            color="white" if share[i, j] > 0.55 else "#222222")
    ticks = np.arange(c)
    ax.set_xticks(ticks, [str(n) for n in classes], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, [f"{n} ({int(rows[i])})" for i, n in enumerate(classes)], fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    accuracy = float((y == p).float().mean()) if len(y) else float("nan")
    ax.set_title(f"{title}\n{len(y):,} images, accuracy {accuracy:.1%}, row-normalised", fontsize=10)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, format=matplotlib.ticker.PercentFormatter(1.0))
    bar.set_label("share of the true class's images (rows sum to 100%)", fontsize=8)
    return save_figure(fig, path)


def plot_misclassified(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                       classes: Sequence[str], indices: Sequence[int], path: Path, columns: int = 8,
                       title: str = "Misclassified by the linear probe") -> Path:
    """A grid of images, each captioned with its index, true class and predicted class.

    Args:
        images: the split's images (N, C, H, W).
        labels, predictions: (N,) true and predicted classes of the whole split.
        classes: class names.
        indices: which images to show (rows of ``images``).
        path: the PNG.
        columns: images per row.
        title: figure title.

    Shape:
        images: (N, C, H, W), labels: (N,), predictions: (N,)
    """
    indices = list(indices)
    if not indices:
        return _empty(path, title, "no misclassified images")
    rows = math.ceil(len(indices) / columns)
    cols = min(columns, len(indices))
    # A few images make a narrow figure: the title wraps to its width (about 0.09 in a character at 11 pt).
    title = textwrap.fill(title, max(16, int(1.45 * cols / 0.09)))
    lines = title.count("\n")
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.85 * rows + 0.5 + 0.2 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices, strict=False):
        ax.axis("on")
        _show(ax, images[i], frame=MISMATCH, width=2)
        ax.set_title(f"#{i}\ntrue: {_name(int(labels[i]), classes)}\npred: {_name(int(predictions[i]), classes)}",
                     fontsize=7, loc="left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


# --- retrieval and maps -------------------------------------------------------------------------------------------

NN_CELL = 1.15  # inches: side of one image in the neighbour grid
NN_CAPTION = 0.36  # inches above each image for its two caption lines
NN_GAP = 0.1  # inches between neighbours
NN_SEPARATOR = 0.35  # inches between a query and its first neighbour
NN_LINE_GAP = 0.08  # inches between the lines of one query's wrapped neighbours
NN_QUERY_GAP = 0.22  # inches between queries
NN_MARGIN = 0.15  # inches around the grid
NN_COLUMNS = 12  # neighbours per line before wrapping
NN_MAX_SHOWN = 48  # neighbours drawn per query (the table lists all)
NN_MAX_QUERIES = 50  # queries drawn in one figure (the table lists all)
# Lines of images in one figure: 50 queries of up to 12 neighbours, or 12 of 48 (four lines each). 50 of 48 made
# a PNG of 2004 × 39,111 pixels (326 inches tall, 2,400 images) that took 30 s to draw.
NN_MAX_LINES = 50
NN_MIN_WIDTH = 4.8  # inches: the legend's four entries side by side take 4; a grid of fewer images is centred in it
NN_TITLE_SIZE, NN_LEGEND_SIZE = 9.5, 7.5  # points
NN_TOP = 0.12  # inches above the title
NN_TITLE_LINE = 0.17  # inches per line of the title
NN_LEGEND_ROW = 0.25  # inches for the legend, and for the note under it on what is left out


@dataclass(frozen=True)
class NeighborGridLayout:
    """Where everything of a neighbour grid goes; boxes are ``(left, bottom, width, height)`` figure fractions.

    Attributes:
        size: figure ``(width, height)`` in inches.
        queries: one box per query drawn.
        neighbors: per query drawn, one box per neighbour drawn.
        header: inches at the top for the title, the legend and the note.
        title: the title's lines, wrapped to the figure's width (none without a title).
        legend_top: inches from the figure's top to the legend; the note on what is left out (when
            ``truncated``) goes :data:`NN_LEGEND_ROW` under it.
        truncated: fewer queries or neighbours are drawn than were found.
    """

    size: tuple[float, float]
    queries: list[tuple[float, float, float, float]]
    neighbors: list[list[tuple[float, float, float, float]]]
    header: float
    title: tuple[str, ...] = ()
    legend_top: float = 0.05
    truncated: bool = False


def text_width(text: str, size: float) -> float:
    """Inches that ``text`` takes in matplotlib's default font at ``size`` points, without drawing a figure."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    return TextToPath().get_text_width_height_descent(text, FontProperties(size=size), ismath=False)[0] / 72


def wrap_to_width(text: str, width: float, size: float) -> list[str]:
    """``text`` broken at spaces into the fewest lines that each fit ``width`` inches at ``size`` points."""
    for chars in range(len(text), 0, -1):
        lines = textwrap.wrap(text, chars)
        if all(text_width(line, size) <= width for line in lines):
            return lines
    return list(text)


def neighbor_grid_layout(n_queries: int, k: int, title: str | None = None) -> NeighborGridLayout:
    """The neighbour grid's geometry: one row per query, its neighbours wrapped after :data:`NN_COLUMNS`.

    At most :data:`NN_MAX_QUERIES` queries, :data:`NN_MAX_SHOWN` neighbours each and :data:`NN_MAX_LINES` lines of
    images in all are drawn, so any request gives a picture a person can open. The figure is at least
    :data:`NN_MIN_WIDTH` wide, so that the legend fits a grid of few neighbours, and the title is wrapped to it: both
    were cut off at the figure's edges.
    """
    k_n = min(k, NN_MAX_SHOWN)
    cols = min(k_n, NN_COLUMNS)
    lines = math.ceil(k_n / cols)
    q_n = min(n_queries, NN_MAX_QUERIES, max(1, NN_MAX_LINES // lines))
    grid = 2 * NN_MARGIN + NN_CELL + NN_SEPARATOR + cols * NN_CELL + (cols - 1) * NN_GAP
    width = max(grid, NN_MIN_WIDTH)
    x0 = NN_MARGIN + (width - grid) / 2  # the query column; the grid is centred
    title_lines = tuple(wrap_to_width(title, width - 2 * NN_MARGIN, NN_TITLE_SIZE)) if title else ()
    truncated = q_n < n_queries or k_n < k
    legend_top = NN_TOP + len(title_lines) * NN_TITLE_LINE + 0.05 if title_lines else 0.05
    header = legend_top + NN_LEGEND_ROW * (2 if truncated else 1) + 0.16
    block = lines * (NN_CAPTION + NN_CELL) + (lines - 1) * NN_LINE_GAP
    height = header + q_n * block + (q_n - 1) * NN_QUERY_GAP + NN_MARGIN

    def box(x: float, top: float) -> tuple[float, float, float, float]:
        # (x, top) in inches from the figure's top-left corner of the image itself, to matplotlib's fractions
        return x / width, 1 - (top + NN_CELL) / height, NN_CELL / width, NN_CELL / height

    queries, neighbors = [], []
    for r in range(q_n):
        top = header + r * (block + NN_QUERY_GAP) + NN_CAPTION
        queries.append(box(x0, top))
        row = []
        for j in range(k_n):
            line, col = divmod(j, cols)
            x = x0 + NN_CELL + NN_SEPARATOR + col * (NN_CELL + NN_GAP)
            row.append(box(x, top + line * (NN_CAPTION + NN_CELL + NN_LINE_GAP)))
        neighbors.append(row)
    return NeighborGridLayout((width, height), queries, neighbors, header, title_lines, legend_top, truncated)


def frame_colours(query_labels: torch.Tensor, neighbor_labels: torch.Tensor) -> list[list[str]]:
    """The frame of each neighbour: :data:`MATCH` (green) when its class is its query's, :data:`MISMATCH` (red)
    when not, :data:`NEUTRAL` (grey) when either is unlabeled (−1).

    Shape:
        query_labels: (Q,), neighbor_labels: (Q, k) -> Q lists of k colours
    """
    q = torch.as_tensor(query_labels).long().view(-1, 1)
    n = torch.as_tensor(neighbor_labels).long()
    same = n == q
    known = (q >= 0) & (n >= 0)
    return [[NEUTRAL if not known[r, j] else (MATCH if same[r, j] else MISMATCH) for j in range(n.shape[1])]
            for r in range(n.shape[0])]


def _short(text: str, n: int = 18) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def plot_neighbors(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], queries: Sequence[int],
                   idx: torch.Tensor, sims: torch.Tensor, path: Path, title: str | None = None) -> Path:
    """One row per query: the query, then its neighbours captioned with index, cosine similarity and class.

    Neighbours are framed green when their class is the query's, red when not, grey when unlabeled
    (:func:`frame_colours`); :func:`neighbor_grid_layout` places them, wrapping long rows. Beyond what fits its
    bounds (:data:`NN_MAX_QUERIES` queries, :data:`NN_MAX_SHOWN` neighbours, :data:`NN_MAX_LINES` lines) the figure
    shows the first ones and says so.

    Shape:
        images: (N, C, H, W), labels: (N,), idx: (Q, k), sims: (Q, k)
    """
    from matplotlib.patches import Patch

    queries = list(queries)
    q_n, k = idx.shape
    layout = neighbor_grid_layout(q_n, k, title)
    y = torch.as_tensor(labels).cpu().long()
    shown_q, shown_k = len(layout.queries), len(layout.neighbors[0]) if layout.neighbors else 0
    colours = frame_colours(y[torch.tensor(queries[:shown_q])], y[idx[:shown_q, :shown_k]])
    fig = plt.figure(figsize=layout.size)
    for r in range(shown_q):
        q = queries[r]
        ax = fig.add_axes(layout.queries[r])
        _show(ax, images[q], frame=QUERY, width=3.5)
        ax.set_title(f"query #{q}\n{_short(_name(int(y[q]), classes))}", fontsize=7.5, fontweight="bold", pad=3)
        for j in range(shown_k):
            i = int(idx[r, j])
            ax = fig.add_axes(layout.neighbors[r][j])
            _show(ax, images[i], frame=colours[r][j], width=3)
            ax.set_title(f"#{i}  cos {float(sims[r, j]):.3f}\n{_short(_name(int(y[i]), classes))}", fontsize=7,
                         color="#222222", pad=3)
    height = layout.size[1]
    if layout.title:
        fig.text(0.5, 1 - NN_TOP / height, "\n".join(layout.title), ha="center", va="top", fontsize=NN_TITLE_SIZE,
                 linespacing=1.25)
    handles = [Patch(facecolor="white", edgecolor=QUERY, linewidth=2.5, label="query"),
               Patch(facecolor="white", edgecolor=MATCH, linewidth=2.5, label="same class as the query"),
               Patch(facecolor="white", edgecolor=MISMATCH, linewidth=2.5, label="another class")]
    if any(NEUTRAL in row for row in colours):
        handles.append(Patch(facecolor="white", edgecolor=NEUTRAL, linewidth=2.5, label="unlabeled"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - layout.legend_top / height),
               ncol=len(handles), frameon=False, fontsize=NN_LEGEND_SIZE, handlelength=1.2, columnspacing=1.4)
    if layout.truncated:
        fig.text(0.5, 1 - (layout.legend_top + NN_LEGEND_ROW) / height,
                 f"showing {shown_q} of {q_n} queries, {shown_k} of {k} neighbours (the table has all)",
                 ha="center", va="top", fontsize=NN_LEGEND_SIZE, color="#444444")
    return save_figure(fig, path)


def spread_points(xy: np.ndarray, n: int, seed: int = 0, min_gap: float = 0.08) -> np.ndarray:
    """Up to ``n`` row numbers of points spread over a 2-D map, for thumbnails that do not overlap.

    One seeded point is drawn from each occupied cell of a grid over the map; in a seeded order, a point is kept
    when it is at least ``min_gap`` of the map's extent away from every kept one along x or along y (so that the
    square thumbnails drawn at them, each a little less than ``min_gap`` wide, cannot cover each other). Fewer
    than ``n`` come back when the map has no room for more.

    Shape:
        xy: (N, 2) -> (≤ n,) int64, sorted
    """
    xy = np.asarray(xy, dtype=np.float64)
    if n <= 0 or len(xy) == 0:
        return np.zeros(0, dtype=np.int64)
    side = max(1, math.ceil(math.sqrt(3 * n)))
    lo, span = xy.min(axis=0), np.ptp(xy, axis=0)
    unit = (xy - lo) / np.where(span > 0, span, 1)  # the map in [0, 1]²
    cell = np.minimum((side * unit).astype(np.int64), side - 1)
    key = cell[:, 0] * side + cell[:, 1]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(xy))
    _, first = np.unique(key[order], return_index=True)  # one random point per occupied cell
    candidates = order[first][rng.permutation(len(first))]
    kept: list[int] = []
    for i in candidates:
        if len(kept) == n:
            break
        if not kept or np.abs(unit[kept] - unit[i]).max(axis=1).min() >= min_gap:
            kept.append(int(i))
    return np.sort(np.asarray(kept, dtype=np.int64))


def embed_2d(features: torch.Tensor | np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """A seeded 2-D map of features: UMAP (umap-learn) or t-SNE (scikit-learn), both with cosine distances.

    The same features and seed give the same map: UMAP runs single-threaded when seeded, and t-SNE starts from
    the (deterministic) PCA projection.

    Raises:
        UserError: an unknown method, or fewer than 5 rows.

    Shape:
        (N, D) -> (N, 2) float32
    """
    if method not in MAP_METHODS:
        raise UserError(f"unknown map method {method!r} — use one of: {', '.join(MAP_METHODS)}")
    x = np.ascontiguousarray(torch.as_tensor(features).detach().cpu().float().numpy())
    n = len(x)
    if n < 5:
        raise UserError(f"a {method} map needs at least 5 images, got {n}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap-learn warns that a seed disables its parallelism: that is the point
        if method == "umap":
            import umap

            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), min_dist=0.1, metric="cosine",
                                random_state=seed, init="spectral" if n > 16 else "random")
            xy = reducer.fit_transform(x)
        else:
            from sklearn.manifold import TSNE

            xy = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), metric="cosine", init="pca",
                      learning_rate="auto", random_state=seed).fit_transform(x)
    return np.asarray(xy, dtype=np.float32)


def plot_map(xy: np.ndarray, labels: torch.Tensor, classes: Sequence[str], path: Path, title: str,
             method: str = "umap", images: torch.Tensor | None = None, thumbnails: Sequence[int] = ()) -> Path:
    """A scatter of a 2-D map, one colour per class with a legend, and optionally image thumbnails.

    Args:
        xy: (N, 2) coordinates.
        labels: (N,) classes (−1: unlabeled, drawn as :data:`UNLABELED` rings, unlike any class's discs, their
            thumbnails framed in black with a white line inside, :data:`UNLABELED_INNER`).
        classes: class names.
        path: the PNG.
        title: figure title.
        method: names the axes.
        images: (N, C, H, W) images, for thumbnails.
        thumbnails: the rows whose images are drawn at their points (none by default), e.g. those that
            :func:`spread_points` spreads over the map.

    Shape:
        xy: (N, 2), labels: (N,), images: (N, C, H, W)
    """
    xy = np.asarray(xy)
    y = torch.as_tensor(labels).cpu().long().numpy()
    colours = class_colours(len(classes))
    fig, ax = plt.subplots(figsize=(9.5, 7.5))
    size = float(np.clip(2.5e4 / max(len(xy), 1), 2, 30))
    if (y < 0).any():
        ax.scatter(xy[y < 0, 0], xy[y < 0, 1], s=size, facecolors="none", edgecolors=UNLABELED, linewidths=0.4,
                   label=f"unlabeled ({int((y < 0).sum())})")
    for c, name in enumerate(classes):
        mask = y == c
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colours[c], alpha=0.8, linewidths=0,
                       label=f"{name} ({int(mask.sum())})")
    if len(thumbnails) and images is not None:
        zoom = 26 / max(int(images.shape[-1]), 1)
        for i in thumbnails:
            a = _hwc(images[i])
            box = OffsetImage(a, zoom=zoom, cmap="gray" if a.ndim == 2 else None,
                              interpolation="nearest" if max(a.shape[:2]) <= 64 else "antialiased")
            box.get_children()[0].set_clim(0, 255)
            if y[i] >= 0:
                pad, frame = 0.1, {"edgecolor": colours[y[i]], "linewidth": 2.5}
            else:  # the fill is the white line: a wider pad leaves it showing between the black line and the image
                pad, frame = UNLABELED_PAD, {"edgecolor": UNLABELED, "facecolor": UNLABELED_INNER, "linewidth": 2.5}
            ax.add_artist(AnnotationBbox(box, xy[i], frameon=True, pad=pad, bboxprops=frame))
    label = MAP_NAMES.get(method, method)
    ax.set_xlabel(f"{label} 1")
    ax.set_ylabel(f"{label} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=11)
    if len(classes) <= 40:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=max(1.0, 6 / size ** 0.5),
                  frameon=False, title="class (images)", title_fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# --- training -------------------------------------------------------------------------------------------------


def centered_mean(values: np.ndarray, half_width: int) -> np.ndarray:
    """Mean of each value with up to ``half_width`` neighbours on each side, the window shrunk evenly at the ends.

    The window stays symmetric around every point (``min(half_width, i, n − 1 − i)`` on each side), so a curve that
    is locally straight comes out unchanged, at its ends too, where a trailing average would sit behind it.
    """
    n = len(values)
    sums = np.concatenate([[0.0], np.cumsum(values, dtype=float)])
    i = np.arange(n)
    h = np.minimum(half_width, np.minimum(i, n - 1 - i))
    return (sums[i + h + 1] - sums[i - h]) / (2 * h + 1)


def plot_training_curves(events: Sequence[dict[str, Any]], path: Path, title: str = "Training",
                         knn_what: str = "held-out images") -> Path:
    """Loss, learning rate and the online k-NN top-1 against the step, from ``metrics.jsonl`` events.

    ``knn_what`` says what the monitor scored (its k and images, from the recipe) in that panel's title.

    The loss is drawn as logged and, with enough points, as a centred moving average (:func:`centered_mean`,
    which does not lag behind a falling loss as a trailing average does); a top axis gives epochs. Panels
    without data say so.
    """
    train = [e for e in events if "loss" in e]
    knn = [e for e in events if "knn/top1" in e]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    step = np.array([e["step"] for e in train], dtype=float)
    if train:
        loss = np.array([e["loss"] for e in train], dtype=float)
        ax = axes[0]
        ax.plot(step, loss, color="#1f77b4", alpha=0.35 if len(loss) > 20 else 1.0, lw=1, marker=None
                if len(loss) > 20 else "o", ms=3, label="logged")
        if len(loss) > 20:
            smooth = centered_mean(loss, max(1, len(loss) // 40))
            ax.plot(step, smooth, color="#1f77b4", lw=2, label="moving average")
            ax.legend(fontsize=8)
        ax.set_title("NT-Xent loss")
        axes[1].plot(step, [e["lr"] for e in train], color="#ff7f0e", lw=1.5)
        axes[1].set_title("learning rate")
        axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if knn:
        ks = np.array([e["step"] for e in knn], dtype=float)
        kv = np.array([e["knn/top1"] for e in knn], dtype=float)
        axes[2].plot(ks, kv, color="#2ca02c", marker="o", lw=1.5)
        axes[2].annotate(f"{kv[0]:.1%}", (ks[0], kv[0]), textcoords="offset points", xytext=(6, 4), fontsize=8)
        if len(kv) > 1:
            axes[2].annotate(f"{kv[-1]:.1%}", (ks[-1], kv[-1]), textcoords="offset points", xytext=(-6, -12),
                             ha="right", fontsize=8)
        axes[2].margins(y=0.12)
        axes[2].yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        axes[2].set_title(f"online k-NN top-1\n({knn_what})", fontsize=10)
    else:
        axes[2].text(0.5, 0.5, "no online k-NN\n(monitor off or too few labels)", ha="center", va="center",
                     transform=axes[2].transAxes, color="#555555")
        axes[2].set_title("online k-NN top-1")
    if not train:
        for ax in axes[:2]:
            ax.text(0.5, 0.5, "no training steps logged", ha="center", va="center", transform=ax.transAxes,
                    color="#555555")
    ratio = [e["epoch"] / e["step"] for e in train if e["step"] > 0 and e.get("epoch")]
    last = max([e["step"] for e in train + knn], default=0)
    for ax in axes:
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # steps are whole numbers
        if not ax.has_data():  # nothing drawn: the message alone, without empty axes
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("")
        if last > 0 and ax.has_data():
            ax.set_xlim(-0.02 * last, 1.02 * last)  # the same range in every panel: their epoch axes line up
        ax.grid(True, alpha=0.3)
        if ratio and ax.has_data():
            r = float(np.median(ratio))
            top = ax.secondary_xaxis("top", functions=(lambda s, r=r: s * r, lambda e, r=r: e / r))
            top.set_xlabel("epoch", fontsize=8)
            top.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_augmentations(originals: torch.Tensor, views: torch.Tensor, path: Path,
                       title: str = "Augmented views, as the trainer sees them") -> Path:
    """Each row: an image, then several of its random views.

    Shape:
        originals: (n, C, H, W) uint8, views: (n, v, C, S, S) float in [0, 1]
    """
    n, v = views.shape[:2]
    fig, axes = plt.subplots(n, v + 1, figsize=(1.35 * (v + 1), 1.4 * n + 0.5), squeeze=False)
    for r in range(n):
        _show(axes[r, 0], originals[r], frame="#333333", width=2)
        for j in range(v):
            _show(axes[r, j + 1], views[r, j].clamp(0, 1))
    axes[0, 0].set_title("original", fontsize=8)
    for j in range(v):
        axes[0, j + 1].set_title(f"view {j + 1}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_kernels(weight: torch.Tensor, path: Path, title: str = "First-layer kernels") -> Path:
    """The first convolution's kernels, each scaled to its own range (RGB for 3 input channels; else a
    diverging map of the channel mean, red positive and blue negative).

    Shape:
        weight: (O, I, kh, kw)
    """
    w = torch.as_tensor(weight).detach().cpu().float()
    o = w.shape[0]
    cols = math.ceil(math.sqrt(o))
    rows = math.ceil(o / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(0.62 * cols + 0.4, 0.62 * rows + 0.7), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in zip(range(o), axes.flat, strict=False):
        k = w[i]
        if k.shape[0] == 3:
            lo, hi = k.min(), k.max()
            img = ((k - lo) / (hi - lo).clamp_min(1e-12)).permute(1, 2, 0).numpy()
            ax.imshow(img, interpolation="nearest")
        else:
            m = k.mean(0)
            ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-float(m.abs().max()), vmax=float(m.abs().max()),
                      interpolation="nearest")
    text = f"{title} ({o} × {w.shape[1]} × {w.shape[2]} × {w.shape[3]}); each kernel scaled to its own range"
    fig.suptitle(textwrap.fill(text, max(20, int((0.62 * cols + 0.4) / 0.075))), fontsize=10)  # 10 pt characters
    fig.tight_layout()
    return save_figure(fig, path)


# --- clusters ------------------------------------------------------------------------------------------------------


def plot_clusters(images: torch.Tensor, clusters: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                  path: Path, per_cluster: int = 10, seed: int = 0,
                  title: str = "k-means clusters: random members") -> Path:
    """One row per cluster (largest first): its size, majority class and share, then seeded random members
    framed green when they are of the majority class and red, with their own class above, when not.

    Shape:
        images: (N, C, H, W), clusters: (N,), labels: (N,)
    """
    a = torch.as_tensor(clusters).cpu().long()
    y = torch.as_tensor(labels).cpu().long()
    ids, sizes = torch.unique(a, return_counts=True)
    order = ids[torch.argsort(sizes, descending=True, stable=True)].tolist()
    g = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(len(order), per_cluster + 1, figsize=(1.05 * per_cluster + 2.2, 1.12 * len(order) + 0.5),
                             squeeze=False, gridspec_kw={"width_ratios": [2.2] + [1] * per_cluster})
    for r, c in enumerate(order):
        members = torch.nonzero(a == c).flatten()
        known = y[members][y[members] >= 0]
        if len(known):
            top = int(torch.bincount(known).argmax())
            share = float((known == top).float().mean())
            text = f"cluster {c}\n{len(members)} images\n{share:.0%} {_name(top, classes)}"
        else:
            top, text = -1, f"cluster {c}\n{len(members)} images"
        axes[r, 0].axis("off")
        axes[r, 0].text(0.0, 0.5, text, va="center", ha="left", fontsize=8, transform=axes[r, 0].transAxes)
        shown = members[torch.randperm(len(members), generator=g)[:per_cluster]]
        for j in range(per_cluster):
            ax = axes[r, j + 1]
            if j < len(shown):
                i = int(shown[j])
                frame = NEUTRAL if top < 0 or y[i] < 0 else (MATCH if int(y[i]) == top else MISMATCH)
                _show(ax, images[i], frame=frame, width=2)
                if frame == MISMATCH:  # what the impurity is: the member's own class
                    ax.set_title(_short(_name(int(y[i]), classes), 12), fontsize=7, color=MISMATCH, pad=2)
            else:
                ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
