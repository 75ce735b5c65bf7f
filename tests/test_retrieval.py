"""`sslkit neighbors`: agreement with brute-force cosine top-k, the query never its own neighbour, frames that
follow class equality, seeded random queries, the saved index reused (and rebuilt when the features change),
and one clear line with exit code 2 for every input a user can get wrong.

The runs here are real run directories (an exported, randomly initialised encoder on fashion-mnist-mini's test
split) whose feature cache holds synthetic class-clustered features, so no test runs the encoder.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
import torch
from rich.console import Console

from sslkit.checkpoint import export_encoder
from sslkit.cli import main
from sslkit.config import load_recipe, save_recipe
from sslkit.errors import UserError
from sslkit.evaluation import index as faiss_index
from sslkit.evaluation import retrieval
from sslkit.models import build_encoder
from sslkit.viz import (
    DPI,
    MATCH,
    MISMATCH,
    NEUTRAL,
    NN_COLUMNS,
    NN_MAX_LINES,
    NN_MAX_SHOWN,
    UNLABELED,
    frame_colours,
    neighbor_grid_layout,
    plot_map,
    plot_neighbors,
)

ROOT = Path(__file__).resolve().parent.parent
N_TEST = 2000  # images in fashion-mnist-mini's test split
DIM = 32


def quiet() -> Console:
    return Console(quiet=True)


def clustered_features(labels: torch.Tensor, seed: int, dim: int = DIM) -> torch.Tensor:
    """Features near one random centre per class (so neighbours mostly share a class), with continuous noise
    (so no two similarities tie and the top-k is unique)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(int(labels.max()) + 1, dim, generator=g)
    return centres[labels] + 0.8 * torch.randn(len(labels), dim, generator=g)


def write_features(run: Path, features: torch.Tensor, split: str = "test") -> Path:
    """Puts ``features`` in the run's feature cache exactly where the encoder's would go; returns the file."""
    meta = retrieval.read_meta(run)
    source = retrieval.load_split(meta, split)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(retrieval, "extract_features", lambda *a, **k: features)
        path = retrieval.split_features(run, meta, source, split)[1]
    np.save(path, features.numpy())  # also when the cache already held other features
    return path


def make_run(folder: Path, seed: int = 0) -> Path:
    """A run directory as `sslkit pretrain` leaves it (recipe, exported encoder) with synthetic cached features."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    save_recipe(recipe, folder / "recipe.yaml")
    torch.manual_seed(seed)
    encoder = build_encoder("resnet18", "imagenet", 1)
    meta = {"encoder": "resnet18", "stem": "imagenet", "in_chans": 1, "num_features": encoder.num_features,
            "image_size": 28, "mean": [0.286], "std": [0.353], "dataset": "fashion-mnist-mini", "data_root": None,
            "recipe": recipe.name}
    export_encoder(encoder, folder, meta)
    source = retrieval.load_split(retrieval.read_meta(folder), "test")
    write_features(folder, clustered_features(source.labels, seed))
    return folder


def cached(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's test features and labels, as the command reads them."""
    meta = retrieval.read_meta(run)
    source = retrieval.load_split(meta, "test")
    return retrieval.split_features(run, meta, source, "test")[0], source.labels


