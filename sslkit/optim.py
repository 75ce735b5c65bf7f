"""Optimizer and learning-rate schedule from the recipe, built from timm's parts.

LARS (You et al. 2017) as used by SimCLR: biases and normalisation parameters get neither weight decay nor
the trust-ratio adaptation. timm's ``Lars`` adapts only parameters whose group has weight decay (unless
``always_adapt``), and ``create_optimizer_v2(filter_bias_and_bn=True)`` puts every 1-D parameter (biases,
BN/LN weights) in a group with zero weight decay, so together they give exactly that exclusion.
"""

from __future__ import annotations

import math

import timm.optim
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.optim import Optimizer

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
    # foreach: one multi-tensor kernel per operation instead of a Python loop over parameters; torch enables it
    # by default on CUDA only; on the CPU it takes the LARS step from 20 to 14 ms for ResNet18 (eval/profile_step.py).
    return timm.optim.create_optimizer_v2(model, opt=cfg.name if cfg.name != "sgd" else "momentum", lr=lr,
                                          weight_decay=cfg.weight_decay, filter_bias_and_bn=True, foreach=True,
                                          **kwargs)


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
