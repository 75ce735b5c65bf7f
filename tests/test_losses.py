"""NT-Xent against a naive loop written from SimCLR's Algorithm 1 (Chen et al. 2020)."""

from __future__ import annotations

import math

import pytest
import torch

from sslkit.losses import nt_xent


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Algorithm 1 literally: z_{2k-1}, z_{2k} are the two views of sample k; l(i, j) summed over all pairs."""
    z = []
    for k in range(z1.shape[0]):
        z += [z1[k].double(), z2[k].double()]
    n2 = len(z)

    def sim(u: torch.Tensor, v: torch.Tensor) -> float:
        return float(u @ v / (u.norm() * v.norm()))

    def ell(i: int, j: int) -> float:
        denom = sum(math.exp(sim(z[i], z[k]) / tau) for k in range(n2) if k != i)
        return -math.log(math.exp(sim(z[i], z[j]) / tau) / denom)

    total = sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n2 // 2))
    return total / n2


@pytest.mark.parametrize("batch", [2, 3, 8, 17])
@pytest.mark.parametrize("dim", [1, 4, 32])
@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0])
def test_matches_algorithm_1(batch: int, dim: int, tau: float) -> None:
    g = torch.Generator().manual_seed(batch * 100 + dim)
    z1 = torch.randn(batch, dim, generator=g)
    z2 = torch.randn(batch, dim, generator=g)
    got = nt_xent(z1, z2, tau).item()
    assert got == pytest.approx(naive_nt_xent(z1, z2, tau), rel=1e-5, abs=1e-5)


def test_symmetric_in_the_views_and_scale_invariant() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert nt_xent(z1, z2).item() == pytest.approx(nt_xent(z2, z1).item(), rel=1e-6)
    assert nt_xent(3 * z1, 0.5 * z2).item() == pytest.approx(nt_xent(z1, z2).item(), rel=1e-5)


def test_perfect_pairs_reach_the_lower_bound() -> None:
    """Identical views of orthogonal samples: only the 2B−2 negatives at similarity 0 remain in the denominator."""
    b, tau = 4, 0.1
    z = torch.eye(b) * 5
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (2 * b - 2)))
    assert nt_xent(z, z.clone(), tau).item() == pytest.approx(expected, abs=1e-6)


def test_stable_at_tiny_temperature_and_half_precision() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    loss = nt_xent(z1.bfloat16(), z2.bfloat16(), 1e-3)
    assert torch.isfinite(loss) and loss.dtype == torch.float32


def test_gradients_match_the_naive_form() -> None:
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)

    def dense(a: torch.Tensor, b: torch.Tensor, tau: float = 0.3) -> torch.Tensor:
        z = torch.nn.functional.normalize(torch.stack([a, b], 1).reshape(-1, a.shape[1]), dim=1)
        s = torch.exp(z @ z.T / tau)
        pos = torch.arange(z.shape[0]) ^ 1  # 2k <-> 2k+1
        denom = s.sum(1) - s.diagonal()
        return (-torch.log(s[torch.arange(z.shape[0]), pos] / denom)).mean()

    ga = torch.autograd.grad(nt_xent(z1, z2, 0.3), (z1, z2))
    gb = torch.autograd.grad(dense(z1, z2), (z1, z2))
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_float32_with_its_gradient_under_an_enclosing_autocast() -> None:
    """Called inside a bf16 autocast region, the loss and its gradient are those computed without one."""
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(6, 5, generator=g, requires_grad=True)
    z2 = torch.randn(6, 5, generator=g, requires_grad=True)
    plain = nt_xent(z1, z2, 0.2)
    want = torch.autograd.grad(plain, (z1, z2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = nt_xent(z1, z2, 0.2)
    got = torch.autograd.grad(cast, (z1, z2))
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(4, 8), torch.randn(5, 8))
