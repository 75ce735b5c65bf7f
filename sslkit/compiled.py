"""``torch.compile`` with a fallback: the compiled function where the platform builds it, else the same one eagerly.

On the CPU inductor needs a C++ compiler; on a machine without one (or any other compile-time failure) the
wrapped function warns once and from then on runs uncompiled: same results up to rounding, only slower.
Compile-time failures happen before the function body runs, so no tensor has been written when it falls back.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from sslkit.errors import SslkitWarning


class CompiledOrEager:
    """``fn`` compiled by ``torch.compile(fn, **options)``; on the first failure, ``fn`` itself from then on.

    Args:
        fn: the function to compile.
        what: how the warning names it, e.g. "optim.compile: compiling the LARS update".
        options: keyword arguments of ``torch.compile``.
    """

    def __init__(self, fn: Callable[..., Any], what: str, **options: Any) -> None:
        self.fn = fn
        self.what = what
        self.compiled: Callable[..., Any] | None = torch.compile(fn, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:
                warnings.warn(f"{self.what} failed ({_first_line(e)}); running it uncompiled", SslkitWarning,
                              stacklevel=2)
                self.compiled = None
        return self.fn(*args, **kwargs)


@functools.cache
def compiles(device: torch.device) -> bool:
    """Whether ``torch.compile`` builds on ``device``'s platform, tried on a tiny function; where it does not (on
    the CPU: no C++ compiler) it warns once, so that the caller runs eagerly before any work is done, rather than
    failing at its first compiled step."""
    try:
        torch.compile(lambda x: x * 2 + 1, dynamic=False)(torch.zeros(8, device=device))
        return True
    except Exception as e:
        warnings.warn(f"train.compile: torch.compile cannot build on this {device.type} ({_first_line(e)}); training "
                      "uncompiled", SslkitWarning, stacklevel=2)
        return False


def _first_line(e: Exception) -> str:
    """``Type: first line of the message`` of a compiler's error, whose full text runs to pages."""
    return f"{e.__class__.__name__}: {(str(e).splitlines() or [''])[0][:200]}"
