"""The LARS update fused into the backward, against sslkit's step after it: does updating each parameter while its
gradient is still in cache take the optimizer's memory traffic off the step?

After the backward, ``sslkit.optim.Lars`` reads every gradient, weight and momentum buffer back from memory: 3.6–5.4
ms of its 4.5–6.6 ms step (``profile_step.py``). The usual cure is torch's post-accumulate-grad hook: each parameter
is updated (‖g‖, ‖w‖, trust ratio, the fused SGD kernel) the moment its gradient is final, while gradient and weight
are still in cache, and its gradient is dropped. Three forward+backward passes of ResNet18 + head on the same random
views (3×32×32, channels_last, fp32, (a)'s loss) alternate, each timed over ``--steps`` steps:

- (a) forward+backward alone;
- (b) the same, then ``Lars.step_if_finite`` (the trainer's call);
- (h) the same with the update in the hooks (no finite check: a non-finite gradient would already be applied).

It prints the medians and the paired medians of (b) − (a) and (h) − (a) with their 95 % bootstrap intervals, after
checking that one step of (h) gives (b)'s weights. Run: ``python eval/ab_in_backward.py [--repeats 40]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.stats
import torch
from bench_pretrain import bench_model, pure_loss  # eval/bench_pretrain.py, beside this script
from machine import add_malloc_option, apply_malloc_option, at_least, cpu_name  # eval/machine.py

from sslkit.config import OptimConfig
from sslkit.optim import Lars, _flat_views, _fused_sgd_step, build_optimizer


def trainee(batch: int) -> tuple[torch.nn.Module, Lars]:
    model = bench_model("imagenet", 3).to(memory_format=torch.channels_last)
    return model, build_optimizer(model, OptimConfig(name="lars", lr=0.3), batch)


def update_in_backward(model: torch.nn.Module, optimizer: Lars) -> None:
    """Hooks that give each parameter ``optimizer``'s update as soon as its gradient is final, then drop the gradient.
    Momentum buffers must exist (one ordinary step first); layouts must share one element order (they do here)."""
    group_of = {p: g for g in optimizer.param_groups for p in g["params"]}

    def hook(p: torch.Tensor) -> None:
        group = group_of[p]
        w, g, buf = _flat_views(p, p.grad, optimizer.state[p]["momentum_buffer"])
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        if group["always_adapt"]:
            w_norm, g_norm = float(torch.dot(w, w).sqrt()), float(torch.dot(g, g).sqrt())
            trust = group["trust_coeff"] * w_norm / (g_norm + wd * w_norm + group["eps"])
            _fused_sgd_step([w], [g], [buf], lr, momentum, wd, trust if w_norm > 0 and g_norm > 0 else 1.0)
        else:
            _fused_sgd_step([w], [g], [buf], lr, momentum, 0.0, 1.0)
        p.grad = None

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(hook)


def paired(diffs: list[float]) -> str:
    ci = scipy.stats.bootstrap((np.asarray(diffs),), np.median, n_resamples=2000, confidence_level=0.95,
                               method="percentile", random_state=0).confidence_interval
    return f"{statistics.median(diffs) * 1e3:+.2f} ms (95 % interval {ci.low * 1e3:+.2f} to {ci.high * 1e3:+.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=at_least(2), default=256, help="images per step (2× views)")
    ap.add_argument("--repeats", type=at_least(5), default=40)
    ap.add_argument("--steps", type=at_least(1), default=3, help="steps per timed call")
    add_malloc_option(ap)
    args = ap.parse_args()
    apply_malloc_option(args)
    b = args.batch
    torch.manual_seed(0)
    x = torch.randn(2 * b, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    def backward(model: torch.nn.Module) -> torch.Tensor:
        loss = pure_loss(*model(x[:b], x[b:]))
        loss.backward()
        return loss.detach()

    (a_model, _), (b_model, b_opt), (h_model, h_opt) = trainee(b), trainee(b), trainee(b)
    for model, opt in ((b_model, b_opt), (h_model, h_opt)):  # the first step makes the momentum buffers
        opt.zero_grad(set_to_none=True)
        backward(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
    update_in_backward(h_model, h_opt)
    assert b_opt.step_if_finite(backward(b_model))
    backward(h_model)
    pairs = zip(b_model.parameters(), h_model.parameters(), strict=True)
    gap = max(float((p - q).detach().abs().max()) for p, q in pairs)
    print(f"one step, largest weight difference between (b) and (h): {gap:.2e}")
    assert gap < 1e-5, "the update in the hooks is not Lars's update"

    def step_a() -> None:
        a_model.zero_grad(set_to_none=True)
        backward(a_model)

    def step_b() -> None:
        b_opt.zero_grad(set_to_none=True)
        assert b_opt.step_if_finite(backward(b_model))

    steps = {"a": step_a, "b": step_b, "h": lambda: backward(h_model)}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(args.repeats + 1):
        for k, fn in steps.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            if r:  # the first round warms up
                times[k].append((time.perf_counter() - t) / args.steps)
    print(f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; batch {b} "
          f"(3×32×32, fp32), median of {args.repeats} repeats × {args.steps} steps, interleaved")
    for k, label in (("a", "(a) forward+backward"), ("b", "(b) + Lars.step_if_finite"), ("h", "(h) LARS in hooks")):
        print(f"{label}: {statistics.median(times[k]) * 1e3:.1f} ms a step")
    for k in ("b", "h"):
        print(f"({k}) − (a), paired: {paired([t - a for t, a in zip(times[k], times['a'], strict=True)])}")


if __name__ == "__main__":
    main()
