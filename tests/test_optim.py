"""The optimizer and schedule against the formulas they implement, written out naively here."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslkit.config import OptimConfig
from sslkit.optim import CompiledLars, Lars, build_optimizer, build_scheduler, scaled_lr


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def reference_lars(params: dict[str, torch.Tensor], grads: list[dict[str, torch.Tensor]], lr: float, wd: float,
                   momentum: float, eta: float) -> dict[str, torch.Tensor]:
    """LARS as in You et al. 2017 / SimCLR: for weight matrices, g ← η‖w‖/(‖g‖ + wd‖w‖) · (g + wd·w); biases
    and normalisation parameters (every 1-D tensor) get neither weight decay nor the trust ratio; then heavy-ball
    momentum (the first buffer is the first update) and w ← w − lr·buffer."""
    w = {k: v.clone().double() for k, v in params.items()}
    buf: dict[str, torch.Tensor] = {}
    for step_grads in grads:
        for k in w:
            g = step_grads[k].double()
            if w[k].ndim > 1:
                trust = eta * w[k].norm() / (g.norm() + wd * w[k].norm())
                g = trust * (g + wd * w[k])
            buf[k] = g.clone() if k not in buf else momentum * buf[k] + g
            w[k] = w[k] - lr * buf[k]
    return w


@pytest.mark.parametrize("wd", [1e-3, 0.0])  # at weight decay 0 the weights still get the trust ratio
def test_lars_step_matches_the_reference_and_excludes_biases_and_norms(wd: float) -> None:
    model = small_model()
    cfg = OptimConfig(name="lars", lr=0.8, weight_decay=wd, momentum=0.9, trust_coeff=0.001)
    opt = build_optimizer(model, cfg, batch_size=512)  # linear scaling: lr 1.6
    assert opt.param_groups[0]["lr"] == pytest.approx(1.6)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    grads = [{k: torch.randn(v.shape, generator=g) for k, v in start.items()} for _ in range(3)]
    for step_grads in grads:
        for k, p in model.named_parameters():
            p.grad = step_grads[k].clone()
        opt.step()
    want = reference_lars(start, grads, lr=1.6, wd=wd, momentum=0.9, eta=0.001)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), want[k], rtol=1e-5, atol=1e-7, msg=k)
    # The exclusion is real: a 1-D parameter moved by lr × momentum-SGD of its raw gradients, far more than the
    # trust ratio (η = 0.001) lets a weight matrix move.
    moved = {k: (p.detach() - start[k]).norm() / start[k].norm().clamp_min(1e-12) for k, p in model.named_parameters()}
    assert moved["1.weight"] > 100 * moved["0.weight"]
    groups = [(len(group["params"]), group["weight_decay"], group["always_adapt"]) for group in opt.param_groups]
    assert groups == [(3, 0.0, False), (2, wd, True)]  # BN weight and bias, linear bias; conv and linear weights


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_other_optimizers_keep_weight_decay_off_1d_parameters(name: str) -> None:
    opt = build_optimizer(small_model(), OptimConfig(name=name, lr=0.1, weight_decay=0.05), batch_size=256)
    for group in opt.param_groups:
        one_d = all(p.ndim <= 1 for p in group["params"])
        assert group["weight_decay"] == (0.0 if one_d else 0.05)


def test_learning_rate_scaling() -> None:
    assert scaled_lr(OptimConfig(lr=0.3, lr_scaling="linear"), 1024) == pytest.approx(1.2)
    assert scaled_lr(OptimConfig(lr=0.3, lr_scaling="sqrt"), 1024) == pytest.approx(0.6)
    assert scaled_lr(OptimConfig(lr=0.3, lr_scaling="none"), 1024) == pytest.approx(0.3)


def test_warmup_then_cosine_per_step() -> None:
    model = small_model()
    cfg = OptimConfig(name="sgd", lr=1.0, lr_scaling="none", warmup_epochs=2, min_lr_ratio=0.1)
    opt = build_optimizer(model, cfg, batch_size=256)
    steps_per_epoch, epochs = 10, 6
    sched = build_scheduler(opt, cfg, steps_per_epoch, epochs)
    total, warmup, peak, low = steps_per_epoch * epochs, 2 * steps_per_epoch, 1.0, 0.1
    lrs = []
    for t in range(total):
        sched.step_update(t + 1)  # as the trainer does before step t
        lrs.append(opt.param_groups[0]["lr"])
    for t in range(warmup):  # linear from peak/W at the first step to the peak at the last warm-up step
        assert lrs[t] == pytest.approx(peak * (t + 1) / warmup)
    span = total - warmup + 1
    for t in range(warmup, total):  # cosine over what remains, never reaching the floor inside the run
        u = t + 1 - warmup
        assert lrs[t] == pytest.approx(low + 0.5 * (peak - low) * (1 + math.cos(math.pi * u / span)))
    assert all(a >= b for a, b in zip(lrs[warmup - 1:], lrs[warmup:], strict=False))
    assert low < lrs[-1] < low + 0.01


def _lars_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    """Steps with seeded gradients and a falling rate, as the schedule gives."""
    for i in steps:
        g = torch.Generator().manual_seed(100 + i)
        for group in opt.param_groups:
            group["lr"] = 1.6 * (1 - i / 8)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


def test_lars_cpu_update_equals_timm_step_and_falls_back_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm.optim

    cfg = OptimConfig(name="lars", lr=0.8, weight_decay=1e-3)
    timm_model, model = small_model(), small_model()
    reference = timm.optim.Lars(build_optimizer(timm_model, cfg, batch_size=256).param_groups, momentum=0.9,
                                trust_coeff=0.001, foreach=False)
    opt = build_optimizer(model, cfg, batch_size=256)
    assert type(opt) is Lars
    timm_steps = []
    real_step = timm.optim.Lars.step
    monkeypatch.setattr(timm.optim.Lars, "step", lambda self, closure=None: timm_steps.append(self) or
                        real_step(self, closure))
    for m, o in ((timm_model, reference), (model, opt)):
        _lars_steps(m, o, range(1))
        with torch.no_grad():  # a zero weight matrix: a trust ratio of 1 where a norm is 0, as timm has it
            m[3].weight.zero_()
        _lars_steps(m, o, range(1, 6))
    assert sum(s is opt for s in timm_steps) == 1  # only the first step, which creates the momentum buffers
    for (k, a), b in zip(timm_model.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7, msg=k)
    assert reference.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    for group in opt.param_groups:  # an option the lean update does not cover: timm's step, unchanged
        group["nesterov"] = True
    opt.step()
    assert sum(s is opt for s in timm_steps) == 2


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "buffers_contiguous"])
def test_lars_cpu_update_matches_the_reference_in_every_memory_layout(layout: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused kernel runs on flat views of weight, gradient and buffer; where their element orders differ
    (buffers made before the model went channels_last) the update falls back to in-place ops: same result, and the
    gradients are left as they were."""
    import sslkit.optim

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1, bias=False), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 5))
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, OptimConfig(name="lars", lr=0.8, weight_decay=1e-3), batch_size=256)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(2)
    grads = [{k: torch.randn(v.shape, generator=g) for k, v in start.items()} for _ in range(4)]
    fused: list[int] = []
    real_step = sslkit.optim._fused_sgd_step
    monkeypatch.setattr(sslkit.optim, "_fused_sgd_step", lambda params, *a: fused.append(len(params)) or
                        real_step(params, *a))
    for i, step_grads in enumerate(grads):
        if i == 1 and layout == "buffers_contiguous":
            model = model.to(memory_format=torch.channels_last)  # the same parameters, laid out anew
        for k, p in model.named_parameters():  # gradients laid out like their parameters, as autograd makes them
            p.grad = torch.empty_like(p).copy_(step_grads[k])
        opt.step()
        for k, p in model.named_parameters():  # the update only reads the gradients
            assert torch.equal(p.grad, step_grads[k]), k
    want = reference_lars(start, grads, lr=0.8, wd=1e-3, momentum=0.9, eta=0.001)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), want[k], rtol=1e-5, atol=1e-7, msg=k)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last) == (layout != "contiguous")
    # Per step after the first (timm's): one fused call for the 1-D group, one per weight it can take flat. The
    # 3×3 conv's contiguous buffer does not match its channels_last weight; the 1×1 conv's orders coincide.
    per_step = 1 + (2 if layout == "buffers_contiguous" else 3)
    assert len(fused) == 3 * per_step


