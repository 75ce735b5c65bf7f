"""Time of each part sslkit's train step adds to the encoder's forward+backward, each measured on its own.

The parts: the augmentation of 2B views (``bench_pretrain.py``'s, eager and with ``augment.compile``; for RGB
also Kornia's HSV hue kernel against sslkit's closed-form ``shift_hue``, which sslkit's colour jitter runs),
NT-Xent forward+backward, the LARS step through timm's multi-tensor (``foreach``) path, through its
per-parameter loop, through ``sslkit.optim.Lars`` (sslkit's on the CPU) and compiled (``optim.compile``), and the
finite check of loss and gradients: on its own pass (any other optimizer) and on the norms of ``Lars``'s update.
``Lars`` is also timed with the caches flushed before each step, as it finds them after a backward, beside the
memory traffic it cannot avoid, timed the same way: a dot product over every gradient and weight (the norms) and
one fused SGD pass over all parameters (the update), with no Python between them.
``eval/bench_pretrain.py`` measures the whole step; this script says where its overhead goes. Run:

    python eval/profile_step.py                          # 32×32 RGB, batch 256
    python eval/profile_step.py --channels 1 --size 28   # Fashion-MNIST's shape
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import kornia
import timm.optim
import torch
from bench_pretrain import bench_augment  # eval/bench_pretrain.py, beside this script
from machine import add_malloc_option, apply_malloc_option, at_least  # eval/machine.py

from sslkit.colour import shift_hue
from sslkit.config import OptimConfig
from sslkit.losses import nt_xent
from sslkit.models import ProjectionHead, SimCLR, build_encoder
from sslkit.optim import _fused_sgd_step, build_optimizer
from sslkit.step import make_views, step_if_finite


def timed(fn: Callable[[], object], repeats: int, before: Callable[[], object] | None = None) -> float:
    """Median milliseconds of ``repeats`` calls after two warm-up calls; ``before`` runs untimed ahead of each."""
    times = []
    for i in range(repeats + 2):
        if before is not None:
            before()
        t = time.perf_counter()
        fn()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def cache_flusher(mib: int = 128) -> Callable[[], None]:
    """A call that writes ``mib`` MiB, evicting the caches: what the optimizer finds after a backward, whose
    hundreds of MiB of activations and gradients pass through the caches before it runs."""
    junk = torch.empty(mib << 18)
    return lambda: junk.fill_(1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=at_least(2), default=256, help="images per step (2× views)")
    ap.add_argument("--size", type=at_least(8), default=32)
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--repeats", type=at_least(1), default=20)
    ap.add_argument("--threads", type=at_least(1), default=None)
    add_malloc_option(ap)
    args = ap.parse_args()
    apply_malloc_option(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    b, c, s = args.batch, args.channels, args.size
    torch.manual_seed(0)
    rows: list[tuple[str, float]] = []

    images = torch.randint(0, 256, (b, c, s, s), dtype=torch.uint8)
    for compile in (False, True):
        aug = bench_augment(s, c, (0.5,) * c, (0.25,) * c, compile=compile)
        rows.append((f"augmentation of {2 * b} views" + (", colour jitter compiled (augment.compile)" * compile),
                     timed(lambda a=aug: make_views(a, images, torch.channels_last), args.repeats)))
    if c == 3:
        x = torch.rand(2 * b, 3, s, s)
        factor = (torch.rand(2 * b) * 2 - 1) * math.pi
        rows.append(("  hue: kornia.enhance.adjust_hue (HSV round trip)",
                     timed(lambda: kornia.enhance.adjust_hue(x, factor), args.repeats)))
        rows.append(("  hue: sslkit.colour.shift_hue (what sslkit's jitter runs)",
                     timed(lambda: shift_hue(x, factor), args.repeats)))

    z1 = torch.randn(b, 128, requires_grad=True)
    z2 = torch.randn(b, 128, requires_grad=True)
    rows.append(("NT-Xent forward+backward", timed(lambda: nt_xent(z1, z2, 0.2).backward(), args.repeats)))

    model = SimCLR(build_encoder("resnet18", "imagenet", c), ProjectionHead(512, 512, 128))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = build_optimizer(model, OptimConfig(name="lars", lr=0.3), b)  # sslkit's Lars
    optimizer.step()  # the momentum buffers, shared with timm's optimizers below (the same state)
    for foreach in (True, False):
        timm_lars = timm.optim.Lars(optimizer.param_groups, **{**optimizer.defaults, "foreach": foreach})
        timm_lars.state = optimizer.state
        label = "multi-tensor (foreach)" if foreach else "per-parameter loop (torch's CPU default)"
        rows.append((f"LARS step, timm's {label}", timed(timm_lars.step, args.repeats)))
    t_loop = rows[-1][1]
    rows.append(("LARS step, sslkit.optim.Lars (its CPU update)", timed(optimizer.step, args.repeats)))
    flush = cache_flusher()
    rows.append(("  the same, caches flushed before each step (as after a backward)",
                 timed(optimizer.step, args.repeats, before=flush)))
    params = [p for p in model.parameters()]
    grads, bufs = [p.grad for p in params], [optimizer.state[p]["momentum_buffer"] for p in params]

    def floor() -> None:  # the update's memory traffic and no more: ‖g‖², ‖w‖² by one dot each, one fused SGD pass
        for t in grads + params:
            torch.dot(t.view(-1), t.view(-1))
        _fused_sgd_step(params, grads, bufs, lr=1e-9, momentum=0.9, weight_decay=1e-6, scale=0.5)

    with torch.no_grad():
        rows.append(("  its memory floor, flushed: a dot per g and per w, one fused SGD pass",
                     timed(floor, args.repeats, before=flush)))
    compiled = build_optimizer(model, OptimConfig(name="lars", lr=0.3, compile=True), b)
    rows.append(("LARS step, compiled (optim.compile)", timed(compiled.step, args.repeats)))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = torch.tensor(1.0)
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)  # step_if_finite's check for any other optimizer
    with torch.no_grad():
        t_check = timed(lambda: step_if_finite(loss, model, sgd, scaler), args.repeats) - timed(sgd.step, args.repeats)
        rows.append(("finite check, own pass (step_if_finite − step, SGD)", t_check))
        rows.append(("  timm's loop + that check (sslkit's CPU step until 2026-12-01)", t_loop + t_check))
        rows.append(("  sslkit.optim.Lars.step_if_finite (check on the update's norms)",
                     timed(lambda: step_if_finite(loss, model, optimizer, scaler), args.repeats)))

    n = sum(p.numel() for p in model.parameters())
    print(f"ResNet18 + head ({n / 1e6:.1f} M parameters), {c}×{s}×{s}, batch {b} = {2 * b} views, "
          f"{torch.get_num_threads()} threads; median of {args.repeats}")
    for label, ms in rows:
        print(f"{label:70s} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
