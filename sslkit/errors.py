"""The one exception type for mistakes a user can fix (bad recipe, missing data, bad index).

The CLI prints its message as one line and exits with code 2; library callers can catch it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, with a message that says what, where and how to fix it."""

    exit_code = 2
