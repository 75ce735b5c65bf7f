"""``sslkit probe RUN``: every frozen-feature measure of a run's encoder, beside the baselines that give it meaning.

One protocol for every model in the table: the run's ``encoder``, ``raw_pixels`` (the images, normalised and
flattened), ``random_init`` (the same architecture with random weights and honest batch-norm statistics) and
any ``--compare`` runs. The two baselines normalise the images with the labeled train split's own per-channel
mean and std, not the run's (whose pretraining pool depends on its seed), so they are the same for every run
of a data set. For each model, on features of the labeled train split and the evaluation split:

- ``linear.*``: logistic regression, L2 strength chosen on a validation part of *train*, or by K-fold
  cross-validation on it when that part would be under ``CV_BELOW`` images (``linear.folds``: 1 for the single
  part, K for folds; ``linear.val_top1``: the held-out top-1 of every strength tried, the grid extended past an
  edge that won); the evaluation split is classified once, by the final model (:mod:`sslkit.evaluation.linear`);
- ``knn.k20.*``, ``knn.k200.*``: cosine k-NN, temperature-weighted (T = 0.07) and plain majority;
- ``kmeans.*``: k-means with k = number of classes on the evaluation features: silhouette, NMI, ARI, purity,
  Hungarian accuracy;
- ``label_fraction.<f>.*``: the linear probe trained on a stratified, seeded fraction f of the labels.

``RUN/probe.json`` holds, per model, these flat dotted keys (``models.encoder["knn.k20.top1"]``), plus the data
set, split sizes, the encoder's sha256, the protocol and the seconds taken; a score that could not be measured
(a label fraction too small for every class) is null. ``RUN/figures/label_efficiency.png``
plots test error against labeled examples, log-log, and ``RUN/figures/.probe_predictions.pt`` keeps the linear
probe's predictions for the report. Those are the test split's files; a probe of another split writes its own
beside them (:func:`probe_files`: ``probe-val.json`` …), so that checking a choice on ``val`` leaves the test
split's numbers as they were.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sslkit.checkpoint import atomic_write, load_encoder, torch_bytes, write_json
from sslkit.console import PipeSafeConsole
from sslkit.data import (
    ImageSource,
    channel_stats,
    scored_split_problem,
    scored_splits,
    split_description,
    stratified_split,
)
from sslkit.errors import UserError
from sslkit.evaluation.clustering import cluster_metrics
from sslkit.evaluation.features import (
    cache_path,
    cached_features,
    data_fingerprint,
    default_device,
    encoder_cache_path,
    extract_features,
    pretraining_overlap_note,
    progress_bar,
    random_encoder,
    raw_pixels,
    read_run_meta,
)
from sslkit.evaluation.knn import knn_evaluate
from sslkit.evaluation.linear import (
    CV_BELOW,
    CV_FOLDS,
    EXTRA_DECADES,
    WEIGHT_DECAYS,
    linear_probe,
    validation_folds,
)
from sslkit.evaluation.retrieval import SplitLoader, load_splits
from sslkit.outputs import check_output, check_run_writable, split_file
from sslkit.trainer import imagefolder_changed

FRACTIONS: tuple[float, ...] = (0.01, 0.1, 1.0)
KNN_KS: tuple[int, ...] = (20, 200)
KNN_TEMPERATURE = 0.07
VAL_FRACTION = 0.1
KMEANS_RESTARTS = 5
SILHOUETTE_SAMPLE = 10_000
BASELINES = ("raw_pixels", "random_init")


HELD_OUT = "val"  # --split val: a part of the labeled train split, held out of the probes, for comparing runs
HELD_OUT_SHARE = 1 / 6  # Fashion-MNIST: 10,000 of 60,000, the size of its test split
HELD_OUT_SHARE_WORD = "sixth"  # as messages and pages say it ("17%" read as a rounded share)
HELD_OUT_SEED = 0  # the same part for every run and every --seed, so that runs are compared on the same images


PREDICTIONS_FILE = ".probe_predictions.pt"  # in RUN/figures: the linear probe's predictions, for the report


def probe_files(run: Path, split: str) -> tuple[Path, Path, Path]:
    """Where the probe of ``split`` keeps its results, predictions and label-efficiency figure: ``RUN/probe.json``,
    ``RUN/figures/.probe_predictions.pt`` and ``RUN/figures/label_efficiency.png`` for the test split, the same
    names with ``-<split>`` before the extension for any other (``RUN/probe-val.json``)."""
    figures = Path(run) / "figures"
    return (Path(run) / split_file("probe.json", split), figures / split_file(PREDICTIONS_FILE, split),
            figures / split_file("label_efficiency.png", split))


def held_out_parts(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the labeled train split in :data:`HELD_OUT` and the rest, as sorted index tensors.

    Shape:
        labels: (N,) -> (M,), (N - M,)
    """
    return stratified_split(labels, HELD_OUT_SHARE, HELD_OUT_SEED)


