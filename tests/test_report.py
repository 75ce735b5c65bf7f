"""`sslkit umap` and `sslkit report`: seeded, reproducible maps; one self-contained HTML page with every section,
figures embedded and nothing fetched from a network; the page rendered by headless Chromium without console
errors; the clear refusal of a run without an encoder.

The run is a real run directory with synthetic cached features (see ``test_retrieval.make_run``), a short
``metrics.jsonl``, and a ``probe.json`` plus prediction file in the layout ``sslkit probe`` writes, so no test
trains or probes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from rich.console import Console
from rich.table import Table
from test_retrieval import cached, clustered_features, make_run, write_features
from threadpoolctl import threadpool_limits

from sslkit import viz
from sslkit.cli import LOG_COLUMNS, log_width, main
from sslkit.config import load_recipe, save_recipe
from sslkit.evaluation.probe import BASELINES, PREDICTIONS_FILE, ROWS, probe_files
from sslkit.report import _finetune_card, build_report, metrics_table, run_map
from sslkit.viz import embed_2d, spread_points

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("overview", "recipe", "training", "augmentations", "probe", "label-efficiency", "clusters", "map",
            "neighbors", "confusion", "misclassified", "kernels", "finetune")
MAX_POINTS = 300  # images on the test maps: enough for a real UMAP, small enough to be quick


def quiet() -> Console:
    return Console(quiet=True)


def write_training_log(run: Path) -> None:
    """``metrics.jsonl`` as the trainer writes it: training events every 5 steps, k-NN at the start and the end."""
    events = [{"step": 0, "epoch": 0.0, "knn/top1": 0.31}]
    events += [{"step": s, "epoch": s / 40, "loss": 6.3 - 0.03 * s, "lr": min(1.0, s / 10), "img_per_s": 120.0}
               for s in range(5, 41, 5)]
    events.append({"step": 40, "epoch": 1.0, "knn/top1": 0.74})
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def write_probe(run: Path, labels: torch.Tensor, split: str = "test", score: float = 0.8) -> torch.Tensor:
    """A ``probe.json`` (``probe-<split>.json``) with every metric key ``sslkit probe`` writes, the encoder's scores
    ``score``, and its prediction file; returns the predictions (the labels with every seventh one wrong)."""
    fractions = [0.01, 0.1, 1.0]
    models = {}
    for m, name in enumerate(("encoder", *BASELINES)):
        metrics = {key: score - 0.1 * m for key, _ in ROWS}
        for f in fractions:
            metrics.update({f"label_fraction.{f:g}.top1": score - 0.3 + 0.3 * f - 0.1 * m,
                            f"label_fraction.{f:g}.n": round(10_000 * f), f"label_fraction.{f:g}.weight_decay": 1e-3,
                            f"label_fraction.{f:g}.folds": 5})  # 10,000 labels would hold out 1,000: 5 folds
        models[name] = dict(metrics, **{"linear.weight_decay": 1e-3, "dim": 512, "seconds": 1.0})
    report = {"run": str(run), "dataset": "fashion-mnist-mini", "split": split, "split_description": split,
              "classes": [f"class {c}" for c in range(10)], "sizes": {"train": 10_000, split: len(labels)},
              "checkpoint_sha256": json.loads((run / "encoder.json").read_text())["sha256"], "encoder": "resnet18",
              "seed": 0, "fractions": fractions, "compare": {}, "seconds": 3.0, "models": models,
              "protocol": {"linear_val_fraction": 0.1, "linear_cv_below": 2000, "linear_cv_folds": 5,
                           "knn_temperature": 0.07}}
    results, saved, _ = probe_files(run, split)
    results.write_text(json.dumps(report))
    predictions = labels.clone()
    predictions[::7] = (predictions[::7] + 1) % 10
    (run / "figures").mkdir(exist_ok=True)
    torch.save({"labels": labels, "predictions": predictions}, saved)
    return predictions


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """OpenMP in one thread: on the 2 shared cores the suite runs on, scikit-learn's t-SNE with 2 busy-waiting
    threads ran 5-80x slower than with one (measured); results are the same either way."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run(tmp_path_factory.mktemp("report") / "run")
    write_training_log(run)
    write_probe(run, cached(run)[1])
    return run


@pytest.fixture(scope="module")
def page(run: Path) -> Path:
    return build_report(run, max_points=MAX_POINTS, console=quiet())


def test_map_is_seeded_and_reproducible(run: Path) -> None:
    x = cached(run)[0][:150]
    a, b = embed_2d(x, "umap", seed=0), embed_2d(x, "umap", seed=0)
    assert a.shape == (150, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, embed_2d(x, "umap", seed=1))
    t = embed_2d(x[:100], "tsne", seed=0)
    np.testing.assert_array_equal(t, embed_2d(x[:100], "tsne", seed=0))


def test_report_leaves_the_umap_command_figure_alone(run: Path, page: Path) -> None:
    # `sslkit umap RUN` writes figures/umap-test.png; the report draws its own map (with thumbnails) beside it.
    assert (run / "figures" / "report-umap-test.png").is_file()
    assert not (run / "figures" / "umap-test.png").exists(), "the umap command's default file is not the report's"


def test_umap_command_writes_the_map_and_reuses_its_coordinates(run: Path, tmp_path: Path) -> None:
    path = run_map(run, out=tmp_path / "map.png", max_points=MAX_POINTS, thumbnails=5, console=quiet())
    assert path == tmp_path / "map.png" and matplotlib.image.imread(path).shape[2] in (3, 4)
    (coords,) = (run / "features").glob("*.umap-seed0-*.npy")
    stamp = coords.stat().st_mtime_ns
    run_map(run, out=tmp_path / "again.png", max_points=MAX_POINTS, console=quiet())
    assert coords.stat().st_mtime_ns == stamp, "the same features and seed reuse the saved coordinates"


def test_the_map_command_says_when_it_drew_fewer_thumbnails_than_asked(tmp_path: Path, monkeypatch) -> None:
    """--thumbnails 30 drew 14 on the Fashion-MNIST map (no room for more without overlap) and said nothing."""
    run = make_run(tmp_path / "run", seed=2)
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: np.random.default_rng(0).normal(size=(len(x), 2)))
    console = Console(record=True, width=200)
    run_map(run, out=tmp_path / "map.png", max_points=300, thumbnails=500, console=console)
    drawn = len(spread_points(np.load(next((run / "features").glob("*.umap-seed0-*.npy"))), 500, seed=0))
    assert 0 < drawn < 500
    assert f"{drawn} of the 500 thumbnails asked for" in console.export_text()
    console = Console(record=True, width=200)
    run_map(run, out=tmp_path / "map.png", max_points=300, thumbnails=3, console=console)
    assert "thumbnails" not in console.export_text(), "all that were asked for: nothing to say"