def test_lars_weight_norms_kept_from_the_last_update_are_dropped_when_a_weight_changes() -> None:
    """The CPU update keeps each weight's norm from its last update; a weight written since (here scaled in place,
    as a checkpoint load writes it) gets its norm anew: the step equals that of an optimizer with no kept norms."""
    import copy

    torch.manual_seed(0)
    model = small_model()
    opt = build_optimizer(model, OptimConfig(name="lars", lr=0.8, weight_decay=1e-3), batch_size=256)
    g = torch.Generator().manual_seed(3)
    grads = [{k: torch.randn(v.shape, generator=g) for k, v in model.named_parameters()} for _ in range(3)]
    for step_grads in grads[:2]:
        for k, p in model.named_parameters():
            p.grad = step_grads[k].clone()
        opt.step()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    fresh_model = copy.deepcopy(model)
    fresh = build_optimizer(fresh_model, OptimConfig(name="lars", lr=0.8, weight_decay=1e-3), batch_size=256)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))  # equal momentum buffers (copies), no kept norms
    for m, o in ((model, opt), (fresh_model, fresh)):
        for k, p in m.named_parameters():
            p.grad = grads[2][k].clone()
        o.step()
    for (k, p), q in zip(model.named_parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(p, q), k


def test_compiled_lars_equals_timm_lars_without_recompiling_per_rate() -> None:
    from dataclasses import replace

    from torch._dynamo.utils import counters

    cfg = OptimConfig(name="lars", lr=0.8, weight_decay=1e-3, compile=True)
    eager_model, compiled_model = small_model(), small_model()
    eager = build_optimizer(eager_model, replace(cfg, compile=False), batch_size=256)
    compiled = build_optimizer(compiled_model, cfg, batch_size=256)
    assert isinstance(compiled, CompiledLars) and not isinstance(eager, CompiledLars)
    torch._dynamo.reset()
    counters.clear()
    _lars_steps(eager_model, eager, range(6))
    _lars_steps(compiled_model, compiled, range(6))
    for (k, a), b in zip(eager_model.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=k)
    assert counters["stats"]["unique_graphs"] == 2  # one per parameter group, not one per learning rate
    assert eager.state_dict()["state"].keys() == compiled.state_dict()["state"].keys()


def test_compiled_lars_resumes_exactly_and_falls_back_when_compiling_fails() -> None:
    cfg = OptimConfig(name="lars", lr=0.8, weight_decay=1e-3, compile=True)
    full_model = small_model()
    full = build_optimizer(full_model, cfg, batch_size=256)
    _lars_steps(full_model, full, range(5))
    part_model = small_model()
    part = build_optimizer(part_model, cfg, batch_size=256)
    _lars_steps(part_model, part, range(3))
    resumed_model = small_model()
    resumed_model.load_state_dict(part_model.state_dict())
    resumed = build_optimizer(resumed_model, cfg, batch_size=256)
    resumed.load_state_dict(part.state_dict())
    _lars_steps(resumed_model, resumed, range(3, 5))
    for a, b in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)

    def broken(*args) -> None:
        raise RuntimeError("no C++ compiler found\nmore detail")

    fallback_model = small_model()
    fallback = build_optimizer(fallback_model, cfg, batch_size=256)
    fallback._update.compiled = broken
    with pytest.warns(UserWarning, match="optim.compile: compiling the LARS update failed .RuntimeError: no C"):
        _lars_steps(fallback_model, fallback, range(5))
    for a, b in zip(full_model.parameters(), fallback_model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
