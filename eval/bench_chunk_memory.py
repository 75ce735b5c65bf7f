"""Peak memory of one SimCLR step at a large batch, with and without gradient-cache chunking (train.chunk_size).

Each setting runs in a fresh process (so its peak resident memory, or CUDA peak allocation, is its own): one
full train step — both views, forward, NT-Xent over the whole batch, backward, LARS step — at ``--batch``
images (2 × batch views) of random 3×32×32 pixels, ResNet18 with the ``--stem`` stem. The chunked step's
gradients equal the full-batch ones (tests/test_step.py); only memory and time change. Writes
``eval/results/bench_chunk_memory_<device>.md``. Run:

    python eval/bench_chunk_memory.py                        # batch 4096, chunks of 256 and 1024, and none
    python eval/bench_chunk_memory.py --batch 512 --chunks 128   # a quick check
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import at_least, check_device, cpu_name  # eval/machine.py, beside this script

ROOT = Path(__file__).resolve().parent.parent


def one_step(batch: int, chunk: int | None, stem: str, device: str) -> dict:
    """Runs one step in this process and returns its time and peak memory."""
    import torch

    from sslkit.augment import SimCLRAugment
    from sslkit.config import OptimConfig
    from sslkit.models import ProjectionHead, SimCLR, build_encoder
    from sslkit.optim import build_optimizer
    from sslkit.step import make_views, simclr_backward, step_if_finite

    torch.manual_seed(0)
    dev = torch.device(device)
    model = SimCLR(build_encoder("resnet18", stem, 3), ProjectionHead(512, 2048, 128)).to(dev)
    model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, OptimConfig(name="lars", lr=0.3), batch)
    augment = SimCLRAugment(32, 3, [0.5] * 3, [0.25] * 3).to(dev)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=False)
    t = time.perf_counter()
    views = make_views(augment, images, torch.channels_last)
    loss = simclr_backward(model, views, 0.5, None, scaler, chunk)
    step_if_finite(loss, model, optimizer, scaler)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    return {"seconds": time.perf_counter() - t, "peak_gib": peak, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=at_least(2), default=4096, help="images per step (views: twice that)")
    parser.add_argument("--chunks", type=at_least(2), nargs="*", default=[256, 1024], help="chunk sizes (views) to try")
    parser.add_argument("--stem", choices=("imagenet", "cifar"), default="imagenet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-full", action="store_true", help="skip the unchunked step (e.g. when it cannot fit)")
    parser.add_argument("--out", type=Path, help="default: eval/results/bench_chunk_memory_<device>.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    check_device(parser, args.device)
    if args.child is not None:
        chunk = int(args.child) or None
        print(json.dumps(one_step(args.batch, chunk, args.stem, args.device)))
        return

    settings = ([] if args.no_full else [0]) + list(args.chunks)
    rows = []
    for chunk in settings:
        cmd = [sys.executable, __file__, "--batch", str(args.batch), "--stem", args.stem, "--device", args.device,
               "--child", str(chunk)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        label = "none (whole batch)" if chunk == 0 else f"{chunk} views"
        if done.returncode != 0:
            rows.append((label, None, None, None, f"failed (exit {done.returncode}): "
                         f"{(done.stderr.strip().splitlines() or ['?'])[-1][:120]}"))
        else:
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append((label, r["peak_gib"], r["seconds"], r["loss"], ""))
        print(rows[-1], flush=True)

    import torch

    where = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "process max RSS"
    lines = [f"# Peak memory of one SimCLR step, batch {args.batch:,} ({2 * args.batch:,} views), with and without "
             "chunking — " + args.device, "",
             f"Command: `python eval/bench_chunk_memory.py --batch {args.batch} --chunks "
             f"{' '.join(map(str, args.chunks))} --stem {args.stem} --device {args.device}`  ",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads; torch "
             f"{torch.__version__}  ",
             f"Setting: ResNet18 ({args.stem} stem), 3×32×32 random pixels, projection 512→2048→128, fp32, "
             f"channels_last, LARS; one step per fresh process; peak = {where}", "",
             "| chunk size | peak memory (GiB) | step seconds | loss | note |", "|---|---:|---:|---:|---|"]
    for label, peak, sec, loss, note in rows:
        lines.append(f"| {label} | {'' if peak is None else f'{peak:.2f}'} | "
                     f"{'' if sec is None else f'{sec:.1f}'} | {'' if loss is None else f'{loss:.5f}'} | {note} |")
    lines += ["", "The losses differ a little between rows because batch norm in train mode normalises each chunk "
              "with its own statistics; for a forward that does not depend on the chunking the gradients are the "
              "full-batch ones (tests/test_step.py, atol 1e-5). Augmentation and weights are the same in every row."]
    out = args.out or ROOT / "eval" / "results" / f"bench_chunk_memory_{args.device.split(':')[0]}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