def brute_force(features: torch.Tensor, queries: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k of each query row over all rows, its own row masked out."""
    f = torch.nn.functional.normalize(features.double(), dim=1)
    sims = f[queries] @ f.T
    sims[torch.arange(len(queries)), torch.tensor(queries)] = -torch.inf
    top = sims.topk(k, dim=1)
    return top.values.float(), top.indices


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("retrieval") / "run")


def test_neighbours_match_brute_force_and_exclude_the_query(run: Path, tmp_path: Path) -> None:
    queries = [3, 17, 42, 0, N_TEST - 1]
    result = retrieval.find_neighbors(run, [str(q) for q in queries], k=10, console=quiet(), out=tmp_path / "g.png")
    features, labels = cached(run)
    sims, idx = brute_force(features, queries, 10)
    assert result.queries == queries
    assert torch.equal(result.idx, idx)
    torch.testing.assert_close(result.sims, sims, atol=1e-5, rtol=0)
    for row, q in enumerate(queries):
        assert q not in result.idx[row].tolist()
    assert bool((result.sims[:, :-1] >= result.sims[:, 1:]).all()), "most similar first"
    assert torch.equal(result.matches(), labels[result.idx] == labels[torch.tensor(queries)][:, None])
    assert (tmp_path / "g.png").is_file()


def test_a_duplicate_of_the_query_is_found_but_never_the_query_itself() -> None:
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(1))
    x[5] = x[2]
    x[20:26] = x[20]  # six identical rows: FAISS may return them in any order
    index = faiss_index.build_index(x, "flat")
    sims, idx = retrieval.search_neighbors(index, x, [2, 5, 20, 23], 5)
    assert idx.shape == (4, 5)
    assert int(idx[0, 0]) == 5 and int(idx[1, 0]) == 2
    torch.testing.assert_close(sims[:2, 0], torch.ones(2), atol=1e-5, rtol=0)
    for row, q in enumerate([2, 5, 20, 23]):
        assert q not in idx[row].tolist() and len(set(idx[row].tolist())) == 5
    assert set(idx[2].tolist()) == {21, 22, 23, 24, 25} and set(idx[3].tolist()) == {20, 21, 22, 24, 25}
    for bad in (-1, 30):  # -1 would search with row 29, then fail to leave it out as the query itself
        with pytest.raises(UserError, match=f"query {bad} is not a row of the 30 indexed images — give row numbers "
                                            "0 to 29"):
            retrieval.search_neighbors(index, x, [2, bad], 5)


def test_frames_follow_class_equality() -> None:
    colours = frame_colours(torch.tensor([1, 0, -1]), torch.tensor([[1, 2, -1], [0, 0, 1], [0, -1, 2]]))
    assert colours == [[MATCH, MISMATCH, NEUTRAL], [MATCH, MATCH, MISMATCH], [NEUTRAL, NEUTRAL, NEUTRAL]]


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255


def test_grid_has_one_row_per_query_and_frames_drawn_in_the_right_colour(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(40) % 3
    queries = [0, 1, 2]
    idx = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12], [13, 14, 15, 16, 17]])
    sims = torch.linspace(0.9, 0.5, 5).repeat(3, 1)
    path = plot_neighbors(images, labels, [f"class {c}" for c in range(3)], queries, idx, sims, tmp_path / "g.png",
                          title="t")
    layout = neighbor_grid_layout(3, 5, title="t")
    png = matplotlib.image.imread(path)
    height, width = png.shape[:2]
    assert (width, height) == (round(layout.size[0] * DPI), round(layout.size[1] * DPI))
    assert len(layout.queries) == 3 and all(len(row) == 5 for row in layout.neighbors)
    expected = frame_colours(labels[queries], labels[idx])
    for r in range(3):
        for j in range(5):
            left, bottom, w, h = layout.neighbors[r][j]
            x, y = int(round(left * width)), int(round((1 - bottom - h / 2) * height))
            np.testing.assert_allclose(png[y, x, :3], _rgb(expected[r][j]), atol=0.02,
                                       err_msg=f"frame of query {r}, neighbour {j}")
    assert {c for row in expected for c in row} == {MATCH, MISMATCH}


def test_title_legend_and_note_fit_a_grid_of_few_neighbours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The figure was as wide as its images only: at k ≤ 4 (k = 2: 504 px) the title (about 720 px) and the legend
    were cut off at both edges, as was the note on queries left out. All header text lies inside the figure, its
    lines one under the other and above the first captions."""
    import sslkit.viz as viz

    drawn = {}

    def keep(fig, path, dpi=DPI):
        fig.canvas.draw()
        drawn["fig"] = fig
        return Path(path)

    monkeypatch.setattr(viz, "save_figure", keep)
    images = torch.zeros(60, 1, 28, 28, dtype=torch.uint8)
    labels = torch.arange(60) % 3
    labels[5] = -1  # an unlabeled neighbour: the legend's fourth entry
    queries = list(range(55))  # more than are drawn: the note under the legend
    idx = torch.tensor([[(q + 1) % 60] for q in queries])
    title = ("a-run-with-a-rather-long-name: each query (#: its index in the test split) and its 1 nearest other test "
             "images by cosine similarity of the resnet18 features")
    plot_neighbors(images, labels, ["a", "b", "c"], queries, idx, torch.ones(55, 1), tmp_path / "g.png", title=title)
    fig = drawn["fig"]
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    (legend,) = fig.legends
    texts = [t for t in fig.texts if t.get_text()] + [legend, *legend.get_texts()] + [ax.title for ax in fig.axes]
    for text in texts:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0 and box.y1 <= height, (text, box, width, height)
    assert [t.get_text() for t in legend.get_texts()] == ["query", "same class as the query", "another class",
                                                          "unlabeled"]
    assert " ".join(t.get_text() for t in fig.texts).replace("\n", " ").count("a-run-with-a-rather-long-name") == 1
    assert any("showing 50 of 55 queries" in t.get_text() for t in fig.texts)
    title_box, legend_box, note_box = (a.get_window_extent(renderer) for a in (fig.texts[0], legend, fig.texts[1]))
    first_captions = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes[:2])
    assert title_box.y0 > legend_box.y1 - 2 and legend_box.y0 > note_box.y1 - 2 and note_box.y0 > first_captions


