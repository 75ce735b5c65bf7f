"""Robustness of a trained classifier to the fast gradient sign method (FGSM).

Goodfellow, Shlens and Szegedy 2015 ("Explaining and Harnessing Adversarial Examples", §4): the adversarial
image is ``x + ε · sign(∇ₓ L(f(x), y))``. Here ``x`` is the image in [0, 1] pixel units, *before* the
per-channel normalisation (which is part of the differentiated function), and the result is clipped back to
[0, 1], so ε means the same on every data set whatever its mean and std. One gradient per batch serves
every ε. With ε = 0 the attacked image is the clean image exactly, so that point equals clean accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

from sslkit.console import pass_bar
from sslkit.devices import checked_device

EPSILONS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x − mean) / std per channel, for x in [0, 1]; the same arithmetic as :func:`sslkit.augment.preprocess`.

    Shape:
        (B, C, H, W) -> (B, C, H, W)
    """
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def fgsm_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                  std: Sequence[float], epsilons: Sequence[float] = EPSILONS, batch_size: int = 500,
                  device: torch.device | str | None = None, progress: Progress | None = None,
                  description: str = "FGSM") -> dict[float, float]:
    """Top-1 accuracy under an FGSM attack of each strength ε, the model in eval mode.

    Args:
        model: maps normalised images to logits.
        images: uint8 images (or floats in [0, 1]).
        labels: true classes.
        mean, std: the model's input normalisation, applied after the attack.
        epsilons: attack strengths in [0, 1] pixel units (0.1 = 25.5 grey levels).
        batch_size: images per gradient.
        device: where to run; the model's device when None.
        progress: a live display to show the pass on, as a bar of ``description`` (images attacked) removed when
            it ends.

    Returns:
        ``{ε: accuracy}`` in the order of ``epsilons``; NaN for no images.

    Shape:
        images (N, C, H, W), labels (N,) -> one accuracy per ε
    """
    device = checked_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = torch.zeros(len(epsilons), dtype=torch.long)
    try:
        with pass_bar(progress, description, len(images)) as advance:
            for i in range(0, len(images), batch_size):
                x = images[i:i + batch_size].to(device)
                x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
                y = labels[i:i + batch_size].to(device)
                x.requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(model(normalise(x, mean, std)), y, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, x)
                step = grad.sign()
                x = x.detach()
                with torch.no_grad():
                    for j, eps in enumerate(epsilons):
                        x_adv = x if eps == 0 else (x + eps * step).clamp_(0, 1)  # ε = 0: the clean image exactly
                        correct[j] += int((model(normalise(x_adv, mean, std)).argmax(1) == y).sum())
                advance(len(y))
    finally:
        model.train(was_training)
    n = len(images)
    return {float(e): (int(c) / n if n else float("nan")) for e, c in zip(epsilons, correct, strict=True)}


def _eps_key(eps: float) -> str:
    return f"{eps:g}"


def summarise(per_seed: dict[str, list[dict[float, float]]]) -> dict[str, dict[str, list[float]]]:
    """Mean and sample std over seeds of each arm's FGSM curve: ``{arm: {"eps", "mean", "std", "seeds"}}`` (std 0
    for one seed, whose spread is unknown: ``seeds`` says so)."""
    out = {}
    for arm, curves in per_seed.items():
        if not curves:
            continue
        eps = list(curves[0])
        mean, std = [], []
        for e in eps:
            values = torch.tensor([c[e] for c in curves], dtype=torch.float64)
            mean.append(float(values.mean()))
            std.append(float(values.std()) if len(values) > 1 else 0.0)
        out[arm] = {"eps": eps, "mean": mean, "std": std, "seeds": len(curves)}
    return out


def print_robustness_table(summary: dict[str, dict[str, list[float]]], n_images: int, console: Console) -> None:
    """Arms as rows, ε as columns, mean ± std over seeds (the mean alone for one seed)."""
    if not summary:
        return
    first = next(iter(summary.values()))
    eps, one = first["eps"], first.get("seeds", 2) < 2
    table = Table(title=f"FGSM top-1 on {n_images:,} test images (ε in [0, 1] pixel units, before normalisation; "
                        f"{'one seed' if one else 'mean ± std over seeds'})", title_justify="left")
    table.add_column("arm")
    for e in eps:
        table.add_column(f"ε={_eps_key(e)}", justify="right")
    for arm, s in summary.items():
        table.add_row(arm, *[f"{m:.4f}" if one else f"{m:.4f} ± {sd:.4f}"
                             for m, sd in zip(s["mean"], s["std"], strict=True)])
    console.print(table)


def plot_robustness(summary: dict[str, dict[str, list[float]]], path: str | Path,
                    colours: dict[str, str] | None = None, title: str = "", n_images: int | None = None,
                    seeds: Sequence[int] | None = None) -> Path:
    """Accuracy against ε per arm, error bars = std over seeds; writes a PNG and returns its path.

    ``n_images`` (the attacked subset's size) and ``seeds`` (the training seeds the curves are of) are named on the
    axis and in the title: the accuracy at ε = 0 is that subset's, not the whole test split's. The curves of one
    seed have no error bars (their spread is unknown, not 0).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = colours or {}
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for arm, s in summary.items():
        ax.errorbar(s["eps"], s["mean"], yerr=s["std"] if s.get("seeds", 2) > 1 else None, marker="o", capsize=3,
                    label=arm, color=colours.get(arm))
    ax.set_xlabel("FGSM ε (pixel units in [0, 1])")
    ax.set_ylabel(f"top-1 on the {n_images:,} attacked test images" if n_images else "top-1 on the attacked images")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    spread = ""
    if seeds:
        spread = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else f"a single training seed: {seeds[0]}"
    ax.set_title("\n".join(x for x in (title or "Accuracy under FGSM", spread) if x), fontsize=10)
    from sslkit.viz import save_figure

    return save_figure(fig, path)


def to_json(curve: dict[float, float]) -> dict[str, Any]:
    """An FGSM curve with string keys (JSON object keys must be strings)."""
    return {_eps_key(e): (None if math.isnan(a) else a) for e, a in curve.items()}
