"""Throughput of sslkit's SimCLR train step against the encoder's own speed and against the usual pipeline.

(a) pure: encoder + head forward and backward on a random float batch of 2B views (no data, no augmentation,
    no loss, no optimizer) — the ceiling for the step;
(b) sslkit: the real train step of sslkit.trainer — index an in-memory uint8 batch on the device, two Kornia
    views, one forward, NT-Xent, backward, LARS step;
(c) the common baseline: the same model and NT-Xent loss fed the way most SimCLR code does it — a Dataset that
    turns each uint8 image into a PIL image and draws two views with torchvision.transforms.v2 (random resized
    crop, flip, colour jitter, grayscale with the same strengths as (b); ToImage, ToDtype, Normalize), a
    DataLoader with worker processes (persistent, pinned memory on CUDA), two separate view forwards and an SGD
    step. Memory format, precision and compilation are those of (b), so (b)/(c) measures the data path and
    the single forward, not other settings.

Images are the embedded Fashion-MNIST-mini training set, resized to ``--size`` and repeated to ``--channels``
(``--data random`` uses random pixels). The measurements alternate in one process (repeats interleaved so
machine noise hits all alike) and the median of the repeats is reported. The baseline is timed in its steady
state: its workers make, inside the timed window, as many batches as the window trains on (a warm-up of
workers × prefetch batches fills the queue first, and the batches still in flight at the end are drained
untimed), so their CPU time is counted where training pays it, and no worker runs on into (a) or (b). Run:

    python eval/bench_pretrain.py                      # CPU, batch 256, ImageNet stem, 32×32 RGB
    python eval/bench_pretrain.py --thread-sweep 1 2   # also (a) and (b) at each torch thread count
    python eval/bench_pretrain.py --compile-optimizer  # (b) with the LARS update compiled (optim.compile)
    python eval/bench_pretrain.py --compile-optimizer --compile-augment  # and the colour jitter (augment.compile)
    python eval/bench_pretrain.py --malloc glibc       # glibc's own malloc settings instead of sslkit's
    python eval/bench_pretrain.py --device cuda --batch 1024 --stem cifar --compile
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator

import kornia
import numpy as np
import PIL
import scipy.stats
import timm
import timm.optim
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2 as v2
from machine import add_malloc_option, apply_malloc_option, at_least, check_device, cpu_name, write_results
from PIL import Image
from rich.console import Console
from torch.utils.data import DataLoader, Dataset, Sampler

from sslkit.augment import SimCLRAugment
from sslkit.config import OptimConfig
from sslkit.data import load_source
from sslkit.losses import nt_xent
from sslkit.models import ProjectionHead, SimCLR, build_encoder
from sslkit.optim import build_optimizer
from sslkit.step import make_views, simclr_backward, step_if_finite
from sslkit.trainer import resolve_precision

TEMPERATURE = 0.2
CROP_SCALE, CROP_RATIO, FLIP_P, JITTER_P, JITTER_S, GRAY_P = (0.2, 1.0), (3 / 4, 4 / 3), 0.5, 0.8, 0.5, 0.2


def bench_model(stem: str, channels: int) -> SimCLR:
    """The benchmarked network: ResNet18 + a 512-512-128 projection head, seeded, in train mode (on the CPU)."""
    torch.manual_seed(0)
    return SimCLR(build_encoder("resnet18", stem, channels), ProjectionHead(512, 512, 128)).train()


def bench_augment(size: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...],
                  compile: bool = False) -> SimCLRAugment:
    """sslkit's view generator with the strengths every benchmark here uses (and (c)'s torchvision pipeline mirrors)."""
    return SimCLRAugment(size, channels, mean, std, crop_scale=CROP_SCALE, crop_ratio=CROP_RATIO, flip_p=FLIP_P,
                         jitter_p=JITTER_P, jitter_strength=JITTER_S, grayscale_p=GRAY_P if channels == 3 else 0.0,
                         blur_p=0.0, compile=compile)


def bench_trainee(channels: int, size: int, batch: int,
                  device: torch.device) -> tuple[SimCLR, torch.optim.Optimizer, torch.amp.GradScaler, SimCLRAugment]:
    """What (b) trains, with sslkit's defaults: the model (channels_last) on ``device``, sslkit's LARS, a disabled
    loss scaler and the view generator, as ``step_phases.py``, ``bench_progress.py`` and ``overlap_augment.py`` use
    them (``main`` here builds its own, for its compile and optimizer options)."""
    model = bench_model("imagenet", channels).to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(model, OptimConfig(name="lars", lr=0.3), batch)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    augment = bench_augment(size, channels, (0.5,) * channels, (0.25,) * channels).to(device)
    return model, optimizer, scaler, augment


def pure_forward(forward: Callable, x: torch.Tensor, amp: torch.autocast | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(a)'s forward: a batch of 2B views through encoder and head in one call, as in (b), split into its halves.

    Shape:
        x: (2B, C, S, S) -> (B, D), (B, D)
    """
    b = x.shape[0] // 2
    with amp or contextlib.nullcontext():
        z = forward(x)
    return z[:b], z[b:]


