"""The console every sslkit command prints to: rich's, except that a reader going away does not stop the work.

``sslkit pretrain recipe.yaml | head`` closes the pipe once ``head`` has its lines; the next line sslkit prints
then fails with ``BrokenPipeError``, and rich answers that by ending the process (``SystemExit(1)``) in the middle
of training. Rich documents :meth:`~rich.console.Console.on_broken_pipe` as the hook to change that; sslkit's
console falls silent there instead and the command runs to its end, writing its own records (``metrics.jsonl``,
checkpoints, the export) as always.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import Progress


class PipeSafeConsole(Console):
    """A rich ``Console`` that goes quiet when its output (a pipe on stdout or stderr) is closed by the reader.

    Besides going quiet, the closed stream's file descriptor is pointed at ``os.devnull`` (as rich does for
    stdout, and the Python documentation advises in "Note on SIGPIPE"): the line that failed is still in
    Python's buffer, and the interpreter's last flush at exit would fail on it (exit code 120); any later
    ``print`` to that stream, or another console on it, is silently dropped too. Unlike rich, the descriptor
    pointed there is this console's own (stderr's for ``stderr=True``), not always stdout's.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        with contextlib.suppress(AttributeError, OSError, ValueError):  # a file without a descriptor: quiet is enough
            fd = self.file.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, fd)
            finally:
                os.close(devnull)


@contextlib.contextmanager
def pass_bar(progress: Progress | None, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar of ``description`` on the live display ``progress`` for one pass over ``total`` items, removed when the
    pass ends, however it ends; yields what advances it by a number of items (which does nothing without a
    display)."""
    if progress is None:
        yield lambda n: None
        return
    task = progress.add_task(description, total=total)
    try:
        yield lambda n: progress.advance(task, n)
    finally:
        progress.remove_task(task)
