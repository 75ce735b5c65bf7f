"""The train step: gradient-cache chunking is exact, and non-finite losses or gradients never reach the weights."""

from __future__ import annotations

import pytest
import torch

from sslkit.config import OptimConfig
from sslkit.models import ProjectionHead, SimCLR, build_encoder
from sslkit.optim import Lars, build_optimizer
from sslkit.step import LOSS_MATRICES, simclr_backward, step_if_finite, step_memory_bytes


def _model() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(build_encoder("resnet18", "imagenet", 1), ProjectionHead(512, 64, 16))


def _grads(model: SimCLR, views: torch.Tensor, chunk: int | None) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = simclr_backward(model, views, 0.3, None, scaler, chunk)
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [2, 5, 7])
def test_chunked_gradients_equal_full_batch(chunk: int) -> None:
    model = _model().eval()  # batch norm on running statistics: the forward does not depend on the chunking
    views = torch.randn(12, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    loss_full, g_full = _grads(model, views, None)
    loss_chunk, g_chunk = _grads(model, views, chunk)
    assert loss_chunk == pytest.approx(loss_full, abs=1e-6)
    assert g_full.keys() == g_chunk.keys() and len(g_full) > 50
    for name in g_full:
        torch.testing.assert_close(g_chunk[name], g_full[name], atol=1e-5, rtol=1e-4, msg=name)


def test_chunking_updates_batchnorm_statistics_once() -> None:
    a, b = _model().train(), _model().train()
    views = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    _grads(a, views, None)
    _grads(b, views, 4)
    assert int(b.encoder.bn1.num_batches_tracked) == 2  # one per chunk of the autograd pass, none from the no-grad pass
    assert int(a.encoder.bn1.num_batches_tracked) == 1


@pytest.mark.parametrize(("views", "chunk", "sizes"), [(12, 11, [6, 6]), (10, 3, [3, 3, 2, 2]), (8, 4, [4, 4])])
def test_chunks_are_even_and_never_one_view(monkeypatch, views: int, chunk: int, sizes: list[int]) -> None:
    """12 views in chunks of 11 were 11 + 1, and a one-view chunk fails in training-mode batch norm."""
    model = _model().train()
    seen: list[int] = []
    forward = SimCLR.forward

    def counting(self, v1, v2=None):
        if v2 is None and torch.is_grad_enabled():
            seen.append(v1.shape[0])
        return forward(self, v1, v2)

    monkeypatch.setattr(SimCLR, "forward", counting)
    loss, grads = _grads(model, torch.randn(views, 1, 28, 28, generator=torch.Generator().manual_seed(3)), chunk)
    assert seen == sizes and torch.isfinite(torch.tensor(loss)) and len(grads) > 50


@pytest.mark.parametrize("optim", ["sgd", "lars"])
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nonfinite_step_leaves_parameters_untouched(where: str, optim: str) -> None:
    model = _model()
    views = torch.randn(8, 1, 28, 28)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    if optim == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    else:  # sslkit's LARS after one step, so that its momentum buffers exist and its own CPU update is the one checked
        opt = build_optimizer(model, OptimConfig(name="lars", lr=1.0, weight_decay=1e-4), batch_size=4)
        assert isinstance(opt, Lars)
        assert step_if_finite(simclr_backward(model, views, 0.5, None, scaler), model, opt, scaler)
        opt.zero_grad(set_to_none=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {k: {name: v.clone() for name, v in state.items()} for k, state in opt.state_dict()["state"].items()}
    assert len(buffers) == (0 if optim == "sgd" else len(before))
    loss = simclr_backward(model, views, 0.5, None, scaler)
    if where == "loss":
        loss = loss * float("nan")
    else:
        next(model.parameters()).grad[0].view(-1)[0] = float("inf")
    assert not step_if_finite(loss, model, opt, scaler)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert all(p.grad is None for p in model.parameters())
    for k, state in buffers.items():
        for name, value in state.items():
            assert torch.equal(opt.state_dict()["state"][k][name], value), (k, name)
    ok = simclr_backward(model, views, 0.5, None, scaler)
    assert step_if_finite(ok, model, opt, scaler)
    assert not torch.equal(next(model.parameters()), before[next(iter(before))])


@pytest.mark.parametrize(("chunk", "measured_gib"), [(None, 5.26), (256, 1.81), (1024, 1.86)])
def test_step_memory_estimate_is_low_but_close_to_a_measured_peak(chunk: int | None, measured_gib: float) -> None:
    """Against eval/results/bench_chunk_memory_cpu.md (whole-process peak RSS of one step, batch 4,096 RGB 32×32,
    imagenet stem, fp32): the estimate stays below each peak, by less than the process's own memory (torch, the
    model and its optimizer: about 1 GiB here), so it refuses nothing that fits and still sees what chunking saves."""
    estimate = step_memory_bytes(4096, 3, 32, "imagenet", chunk_size=chunk) / 2**30
    assert 0 < measured_gib - estimate < 1.0, estimate


def test_step_memory_counts_activations_of_the_measured_encoder_only() -> None:
    views_and_loss = 2 * 64 * 3 * 96 * 96 * 4 + LOSS_MATRICES * 128 * 256 * 4  # 2 processes: 256 keys
    assert step_memory_bytes(64, 3, 96, "imagenet", "vit_tiny_patch16_224", world=2) == views_and_loss
    assert step_memory_bytes(64, 3, 96, "cifar", "resnet18", "bf16", world=2) == views_and_loss + 128 * 96 * 96 * 3_800
