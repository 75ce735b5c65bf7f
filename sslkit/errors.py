"""The one exception type for mistakes a user can fix (bad recipe, missing data, bad index).

The CLI prints its message as one line and exits with code 2; library callers can catch it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, with a message that says what, where and how to fix it."""

    exit_code = 2


class SslkitWarning(UserWarning):
    """A warning of sslkit's own (skipped images, a checkpoint that could not be read, a fallback taken): the CLI
    prints it as one plain line; it is a ``UserWarning``, so filters on that catch it too."""