def pure_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """(a)'s loss: the mean square of the projections, the cheapest one that back-propagates through all of them."""
    return z1.float().square().mean() + z2.float().square().mean()


def random_batch(pool: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` images of ``pool`` drawn with replacement by ``generator`` (a CPU one), gathered on ``pool``'s device
    with ``index_select``, as the trainer gathers its batches."""
    idx = torch.randint(0, pool.shape[0], (batch,), generator=generator).to(pool.device)
    return pool.index_select(0, idx)


def sslkit_step(forward: Callable, model: SimCLR, augment: SimCLRAugment, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, pool: torch.Tensor, batch: int, generator: torch.Generator,
                fmt: torch.memory_format, amp: torch.autocast | None,
                chunk_size: int | None = None) -> Callable[[], None]:
    """(b): one of sslkit's train steps per call, on ``batch`` random images of the uint8 ``pool`` (on the device),
    with the trainer's calls: index, both views, forward, NT-Xent, backward, the finite check and LARS."""

    def step() -> None:
        views = make_views(augment, random_batch(pool, batch, generator), fmt)
        optimizer.zero_grad(set_to_none=True)
        loss = simclr_backward(forward, views, TEMPERATURE, amp, scaler, chunk_size)
        if not step_if_finite(loss, model, optimizer, scaler):  # the trainer's check, host sync included
            raise RuntimeError("non-finite loss")

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_images(kind: str, n: int, channels: int, size: int) -> torch.Tensor:
    """The benchmark's uint8 images: Fashion-MNIST-mini resized to ``size`` and repeated to ``channels``.

    Shape:
        -> (N, channels, size, size) uint8
    """
    if kind == "random":
        return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=torch.Generator())
    x = load_source("fashion-mnist-mini", "train").images[:n]
    if x.shape[-1] != size:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x.expand(-1, channels, -1, -1).contiguous()


# --- (c) the common baseline ------------------------------------------------------------------------------------


class TwoViewDataset(Dataset):
    """Per-sample PIL augmentation, as in most SimCLR code: image i → (view 1, view 2)."""

    def __init__(self, images: torch.Tensor, transform: Callable) -> None:
        x = images.permute(0, 2, 3, 1).numpy()  # HWC, as PIL wants it
        self.images = x[..., 0] if x.shape[-1] == 1 else x
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = Image.fromarray(self.images[i])
        return self.transform(img), self.transform(img)


class RandomBatches(Sampler[list[int]]):
    """``count`` batches of random indices, then stop: the loader yields exactly the batches it is timed on."""

    def __init__(self, n: int, batch: int, count: int, seed: int = 0) -> None:
        self.n, self.batch, self.count = n, batch, count
        self.g = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.count):
            yield torch.randint(0, self.n, (self.batch,), generator=self.g).tolist()

    def __len__(self) -> int:
        return self.count


def torchvision_transform(size: int, channels: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """SimCLR's augmentation written the usual way, with the strengths of (b)'s ``SimCLRAugment``."""
    s = JITTER_S
    jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s) if channels == 3 else v2.ColorJitter(0.8 * s, 0.8 * s)
    ops = [v2.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True),
           v2.RandomHorizontalFlip(FLIP_P), v2.RandomApply([jitter], p=JITTER_P)]
    if channels == 3:
        ops.append(v2.RandomGrayscale(GRAY_P))
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


class Baseline:
    """(c): the model fed by a DataLoader of per-sample PIL views, two view forwards, NT-Xent, SGD.

    Each timed window gets a fresh pass of the (persistent) workers over ``warm + steps + warm`` batches, where
    ``warm`` = workers × prefetch, the batches the loader keeps in flight. The first ``warm`` are consumed untimed
    (the queue fills); during the ``steps`` timed ones the workers make the batches that replace them, as they do
    in training, so their CPU time competes with the model's inside the window; the last ``warm`` (in flight when
    the window closes) are drained untimed, so that no worker is busy when (a) and (b) are timed. Until
    2026-12-02 the pass ended with the timed steps: every batch they used had been made while the untimed ones
    ran, the workers sat idle in the window, and (c) measured the model alone (about (a)).
    """

    PREFETCH = 2

    def __init__(self, model: SimCLR, compile: bool, dataset: Dataset, batch: int, steps: int, workers: int,
                 device: torch.device, fmt: torch.memory_format, amp: torch.autocast | None) -> None:
        self.model, self.device, self.fmt, self.amp = model, device, fmt, amp
        self.encoder = torch.compile(model.encoder) if compile else model.encoder
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)
        self.warm = max(1, workers * self.PREFETCH)
        sampler = RandomBatches(len(dataset), batch, self.warm + steps + self.warm)
        self.loader: DataLoader | None = DataLoader(
            dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=self.PREFETCH if workers else None)
        self.batches: Iterator | None = None

    def step(self) -> None:
        v1, v2_ = next(self.batches)
        v1 = v1.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt)
        v2_ = v2_.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt)
        self.optimizer.zero_grad(set_to_none=True)
        with self.amp or contextlib.nullcontext():
            z1 = self.model.head(self.encoder(v1))  # two separate view forwards, as the usual code does
            z2 = self.model.head(self.encoder(v2_))
        loss = nt_xent(z1, z2, TEMPERATURE)
        loss.backward()
        self.optimizer.step()
        loss.item()  # the usual per-step logging sync

    def start(self) -> None:
        """A new pass of the workers; the first ``warm`` steps run untimed."""
        self.batches = iter(self.loader)
        for _ in range(self.warm):
            self.step()

    def finish(self) -> None:
        """Drains the batches still in flight (untimed, not trained on): the workers are idle afterwards."""
        for _ in self.batches:
            pass

    def views_only(self) -> float:
        """Seconds per batch of the loader alone, no model running: one whole pass, its batches dropped."""
        t = time.perf_counter()
        count = sum(1 for _ in self.loader)
        return (time.perf_counter() - t) / count

    def close(self) -> None:
        self.batches = self.loader = None


# --- the benchmark ------------------------------------------------------------------------------------------------


def median_interval(ratios: list[float], digits: int = 3) -> str:
    """", 95 % interval a–b" of the median of per-repeat ratios (percentile bootstrap, 2,000 resamples, seeded).

    A VM's speed drifts over minutes; the ratio of two measurements within one repeat shares that drift, and the
    interval says how well their median is known from this many repeats. Empty below 5 repeats.
    """
    if len(ratios) < 5:
        return ""
    ci = scipy.stats.bootstrap((np.asarray(ratios),), np.median, n_resamples=2000, confidence_level=0.95,
                               method="percentile", random_state=0).confidence_interval
    return f" (95 % bootstrap interval {ci.low:.{digits}f}–{ci.high:.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=at_least(2), default=256, help="images per step (2× views)")
    ap.add_argument("--stem", default="imagenet", choices=["imagenet", "cifar"])
    ap.add_argument("--size", type=at_least(8), default=32)
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--data", default="fashion-mnist-mini", choices=["fashion-mnist-mini", "random"])
    ap.add_argument("--steps", type=at_least(1), default=3, help="steps per timed repeat")
    ap.add_argument("--repeats", type=at_least(1), default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile the models")
    ap.add_argument("--compile-optimizer", action="store_true",
                    help="(b) with optim.compile: the LARS update fused by torch.compile")
    ap.add_argument("--compile-augment", action="store_true",
                    help="(b) with augment.compile: the colour jitter's kernels fused by torch.compile")
    ap.add_argument("--lars", default="sslkit", choices=["sslkit", "timm"],
                    help="(b)'s optimizer: sslkit.optim.Lars (its CPU update, the finite check on its norms) or "
                         "timm's Lars with step_if_finite's own check (sslkit's CPU step before 2026-12-01)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--threads", type=at_least(1), default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--thread-sweep", type=at_least(1), nargs="*", default=[],
                    help="also time (a) and (b) at each of these torch thread counts")
    ap.add_argument("--workers", type=at_least(0), default=min(8, os.cpu_count() or 1),
                    help="DataLoader workers for (c)")
    ap.add_argument("--no-baseline", action="store_true", help="skip (c)")
    ap.add_argument("--chunk-size", type=at_least(2), default=None, help="gradient-cache chunk (views) for (b)")
    add_malloc_option(ap)
    ap.add_argument("--quick", action="store_true", help="1 step × 2 repeats (a smoke run)")
    ap.add_argument("--out", default=None, help="results file (default eval/results/bench_pretrain_<device>.md)")
    args = ap.parse_args()
    check_device(ap, args.device)
    if args.quick:
        args.steps, args.repeats = 1, 2
    kept = apply_malloc_option(args)  # before any tensor work, as in `sslkit`
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precision = resolve_precision(args.precision, device, Console(stderr=True))
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else None
    fmt = torch.channels_last
    torch.manual_seed(0)
    b, c, s = args.batch, args.channels, args.size
    mean, std = (0.5,) * c, (0.25,) * c

    def make_model() -> SimCLR:
        return bench_model(args.stem, c).to(device, memory_format=fmt)

    # (a) and (b): one model, sslkit's optimizer and augmentation, the images on the device.
    model = make_model()
    forward = torch.compile(model) if args.compile else model
    optimizer = build_optimizer(model, OptimConfig(name="lars", lr=0.3, compile=args.compile_optimizer), b)
    if args.lars == "timm" and not args.compile_optimizer:
        optimizer = timm.optim.Lars(optimizer.param_groups, **{**optimizer.defaults, "foreach": False})
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    augment = bench_augment(s, c, mean, std, compile=args.compile_augment).to(device)
    images = load_images(args.data, 10_000, c, s)
    pool = images.to(device)
    pure_x = torch.randn(2 * b, c, s, s, device=device).contiguous(memory_format=fmt)
    g = torch.Generator().manual_seed(0)

    def pure() -> None:
        model.zero_grad(set_to_none=True)
        pure_loss(*pure_forward(forward, pure_x, amp)).backward()

    step = sslkit_step(forward, model, augment, optimizer, scaler, pool, b, g, fmt, amp, args.chunk_size)

    def aug_only() -> None:
        make_views(augment, random_batch(pool, b, g), fmt)

    # (c): its own copy of the model, plain SGD, per-sample PIL views from DataLoader workers.
    base = None if args.no_baseline else Baseline(
        make_model(), args.compile, TwoViewDataset(images, torchvision_transform(s, c, mean, std)), b, args.steps,
        args.workers, device, fmt, amp)

    peaks: dict[str, float] = {}

    def timed(label: str, fn: Callable[[], None], steps: int) -> float:
        """Seconds per call of ``fn`` over ``steps`` calls; tracks the GPU's peak memory per measurement."""
        sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        dt = (time.perf_counter() - t) / steps
        if cuda:
            peaks[label] = max(peaks.get(label, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)
        return dt

    def timed_baseline() -> float:
        base.start()
        dt = timed("c", base.step, args.steps)
        base.finish()
        return dt

    print(f"warm-up on {device} (compile={args.compile})")
    for _ in range(2):  # allocator, kernels, compilation
        pure()
        step()
    if base is not None:
        timed_baseline()
    t_pure, t_step, t_aug, t_base = [], [], [], []
    for r in range(args.repeats):
        t_pure.append(timed("a", pure, args.steps))
        t_step.append(timed("b", step, args.steps))
        t_aug.append(timed("aug", aug_only, args.steps))
        if base is not None:
            t_base.append(timed_baseline())
        print(f"repeat {r + 1}/{args.repeats}: (a) {t_pure[-1]:.3f} s  (b) {t_step[-1]:.3f} s"
              + (f"  (c) {t_base[-1]:.3f} s" if t_base else ""))
    mp, ms, ma = statistics.median(t_pure), statistics.median(t_step), statistics.median(t_aug)
    mc = statistics.median(t_base) if t_base else None
    mv = statistics.median(base.views_only() for _ in range(3)) if base is not None else None

    sweep = []
    default_threads = torch.get_num_threads()
    for n in args.thread_sweep:
        torch.set_num_threads(n)
        pure()
        step()
        tp, ts = [], []
        for _ in range(args.repeats):
            tp.append(timed("a", pure, args.steps))
            ts.append(timed("b", step, args.steps))
        sweep.append((n, statistics.median(tp), statistics.median(ts)))
        print(f"threads {n}: (a) {sweep[-1][1]:.3f} s  (b) {sweep[-1][2]:.3f} s")
    torch.set_num_threads(default_threads)

    if base is not None:
        base.close()  # shuts the workers down, so that their peak memory is counted below
    main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20

    name = torch.cuda.get_device_name(device) if cuda else cpu_name()
    skip = {"out", "quick", "thread_sweep"} | ({"steps", "repeats"} if args.quick else set())
    cmd = "python eval/bench_pretrain.py " + " ".join(
        f"--{k.replace('_', '-')}" if isinstance(v, bool) else f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items() if v not in (None, False) and k not in skip)
    cmd += (" --quick" if args.quick else "") + (
        " --thread-sweep " + " ".join(map(str, args.thread_sweep)) if args.thread_sweep else "")

    def mem(label: str) -> str:
        return f" {peaks[label]:.2f} |" if cuda and label in peaks else ""

    lines = [
        f"# Pretraining step throughput — {device.type}",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {name}, {default_threads} torch threads on {os.cpu_count()} cores  ",
        f"Versions: torch {torch.__version__}, torchvision {torchvision.__version__}, kornia {kornia.__version__}, "
        f"timm {timm.__version__}, Pillow {PIL.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}  ",
        f"Setting: ResNet18 ({args.stem} stem), {c}×{s}×{s} ({args.data}), batch {b} images = {2 * b} views, "
        f"{precision}, channels_last, compile={args.compile}, optim.compile={args.compile_optimizer}, "
        f"augment.compile={args.compile_augment}, LARS: "
        + ("timm's, per-parameter loop, own finite check" if args.lars == "timm" and not args.compile_optimizer
           else "compiled" if args.compile_optimizer else "sslkit.optim.Lars")
        + ", host memory: "
        + ("freed blocks kept (sslkit.host_memory)" if kept else "the C library's malloc as the environment sets it")
        + (f", (b) in gradient-cache chunks of {args.chunk_size} views" if args.chunk_size else "")
        + f"; median of {args.repeats} repeats × {args.steps} steps, interleaved  ",
        (f"Baseline (c): torchvision.transforms.v2 on PIL images, DataLoader with {args.workers} persistent "
         f"worker{'s' * (args.workers != 1)} (prefetch {Baseline.PREFETCH}{', pinned memory' if cuda else ''}), "
         "two view forwards, SGD (momentum 0.9)" if base is not None else "Baseline (c): not run (--no-baseline)"),
        "",
        "| measurement | s/step | img/s | views/s |" + (" peak GiB |" if cuda else ""),
        "|---|---:|---:|---:|" + ("---:|" if cuda else ""),
    ]
    rows = [("(a) pure encoder+head fwd+bwd", mp, "a"), ("(b) sslkit train step", ms, "b")]
    if mc is not None:
        rows.append(("(c) baseline: torchvision PIL + DataLoader, two forwards", mc, "c"))
    rows.append(("augmentation alone (2B views, part of b)", ma, "aug"))
    if mv is not None:
        rows.append((f"(c)'s views alone: its DataLoader ({args.workers} workers), no model running", mv, "views"))
    for label, t, key in rows:
        lines.append(f"| {label} | {t:.4f} | {b / t:,.0f} | {2 * b / t:,.0f} |{mem(key)}")
    paired = [p / q for p, q in zip(t_pure, t_step, strict=True)]  # (a) and (b) of a repeat share its noise
    # The bold figure is the median of the per-repeat ratios, which the VM's changes of speed between repeats
    # sway less than the ratio of the two medians (printed after it).
    lines += ["", f"Ratio (b)/(a): **{statistics.median(paired):.3f}** (1.0 = the pipeline adds nothing to the "
              f"encoder's own cost), the median of the per-repeat ratios{median_interval(paired)}, range "
              f"{min(paired):.3f}–{max(paired):.3f}; ratio of the medians {mp / ms:.3f}  "]
    if mc is not None:
        paired_c = [p / q for p, q in zip(t_base, t_step, strict=True)]
        lines.append(f"Ratio (b)/(c): **{statistics.median(paired_c):.2f}** (sslkit's step against the common "
                     f"baseline), the median of the per-repeat ratios{median_interval(paired_c, 2)}; ratio of the "
                     f"medians {mc / ms:.2f}  ")
    if cuda:
        lines.append(f"Peak memory: GPU allocated per measurement (table); host process max RSS {main_rss:.2f} GiB  ")
    else:
        compiling = args.compile or args.compile_optimizer or args.compile_augment
        children = ", ".join(["the DataLoader workers"] * (base is not None)
                             + ["inductor's compile workers"] * compiling)
        measured = "a, b, c" if base is not None else "a, b"
        lines.append(f"Peak memory: main process max RSS {main_rss:.2f} GiB (all of {measured}); largest child process "
                     f"{worker_rss:.2f} GiB ({children or 'none'})  ")
    if cuda:
        lines.append(f"Implied CIFAR-10 epoch (50,000 images): {50000 / (b / ms):.2f} s")
    if sweep:
        lines += ["", "Torch intra-op threads (same process, after the main measurement):", "",
                  "| threads | (a) s/step | (a) img/s | (b) s/step | (b) img/s | (b)/(a) |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for n, tp, ts in sweep:
            lines.append(f"| {n} | {tp:.4f} | {b / tp:,.0f} | {ts:.4f} | {b / ts:,.0f} | {tp / ts:.3f} |")
    text = "\n".join(lines) + "\n"
    write_results(text, args.out, f"bench_pretrain_{device.type}.md", args.quick)


if __name__ == "__main__":
    main()
