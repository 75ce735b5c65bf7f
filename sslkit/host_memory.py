"""Host memory: how much the machine has, and keeping what each training step frees for the next step.

The trainer refuses a step larger than :func:`physical_memory_bytes` before any compute (the OOM killer would
otherwise end the run with no message).

A train step on the CPU allocates and frees the same large tensors every step (activations, their gradients,
augmented views). glibc's ``malloc`` serves blocks above a threshold with fresh ``mmap`` pages and returns them to
the kernel when they are freed, and trims the top of its heap back to the kernel too, so the next step faults the
same pages in again and the kernel zeroes each of them: about 40,000 page faults per ResNet18 forward+backward at
batch 256 on 32×32 images, which cost it 11 % of its time on a 2-core CPU (7.6 % at 1×28×28;
``eval/bench_host_memory.py``). Telling ``malloc`` never to ``mmap``, never to trim, and to serve every thread from
its one main heap (other threads' heaps are unmapped when they empty) makes freed blocks stay where the next step
finds them: the process keeps its peak memory instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
_applied: bool | None = None


def physical_memory_bytes() -> int | None:
    """The machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def chooses_allocator(name: str) -> bool:
    """Whether the environment variable ``name`` chooses how the process allocates (any ``MALLOC_*``,
    ``GLIBC_TUNABLES``, ``LD_PRELOAD``); any of them set leaves ``malloc`` alone."""
    return name.startswith("MALLOC_") or name in ("GLIBC_TUNABLES", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Makes glibc's ``malloc`` keep freed memory for reuse (``mallopt``); returns whether it is now in force.

    Does nothing, and returns False, where the C library is not glibc (macOS, musl) and where the environment
    already chooses how memory is allocated (any ``MALLOC_*`` or ``GLIBC_TUNABLES`` setting, or an ``LD_PRELOAD``
    such as jemalloc or tcmalloc): a user's own choice wins. Idempotent; affects the whole process.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if any(value and chooses_allocator(name) for name, value in os.environ.items()):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. A trim threshold of 2**31 − 1 bytes: never trim in practice.
    _applied = all([mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, 2**31 - 1), mallopt(_M_ARENA_MAX, 1)])
    return _applied
