"""sslkit's LARS step, another version's against this checkout's, in one process: a paired comparison for changes
too small for whole-step runs to resolve.

Each version gets its own ResNet18 + head (channels_last, sslkit's parameter groups) with the same random
gradients, and the two steps alternate, each after the caches are flushed (as the step finds them after a
backward), so the VM's changes of speed fall on both. It prints each version's median step (the finite check
included, as the trainer calls it) and the median of the paired differences. Models are built in the order given;
``--swap`` builds them the other way round, to check that where a model lands in memory does not decide. Run:

    git worktree add /tmp/old <commit>
    python eval/ab_lars.py /tmp/old/sslkit/optim.py [--swap]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from types import ModuleType

import torch
from machine import add_malloc_option, apply_malloc_option, at_least, cpu_name  # eval/machine.py
from profile_step import cache_flusher  # eval/profile_step.py

import sslkit.optim
from sslkit.config import OptimConfig
from sslkit.models import ProjectionHead, SimCLR, build_encoder


def load_module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("other_optim", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lars_with_gradients(optim: ModuleType, channels: int) -> torch.optim.Optimizer:
    """``optim.build_optimizer``'s LARS over a fresh model whose gradients are seeded noise; two steps taken (the
    first makes the momentum buffers)."""
    torch.manual_seed(0)
    model = SimCLR(build_encoder("resnet18", "imagenet", channels), ProjectionHead(512, 512, 128))
    model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = optim.build_optimizer(model, OptimConfig(name="lars", lr=0.3), 256)
    optimizer.step()
    optimizer.step()
    return optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("other", help="the other version's sslkit/optim.py")
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--repeats", type=at_least(1), default=200)
    ap.add_argument("--swap", action="store_true", help="build this checkout's model first")
    add_malloc_option(ap)
    args = ap.parse_args()
    if not Path(args.other).is_file():
        ap.error(f"{args.other}: no such file; give another checkout's sslkit/optim.py (git worktree add /tmp/old REV)")
    apply_malloc_option(args)
    versions = [("other", load_module(args.other)), ("this", sslkit.optim)]
    built = {name: lars_with_gradients(module, args.channels) for name, module in
             (reversed(versions) if args.swap else versions)}
    flush = cache_flusher()
    loss = torch.tensor(1.0)
    times: dict[str, list[float]] = {name: [] for name, _ in versions}
    for _ in range(args.repeats):
        for name, _ in versions:
            flush()
            t = time.perf_counter()
            built[name].step_if_finite(loss)
            times[name].append(time.perf_counter() - t)
    print(f"LARS step_if_finite, ResNet18 + head, {args.channels} input channels, {torch.get_num_threads()} threads, "
          f"{cpu_name()}; caches flushed before each step; {args.repeats} alternating pairs"
          f"{', this checkout built first' if args.swap else ''}")
    for name, ts in times.items():
        print(f"  {name:5s} {statistics.median(ts) * 1e3:6.3f} ms")
    diffs = [a - b for a, b in zip(times["other"], times["this"], strict=True)]
    print(f"  other − this, median of pairs: {statistics.median(diffs) * 1e3:+.3f} ms")


if __name__ == "__main__":
    main()