def test_thumbnails_are_spread_over_the_map() -> None:
    xy = np.random.default_rng(0).normal(size=(2000, 2))
    picks = spread_points(xy, 20, seed=0)
    assert len(picks) == 20 and len(set(picks.tolist())) == 20
    np.testing.assert_array_equal(picks, spread_points(xy, 20, seed=0))
    gaps = np.linalg.norm(xy[picks][:, None] - xy[picks][None], axis=-1) + np.eye(20) * 1e9
    random = np.random.default_rng(1).choice(2000, 20, replace=False)
    random_gaps = np.linalg.norm(xy[random][:, None] - xy[random][None], axis=-1) + np.eye(20) * 1e9
    assert gaps.min() > random_gaps.min(), "spread picks keep further apart than random ones"
    unit = (xy - xy.min(0)) / np.ptp(xy, axis=0)
    apart = np.abs(unit[picks][:, None] - unit[picks][None]).max(-1) + np.eye(20)
    assert apart.min() >= 0.08, "no two thumbnails closer than the gap along both axes: they cannot overlap"
    line = np.zeros((50, 2)) + np.arange(50)[:, None] * 1e-3
    crowded = spread_points(line, 20, seed=0, min_gap=0.3)
    assert 2 <= len(crowded) <= 4, "fewer than asked where the map has no room: a line holds at most 4 picks 0.3 apart"
    assert np.diff(np.sort(crowded)).min() >= 0.3 * 49


def test_report_is_one_self_contained_page(run: Path, page: Path) -> None:
    assert page == run / "report.html"
    text = page.read_text(encoding="utf-8")
    # 8 training logs (losses 6.15 … 5.10): the final loss is the last tenth of them, here the last log alone.
    assert re.search(r"final loss</div>.*?5\.100.*?the last log; first logged 6\.150", text, re.S)
    assert not re.search(r"https?://", text), "no network reference of any kind"
    assert not re.search(r"<(script|link|iframe)\b", text, re.I)
    sources = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(sources) == 9, "one of each figure (no user grids in this run)"
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    for key in SECTIONS:
        assert f'<section id="{key}">' in text and f'href="#{key}"' in text, key
    bodies = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, re.S))
    noted = [k for k in SECTIONS if 'class="note"' in bodies[k]]
    assert noted == ["finetune"], "every section but fine-tuning is filled"
    assert "sslkit finetune" in bodies["finetune"]
    assert "80.0%" in text, "the probe's linear top-1 is in the page"
    assert ("or, where that part would hold fewer than 2,000 images, by 5-fold stratified cross-validation scored on "
            "every held-out prediction (here 1% of labels: 5 folds; 10% of labels: 5 folds; all labels: 5 folds)."
            ) in bodies["probe"], "how the L2 strength was chosen is stated beside the probe's table"
    assert "vote for their class, each with weight exp(similarity / 0.07) (weighted) or one vote (majority)." in (
        bodies["probe"]), "what the k-NN rows' weighted and majority mean is stated beside the table"
    assert "temperature" in text and "quickstart" in text, "the recipe is in the page"
    for name in ("training_curves", "augmentations", "kmeans_clusters", "report-umap-test", "neighbors-test",
                 "confusion_matrix", "misclassified", "kernels", "label_efficiency"):
        assert (run / "figures" / f"{name}.png").is_file(), name
    links = re.findall(r'<a href="([^"#][^"]*)"[^>]*><img ', text)
    assert len(links) == 9 and all((page.parent / href).is_file() for href in links), "each figure links its PNG"


def test_probe_protocol_states_the_rule_and_each_fractions_folds() -> None:
    """probe.json's protocol as the page states it: the rule and each label fraction's folds (one validation part,
    K folds, none); a probe.json from before cross-validation only says what it did, one without a protocol
    nothing."""
    from sslkit.report import probe_protocol

    folds = {"0.01": 3, "0.1": 0, "0.5": None, "1": 1}  # None: a fraction too small to probe at all
    models = {"encoder": {f"label_fraction.{f}.folds": k for f, k in folds.items()}}
    probe = {"fractions": [0.01, 0.1, 0.5, 1.0], "models": models,
             "protocol": {"linear_val_fraction": 0.1, "linear_cv_below": 2000, "linear_cv_folds": 5}}
    assert probe_protocol(probe) == (
        "The linear probes' L2 strength is chosen on the labeled train images alone: on a stratified 10% validation "
        "part, or, where that part would hold fewer than 2,000 images, by 5-fold stratified cross-validation scored "
        "on every held-out prediction (here 1% of labels: 3 folds; 10% of labels: none (too few labels to choose); "
        "all labels: one validation part).")
    assert probe_protocol(dict(probe, protocol={"linear_val_fraction": 0.1})) == (
        "The linear probes' L2 strength is chosen on the labeled train images alone: on a stratified 10% validation "
        "part.")
    assert probe_protocol(dict(probe, protocol={})) == probe_protocol({}) == ""


def test_knn_protocol_states_the_vote_from_the_recorded_temperature() -> None:
    from sslkit.report import knn_protocol

    assert "exp(similarity / 0.07)" in knn_protocol({"protocol": {"knn_temperature": 0.07}})
    assert knn_protocol({"protocol": {}}) == knn_protocol({}) == "", "a probe.json without it: nothing is claimed"


def _stub_figure(*args: object, **kwargs: object) -> Path:
    """Stands in for a figure function: writes a 2×2 PNG where the figure would go."""
    path = kwargs.get("path") or next(a for a in args if isinstance(a, Path))
    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, np.zeros((2, 2, 3)))
    return path


def test_report_of_an_unprobed_run_says_which_command_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The page's logic, not its pictures (drawn in test_report_is_one_self_contained_page): stub the figures.
    for name in ("plot_training_curves", "plot_augmentations", "plot_clusters", "plot_map", "plot_neighbors",
                 "plot_kernels"):
        monkeypatch.setattr(viz, name, _stub_figure)
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: np.zeros((len(x), 2), np.float32))
    run = make_run(tmp_path / "run", seed=5)
    page = build_report(run, method="tsne", max_points=80, console=quiet())
    text = page.read_text(encoding="utf-8")
    bodies = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, re.S))
    for key in ("probe", "confusion", "misclassified", "label-efficiency", "clusters"):
        assert 'class="note"' in bodies[key] and f"sslkit probe {run}" in bodies[key], key
    assert "No metrics.jsonl events" in text
    assert re.search(r'<section id="map">.*?<img ', text), "the map needs no probe"


