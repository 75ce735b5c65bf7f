"""What measuring batch-norm statistics on clean images (``train.bn_calibration``) does to a run's k-NN.

For each RUN, the encoder weights of ``RUN/checkpoints/last.pt`` are evaluated twice by ``sslkit probe``'s
protocol (``evaluate_features``: linear probe with its L2 strength chosen on train, the same at 1 % of the labels,
cosine k-NN weighted with T=0.07 at k=20 and 200; train split → test split):

- with the running statistics that training left: averages over augmented views (what runs exported before
  ``train.bn_calibration`` existed, or with it set to 0);
- with statistics measured on the calibration images the trainer picks for ``train.bn_calibration=N`` (clean,
  unaugmented pool images; N defaults to the recipe's value), exactly as ``sslkit pretrain`` exports them.

The weights are the same in both, so the difference is the statistics alone. Run:

    python eval/bn_calibration.py runs/fm_bncal runs/fm_head3 runs/fm_wd_t05 [--images 10000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from machine import at_least, run_main  # eval/machine.py, beside this script
from rich.console import Console

from sslkit.checkpoint import load_checkpoint, read_encoder_meta
from sslkit.config import Recipe, load_run_recipe
from sslkit.errors import UserError
from sslkit.evaluation.features import extract_features, progress_bar
from sslkit.evaluation.probe import evaluate_features, labeled_splits
from sslkit.models import build_encoder
from sslkit.trainer import calibrated_encoder, prepare_data

METRICS = [("linear.top1", "linear"), ("knn.k20.top1", "k-NN k=20"), ("knn.k200.top1", "k-NN k=200"),
           ("label_fraction.0.01.top1", "linear, 1 % of labels")]


def checked_run(run: Path, images: int | None) -> tuple[Recipe, dict]:
    """``run``'s recipe with ``--images`` applied and its encoder record, once the run has what the comparison reads
    (recipe, exported encoder, last checkpoint) and calibration images to take; else a ``UserError`` naming what
    is wrong."""
    if not (run / "recipe.yaml").is_file():
        raise UserError(f"{run / 'recipe.yaml'} not found — give run folders made by `sslkit pretrain`")
    # Read as recorded, then set to the CPU the comparison runs on: a run trained on a GPU is compared here too.
    recipe = load_run_recipe(run).replace(**{"train.device": "cpu"})
    if images is not None:
        recipe = recipe.replace(**{"train.bn_calibration": images})
    if not recipe.train.bn_calibration:
        raise UserError(f"{run}/recipe.yaml has train.bn_calibration 0 — give --images N (N ≥ 1) calibration "
                        "images to compare with")
    meta, _ = read_encoder_meta(run)
    if not (run / "checkpoints" / "last.pt").is_file():
        raise UserError(f"{run}/checkpoints/last.pt not found — the comparison needs the run's last checkpoint")
    return recipe, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--images", type=at_least(1), default=None, help="calibration images (default: the recipe's)")
    args = ap.parse_args()
    console = Console(stderr=True)
    checked = [checked_run(run, args.images) for run in args.runs]  # every run checked before any compute
    rows = []
    for run, (recipe, meta) in zip(args.runs, checked, strict=True):
        state = load_checkpoint(run / "checkpoints" / "last.pt")
        trained = build_encoder(meta["encoder"], meta["stem"], int(meta["in_chans"]))
        trained.load_state_dict({k.removeprefix("encoder."): v for k, v in state["model"].items()
                                 if k.startswith("encoder.")})
        data = prepare_data(recipe, torch.device("cpu"))
        calibrated = calibrated_encoder(trained, recipe, data.calibration, data.mean, data.std)
        _, train, test, _ = labeled_splits(meta, "test")
        results = []
        with progress_bar(console) as progress:
            for name, encoder in (("trained", trained.eval()), ("calibrated", calibrated)):
                bank = extract_features(encoder, train, meta["mean"], meta["std"], progress=progress,
                                        description=f"{run.name} {name} train")
                queries = extract_features(encoder, test, meta["mean"], meta["std"], progress=progress,
                                           description=f"{run.name} {name} test")
                metrics, _ = evaluate_features(bank, train.labels, queries, test.labels, len(train.classes),
                                               fractions=(1.0, 0.01), progress=progress)
                results.append(metrics)
        (t, c), n = results, int(data.calibration.shape[0])
        cells = [f"{t[k]:.4f} → {c[k]:.4f} ({100 * (c[k] - t[k]):+.2f})" for k, _ in METRICS]
        rows.append(f"| {run} | {' | '.join(cells)} | {n:,} |")
        console.print(rows[-1])
    print("| run (training statistics → calibrated, Δ points) | " + " | ".join(label for _, label in METRICS)
          + " | calibration images |")
    print("|---|" + "---:|" * (len(METRICS) + 1))
    print("\n".join(rows))


if __name__ == "__main__":
    run_main(main, "bn_calibration.py")
