"""What the benchmark scripts share: the machine they ran on, and where their results go."""

from __future__ import annotations

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


def write_results(text: str, out: str | Path | None, default_name: str, quick: bool) -> None:
    """Writes a results table to ``out`` (default ``eval/results/<default_name>``), except for an unnamed quick run."""
    path = Path(out or Path(__file__).resolve().parent / "results" / default_name)
    if not quick or out:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"written to {path}")
