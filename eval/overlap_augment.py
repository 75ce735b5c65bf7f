"""Would making the next batch's views in a side thread hide the augmentation behind the forward/backward?

On a CPU the trainer augments, then trains, one after the other. This experiment times, interleaved, (a) the
encoder+head forward+backward on random tensors, the train step as the trainer runs it ("plain"), and the same
step with the next batch's views made by a one-thread executor while the current batch trains ("overlap").
Overlap can only pay if the encoder's intra-op threads leave cores idle; ``--side-threads`` sets the torch
thread count inside the side thread (0 keeps torch's default there).

    python eval/overlap_augment.py --channels 3 --size 32 --side-threads 0
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from bench_pretrain import TEMPERATURE, bench_trainee, random_batch  # eval/bench_pretrain.py, beside this script
from machine import at_least  # eval/machine.py

from sslkit.step import make_views, simclr_backward, step_if_finite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--size", type=at_least(8), default=32)
    ap.add_argument("--batch", type=at_least(2), default=256)
    ap.add_argument("--side-threads", type=at_least(0), default=0)
    ap.add_argument("--steps", type=at_least(1), default=3, help="steps per timed repeat")
    ap.add_argument("--repeats", type=at_least(1), default=8)
    args = ap.parse_args()
    c, s, b = args.channels, args.size, args.batch
    fmt = torch.channels_last
    model, optimizer, scaler, augment = bench_trainee(c, s, b, torch.device("cpu"))
    pool = torch.randint(0, 256, (10_000, c, s, s), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2 * b, c, s, s).contiguous(memory_format=fmt)
    side = ThreadPoolExecutor(1)
    if args.side_threads:
        side.submit(torch.set_num_threads, args.side_threads).result()

    def batch() -> torch.Tensor:
        return random_batch(pool, b, g)

    def train(views: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = simclr_backward(model, views, TEMPERATURE, None, scaler)
        step_if_finite(loss, model, optimizer, scaler)

    def encoder_only(n: int) -> None:
        for _ in range(n):
            model.zero_grad(set_to_none=True)
            z1, z2 = model(noise[:b], noise[b:])
            (z1.square().mean() + z2.square().mean()).backward()

    def plain(n: int) -> None:
        for _ in range(n):
            train(make_views(augment, batch(), fmt))

    def overlap(n: int) -> None:
        pending = side.submit(make_views, augment, batch(), fmt)
        for k in range(n):
            views = pending.result()
            if k + 1 < n:
                pending = side.submit(make_views, augment, batch(), fmt)
            train(views)

    runs: dict[str, tuple[Callable[[int], None], list[float]]] = {
        "a": (encoder_only, []), "plain": (plain, []), "overlap": (overlap, [])}
    plain(2)
    overlap(2)
    for _ in range(args.repeats):
        for fn, times in runs.values():
            t = time.perf_counter()
            fn(args.steps)
            times.append((time.perf_counter() - t) / args.steps)
    med = {name: statistics.median(times) for name, (_, times) in runs.items()}
    print(f"{c}×{s}×{s}, batch {b}, {torch.get_num_threads()} torch threads, side thread "
          f"{args.side_threads or 'default'} threads; median of {args.repeats} repeats × {args.steps} steps")
    for name, dt in med.items():
        print(f"  {name:8s} {b / dt:6.0f} img/s   /(a) {med['a'] / dt:.3f}")
    side.shutdown()


if __name__ == "__main__":
    main()
