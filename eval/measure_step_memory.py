"""Bytes of memory per view pixel that one SimCLR train step takes: the source of ``sslkit.step``'s constants.

One fresh process per setting runs one full step of the trainer's own code (``make_views``, ``simclr_backward``,
``step_if_finite`` with LARS) on random uint8 images, ResNet18 with the given stem and a 512→512→128 head, and
reports its peak memory (max RSS on the CPU, with ``keep_freed_memory`` as the trainer sets it; CUDA
``max_memory_allocated``). Two batches at one view size: the difference of their peaks over the difference of
their view pixels is the memory each view pixel adds (the weights, optimizer state and the process itself
cancel out); a second view size checks that it scales with the pixels.

    python eval/measure_step_memory.py                  # both stems, fp32 and bf16, on the CPU
    python eval/measure_step_memory.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from machine import check_device, cpu_name  # eval/machine.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
# (stem, view size, small batch, large batch): large enough that the step, not the import of torch or the model,
# sets each peak, and small enough for a 2-core CPU (a minute or less a step).
SETTINGS = (("imagenet", 64, 64, 192), ("imagenet", 128, 16, 48), ("cifar", 32, 64, 192), ("cifar", 64, 16, 48))


def one_step(stem: str, size: int, batch: int, channels: int, precision: str, device: str) -> float:
    """Runs one train step in this process; returns its peak memory in bytes."""
    import torch

    from sslkit.augment import SimCLRAugment
    from sslkit.config import OptimConfig
    from sslkit.host_memory import keep_freed_memory
    from sslkit.models import ProjectionHead, SimCLR, build_encoder
    from sslkit.optim import build_optimizer
    from sslkit.step import make_views, simclr_backward, step_if_finite

    dev = torch.device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(0)
    model = SimCLR(build_encoder("resnet18", stem, channels), ProjectionHead(512, 512, 128)).to(
        dev, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, OptimConfig(name="lars", lr=0.3), batch)
    augment = SimCLRAugment(size, channels, [0.5] * channels, [0.25] * channels).to(dev)
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, device=dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=False)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else None
    views = make_views(augment, images, torch.channels_last)
    loss = simclr_backward(model, views, 0.5, amp, scaler)
    step_if_finite(loss, model, optimizer, scaler)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # stem size batch precision
    args = parser.parse_args()
    check_device(parser, args.device)
    if args.child:
        stem, size, batch, precision = args.child
        print(json.dumps(one_step(stem, int(size), int(batch), args.channels, precision, args.device)))
        return
    print(f"{cpu_name()}; {args.channels} channel(s); {args.device}")
    for precision in args.precisions:
        for stem, size, small, large in SETTINGS:
            peaks = []
            for batch in (small, large):
                cmd = [sys.executable, __file__, "--device", args.device, "--channels", str(args.channels),
                       "--child", stem, str(size), str(batch), precision]
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
                peaks.append(json.loads(done.stdout.strip().splitlines()[-1]))
            per_pixel = (peaks[1] - peaks[0]) / (2 * (large - small) * size * size)
            print(f"{precision} {stem:8s} {size:4d} px, batch {small}/{large}: peaks {peaks[0] / 2**20:,.0f} / "
                  f"{peaks[1] / 2**20:,.0f} MiB → {per_pixel:,.0f} bytes per view pixel", flush=True)


if __name__ == "__main__":
    main()
