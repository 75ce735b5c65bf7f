"""Time of each SimCLR augmentation op on one batch, to see where the augmentation time goes.

Each op runs on the previous op's output; the ops and the whole pipeline are timed in interleaved repeats and
the median is printed. sslkit's two ops that compute Kornia's transforms themselves are each set beside the two
Kornia modules whose parameters they draw, which make the same views up to rounding: ``ResizedCropFlip`` beside
``RandomResizedCrop`` in resample mode then ``RandomHorizontalFlip``, and ``ColourDistortion`` beside
``ColorJitter`` then ``RandomGrayscale``.

    python eval/profile_augment.py                      # CPU, 512 RGB 32×32 views
    python eval/profile_augment.py --channels 1 --size 28
    python eval/profile_augment.py --device cuda --batch 2048 --size 32 --channels 3
    python eval/profile_augment.py --compile   # the colour jitter's kernels compiled (augment.compile)
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import kornia.augmentation as K
import torch
from machine import add_malloc_option, apply_malloc_option, at_least, check_device  # eval/machine.py
from torch import nn

from sslkit.augment import ResizedCropFlip, SimCLRAugment
from sslkit.colour import ColourDistortion


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=at_least(2), default=512)
    ap.add_argument("--size", type=at_least(8), default=32)
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--repeats", type=at_least(1), default=30)
    ap.add_argument("--compile", action="store_true", help="augment.compile: the colour jitter's kernels compiled")
    add_malloc_option(ap)
    args = ap.parse_args()
    check_device(ap, args.device)
    apply_malloc_option(args)
    dev = torch.device(args.device)
    c = args.channels
    aug = SimCLRAugment(args.size, c, (0.5,) * c, (0.25,) * c, crop_scale=(0.08, 1.0), jitter_strength=0.5,
                        grayscale_p=0.2 if c == 3 else 0.0, blur_p=0.5, compile=args.compile).to(dev)
    x = torch.randint(0, 256, (args.batch, c, args.size, args.size), dtype=torch.uint8, device=dev)
    fused = aug.ops[0]
    assert isinstance(fused, ResizedCropFlip)
    kornia_pair = nn.Sequential(
        K.RandomResizedCrop(fused.size, scale=(0.08, 1.0), cropping_mode="resample", align_corners=True, p=1.0),
        K.RandomHorizontalFlip(p=fused.flip.p)).to(dev)
    colour = aug.ops[1]
    assert isinstance(colour, ColourDistortion)
    kornia_colour = nn.Sequential(  # the two Kornia modules whose parameters ColourDistortion draws
        *([colour.jitter] if colour.jitter is not None else []),
        *([colour.grayscale] if colour.grayscale is not None else [])).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    # Each op's input is the previous op's output on the same batch.
    inputs, y = [], x.float() / 255
    for op in aug.ops:
        inputs.append(y)
        y = op(y)
    rows: list[tuple[str, Callable[[], object]]] = [
        (type(op).__name__, functools.partial(op, inp)) for op, inp in zip(aug.ops, inputs, strict=True)]
    rows.insert(1, ("  Kornia crop + flip", lambda: kornia_pair(inputs[0])))
    rows.insert(3, ("  Kornia jitter + gray", lambda: kornia_colour(inputs[1])))
    rows.append(("whole pipeline", lambda: aug(x)))
    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(3):
        for _, fn in rows:
            fn()
    for _ in range(args.repeats):
        for name, fn in rows:
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    print(f"{args.batch} views {c}×{args.size}×{args.size} on {dev}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved repeats")
    ops_total = 0.0
    for name, _ in rows:
        dt = statistics.median(times[name])
        if not name.startswith(" ") and name != "whole pipeline":
            ops_total += dt
        extra = f"  (sum of ops {ops_total * 1e3:.2f} ms)" if name == "whole pipeline" else ""
        print(f"{name:24s} {dt * 1e3:8.2f} ms  {args.batch / dt:12,.0f} img/s{extra}")


if __name__ == "__main__":
    main()