def test_finetune_section_shows_its_charts_and_headline_before_the_full_document(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("plot_training_curves", "plot_augmentations", "plot_clusters", "plot_map", "plot_neighbors",
                 "plot_kernels"):
        monkeypatch.setattr(viz, name, _stub_figure)
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: np.zeros((len(x), 2), np.float32))
    run = make_run(tmp_path / "run", seed=5)
    summary = {"ssl": {"test_top1.mean": 0.8431}, "supervised": {"test_top1.mean": 0.8211}}
    runs = [{"arm": "ssl", "seed": 0, "curves": {"val_top1": [0.5, 0.8]}}]
    (run / "finetune.json").write_text(json.dumps({"name": "ft", "split": "test", "sizes": {"labeled": 5000},
                                                   "notes": ["a note on these scores"],
                                                   "summary": summary, "difference": {
        "test_top1.mean": 0.022, "test_top1.std": 0.004, "ssl_wins": 3, "seeds": 3}, "runs": runs,
        "robustness": {"summary": {"ssl": {"mean": [0.8, 0.3]}}}}))
    (run / "figures").mkdir(exist_ok=True)
    _stub_figure(run / "figures" / "finetune.png")
    text = build_report(run, method="tsne", max_points=80, console=quiet()).read_text(encoding="utf-8")
    sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, re.S))
    assert re.search(r"fine-tuning \(test\).*?84\.3%.*?5,000 labels; from scratch 82\.1% \(\+2\.2 points, ssl "
                     r"ahead in 3/3 seeds\)", sections["overview"], re.S), "the overview card gives the result"
    body = sections["finetune"]
    head, full = body.split("<details>", 1)
    assert head.count("<img ") == 1, "the chart sslkit finetune drew; the FGSM chart is absent and skipped"
    assert "84.3%" in head and "82.1%" in head, "the summary table leads, as %"
    assert ">+2.2 points<" in head and ">0.40 points<" in head, "the difference table: signed points, and its spread"
    assert '<div class="note">a note on these scores</div>' in head and "a note on these" not in full
    assert "val_top1" not in head and "robustness" not in head, "per-epoch curves and FGSM only in the full view"
    assert "robustness" in full and "84.3%" not in full, "the rest of the document, without the tables above"
    assert "curves" in full and "val_top1" not in full, "nested per-epoch curves are named, not dumped as JSON"

    # A finetune.json that another run's fine-tune wrote here (its --out) is not this run's result.
    document = json.loads((run / "finetune.json").read_text())
    (run / "finetune.json").write_text(json.dumps(dict(document, run="runs/other", encoder_sha256="ab" * 32)))
    text = build_report(run, method="tsne", max_points=80, console=quiet()).read_text(encoding="utf-8")
    sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, re.S))
    assert "84.3%" not in text and "fine-tuning (test)" not in sections["overview"]
    assert ("finetune.json here fine-tuned another encoder than this run's (run runs/other, sha256 abababababab"
            in sections["finetune"])


def test_a_one_seed_finetune_shows_no_spread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """finetune.json stores a std of 0.0 for one seed; the page showed it as "± 0.00%" (a spread of 0 where it is
    unknown). Now one seed's rows give the mean alone, as sslkit finetune's table does; several seeds keep theirs."""
    for name in ("plot_training_curves", "plot_augmentations", "plot_clusters", "plot_map", "plot_neighbors",
                 "plot_kernels"):
        monkeypatch.setattr(viz, name, _stub_figure)
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: np.zeros((len(x), 2), np.float32))
    run = make_run(tmp_path / "run", seed=5)

    def headline(seeds: int, std: float) -> str:
        arm = {"test_top1.mean": 0.8431, "test_top1.std": std, "val_top1.mean": 0.8012, "val_top1.std": std,
               "seeds": seeds, "fgsm.eps0.01.mean": 0.5123, "fgsm.eps0.01.std": std}
        (run / "finetune.json").write_text(json.dumps({
            "split": "test", "sizes": {"labeled": 5000}, "summary": {"ssl": arm, "supervised": arm},
            "difference": {"test_top1.mean": 0.022, "test_top1.std": std, "ssl_wins": 1, "seeds": seeds}}))
        text = build_report(run, method="tsne", max_points=80, console=quiet()).read_text(encoding="utf-8")
        return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, re.S))["finetune"].split("<details>")[0]

    one = headline(1, 0.0)
    assert "84.3%" in one and "80.1%" in one and "51.2%" in one and ">+2.2 points<" in one, "the means stay"
    assert ".std" not in one and "0.00%" not in one and "0.00 points" not in one, "no spread of one seed"
    three = headline(3, 0.004)
    assert "test_top1.std" in three and "fgsm.eps0.01.std" in three and ">0.40%<" in three
    assert ">0.40 points<" in three, "several seeds keep their spread"


