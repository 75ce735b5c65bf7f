"""Time of each SimCLR augmentation op on one batch, to see where the augmentation time goes.

    python eval/profile_augment.py --device cuda --batch 2048 --size 32 --channels 3
    python eval/profile_augment.py --compile   # the colour jitter's kernels compiled (augment.compile)
"""

from __future__ import annotations

import argparse
import time

import torch

from sslkit.augment import SimCLRAugment


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--compile", action="store_true", help="augment.compile: the colour jitter's kernels compiled")
    args = ap.parse_args()
    dev = torch.device(args.device)
    c = args.channels
    aug = SimCLRAugment(args.size, c, (0.5,) * c, (0.25,) * c, crop_scale=(0.08, 1.0), jitter_strength=0.5,
                        grayscale_p=0.2 if c == 3 else 0.0, blur_p=0.5, compile=args.compile).to(dev)
    x = torch.randint(0, 256, (args.batch, c, args.size, args.size), dtype=torch.uint8, device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(3):
        aug(x)
    sync()
    total = 0.0
    y = x.float() / 255
    for op in aug.ops:
        for _ in range(2):
            op(y)
        sync()
        t = time.perf_counter()
        for _ in range(args.repeats):
            out = op(y)
        sync()
        dt = (time.perf_counter() - t) / args.repeats
        total += dt
        print(f"{type(op).__name__:24s} {dt * 1e3:8.2f} ms  {args.batch / dt:12,.0f} img/s")
        y = out
    sync()
    t = time.perf_counter()
    for _ in range(args.repeats):
        aug(x)
    sync()
    dt = (time.perf_counter() - t) / args.repeats
    print(f"{'whole pipeline':24s} {dt * 1e3:8.2f} ms  {args.batch / dt:12,.0f} img/s  "
          f"(sum of ops {total * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
