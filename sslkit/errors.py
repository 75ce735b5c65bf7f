"""The exceptions the CLI prints as one line: mistakes a user can fix (bad recipe, missing data, bad index; exit
code 2), and files that could not be written (a full disk, a read-only folder; exit code 74). Library callers
can catch them.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, with a message that says what, where and how to fix it."""

    exit_code = 2


class SslkitWarning(UserWarning):
    """A warning of sslkit's own (skipped images, a checkpoint that could not be read, a fallback taken): the CLI
    prints it as one plain line; it is a ``UserWarning``, so filters on that catch it too."""


class WriteError(OSError):
    """A file could not be written: the disk is full, or the folder (or file system) read-only.

    Raised by sslkit's writers in place of the OSError, with the same ``errno`` and ``strerror`` (the system's
    reason, e.g. "No space left on device") and, as ``filename``, the file's own name: the OSError names a
    temporary file, or, for a write that failed part-way, no file at all. ``advice`` is what the command that
    wrote it adds: what is safe on disk and how to go on. The CLI prints it as one line and exits with
    ``exit_code``, sysexits.h's EX_IOERR ("an error occurred while doing I/O on some file"), which tells it from
    bad input (2) and from a crash (1).
    """

    exit_code = 74

    def __init__(self, errno: int | None, strerror: str, filename: str, advice: str = "") -> None:
        super().__init__(errno, strerror, filename)
        self.advice = advice

    def __str__(self) -> str:
        return f"could not write {self.filename}: {self.strerror}" + (f" — {self.advice}" if self.advice else "")
