"""keep_freed_memory: large blocks freed by one step are reused by the next without faulting their pages in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sslkit.host_memory import chooses_allocator

# A "step" holds two blocks above glibc's largest mmap threshold (32 MiB) at once, then frees them; the probe
# prints the median page faults of steps 10-14. (Kept, the heap grows for the first few steps, as freed blocks are
# split by small allocations, and then serves the steps from what it holds; now and then one of the later steps
# still grows it by 8 MiB, 2,048 faults, so a single step's count is not the steady state.)
_PROBE = """
import resource, statistics, sys, torch
from sslkit.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def step():
    blocks = [torch.empty(n * 2**18, dtype=torch.float32).fill_(1.0) for n in (40, 48)]  # 40 and 48 MiB
    del blocks
for _ in range(9):
    step()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(applied), int(statistics.median(faults)))
"""


def _faults(mode: str, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not chooses_allocator(k)}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    return out[0] == "1", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_page_faults_and_a_users_malloc_setting_wins() -> None:
    applied, kept = _faults("keep")
    assert applied
    _, default = _faults("default")
    assert default > 20_000  # glibc's default: 88 MiB come back as ~22,500 fresh 4 KiB pages each step
    assert kept < 1_000  # kept in the heap: the next step finds its pages mapped
    applied, _ = _faults("keep", MALLOC_ARENA_MAX="2")  # the user's own malloc setting: left alone
    assert not applied
    assert not _faults("keep", MALLOC_PERTURB_="0")[0]  # any MALLOC_* variable, as the README says