def test_large_k_wraps_and_the_picture_stays_bounded() -> None:
    layout = neighbor_grid_layout(2, 500)
    assert all(len(row) == NN_MAX_SHOWN for row in layout.neighbors)
    lefts = {round(b[0], 6) for b in layout.neighbors[0]}
    assert len(lefts) == NN_COLUMNS, "neighbours wrap after NN_COLUMNS"
    assert layout.size[0] < 20 and layout.size[1] < 40


def test_many_wrapped_neighbours_draw_fewer_queries_in_a_bounded_picture() -> None:
    layout = neighbor_grid_layout(10_000, 9_999)  # 48 neighbours drawn: four lines a query
    lines = sum(len({round(b[1], 6) for b in row}) for row in layout.neighbors)
    assert lines <= NN_MAX_LINES and len(layout.queries) == NN_MAX_LINES // 4 and layout.truncated
    assert layout.size[1] * DPI < 12_000, "50 queries of 48 neighbours were 39,111 pixels tall"
    assert len(neighbor_grid_layout(55, 3).queries) == 50, "one line a query: as many queries as before"


def test_more_neighbours_than_the_table_lists_are_refused_before_any_compute(
        run: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compute(*args: object, **kwargs: object) -> None:
        raise AssertionError("features were read or computed")

    monkeypatch.setattr(retrieval, "split_features", no_compute)
    before = _files(run)
    assert main(["neighbors", str(run), "--query", "random:2000", "-k", "1999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslkit neighbors: error: --query and -k ask for 3,998,000 "), err
    assert f"more than the {retrieval.TABLE_MAX_ROWS:,} allowed: the table lists each on a line" in err[0]
    assert "at most 5 queries at -k 1999 (e.g. --query random:5) or -k 5 or less for 2,000 queries" in err[0]
    assert _files(run) == before
    with pytest.raises(SystemExit):
        main(["neighbors", "--help"])
    assert f"at most {retrieval.TABLE_MAX_ROWS:,}" in " ".join(capsys.readouterr().out.split()), "-k's help is true"


def test_the_neighbour_limit_is_inclusive_and_larger_without_the_table(
        run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrieval, "TABLE_MAX_ROWS", 20)
    monkeypatch.setattr(retrieval, "RESULT_MAX_ROWS", 30)
    assert retrieval.find_neighbors(run, ["random:5"], k=4, console=quiet(), out=tmp_path / "a.png").idx.shape == (5, 4)
    with pytest.raises(UserError, match=r"ask for 25 neighbours \(5 queries × 5\), more than the 20 allowed"):
        retrieval.find_neighbors(run, ["random:5"], k=5, console=quiet(), out=tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()
    found = retrieval.find_neighbors(run, ["random:5"], k=6, show_table=False, out=tmp_path / "c.png")
    assert found.idx.shape == (5, 6)
    with pytest.raises(UserError, match="more than the 30 allowed: the result holds 12 bytes per neighbour"):
        retrieval.find_neighbors(run, ["random:5"], k=7, show_table=False, out=tmp_path / "d.png")
    with pytest.raises(UserError, match="at most 1 query at -k 30 .* or -k 6 or less for 5 queries"):
        retrieval.check_request(5, 30, table=False)
    with pytest.raises(UserError, match="ask for 30 or fewer in all"):
        retrieval.check_request(31, 31, table=False)


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """The colour an RGBA colour shows on the white page."""
    rgba = np.asarray(rgba, dtype=np.float64).reshape(-1, 4)
    return rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:])


@pytest.mark.parametrize("n_classes", [3, 10, 20, 40])
def test_unlabeled_points_on_a_map_look_unlike_every_class(n_classes: int, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Unlabeled points were light grey discs (#9e9e9e at half opacity), beside tab10's grey class 7 (#7f7f7f) and
    tab20's #c7c7c7. As drawn on the white page, their colour now lies at least 0.5 (RGB in [0, 1]) from every
    class's, for any number of classes, and they are unfilled rings where every class is a filled disc."""
    import matplotlib.pyplot as plt

    import sslkit.viz as viz

    drawn = {}

    def keep(fig, path, dpi=DPI):
        drawn["fig"] = fig
        return Path(path)

    monkeypatch.setattr(viz, "save_figure", keep)
    labels = torch.arange(-1, n_classes).repeat(3)
    xy = np.random.default_rng(0).normal(size=(len(labels), 2))
    images = torch.zeros(len(labels), 1, 8, 8, dtype=torch.uint8)
    plot_map(xy, labels, [f"class {c}" for c in range(n_classes)], tmp_path / "m.png", "map", images=images,
             thumbnails=[0, 1])  # row 0 is unlabeled, row 1 of class 0
    fig = drawn["fig"]
    try:
        (ax,) = fig.axes
        unlabeled = [c for c in ax.collections if c.get_label().startswith("unlabeled")]
        classes = [c for c in ax.collections if c.get_label().startswith("class ")]
        assert len(unlabeled) == 1 and len(classes) == n_classes
        (ring,) = unlabeled
        assert ring.get_label() == "unlabeled (3)"
        assert len(ring.get_facecolor()) == 0 or np.all(np.asarray(ring.get_facecolor())[:, 3] == 0), "unfilled"
        ring_colour = _on_white(ring.get_edgecolor())
        np.testing.assert_allclose(ring_colour, _on_white(matplotlib.colors.to_rgba(UNLABELED)))
        for disc in classes:
            assert np.all(np.asarray(disc.get_facecolor())[:, 3] > 0), "class points are filled"
            gap = np.linalg.norm(ring_colour - _on_white(disc.get_facecolor()), axis=1).min()
            assert gap >= 0.5, (disc.get_label(), gap)
        frames = [box.patch.get_edgecolor() for box in ax.artists]
        np.testing.assert_allclose(frames[0], matplotlib.colors.to_rgba(UNLABELED))  # the unlabeled thumbnail
    finally:
        plt.close(fig)


def test_random_queries_are_seeded_and_reproducible(run: Path, tmp_path: Path) -> None:
    a = retrieval.parse_queries(["random:5"], N_TEST, seed=0)
    assert a == retrieval.parse_queries(["random:5"], N_TEST, seed=0)
    assert a != retrieval.parse_queries(["random:5"], N_TEST, seed=1)
    assert len(set(a)) == 5 and a == sorted(a) and all(0 <= q < N_TEST for q in a)
    assert retrieval.parse_queries(["3", "random:5", "3"], N_TEST, seed=0) == list(dict.fromkeys([3, *a]))
    r1 = retrieval.find_neighbors(run, ["random:5"], k=4, console=quiet(), out=tmp_path / "a.png")
    r2 = retrieval.find_neighbors(run, ["random:5"], k=4, console=quiet(), out=tmp_path / "b.png")
    assert r1.queries == r2.queries == a and torch.equal(r1.idx, r2.idx)
    assert retrieval.default_output(run, "test", ["random:5"], a, 4).name == "test-random5-k4.png"
    # Grids of other draws or other indexes get names of their own (they overwrote the seed-0, flat grid).
    assert retrieval.default_output(run, "test", ["random:5"], a, 4, seed=1).name == "test-random5-k4-seed1.png"
    assert retrieval.default_output(run, "test", ["3"], [3], 4, seed=1).name == "test-3-k4.png"
    assert retrieval.default_output(run, "test", ["3"], [3], 4, index="ivf-pq").name == "test-3-k4-ivf-pq.png"


def test_the_same_queries_written_differently_name_the_same_grid(run: Path) -> None:
    """The default file name was made of the tokens as typed: --query 03, --query 3 3 3 and --query 3 drew the same
    grid into test-03-k4.png, test-3-3-3-k4.png and test-3-k4.png, and --query +3 into an opaque test-1q-<hash>."""
    for tokens in (["3"], ["03"], ["3", "3", "3"], ["+3"], [" 3 "]):
        queries = retrieval.parse_queries(tokens, N_TEST)
        assert queries == [3]
        assert retrieval.default_output(run, "test", tokens, queries, 4).name == "test-3-k4.png", tokens
    tokens = ["random:05", "17", "random:5", "017"]
    queries = retrieval.parse_queries(tokens, N_TEST)
    assert retrieval.default_output(run, "test", tokens, queries, 4).name == "test-random5-17-k4.png"


def test_one_reader_of_query_tokens_names_the_grid_as_the_search_reads_it() -> None:
    """parse_queries and the grid's name (_token_name) read a token with the same read_query_token: an index is
    named as the index searched, random:N as the N drawn, and a token the search refuses is refused by the name
    too, with the same message (the name used to read it a second way of its own and make up "three")."""
    for token in ("3", "03", "+3", " 3 ", 3, "1_999", "0"):
        assert retrieval._token_name(token) == str(retrieval.parse_queries([token], N_TEST)[0]), token
    for token in ("random:5", "random:05", " random:5 "):
        assert retrieval._token_name(token) == f"random{len(retrieval.parse_queries([token], N_TEST))}", token
    for token in ("three", "random:", "random:-1", "random 5", "3.0", "", "random:5x"):
        with pytest.raises(UserError) as searched:
            retrieval.parse_queries([token], N_TEST)
        assert "is neither an image index nor random:N" in str(searched.value), token
        with pytest.raises(UserError) as named:
            retrieval._token_name(token)
        assert str(named.value) == str(searched.value), token
        with pytest.raises(UserError) as before:
            retrieval.check_queries([token], 4)
        assert str(before.value) == str(searched.value), token


def _limit_message(n_queries: int, k: int, at_least: bool = False) -> str:
    """What check_request says of n_queries × k neighbours (the same words before and after the split is loaded)."""
    with pytest.raises(UserError) as refused:
        retrieval.check_request(n_queries, k, at_least=at_least)
    return str(refused.value)


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["--query", "random:2000", "-k", "1999"], lambda: _limit_message(2000, 1999), id="whole-split"),
    pytest.param(["-k", "20000", "--query", "random:5"], lambda: _limit_message(5, 20000), id="k-over-limit"),
    pytest.param(["--query", "random:9", "random:101", "-k", "100"], lambda: _limit_message(101, 100),
                 id="largest-draw"),
    pytest.param(["--query", "3", "17", "03", "+17", "-k", "5001"], lambda: _limit_message(2, 5001),
                 id="distinct-indices"),
    pytest.param(["--query", "random:101", "3", "-k", "100"], lambda: _limit_message(101, 100, at_least=True),
                 id="draw-and-index"),
    pytest.param(["--query", "foo"], lambda: "--query 'foo' is neither an image index nor random:N", id="not-a-token"),
    pytest.param(["--query", "3", "-3"], lambda: "--query -3 is outside the test split: indices count up from 0",
                 id="negative-index"),
    pytest.param(["--query", "random:0"], lambda: "--query random:0: ask for at least 1 random query", id="random-0"),
    pytest.param(["--query", "3", "-k", "0"], lambda: "-k 0: ask for at least 1 neighbour", id="k-0"),
])
def test_what_the_tokens_alone_refuse_is_refused_before_the_split_is_loaded(
        run: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, args: list[str],
        message: object) -> None:
    """Loading the split takes seconds (Fashion-MNIST) to minutes (a large image folder): a request refused
    whatever its size was refused only after it. The limit's message is check_request's own."""
    def no_load(*a: object, **k: object) -> None:
        raise AssertionError("the split was loaded")

    monkeypatch.setattr(retrieval, "load_evaluation_split", no_load)
    assert main(["neighbors", str(run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = message()  # type: ignore[operator]
    assert len(err) == 1 and err[0].startswith(f"sslkit neighbors: error: {expected}"), (err, expected)


def test_the_limit_before_loading_refuses_nothing_that_fits_and_says_at_least_where_it_cannot_count(
        run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrieval, "TABLE_MAX_ROWS", 20)
    # Repeated indices, however written, are one query; smaller draws are part of the largest.
    retrieval.check_queries(["3", "03", "+3", 3], 20)
    retrieval.check_queries(["random:5", "random:3", "random:05"], 4)
    assert "at least 24 neighbours (6 queries or more × 4)" in _limit_message(6, 4, at_least=True)
    assert "-k 3 or less" not in _limit_message(6, 4, at_least=True), "no k is promised to fit an unknown count"
    # A draw and an index: as many queries as the draw when it holds the index, one more when not, told after
    # the split is loaded, with the exact count.
    drawn = retrieval.parse_queries(["random:5"], N_TEST)
    retrieval.check_queries(["random:5", "3"], 4)
    found = retrieval.find_neighbors(run, ["random:5", str(drawn[0])], k=4, console=quiet(), out=tmp_path / "a.png")
    assert found.idx.shape == (5, 4)
    outside = next(i for i in range(N_TEST) if i not in drawn)
    with pytest.raises(UserError, match=r"ask for 24 neighbours \(6 queries × 4\), more than the 20 allowed"):
        retrieval.find_neighbors(run, ["random:5", str(outside)], k=4, console=quiet(), out=tmp_path / "b.png")


def test_an_approximate_index_shows_exact_cosines_in_exact_order(run: Path, tmp_path: Path) -> None:
    features = cached(run)[0]
    result = retrieval.find_neighbors(run, ["3", "17", "42"], k=6, index="ivf-pq", console=quiet(),
                                      out=tmp_path / "pq.png")
    f = torch.nn.functional.normalize(features.double(), dim=1)
    for row, q in enumerate(result.queries):
        exact = (f[result.idx[row]] @ f[q]).float()
        torch.testing.assert_close(result.sims[row], exact, atol=1e-5, rtol=0)
        assert bool((result.sims[row][:-1] >= result.sims[row][1:]).all())


def test_table_lists_every_neighbour(run: Path, tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    result = retrieval.find_neighbors(run, ["3", "17"], k=4, console=console, out=tmp_path / "t.png")
    text = console.export_text()
    for row, q in enumerate(result.queries):
        assert f"#{q}" in text
        for i in result.idx[row].tolist():
            assert f"#{i}" in text
    assert "precision@4" in text and str(tmp_path / "t.png") in text


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("args", "message"), [
    (["--query", "2000"], "--query 2000 is outside the test split, which has 2000 images"),
    (["--query", "-1"], "--query -1 is outside the test split"),
    (["--query", "3", "-k", "2000"], "-k 2000 is larger than the test split allows"),
    (["--query", "3", "-k", "0"], "-k 0: ask for at least 1 neighbour"),
    (["--query", "three"], "--query 'three' is neither an image index nor random:N"),
    (["--query", "random:2001", "-k", "4"], "--query random:2001: the test split has 2000 images"),
    (["--query", "3", "--index", "annoy"], "--index 'annoy' is not an index kind"),
    (["--query", "3", "--split", "validation"], "no split 'validation'"),
])
def test_bad_input_is_one_clear_line_exit_2_and_nothing_computed(run: Path, capsys: pytest.CaptureFixture,
                                                                  args: list[str], message: str) -> None:
    before = _files(run)
    assert main(["neighbors", str(run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslkit neighbors: error: ") and message in err[0], err
    assert _files(run) == before, "nothing is written for a refused command"


def test_run_without_encoder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_recipe(load_recipe(ROOT / "recipes" / "quickstart.yaml"), tmp_path / "recipe.yaml")
    assert main(["neighbors", str(tmp_path), "--query", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no exported encoder" in err[0] and str(tmp_path) in err[0]
    assert main(["neighbors", str(tmp_path / "nowhere"), "--query", "3"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(UserError, match="no exported encoder"):
        retrieval.find_neighbors(tmp_path, ["3"], console=quiet())


def test_saved_index_is_reused_and_rebuilt_when_the_features_change(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path / "run", seed=3)
    retrieval.find_neighbors(run, ["7"], k=5, console=quiet(), out=tmp_path / "1.png")
    (first,) = (run / "features").glob("*.flat-*.faiss")
    stamp = first.stat().st_mtime_ns

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("the saved index should have been loaded, not rebuilt")

    with monkeypatch.context() as mp:
        mp.setattr(faiss_index, "build_index", no_build)
        again = retrieval.find_neighbors(run, ["7"], k=5, console=quiet(), out=tmp_path / "2.png")
    assert first.stat().st_mtime_ns == stamp and list((run / "features").glob("*.faiss")) == [first]

    # New features in the same cache file (as after a recomputation): a new index, and answers from them.
    labels = cached(run)[1]
    new = clustered_features(labels, seed=99)
    write_features(run, new)
    changed = retrieval.find_neighbors(run, ["7"], k=5, console=quiet(), out=tmp_path / "3.png")
    (second,) = (run / "features").glob("*.flat-*.faiss")
    assert second != first and not first.exists()
    assert torch.equal(changed.idx, brute_force(new, [7], 5)[1])
    assert not torch.equal(changed.idx, again.idx)


def test_index_auto_is_the_kind_it_picks_and_keeps_no_second_copy(tmp_path: Path) -> None:
    """--index auto on a split of up to 100,000 images builds a flat index, but saved it again as a separate
    ``.auto-<digest>.faiss`` beside the flat one (20 MB each for Fashion-MNIST's test split) and wrote its grid
    under another name (``-auto``) than the identical flat one."""
    run = make_run(tmp_path / "run", seed=4)
    flat = retrieval.find_neighbors(run, ["3", "17"], k=4, console=quiet())
    auto = retrieval.find_neighbors(run, ["3", "17"], k=4, index="auto", console=quiet())
    assert torch.equal(auto.idx, flat.idx) and auto.path == flat.path == run / "neighbors" / "test-3-17-k4.png"
    assert [p.name.split(".")[-2].rsplit("-", 1)[0] for p in (run / "features").glob("*.faiss")] == ["flat"]


def test_approximate_index_kinds_answer_too(run: Path, tmp_path: Path) -> None:
    exact = retrieval.find_neighbors(run, ["3", "17"], k=5, console=quiet(), out=tmp_path / "f.png")
    hnsw = retrieval.find_neighbors(run, ["3", "17"], k=5, index="hnsw", console=quiet(), out=tmp_path / "h.png")
    assert hnsw.idx.shape == (2, 5)
    assert 3 not in hnsw.idx[0].tolist() and 17 not in hnsw.idx[1].tolist()
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in zip(exact.idx, hnsw.idx, strict=True)])
    assert overlap >= 0.8


def test_an_image_folders_held_out_part_is_the_probes_whatever_the_seed(tmp_path: Path, monkeypatch) -> None:
    """`neighbors --seed` seeds random:N only: the test split of an image folder is the probe's for every seed (it
    was re-drawn by the seed, so a query index named another image and the split held the probe's train images)."""
    from PIL import Image

    from sslkit.evaluation.probe import labeled_splits

    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    meta = {"dataset": "imagefolder", "data_root": str(root), "image_size": 16, "in_chans": 3}
    _, train, test, _ = labeled_splits(meta, "test")
    assert torch.equal(retrieval.load_split(meta, "test").images, test.images)
    assert torch.equal(retrieval.load_split(meta, "train").images, train.images)
    seen = []

    def features(run, meta, source, split, console=None):
        seen.append(source.images)
        raise UserError("stop here")  # the split is what this test is about

    monkeypatch.setattr(retrieval, "read_meta", lambda run, data_root=None: meta)
    monkeypatch.setattr(retrieval, "split_features", features)
    for seed in (0, 1):
        with pytest.raises(UserError, match="stop here"):
            retrieval.find_neighbors(tmp_path, ["3", "random:2"], k=2, seed=seed)
    assert len(seen) == 2 and torch.equal(seen[0], test.images) and torch.equal(seen[1], test.images)


def test_neighbours_of_the_val_split_are_searched_among_the_probes_held_out_images(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`sslkit neighbors RUN --split val` was refused ("fashion-mnist-mini has no split 'val'") though `sslkit probe
    --split val` and `sslkit report --split val` score on and draw that split. It now searches the images the val
    probe scores on (index i: the i-th of them), in the rows of the train split's cached features the probe slices;
    its grid and index are named apart, so that neither replaces the train split's."""
    from sslkit.evaluation.probe import held_out_parts, labeled_splits

    run = make_run(tmp_path / "run", seed=6)
    whole, _, held, _ = labeled_splits(retrieval.read_meta(run), "val")
    train = clustered_features(whole.labels, 6)
    write_features(run, train, "train")
    train_grid = retrieval.find_neighbors(run, ["0", "7"], k=5, split="train", console=quiet()).path
    train_files = {p: p.read_bytes() for p in (run / "features").glob("*-train-*")}

    result = retrieval.find_neighbors(run, ["0", "7"], k=5, split="val", console=quiet())
    rows = held_out_parts(whole.labels)[0]
    sims, idx = brute_force(train[rows], [0, 7], 5)
    assert torch.equal(result.idx, idx) and torch.equal(result.labels, held.labels)
    torch.testing.assert_close(result.sims, sims, atol=1e-5, rtol=0)
    assert result.path == run / "neighbors" / "val-0-7-k5.png" != train_grid and train_grid.is_file()
    assert (retrieval.read_grid_record(result.path) or {}).get("split") == "val"
    assert (retrieval.read_grid_record(train_grid) or {}).get("split") == "train"
    assert {p: p.read_bytes() for p in (run / "features").glob("*-train-*") if p in train_files} == train_files
    assert len(list((run / "features").glob("*-train-*.val.flat-*.faiss"))) == 1, "val's index beside train's"
    assert len(list((run / "features").glob("*-train-*[0-9a-f].flat-*.faiss"))) == 1, "train's index is kept"
    assert not list((run / "features").glob("*.val.npy")), "val's features are rows of train's, not a file"

    assert main(["neighbors", str(run), "--split", "val", "--query", str(len(held))]) == 2
    err = capsys.readouterr().err.strip()
    assert f"outside the val split, which has {len(held)} images" in err and len(err.splitlines()) == 1, err


def test_an_unlabeled_thumbnail_s_frame_shows_against_dark_and_light_images_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unlabeled thumbnail's frame was black alone: around a dark image (Fashion-MNIST's black background) it
    vanished, the thumbnail looking unframed. As rendered, the frame of a black and of a white unlabeled image now
    holds a white line (seen against a dark image) and a black one (seen against a light image and the white page);
    a labeled thumbnail keeps its one class colour."""
    import matplotlib.pyplot as plt

    import sslkit.viz as viz

    drawn = {}

    def keep(fig, path, dpi=DPI):
        drawn["fig"] = fig
        return Path(path)

    monkeypatch.setattr(viz, "save_figure", keep)
    images = torch.stack([torch.zeros(1, 28, 28), torch.full((1, 28, 28), 255.0), torch.zeros(1, 28, 28)]).byte()
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]])
    plot_map(xy, torch.tensor([-1, -1, 0]), ["class 0"], tmp_path / "m.png", "map", images=images,
             thumbnails=[0, 1, 2])
    fig = drawn["fig"]
    try:
        fig.set_dpi(DPI)  # as saved
        fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float64).mean(axis=2) / 255
        renderer = fig.canvas.get_renderer()
        half = 2.5 * fig.dpi / 72 / 2  # the frame line's half width in pixels
        frames = []  # each thumbnail's frame, from the line's outer edge to the image, along the middle row
        for box in fig.axes[0].artists:  # the thumbnails, in order
            edge, image = box.patch.get_window_extent(), box.offsetbox.get_window_extent(renderer)
            row = pixels.shape[0] - round((image.y0 + image.y1) / 2)  # display y counts up from the bottom
            frames.append(pixels[row, int(np.ceil(edge.x0 - half)):int(np.floor(image.x0))])
        for frame in frames[:2]:  # unlabeled, around a black and a white image
            assert frame.max() > 0.9 and frame.min() < 0.1, frame
        assert len(frames[2]) and np.ptp(frames[2]) < 0.1, frames[2]  # class 0's one colour
    finally:
        plt.close(fig)
