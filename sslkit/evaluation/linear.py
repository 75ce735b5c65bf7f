"""Linear probe: multinomial logistic regression on frozen, standardised features.

Protocol (the evaluation split is touched once, for the reported number):

1. split the *training* features into a fit part and a stratified validation part (10 %, and at least
   ``MIN_VAL_PER_CLASS`` × the number of classes, shared out by the classes' sizes, so that small label fractions
   still validate on more than a handful; a rare class may get fewer than ``MIN_VAL_PER_CLASS``) — or, when that
   part would hold fewer than ``CV_BELOW`` images, into ``CV_FOLDS`` stratified folds, each held out once;
2. fit one classifier per L2 strength of a small grid on the fit part(s) and score each on what was held out
   (with folds: its top-1 over all N held-out predictions); keep the best (ties go to the stronger regulariser);
   when an edge of the grid wins, extend the grid a decade past it, and again while the new edge wins, up to
   ``EXTRA_DECADES``;
3. refit with that strength on all training features and classify the evaluation split once.

Features are standardised with the statistics of the data the classifier is fitted on. The objective is the
mean cross-entropy + weight_decay/2 · ‖W‖² (bias not penalised), minimised by full-batch L-BFGS in torch:
deterministic, and exact up to its stopping rule. Standardised SSL features are strongly correlated (the
covariance's eigenvalues span 4-5 orders of magnitude), which makes plain L-BFGS crawl; it runs instead on
U = W·P⁻¹ with P = (XᵀX/N + λI)^(-1/2), the same objective and minimiser in better-conditioned
coordinates. Each fit of the grid starts from the previous, more regularised, solution.

Wide features (raw pixels of larger images: 12,288 dimensions at 64×64 RGB) would make P a D×D matrix and its
eigendecomposition O(D³). Above ``DENSE_SPECTRUM_MAX`` dimensions, and with fewer rows than dimensions (up to
``SPECTRUM_RANK`` rows), P is kept as its top eigenpairs instead (all of them, from the N×N Gram matrix, when N is
at most ``SPECTRUM_RANK``; else the leading ``SPECTRUM_RANK`` by a seeded randomised SVD), and the directions they
leave out share the mean of the remaining eigenvalues (0 on the Gram path, where nothing remains). P then stays
close to the exact one, so L-BFGS converges as fast as with the dense P.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold

from sslkit.data import stratified_split
from sslkit.errors import UserError
from sslkit.evaluation.features import check_finite

WEIGHT_DECAYS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
MIN_VAL_PER_CLASS = 3
MAX_ITER = 100
# Decades the L2 grid may grow past an edge that wins. Three reach λ = 100 past the strong edge: the penalty is
# then above the cross-entropy's curvature (at most half the feature covariance's top eigenvalue: 13-84 for
# standardised Fashion-MNIST features at 1 % of the labels), so W is nearly its λ → ∞ limit, whose predictions
# stop changing: there, the λ = 100 fit's predictions differ from λ = 1e5's on 0.3-3 % of images (encoder, random
# init, raw pixels), λ = 1000's on 0.04-0.2 %. Past the weak edge they reach λ = 1e-8, where the fit is
# unregularised in all but name and further decades only move where L-BFGS stops. Each extra decade is one fit.
EXTRA_DECADES = 3
# A validation part of fewer images than this is too small to choose λ by: the standard error of a top-1 near
# 85 % on n images is √(0.85 · 0.15 / n), 0.8 points at 2,000 but 4.6 at the 60 that 1 % of Fashion-MNIST's
# labels hold out, more than neighbouring strengths of the grid differ by (there λ = 1 tied λ = 0.1 on the 60;
# on test 0.1 gave 81.9 %, 1 gave 80.8 %). Below it λ is chosen by CV_FOLDS-fold stratified cross-validation,
# scored on all N training images, each held out once; at and above it (a probe of 20,000 labels or more) one
# split is enough and cheaper.
CV_BELOW = 2000
CV_FOLDS = 5
DENSE_SPECTRUM_MAX = 4096  # feature dimensions up to which P is a dense D×D matrix
SPECTRUM_RANK = 2048  # eigenpairs kept above it (all of them when the Gram matrix is no larger)


@dataclass
class LinearProbeResult:
    """What :func:`linear_probe` measured.

    Attributes:
        top1: accuracy on the evaluation split.
        top5: top-5 accuracy there, or None with 5 classes or fewer.
        weight_decay: the L2 strength chosen on the validation part of the training split.
        val_top1: validation accuracy of every candidate strength (empty when there was nothing to choose).
        n_train: labeled training examples used.
        predictions: predicted class per evaluation example.
        folds: how the strength was chosen (:func:`validation_folds`): 0 not at all (the middle of the grid), 1 on
            one validation part, K ≥ 2 by K-fold cross-validation.
    """

    top1: float
    top5: float | None
    weight_decay: float
    val_top1: dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    predictions: torch.Tensor | None = None
    folds: int = 0


class Standardiser:
    """Per-dimension (x − mean) / std with the statistics of the fitting data; constant dimensions become 0."""

    def __init__(self, x: torch.Tensor) -> None:
        x = x.float()
        self.mean = x.mean(0)
        std = x.std(0, correction=0)
        self.std = torch.where(std > 1e-6, std, torch.ones_like(std))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def carry(self, w: torch.Tensor, b: torch.Tensor, to: Standardiser) -> tuple[torch.Tensor, torch.Tensor]:
        """The same classifier (identical logits on raw features) for inputs standardised by ``to``."""
        w2 = w * (to.std / self.std)
        return w2, b + w @ ((to.mean - self.mean) / self.std)


def spectrum(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of xᵀx / N, for :func:`fit_logistic`'s preconditioner: all D of them (float64)
    up to ``DENSE_SPECTRUM_MAX`` dimensions; above, the leading r ≤ N of them (float32, see the module notes). With
    fewer rows than dimensions, and at most ``SPECTRUM_RANK`` rows, every non-zero pair comes from the N×N Gram
    matrix, exactly, whatever D (a small image folder's raw pixels, 384 × 3,072: 18 s for the D×D way).

    Shape:
        (N, D) -> (D,), (D, D) or (r,), (D, r)
    """
    n, d = x.shape
    if d <= DENSE_SPECTRUM_MAX and (n >= d or n > SPECTRUM_RANK or n == 0):
        x64 = x.double()
        evals, evecs = torch.linalg.eigh(x64.T @ x64 / max(n, 1))
        return evals.clamp_min(0), evecs
    x = x.float()
    if n <= SPECTRUM_RANK:  # every non-zero eigenpair, from the N×N Gram matrix: xᵀx v = s v for v = xᵀu / √(Ns)
        s, u = torch.linalg.eigh(x.double() @ x.double().T / max(n, 1))
        keep = s > s.max().clamp_min(1e-30) * 1e-10
        s, u = s[keep], u[:, keep]
        evecs = (x.T.double() @ u / (s * max(n, 1)).sqrt()).float()
        return s.float(), evecs
    with torch.random.fork_rng(devices=[]):  # the same eigenpairs every time, and the caller's random stream untouched
        torch.manual_seed(0)
        _, sv, v = torch.svd_lowrank(x, q=SPECTRUM_RANK, niter=2)
    return (sv.square() / n), v


