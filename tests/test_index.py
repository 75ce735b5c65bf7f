"""FAISS index kinds against exact search, save/load round trips, and the errors a user can cause."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from sslkit.errors import UserError
from sslkit.evaluation.index import INDEX_KINDS, build_index, default_nlist, load_index, save_index, search
from sslkit.evaluation.knn import knn_search

N, D, K = 4000, 128, 10


def clustered(n: int, stream: int, d: int = D, clusters: int = 20, intrinsic: int = 8) -> torch.Tensor:
    """Points near low-dimensional patches around random centres: neighbours are well defined, as in real features."""
    base = np.random.default_rng(0)
    centres = base.standard_normal((clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    patches = base.standard_normal((clusters, intrinsic, d)) / np.sqrt(d)
    rng = np.random.default_rng(stream)
    lab = rng.integers(0, clusters, n)
    a = rng.standard_normal((n, intrinsic))
    x = centres[lab] + 0.5 * np.einsum("ni,nid->nd", a, patches[lab]) + 0.3 * rng.standard_normal((n, d)) / np.sqrt(d)
    return torch.from_numpy(x.astype(np.float32))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    bank, queries = clustered(N, 1), clustered(200, 2)
    _, exact = knn_search(bank, queries, K)  # FAISS flat search, the reference of sslkit's k-NN
    return bank, queries, exact


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Share of the exact k neighbours found, averaged over queries (recall@k)."""
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / exact.shape[1]
                           for f, e in zip(found, exact, strict=True)]))


@pytest.fixture(scope="module")
def indexes(data) -> dict[str, faiss.Index]:
    """One index of each kind over the bank, built once (IVF-PQ training dominates this file's run time).

    Built on one thread: FAISS trains the IVF-PQ's 128 small codebooks in thousands of short OpenMP regions,
    whose threads spin-wait for one another, which on a busy 2-core machine costs 10× the work itself.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # build_index gives FAISS torch's thread count
    try:
        return {kind: build_index(data[0], kind) for kind in INDEX_KINDS}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_every_kind_finds_the_exact_neighbours(data, indexes, kind: str) -> None:
    bank, queries, exact = data
    index = indexes[kind]
    assert index.ntotal == N and index.d == D
    sims, idx = search(index, queries, K)
    assert sims.shape == idx.shape == (len(queries), K) and idx.dtype == torch.int64
    assert recall(idx, exact) >= (1.0 if kind in ("flat", "auto") else 0.9)
    assert bool((sims[:, :-1] >= sims[:, 1:] - 1e-6).all()), "neighbours come most similar first"


def test_exact_scores_are_cosines(data) -> None:
    bank, queries, _ = data
    sims, idx = search(build_index(bank * 7.0, "flat"), queries * 0.1, K)  # any scale: rows are normalised
    b, q = torch.nn.functional.normalize(bank, dim=1), torch.nn.functional.normalize(queries, dim=1)
    expected = (q[:, None, :] * b[idx]).sum(-1)
    torch.testing.assert_close(sims, expected, atol=1e-5, rtol=0)


def test_auto_is_flat_when_small_and_ivf_flat_when_large(data, monkeypatch: pytest.MonkeyPatch) -> None:
    import sslkit.evaluation.index as index_module

    assert isinstance(build_index(clustered(500, 3), "auto"), faiss.IndexFlatIP)
    monkeypatch.setattr(index_module, "AUTO_FLAT_MAX", N - 1)  # make the test bank count as large
    index = build_index(data[0], "auto")
    assert isinstance(index, faiss.IndexIVFFlat) and index.nlist == default_nlist(N)


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "hnsw", "ivf-pq"])
def test_save_load_round_trip_gives_identical_results(data, indexes, kind: str, tmp_path: Path) -> None:
    queries, index = data[1], indexes[kind]
    path = save_index(index, tmp_path / "sub" / f"{kind}.faiss")
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file is left behind"
    loaded = load_index(path)
    assert type(loaded) is type(index) and loaded.ntotal == index.ntotal
    for a, b in zip(search(index, queries, K), search(loaded, queries, K), strict=True):
        assert torch.equal(a, b)


def test_save_replaces_an_existing_file_whole(data, tmp_path: Path) -> None:
    bank, queries, _ = data
    path = tmp_path / "bank.faiss"
    save_index(build_index(bank[:100], "flat"), path)
    save_index(build_index(bank, "flat"), path)
    assert load_index(path).ntotal == N


def test_search_overrides_do_not_change_the_index(data, indexes) -> None:
    _, queries, exact = data
    index = indexes["ivf-flat"]
    stored = index.nprobe
    _, all_lists = search(index, queries, K, nprobe=index.nlist)
    assert recall(all_lists, exact) == 1.0  # visiting every list is exhaustive
    assert index.nprobe == stored


def test_ivf_defaults_respect_the_training_minimum() -> None:
    assert default_nlist(4000) == 4000 // 39  # 4·√4000 = 253 would leave fewer than 39 points per centroid
    assert default_nlist(1_000_000) == 4000


def test_bad_kind_names_the_valid_ones(data) -> None:
    with pytest.raises(UserError) as err:
        build_index(data[0], "ivf")
    for kind in INDEX_KINDS:
        assert kind in str(err.value)


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: build_index(torch.zeros(0, D), "flat"), "0 feature rows"),
    (lambda d: build_index(d[0], "ivf-pq", pq_m=7), "does not divide"),
    (lambda d: build_index(d[0], "ivf-pq", pq_bits=3), "pq_bits=3"),
    (lambda d: build_index(d[0][:50], "ivf-flat", nlist=51), "nlist=51"),
    (lambda d: search(build_index(d[0][:5], "flat"), d[1], 6), "k=6"),
    (lambda d: search(build_index(d[0], "flat"), d[1][:, :10], 3), "dimensions"),
    (lambda d: build_index(torch.full((3, D), float("nan")), "flat"), "NaN"),
])
def test_user_errors(data, make, message: str) -> None:
    with pytest.raises(UserError, match=message):
        make(data)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no index file"):
        load_index(tmp_path / "missing.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not an index")
    with pytest.raises(UserError, match="bad.faiss"):
        load_index(bad)


def test_ivf_pq_on_too_few_rows_to_train_its_codebooks_is_a_user_error() -> None:
    x = torch.nn.functional.normalize(torch.randn(255, 16), dim=1)
    with pytest.raises(UserError, match="needs at least 256 rows .* got 255 .* or fewer pq_bits"):
        build_index(x, "ivf-pq", pq_bits=8)
    with pytest.raises(UserError, match="needs at least 16 rows .* got 10 — use a flat or ivf-flat index$"):
        build_index(x[:10], "ivf-pq")
    assert build_index(x[:16], "ivf-pq").ntotal == 16
