"""Optimizer and learning-rate schedule from the recipe, built from timm's parts.

LARS (You et al. 2017) as used by SimCLR: biases and normalisation parameters get neither weight decay nor
the trust-ratio adaptation. timm's ``Lars`` adapts only parameters whose group has weight decay (unless
``always_adapt``), and ``create_optimizer_v2(filter_bias_and_bn=True)`` puts every 1-D parameter (biases,
BN/LN weights) in a group with zero weight decay, so together they give exactly that exclusion.

With ``optim.compile`` the LARS update runs through ``torch.compile`` (:class:`CompiledLars`): the same timm
functional update, fused by inductor from a dozen passes over parameters, gradients and momentum into a few.
"""

from __future__ import annotations

import math

import timm.optim
import torch
from timm.optim.lars import lars
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.optim import Optimizer

from sslkit.compiled import CompiledOrEager
from sslkit.config import OptimConfig


def scaled_lr(cfg: OptimConfig, batch_size: int) -> float:
    """Peak learning rate: ``cfg.lr`` at batch 256, scaled linearly or by the square root (SimCLR appendix B.1)."""
    ratio = batch_size / 256
    return cfg.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scaling]


def build_optimizer(model: nn.Module, cfg: OptimConfig, batch_size: int) -> Optimizer:
    """LARS, SGD (momentum) or AdamW over ``model``'s parameters, weight decay off for 1-D parameters."""
    lr = scaled_lr(cfg, batch_size)
    kwargs = {}
    if cfg.name == "lars":
        kwargs = dict(momentum=cfg.momentum, trust_coeff=cfg.trust_coeff)
    elif cfg.name == "sgd":
        kwargs = dict(momentum=cfg.momentum, nesterov=False)
    # foreach left to torch: its multi-tensor path on CUDA, the per-parameter loop on the CPU, where the loop was
    # faster on two VMs of three (presumably as it keeps one tensor's weights, gradient and momentum in cache through
    # its whole update, while each multi-tensor op streams all 11 M parameters again): ResNet18's LARS step took 11.4
    # against 20.8 ms on the VM of 2026-11-28, 10.8 against 14.7 on 2026-11-27's, 13.8 against 20.4 the other way
    # round on 2026-11-23's (eval/profile_step.py). optim.compile beats both (5–8 ms).
    optimizer = timm.optim.create_optimizer_v2(model, opt=cfg.name if cfg.name != "sgd" else "momentum", lr=lr,
                                               weight_decay=cfg.weight_decay, filter_bias_and_bn=True, **kwargs)
    if cfg.compile and cfg.name == "lars":
        return CompiledLars(optimizer.param_groups, **optimizer.defaults)
    return optimizer


_HYPER = ("momentum", "dampening", "weight_decay", "nesterov", "trust_coeff", "eps", "trust_clip", "always_adapt")


@torch.no_grad()
def _lars_update(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor],
                 lr: torch.Tensor, hyper: dict) -> None:
    lars(params, grads, bufs, foreach=True, lr=lr, **hyper)


class CompiledLars(timm.optim.Lars):
    """timm's ``Lars`` whose multi-tensor update is compiled (one graph per parameter group).

    The learning rate enters as a 0-d tensor so that the schedule's new rate each step does not recompile.
    The first step, which creates the momentum buffers, runs eagerly. If compiling fails (on the CPU inductor
    needs a C++ compiler) it warns once and goes on eagerly: same update, unfused. State dicts are timm's.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._update = CompiledOrEager(_lars_update, "optim.compile: compiling the LARS update", fullgraph=True,
                                       dynamic=False)
        self._lr: dict[int, torch.Tensor] = {}  # per parameter group, on its device

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if closure is not None:
            return super().step(closure)
        work = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            bufs = [self.state[p].get("momentum_buffer") for p in params] if group["momentum"] else []
            if any(b is None for b in bufs):
                return super().step()  # the first step: timm creates the momentum buffers
            work.append((group, params, bufs))
        for i, (group, params, bufs) in enumerate(work):
            if not params:
                continue
            lr = self._lr.setdefault(i, torch.zeros((), device=params[0].device))
            lr.fill_(group["lr"])
            self._update(params, [p.grad for p in params], bufs, lr, {k: group[k] for k in _HYPER})
        return None


def build_scheduler(optimizer: Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> CosineLRScheduler:
    """Per-step linear warmup from ~0 to the peak, then cosine decay to ``min_lr_ratio`` × peak.

    The caller sets the rate for step ``t`` (0-based) with ``scheduler.step_update(t + 1)``, so the first
    step already learns (warmup rate peak/W, not 0), the last warmup step reaches the peak, and the cosine
    spans one step more than remains so that the final step does not run at exactly ``lr_min``.
    """
    total = max(1, steps_per_epoch * epochs)
    warmup = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    peak = optimizer.param_groups[0]["lr"]
    return CosineLRScheduler(optimizer, t_initial=total - warmup + 1, lr_min=cfg.min_lr_ratio * peak,
                             warmup_t=warmup, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
