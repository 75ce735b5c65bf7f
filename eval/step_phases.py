"""Where the train step's time goes, phase by phase, against the encoder's own forward+backward in the same loop.

``eval/bench_pretrain.py`` times whole steps: (a) the encoder+head forward and backward on a random batch, (b)
sslkit's train step. This script runs the same two, interleaved in blocks of ``--steps`` as there, and clocks each
phase inside them: for (a) forward, loss, backward; for (b) indexing the uint8 batch, the two views, forward,
NT-Xent, backward and the LARS step with its finite check. On a CPU every op is synchronous, so the clock between
phases is exact; on CUDA the script synchronises at each boundary (which slows (b) a little). The difference of the
two columns, phase by phase, is what the pipeline adds to the encoder: the parts ``eval/profile_step.py`` times on
their own, here as they cost inside the step. Run:

    python eval/step_phases.py                                        # 32×32 RGB, fp32, batch 256
    python eval/step_phases.py --channels 1 --size 28 --precision bf16  # Fashion-MNIST's shape and precision
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from bench_pretrain import TEMPERATURE, bench_trainee, load_images, pure_forward, pure_loss, random_batch, sync
from machine import add_malloc_option, apply_malloc_option, at_least, check_device, cpu_name  # eval/machine.py
from rich.console import Console

from sslkit.augment import SimCLRAugment
from sslkit.losses import nt_xent
from sslkit.models import SimCLR
from sslkit.step import make_views, step_if_finite
from sslkit.trainer import resolve_precision

B_PHASES = ("index", "views", "forward", "loss", "backward", "optimizer step")


class Clock:
    """Seconds between successive ``lap`` calls, appended per phase name (synchronising the device first)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.laps: dict[str, list[float]] = {}
        self.t = 0.0

    def start(self) -> None:
        sync(self.device)
        self.t = time.perf_counter()

    def lap(self, phase: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.laps.setdefault(phase, []).append(now - self.t)
        self.t = now


def phased_step(model: SimCLR, augment: SimCLRAugment, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, images: torch.Tensor, fmt: torch.memory_format,
                amp: torch.autocast | None, clock: Clock) -> None:
    """``bench_pretrain.py``'s (b), the trainer's step, with a lap after each phase; the index lap is the caller's.

    The same calls as ``sslkit.step.simclr_backward`` (whole batch) and ``step_if_finite``, written out so that the
    forward, the loss and the backward can be clocked apart (a test holds the update equal to theirs).
    """
    clock.lap("index")
    views = make_views(augment, images, fmt)
    clock.lap("views")
    optimizer.zero_grad(set_to_none=True)
    b = images.shape[0]
    with amp or contextlib.nullcontext():
        z = model(views)
    clock.lap("forward")
    loss = nt_xent(z[:b], z[b:], TEMPERATURE)
    clock.lap("loss")
    scaler.scale(loss).backward()
    clock.lap("backward")
    if not step_if_finite(loss.detach(), model, optimizer, scaler):
        raise RuntimeError("non-finite loss")
    clock.lap("optimizer step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=at_least(2), default=256, help="images per step (2× views)")
    ap.add_argument("--size", type=at_least(8), default=32)
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--steps", type=at_least(1), default=3, help="steps per block; blocks of (a) and (b) alternate")
    ap.add_argument("--repeats", type=at_least(1), default=15, help="blocks of each")
    add_malloc_option(ap)
    args = ap.parse_args()
    check_device(ap, args.device)
    apply_malloc_option(args)
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device, Console(stderr=True))
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else None
    b, c, s = args.batch, args.channels, args.size
    fmt = torch.channels_last
    model, optimizer, scaler, augment = bench_trainee(c, s, b, device)
    pool = load_images("fashion-mnist-mini", 10_000, c, s).to(device)
    noise = torch.randn(2 * b, c, s, s, device=device).contiguous(memory_format=fmt)
    g = torch.Generator().manual_seed(0)
    clocks = {"a": Clock(device), "b": Clock(device)}

    def pure(clock: Clock) -> None:  # bench_pretrain.py's (a)
        clock.start()
        model.zero_grad(set_to_none=True)
        z1, z2 = pure_forward(model, noise, amp)
        clock.lap("forward")
        loss = pure_loss(z1, z2)
        clock.lap("loss")
        loss.backward()
        clock.lap("backward")

    def step(clock: Clock) -> None:
        clock.start()
        x = random_batch(pool, b, g)
        phased_step(model, augment, optimizer, scaler, x, fmt, amp, clock)

    runs: dict[str, Callable[[Clock], None]] = {"a": pure, "b": step}
    for _ in range(2):  # warm-up: allocator, kernels, momentum buffers
        for fn in runs.values():
            fn(Clock(device))
    for _ in range(args.repeats):
        for name, fn in runs.items():
            for _ in range(args.steps):
                fn(clocks[name])

    def ms(name: str, phase: str) -> float | None:
        laps = clocks[name].laps.get(phase)
        return statistics.median(laps) * 1e3 if laps else None

    totals = {name: [sum(p) * 1e3 for p in zip(*clock.laps.values(), strict=True)] for name, clock in clocks.items()}
    ta, tb = statistics.median(totals["a"]), statistics.median(totals["b"])
    print(f"ResNet18 (imagenet stem), {c}×{s}×{s}, batch {b} = {2 * b} views, {precision}, channels_last, "
          f"{torch.get_num_threads()} threads, {cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name()}; "
          f"median of {args.repeats} blocks × {args.steps} steps, (a) and (b) alternating\n")
    print("| phase | (a) encoder+head, ms | (b) sslkit step, ms | (b) − (a), ms |\n|---|---:|---:|---:|")
    for phase in B_PHASES:
        pa, pb = ms("a", phase), ms("b", phase)
        print(f"| {phase} | {'—' if pa is None else f'{pa:.2f}'} | {pb:.2f} | {pb - (pa or 0.0):+.2f} |")
    print(f"| whole step (median of sums) | {ta:.2f} | {tb:.2f} | {tb - ta:+.2f} |")
    print(f"\n(b)/(a): {ta / tb:.3f} (the pipeline adds {100 * (tb / ta - 1):.1f} % to the encoder's forward+backward)")


if __name__ == "__main__":
    main()