def test_a_val_page_shows_the_val_probe_and_no_test_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """`sslkit report RUN --split val` was refused ("no split 'val'") though `sslkit probe --split val` exists. Its
    page is now of the val split throughout: the val probe's scores and predictions, figures of the held-out train
    images, fine-tuning (scored on test) left to the test page; written beside the test page, not over it. A
    probe.json that an older sslkit's val probe wrote is not shown as the test split's."""
    from sslkit.evaluation import linear
    from sslkit.evaluation.probe import labeled_splits

    for name in ("plot_training_curves", "plot_augmentations", "plot_clusters", "plot_map", "plot_neighbors",
                 "plot_kernels"):
        monkeypatch.setattr(viz, name, _stub_figure)
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: np.zeros((len(x), 2), np.float32))
    monkeypatch.setattr(linear, "linear_probe", lambda *a, **k: pytest.fail("the probe's predictions were refitted"))
    run = make_run(tmp_path / "run", seed=5)
    meta = json.loads((run / "encoder.json").read_text())
    whole, _, held, _ = labeled_splits(dict(meta, data_root=None), "val")
    write_features(run, clustered_features(whole.labels, 5), "train")
    write_probe(run, cached(run)[1], "test", score=0.8)
    write_probe(run, held.labels, "val", score=0.6)
    summary = {"ssl": {"test_top1.mean": 0.8431}, "supervised": {"test_top1.mean": 0.8211}}
    (run / "finetune.json").write_text(json.dumps({"split": "test", "sizes": {"labeled": 5000}, "summary": summary,
                                                   "difference": {"test_top1.mean": 0.022, "ssl_wins": 3,
                                                                  "seeds": 3}}))
    test_page = build_report(run, method="tsne", max_points=80, console=quiet())
    before = test_page.read_bytes()
    page = build_report(run, split="val", method="tsne", max_points=80, console=quiet())
    assert page == run / "report-val.html" and test_page.read_bytes() == before, "the test page is kept"
    text = page.read_text(encoding="utf-8")
    sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, re.S))
    assert "sslkit report — run (val split)" in text and "of the val split" in text
    assert "linear probe (val)" in sections["overview"] and "60.0%" in sections["probe"]
    assert "80.0%" not in text and "84.3%" not in text, "no test-split number on the val page"
    assert f"sslkit report {run}</code>" in sections["finetune"], "fine-tuning is left to the test page"
    assert "<img " in sections["confusion"] and "<img " in sections["misclassified"]
    for name in ("confusion_matrix-val", "misclassified-val", "kmeans_clusters-val", "label_efficiency-val",
                 "neighbors-val", "report-tsne-val"):
        assert (run / "figures" / f"{name}.png").is_file(), name
    assert not list((run / "features").glob("*.val.npy")), "val's features are the train cache's rows, not a file"

    # The test page of a run whose probe.json an older sslkit's val probe wrote: no val number as the test split's.
    (run / "probe.json").write_text((run / "probe-val.json").read_text())
    text = build_report(run, method="tsne", max_points=80, console=quiet()).read_text(encoding="utf-8")
    sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, re.S))
    assert "60.0%" not in text and "probe.json holds a probe of the val split, not of test" in sections["probe"]
    assert main(["report", str(run), "--split", "valid"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "use one of: train, test, val" in err, err


def test_a_val_page_cuts_the_probes_parts_of_train_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A val page cut the labeled train split into the probe's parts twice: for its figures
    (load_evaluation_split) and again for the probe's predictions (probe_predictions), each a copy of the train
    images (the data itself read once). The predictions now take the parts the page's split holds."""
    from sslkit.evaluation import probe as probe_mod
    from sslkit.evaluation import retrieval
    from sslkit.report import probe_predictions

    for name in ("plot_training_curves", "plot_augmentations", "plot_clusters", "plot_map", "plot_neighbors",
                 "plot_kernels", "plot_confusion", "plot_misclassified"):
        monkeypatch.setattr(viz, name, _stub_figure)
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: np.zeros((len(x), 2), np.float32))
    run = make_run(tmp_path / "run", seed=6)
    meta = json.loads((run / "encoder.json").read_text())
    whole, _, held, _ = probe_mod.labeled_splits(meta, "val")
    write_features(run, clustered_features(whole.labels, 6), "train")
    write_probe(run, held.labels, "val", score=0.6)
    cuts = []
    real = probe_mod.labeled_splits
    monkeypatch.setattr(probe_mod, "labeled_splits", lambda meta, split, load=None: cuts.append(split) or real(
        meta, split, load))
    page = build_report(run, split="val", method="tsne", max_points=80, console=quiet())
    assert cuts == ["val"], cuts
    sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page.read_text(encoding="utf-8"), re.S))
    assert "<img " in sections["confusion"] and "<img " in sections["misclassified"]
    probe = json.loads((run / "probe-val.json").read_text())
    given = probe_predictions(run, retrieval.read_meta(run), probe,
                              evaluated=retrieval.load_evaluation_split(retrieval.read_meta(run), "val"))
    cut = probe_predictions(run, retrieval.read_meta(run), probe)
    assert given.source.ids == cut.source.ids == held.ids and torch.equal(given.predictions, cut.predictions)


def test_the_map_of_the_val_split_is_of_the_probes_held_out_images_and_named_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sslkit map RUN --split val` was refused ("fashion-mnist-mini has no split 'val'"). It now maps the images the
    val probe scores on, from the rows of the train split's cached features the probe slices, into
    figures/umap-val.png, its coordinates named apart from the train split's map."""
    from sslkit.evaluation.probe import held_out_parts, labeled_splits

    run = make_run(tmp_path / "run", seed=7)
    whole, _, held, _ = labeled_splits(json.loads((run / "encoder.json").read_text()), "val")
    train = clustered_features(whole.labels, 7)
    write_features(run, train, "train")
    mapped, drawn = [], []
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: mapped.append(x) or np.zeros((len(x), 2), np.float32))
    monkeypatch.setattr(viz, "plot_map", lambda xy, labels, *a, **k: drawn.append(labels) or _stub_figure(*a, **k))
    assert main(["map", str(run), "--split", "train", "--max-points", "20000"]) == 0
    assert main(["map", str(run), "--split", "val", "--max-points", "20000"]) == 0
    assert torch.equal(mapped[1], train[held_out_parts(whole.labels)[0]]) and torch.equal(drawn[1], held.labels)
    assert (run / "figures" / "umap-val.png").is_file() and (run / "figures" / "umap-train.png").is_file()
    assert len(list((run / "features").glob("*-train-*[0-9a-f].umap-seed0-*.npy"))) == 1, "train's map is kept"
    assert len(list((run / "features").glob("*-train-*.val.umap-seed0-*.npy"))) == 1, "val's beside it"


def test_the_map_command_and_the_page_draw_their_maps_through_one_function(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sslkit map` and the report's map section drew their maps by two copies of the same steps (subset, cached
    coordinates, shown count, thumbnails, plot), free to drift apart. Both now go through report.draw_map: the same
    split, method, seed and --max-points give the same points, classes and images, and the two differ only where
    they mean to: the file, the title (the page's names no run: the page does) and the thumbnails (the command's
    --thumbnails; the page's one per 20 mapped images, at most 24)."""
    from sslkit import report

    for name in ("plot_training_curves", "plot_augmentations", "plot_clusters", "plot_neighbors", "plot_kernels"):
        monkeypatch.setattr(viz, name, _stub_figure)
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: np.random.default_rng(seed).normal(
        size=(len(x), 2)).astype(np.float32))
    drawn, through = [], []

    def plot_map(xy, labels, classes, path, title, method, images, thumbnails):
        drawn.append((xy, labels, tuple(classes), path, title, images, list(thumbnails)))
        return _stub_figure(path)

    monkeypatch.setattr(viz, "plot_map", plot_map)
    draw_map = report.draw_map
    monkeypatch.setattr(report, "draw_map", lambda *a, **k: through.append(a[4]) or draw_map(*a, **k))
    run = make_run(tmp_path / "run", seed=9)
    run_map(run, method="tsne", max_points=100, thumbnails=3, console=quiet())
    build_report(run, method="tsne", max_points=100, console=quiet())
    figures = run / "figures"
    assert through == [figures / "tsne-test.png", figures / "report-tsne-test.png"], "both through draw_map"
    (xy, labels, classes, path, title, images, thumbnails), page = drawn
    np.testing.assert_array_equal(xy, page[0])
    assert torch.equal(labels, page[1]) and classes == page[2] and torch.equal(images, page[5])
    assert (path, page[3]) == (figures / "tsne-test.png", figures / "report-tsne-test.png")
    assert title == "t-SNE of run's resnet18 features: 100 of 2,000 test images (cosine, seed 0)"
    assert page[4] == "t-SNE of 100 of 2,000 test images (cosine, seed 0)"
    assert len(thumbnails) == 3 and len(page[6]) == 100 // 20


