"""Exact search pruned by a certified low-rank bound gives the flat search's neighbours, whatever the data."""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from sslkit.evaluation.knn import knn_search
from sslkit.evaluation.search import PrunedFlatIP, exact_index


def low_rank_rows(n: int, dim: int, rank: int, noise: float, seed: int) -> np.ndarray:
    """Unit rows with most energy in ``rank`` directions, like a trained encoder's features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank, generator=g) @ torch.randn(rank, dim, generator=g)
    x = x + noise * torch.randn(n, dim, generator=g)
    return F.normalize(x, dim=1).numpy()


def flat(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    return index.search(queries, k)


def test_pruned_search_is_certified_and_equals_flat_on_low_rank_features() -> None:
    rows = low_rank_rows(6000, 128, 8, 0.1, 0)
    bank, queries = rows[:5000], rows[5000:]
    index = PrunedFlatIP(bank, rank=16)
    sims, idx = index.search(queries, 20)
    ref_sims, ref_idx = flat(bank, queries, 20)
    assert index.fallbacks == 0 and index.retries < 20  # the bound pruned (nearly) every query at once
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


def test_queries_the_first_candidates_do_not_certify_are_certified_by_the_next_ones_or_searched_again() -> None:
    rows = low_rank_rows(6000, 128, 8, 1.0, 0)  # noisier: the bound is looser (88 % of the energy in 16)
    bank, queries = rows[:5000], rows[5000:]
    index = PrunedFlatIP(bank, rank=16)
    sims, idx = index.search(queries, 20)
    ref_sims, ref_idx = flat(bank, queries, 20)
    # Some queries needed more than their first c rows; most of those were settled by the next c rows of the
    # same bound search, the rest by a wider search; none had to be searched flat.
    assert index.retries > 2 * index.widened > 0 and index.fallbacks == 0, (index.retries, index.widened)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


def test_pruned_search_falls_back_to_flat_when_the_bound_cannot_certify() -> None:
    g = torch.Generator().manual_seed(1)
    bank = F.normalize(torch.randn(3000, 128, generator=g), dim=1).numpy()  # flat spectrum: no useful bound
    queries = bank[:50] + 0.0
    index = PrunedFlatIP(bank, rank=16)
    sims, idx = index.search(queries, 10)
    ref_sims, ref_idx = flat(bank, queries, 10)
    assert index.fallbacks == 50
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


def test_mixed_certified_and_fallback_queries_keep_their_rows() -> None:
    bank = low_rank_rows(4000, 96, 6, 0.05, 2)
    g = torch.Generator().manual_seed(3)
    odd = F.normalize(torch.randn(40, 96, generator=g), dim=1).numpy()  # far from the bank's subspace
    queries = np.concatenate([bank[:40] + 0.0, odd])[np.random.default_rng(0).permutation(80)]
    index = PrunedFlatIP(bank, rank=12)
    _, idx = index.search(queries, 15)
    assert index.retries > 0  # some odd queries needed larger candidate sets
    np.testing.assert_array_equal(idx, flat(bank, queries, 15)[1])


def test_exact_index_prunes_only_large_searches() -> None:
    bank = low_rank_rows(2000, 256, 8, 0.1, 4)
    assert isinstance(exact_index(bank, queries=10, k=20), faiss.IndexFlatIP)  # small: flat
    assert isinstance(exact_index(bank, queries=10**5, k=20), PrunedFlatIP)
    assert isinstance(exact_index(bank[:, :64].copy(), queries=10**7, k=20), faiss.IndexFlatIP)  # D < 4·rank
    g = torch.Generator().manual_seed(6)
    spread = F.normalize(torch.randn(2000, 256, generator=g), dim=1).numpy()  # flat spectrum: the bound is loose
    assert isinstance(exact_index(spread, queries=10**5, k=20), faiss.IndexFlatIP)


def test_knn_search_on_a_large_problem_matches_torch_topk_with_and_without_self() -> None:
    rows = torch.from_numpy(low_rank_rows(25000, 256, 10, 0.2, 5))
    bank, queries = rows[:20000], rows[20000:]  # 10⁸ pairs: knn_search takes the pruned path
    sims, idx = knn_search(bank, queries, k=30)
    ref = (queries @ bank.T).topk(30, dim=1)
    torch.testing.assert_close(sims, ref.values, atol=1e-5, rtol=0)
    assert (idx == ref.indices).float().mean() > 0.999  # ties at 1e-7 may swap
    own_sims, own = knn_search(bank[:10000], bank[:10000], k=5, exclude_self=True)  # 10⁸ pairs: pruned too
    assert not (own == torch.arange(10000)[:, None]).any()
    loo = bank[:10000] @ bank[:10000].T
    loo.fill_diagonal_(-2)
    torch.testing.assert_close(own_sims, loo.topk(5, dim=1).values, atol=1e-5, rtol=0)
