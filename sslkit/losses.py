"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, eq. 1, Algorithm 1)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def _gather_all(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Concatenates ``x`` from every rank with gradients flowing back to each rank's slice."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0, 1
    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        gathered = dist_fn.all_gather(x)
    return torch.cat(gathered), dist.get_rank(), dist.get_world_size()


class _Gram(torch.autograd.Function):
    """``q @ q.T`` with the backward of a Gram matrix: ``(G + Gᵀ) @ q``, one matrix product where autograd's
    backward of ``q @ q.T`` makes two (one for each factor), then adds them.

    Shape:
        (N, D) -> (N, N)
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q)
        return q @ q.T

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (q,) = ctx.saved_tensors
        return (grad + grad.T) @ q


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = True) -> torch.Tensor:
    """Mean NT-Xent loss over all 2B anchors of a batch of positive pairs.

    Each anchor's positive is the other view of the same image; its negatives are the other 2B−2 views (2WB−2
    under ``torch.distributed`` with world size W, when ``gather`` is set and a process group exists: the
    keys are gathered from every rank and the gradient flows back through the gather). Written as a
    cross-entropy over the masked cosine-similarity matrix, which is numerically stable for small
    temperatures (log-sum-exp instead of a ratio of exponentials).

    Args:
        z1: projections of the first views.
        z2: projections of the second views, row i paired with row i of ``z1``.
        temperature: τ > 0.
        gather: use negatives from all ranks when running distributed.

    Returns:
        The scalar loss (float32, whatever the input precision).

    Shape:
        z1, z2: (B, D) -> ()
    """
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 1:
        raise ValueError(f"nt_xent needs two (B, D) tensors of the same shape with B ≥ 1, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    if not temperature > 0:  # also NaN
        raise ValueError(f"nt_xent needs a temperature τ > 0, got {temperature}")
    b = z1.shape[0]
    q1 = F.normalize(z1.float(), dim=1)
    q2 = F.normalize(z2.float(), dim=1)
    if gather:
        k1, rank, world = _gather_all(q1)
        k2, _, _ = _gather_all(q2)
    else:
        k1, k2, rank, world = q1, q2, 0, 1
    queries = torch.cat([q1, q2])  # (2B, D)
    with torch.autocast(z1.device.type, enabled=False):  # float32 logits under an enclosing autocast too
        if world == 1:  # the keys are the queries
            logits = _Gram.apply(queries) / temperature  # (2B, 2B)
        else:
            keys = torch.cat([k1, k2])  # (2WB, D): all first views of every rank, then all second views
            logits = queries @ keys.T / temperature  # (2B, 2WB)
    local = torch.arange(b, device=z1.device) + rank * b
    self_idx = torch.cat([local, local + world * b])
    pos_idx = torch.cat([local + world * b, local])
    rows = torch.arange(2 * b, device=z1.device)
    logits[rows, self_idx] = float("-inf")  # an anchor is never its own negative
    return F.cross_entropy(logits, pos_idx)