def test_a_page_draws_its_grid_as_sslkit_neighbors_does_and_shows_the_user_grids_of_its_split(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report's own neighbour grid went through a copy of `sslkit neighbors`' query picking, search and
    drawing; it now goes through the same function, so both draw the same grid. `sslkit neighbors --split val` grids
    are shown on the val page only, and the test split's on the test page only (a grid recorded before records named
    the split is shown on every page but val's, as before)."""
    from sslkit.evaluation import retrieval
    from sslkit.evaluation.probe import labeled_splits

    for name in ("plot_training_curves", "plot_augmentations", "plot_clusters", "plot_map", "plot_kernels"):
        monkeypatch.setattr(viz, name, _stub_figure)
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: np.zeros((len(x), 2), np.float32))
    grids = []

    def plot_neighbors(images, labels, classes, queries, idx, sims, path, title):
        grids.append((list(queries), idx, sims, title))
        return _stub_figure(path)

    monkeypatch.setattr(viz, "plot_neighbors", plot_neighbors)
    run = make_run(tmp_path / "run", seed=8)
    meta = json.loads((run / "encoder.json").read_text())
    whole, _, held, _ = labeled_splits(dict(meta, data_root=None), "val")
    write_features(run, clustered_features(whole.labels, 8), "train")
    write_probe(run, held.labels, "val", score=0.6)
    val_grid = retrieval.find_neighbors(run, ["random:6"], k=8, split="val", console=quiet(), show_table=False).path
    test_grid = retrieval.find_neighbors(run, ["3"], k=4, console=quiet(), show_table=False).path
    legacy = retrieval.find_neighbors(run, ["5"], k=4, console=quiet(), show_table=False).path
    record = retrieval.grid_record(legacy)
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "split"}))

    page = build_report(run, split="val", method="tsne", max_points=80, console=quiet())
    own = grids[-1]
    assert own[0] == grids[0][0] and own[3] == grids[0][3], "the same queries and title as sslkit neighbors"
    assert torch.equal(own[1], grids[0][1]) and torch.equal(own[2], grids[0][2]), "and the same neighbours"
    section = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page.read_text(encoding="utf-8"), re.S))
    assert val_grid.name in section["neighbors"] and test_grid.name not in section["neighbors"]
    assert legacy.name not in section["neighbors"]
    assert f"sslkit neighbors {run} --query 3 17 --split val" in section["neighbors"]
    from sslkit.report import user_grids

    assert sorted(p.name for p in user_grids(run, meta["sha256"], "test")) == sorted([test_grid.name, legacy.name])
    assert user_grids(run, meta["sha256"], "val") == [val_grid]


def test_neighbour_grids_are_shown_by_the_encoder_that_drew_them_not_by_file_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report showed the `sslkit neighbors` grids no older than encoder.safetensors. `cp -r RUN COPY` (and
    shutil.copytree with copy_function=shutil.copy) gives every file a new time in the order it is copied, so a copy
    hid grids of its encoder and showed another encoder's (shutil.copytree's default, copy2, keeps the times). A grid
    now carries a record of the encoder that drew it; one without a record is judged by its time, as before."""
    from sslkit.evaluation import retrieval
    from sslkit.report import user_grids

    monkeypatch.setattr(viz, "plot_neighbors", _stub_figure)
    run = make_run(tmp_path / "run")
    sha = json.loads((run / "encoder.json").read_text())["sha256"]
    fresh = retrieval.find_neighbors(run, ["3"], k=4, console=quiet(), show_table=False).path
    stale = retrieval.find_neighbors(run, ["5"], k=4, console=quiet(), show_table=False).path
    retrieval.record_grid(stale, "0" * 64, "test")  # as if drawn before the encoder was exported again
    legacy = run / "neighbors" / "old.png"  # from before grids had a record
    _stub_figure(legacy)
    assert (retrieval.read_grid_record(fresh) or {}).get("encoder_sha256") == sha
    assert retrieval.read_grid_record(legacy) is None
    assert sorted(p.name for p in (run / "neighbors").iterdir()) == [
        ".test-3-k4.png.json", ".test-5-k4.png.json", "old.png", "test-3-k4.png", "test-5-k4.png"]

    kept = shutil.copytree(run, tmp_path / "copy2")  # copy2: the times are kept, so they are no test of the record
    assert (kept / "neighbors" / fresh.name).stat().st_mtime == fresh.stat().st_mtime
    copy = shutil.copytree(run, tmp_path / "copy", copy_function=shutil.copy)  # new times, as cp -r gives
    weights = (copy / "encoder.safetensors").stat().st_mtime
    for name, offset in ((fresh.name, -60), (stale.name, 60), ("old.png", 30)):  # copied before / after the weights
        os.utime(copy / "neighbors" / name, (weights + offset, weights + offset))
    assert [p.name for p in user_grids(copy, sha)] == ["old.png", fresh.name]
    os.utime(copy / "neighbors" / "old.png", (weights - 30, weights - 30))
    assert [p.name for p in user_grids(copy, sha)] == [fresh.name], "an unrecorded grid older than the weights"
    rewritten = copy / "neighbors" / fresh.name
    rewritten.write_bytes(rewritten.read_bytes() + b"\0")
    os.utime(rewritten, (weights - 60, weights - 60))
    assert user_grids(copy, sha) == [], "a grid rewritten since its record goes by its time again"


@pytest.mark.parametrize("command", [["neighbors", "--query", "3"], ["umap"], ["report"]])
def test_run_without_encoder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, command: list[str]) -> None:
    save_recipe(load_recipe(ROOT / "recipes" / "quickstart.yaml"), tmp_path / "recipe.yaml")
    assert main([command[0], str(tmp_path), *command[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"sslkit {command[0]}: error:" in err[0] and "has no exported encoder" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"], "nothing is written"


def test_bad_map_arguments_exit_2(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["umap", str(run), "--max-points", "2"]) == 2
    assert "--max-points 2" in capsys.readouterr().err
    assert main(["umap", str(run), "--thumbnails", "-1"]) == 2
    assert "--thumbnails -1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["umap", str(run), "--method", "pca"])
    assert e.value.code == 2


def test_map_is_the_umap_command_under_the_name_the_design_gives_it(run: Path, capsys: pytest.CaptureFixture) -> None:
    """DESIGN.md lists the command as `sslkit map` (it draws t-SNE maps too), but `sslkit map RUN` was refused:
    "invalid choice: 'map'"."""
    from sslkit.cli import _umap, build_parser

    args = build_parser().parse_args(["map", str(run), "--method", "tsne"])
    assert args.func is _umap and args.method == "tsne"
    assert main(["map", str(run), "--max-points", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sslkit map: error: --max-points 2: a map needs at least 5 points"], err


def chromium_or_skip() -> str:
    """The headless browser the page tests run, or a skip where none is installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("Chromium is not installed here (Debian: apt-get install chromium chromium-driver; `make test` "
                    "installs it): the report was not rendered")
    return chromium


