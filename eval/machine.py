"""What the benchmark scripts share: the machine they ran on, and where their results go."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
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


def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ≥ ``low``, else a one-line usage error naming the option (exit code 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {low}"
    return parse


def check_device(ap: argparse.ArgumentParser, name: str) -> None:
    """A ``--device`` that is not cpu, cuda or cuda:N, or names a CUDA device this machine does not have, is an
    argparse error (one line, exit code 2) before any work; elsewhere torch would fail at the first tensor with a
    traceback."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:  # "gpu", "cuda:x"
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # "auto" too: the scripts hand the name to torch
        ap.error(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    if device.type == "cuda" and not count:
        ap.error(f"--device {name}: torch sees no CUDA device on this machine — run it where one is "
                 "(eval/gpu_checks.sh runs the GPU checks) or give --device cpu")
    if device.type == "cuda" and (device.index or 0) >= count:
        ap.error(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def run_main(main: Callable[[], None], script: str) -> None:
    """Runs a script's ``main``; a ``sslkit.errors.UserError`` (a bad run folder, recipe or file) becomes the one
    line sslkit's commands print for it, with exit code 2, not a traceback."""
    from sslkit.errors import UserError

    try:
        main()
    except UserError as err:
        print(f"{script}: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


def add_malloc_option(ap: argparse.ArgumentParser) -> None:
    """``--malloc sslkit|glibc``: measure with freed host memory kept for reuse, as sslkit's commands run, or not."""
    ap.add_argument("--malloc", default="sslkit", choices=["sslkit", "glibc"],
                    help="sslkit: freed memory kept for reuse, as sslkit's commands do (sslkit.host_memory); "
                         "glibc: the C library's defaults")


def apply_malloc_option(args: argparse.Namespace) -> bool:
    """Applies ``--malloc`` (call it before any tensor work); returns whether freed memory is kept."""
    from sslkit.host_memory import keep_freed_memory

    return keep_freed_memory() if args.malloc == "sslkit" else False


EARLIER = "<!-- The results before, kept by eval/machine.py's write_results: newest first. -->"


def with_earlier(text: str, old: str, stamp: str) -> str:
    """``text``, then what a results file held before (``old``): its top under a heading that dates its
    replacement, then the earlier results it kept. Hand-written sections below a table are kept with it."""
    top, _, earlier = old.partition(EARLIER)
    lines = top.strip().splitlines()
    if lines and lines[0].startswith("# "):  # the file's title: the new text has its own
        lines = lines[1:]
    body = "\n".join(lines).strip()
    kept = [f"## Replaced on {stamp}: the results before\n\n{body}"] if body else []
    kept += [earlier.strip()] if earlier.strip() else []
    if not kept:
        return text
    return text.rstrip("\n") + "\n\n" + EARLIER + "\n\n" + "\n\n".join(kept) + "\n"


def write_results(text: str, out: str | Path | None, default_name: str, quick: bool) -> None:
    """Prints a results table after a blank line, then writes it to ``out`` (default
    ``eval/results/<default_name>``), except for an unnamed quick run. What the file held before is kept below
    the new table (``with_earlier``): a rerun never loses a recorded result."""
    print()
    print(text)
    path = Path(out or Path(__file__).resolve().parent / "results" / default_name)
    if not quick or out:
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.read_text() if path.exists() else ""
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        path.write_text(with_earlier(text, old, stamp))
        print(f"written to {path}" + (" (the results before kept below the new table)" if old.strip() else ""))
