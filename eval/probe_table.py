"""Markdown of a run's ``sslkit probe`` results and training record, for ``eval/results/*.md`` and the README.

Reads ``RUN/probe.json`` (written by ``sslkit probe RUN``) and ``RUN/metrics.jsonl``; prints the probe table
(best value of each score row in bold, by ``sslkit probe``'s rule), the online k-NN by epoch, and the training
throughput. Nothing is computed here, so the published numbers are exactly the run's. Run:

    python eval/probe_table.py runs/fashion_mnist
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from sslkit.evaluation.probe import best_score

ROWS = [  # (label, key, format)
    ("linear top-1", "linear.top1", "{:.4f}"),
    ("linear top-5", "linear.top5", "{:.4f}"),
    ("k-NN k=20 (weighted, T=0.07)", "knn.k20.top1", "{:.4f}"),
    ("k-NN k=200 (weighted)", "knn.k200.top1", "{:.4f}"),
    ("k-NN k=20 (majority)", "knn.k20.majority.top1", "{:.4f}"),
    ("k-NN k=200 (majority)", "knn.k200.majority.top1", "{:.4f}"),
    ("k-means silhouette (cosine, {silhouette_n:,})", "kmeans.silhouette", "{:.4f}"),
    ("k-means NMI", "kmeans.nmi", "{:.4f}"),
    ("k-means ARI", "kmeans.ari", "{:.4f}"),
    ("k-means purity", "kmeans.purity", "{:.4f}"),
    ("k-means Hungarian accuracy", "kmeans.hungarian_acc", "{:.4f}"),
]


def probe_table(report: dict[str, Any]) -> str:
    models = report["models"]
    names = list(models)
    first = models[names[0]]
    rows = list(ROWS)
    for f in report["fractions"]:
        if f < 1:
            n = first.get(f"label_fraction.{f:g}.n")
            rows.append((f"linear top-1, {f:.0%} of labels" + (f" ({n:,})" if n else ""),
                         f"label_fraction.{f:g}.top1", "{:.4f}"))
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, fmt in rows:
        values = [models[m].get(key) for m in names]
        if all(v is None for v in values):
            continue
        best = best_score(key, values)  # sslkit probe's rule
        cells = ["—" if v is None else (f"**{fmt.format(v)}**" if best is not None and v == best else fmt.format(v))
                 for v in values]
        label = label.format(silhouette_n=int(first.get("kmeans.silhouette_n", 0)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    decays = [f"{models[m].get('linear.weight_decay', float('nan')):.0e}" for m in names]
    lines.append("| linear L2 strength chosen on train | " + " | ".join(decays) + " |")
    seconds = [f"{models[m].get('seconds', 0):.0f}" for m in names]
    lines.append("| probe seconds per model (after feature extraction) | " + " | ".join(seconds) + " |")
    return "\n".join(lines)


def training_record(metrics_path: Path) -> str:
    steps, knn, rates = 0, [], []
    for line in metrics_path.read_text().splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
        if "knn/top1" in m:
            knn.append((float(m["epoch"]), float(m["knn/top1"])))
        if "img_per_s" in m:
            rates.append(float(m["img_per_s"]))
        steps = max(steps, int(m.get("step", 0)))
    trail = " → ".join(f"{v:.3f} ({e:g})" for e, v in knn)
    rate = f"median {statistics.median(rates):.0f} img/s over {len(rates)} logged intervals" if rates else "—"
    return (f"- Online k-NN (k=20, held-out train images), by epoch: {trail}\n"
            f"- Steps: {steps:,}; training throughput: {rate}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    args = ap.parse_args()
    run = Path(args.run)
    if not (run / "probe.json").is_file():
        ap.error(f"{run / 'probe.json'} not found — run `sslkit probe {run}` first"
                 + ("" if run.is_dir() else f" ({run} is not a folder)"))
    report = json.loads((run / "probe.json").read_text())
    sizes = ", ".join(f"{k} {v:,}" for k, v in report["sizes"].items())
    print(f"Probe of `{run}` on {report['dataset']} ({sizes}); encoder sha256 `{report['checkpoint_sha256'][:16]}…`; "
          f"whole probe {report['seconds']:.0f} s.\n")
    print(probe_table(report))
    print()
    print(training_record(run / "metrics.jsonl"))


if __name__ == "__main__":
    main()