def test_chromium_renders_the_report_without_console_errors(page: Path, tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         f"--screenshot={shot}", "--window-size=1280,2400", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert shot.is_file(), proc.stderr[-2000:]
    assert not console, console
    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[:2] == (2400, 1280)
    assert img.std() > 0.1, "the screenshot is not blank"
    dark = (img.mean(axis=-1) < 0.5).mean()
    assert dark > 0.05, "text, header and figures are drawn"


MEASURE_FIGURES = """<script>addEventListener("load", () => {
  const rows = [...document.querySelectorAll("figure img")].map(i => [i.getBoundingClientRect().width, i.naturalWidth,
    i.closest("figure").getBoundingClientRect().width].map(Math.round).join(","));
  const out = document.createElement("pre"); out.id = "measured"; out.textContent = rows.join(" ");
  const lines = cell => { const r = document.createRange(); r.selectNodeContents(cell);
    return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size; };
  const boxes = [...document.querySelectorAll(".scroll")];
  const names = [...document.querySelectorAll(".scroll tr > :first-child")];
  const right = e => e.getBoundingClientRect().right;
  const tables = document.createElement("pre"); tables.id = "tables"; tables.textContent = JSON.stringify({
    wrapped: names.filter(c => lines(c) > 1).map(c => c.textContent), cells: names.length,
    outside: boxes.filter(b => right(b) > right(b.closest("section"))).length,
    scrolling: boxes.filter(b => b.scrollWidth > b.clientWidth).length,
    boxes: boxes.length, hinted: boxes.filter(b => getComputedStyle(b, "::before").content.includes("swipe")).length,
    kept: boxes.filter(b => b.scrollWidth > b.clientWidth).map(b => { b.scrollLeft = b.scrollWidth;
      return Math.round(b.querySelector("tr > :first-child").getBoundingClientRect().left
                        - b.getBoundingClientRect().left); }),
    page: Math.max(...[...document.querySelectorAll("section")].map(right))});
  document.body.append(out, tables);
});</script>"""


def test_on_a_phone_every_figure_is_shown_whole_and_never_enlarged(page: Path, tmp_path: Path) -> None:
    """Narrow screens forced every figure to 720 px: wider than a phone, so each chart showed only its left part
    in a scrolling box (the label-efficiency legend, two of three training curves, most of the confusion matrix
    out of sight), and a figure narrower than that (the kernels, 643 px) was enlarged beyond its pixels. Each figure
    now fits the screen at most at its own size, and opens at full size when tapped.

    Headless Chromium makes no window narrower than 500 px, so the page is laid out 390 px wide by its own root
    element (the report's CSS has no viewport units, and 390 and 500 px fall under the same media query)."""
    chromium = chromium_or_skip()
    probe = tmp_path / "measure.html"
    phone = "<style>html { width:390px; }</style></head>"
    probe.write_text(page.read_text(encoding="utf-8").replace("</head>", phone).replace("</body>", MEASURE_FIGURES
                                                                                         + "</body>"), encoding="utf-8")
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=390,2000", "--dump-dom", probe.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    measured = re.search(r'<pre id="measured">([^<]*)</pre>', proc.stdout)
    assert measured, proc.stderr[-2000:]
    rows = [tuple(map(int, row.split(","))) for row in measured.group(1).split()]
    assert len(rows) == 9, rows
    for shown, natural, room in rows:
        assert shown <= room, f"a {natural} px figure drawn {shown} px wide in {room} px: cut off, to be scrolled"
        assert shown <= natural, f"a {natural} px figure enlarged to {shown} px"
    assert any(natural > room for _, natural, room in rows), "the page has figures wider than a phone to fit"
    assert "tap" in re.search(r"@media \(max-width:760px\) \{(.*?)\n\}", page.read_text(), re.S).group(1)
    # The metric tables' first column (the metric's name) wrapped to two or three lines at 390 px; it now keeps one
    # line, and a table wider than the phone scrolls sideways inside its own box, never the page.
    tables = json.loads(html.unescape(re.search(r'<pre id="tables">([^<]*)</pre>', proc.stdout).group(1)))
    assert tables["cells"] > 20 and tables["wrapped"] == [], tables["wrapped"]
    assert tables["scrolling"] > 0 and tables["outside"] == 0 and tables["page"] <= 390, tables
    # Scrolled to its right end, a wide table keeps its names in view (they scrolled away with the rest, and the
    # baselines' columns, cut at a column's edge, gave no sign of being there), and each table says it may scroll.
    assert tables["kept"] and all(abs(x) <= 1 for x in tables["kept"]), tables["kept"]
    assert tables["hinted"] == tables["boxes"] > 0, tables


def test_centered_mean_follows_a_falling_loss_without_lag_and_equals_the_naive_window():
    """The training-curve smoother: a straight descent comes out unchanged (a trailing average sits above it),
    and on noisy data every point is the plain mean of its symmetric, end-shrunk window."""
    ramp = np.linspace(6.0, 1.5, 101)
    np.testing.assert_allclose(viz.centered_mean(ramp, 7), ramp, atol=1e-12)
    values = np.random.default_rng(0).normal(size=50)
    naive = [values[i - h:i + h + 1].mean() for i in range(50) for h in [min(4, i, 49 - i)]]
    np.testing.assert_allclose(viz.centered_mean(values, 4), naive, atol=1e-12)
    assert viz.centered_mean(values, 4)[4:-4].std() < values.std() / 2  # it does smooth (9-point windows inside)


def test_log_width_widens_rich_tables_only_when_no_stream_is_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_terminal(fd: int = 1) -> os.terminal_size:
        raise OSError("not a terminal")

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(os, "get_terminal_size", no_terminal)
    out = io.StringIO()
    console = Console(file=out)
    table = Table("arm", "test top-1 (mean ± std)", "per seed", "epochs", "seconds")
    table.add_row("supervised", "0.8211 ± 0.0042", "0.8163 0.8232 0.8239", "50", "61")
    assert console.width == 80
    with log_width():
        assert console.width == LOG_COLUMNS
        console.print(table)
    lines = out.getvalue().splitlines()
    assert any("test top-1 (mean ± std)" in line for line in lines), out.getvalue()  # at 80 columns it wraps
    assert any("supervised" in line and "0.8163 0.8232 0.8239" in line for line in lines), out.getvalue()
    assert "COLUMNS" not in os.environ and console.width == 80  # the environment is as it was
    monkeypatch.setenv("COLUMNS", "100")  # the user's choice wins
    with log_width():
        assert console.width == 100
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=1: os.terminal_size((90, 30)))  # a terminal: its width
    with log_width():
        assert "COLUMNS" not in os.environ and console.width == 90


