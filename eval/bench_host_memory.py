"""Page faults and time of the encoder's forward+backward under glibc's malloc defaults and under sslkit's settings.

``sslkit.host_memory.keep_freed_memory`` changes how the whole process allocates and cannot be undone, so each
setting runs in fresh processes, alternating: ``glibc`` (the C library's defaults), ``sslkit`` (freed memory kept:
no mmap, no trim, one arena) and ``thp`` (PyTorch's own ``THP_MEM_ALLOC_ENABLE=1``: 2 MiB pages for large tensors,
glibc's defaults otherwise). Each process times ``--steps`` forward+backward passes of ResNet18 + head (the model of
``bench_pretrain.py``) on random views after a warm-up, and counts page faults and CPU time with ``getrusage``.

    python eval/bench_host_memory.py                       # 3×32×32, batch 256, 6 processes per setting
    python eval/bench_host_memory.py --channels 1 --size 28
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import at_least, cpu_name, write_results  # eval/machine.py, beside this script

from sslkit.host_memory import chooses_allocator

MODES = ("glibc", "sslkit", "thp")


def child(mode: str, batch: int, channels: int, size: int, steps: int) -> dict[str, float]:
    """One process's measurement: median step time, and page faults, CPU time per step, peak RSS."""
    if mode == "sslkit":
        from sslkit.host_memory import keep_freed_memory

        assert keep_freed_memory(), "keep_freed_memory did not apply (not glibc, or a MALLOC_* setting)"
    import torch
    from bench_pretrain import bench_model

    model = bench_model("imagenet", channels).to(memory_format=torch.channels_last)
    x = torch.randn(2 * batch, channels, size, size).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        z1, z2 = model(x[:batch], x[batch:])
        (z1.square().mean() + z2.square().mean()).backward()

    for _ in range(3):
        step()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return dict(ms=statistics.median(times) * 1e3, faults=(r1.ru_minflt - r0.ru_minflt) / steps,
                sys_ms=(r1.ru_stime - r0.ru_stime) / steps * 1e3, user_ms=(r1.ru_utime - r0.ru_utime) / steps * 1e3,
                rss_gib=r1.ru_maxrss / 2**20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=at_least(2), default=256, help="images per step (2× views)")
    ap.add_argument("--size", type=at_least(8), default=32)
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--steps", type=at_least(1), default=12, help="timed steps per process")
    ap.add_argument("--processes", type=at_least(1), default=6, help="processes per setting")
    ap.add_argument("--out", default=None, help="results file (default eval/results/bench_host_memory_cpu.md)")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.channels, args.size, args.steps)))
        return

    clean = {k: v for k, v in os.environ.items() if not chooses_allocator(k) and k != "THP_MEM_ALLOC_ENABLE"}
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for i in range(args.processes):
        for mode in MODES:
            env = dict(clean, THP_MEM_ALLOC_ENABLE="1") if mode == "thp" else clean
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", mode, "--batch",
                                  str(args.batch), "--channels", str(args.channels), "--size", str(args.size),
                                  "--steps", str(args.steps)], env=env, capture_output=True, text=True, check=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[mode][-1]
            print(f"process {i + 1}/{args.processes} {mode:6s}: {r['ms']:6.1f} ms/step, {r['faults']:8,.0f} faults, "
                  f"sys {r['sys_ms']:5.1f} ms", flush=True)

    import torch

    def cell(mode: str, key: str, fmt: str) -> str:
        v = [r[key] for r in results[mode]]
        return f"{format(statistics.median(v), fmt)} ({format(min(v), fmt)}–{format(max(v), fmt)})"

    label = {"glibc": "glibc's defaults", "sslkit": "kept (sslkit.host_memory)",
             "thp": "THP_MEM_ALLOC_ENABLE=1 (glibc otherwise)"}
    lines = [
        "# Host memory: page faults of the encoder step — cpu", "",
        f"Command: `python eval/bench_host_memory.py --batch {args.batch} --channels {args.channels} --size "
        f"{args.size} --steps {args.steps} --processes {args.processes}`  ",
        f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads on {os.cpu_count()} cores; torch "
        f"{torch.__version__}  ",
        f"Setting: ResNet18 (imagenet stem) + head, forward+backward of {2 * args.batch} random {args.channels}×"
        f"{args.size}×{args.size} views, fp32, channels_last; per process the median of {args.steps} steps after 3 "
        f"of warm-up; {args.processes} processes per setting, alternating; median (range) over processes", "",
        "| host memory | ms/step | page faults/step | system CPU ms/step | user CPU ms/step | peak RSS GiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        cells = [cell(mode, "ms", ".1f"), cell(mode, "faults", ",.0f"), cell(mode, "sys_ms", ".0f"),
                 cell(mode, "user_ms", ".0f"), cell(mode, "rss_gib", ".2f")]
        lines.append(f"| {label[mode]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    write_results(text, args.out, "bench_host_memory_cpu.md", False)


if __name__ == "__main__":
    main()
