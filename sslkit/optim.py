"""Optimizer and learning-rate schedule from the recipe, built from timm's parts.

LARS (You et al. 2017) as used by SimCLR: biases and normalisation parameters get neither weight decay nor
the trust-ratio adaptation. timm's ``Lars`` adapts only parameters whose group has weight decay (unless
``always_adapt``), and ``create_optimizer_v2(filter_bias_and_bn=True)`` puts every 1-D parameter (biases,
BN/LN weights) in a group with zero weight decay, so together they give exactly that exclusion.

On the CPU the LARS step is :class:`Lars`: timm's optimizer with a leaner update there, whose gradient norms
also serve the trainer's finite check. With ``optim.compile`` the LARS update runs through ``torch.compile``
(:class:`CompiledLars`): the same timm functional update, fused by inductor from a dozen passes over parameters,
gradients and momentum into a few.
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
    optimizer = timm.optim.create_optimizer_v2(model, opt=cfg.name if cfg.name != "sgd" else "momentum", lr=lr,
                                               weight_decay=cfg.weight_decay, filter_bias_and_bn=True, **kwargs)
    if cfg.name == "lars":  # timm's parameter groups (weight decay off for 1-D parameters), sslkit's step
        return (CompiledLars if cfg.compile else Lars)(optimizer.param_groups, **optimizer.defaults)
    return optimizer


class Lars(timm.optim.Lars):
    """timm's ``Lars`` with a leaner update on the CPU, whose gradient norms also tell whether a step is finite.

    On CUDA, for a closure, for options sslkit does not set (dampening, Nesterov, LARC clipping, ``always_adapt``)
    and on the first step (which creates the momentum buffers) this is timm's step. On the CPU otherwise: the
    norms the update needs come from two multi-tensor norms (‖g‖ of every gradient, ‖w‖ of the adapted weights),
    the trust ratios q = η‖w‖ / (‖g‖ + wd·‖w‖ + ε) (1 where a norm is 0) from one small tensor, and then each
    adapted parameter gets ``buf ← m·buf + q·g + q·wd·w`` and ``w ← w − lr·buf`` in place, one parameter at a time
    while its tensors are in cache; the parameters without weight decay (biases, norms) get timm's multi-tensor
    momentum step. Against timm's per-parameter loop (torch's choice on the CPU) this saves the gradient copy it
    allocates for every weight, the ten or so ops on 0-d tensors its trust ratio takes per parameter, and the
    finite check's own pass over all gradients (``eval/profile_step.py`` times timm's two paths, this one and the
    compiled one). Same update as timm's up to rounding, same state dict: tests hold both to a naive LARS and to
    each other.
    """

    def _cpu_groups(self) -> list[tuple[dict, list[torch.Tensor]]] | None:
        """Per group, its parameters with gradients, when the lean update applies; else None."""
        groups = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        for group, params in groups:
            if (not group["momentum"] or group["dampening"] or group["nesterov"] or group["trust_clip"]
                    or group["always_adapt"] or torch.is_tensor(group["lr"])):
                return None
            if any(p.device.type != "cpu" or "momentum_buffer" not in self.state[p] for p in params):
                return None
        return groups

    def _grad_norms(self) -> list[torch.Tensor]:
        """‖g‖ of every gradient, in ``_cpu_groups``' order."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        return torch._foreach_norm(grads) if grads else []

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        groups = None if closure is not None else self._cpu_groups()
        if groups is None:
            return super().step(closure)
        self._update(groups, self._grad_norms())
        return None

    @torch.no_grad()
    def step_if_finite(self, loss: torch.Tensor) -> bool:
        """Steps unless ``loss`` or any gradient is NaN/Inf, which leaves everything as it was; returns whether it did.

        The check is one host synchronisation over the gradient norms the update then uses.
        """
        g_norms = self._grad_norms()
        if not bool(torch.isfinite(torch.stack([loss.detach().float().reshape(()), *g_norms])).all()):
            return False
        groups = self._cpu_groups()
        if groups is None:
            super().step()
        else:
            self._update(groups, g_norms)
        return True

    def _update(self, groups: list[tuple[dict, list[torch.Tensor]]], g_norms: list[torch.Tensor]) -> None:
        start = 0
        for group, params in groups:
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            norms = g_norms[start:start + len(params)]
            start += len(params)
            if not wd:  # timm: no trust ratio where the group has no weight decay
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads)
                torch._foreach_add_(params, bufs, alpha=-lr)
                continue
            w = torch.stack(torch._foreach_norm(params))
            g = torch.stack(norms)
            trust = group["trust_coeff"] * w / (g + w * wd + group["eps"])
            trust = torch.where((w > 0) & (g > 0), trust, 1.0).tolist()
            for p, grad, buf, q in zip(params, grads, bufs, trust, strict=True):
                buf.mul_(momentum).add_(grad, alpha=q).add_(p, alpha=q * wd)
                p.add_(buf, alpha=-lr)


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
