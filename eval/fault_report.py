"""Every fault sslkit is meant to survive, tried and counted: writes ``eval/results/reliability.md``.

Two parts, both real executions:

1. the process faults — ``eval/fault_injection.py`` (SIGKILL at seeded moments, many of them inside checkpoint
   writes; SIGTERM/SIGINT; exact resume after each), run here with ``--kills`` and ``--signals``;
2. the input faults and crash points — the reliability tests of the suite (exact resume at three crash
   points, NaN/Inf in the loss or gradients, corrupt and malicious checkpoints, bad recipes, bad images, bad
   CLI arguments), run by pytest here and counted per kind from its JUnit report.

Run (about 15-25 minutes on a 2-core CPU; ``--kills 5 --signals 2`` for a quick check):

    python eval/fault_report.py --kills 50 --signals 6
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

from machine import at_least, cpu_name  # eval/machine.py, beside this script

ROOT = Path(__file__).resolve().parent.parent

# (kind as reported, pytest node-id pattern): each test that matches is one fault of that kind, tried.
KINDS: list[tuple[str, str]] = [
    ("crash points resumed bitwise (mid-epoch, epoch boundary, after a checkpoint)", r"test_resume_is_bitwise_exact"),
    ("NaN/Inf caught before the optimizer step (loss, gradient; stop and skip)",
     r"test_nonfinite_(step_leaves|loss_stops)"),
    ("corrupt checkpoints: fallback with a warning, or one clear error", r"test_(corrupt_last|all_corrupt)"),
    ("malicious files refused, code never run (pickle in a checkpoint, !!python in a recipe)",
     r"test_(pickled_code|checkpoint_with_code|python_tag)"),
    ("bad recipes: exit 2, one line naming the key, nothing computed",
     r"test_bad_recipe_exits_2|test_cli_bad_override"),
    ("bad arguments on an existing run: exit 2, no byte changed", r"test_bad_arguments_on_an_existing_run"),
    ("bad and unusual images (truncated, empty, not an image, 16-bit, CMYK, EXIF, huge; all bad)",
     r"test_imagefolder_(bad_and_unusual|with_only_bad)"),
    ("SIGKILL during writes and a killed first write (short in-suite version)",
     r"test_(sigkill_during_writes|a_killed_first_write)"),
    ("CLI edge cases: probe/neighbors on missing runs, bad indices, k too large",
     r"test_probe_refusals|test_bad_input_is_one_clear_line|test_run_without_encoder_is_refused"),
]
TEST_FILES = ["tests/test_trainer.py", "tests/test_step.py", "tests/test_checkpoint.py", "tests/test_reliability.py",
              "tests/test_evaluation.py", "tests/test_retrieval.py"]


def run_tests() -> list[tuple[str, str]]:
    """(node id, outcome) of every test in TEST_FILES."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                        *TEST_FILES], cwd=ROOT)
        out = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failed"
                elif child.tag == "skipped":
                    outcome = "skipped"
            out.append((f"{case.get('classname')}::{case.get('name')}", outcome))
        return out


def run_kills(kills: int, signals: int, out: Path) -> None:
    """Runs eval/fault_injection.py, which writes its own full report to ``out``."""
    done = subprocess.run([sys.executable, str(ROOT / "eval" / "fault_injection.py"), "--kills", str(kills),
                           "--signals", str(signals), "--out", str(out)], cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"fault_injection.py failed with exit code {done.returncode}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=at_least(0), default=50)
    ap.add_argument("--signals", type=at_least(0), default=6)
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "reliability.md")
    ap.add_argument("--reuse-kills", action="store_true",
                    help="take the process-fault table from an existing fault_injection.md instead of rerunning it")
    args = ap.parse_args()

    kills_md = args.out.with_name("fault_injection.md")
    if args.reuse_kills and kills_md.is_file():
        kills_cmd = next((ln for ln in kills_md.read_text().splitlines() if ln.startswith("Command:")), "")
        args.kills = int(re.search(r"--kills (\d+)", kills_cmd).group(1))
        args.signals = int(re.search(r"--signals (\d+)", kills_cmd).group(1))
    else:
        run_kills(args.kills, args.signals, kills_md)
    results = run_tests()

    lines = ["# Reliability: faults tried and survived", "",
             f"Command: `python eval/fault_report.py --kills {args.kills} --signals {args.signals}`"
             + (" (process faults from the last fault_injection.py run: `--reuse-kills`)" if args.reuse_kills else "")
             + "  ",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores; torch {version('torch')}, "
             f"Python {platform.python_version()}",
             "",
             "## Process faults (SIGKILL, SIGTERM, SIGINT)", "",
             f"From `eval/fault_injection.py` (full table and every trial in `{kills_md.name}`):", ""]
    body = kills_md.read_text().splitlines()
    start = next(i for i, ln in enumerate(body) if ln.startswith("| measurement"))
    end = next(i for i in range(start, len(body)) if not body[i].startswith("|"))
    lines += body[start:end]
    lines += ["", "## Input faults and crash points (tests of the suite, run now)", "",
              "| fault | tried | handled |", "|---|---:|---:|"]
    for kind, pattern in KINDS:
        hits = [(name, outcome) for name, outcome in results if re.search(pattern, name)]
        lines.append(f"| {kind} | {len(hits)} | {sum(o == 'passed' for _, o in hits)} |")
    failed = [name for name, outcome in results if outcome == "failed"]
    lines += ["", f"{len(results)} tests run from {', '.join(TEST_FILES)}; {len(failed)} failed"
              + (": " + ", ".join(failed) if failed else "") + "."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