def test_metrics_table_bolds_the_best_score_but_not_settings_sizes_times_or_spreads() -> None:
    models = {"ssl": {"test_top1.mean": 0.854, "test_top1.std": 0.0040, "seconds.mean": 31.3, "seeds": 3,
                      "dim": 512, "linear.weight_decay": 0.001, "fgsm.eps0.01.mean": 0.778, "kmeans.silhouette": 0.25},
              "supervised": {"test_top1.mean": 0.821, "test_top1.std": 0.0042, "seconds.mean": 32.6, "seeds": 3,
                             "dim": 784, "linear.weight_decay": 0.01, "fgsm.eps0.01.mean": 0.735,
                             "kmeans.silhouette": 0.29}}
    html = metrics_table(models, [(k, k) for k in models["ssl"]])
    rows = {re.sub("<[^>]+>", "", r.split("</td>")[0]): r for r in html.split("<tr>")[2:]}
    assert "<b>85.4%</b>" in rows["test_top1.mean"] and "<b>77.8%</b>" in rows["fgsm.eps0.01.mean"]
    assert "0.40%" in rows["test_top1.std"], "a rate's spread over seeds is a percentage too, to 2 decimals"
    assert "0.2500" in rows["kmeans.silhouette"], "scores of a row keep 4 decimals"
    for key in ("test_top1.std", "seconds.mean", "seeds", "dim", "linear.weight_decay", "kmeans.silhouette"):
        assert "<b>" not in rows[key], rows[key]


def test_finetune_card_of_one_seed_says_one_seed() -> None:
    """It said "ssl ahead in 1/1 seeds"."""
    def card(seeds: int) -> str:
        return _finetune_card({"summary": {"ssl": {"test_top1.mean": 0.8}, "supervised": {"test_top1.mean": 0.7}},
                               "difference": {"test_top1.mean": 0.1, "ssl_wins": seeds, "seeds": seeds},
                               "sizes": {"labeled": 500}})

    assert "one seed)" in card(1) and "1/1" not in card(1)
    assert "ssl ahead in 3/3 seeds)" in card(3)


def test_finetune_card_of_an_unknown_layout_says_done() -> None:
    assert "done" in _finetune_card({"summary": {"a": {}}}) and "see the last section" in _finetune_card({})


def test_saved_probe_predictions_are_used_only_for_the_encoder_they_were_made_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prediction file names its encoder's sha256 (a file without one goes by probe.json's); a new encoder's
    report recomputes them, and its overview card says the probe.json figure is of another encoder."""
    import types

    from sslkit import report
    from sslkit.evaluation import linear

    run = make_run(tmp_path / "run")
    labels = cached(run)[1]
    saved = write_probe(run, labels)
    meta = json.loads((run / "encoder.json").read_text())
    probe = json.loads((run / "probe.json").read_text())
    monkeypatch.setattr(report.retrieval, "split_features", lambda run, meta, source, split, console=None:
                        (torch.zeros(len(source), 4), run / "features"))
    fits = []

    def linear_probe(*args, **kwargs):
        fits.append(1)
        return types.SimpleNamespace(predictions=torch.zeros(len(labels), dtype=torch.long))

    monkeypatch.setattr(linear, "linear_probe", linear_probe)
    pred = report.probe_predictions(run, meta, probe)  # a file from before the hash, for probe.json's encoder
    assert not pred.computed and torch.equal(pred.predictions, saved)
    torch.save({"labels": labels, "predictions": saved, "sha256": meta["sha256"]}, run / "figures" / PREDICTIONS_FILE)
    assert not report.probe_predictions(run, meta, probe).computed
    new = dict(meta, sha256="0" * 64)  # the run's encoder changed since the probe
    pred = report.probe_predictions(run, new, probe)
    assert pred.computed and not pred.predictions.any() and len(fits) == 1
    # The page of a run probed with another encoder, with a prediction file from before the hash.
    (run / "probe.json").write_text(json.dumps(dict(probe, checkpoint_sha256="0" * 64)))
    torch.save({"labels": labels, "predictions": saved}, run / "figures" / PREDICTIONS_FILE)
    for name in ("plot_training_curves", "plot_augmentations", "plot_clusters", "plot_map", "plot_neighbors",
                 "plot_kernels"):
        monkeypatch.setattr(viz, name, _stub_figure)
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: np.zeros((len(x), 2), np.float32))
    page = build_report(run, max_points=80, console=quiet()).read_text(encoding="utf-8")
    overview = re.search(r'<section id="overview">(.*?)</section>', page, re.S).group(1)
    assert "of another encoder than the run" in overview
    assert len(fits) == 2, "the report fitted the probe anew for the run's encoder"


def test_a_figure_interrupted_while_it_is_written_leaves_the_one_it_replaces_whole(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    """Ctrl-C during savefig left a truncated PNG in place of the last good figure (umap's map: 65,672 of 139,902
    bytes), while the command said "files already written are complete"."""
    import matplotlib.figure
    import matplotlib.pyplot as plt

    from sslkit.evaluation.robustness import plot_robustness

    path = tmp_path / "figures" / "umap-test.png"
    viz.save_figure(plt.figure(figsize=(2, 2)), path)
    before = path.read_bytes()
    real = matplotlib.figure.Figure.savefig

    def interrupted(self, fname, *args, **kwargs):
        Path(fname).write_bytes(before[: len(before) // 2])  # half written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", interrupted)
    for plot in (lambda: viz.save_figure(plt.figure(figsize=(3, 3)), path),
                 lambda: plot_robustness({"ssl": {"eps": [0.0, 0.1], "mean": [0.9, 0.5], "std": [0.0, 0.0]}}, path)):
        with pytest.raises(KeyboardInterrupt):
            plot()
        assert path.read_bytes() == before
        assert sorted(p.name for p in path.parent.iterdir()) == ["umap-test.png"]  # no temporary file left
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", real)
    viz.save_figure(plt.figure(figsize=(3, 3)), tmp_path / "map.JPG")  # the format is the extension's
    assert (tmp_path / "map.JPG").read_bytes()[:2] == b"\xff\xd8"


@pytest.mark.parametrize("text", ['[1, 2]', '{"models": {"encoder": 5}, "split": "test"}', '{"models": {}}',
                                  '{"models": {"encoder": {}}}',
                                  '{"models": {"encoder": {}}, "split": "test", "fractions": "0.1"}'])
def test_a_probe_json_not_in_the_probes_layout_is_one_line_before_any_figure(tmp_path: Path, capsys, monkeypatch,
                                                                             text: str) -> None:
    """A probe.json that is JSON but not what `sslkit probe` writes (a list, no models table, no split) died with a
    KeyError or AttributeError traceback, exit 1, after the report had drawn its figures (13 s on the quickstart)."""
    import sslkit.report as report

    run = make_run(tmp_path / "run")
    (run / "probe.json").write_text(text)

    def no_data(*args, **kwargs):
        raise AssertionError("data were read before probe.json was checked")

    monkeypatch.setattr(report.retrieval, "load_splits", no_data)  # every read of the run's splits
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{run / 'probe.json'} is not as `sslkit probe` writes it" in err and len(err.splitlines()) == 1, err
    assert not (run / "report.html").exists() and (run / "probe.json").read_text() == text


def imagefolder_run(folder: Path) -> Path:
    """A run pretrained (as far as the report can tell) on a tiny image folder of 2 classes, 24 train and 6 test
    images of 8×8, with synthetic cached features of both splits."""
    from fakes import write_noise_folder

    from sslkit.checkpoint import export_encoder
    from sslkit.evaluation import retrieval
    from sslkit.models import build_encoder

    images = write_noise_folder(folder / "imgs", per_class=15)
    run = folder / "run"
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", ["data.dataset=imagefolder", f"data.root={images}",
                                                                 "data.image_size=8"])
    run.mkdir(parents=True)
    save_recipe(recipe, run / "recipe.yaml")
    torch.manual_seed(0)
    meta = {"encoder": "resnet18", "stem": "cifar", "in_chans": 3, "num_features": 512, "image_size": 8,
            "mean": [0.5] * 3, "std": [0.25] * 3, "dataset": "imagefolder", "split": "train",
            "data_root": str(images), "recipe": recipe.name, "imagefolder_test_held_out": 0.2}
    export_encoder(build_encoder("resnet18", "cifar", 3), run, meta)
    for split in ("train", "test"):
        write_features(run, clustered_features(retrieval.load_split(retrieval.read_meta(run), split).labels, 0,
                                               dim=512), split)
    return run


def test_a_report_reads_the_image_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report read its run's data once per use: the page's split, the augmentation preview's pretraining split,
    the probe's train and evaluation splits; an image folder three times over, each read listing, stat'ing and
    hashing every file and mapping its decoded cache. Each page now reads the folder once, every figure drawn."""
    import sslkit.data as data
    from sslkit.evaluation import linear, retrieval
    from sslkit.evaluation.probe import labeled_splits

    for name in ("plot_training_curves", "plot_augmentations", "plot_clusters", "plot_map", "plot_neighbors",
                 "plot_kernels", "plot_confusion", "plot_misclassified", "plot_label_efficiency"):
        monkeypatch.setattr(viz, name, _stub_figure)
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: np.zeros((len(x), 2), np.float32))
    monkeypatch.setattr(linear, "linear_probe", lambda *a, **k: pytest.fail("the probe's predictions were refitted"))
    run = imagefolder_run(tmp_path)
    meta = retrieval.read_meta(run)
    write_probe(run, retrieval.load_split(meta, "test").labels, "test")
    write_probe(run, labeled_splits(meta, "val")[2].labels, "val")
    reads = []  # each read of the folder lists it first, whoever reads it (imagefolder_pool is imported by name)
    real = data._list_images
    monkeypatch.setattr(data, "_list_images", lambda *a, **k: reads.append(a) or real(*a, **k))
    for split in ("test", "val"):
        reads.clear()
        text = build_report(run, split=split, method="tsne", max_points=80, console=quiet()).read_text("utf-8")
        sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, re.S))
        for key in ("augmentations", "clusters", "map", "neighbors", "confusion", "misclassified"):
            assert "<img " in sections[key], (split, key)
        assert len(reads) == 1, f"the {split} page read the image folder {len(reads)} times"


