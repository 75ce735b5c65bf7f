"""Optimizer and learning-rate schedule from the recipe, built from timm's parts.

LARS (You et al. 2017) as used by SimCLR: biases and normalisation parameters get neither weight decay nor
the trust-ratio adaptation; every other weight gets both, the adaptation whatever the weight decay. timm's ``Lars``
adapts a group that has weight decay or ``always_adapt``, so :func:`lars_param_groups` makes two groups: the 1-D
parameters (biases, BN/LN weights) without either, the rest with the recipe's weight decay and ``always_adapt``.
(timm's ``create_optimizer_v2(filter_bias_and_bn=True)`` makes the two groups only for a non-zero weight decay, and
with one group at weight decay 0 its LARS would adapt nothing: plain momentum SGD at LARS's learning rates.)

On the CPU the LARS step is :class:`Lars`: timm's optimizer with a leaner update there (one pass of torch's fused
SGD kernel per parameter), whose gradient norms also serve the trainer's finite check. With ``optim.compile``
the LARS update runs through ``torch.compile`` (:class:`CompiledLars`): the same timm functional update, fused
by inductor from a dozen passes over parameters, gradients and momentum into a few.
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
    if cfg.name == "lars":
        return (CompiledLars if cfg.compile else Lars)(lars_param_groups(model, cfg.weight_decay), lr=lr,
                                                       momentum=cfg.momentum, trust_coeff=cfg.trust_coeff)
    kwargs = dict(momentum=cfg.momentum, nesterov=False) if cfg.name == "sgd" else {}
    return timm.optim.create_optimizer_v2(model, opt=cfg.name if cfg.name != "sgd" else "momentum", lr=lr,
                                          weight_decay=cfg.weight_decay, filter_bias_and_bn=True, **kwargs)


def lars_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """LARS's two groups, split by timm's ``param_groups_weight_decay`` (its ``filter_bias_and_bn`` rule): the 1-D
    parameters and biases with neither weight decay nor the trust ratio; every other parameter with
    ``weight_decay`` and the trust ratio (``always_adapt``, so that it applies at weight decay 0 too). timm's
    function is asked for a decay of 1, a marker: at 0 it would not split the parameters at all."""
    groups = timm.optim.param_groups_weight_decay(model, weight_decay=1.0)
    for group in groups:
        adapted = group["weight_decay"] != 0
        group.update(weight_decay=weight_decay if adapted else 0.0, always_adapt=adapted)
    return groups


class Lars(timm.optim.Lars):
    """timm's ``Lars`` with a leaner update on the CPU, whose gradient norms also tell whether a step is finite.

    On CUDA, for a closure, for options sslkit does not set (dampening, Nesterov, LARC clipping)
    and on the first step (which creates the momentum buffers) this is timm's step. On the CPU otherwise:
    ‖g‖ of every gradient and ‖w‖ of every adapted weight come from BLAS dot products (``torch.dot`` on a flat
    view: half the time of torch's norms, which read the tensor at about half the memory bandwidth; ‖w‖ is taken
    right after the weight's previous update, while it is still in cache, and kept until it is used), the trust
    ratios q = η‖w‖ / (‖g‖ + wd·‖w‖ + ε) (1 where a norm is 0) from one small tensor, and then every parameter
    gets one pass of torch's fused SGD kernel (the op of ``torch.optim.sgd.sgd(fused=True)``): for an adapted
    weight, ``buf ← m·buf + q·(g + wd·w)`` and ``w ← w − lr·buf`` (q enters as the kernel's dampening 1 − q, wd
    as its weight decay); for the parameters without weight decay (biases, norms) plain momentum SGD, as timm has
    it. Against timm's per-parameter loop (torch's choice on the CPU) this reads each tensor once and writes the
    weight and its buffer once, instead of about five times each, allocates no gradient copies, skips the ten or
    so ops on 0-d tensors its trust ratio takes per parameter, and gives the finite check its norms
    (``eval/profile_step.py`` times timm's two paths, this one and the compiled one). Same update as timm's up to
    rounding, same state dict: tests hold both to a naive LARS and to each other.

    Gradients are only read: after a step they hold what the backward made. The kernel runs on flat views of the
    three tensors, which must share one element order: a parameter whose gradient or momentum buffer is laid out
    otherwise (say, a buffer restored from a checkpoint of a model in another memory format) gets the same update
    from four in-place ops instead.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # p -> (p._version, p.data_ptr(), ‖p‖²) right after its update
        self._w_norms: dict[torch.Tensor, tuple[int, int, torch.Tensor]] = {}

    def _cpu_work(self) -> list[tuple[dict, list[torch.Tensor], list[list[torch.Tensor] | None]]] | None:
        """Per group, its parameters with gradients and the flat views of each one's weight, gradient and momentum
        buffer (:func:`_flat_views`; None where their layouts differ), when the lean update applies; else None.
        Made once a step: the gradient norms, the update and the kept weight norms all use these views."""
        work = []
        for group in self.param_groups:
            if (not group["momentum"] or group["dampening"] or group["nesterov"] or group["trust_clip"]
                    or torch.is_tensor(group["lr"])):
                return None
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.device.type != "cpu" or "momentum_buffer" not in self.state[p] for p in params):
                return None
            work.append((group, params, [_flat_views(p, p.grad, self.state[p]["momentum_buffer"]) for p in params]))
        return work

    def _grad_norms(self, work: list | None = None) -> torch.Tensor:
        """‖g‖ of every gradient, in parameter-group order (a 1-D tensor), on ``work``'s flat views where given."""
        if work is None:
            return _norms([p.grad for g in self.param_groups for p in g["params"] if p.grad is not None])
        squares = [torch.dot(f[1], f[1]) if f is not None else _square_norm(p.grad)
                   for _, params, flat in work for p, f in zip(params, flat, strict=True)]
        return torch.stack(squares).sqrt() if squares else torch.zeros(0)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        work = None if closure is not None else self._cpu_work()
        if work is None:
            return super().step(closure)
        self._update(work, self._grad_norms(work))
        return None

    @torch.no_grad()
    def step_if_finite(self, loss: torch.Tensor) -> bool:
        """Steps unless ``loss`` or any gradient is NaN/Inf, which leaves everything as it was; returns whether it did.

        The check is one host synchronisation over the gradient norms the update then uses.
        """
        work = self._cpu_work()
        g_norms = self._grad_norms(work)
        if not bool(torch.isfinite(torch.cat([loss.detach().float().reshape(1), g_norms.to(loss.device)])).all()):
            return False
        if work is None:
            super().step()
        else:
            self._update(work, g_norms)
        return True

    def _update(self, work: list[tuple[dict, list[torch.Tensor], list[list[torch.Tensor] | None]]],
                g_norms: torch.Tensor) -> None:
        start = 0
        for group, params, flat in work:
            if not params:
                continue
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            g = g_norms[start:start + len(params)]
            start += len(params)
            # The fused kernel gets flat views: it would copy a channels_last tensor to a contiguous one and back.
            if not wd and not group["always_adapt"]:  # timm: a trust ratio only with weight decay or always_adapt
                if all(f is not None for f in flat):
                    _fused_sgd_step(*(list(views) for views in zip(*flat, strict=True)), lr, momentum, 0.0, 1.0)
                else:
                    bufs = [self.state[p]["momentum_buffer"] for p in params]
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, [p.grad for p in params])
                    torch._foreach_add_(params, bufs, alpha=-lr)
                continue
            w = self._weight_norms(params)
            trust = group["trust_coeff"] * w / (g + w * wd + group["eps"])
            trust = torch.where((w > 0) & (g > 0), trust, 1.0)
            for p, f, q in zip(params, flat, trust.tolist(), strict=True):
                if f is not None:
                    _fused_sgd_step(*([view] for view in f), lr, momentum, wd, q)
                    self._w_norms[p] = (p._version, p.data_ptr(), torch.dot(f[0], f[0]))  # while p is in cache
                else:
                    buf = self.state[p]["momentum_buffer"]
                    buf.mul_(momentum).add_(p.grad, alpha=q).add_(p, alpha=q * wd)
                    p.add_(buf, alpha=-lr)

    def _weight_norms(self, params: list[torch.Tensor]) -> torch.Tensor:
        """‖w‖ of each parameter: the square taken right after its last update, while it was in cache, where the
        parameter has not changed since; else computed now. Unchanged means the same memory and the same version
        counter, which every in-place write to the parameter or a view of it bumps (``load_state_dict``'s copy,
        for one); writes through ``.data`` bypass the counter, and torch's fused SGD kernel does not bump it,
        which is why the version is recorded after the kernel."""
        squares = []
        for p in params:
            version, address, square = self._w_norms.get(p, (None, None, None))
            kept = version == p._version and address == p.data_ptr()
            squares.append(square if kept else _square_norm(p))
        return torch.stack(squares).sqrt()