def _times_p(z: torch.Tensor, evals: torch.Tensor, evecs: torch.Tensor, rest: float, lam: float,
             power: float) -> torch.Tensor:
    """z · (XᵀX/N + λI)^power from thin eigenpairs; the directions they leave out have eigenvalue ``rest``.

    Shape:
        z (K, D), evals (r,), evecs (D, r) -> (K, D)
    """
    base = (rest + lam) ** power
    return z * base + ((z @ evecs) * ((evals + lam).pow(power) - base)) @ evecs.T


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = MAX_ITER,
                 eig: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimises mean cross-entropy + weight_decay/2 · ‖W‖² (bias not penalised) by full-batch L-BFGS.

    L-BFGS runs in preconditioned coordinates (see the module notes) and stops when the largest component of
    the preconditioned gradient is below 1e-4, or after ``max_iter`` iterations. That is not full convergence
    at weak λ, where the minimum of nearly separable features is flat: on the published Fashion-MNIST encoder
    features (54,000 rows, 512 dimensions, the probe's warm-started grid) the objective ends 2e-4 above its
    minimum at λ = 1e-3 (stopped by the tolerance), 6e-4 at 1e-4 and 1.5e-3 at 1e-5 (both at 100 iterations),
    and run to the end the fits' validation accuracy moves by at most 0.1 point (0.5 at 10 % of the labels; no
    chosen λ changed). Getting there took 380 and 950 more iterations at 1e-4 and 1e-5 (4-10 times a fit's
    cost), and a tolerance scaled to λ would only stop later, so the probe keeps this rule.

    Args:
        x: standardised features.
        y: classes 0 … num_classes − 1.
        num_classes: K.
        weight_decay: L2 strength λ.
        init: starting ``(W, b)``; zeros when None.
        max_iter: L-BFGS iterations at most.
        eig: :func:`spectrum` of ``x`` when already computed.

    Returns:
        ``(W, b)`` in ``nn.Linear``'s layout: logits = x @ W.T + b.

    Shape:
        x: (N, D), y: (N,) -> W (K, D), b (K,)
    """
    x = x.float().contiguous()
    n, d = x.shape
    rows = torch.arange(n)
    evals, evecs = eig if eig is not None else spectrum(x)
    lam = max(float(weight_decay), 1e-6)  # a floor keeps P finite in directions the data never spans
    if evecs.shape[1] == d:  # dense: symmetric P = (XᵀX/N + λI)^(-1/2) and its inverse as matrices
        # Given all D pairs, the thin branch's formula is this same P (V·f(Λ)·Vᵀ, as VVᵀ = I), but applied through
        # float32 factors at every step where this P is formed in float64 and rounded once: on 512 dimensions W
        # moved by 1e-5 of its scale at λ = 0.1 and by 5e-3 at λ = 1e-5, changing predictions; so both are kept.
        p = ((evecs * (evals + lam).rsqrt()) @ evecs.T).float()
        p_inv = ((evecs * (evals + lam).sqrt()) @ evecs.T).float()

        def times_p(z: torch.Tensor) -> torch.Tensor:
            return z @ p

        def times_p_inv(z: torch.Tensor) -> torch.Tensor:
            return z @ p_inv
    else:  # wide features, or fewer rows than dimensions: P applied from its thin eigenpairs, never formed
        ev, vecs = evals.float(), evecs.float()
        # The left-out directions get the mean remaining eigenvalue: trace(XᵀX/N) minus the kept ones, shared.
        rest = max(float(x.square().sum()) / n - float(ev.sum()), 0.0) / max(d - ev.numel(), 1)

        def times_p(z: torch.Tensor) -> torch.Tensor:
            return _times_p(z, ev, vecs, rest, lam, -0.5)

        def times_p_inv(z: torch.Tensor) -> torch.Tensor:
            return _times_p(z, ev, vecs, rest, lam, 0.5)
    w0, b0 = init if init is not None else (torch.zeros(num_classes, d), torch.zeros(num_classes))
    u = times_p_inv(w0.float()).contiguous()  # W = U P
    b = b0.detach().clone().float()
    opt = torch.optim.LBFGS([u, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-4,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        w = times_p(u)
        logp = torch.log_softmax(F.linear(x, w, b), dim=1)
        loss = -logp[rows, y].mean() + 0.5 * weight_decay * w.square().sum()
        # The gradient by hand instead of autograd: autograd would compute xᵀ·g, which reads x transposed and
        # is about 3x slower on a CPU than gᵀ·x; these two products are nearly all of the cost.
        g = logp.exp_()
        g[rows, y] -= 1
        g /= n
        u.grad = times_p((g.T @ x).add_(w, alpha=weight_decay))
        b.grad = g.sum(0)
        return loss

    opt.step(closure)
    return times_p(u).detach(), b.detach()


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
    """Share of rows whose true class is among the k highest logits.

    Shape:
        logits: (N, K), y: (N,) -> ()
    """
    if len(y) == 0:
        return float("nan")
    return float((logits.topk(min(k, logits.shape[1]), dim=1).indices == y[:, None]).any(dim=1).float().mean())


def _validation_plan(train_y: torch.Tensor, num_classes: int, n_candidates: int,
                     val_fraction: float) -> tuple[int, int]:
    """``(folds, size of the single validation part)``; see :func:`validation_folds`."""
    counts = torch.bincount(train_y, minlength=num_classes)
    present = counts[counts > 0]
    if n_candidates < 2 or int(present.min()) < 2:
        return 0, 0
    n_val = max(round(len(train_y) * val_fraction), MIN_VAL_PER_CLASS * len(present))
    if n_val < CV_BELOW:
        return min(CV_FOLDS, int(present.min())), n_val  # ≥ 2: every fold holds out each class at least once
    return (1, n_val) if len(train_y) - n_val >= len(present) else (0, 0)


def validation_folds(train_y: torch.Tensor, num_classes: int, n_candidates: int = len(WEIGHT_DECAYS),
                     val_fraction: float = 0.1) -> int:
    """How :func:`select_weight_decay` scores the L2 strengths of these labels, so that a caller can size its
    progress bar (each strength is fitted once per fold) and record the protocol.

    Returns:
        0 when there is nothing honest to choose with (one candidate, a class of a single image, or classes too
        rare to appear on both sides of one split), 1 for one stratified validation part, K ≥ 2 for K-fold
        cross-validation: ``CV_FOLDS``, or as many as the rarest class has images when that is fewer.

    Shape:
        train_y: (N,) -> ()
    """
    return _validation_plan(torch.as_tensor(train_y).long(), num_classes, n_candidates, val_fraction)[0]


def select_weight_decay(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int,
                        weight_decays: Sequence[float] = WEIGHT_DECAYS, val_fraction: float = 0.1, seed: int = 0,
                        on_fit: Callable[[], None] | None = None, on_extend: Callable[[], None] | None = None,
                        extra_decades: int = EXTRA_DECADES) -> tuple[float, dict[str, float], tuple | None]:
    """Chooses the L2 strength on held-out parts of the training data, and nothing else.

    What is held out: one stratified validation part (``val_fraction`` of the rows, at least
    ``MIN_VAL_PER_CLASS`` per class) when it would hold ``CV_BELOW`` images or more; below that, whose top-1 is
    too noisy to choose by, ``CV_FOLDS`` stratified folds (shuffled, seeded with ``seed``), each fitted on the
    rest and standardised by it, and every strength scored by its top-1 over all N held-out predictions. When
    the rarest class has fewer than ``CV_FOLDS`` images there are as many folds as it has (each fold then holds
    out each class); with a class of a single image there are no folds, and, as with one split, nothing to choose.

    The grid is fitted strongest first, each fit warm-started from the previous one of the same fold. When an
    edge of the grid wins, the optimum may lie beyond it (600 Fashion-MNIST labels chose the strongest, 0.1, for
    every model), so the grid grows a decade past that edge (×10 past the strongest, ÷10 past the weakest) in
    every fold, warm-started from the edge's fit, for as long as the new edge wins the pooled score, at most
    ``extra_decades`` times. Ties go to the stronger regulariser throughout, so a weaker extension has to win
    outright.

    With one candidate, or classes too rare to appear on both sides of the split, there is nothing honest to
    choose with: the middle of the grid is returned and the scores are empty.

    Args:
        on_fit: called after every fit (one per fold and strength).
        on_extend: called before every fit beyond the grid, so that a progress bar can add it to its total.
        extra_decades: decades the grid may grow past either edge.

    Returns:
        ``(best, {"<weight decay>": held-out top-1, …} for every strength fitted, strongest first, (W, b,
        standardiser) of the best fit (of the first fold, with folds) or None)``.

    Shape:
        train_x: (N, D), train_y: (N,) -> best, scores, fit
    """
    order = sorted(weight_decays, reverse=True)  # strongest first: each fit warm-starts the next
    folds, n_val = _validation_plan(train_y, num_classes, len(order), val_fraction)
    if folds == 0:
        return order[len(order) // 2], {}, None
    if folds == 1:
        val_idx, fit_idx = stratified_split(train_y, n_val, seed)
        splits = [(fit_idx, val_idx)]
    else:
        kfold = StratifiedKFold(folds, shuffle=True, random_state=seed)
        splits = [(torch.from_numpy(f), torch.from_numpy(v))
                  for f, v in kfold.split(np.zeros(len(train_y)), train_y.numpy())]
    scales = [Standardiser(train_x[f]) for f, _ in splits]
    held_y = torch.cat([train_y[v] for _, v in splits])  # the pooled score is the top-1 of these, all folds at once
    # With folds, each fold's standardised copy is made when it is fitted and dropped after (K copies at once
    # would take K times the memory: 5 GB for 20,000 rows of 64×64 RGB raw pixels); the single split keeps its one.
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def standardised(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i in kept:
            return kept[i]
        (f, v), scale = splits[i], scales[i]
        data = scale(train_x[f]), scale(train_x[v])
        if folds == 1:
            kept[i] = data
        return data

    eigs = [spectrum(standardised(i)[0]) for i in range(len(splits))]
    scores: dict[float, float] = {}
    fits: dict[float, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def best() -> float:
        return max(sorted(scores, reverse=True), key=scores.__getitem__)  # max() keeps the first: the strongest

    def fit(wd: float, init: list[tuple[torch.Tensor, torch.Tensor]] | None, extra: bool) -> None:
        fitted, logits = [], []
        for i, ((f, _), eig) in enumerate(zip(splits, eigs, strict=True)):
            if extra and on_extend:
                on_extend()
            xf, xv = standardised(i)
            fitted.append(fit_logistic(xf, train_y[f], num_classes, wd, init=init[i] if init else None, eig=eig))
            logits.append(F.linear(xv, *fitted[-1]))
            if on_fit:
                on_fit()
        fits[wd] = fitted
        scores[wd] = topk_accuracy(torch.cat(logits), held_y)
        for other in set(fits) - {max(scores), min(scores), best()}:  # only edges warm-start, only the best is kept
            del fits[other]

    for wd in order:
        fit(wd, fits.get(min(scores)) if scores else None, extra=False)  # the weakest so far: the previous one

    for side, factor in ((0, 10.0), (-1, 0.1)):  # past the strongest edge, then past the weakest
        for _ in range(extra_decades):
            edge = sorted(scores, reverse=True)[side]
            if best() != edge:
                break
            fit(float(f"{edge * factor:.6g}"), fits[edge], extra=True)  # 1e-06, not 1.0000000000000002e-06
    chosen = best()
    return chosen, {f"{wd:g}": scores[wd] for wd in sorted(scores, reverse=True)}, (*fits[chosen][0], scales[0])


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int | None = None, weight_decays: Sequence[float] = WEIGHT_DECAYS,
                 val_fraction: float = 0.1, seed: int = 0, on_fit: Callable[[], None] | None = None,
                 on_extend: Callable[[], None] | None = None) -> LinearProbeResult:
    """Selects the L2 strength on the training split, refits on all of it, and evaluates ``test_*`` once.

    Args:
        train_x, train_y: labeled training features and classes.
        test_x, test_y: the evaluation split; used only after the model is final.
        num_classes: K; by default one more than the largest training label (the evaluation split's labels
            decide nothing: a class only they hold is one the classifier cannot predict).
        weight_decays: the L2 grid, extended past an edge that wins (:func:`select_weight_decay`).
        val_fraction: share of the training split held out for choosing the L2 strength (or, when that share
            is under ``CV_BELOW`` images, cross-validation: :func:`select_weight_decay`).
        seed: seeds the validation split or folds.
        on_fit: called after every fit (progress reporting): ``validation_folds(…) · len(weight_decays) + 1``
            calls, and one more for each fit of an extension of the grid.
        on_extend: called before each fit beyond the grid, so that a progress bar can add it to its total.

    Raises:
        UserError: NaN/Inf features, fewer than two classes to learn from, unlabeled training rows (−1), or a
            training label of ``num_classes`` or more.
        ValueError: labels that are not one class per feature row.

    Shape:
        train_x: (N, D), train_y: (N,), test_x: (M, D), test_y: (M,) (tensors or numpy arrays) -> result
    """
    check_finite(train_x, "linear probe: training features")
    check_finite(test_x, "linear probe: evaluation features")
    train_x, test_x = (torch.as_tensor(v).detach().cpu().float() for v in (train_x, test_x))  # numpy too, as k-NN
    train_y, test_y = (torch.as_tensor(v).detach().cpu().long() for v in (train_y, test_y))
    for name, y, x in (("train_y", train_y, train_x), ("test_y", test_y, test_x)):
        if y.shape != (len(x),):  # a (M, 1) test_y would broadcast against the (M,) predictions into nonsense
            raise ValueError(f"{name} must be ({len(x)},), one class per feature row, got shape {tuple(y.shape)}")
    if len(torch.unique(train_y)) < 2:
        raise UserError(f"the linear probe needs at least 2 classes among the {len(train_y)} labeled training "
                        "images — use a larger labeled fraction")
    if int(train_y.min()) < 0:
        raise UserError(f"{int((train_y < 0).sum())} training rows are unlabeled (label −1) — the linear probe needs "
                        "labels; select the labeled rows first")
    k = int(num_classes or int(train_y.max()) + 1)
    if int(train_y.max()) >= k:
        raise UserError(f"linear probe num_classes is {k} but the training labels hold {int(train_y.max())} — pass at "
                        f"least {int(train_y.max()) + 1}, or leave it unset")
    best, scores, selected = select_weight_decay(train_x, train_y, k, weight_decays, val_fraction, seed, on_fit,
                                                on_extend)
    scale = Standardiser(train_x)
    # The selected fit, carried over to the full data's standardisation, is a close start for the refit.
    init = selected[2].carry(selected[0], selected[1], scale) if selected else None
    w, b = fit_logistic(scale(train_x), train_y, k, best, init=init)
    if on_fit:
        on_fit()
    logits = F.linear(scale(test_x), w, b)  # the evaluation split, touched once, by the final model
    return LinearProbeResult(top1=topk_accuracy(logits, test_y, 1),
                             top5=topk_accuracy(logits, test_y, 5) if k > 5 else None, weight_decay=best,
                             val_top1=scores, n_train=len(train_y), predictions=logits.argmax(1),
                             folds=validation_folds(train_y, k, len(weight_decays), val_fraction))