def test_the_summary_names_the_page_on_one_line_in_a_log(tmp_path: Path) -> None:
    """The summary's heading is a line of its own: as the status table's title, rich wrapped it to the table's
    width and a log got the page's path in two pieces."""
    from sslkit.report import Section, _print_summary

    page = tmp_path / ("a-long-folder-name-of-runs-" * 3) / "report.html"
    page.parent.mkdir()
    page.write_text("<html></html>")
    out = io.StringIO()
    _print_summary([Section("overview", "Overview"), Section("probe", "Linear probe", missing="run <code>x</code>")],
                   page, 1.0, Console(file=out, width=LOG_COLUMNS))
    assert any(f"sslkit report → {page}" in line for line in out.getvalue().splitlines()), out.getvalue()


def test_the_kmeans_figure_draws_the_clustering_the_probe_scored_whatever_the_pages_seed(
        run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sslkit report --seed 3` clustered with seed 3 while the table beside the figure held the probe's seed-0
    clustering's scores: two clusterings in one section. The clusters now come from the probe's seed and restarts;
    the page's seed still picks the members shown."""
    from sslkit.evaluation import clustering
    from sslkit.evaluation.probe import KMEANS_RESTARTS

    real, calls = clustering.kmeans, []

    def recorded(x: torch.Tensor, k: int, seed: int = 0, restarts: int = 5, **kwargs: object) -> torch.Tensor:
        calls.append((seed, restarts))
        return real(x, k, seed=seed, restarts=restarts, **kwargs)

    monkeypatch.setattr(clustering, "kmeans", recorded)
    build_report(run, seed=3, max_points=MAX_POINTS, out=tmp_path / "seed3.html", console=quiet())
    assert calls == [(0, KMEANS_RESTARTS)], calls  # probe.json's seed is 0


def test_an_image_folder_runs_finetune_results_show_on_its_test_page(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """finetune.json names its split as split_description does, for an image folder "test (20% of the image folder,
    held out of pretraining)": the test page took that for another split, hid the results and told its reader to
    run `sslkit report RUN --split test (20% of …)`."""
    from sslkit.data import split_description

    for name in ("plot_training_curves", "plot_augmentations", "plot_clusters", "plot_map", "plot_neighbors",
                 "plot_kernels"):
        monkeypatch.setattr(viz, name, _stub_figure)
    monkeypatch.setattr(viz, "embed_2d", lambda x, method, seed: np.zeros((len(x), 2), np.float32))
    run = imagefolder_run(tmp_path)
    described = split_description("imagefolder", "test")
    assert described != "test"  # the case at hand
    summary = {"ssl": {"test_top1.mean": 0.8431}, "supervised": {"test_top1.mean": 0.8211}}
    (run / "finetune.json").write_text(json.dumps({"name": "ft", "split": described, "sizes": {"labeled": 20},
                                                   "summary": summary, "runs": []}))
    text = build_report(run, max_points=20, console=quiet()).read_text(encoding="utf-8")
    body = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, re.S))["finetune"]
    assert "84.3%" in body and "--split" not in body, body[:600]