def _fused_sgd_step(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor], lr: float,
                    momentum: float, weight_decay: float, scale: float) -> None:
    """One call of torch's fused SGD kernel on CPU tensors with momentum buffers: for each tensor,
    ``buf ← momentum·buf + scale·(g + weight_decay·w)`` and ``w ← w − lr·buf``; the gradient is only read.

    ``scale`` enters as the kernel's dampening, 1 − scale: the LARS trust ratio applied without the kernel's gradient
    scale, which would write the scaled gradient back (a pass of stores over every gradient). The op is the one of
    ``torch.optim.sgd.sgd(fused=True)``, called directly, without the functional wrapper's per-call grouping of
    tensors by device and dtype and its checks.
    """
    torch._fused_sgd_(params, grads, bufs, weight_decay=weight_decay, momentum=momentum, lr=lr,
                      dampening=1.0 - scale, nesterov=False, maximize=False, is_first_step=False, grad_scale=None,
                      found_inf=None)


def _flat_views(*tensors: torch.Tensor) -> list[torch.Tensor] | None:
    """1-D views of the tensors' memory, in one element order for all; None where their layouts differ or have none.

    Contiguous tensors give ``view(-1)``, channels_last ones (none of them contiguous) the flat view of their
    NHWC permutation; a tensor that is both (size-1 dimensions) is contiguous, and its two orders are the same.
    """
    if all(t.is_contiguous() for t in tensors):
        return [t.view(-1) for t in tensors]
    if all(t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) for t in tensors):
        return [t.permute(0, 2, 3, 1).view(-1) for t in tensors]  # views: the kernel's writes land in the tensors
    return None


def _square_norm(t: torch.Tensor) -> torch.Tensor:
    """‖t‖² (a 0-d tensor), from a BLAS dot product over the tensor's flat view where it has one."""
    flat = _flat_views(t)
    return torch.linalg.vector_norm(t).square() if flat is None else torch.dot(flat[0], flat[0])


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """‖t‖ of each tensor as a 1-D tensor (see :func:`_square_norm`)."""
    if not tensors:
        return torch.zeros(0)
    return torch.stack([_square_norm(t) for t in tensors]).sqrt()


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