def probe_features(features_of: Callable[[str, ImageSource], torch.Tensor], labeled_train: ImageSource,
                   evaluation: ImageSource, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A model's features of the probes' train part and of the evaluation split, from one cache per split.

    ``features_of("train", source)`` and ``features_of("eval", source)`` give (cached) features of a whole
    split. With ``--split val`` both parts are rows of the labeled train split, so they are sliced from its
    features (the cache a test probe made, or one it will use) instead of being extracted and cached apart.

    Shape:
        -> (N, D) float32, (M, D) float32
    """
    train_x = features_of("train", labeled_train)
    if split == HELD_OUT:
        held, rest = held_out_parts(labeled_train.labels)
        return train_x[rest], train_x[held]
    return train_x, features_of("eval", evaluation)


def labeled_splits(meta: dict[str, Any], split: str, load: SplitLoader | None = None
                   ) -> tuple[ImageSource, ImageSource, ImageSource, str]:
    """The labeled train split, the part of it the probes learn from, and the labeled evaluation split.

    An image folder's test split is the part of it that ``imagefolder_split`` holds out of pretraining. ``val``
    (:data:`HELD_OUT`) is a fixed, stratified sixth of the labeled train split, which the probes do not learn
    from: a split to compare runs on (to choose a recipe, say) while the test split waits for the chosen one.

    ``load`` reads the run's splits (:func:`~sslkit.evaluation.retrieval.load_splits` when None; the report passes
    its :class:`~sslkit.evaluation.retrieval.SplitMemo`, which has read them already).

    Returns:
        ``(labeled train split, probes' train part, evaluation, description of the evaluation split)``; the
        first two are the same but for ``val``.
    """
    load = load or load_splits

    def labeled(source: ImageSource) -> ImageSource:
        return source.subset(torch.nonzero(source.labels >= 0).flatten())

    if split == HELD_OUT:
        train = labeled(load(meta, ("train",))[0])
        if len(train) < 2 / HELD_OUT_SHARE:
            raise UserError(f"--split {HELD_OUT}: the train split of {meta['dataset']} has {len(train)} labeled "
                            f"images, too few to hold out a {HELD_OUT_SHARE_WORD} — use test")
        held, rest = held_out_parts(train.labels)
        fitted, evaluation = train.subset(rest), train.subset(held)
        described = (f"{HELD_OUT} (a fixed, stratified {HELD_OUT_SHARE_WORD} of the labeled train split, held out of "
                     "the probes)")
    else:  # both in one read: an image folder's are cut from one read of the whole folder (load_splits)
        train, evaluation = (labeled(source) for source in load(meta, ("train", split)))
        fitted, described = train, split_description(meta["dataset"], split)
    for part, what in ((fitted, "train"), (evaluation, split)):
        if len(torch.unique(part.labels)) < 2:
            raise UserError(f"the {what} split of {meta['dataset']} has {len(part)} labeled images in fewer than 2 "
                            "classes — the probe needs labeled images of at least 2 classes")
    return train, fitted, evaluation, described


def evaluate_features(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                      num_classes: int, fractions: Sequence[float] = FRACTIONS, seed: int = 0,
                      progress: Progress | None = None, description: str = "probing") -> tuple[dict[str, Any],
                                                                                                 torch.Tensor]:
    """Every frozen-feature metric of one model under the probe's protocol.

    Args:
        train_x, train_y: labeled training features; all fitting and model selection happen on these.
        test_x, test_y: the evaluation split: classified by final models only, clustered once.
        num_classes: classes of the data set.
        fractions: labeled fractions for the label-efficiency probe (1.0 reuses the full probe).
        seed: seeds the validation split, the label subsets and k-means.
        progress: a live progress display to add this model's bar to.
        description: the bar's label.

    Returns:
        ``(metrics, predictions)``: flat ``"linear.top1"``-style metrics, and the full linear probe's predicted
        class for every evaluation example.

    Shape:
        train_x: (N, D), train_y: (N,), test_x: (M, D), test_y: (M,) -> metrics, (M,)
    """
    subsets = {}
    for f in fractions:
        if f < 1:
            n = round(f * len(train_y))
            # Fewer labels than classes cannot train a classifier of every class: reported as NaN, not faked.
            subsets[f] = stratified_split(train_y, float(f), seed)[0] if n >= num_classes else None
    # Each probe fits the grid once per fold (none when there is nothing to choose), then refits; a grid extended
    # past an edge adds to it as it goes.
    probed = [train_y] + [train_y[idx] for idx in subsets.values() if idx is not None]
    task = None
    total = sum(validation_folds(y, num_classes, len(WEIGHT_DECAYS), VAL_FRACTION) * len(WEIGHT_DECAYS) + 1
                for y in probed) + 2
    if progress is not None:
        task = progress.add_task(description, total=total)

    def step(n: int = 1) -> None:
        if progress is not None and task is not None:
            progress.advance(task, n)

    def extend() -> None:  # a fit beyond the grid is about to run: the bar's total grows by it
        nonlocal total
        total += 1
        if progress is not None and task is not None:
            progress.update(task, total=total)

    out: dict[str, Any] = {}
    lin = linear_probe(train_x, train_y, test_x, test_y, num_classes, val_fraction=VAL_FRACTION, seed=seed,
                       on_fit=step, on_extend=extend)
    out["linear.top1"] = lin.top1
    if lin.top5 is not None:
        out["linear.top5"] = lin.top5
    out["linear.weight_decay"] = lin.weight_decay
    out["linear.val_top1"] = lin.val_top1
    out["linear.folds"] = lin.folds
    knn = knn_evaluate(train_x, train_y, test_x, test_y, ks=KNN_KS, temperature=KNN_TEMPERATURE,
                       num_classes=num_classes)
    out.update({f"knn.{key}": value for key, value in knn.items()})
    out.update({f"knn.k{k}.k": len(train_x) for k in KNN_KS if k > len(train_x)})  # k clipped to the bank
    step()
    km = cluster_metrics(test_x, test_y, k=num_classes, seed=seed, restarts=KMEANS_RESTARTS,
                         silhouette_sample=SILHOUETTE_SAMPLE)
    out.update({f"kmeans.{key}": value for key, value in km.items()})
    step()
    for f in fractions:
        if f >= 1:
            res = lin
        elif subsets[f] is None:
            res = None
        else:
            idx = subsets[f]
            res = linear_probe(train_x[idx], train_y[idx], test_x, test_y, num_classes, val_fraction=VAL_FRACTION,
                               seed=seed, on_fit=step, on_extend=extend)
        key = f"label_fraction.{f:g}"
        out[f"{key}.top1"] = res.top1 if res else float("nan")
        out[f"{key}.n"] = res.n_train if res else round(f * len(train_y))
        out[f"{key}.weight_decay"] = res.weight_decay if res else None
        out[f"{key}.val_top1"] = res.val_top1 if res else {}  # every strength tried, the grid's extensions too
        out[f"{key}.folds"] = res.folds if res else None  # 1: one validation part; K: K-fold cross-validation
    if progress is not None and task is not None:
        progress.remove_task(task)
    return out, lin.predictions


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    if not fractions:
        raise UserError("--fractions needs at least one labeled fraction, e.g. --fractions 0.01 0.1 1")
    for f in fractions:
        if not 0 < f <= 1:
            raise UserError(f"--fractions: {f:g} is not a fraction in (0, 1] — use e.g. --fractions 0.01 0.1 1")
    return tuple(sorted(set(float(f) for f in fractions)))


def _model_names(run: Path, others: Sequence[Path]) -> list[str]:
    """Table names of the compared runs: their folder names, or their paths where those collide."""
    names = []
    for other in others:
        if other.resolve() == run.resolve():  # it was probed twice, its column beside itself under its path
            raise UserError(f"--compare {other} is the run being probed — compare it with other runs")
        name = other.name
        if name in ("encoder", *BASELINES) or name == run.name or [o.name for o in others].count(name) > 1:
            name = str(other)
        if name in names:
            raise UserError(f"--compare {other} is given twice — list each run once")
        names.append(name)
    return names


def run_probe(run_dir: str | Path, split: str = "test", compare: Sequence[str | Path] = (),
              json_path: str | Path | None = None, fractions: Sequence[float] = FRACTIONS, seed: int = 0,
              console: Console | None = None, data_root: str | Path | None = None) -> dict[str, Any]:
    """Probes a run's encoder beside raw pixels, a random encoder and other runs; prints and saves the results.

    Every argument is checked, and every run's ``encoder.json`` read, before any data is loaded or computed.

    Args:
        run_dir: the run directory (it needs ``encoder.safetensors`` and ``encoder.json``).
        split: the evaluation split; the probes learn from the labeled train split.
        compare: other run directories for the table (trained on the same data set and image size).
        json_path: also write the results here; ``RUN/probe.json`` (``RUN/probe-<split>.json`` for a split other
            than test, see :func:`probe_files`) is always written.
        fractions: labeled fractions of the train split for the label-efficiency probe.
        seed: seeds the validation and label splits, k-means and the random encoder.
        console: where the table and progress go.
        data_root: where the runs' data is now, in place of its ``data.root`` (``--data-root``).

    Returns:
        What is written to ``probe.json`` (or the split's own file).

    Raises:
        UserError: a missing or incomplete run, an invalid split or fraction, compare runs of other data,
            missing data files, or NaN/Inf features.
    """
    t0 = time.perf_counter()
    console = console or PipeSafeConsole()
    run = Path(run_dir)
    meta = read_run_meta(run, data_root)  # a run without an exported encoder fails here, before any data is read
    results_path, predictions_path, efficiency_path = probe_files(run, split)
    if json_path:
        json_path = check_output(json_path, "--json", (".json",), run, own=results_path.name)
    check_run_writable(run, ("features", "figures"), f"its features cache, {results_path.name} and figures")
    if split == "train":
        raise UserError("--split train would score the probes on the images they were fitted on — use test (or "
                        "another held-out split)")
    if split not in (*scored_splits(meta["dataset"]), HELD_OUT):
        raise UserError(scored_split_problem(meta["dataset"], split, "--split", "the probes are fitted on")
                        + f" (or {HELD_OUT}, a held-out part of train for comparing runs)")
    fractions = _check_fractions(fractions)
    others = [Path(c) for c in compare]
    other_meta = [read_run_meta(other, data_root) for other in others]
    for other, m in zip(others, other_meta, strict=True):
        mine = (meta["dataset"], int(meta["image_size"]), int(meta["in_chans"]))
        theirs = (m["dataset"], int(m["image_size"]), int(m["in_chans"]))
        if theirs != mine:
            raise UserError(f"--compare {other}: its encoder was trained on {theirs[0]} at {theirs[1]}px with "
                            f"{theirs[2]} channel(s), {run}'s on {mine[0]} at {mine[1]}px with {mine[2]} — compare "
                            "runs of the same data")
    names = _model_names(run, others)

    labeled_train, train, test, described = labeled_splits(meta, split)
    num_classes = len(train.classes)
    device = default_device()
    console.print(f"[bold]sslkit probe[/] {run}: {meta['dataset']} — {len(train):,} labeled train images, "
                  f"{len(test):,} {split} images, {num_classes} classes, on {device.type}",
                  soft_wrap=not console.is_terminal)  # a log keeps the header on one line
    notes = []  # kept in probe.json too, where the report shows them
    for m, folder in [(meta, run), *zip(other_meta, others, strict=True)]:
        if (note := pretraining_overlap_note(m, imagefolder_changed(folder, m, labeled_train))) is not None:
            notes.append(f"{folder}: {note}")
            console.print(f"[yellow]note[/] ({folder}): {note}")

    for f in fractions:  # evaluate_features leaves these out (NaN): say why where the table shows "—"
        if f < 1 and round(f * len(train)) < num_classes:
            notes.append(f"{f:.0%} of the labels is {round(f * len(train))} image(s) for {num_classes} classes: too "
                         "few to fit a classifier of every class, so that row is empty")

    # The baselines see the data normalised by the labeled train split itself, so every run of a data set gets
    # the same baseline rows (the run's own mean/std comes from its seed-drawn pretraining pool). The whole labeled
    # train split, with --split val too (its pixels, never its labels), so that a val probe and a test probe
    # share the random encoder's features.
    mean, std = channel_stats(labeled_train.images)
    # Every model's cache files, and the random encoder's key, are named after the same two splits: one memo of
    # their data fingerprints (each a strided read of up to 64 MiB of the images) reads each once. It is keyed by
    # the ImageSource objects, which hash by identity and are held by it, and it ends with the probe.
    fingerprint = functools.cache(data_fingerprint)
    features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with progress_bar(console) as progress:
        for name, folder, m in [("encoder", run, meta), *zip(names, others, other_meta, strict=True)]:
            features[name] = _encoder_features(name, folder, m, labeled_train, test, split, device, progress,
                                               fingerprint)
        features["raw_pixels"] = (raw_pixels(train, mean, std), raw_pixels(test, mean, std))
        features["random_init"] = _random_init_features(run, dict(meta, mean=mean, std=std), labeled_train, test,
                                                         split, seed, device, progress, fingerprint)

        results: dict[str, dict[str, Any]] = {}
        predictions = None
        for name, (tr, te) in features.items():
            t = time.perf_counter()
            metrics, pred = evaluate_features(tr, train.labels, te, test.labels, num_classes, fractions, seed,
                                              progress, description=f"probing {name}")
            results[name] = dict(metrics, dim=int(tr.shape[1]), seconds=round(time.perf_counter() - t, 2))
            if name == "encoder":
                predictions = pred

    report: dict[str, Any] = {
        "run": str(run), "dataset": meta["dataset"], "split": split, "split_description": described, "notes": notes,
        "classes": list(train.classes), "sizes": {"train": len(train), split: len(test)},
        "checkpoint_sha256": meta["sha256"], "encoder": meta["encoder"], "seed": seed, "fractions": list(fractions),
        "compare": {name: str(other) for name, other in zip(names, others, strict=True)},
        "protocol": {"knn_k": list(KNN_KS), "knn_temperature": KNN_TEMPERATURE, "linear_weight_decays":
                     list(WEIGHT_DECAYS), "linear_extra_decades": EXTRA_DECADES, "linear_val_fraction": VAL_FRACTION,
                     "linear_cv_below": CV_BELOW, "linear_cv_folds": CV_FOLDS,
                     "kmeans_restarts": KMEANS_RESTARTS,
                     "silhouette_sample": SILHOUETTE_SAMPLE, "device": device.type,
                     "baseline_mean": list(mean), "baseline_std": list(std)},
        "seconds": round(time.perf_counter() - t0, 2), "models": results,
    }
    print_table(report, console)
    write_json(results_path, report)
    if json_path:
        write_json(json_path, report)
    # for a confusion matrix in reports, which use it only for this encoder
    saved = {"labels": test.labels, "predictions": predictions, "sha256": meta["sha256"]}
    data = torch_bytes(saved)  # written by Python: a full disk is a WriteError naming it, as for checkpoints
    atomic_write(predictions_path, lambda tmp: tmp.write_bytes(data))
    from sslkit.viz import plot_label_efficiency

    plot_label_efficiency(report, efficiency_path)
    console.print(f"wrote {results_path}{f' and {json_path}' if json_path else ''}, {efficiency_path} "
                  f"({report['seconds']:.0f} s)")
    return report


def run_features(run_dir: str | Path, split: str = "test", console: Console | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A run's encoder features of the probes' train part and evaluation split, as ``sslkit probe`` uses them.

    Read from the run's feature cache, computed (and cached) when missing.

    Returns:
        ``(train_x, train_y, eval_x, eval_y)``.

    Shape:
        -> (N, D) float32, (N,) int64, (M, D) float32, (M,) int64
    """
    run = Path(run_dir)
    meta = read_run_meta(run)
    labeled_train, train, evaluation, _ = labeled_splits(meta, split)
    with progress_bar(console or PipeSafeConsole()) as progress:
        train_x, eval_x = _encoder_features("encoder", run, meta, labeled_train, evaluation, split, default_device(),
                                            progress)
    return train_x, train.labels, eval_x, evaluation.labels


def _encoder_features(name: str, run: Path, meta: dict[str, Any], labeled_train: ImageSource,
                      evaluation: ImageSource, split: str, device: torch.device, progress: Progress,
                      fingerprint: Callable[[ImageSource], str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A run's features of the probes' train part and evaluation split (:func:`probe_features`), from its cache
    or computed (the encoder loads only if needed); ``fingerprint`` gives the splits' data fingerprints
    (:func:`~sslkit.evaluation.features.cache_path`)."""
    encoder: torch.nn.Module | None = None

    def features_of(part: str, source: ImageSource) -> torch.Tensor:
        def compute() -> torch.Tensor:
            nonlocal encoder
            encoder = encoder if encoder is not None else load_encoder(run, device)
            return extract_features(encoder, source, meta["mean"], meta["std"], device=device, progress=progress,
                                    description=f"{name}: {part} features")

        return cached_features(encoder_cache_path(run, meta, part, source, fingerprint), source.labels, compute)

    return probe_features(features_of, labeled_train, evaluation, split)


def _random_init_features(run: Path, meta: dict[str, Any], labeled_train: ImageSource, evaluation: ImageSource,
                          split: str, seed: int, device: torch.device, progress: Progress,
                          fingerprint: Callable[[ImageSource], str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a seeded random encoder of the run's architecture, batch-norm statistics from the labeled
    train split, for the probes' train part and evaluation split (:func:`probe_features`).

    ``meta`` carries the normalisation the baseline uses (``mean``, ``std``); ``fingerprint`` gives the splits'
    data fingerprints, as for :func:`_encoder_features`.
    """
    encoder: torch.nn.Module | None = None
    # The batch-norm statistics come from the train images, so they are part of what these features are.
    key = (f"random-init-{meta['encoder']}-{meta['stem']}-c{meta['in_chans']}-seed{seed}-"
           f"bn{fingerprint(labeled_train)[:6]}")

    def features_of(part: str, source: ImageSource) -> torch.Tensor:
        def compute() -> torch.Tensor:
            nonlocal encoder
            encoder = encoder if encoder is not None else random_encoder(meta, labeled_train, seed, device)
            return extract_features(encoder, source, meta["mean"], meta["std"], device=device, progress=progress,
                                    description=f"random_init: {part} features")

        path = cache_path(run, key, part, source, meta["mean"], meta["std"], fingerprint)
        return cached_features(path, source.labels, compute)

    return probe_features(features_of, labeled_train, evaluation, split)


ROWS: tuple[tuple[str, str], ...] = (
    ("linear.top1", "linear top-1"), ("linear.top5", "linear top-5"),
    ("knn.k20.top1", "k-NN k=20 (weighted)"), ("knn.k200.top1", "k-NN k=200 (weighted)"),
    ("knn.k20.majority.top1", "k-NN k=20 (majority)"), ("knn.k200.majority.top1", "k-NN k=200 (majority)"),
    ("kmeans.silhouette", "k-means silhouette"), ("kmeans.nmi", "k-means NMI"), ("kmeans.ari", "k-means ARI"),
    ("kmeans.purity", "k-means purity"), ("kmeans.hungarian_acc", "k-means Hungarian acc."),
)


#: Parts of a metric's dotted key that make it a setting, a size, a cost or a spread, where the largest value is not
#: the best one (``dim``, ``linear.weight_decay``, ``linear.folds``, ``test_top1.std``, ``seconds.mean``, ``seeds``),
#: or a score that does not compare across feature spaces (``kmeans.silhouette``: raw pixels' tight clusters can
#: score higher while agreeing less with the classes).
UNRANKED_PARTS = frozenset({"std", "seconds", "seeds", "dim", "weight_decay", "n", "epochs", "k", "silhouette",
                            "folds"})


def score_rows(models: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """The rows of ``ROWS`` that some model has, as (key, label); a k-NN row whose k was more than the labeled
    train split (the bank) says the k it used: every query's vote then takes the whole bank."""
    rows = []
    for key, label in ROWS:
        if not any(key in m for m in models.values()):
            continue
        used = {m.get(".".join(key.split(".")[:2]) + ".k") for m in models.values()} - {None}  # knn.k200.k
        if key.startswith("knn.") and used:
            label += f", k = {min(used)}: the whole train split"
        rows.append((key, label))
    return rows


def ranked(key: str) -> bool:
    """Whether metric ``key`` is a score to rank, larger being better (accuracies, NMI, ARI …); not settings,
    sizes, times, spreads, nor the silhouette, which does not compare across feature spaces (``UNRANKED_PARTS``)."""
    return not UNRANKED_PARTS.intersection(key.split("."))


def best_score(key: str, values: Sequence[Any]) -> float | None:
    """The value of a metrics-table row that is shown in bold: the largest finite number of a score row (see
    :func:`ranked`) with at least two of them; None for rows of settings, sizes, times and spreads, and for rows
    with nothing to compare. ``sslkit probe``'s table and the HTML report both bold by this rule."""
    finite = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return max(finite) if len(finite) > 1 and ranked(key) else None


def column_name(report: dict[str, Any], name: str) -> str:
    """A model's column heading in the probe's tables: the probed run's is ``encoder``, named after its folder as
    well where ``--compare`` runs stand beside it under theirs (which of them "encoder" was went unsaid)."""
    if name == "encoder" and report.get("compare"):
        return f"encoder ({Path(str(report.get('run', ''))).name or 'this run'})"
    return name


def print_table(report: dict[str, Any], console: Console) -> None:
    """Metrics as rows, models as columns (encoder first, baselines after); each score row's best value in bold."""
    models = report["models"]
    split = report["split"]
    # The caption is a line of its own: as the table's title rich would wrap it to the table's width.
    console.print(f"{report['dataset']}: probes trained on {report['sizes']['train']:,} labeled train images, "
                  f"scored on {report['sizes'][split]:,} {split} images", highlight=False)
    table = Table()
    table.add_column("metric")
    for name in models:
        table.add_column(column_name(report, name), justify="right", style="dim" if name in BASELINES else None)
    first = next(iter(models.values()))
    rows = score_rows(models)
    rows += [(f"label_fraction.{f:g}.top1",
              f"linear top-1, {100 * f:g}% of labels (n={first[f'label_fraction.{f:g}.n']:,})")
             for f in report["fractions"] if f < 1]
    rows += [("linear.weight_decay", "linear weight decay"), ("dim", "feature dim"), ("seconds", "seconds")]
    for key, label in rows:
        values = [m.get(key) for m in models.values()]
        best = best_score(key, values)
        table.add_row(label, *[f"[bold]{_cell(key, v)}[/]" if best is not None and v == best else _cell(key, v)
                               for v in values])
    console.print(table)
    sil = first.get("kmeans.silhouette_n")
    if sil is not None and sil < report["sizes"][split]:
        console.print(f"silhouette on a seeded sample of {sil:,} {split} images")


def _cell(key: str, v: Any) -> str:
    """A value of ``print_table``'s row ``key`` as text: scores to four places, settings and sizes as they are."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if key == "linear.weight_decay":
        return f"{v:g}"
    if key == "seconds":
        return f"{v:.1f}"
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else f"{v:.4f}"
