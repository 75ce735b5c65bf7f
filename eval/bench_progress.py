"""What the live progress bar costs a train step: sslkit's step with no bar, and with the trainer's bar redrawn at
rich's default rate and at the trainer's.

The step is ``bench_pretrain.py``'s (b). The bar is ``sslkit.trainer.progress_bar``, drawn on a console that takes
itself for a terminal and writes to the null device, as in an interactive run, and advanced after every step as the
trainer does. rich redraws it from a thread of its own, which takes CPU time and the GIL from the step. The three
settings alternate in blocks of ``--steps`` steps, so that the machine's drift hits all of them alike; the ratio of
each bar's block to the no-bar block before it is taken per repeat, and its median is reported with a 95 % interval.
Run:

    python eval/bench_progress.py                   # 32×32 RGB, fp32, batch 256
    python eval/bench_progress.py --quick           # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from bench_pretrain import bench_trainee, load_images, median_interval, sslkit_step
from machine import add_malloc_option, apply_malloc_option, at_least, cpu_name, write_results  # eval/machine.py
from rich.console import Console

from sslkit.trainer import PROGRESS_REFRESH_PER_SECOND, progress_bar, resolve_precision

RICH_DEFAULT = 10.0  # rich.progress.Progress's refresh_per_second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=at_least(2), default=256, help="images per step (2× views)")
    ap.add_argument("--size", type=at_least(8), default=32)
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--steps", type=at_least(1), default=6, help="steps per block")
    ap.add_argument("--repeats", type=at_least(1), default=10, help="blocks of each setting")
    add_malloc_option(ap)
    ap.add_argument("--quick", action="store_true", help="2 steps × 2 repeats (a smoke run)")
    ap.add_argument("--out", default=None, help="results file (default eval/results/bench_progress_cpu.md)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats = 2, 2
    apply_malloc_option(args)
    device = torch.device("cpu")
    precision = resolve_precision(args.precision, device, Console(stderr=True))
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else None
    b, c, s = args.batch, args.channels, args.size
    fmt = torch.channels_last
    model, optimizer, scaler, augment = bench_trainee(c, s, b, device)
    pool = load_images("fashion-mnist-mini", 10_000, c, s)
    step = sslkit_step(model, model, augment, optimizer, scaler, pool, b, torch.Generator().manual_seed(0), fmt, amp)
    sink = open(os.devnull, "w")  # the bar draws here for the whole run

    def block(rate: float | None) -> float:
        """Seconds per step over one block, with the trainer's bar redrawn ``rate`` times a second (None: no bar)."""
        if rate is None:
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            return (time.perf_counter() - t) / args.steps
        bar = progress_bar(Console(file=sink, force_terminal=True, width=120), refresh_per_second=rate)
        with bar:
            task = bar.add_task("pretrain", total=args.steps, epoch=1, loss=float("nan"), lr=0.0, ips=0.0)
            t = time.perf_counter()
            for i in range(args.steps):
                step()
                bar.update(task, completed=i + 1, loss=1.0, lr=0.1, ips=700.0)
            return (time.perf_counter() - t) / args.steps

    settings: dict[str, float | None] = {"no bar": None, f"{RICH_DEFAULT:g} redraws/s (rich's default)": RICH_DEFAULT,
                                         f"{PROGRESS_REFRESH_PER_SECOND:g} redraw/s (sslkit's trainer)":
                                         PROGRESS_REFRESH_PER_SECOND}
    for rate in settings.values():  # warm-up: allocator, kernels, momentum buffers, rich
        block(rate)
    times: dict[str, list[float]] = {name: [] for name in settings}
    for r in range(args.repeats):
        for name, rate in settings.items():
            times[name].append(block(rate))
        print(f"repeat {r + 1}/{args.repeats}: " + "  ".join(f"{name} {t[-1]:.3f} s" for name, t in times.items()))

    base = times["no bar"]
    lines = [
        "# Live progress bar: its cost to a train step — cpu", "",
        f"Command: `python eval/bench_progress.py --batch {b} --size {s} --channels {c} --precision {args.precision} "
        f"--steps {args.steps} --repeats {args.repeats} --malloc {args.malloc}{' --quick' if args.quick else ''}`  ",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads on {os.cpu_count()} cores  ",
        f"Setting: `bench_pretrain.py`'s (b), ResNet18 (imagenet stem), {c}×{s}×{s}, batch {b} images, {precision}, "
        f"channels_last; the bar is `sslkit.trainer.progress_bar` on a terminal console writing to {os.devnull}; "
        f"median of {args.repeats} blocks × {args.steps} steps, the settings interleaved  ", "",
        "| bar | s/step | step time against no bar, per repeat |", "|---|---:|---:|"]
    for name, t in times.items():
        paired = [x / y for x, y in zip(t, base, strict=True)]
        rel = "—" if t is base else f"{statistics.median(paired):.3f}{median_interval(paired)}"
        lines.append(f"| {name} | {statistics.median(t):.4f} | {rel} |")
    text = "\n".join(lines) + "\n"
    write_results(text, args.out, "bench_progress_cpu.md", args.quick)


if __name__ == "__main__":
    main()
