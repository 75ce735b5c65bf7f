"""Throughput of sslkit's SimCLR train step against the encoder's own forward+backward, side by side.

(a) pure: encoder + head forward and backward on a random float batch of 2B views (no data, no augmentation,
    no loss, no optimizer) — the ceiling for the step;
(b) sslkit: the real train step of sslkit.trainer — index an in-memory uint8 batch on the device, two Kornia
    views, one forward, NT-Xent, backward, LARS step.
The two alternate in one process (repeats interleaved so machine noise hits both alike); the median of the
repeats is reported. Run:

    python eval/bench_pretrain.py                      # CPU, batch 256, ImageNet stem, 32×32 RGB
    python eval/bench_pretrain.py --device cuda --batch 1024 --stem cifar --compile
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from sslkit.augment import SimCLRAugment
from sslkit.config import OptimConfig
from sslkit.models import ProjectionHead, SimCLR, build_encoder
from sslkit.optim import build_optimizer
from sslkit.step import make_views, simclr_backward, step_if_finite


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls."""
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t) / steps


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256, help="images per step (2× views)")
    ap.add_argument("--stem", default="imagenet", choices=["imagenet", "cifar"])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--chunk-size", type=int, default=None, help="gradient-cache chunk (views) for (b)")
    ap.add_argument("--quick", action="store_true", help="1 step × 2 repeats (a smoke run)")
    ap.add_argument("--out", default=None, help="results file (default eval/results/bench_pretrain_<device>.md)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats = 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else None
    fmt = torch.channels_last
    torch.manual_seed(0)
    b, c, s = args.batch, args.channels, args.size

    def make_model() -> SimCLR:
        model = SimCLR(build_encoder("resnet18", args.stem, c), ProjectionHead(512, 512, 128))
        model = model.to(device, memory_format=fmt).train()
        return model

    model = make_model()
    forward = torch.compile(model) if args.compile else model
    optimizer = build_optimizer(model, OptimConfig(name="lars", lr=0.3), b)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    augment = SimCLRAugment(s, c, (0.5,) * c, (0.25,) * c, crop_scale=(0.2, 1.0), jitter_strength=0.5,
                            grayscale_p=0.2 if c == 3 else 0.0).to(device)
    pool = torch.randint(0, 256, (max(4 * b, 8192), c, s, s), dtype=torch.uint8, device=device)
    pure_x = torch.randn(2 * b, c, s, s, device=device).contiguous(memory_format=fmt)
    g = torch.Generator().manual_seed(0)

    def pure() -> None:
        model.zero_grad(set_to_none=True)
        with amp or contextlib.nullcontext():
            z1, z2 = forward(pure_x[:b], pure_x[b:])
        (z1.float().square().mean() + z2.float().square().mean()).backward()

    def step() -> None:
        idx = torch.randint(0, pool.shape[0], (b,), generator=g).to(device)
        views = make_views(augment, pool[idx], fmt)
        optimizer.zero_grad(set_to_none=True)
        loss = simclr_backward(forward, views, 0.2, amp, scaler, args.chunk_size)
        if not step_if_finite(loss, model, optimizer, scaler):  # the trainer's check, host sync included
            raise RuntimeError("non-finite loss")

    def aug_only() -> None:
        idx = torch.randint(0, pool.shape[0], (b,), generator=g).to(device)
        x = pool[idx]
        augment(torch.cat([x, x]))

    for _ in range(2):  # warm-up: allocator, kernels, compilation
        pure()
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_pure, t_step, t_aug = [], [], []
    for _ in range(args.repeats):
        t_pure.append(timed(pure, args.steps, device))
        t_step.append(timed(step, args.steps, device))
        t_aug.append(timed(aug_only, args.steps, device))
    mp, ms, ma = statistics.median(t_pure), statistics.median(t_step), statistics.median(t_aug)
    peak = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    rows = [("(a) pure encoder+head fwd+bwd", mp), ("(b) sslkit train step", ms)]
    cmd = "python eval/bench_pretrain.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k}" for k, v in vars(args).items()
        if v not in (None, False) and k not in ("out",) and not (k in ("steps", "repeats") and args.quick))
    lines = [
        f"# Pretraining step throughput — {device.type}",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {name}, {torch.get_num_threads()} torch threads on {__import__('os').cpu_count()} cores; "
        f"torch {torch.__version__}, Python {platform.python_version()}  ",
        f"Setting: ResNet18 ({args.stem} stem), {c}×{s}×{s}, batch {b} images = {2 * b} views, {precision}, "
        f"channels_last, compile={args.compile}; median of {args.repeats} repeats × {args.steps} steps, "
        "interleaved",
        "",
        "| measurement | s/step | img/s | views/s |",
        "|---|---:|---:|---:|",
    ]
    for label, t in rows:
        lines.append(f"| {label} | {t:.4f} | {b / t:,.0f} | {2 * b / t:,.0f} |")
    lines.append(f"| augmentation alone (2B views, included in b) | {ma:.4f} | {b / ma:,.0f} | {2 * b / ma:,.0f} |")
    lines += ["", f"Ratio (b)/(a): **{mp / ms:.3f}** (1.0 = the pipeline adds nothing to the encoder's own cost)  ",
              f"Peak memory: {peak:.2f} GiB ({'GPU allocated' if device.type == 'cuda' else 'process max RSS'})"]
    if device.type == "cuda":
        lines.append(f"Implied CIFAR-10 epoch (50,000 images): {50000 / (b / ms):.2f} s")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"bench_pretrain_{device.type}.md")
    if not args.quick or args.out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
