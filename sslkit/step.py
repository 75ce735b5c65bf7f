"""One SimCLR optimisation step, shared by the trainer and the benchmarks.

views → forward → NT-Xent → backward, either on the whole batch at once or, with ``chunk_size``, by the
gradient-cache method (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"): embed all views in chunks without autograd, take the loss and its gradient with respect to the
embeddings on the full batch, then re-run each chunk with autograd and back-propagate its slice of that
gradient. Parameter gradients equal the full-batch ones whenever the forward does not depend on how the batch
is split (batch norm in train mode does: its statistics become per-chunk); memory is bounded by the chunk.
:func:`step_memory_bytes` estimates that memory before any step runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from sslkit.augment import SimCLRAugment
from sslkit.losses import nt_xent
from sslkit.optim import Lars

# Memory of one train step, for refusing a step that cannot fit before any compute (trainer.check_step_memory; the
# fine-tuning step of sslkit finetune too: evaluation/finetune.check_finetune_memory, through activation_bytes).
# Bytes that each view pixel adds to the peak of a ResNet18 step beyond the view itself: the activations that the
# forward keeps for the backward, and their gradients while it runs. Measured on sslkit's 2-core AMD EPYC CPU (torch
# 2.14.1) by eval/measure_step_memory.py: the difference of the peak memory (max RSS) of whole train steps at
# two batch sizes, over the difference of their view pixels, at two view sizes each; the smaller of the two, with
# the 4 bytes of a 1-channel view taken off, rounded down:
#   imagenet stem, fp32 516 (64 px) and 739 (128 px); 16-bit autocast 368 and 293
#   cifar stem,    fp32 6,776 (32 px) and 5,887 (64 px); 16-bit autocast 3,845 and 3,998
# (Check: the estimate below gives 4.8 GiB for eval/bench_chunk_memory.py's unchunked batch of 4,096 RGB 32×32
# images, imagenet stem, whose whole process peaked at 5.26 GiB.) Keyed by (stem, bytes per activation).
ACTIVATION_BYTES_PER_PIXEL: dict[tuple[str, int], int] = {
    ("imagenet", 4): 510, ("imagenet", 2): 280, ("cifar", 4): 5_800, ("cifar", 2): 3_800}
MEASURED_ENCODER = "resnet18"  # other encoders keep other activations: only their views and loss are counted
# NT-Xent holds (2B)×(2WB) float32 matrices at its peak (logits, log-softmax, their gradients): 3 with glibc's
# default malloc, 8 with the trainer's keep_freed_memory (measured at B=4,096); the smaller is counted.
LOSS_MATRICES = 3


def step_memory_bytes(batch: int, channels: int, view_size: int, stem: str, encoder: str = MEASURED_ENCODER,
                      precision: str = "fp32", chunk_size: int | None = None, world: int = 1) -> int:
    """A low estimate of the memory one train step takes in one process, in bytes.

    The two batches of float32 views, the encoder's activations for the views back-propagated at once (all of
    them, or a chunk of ``chunk_size``), and NT-Xent's similarity matrices against the views of all ``world``
    processes. Weights, optimizer state, augmentation temporaries and the data are left out, and the constants
    are the smaller of their measurements: a step estimated over the memory it has cannot fit.

    Args:
        batch: images per step in this process (its views: twice that).
        channels: image channels. view_size: side of the views in pixels. stem: ``model.stem``.
        encoder: ``model.encoder``; activations are counted for ResNet18 only (the one measured).
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast keeps 16-bit activations).
        chunk_size: ``train.chunk_size`` (gradient cache), or None.
        world: processes the batch is spread over (their views are the loss's negatives).
    """
    views = 2 * batch
    total = batch_bytes(views, channels, view_size) + LOSS_MATRICES * views * (views * world) * 4
    return total + activation_bytes(min(views, chunk_size or views), view_size, stem, encoder, precision)


def activation_bytes(images: int, size: int, stem: str, encoder: str = MEASURED_ENCODER,
                     precision: str = "fp32") -> int:
    """What a forward kept for its backward takes, with the gradients of it while the backward runs, for ``images``
    images of ``size``×``size`` pixels back-propagated at once: ``ACTIVATION_BYTES_PER_PIXEL`` per pixel for
    ResNet18 (the SimCLR step and a fine-tuning step both back-propagate through it), 0 for another encoder (not
    measured). Used by :func:`step_memory_bytes` and by ``sslkit finetune``'s check."""
    if encoder != MEASURED_ENCODER:
        return 0
    return images * size * size * ACTIVATION_BYTES_PER_PIXEL[(stem, 4 if precision == "fp32" else 2)]


def batch_bytes(images: int, channels: int, size: int) -> int:
    """The bytes of a float32 batch of ``images`` images of ``channels``×``size``×``size`` pixels."""
    return images * channels * size * size * 4


def largest_activation_bytes(images: int, size: int, stem: str, encoder: str = MEASURED_ENCODER) -> int:
    """The float32 bytes of the largest single activation of ResNet18 for ``images`` images of ``size``×``size``
    pixels: its stem's output, 64 channels at the input's side (``cifar`` stem: 3×3 conv, stride 1) or at half of
    it, rounded up (``imagenet``: 7×7 conv, stride 2, padding 3). Every later one is smaller: the max-pool and each
    stage halve the side (a quarter of the pixels) and at most double the channels. 0 for another encoder (not
    counted, as in :func:`activation_bytes`). What a forward without autograd holds at its peak beside its input
    (``sslkit finetune``'s evaluation batches)."""
    if encoder != MEASURED_ENCODER:
        return 0
    side = size if stem == "cifar" else (size + 1) // 2
    return batch_bytes(images, 64, side)


def make_views(augment: SimCLRAugment, x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """Both views of each image from one augmentation call (parameters drawn per sample; the colour-jitter order
    per call, see :mod:`sslkit.augment`).

    Shape:
        (B, C, H, W) uint8 -> (2B, C, S, S) float32: the first views, then the second views
    """
    return augment(torch.cat([x, x])).contiguous(memory_format=fmt)


def _project(model: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """One chunk's projections, through DDP's forward where the model is wrapped by DDP (its forward arranges the
    all-reduce of the gradients; the modules inside it would leave each process with its own), and past
    ``torch.compile``'s wrapper (chunks are embedded eagerly)."""
    return getattr(model, "_orig_mod", model)(views)


@contextlib.contextmanager
def _frozen_norm_buffers(model: nn.Module) -> Iterator[None]:
    """Restores batch-norm running statistics after the gradient-free pass, so they are updated only once."""
    saved = [(b, b.detach().clone()) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for b in m.buffers()]
    try:
        yield
    finally:
        for b, value in saved:
            b.copy_(value)


def simclr_backward(model: nn.Module, views: torch.Tensor, temperature: float, amp: torch.autocast | None,
                    scaler: torch.amp.GradScaler, chunk_size: int | None = None) -> torch.Tensor:
    """Accumulates the NT-Xent gradient of a batch of views into the parameters; returns the (detached) loss.

    Args:
        model: a ``SimCLR`` module (possibly wrapped by DDP or ``torch.compile``).
        views: first views then second views, as from :func:`make_views`.
        temperature: τ of NT-Xent.
        amp: autocast context or None.
        scaler: the fp16 loss scaler (a no-op when disabled).
        chunk_size: most views per chunk for the gradient cache (the views are spread evenly over
            ⌈2B / chunk_size⌉ chunks); None or ≥ 2B runs the batch at once.

    Shape:
        views: (2B, C, H, W) -> ()
    """
    b = views.shape[0] // 2
    autocast = amp or contextlib.nullcontext()
    if not chunk_size or chunk_size >= views.shape[0]:
        with autocast:
            z = model(views)  # the views are already one batch: the model's two-view form would copy them into one
        loss = nt_xent(z[:b], z[b:], temperature)
        scaler.scale(loss).backward()
        return loss.detach()
    # As even as possible, none over chunk_size: a last chunk of one view would fail in training-mode batch norm.
    chunks = views.tensor_split(-(-views.shape[0] // chunk_size))
    with torch.no_grad(), _frozen_norm_buffers(model), autocast:
        z = torch.cat([_project(model, c).float() for c in chunks])
    z.requires_grad_(True)
    loss = nt_xent(z[:b], z[b:], temperature)
    (grad_z,) = torch.autograd.grad(scaler.scale(loss), z)
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    for i, (c, g) in enumerate(zip(chunks, grad_z.split([c.shape[0] for c in chunks]), strict=True)):
        # Under DDP gradients are all-reduced once, with the last chunk.
        sync = contextlib.nullcontext() if not ddp or i == len(chunks) - 1 else model.no_sync()
        with sync:
            with autocast:
                zc = _project(model, c)
            zc.float().backward(g)
    return loss.detach()


def step_if_finite(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler) -> bool:
    """Applies the optimizer step unless the loss or any gradient is NaN/Inf; returns whether it stepped.

    One host synchronisation checks the loss and every gradient together; for sslkit's :class:`~sslkit.optim.Lars`
    it checks the gradient norms that the update then uses (no pass of its own). With the fp16 scaler enabled,
    the scaler's own overflow handling decides instead (it skips the step and lowers the scale).
    """
    if not scaler.is_enabled():
        if isinstance(optimizer, Lars):  # checks the gradient norms its update uses, then steps
            finite = optimizer.step_if_finite(loss)
        else:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            finite = bool(torch.isfinite(loss.float() + (torch.stack(torch._foreach_norm(grads)).sum() if grads
                                                         else 0.0)))
            if finite:
                optimizer.step()
        if not finite:
            optimizer.zero_grad(set_to_none=True)
        return finite
    scaler.step(optimizer)
    scaler.update()
    return True
