"""Frozen-feature evaluation: k-NN, linear probe, k-means and `sslkit probe` against references and invariants."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from sklearn.linear_model import LogisticRegression

from sslkit.checkpoint import export_encoder
from sslkit.cli import main
from sslkit.errors import UserError
from sslkit.evaluation import features as features_mod
from sslkit.evaluation import linear as linear_mod
from sslkit.evaluation.clustering import cluster_metrics, hungarian_accuracy, purity
from sslkit.evaluation.features import pretraining_overlap_note
from sslkit.evaluation.knn import knn_evaluate, knn_predict, knn_search, knn_top1
from sslkit.evaluation.linear import Standardiser, fit_logistic, linear_probe, spectrum
from sslkit.evaluation.probe import best_score, evaluate_features, print_table, run_probe, score_rows
from sslkit.models import build_encoder
from sslkit.viz import plot_label_efficiency


def blobs(n_per: int, classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around random unit centres: (classes·n_per, dim) features and their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=1) * 10
    y = torch.arange(classes).repeat_interleave(n_per)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_faiss_search_equals_torch_topk() -> None:
    bank, _ = blobs(100, 5, 32, 3.0, 0)
    queries = torch.randn(77, 32, generator=torch.Generator().manual_seed(1))
    sims, idx = knn_search(bank, queries, k=10, chunk_size=13)  # several chunks, one ragged
    ref = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    ref_sims, ref_idx = ref.topk(10, dim=1)
    torch.testing.assert_close(sims, ref_sims, atol=1e-5, rtol=0)
    assert torch.equal(idx, ref_idx)


def test_exclude_self_drops_the_query_row() -> None:
    bank, _ = blobs(20, 3, 8, 1.0, 2)
    _, idx = knn_search(bank, bank, k=5, exclude_self=True)
    assert not (idx == torch.arange(len(bank))[:, None]).any()
    ref = F.normalize(bank, dim=1) @ F.normalize(bank, dim=1).T
    ref.fill_diagonal_(-2)
    assert torch.equal(idx, ref.topk(5, dim=1).indices)


def test_weighted_vote_matches_a_naive_reference() -> None:
    bank, labels = blobs(30, 4, 16, 12.0, 3)  # heavily overlapping: votes are not unanimous
    queries, _ = blobs(10, 4, 16, 12.0, 4)
    k, t = 7, 0.1
    got = knn_predict(bank, labels, queries, k=k, temperature=t)
    got_majority = knn_predict(bank, labels, queries, k=k, weighted=False)
    b, q = F.normalize(bank.double(), dim=1), F.normalize(queries.double(), dim=1)
    for i in range(len(q)):
        sims = [(float(q[i] @ b[j]), j) for j in range(len(b))]
        top = sorted(sims, reverse=True)[:k]
        score = [0.0] * 4
        count = [0] * 4
        for s, j in top:
            score[int(labels[j])] += math.exp(s / t)
            count[int(labels[j])] += 1
        assert int(got[i]) == max(range(4), key=lambda c: score[c])
        assert int(got_majority[i]) == max(range(4), key=lambda c: (count[c], -c))


def test_one_search_answers_every_k() -> None:
    bank, labels = blobs(50, 4, 16, 10.0, 5)
    queries, qy = blobs(25, 4, 16, 10.0, 6)
    both = knn_evaluate(bank, labels, queries, qy, ks=(3, 40), temperature=0.2, chunk_size=17)
    for k in (3, 40):
        for weighted, key in ((True, f"k{k}.top1"), (False, f"k{k}.majority.top1")):
            pred = knn_predict(bank, labels, queries, k=k, temperature=0.2, weighted=weighted)
            assert both[key] == pytest.approx(float((pred == qy).float().mean()))


def test_separable_clusters_score_perfectly() -> None:
    x, y = blobs(40, 5, 24, 0.5, 7)
    m = cluster_metrics(x, y, seed=0, restarts=3)
    assert m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0)
    assert m["purity"] == 1.0 and m["hungarian_acc"] == 1.0 and m["silhouette"] > 0.9
    assert m["k"] == 5 and m["silhouette_n"] == 200
    xt, yt = blobs(10, 5, 24, 0.5, 7)
    assert knn_evaluate(x, y, xt, yt, ks=(5,))["k5.top1"] == 1.0
    assert linear_probe(x, y, xt, yt).top1 == 1.0


def test_shuffled_labels_give_chance() -> None:
    x, y = blobs(200, 5, 32, 0.5, 8)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]  # labels unrelated to features
    xt, yt = blobs(100, 5, 32, 0.5, 9)
    yt = yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(1))]
    assert abs(knn_evaluate(x, y, xt, yt, ks=(20,))["k20.top1"] - 0.2) < 0.07
    assert abs(linear_probe(x, y, xt, yt).top1 - 0.2) < 0.07
    m = cluster_metrics(xt, yt, seed=0)
    assert m["nmi"] < 0.05 and abs(m["ari"]) < 0.05


def test_purity_and_hungarian_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    clusters = np.array([1, 1, 0, 0, 0, 0])
    assert purity(labels, clusters) == pytest.approx((2 + 2) / 6)  # cluster 1 → class 0 (2), cluster 0 → 1 (2)
    assert hungarian_accuracy(labels, clusters) == pytest.approx(4 / 6)


def test_logistic_fit_reaches_the_sklearn_optimum() -> None:
    x, y = blobs(60, 3, 10, 8.0, 10)
    xs = Standardiser(x)(x)
    lam = 1e-2
    w, b = fit_logistic(xs, y, 3, lam)

    def objective(w: torch.Tensor, b: torch.Tensor) -> float:
        logits = xs.double() @ w.double().T + b.double()
        return float(F.cross_entropy(logits, y) + 0.5 * lam * w.double().square().sum())

    # sklearn minimises ½‖W‖² + C·Σ loss: with C = 1/(λN) that is the same objective times 1/λ.
    ref = LogisticRegression(C=1 / (lam * len(y)), tol=1e-10, max_iter=10_000).fit(xs.numpy(), y.numpy())
    w_ref, b_ref = torch.from_numpy(ref.coef_).double(), torch.from_numpy(ref.intercept_).double()
    assert objective(w, b) <= objective(w_ref, b_ref) + 1e-5
    torch.testing.assert_close(w.double(), w_ref, atol=2e-3, rtol=0)  # strictly convex in W: one minimiser


@pytest.mark.parametrize("wide", ["gram", "randomised"])
def test_wide_features_reach_the_same_optimum_through_a_thin_preconditioner(
        wide: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Raw pixels of larger images: D ≫ N. P is then kept as thin eigenpairs (from the Gram matrix, or a
    # randomised SVD when N is large too); a preconditioner changes the path, never the minimiser.
    x, y = blobs(40, 3, 12, 6.0, 21)
    x = torch.cat([x, torch.randn(len(x), 288, generator=torch.Generator().manual_seed(5))], 1)  # D = 300 > N
    xs = Standardiser(x)(x)
    lam = 1e-2
    assert spectrum(xs)[1].shape[1] <= len(xs), "fewer rows than dimensions: the Gram path, whatever D"
    with monkeypatch.context() as m:
        m.setattr(linear_mod, "SPECTRUM_RANK", 10)  # more rows than that rank: the dense D×D path
        dense = spectrum(xs)
    assert dense[1].shape == (300, 300)
    monkeypatch.setattr(linear_mod, "DENSE_SPECTRUM_MAX", 100)
    monkeypatch.setattr(linear_mod, "SPECTRUM_RANK", 200 if wide == "gram" else 30)
    thin = spectrum(xs)
    assert thin[1].shape[0] == 300 and thin[1].shape[1] <= (len(xs) if wide == "gram" else 30)

    def objective(w: torch.Tensor, b: torch.Tensor) -> float:
        logits = xs.double() @ w.double().T + b.double()
        return float(F.cross_entropy(logits, y) + 0.5 * lam * w.double().square().sum())

    ref = LogisticRegression(C=1 / (lam * len(y)), tol=1e-10, max_iter=10_000).fit(xs.numpy(), y.numpy())
    best = objective(torch.from_numpy(ref.coef_), torch.from_numpy(ref.intercept_))
    for eig in (dense, thin):
        w, b = fit_logistic(xs, y, 3, lam, eig=eig)
        assert objective(w, b) <= best + 5e-5, (objective(w, b), best)


def test_a_truncated_spectrum_still_converges_at_weak_regularisation(monkeypatch: pytest.MonkeyPatch) -> None:
    # N > the kept rank: a randomised SVD keeps the leading eigenpairs; the rest of the spectrum must not be taken
    # for zeros, or L-BFGS would crawl at small λ (objective 0.075 against 0.0015 before the fix).
    g = torch.Generator().manual_seed(7)
    x = torch.randn(600, 400, generator=g) * torch.logspace(0, -3, 400)  # a decaying spectrum
    y = (x[:, :3] @ torch.randn(3, 3, generator=g)).argmax(1)
    xs = Standardiser(x)(x)
    dense = fit_logistic(xs, y, 3, 1e-5)
    monkeypatch.setattr(linear_mod, "DENSE_SPECTRUM_MAX", 100)
    monkeypatch.setattr(linear_mod, "SPECTRUM_RANK", 64)
    torch.manual_seed(1)
    state = torch.random.get_rng_state()
    thin_eig = spectrum(xs)
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's random stream is untouched"
    torch.manual_seed(2)
    assert torch.equal(spectrum(xs)[0], thin_eig[0]), "the same eigenpairs whatever the global seed"
    thin = fit_logistic(xs, y, 3, 1e-5, eig=thin_eig)

    def objective(w: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cross_entropy(xs.double() @ w.double().T + b.double(), y) + 0.5e-5 * w.double().square().sum())

    assert objective(*thin) <= objective(*dense) + 1e-3, (objective(*thin), objective(*dense))


@pytest.mark.parametrize("folds", [1, 5])
@pytest.mark.parametrize(("peak", "tried", "chosen"), [
    (10.0, ["100", "10", "1", "0.1", "0.01", "0.001", "0.0001", "1e-05"], 10.0),  # past the strong edge
    (1e-7, ["0.1", "0.01", "0.001", "0.0001", "1e-05", "1e-06", "1e-07", "1e-08"], 1e-7),  # past the weak edge
    (1e6, ["100", "10", "1", "0.1", "0.01", "0.001", "0.0001", "1e-05"], 100.0),  # the cap: 3 decades
    (1e-3, ["0.1", "0.01", "0.001", "0.0001", "1e-05"], 1e-3),  # an inside optimum: the grid as it is
    (None, ["100", "10", "1", "0.1", "0.01", "0.001", "0.0001", "1e-05"], 100.0),  # all equal: the strongest
])
def test_the_l2_grid_grows_past_an_edge_that_wins(peak: float | None, tried: list[str], chosen: float, folds: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """600 Fashion-MNIST labels chose the grid's strongest λ for every model: the optimum may lie past it. The
    grid grows a decade at a time past a winning edge, in every fold, each fit warm-started from its fold's edge,
    while the new edge wins, at most EXTRA_DECADES; every score is recorded, and the progress callbacks announce
    each extra fit before it runs. With one validation part (60 rows: 9 held out, under CV_BELOW made 1) and
    with 5 folds (CV_BELOW as it is)."""
    if folds == 1:
        monkeypatch.setattr(linear_mod, "CV_BELOW", 1)
    events = []

    def fake_fit(x, y, k, wd, init=None, eig=None):  # logits are λ everywhere; the validation score peaks at ``peak``
        events.append(("fit", wd, None if init is None else float(init[1][0]), len(x)))
        return torch.zeros(k, x.shape[1]), torch.full((k,), wd)

    def fake_score(logits, y, k=1):
        assert len(logits) == len(y) == (60 if folds == 5 else 9), "scored on every held-out row at once"
        return 0.5 if peak is None else 1 / (1 + abs(math.log10(float(logits[0, 0])) - math.log10(peak)))

    monkeypatch.setattr(linear_mod, "fit_logistic", fake_fit)
    monkeypatch.setattr(linear_mod, "topk_accuracy", fake_score)
    x, y = blobs(20, 3, 4, 1.0, 0)
    best, scores, fit = linear_mod.select_weight_decay(x, y, 3, on_fit=lambda: events.append(("done",)),
                                                       on_extend=lambda: events.append(("extend",)))
    assert best == chosen and float(fit[1][0]) == pytest.approx(chosen)
    assert list(scores) == tried, "every strength tried, strongest first"
    fits = [e for e in events if e[0] == "fit"]
    assert {e[3] for e in fits} == ({48} if folds == 5 else {51}), "each fit on its fold's fit part"
    assert [f"{e[1]:g}" for e in fits[::folds]] == ["0.1", "0.01", "0.001", "0.0001", "1e-05"] + [
        t for t in tried if float(t) not in linear_mod.WEIGHT_DECAYS][::1 if chosen < 1e-5 else -1]
    assert [e[1] for e in fits] == [e[1] for e in fits[::folds] for _ in range(folds)], "every fold, λ by λ"
    for e in fits[5 * folds:]:  # each extension starts from its neighbour's fit, one decade away
        assert math.isclose(math.log10(e[1]) - math.log10(e[2]), 1 if e[1] > 0.1 else -1, abs_tol=1e-6)
    assert events.count(("done",)) == len(tried) * folds and events.count(("extend",)) == (len(tried) - 5) * folds
    for i, e in enumerate(events):  # announced before the extra fit runs, so a progress bar can count it
        if e == ("extend",):
            assert events[i + 1][0] == "fit" and events[i + 1][1] not in linear_mod.WEIGHT_DECAYS


class Bar:
    """A progress display that records how far its one task got and whether it ever passed its total."""

    def __init__(self) -> None:
        self.total = self.completed = 0
        self.over = False

    def add_task(self, description: str, total: int) -> int:
        self.total = total
        return 0

    def advance(self, task: int, n: int = 1) -> None:
        self.completed += n
        self.over |= self.completed > self.total

    def update(self, task: int, total: int) -> None:
        self.total = total

    def remove_task(self, task: int) -> None:
        self.removed_at = (self.completed, self.total)


def test_probe_progress_counts_the_extra_fits() -> None:
    """Noisy blobs whose held-out rows prefer λ = 0.1, the grid's strongest, to 0.01: the grid grows a decade past
    it in each of the 5 folds (1 does worse), and the probe's progress bar grows its total before each extra fit,
    so it ends full and never passes its total."""
    train_x, train_y = blobs(20, 4, 64, 9.0, 0)
    test_x, test_y = blobs(5, 4, 64, 9.0, 1)
    bar = Bar()
    metrics, _ = evaluate_features(train_x, train_y, test_x, test_y, 4, fractions=(1.0,), progress=bar)
    assert list(metrics["linear.val_top1"]) == ["1", "0.1", "0.01", "0.001", "0.0001", "1e-05"]
    assert metrics["label_fraction.1.val_top1"] == metrics["linear.val_top1"]
    assert metrics["linear.folds"] == metrics["label_fraction.1.folds"] == 5
    assert metrics["linear.weight_decay"] == 0.1
    assert bar.removed_at == (5 * 6 + 1 + 2, 5 * 6 + 1 + 2) and not bar.over  # 5 × 6 strengths, refit, k-NN, k-means


def test_probe_progress_is_sized_by_each_probes_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    """One probe per way of choosing λ: all 200 labels on one validation part (CV_BELOW made 15: 20 held out),
    a quarter (50: 12 held out) by 5 folds, and 2 % (one image a class) with nothing to choose, so only the
    refit. The bar's total is sized by each probe's folds up front and ends full."""
    monkeypatch.setattr(linear_mod, "CV_BELOW", 15)
    train_x, train_y = blobs(50, 4, 16, 6.0, 0)
    test_x, test_y = blobs(5, 4, 16, 6.0, 1)
    bar = Bar()
    metrics, _ = evaluate_features(train_x, train_y, test_x, test_y, 4, fractions=(0.02, 0.25, 1.0), progress=bar)
    assert [metrics[f"label_fraction.{f}.folds"] for f in ("0.02", "0.25", "1")] == [0, 5, 1]
    assert metrics["label_fraction.0.02.val_top1"] == {}
    fits = sum(len(metrics[f"label_fraction.{f}.val_top1"]) * folds + 1
               for f, folds in (("0.02", 0), ("0.25", 5), ("1", 1)))
    assert bar.removed_at == (fits + 2, fits + 2) and not bar.over, (bar.removed_at, fits)


def test_the_held_out_part_decides_between_one_split_and_folds() -> None:
    """One validation part of 2,000 images (CV_BELOW) or more; fewer, and K = 5 folds, or as many as the rarest
    class has images (at least 2: a class of one image leaves nothing to choose with, as before)."""
    y = torch.arange(10).repeat(2000)  # 20,000 labels: a 10 % part holds 2,000
    assert linear_mod.validation_folds(y, 10) == 1
    assert linear_mod.validation_folds(y[:19_990], 10) == 5
    assert linear_mod.validation_folds(y[:600], 10) == 5  # 1 % of Fashion-MNIST: 60 would be held out
    assert linear_mod.validation_folds(torch.tensor([0] * 30 + [1] * 30 + [2] * 3), 3) == 3
    assert linear_mod.validation_folds(torch.tensor([0] * 30 + [1] * 30 + [2] * 2), 3) == 2
    assert linear_mod.validation_folds(torch.tensor([0] * 30 + [1] * 30 + [2]), 3) == 0
    assert linear_mod.validation_folds(y[:600], 10, n_candidates=1) == 0


def test_a_large_training_set_keeps_the_single_validation_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """At and above CV_BELOW held-out images (made 10 here, so that 300 rows qualify) λ is chosen exactly as
    before folds existed: on one stratified 10 % part, fitted on the rest standardised by it, along the warm-started
    grid — the same scores, choice and fit, bit for bit, as that procedure written out (the grid's extension is
    left out here; test_the_l2_grid_grows_past_an_edge_that_wins covers it on one part too)."""
    from sslkit.data import stratified_split

    monkeypatch.setattr(linear_mod, "CV_BELOW", 10)
    x, y = blobs(100, 3, 60, 9.0, 2)  # 0.001 ties 1e-4 and 1e-5: the stronger is chosen
    fits = []
    best, scores, fit = linear_mod.select_weight_decay(x, y, 3, seed=4, on_fit=lambda: fits.append(1),
                                                       extra_decades=0)
    val, rest = stratified_split(y, 30, 4)
    scale = Standardiser(x[rest])
    ref, ref_fits, params = {}, {}, None
    for wd in linear_mod.WEIGHT_DECAYS:
        params = ref_fits[wd] = fit_logistic(scale(x[rest]), y[rest], 3, wd, init=params)
        ref[f"{wd:g}"] = linear_mod.topk_accuracy(F.linear(scale(x[val]), *params), y[val])
    assert linear_mod.validation_folds(y, 3) == 1 and len(fits) == 5
    assert scores == ref and best == max(linear_mod.WEIGHT_DECAYS, key=lambda wd: (ref[f"{wd:g}"], wd))
    assert torch.equal(fit[0], ref_fits[best][0]) and torch.equal(fit[1], ref_fits[best][1])
    assert torch.equal(fit[2].mean, scale.mean) and torch.equal(fit[2].std, scale.std)
    assert best == 1e-3 and len(set(ref.values())) > 1, "the strengths score differently: the test says something"


def cross_validated_reference(x: torch.Tensor, y: torch.Tensor, grid: tuple[float, ...], folds: int,
                              seed: int) -> dict[str, float]:
    """Each λ's pooled held-out top-1 by the textbook loop: scikit-learn's LogisticRegression (C = 1/(λ·n), its
    scaling of the same objective) on every fold standardised by its own fit part, hits counted over all folds."""
    from sklearn.model_selection import StratifiedKFold

    ref = {}
    for wd in grid:
        hits = 0
        for f, v in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x.numpy(), y.numpy()):
            scale = Standardiser(x[f])
            clf = LogisticRegression(C=1 / (wd * len(f)), tol=1e-10, max_iter=10_000)
            clf.fit(scale(x[f]).numpy(), y[f].numpy())
            hits += int((clf.predict(scale(x[v]).numpy()) == y[v].numpy()).sum())
        ref[f"{wd:g}"] = hits / len(y)
    return ref


def test_folds_score_each_strength_by_its_pooled_held_out_top1() -> None:
    """63 noisy rows (folds of 13 and 12): every strength's score is its hits over all 63 held-out predictions,
    as scikit-learn fitted fold by fold gives; the best of them is chosen, ties to the stronger."""
    x, y = blobs(21, 3, 5, 9.0, 5)
    grid = (10.0, 1.0, 0.1, 0.01)
    best, scores, _ = linear_mod.select_weight_decay(x, y, 3, grid, seed=2, extra_decades=0)
    ref = cross_validated_reference(x, y, grid, 5, seed=2)
    assert scores == pytest.approx(ref, abs=1e-6), (scores, ref)
    assert best == max(grid, key=lambda wd: (ref[f"{wd:g}"], wd))
    assert len(set(ref.values())) > 1, "the strengths score differently: the comparison says something"


def test_rare_classes_get_as_many_folds_as_they_have_images() -> None:
    """A class of 3 images: 3 folds, each holding it out once (no scikit-learn warning about a class too small
    for the folds), scored as the reference loop with 3 folds scores; a class of one image: nothing to choose."""
    x, y = blobs(20, 3, 5, 9.0, 6)
    keep = torch.cat([torch.arange(40), torch.tensor([40, 45, 50])])
    x, y = x[keep], y[keep]
    grid = (1.0, 0.1, 0.01)
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        best, scores, _ = linear_mod.select_weight_decay(x, y, 3, grid, seed=1, extra_decades=0,
                                                         on_fit=lambda: calls.append(1))
    assert len(calls) == 3 * len(grid)
    assert scores == pytest.approx(cross_validated_reference(x, y, grid, 3, seed=1), abs=1e-6)
    assert linear_mod.select_weight_decay(x[:41], y[:41], 3, grid) == (0.1, {}, None)
    result = linear_probe(x[:41], y[:41], x, y, weight_decays=grid)
    assert (result.folds, result.weight_decay, result.val_top1) == (0, 0.1, {})


def test_cross_validation_is_deterministic_for_a_seed() -> None:
    """The same seed gives the same folds, scores, choice and test predictions; another seed other folds."""
    x, y = blobs(30, 3, 5, 9.0, 7)
    xt, yt = blobs(10, 3, 5, 9.0, 8)
    a, b = linear_probe(x, y, xt, yt, seed=3), linear_probe(x, y, xt, yt, seed=3)
    assert a.folds == 5 and a.val_top1 == b.val_top1 and a.weight_decay == b.weight_decay and a.top1 == b.top1
    assert torch.equal(a.predictions, b.predictions)
    assert linear_probe(x, y, xt, yt, seed=4).val_top1 != a.val_top1


def test_test_labels_never_influence_the_probe() -> None:
    x, y = blobs(60, 4, 16, 9.0, 11)
    xt, yt = blobs(30, 4, 16, 9.0, 12)
    a = linear_probe(x, y, xt, yt)
    b = linear_probe(x, y, xt, yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(3))])
    assert a.weight_decay == b.weight_decay and a.val_top1 == b.val_top1
    assert torch.equal(a.predictions, b.predictions)
    # …and neither do the test features: only the train split chooses the regularisation.
    c = linear_probe(x, y, xt * 3 + 1, yt)
    assert c.weight_decay == a.weight_decay and c.val_top1 == a.val_top1


def test_nan_features_are_one_clear_error() -> None:
    x, y = blobs(10, 2, 4, 1.0, 13)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(UserError, match="1 of 20 feature rows contain NaN"):
        knn_evaluate(bad, y, x, y)
    with pytest.raises(UserError, match="NaN or Inf"):
        linear_probe(x, y, bad, y)


def test_knn_at_a_tiny_temperature_votes_like_float64() -> None:
    # exp((s - 1)/T) underflowed to 0 for every neighbour below T ≈ 0.005, and argmax then said class 0.
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(500, 32, generator=g), dim=1)
    queries = F.normalize(torch.randn(100, 32, generator=g), dim=1)
    labels = torch.randint(0, 10, (500,), generator=g)
    sims = queries.double() @ bank.double().T
    top = sims.topk(20, dim=1)
    for t in (0.07, 0.005, 0.001):
        w = torch.exp((top.values - top.values[:, :1]) / t)  # float64, max-shifted: no underflow of the nearest
        want = torch.zeros(100, 10, dtype=torch.float64).scatter_add_(1, labels[top.indices], w).argmax(1)
        got = knn_predict(bank, labels, queries, k=20, temperature=t)
        assert (got == want).float().mean() >= 0.99, t  # float32 similarities may swap a near-tie
        assert len(torch.unique(got)) > 3, t


def test_knn_evaluate_counts_a_repeated_k_once_and_scores_no_queries_as_nan() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = F.normalize(torch.randn(60, 8, generator=g), dim=1), torch.randint(0, 3, (60,), generator=g)
    once = knn_evaluate(x, y, x[:20], y[:20], ks=(5,))
    assert knn_evaluate(x, y, x[:20], y[:20], ks=(5, 5)) == once and 0 <= once["k5.top1"] <= 1
    assert all(math.isnan(v) for v in knn_evaluate(x, y, x[:0], y[:0], ks=(5,)).values())
    with pytest.raises(UserError, match="num_classes is 2 but the bank holds label 2"):
        knn_evaluate(x, y, x, y, ks=(5,), num_classes=2)
    with pytest.raises(UserError, match="num_classes is 2 but the bank holds label 2"):
        knn_predict(x, y, x, k=5, num_classes=2)


def test_knn_accuracy_refuses_query_labels_of_another_shape() -> None:
    # (Q, 1) labels (a column from numpy or pandas) broadcast against the (Q,) predictions: knn_evaluate gave
    # "top-1" 25.0 and knn_top1 a number with no meaning, silently.
    x, y = blobs(20, 3, 8, 0.5, seed=3)
    right = knn_evaluate(x, y, x[:30], y[:30], ks=(5,))
    assert right["k5.top1"] == 1.0 and knn_top1(x, y, x[:30], y[:30], k=5) == 1.0
    assert knn_evaluate(x, y, x[:30], y[:30].numpy().astype(np.int32), ks=(5,)) == right
    for bad in (y[:30, None], y[:1], y[:29]):
        with pytest.raises(ValueError, match=r"query_labels must be \(30,\), one class per query, got shape"):
            knn_evaluate(x, y, x[:30], bad, ks=(5,))
        with pytest.raises(ValueError, match=r"query_labels must be \(30,\)"):
            knn_top1(x, y, x[:30], bad, k=5)


def test_linear_probe_classes_come_from_training_labels_and_an_empty_test_is_nan() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(120, 6, generator=g), torch.arange(120) % 5
    x[torch.arange(120), y] += 4
    test_y = torch.arange(40) % 5
    a = linear_probe(x, y, x[:40], test_y)
    b = linear_probe(x, y, x[:40], torch.where(test_y == 4, 9, test_y))  # a label the training split never had
    assert a.top5 is None and b.top5 is None and torch.equal(a.predictions, b.predictions)
    assert math.isnan(linear_probe(x, y, x[:0], y[:0]).top1)


def test_linear_probe_refuses_labels_of_another_shape() -> None:
    # (M, 1) test labels broadcast against the (M,) predictions: top-1 came out 1.0 whatever the features.
    x, y = blobs(20, 3, 8, 0.5, seed=4)
    assert linear_probe(x, y, x[:30], y[:30]).top1 == 1.0
    with pytest.raises(ValueError, match=r"^test_y must be \(30,\), one class per feature row, got shape \(30, 1\)$"):
        linear_probe(x, y, x[:30], ((y[:30] + 1) % 3)[:, None])  # every label wrong: it scored 1.0
    with pytest.raises(ValueError, match=r"^train_y must be \(60,\)"):
        linear_probe(x, y[:, None], x[:30], y[:30])
    with pytest.raises(ValueError, match=r"^test_y must be \(30,\)"):
        linear_probe(x, y, x[:30], y[:29])


def test_linear_probe_takes_numpy_and_refuses_unlabeled_or_out_of_range_training_labels() -> None:
    x, y = blobs(20, 3, 8, 0.5, seed=5)
    a = linear_probe(x, y, x[:30], y[:30])
    b = linear_probe(x.numpy(), y.numpy().astype(np.int32), x[:30].numpy(), y[:30].numpy())  # as k-NN and k-means take
    assert a.top1 == b.top1 == 1.0 and torch.equal(a.predictions, b.predictions)
    with pytest.raises(UserError, match=r"^2 training rows are unlabeled \(label −1\)"):  # was torch.bincount's error
        linear_probe(x, torch.where(torch.arange(60) < 2, -1, y), x[:30], y[:30])
    with pytest.raises(UserError, match=r"^linear probe num_classes is 2 but the training labels hold 2"):  # IndexError
        linear_probe(x, y, x[:30], y[:30], num_classes=2)


def test_cluster_scores_refuse_unlabeled_rows() -> None:
    x, y = torch.randn(30, 4), torch.arange(30) % 3
    y[:5] = -1
    with pytest.raises(UserError, match="5 rows are unlabeled"):
        cluster_metrics(x, y, k=3)


# --- `sslkit probe` end to end on a tiny image folder -------------------------------------------------------


def tiny_run(tmp_path: Path, name: str = "run", mean: float = 0.5, std: float = 0.25) -> Path:
    """An image folder of 3 colour classes and a run directory holding a random encoder trained on "it"."""
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c, colour in enumerate(("red", "green", "blue")):
        if (root / colour).exists():
            break  # a second run on the same folder
        (root / colour).mkdir(parents=True)
        for i in range(20):
            img = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            img[..., c] = rng.integers(150, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(img).save(root / colour / f"{i:02d}.png")
    run = tmp_path / name
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", "cifar", 3)
    meta = dict(encoder="resnet18", stem="cifar", in_chans=3, num_features=512, image_size=16, mean=[mean] * 3,
                std=[std] * 3, dataset="imagefolder", data_root=str(root), recipe="tiny", imagefolder_test_held_out=0.2)
    export_encoder(encoder, run, meta)
    return run


def test_probe_writes_every_metric_and_reuses_its_feature_cache(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run = tiny_run(tmp_path)
    calls = []
    real = features_mod.extract_features
    monkeypatch.setattr("sslkit.evaluation.probe.extract_features",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    report = run_probe(run, fractions=(0.5, 1.0), console=Console(quiet=True))
    assert len(calls) == 4  # encoder and random_init, train and test each
    saved = json.loads((run / "probe.json").read_text())
    assert saved["sizes"] == {"train": 48, "test": 12} and saved["checkpoint_sha256"]
    for model in ("encoder", "raw_pixels", "random_init"):
        m = saved["models"][model]
        for key in ("linear.top1", "knn.k20.top1", "knn.k200.top1", "kmeans.silhouette", "kmeans.nmi", "kmeans.ari",
                    "kmeans.purity", "label_fraction.0.5.top1", "label_fraction.1.top1"):
            assert key in m, (model, key)
    assert saved["models"]["raw_pixels"]["linear.top1"] == 1.0  # colour classes are linearly separable
    # 48 and 24 labels would hold out 9 for λ: too few, so 5 folds; the rule is in the protocol.
    assert saved["models"]["encoder"]["linear.folds"] == saved["models"]["encoder"]["label_fraction.0.5.folds"] == 5
    assert (saved["protocol"]["linear_cv_below"], saved["protocol"]["linear_cv_folds"]) == (2000, 5)
    assert report["models"]["encoder"]["dim"] == 512 and report["models"]["raw_pixels"]["dim"] == 768
    assert (run / "figures" / "label_efficiency.png").stat().st_size > 0
    run_probe(run, fractions=(1.0,), console=Console(quiet=True))
    assert len(calls) == 4  # the second probe computed no features


def test_a_probe_reads_an_image_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe read an image folder's pool twice (load_source of train, then of test, each listing, stat'ing and
    hashing every file and mapping the decoded cache: 0.4–0.5 s a read at 20,000 files); both splits now come from
    one read, with the same images."""
    import sslkit.data as data
    from sslkit.evaluation import retrieval
    from sslkit.evaluation.probe import labeled_splits

    run = tiny_run(tmp_path)
    meta = json.loads((run / "encoder.json").read_text())
    apart = [retrieval.load_split(meta, split) for split in ("train", "test")]
    reads = []
    real = data.imagefolder_pool

    def pool(*args: object, **kwargs: object) -> object:
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "imagefolder_pool", pool)
    train, _, test, _ = labeled_splits(meta, "test")
    assert len(reads) == 1
    assert (train.ids, test.ids) == (apart[0].ids, apart[1].ids) and torch.equal(test.images, apart[1].images)
    run_probe(run, fractions=(1.0,), console=Console(quiet=True))
    assert len(reads) == 2, "one read for the whole probe"


