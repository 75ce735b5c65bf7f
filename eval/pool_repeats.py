"""Pools the per-repeat (b)/(a) ratios of several ``bench_pretrain.py`` runs from their printed logs.

One run's interval is wide on a VM whose single repeats vary by ±15 %; the repeats of several runs of the same code
in the same hours, pooled, say more. Each log is what ``bench_pretrain.py`` prints (``repeat i/R: (a) … s  (b) … s``);
logs are grouped by a label, given as ``LABEL=LOG``. Prints, per label, the pooled repeats, the median of their
ratios and its 95 % bootstrap interval (as ``bench_pretrain.py`` computes it for one run).

    python eval/pool_repeats.py old=eval/results/logs/2026-12-02/1-old-cba4397.log \\
        old=eval/results/logs/2026-12-02/3-old-cba4397.log new=eval/results/logs/2026-12-02/0-new-4ddd873.log …
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

from bench_pretrain import median_interval  # eval/bench_pretrain.py, beside this script

_REPEAT = re.compile(r"repeat \d+/\d+: \(a\) ([\d.]+) s  \(b\) ([\d.]+) s")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def ratios(log: Path) -> list[float]:
    """(a)/(b) of each repeat the log prints: the step's speed as a fraction of the encoder's own."""
    out = [float(m[1]) / float(m[2]) for m in map(_REPEAT.match, log.read_text().splitlines()) if m]
    if not out:
        _fail(f"{log} has no 'repeat i/R: (a) … s  (b) … s' lines; give bench_pretrain.py's printed log")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", metavar="LABEL=LOG")
    args = ap.parse_args()
    pooled: dict[str, list[float]] = {}
    for item in args.logs:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            _fail(f"{item!r} is not LABEL=LOG with an existing log file")
        pooled.setdefault(label, []).extend(ratios(Path(path)))
    for label, r in pooled.items():
        print(f"{label}: {len(r)} repeats, per-repeat (b)/(a) median {statistics.median(r):.3f}{median_interval(r)}")


if __name__ == "__main__":
    main()
