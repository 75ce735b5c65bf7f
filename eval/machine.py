"""What the benchmark scripts share: the machine they ran on, and where their results go."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def add_malloc_option(ap: argparse.ArgumentParser) -> None:
    """``--malloc sslkit|glibc``: measure with freed host memory kept for reuse, as sslkit's commands run, or not."""
    ap.add_argument("--malloc", default="sslkit", choices=["sslkit", "glibc"],
                    help="sslkit: freed memory kept for reuse, as sslkit's commands do (sslkit.host_memory); "
                         "glibc: the C library's defaults")


def apply_malloc_option(args: argparse.Namespace) -> bool:
    """Applies ``--malloc`` (call it before any tensor work); returns whether freed memory is kept."""
    from sslkit.host_memory import keep_freed_memory

    return keep_freed_memory() if args.malloc == "sslkit" else False


def write_results(text: str, out: str | Path | None, default_name: str, quick: bool) -> None:
    """Prints a results table after a blank line, then writes it to ``out`` (default
    ``eval/results/<default_name>``), except for an unnamed quick run."""
    print()
    print(text)
    path = Path(out or Path(__file__).resolve().parent / "results" / default_name)
    if not quick or out:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"written to {path}")