def test_a_label_fraction_too_small_for_every_class_is_explained(tmp_path: Path) -> None:
    run = tiny_run(tmp_path)
    report = run_probe(run, fractions=(0.01, 1.0), console=Console(quiet=True))
    assert math.isnan(report["models"]["encoder"]["label_fraction.0.01.top1"])
    assert ("1% of the labels is 0 image(s) for 3 classes: too few to fit a classifier of every class, so that row "
            "is empty") in report["notes"]
    # probe.json is strict JSON (Python's json would write NaN, which jq and JavaScript refuse): the row is null,
    # and what reads probe.json back takes it as an empty cell.
    saved = json.loads((run / "probe.json").read_text(), parse_constant=lambda c: pytest.fail(f"probe.json holds {c}"))
    assert saved["models"]["encoder"]["label_fraction.0.01.top1"] is None
    assert saved["models"]["encoder"]["label_fraction.1.top1"] == report["models"]["encoder"]["label_fraction.1.top1"]
    console = Console(record=True, width=200)
    print_table(saved, console)
    assert "linear top-1, 1% of labels (n=0)" in console.export_text()
    plot_label_efficiency(saved, tmp_path / "efficiency.png")


@pytest.mark.parametrize("top1", [  # encoder, raw_pixels, random_init at 1 %, 10 % and 100 % of the labels
    ((0.8183, 0.8589, 0.8855), (0.7739, 0.8294, 0.8473), (0.6716, 0.7268, 0.7597)),  # the published run
    ((0.66, 0.7605, 0.812), (0.6995, 0.792, 0.831), (0.5275, 0.6765, 0.7245)),  # recipes/quickstart.yaml
    ((0.70, 0.80, 0.84), (0.69, 0.78, 0.80), (0.66, 0.72, 0.75)),  # the lowest point on a round value, 16 %
])
def test_label_efficiency_starts_at_the_round_tick_under_its_lowest_point(
        tmp_path: Path, monkeypatch, top1: tuple[tuple[float, ...], ...]) -> None:
    """The errors of the published Fashion-MNIST run (11.4 % to 32.8 %): the encoder's last point was under the
    axis's lowest label (15 %), with no label below it. Then the axis went down to the round value under the lowest
    point, but on ticks 6 % apart: the quickstart's 16.9 % on an axis from 12 %, a quarter of it empty under the
    point. Now the ticks frame it (from 16 %, 8 % apart); a point on the lowest tick is drawn just above the foot."""
    from sslkit import viz

    drawn = []
    monkeypatch.setattr(viz, "save_figure", lambda fig, path: drawn.append(fig) or path)
    models = {name: {f"label_fraction.{f:g}.{key}": value for f, t in zip((0.01, 0.1, 1.0), scores, strict=True)
                     for key, value in (("top1", t), ("n", round(10_000 * f)))}
              for name, scores in zip(("encoder", "raw_pixels", "random_init"), top1, strict=True)}
    plot_label_efficiency({"models": models, "fractions": [0.01, 0.1, 1.0], "split": "test", "dataset": "fashion-mnist",
                           "sizes": {"test": 2_000}}, tmp_path / "efficiency.png")
    ax = drawn[0].axes[0]
    low, high = ax.get_ylim()
    ticks = sorted(t for t in ax.get_yticks() if low <= t <= high)
    lowest = 1 - max(max(scores) for scores in top1)
    assert ticks[0] <= lowest < ticks[1], ticks  # a label under the lowest point, the next one over it
    assert low < lowest and ticks[0] / low < 1.05, (low, ticks)  # the axis starts at that label, the point above
    assert math.log(lowest / low) / math.log(high / low) < 0.15, (low, lowest, high)  # not a quarter of it empty


def test_baselines_do_not_depend_on_the_runs_normalisation(tmp_path: Path) -> None:
    # Two runs of the same data whose pretraining pools gave different mean/std: their baseline rows must agree
    # (they are normalised by the labeled train split), while their encoders see differently normalised inputs.
    quiet = Console(quiet=True)
    a = run_probe(tiny_run(tmp_path, "a", mean=0.5, std=0.25), fractions=(1.0,), console=quiet)
    b = run_probe(tiny_run(tmp_path, "b", mean=0.2, std=0.6), fractions=(1.0,), console=quiet)
    for model in ("raw_pixels", "random_init"):
        ma, mb = ({k: v for k, v in m["models"][model].items() if k != "seconds"} for m in (a, b))
        assert ma == mb, model
    assert a["protocol"]["baseline_mean"] == b["protocol"]["baseline_mean"]
    pixels = np.stack([np.array(Image.open(p)) for p in (tmp_path / "imgs").rglob("*.png")])
    assert a["protocol"]["baseline_mean"] != pytest.approx([0.5] * 3, abs=0.05)  # not a run's value
    assert a["protocol"]["baseline_mean"][0] == pytest.approx(pixels[..., 0].mean() / 255, abs=0.03)


def test_a_record_that_does_not_describe_its_weights_is_refused(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = tiny_run(tmp_path)
    meta = json.loads((run / "encoder.json").read_text())
    (run / "encoder.json").write_text(json.dumps(dict(meta, sha256="0" * 64)))  # as if killed between the writes
    assert main(["probe", str(run)]) == 2
    err = capsys.readouterr().err
    assert "records sha256 0000000000000000" in err and meta["sha256"][:16] in err and "--resume" in err
    assert not (run / "features").exists()  # refused before any feature was computed or cached


def test_probe_refusals_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["probe", str(tmp_path / "empty")]) == 2
    assert "no exported encoder" in capsys.readouterr().err
    run = tiny_run(tmp_path)
    assert main(["probe", str(run), "--split", "train"]) == 2
    assert main(["probe", str(run), "--split", "tset"]) == 2
    assert "imagefolder has no split 'tset' (--split) — use test" in capsys.readouterr().err
    assert main(["probe", str(Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml")]) == 2
    assert "quickstart.yaml' is a file, not a run — give the run directory" in capsys.readouterr().err
    assert main(["probe", str(run), "--fractions", "0", "1"]) == 2
    assert "not a fraction" in capsys.readouterr().err
    assert not (run / "probe.json").exists() and not (run / "features").exists()  # nothing computed


def test_a_moved_image_folder_is_found_with_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tiny_run(tmp_path)
    (tmp_path / "imgs").rename(tmp_path / "moved")
    assert main(["probe", str(run), "--fractions", "1"]) == 2
    assert (f"the image folder the run was pretrained on, {tmp_path / 'imgs'}, is not there any more — give the "
            "folder's new place with --data-root") in capsys.readouterr().err
    assert main(["probe", str(run), "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "--data-root" in capsys.readouterr().err and not (run / "probe.json").exists()
    assert main(["probe", str(run), "--fractions", "1", "--data-root", str(tmp_path / "moved")]) == 0
    assert json.loads((run / "probe.json").read_text())["sizes"] == {"train": 48, "test": 12}
    capsys.readouterr()
    assert main(["neighbors", str(run), "--query", "0", "-k", "3", "--data-root", str(tmp_path / "moved")]) == 0
    table = capsys.readouterr().out
    assert re.search(r"#0 (red|green|blue)/\d\d\.png", table), "the query's file beside its number"
    assert len(re.findall(r"(red|green|blue)/\d\d\.png", table)) == 1 + 3, "and each neighbour's"


def test_an_image_folder_run_that_pretrained_on_its_test_split_is_flagged(tmp_path: Path) -> None:
    run = tiny_run(tmp_path)
    meta = json.loads((run / "encoder.json").read_text())
    assert pretraining_overlap_note(meta) is None, "runs that held the test split out need no note"
    del meta["imagefolder_test_held_out"]  # as runs made before sslkit held it out
    (run / "encoder.json").write_text(json.dumps(meta))
    console = Console(record=True, width=300)
    run_probe(run, fractions=(1.0,), console=console)
    assert "pretrained on the whole image folder, its test split included" in console.export_text()


def test_probe_table_bolds_each_score_rows_best_but_not_settings_sizes_or_times() -> None:
    models = {"encoder": {"linear.top1": 0.886, "knn.k20.top1": 0.872, "kmeans.nmi": 0.65, "linear.weight_decay": 1e-4,
                          "dim": 512, "seconds": 80.0, "label_fraction.0.01.top1": 0.82, "label_fraction.0.01.n": 600},
              "raw pixels": {"linear.top1": 0.847, "knn.k20.top1": 0.877, "kmeans.nmi": float("nan"),
                             "linear.weight_decay": 1e-2, "dim": 784, "seconds": 5.0,
                             "label_fraction.0.01.top1": 0.77, "label_fraction.0.01.n": 600}}
    report = {"models": models, "split": "test", "dataset": "d", "sizes": {"train": 60_000, "test": 10_000},
              "fractions": [0.01, 1.0]}
    printed = []
    console = Console(width=200)
    console.print = lambda obj, **kw: printed.append(obj)  # type: ignore[method-assign]
    print_table(report, console)
    assert printed[0] == "d: probes trained on 60,000 labeled train images, scored on 10,000 test images"
    table = printed[1]
    columns = [list(col.cells) for col in table.columns]
    rows = {label: [col[i] for col in columns[1:]] for i, label in enumerate(columns[0])}
    assert rows["linear top-1"] == ["[bold]0.8860[/]", "0.8470"]
    assert rows["k-NN k=20 (weighted)"] == ["0.8720", "[bold]0.8770[/]"]  # the baseline's, when it is better
    assert rows["k-means NMI"] == ["0.6500", "—"]  # a single finite value: nothing to compare
    assert rows["linear top-1, 1% of labels (n=600)"] == ["[bold]0.8200[/]", "0.7700"]
    assert rows["linear weight decay"] == ["0.0001", "0.01"]  # the larger is not 'best'
    assert rows["feature dim"] == ["512", "784"] and rows["seconds"] == ["80.0", "5.0"]
    assert best_score("test_top1.std", [0.1, 0.2]) is None and best_score("linear.top1", [0.1, True, 0.2]) == 0.2


def test_a_k_larger_than_the_train_split_is_recorded_and_named_in_the_rows() -> None:
    """With 40 labeled train images, k = 200 votes with all 40: probe.json says so (knn.k200.k) and the row's label
    names the k used; k = 20 is not clipped and its row is unchanged."""
    train_x, train_y = blobs(10, 4, 8, 5.0, 1)
    test_x, test_y = blobs(5, 4, 8, 5.0, 2)
    metrics, _ = evaluate_features(train_x, train_y, test_x, test_y, 4, fractions=(1.0,))
    assert metrics["knn.k200.k"] == 40 and "knn.k20.k" not in metrics
    labels = dict(score_rows({"encoder": metrics}))
    assert labels["knn.k200.majority.top1"] == "k-NN k=200 (majority), k = 40: the whole train split"
    assert labels["knn.k20.top1"] == "k-NN k=20 (weighted)"
    assert best_score("knn.k200.k", [40, 72]) is None  # a setting, never bold


def test_probe_on_val_holds_a_fixed_part_of_train_out_of_the_probes(tmp_path: Path, capsys) -> None:
    """--split val: a stratified sixth of the labeled train split that the probes do not learn from, the same
    images whatever --seed (so runs are compared on the same images), and read back by the report."""
    from sslkit.evaluation.features import read_run_meta
    from sslkit.evaluation.probe import labeled_splits
    from sslkit.report import probe_predictions

    run = tiny_run(tmp_path)
    meta = read_run_meta(run)
    labeled, fitted, held, described = labeled_splits(meta, "val")
    assert (len(labeled), len(fitted), len(held)) == (48, 40, 8) and "held out of the probes" in described
    assert "a fixed, stratified sixth of the labeled train split" in described  # it read "17%", a rounded share
    assert set(held.ids).isdisjoint(fitted.ids) and set(held.ids) | set(fitted.ids) == set(labeled.ids)
    counts = torch.bincount(held.labels, minlength=3)
    assert int(counts.max() - counts.min()) <= 1  # stratified: 16 train images a class
    report = run_probe(run, split="val", fractions=(1.0,), seed=1, console=Console(quiet=True))
    assert report["sizes"] == {"train": 40, "val": 8} and report["split_description"] == described
    assert report["models"]["raw_pixels"]["linear.top1"] == 1.0  # colour classes, as on test
    assert labeled_splits(meta, "val")[2].ids == held.ids  # the seed does not move it
    predictions = probe_predictions(run, meta, report)
    assert torch.equal(predictions.labels, held.labels) and not predictions.computed
    assert main(["probe", str(run), "--split", "valid"]) == 2
    assert "(or val, a held-out part of train for comparing runs)" in capsys.readouterr().err


def test_a_val_probe_slices_the_train_features_a_test_probe_cached(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """--split val's two parts are rows of the labeled train split: their features are sliced from its cache, so a
    val probe after a test probe (and the report's recomputed val predictions) runs no encoder and caches nothing
    new; the slices are the features of those images."""
    from sslkit.checkpoint import load_encoder
    from sslkit.evaluation.features import read_run_meta
    from sslkit.evaluation.probe import labeled_splits, run_features
    from sslkit.report import probe_predictions

    run = tiny_run(tmp_path)
    calls = []
    real = features_mod.extract_features
    counted = lambda *a, **k: calls.append(k.get("description")) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr("sslkit.evaluation.probe.extract_features", counted)
    monkeypatch.setattr("sslkit.evaluation.retrieval.extract_features", counted)
    test = run_probe(run, fractions=(1.0,), console=Console(quiet=True))
    assert len(calls) == 4  # encoder and random_init, train and test each
    cache = sorted(p.name for p in (run / "features").iterdir())
    val = run_probe(run, split="val", fractions=(1.0,), console=Console(quiet=True))
    assert calls == calls[:4] and sorted(p.name for p in (run / "features").iterdir()) == cache, calls
    assert val["protocol"]["baseline_mean"] == test["protocol"]["baseline_mean"], "one normalisation, one cache"
    (run / "figures" / ".probe_predictions-val.pt").unlink()
    meta = read_run_meta(run)
    assert probe_predictions(run, meta, val).computed
    assert len(calls) == 4 and sorted(p.name for p in (run / "features").iterdir()) == cache
    _, fitted, held, _ = labeled_splits(meta, "val")
    train_x, train_y, eval_x, eval_y = run_features(run, "val")
    encoder = load_encoder(run, "cpu")
    torch.testing.assert_close(train_x, real(encoder, fitted, device="cpu"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eval_x, real(encoder, held, device="cpu"), atol=1e-5, rtol=1e-5)
    assert torch.equal(train_y, fitted.labels) and torch.equal(eval_y, held.labels)


def test_the_probe_and_the_reading_commands_share_the_encoders_feature_cache(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`sslkit probe` and `sslkit neighbors` / `map` / `report` (split_features) name the encoder's cache files by one
    rule, encoder_cache_path: the features a probe cached, of the train and the test split, are read back by
    split_features without running the encoder or adding a file, under the names caches had before that rule had
    one home (so caches made then still hit)."""
    from sslkit.evaluation import retrieval
    from sslkit.evaluation.features import data_fingerprint, preprocessing_tag, read_run_meta

    run = tiny_run(tmp_path)
    run_probe(run, fractions=(1.0,), console=Console(quiet=True))
    cache = sorted(p.name for p in (run / "features").iterdir())
    monkeypatch.setattr(retrieval, "extract_features", lambda *a, **k: pytest.fail("split_features ran the encoder"))
    meta = read_run_meta(run)
    prep = preprocessing_tag(meta["mean"], meta["std"])
    for split, part in (("train", "train"), ("test", "eval")):
        source = retrieval.load_split(meta, split)
        feats, path = retrieval.split_features(run, meta, source, split, device="cpu")
        assert path.name == f"encoder-{meta['sha256'][:16]}-{part}-16px-{prep}-{data_fingerprint(source)}.npy"
        assert path.name in cache and torch.equal(feats, torch.from_numpy(np.load(path)))
    assert sorted(p.name for p in (run / "features").iterdir()) == cache


def test_an_image_edited_in_place_changes_the_folders_fingerprint(tmp_path: Path) -> None:
    """Beyond max_bytes the images were hashed at a stride: one image of an image folder edited in place, between
    the stride's, left the fingerprint, and so the name of the cached features, as it was (stale features)."""
    from sslkit.data import imagefolder_pool
    from sslkit.evaluation.features import data_fingerprint

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    before = imagefolder_pool(str(tmp_path / "imgs"))  # decoded
    assert data_fingerprint(imagefolder_pool(str(tmp_path / "imgs"))) == data_fingerprint(before)  # from the cache
    edited = np.asarray(Image.open(tmp_path / "imgs" / "b" / "1.png")) // 2
    Image.fromarray(edited).save(tmp_path / "imgs" / "b" / "1.png")  # the 5th of 6 images: off a stride of 6
    after = imagefolder_pool(str(tmp_path / "imgs"))
    assert not torch.equal(before.images, after.images)
    assert data_fingerprint(before, max_bytes=1) != data_fingerprint(after, max_bytes=1)


def test_a_probe_fingerprints_each_split_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model's cache files (and the random encoder's key) are named after the data fingerprint of the same
    splits, a strided read of up to 64 MiB of their images each: a probe read the labeled train split for it three
    times and the test split twice, once more each per --compare run. One memo of the probe's now reads each once,
    and names the same files as before."""
    from sslkit.evaluation import probe

    run, other = tiny_run(tmp_path), tiny_run(tmp_path, "other")
    counted: dict[int, int] = {}
    real = features_mod.data_fingerprint

    def fingerprint(source: object, *args: object, **kwargs: object) -> str:
        counted[id(source)] = counted.get(id(source), 0) + 1
        return real(source, *args, **kwargs)

    monkeypatch.setattr(features_mod, "data_fingerprint", fingerprint)
    monkeypatch.setattr(probe, "data_fingerprint", fingerprint)
    run_probe(run, compare=[other], fractions=(1.0,), console=Console(quiet=True))
    assert sorted(counted.values()) == [1, 1], counted  # the labeled train split and the test split, once each
    cache = sorted(p.name for p in (run / "features").iterdir())
    monkeypatch.setattr(probe, "extract_features", lambda *a, **k: pytest.fail("a cache file was named otherwise"))
    counted.clear()
    run_probe(run, split="val", fractions=(1.0,), console=Console(quiet=True))
    assert sorted(counted.values()) == [1], counted  # val's parts are sliced from the train split's features
    assert sorted(p.name for p in (run / "features").iterdir()) == cache


def test_a_val_probe_keeps_the_test_probes_files_and_writes_its_own(tmp_path: Path, capsys) -> None:
    """`sslkit probe RUN --split val` wrote RUN/probe.json, the predictions and the label-efficiency figure over the
    test probe's: checking a choice on val destroyed the published test numbers. A val probe now writes
    probe-val.json and figures of its own and leaves every byte of the test probe's; --json cannot point it at
    probe.json either."""
    from sslkit.evaluation.probe import probe_files

    run = tiny_run(tmp_path)
    run_probe(run, fractions=(0.5, 1.0), console=Console(quiet=True))
    test_files = probe_files(run, "test")
    assert [p.name for p in test_files] == ["probe.json", ".probe_predictions.pt", "label_efficiency.png"]
    before = {p: p.read_bytes() for p in test_files}
    val = run_probe(run, split="val", fractions=(0.5, 1.0), console=Console(quiet=True))
    assert {p: p.read_bytes() for p in test_files} == before, "the test probe's files are as they were"
    assert json.loads((run / "probe.json").read_text())["split"] == "test"
    results, predictions, figure = probe_files(run, "val")
    assert [p.name for p in (results, predictions, figure)] == ["probe-val.json", ".probe_predictions-val.pt",
                                                                "label_efficiency-val.png"]
    assert json.loads(results.read_text())["sizes"] == val["sizes"] == {"train": 40, "val": 8}
    saved = torch.load(predictions, weights_only=True)
    assert len(saved["labels"]) == 8 and figure.stat().st_size > 0
    assert main(["probe", str(run), "--split", "val", "--json", str(run / "probe.json")]) == 2
    assert "would overwrite the run's own probe.json" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in test_files} == before


def test_the_probes_caches_and_predictions_are_fsynced_before_they_are_renamed_into_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file the probe leaves in the run (feature caches, labels, predictions, probe.json) reaches its name by a
    rename of a temporary file that was fsynced first, as checkpoints do: a crash soon after cannot leave an empty
    or partial file under a final name. A write that fails leaves the file it would replace as it was."""
    import os

    synced, renamed = set(), {}
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src, dst) -> None:
        renamed[Path(dst).name] = str(Path(src).resolve()) in synced
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run = tiny_run(tmp_path)
    run_probe(run, fractions=(1.0,), console=Console(quiet=True))
    written = {p.name for p in (run / "features").iterdir()} | {"probe.json", ".probe_predictions.pt"}
    assert len(written) == 2 + 8 and written <= set(renamed), written - set(renamed)
    assert all(renamed[name] for name in written), {name for name in written if not renamed[name]}
    assert not [p for p in run.rglob(".tmp-*")]
    target = run / "features" / "x.npy"
    features_mod.atomic_save_npy(target, np.arange(3))
    monkeypatch.setattr(np, "save", lambda f, a: f.write(b"partial") and 1 / 0)
    with pytest.raises(ZeroDivisionError):
        features_mod.atomic_save_npy(target, np.arange(5))
    assert np.array_equal(np.load(target), np.arange(3)) and not list(target.parent.glob(".tmp-*"))


def test_a_run_compared_with_itself_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    """`sslkit probe RUN --compare RUN` probed the run twice and showed the same column again under its path."""
    run = tiny_run(tmp_path)
    assert main(["probe", str(run), "--compare", str(run / ".")]) == 2
    err = capsys.readouterr().err
    assert err == f"sslkit probe: error: --compare {run} is the run being probed — compare it with other runs\n", err
    assert not (run / "probe.json").exists() and not (run / "features").exists()


def test_beside_compared_runs_the_probed_runs_column_is_named_after_it(tmp_path: Path) -> None:
    """With --compare, the other runs' columns carry their folder names and the probed run's said only "encoder":
    which run that was went unsaid, in the terminal table and on the page."""
    from sslkit.report import build_report

    run, other = tiny_run(tmp_path), tiny_run(tmp_path, "other")
    console = Console(record=True, width=200)
    run_probe(run, compare=[other], fractions=(1.0,), console=console)
    header = next(line for line in console.export_text().splitlines() if "metric" in line)
    assert re.findall(r"encoder \(run\)|other|raw_pixels|random_init", header) == [
        "encoder (run)", "other", "raw_pixels", "random_init"], header
    page = build_report(run, max_points=20, console=Console(quiet=True)).read_text()
    assert ">encoder (run)</th>" in page and ">encoder</th>" not in page
    run_probe(run, fractions=(1.0,), console=(alone := Console(record=True, width=200)))  # without --compare
    header = next(line for line in alone.export_text().splitlines() if "metric" in line)
    assert re.findall(r"\S+", header.replace("│", " ").replace("┃", " ")) == ["metric", "encoder", "raw_pixels",
                                                                             "random_init"], header
