"""The index: exact chunked top-k against a loop reference, FAISS recall against exact,
save/load round trips, metric/dimension errors and atomic saves."""

from __future__ import annotations

import errno
import math
import os

import numpy as np
import pytest
import torch

from contrastkit.atomic import DiskFullError
from contrastkit.functional.similarity import similarity_matrix
from contrastkit.index import (
    INDEXES,
    ExactIndex,
    build_index,
    chunked_topk,
    create_index,
    list_indexes,
    load_index,
)

METRICS = ("cosine", "dot", "euclidean")
FAISS_PARAMS = {
    "faiss_flat": {},
    "faiss_hnsw": {"m": 16, "ef_construction": 64, "ef_search": 64},
    "faiss_ivf": {"nlist": 16, "nprobe": 8},
}


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def reference_topk(query, corpus, k, metric, exclude=None):
    """Full score matrix, then a Python sort on (-score, index)."""
    sim = similarity_matrix(query, corpus, metric)
    scores, indices = [], []
    for q in range(query.shape[0]):
        cand = [(-float(sim[q, j]), j) for j in range(corpus.shape[0])]
        if exclude is not None:
            cand = [c for c in cand if c[1] != int(exclude[q])]
        best = sorted(cand)[:k]
        scores.append([-s for s, _ in best])
        indices.append([j for _, j in best])
    return torch.tensor(scores), torch.tensor(indices)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_topk_matches_reference(metric, chunk_size):
    query, corpus = randn(13, 8, seed=1), randn(50, 8, seed=2)
    scores, indices = chunked_topk(
        query, corpus, 10, metric=metric, chunk_size=chunk_size, query_chunk_size=4
    )
    ref_scores, ref_indices = reference_topk(query, corpus, 10, metric)
    assert torch.equal(indices, ref_indices)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 100])
def test_ties_broken_by_lower_index_for_every_chunking(chunk_size):
    # Integer vectors: dot products are exact, so equal scores really are equal.
    corpus = torch.tensor(
        [[1, 0], [0, 1], [1, 0], [1, 0], [0, 1], [2, 0], [1, 0], [0, 0]], dtype=torch.float32
    )
    query = torch.tensor([[1, 0], [0, 1], [0, 0]], dtype=torch.float32)
    _, indices = chunked_topk(query, corpus, 4, metric="dot", chunk_size=chunk_size)
    assert indices.tolist() == [[5, 0, 2, 3], [1, 4, 0, 2], [0, 1, 2, 3]]


def test_k_larger_than_corpus_and_exclude():
    corpus = randn(5, 4, seed=3)
    scores, indices = chunked_topk(corpus, corpus, 50, chunk_size=2, exclude=torch.arange(5))
    assert indices.shape == (5, 5)
    # The excluded item leaves one empty slot at the end of each row.
    assert (indices[:, -1] == -1).all() and torch.isinf(scores[:, -1]).all()
    ref_scores, ref_indices = reference_topk(corpus, corpus, 4, "cosine", exclude=torch.arange(5))
    assert torch.equal(indices[:, :4], ref_indices)
    torch.testing.assert_close(scores[:, :4], ref_scores)


def test_chunked_topk_rejects_bad_input():
    with pytest.raises(ValueError, match="same embedding dimension"):
        chunked_topk(randn(2, 3), randn(4, 5), 1)
    with pytest.raises(ValueError, match="k must be a positive int"):
        chunked_topk(randn(2, 3), randn(4, 3), 0)
    with pytest.raises(ValueError, match="metric must be one of"):
        chunked_topk(randn(2, 3), randn(4, 3), 1, metric="l2")


def test_registry_lists_every_backend_and_suggests_names():
    assert list_indexes() == [
        "exact",
        "faiss_binary",
        "faiss_flat",
        "faiss_fp16",
        "faiss_hnsw",
        "faiss_ivf",
        "faiss_ivfpq",
        "faiss_sq8",
    ]
    assert len(INDEXES) == 8
    with pytest.raises(ValueError, match="Did you mean 'faiss_hnsw'"):
        create_index("faiss_hnws", dim=4)


# Generated from the registry: a newly registered backend is round-tripped automatically
# (with small-data parameters from FAISS_PARAMS when it needs them).
@pytest.mark.parametrize("backend", list_indexes())
@pytest.mark.parametrize("metric", METRICS)
def test_save_load_round_trip(tmp_path, backend, metric):
    vectors, query = randn(600, 16, seed=4), randn(20, 16, seed=5)
    ids = [f"doc-{i}" for i in range(600)]
    meta = [{"row": i, "tags": ["a", i % 3]} for i in range(600)]
    index = build_index(
        vectors, backend, metric, ids=ids, metadata=meta, **FAISS_PARAMS.get(backend, {})
    )
    before = index.search(query, 7)
    path = tmp_path / "index.ckx"
    index.save(path)
    loaded = load_index(path)
    assert type(loaded) is type(index) and loaded.metric == metric and loaded.dim == 16
    assert loaded.params() == index.params()
    after = loaded.search(query, 7)
    assert torch.equal(after.indices, before.indices)
    assert torch.equal(after.scores, before.scores)
    assert after.ids == before.ids and after.metadata == before.metadata
    assert after.ids[0][0] == ids[int(before.indices[0, 0])]
    assert loaded.metadata == meta and loaded.ids == ids
    # Adding after a load keeps working and keeps ids unique.
    loaded.add(randn(2, 16, seed=6), ids=["new-0", "new-1"])
    assert len(loaded) == 602


@pytest.mark.parametrize("metric", METRICS)
def test_faiss_recall_at_10_against_exact(metric):
    # Stated floors (random Gaussian data, 4k x 32): flat is exact; HNSW(m=16, ef=64) >= 0.95 (measured 0.98-0.99);
    # IVF(nlist=16, nprobe=8) >= 0.8 (it visits half the cells; measured 0.86-0.88).
    floors = {"faiss_flat": 0.999, "faiss_hnsw": 0.95, "faiss_ivf": 0.8}
    vectors, query = randn(4000, 32, seed=7), randn(200, 32, seed=8)
    exact = build_index(vectors, "exact", metric).search(query, 10)
    for backend, params in FAISS_PARAMS.items():
        approx = build_index(vectors, backend, metric, **params).search(query, 10)
        found = sum(
            len(set(a) & set(b)) for a, b in zip(exact.indices.tolist(), approx.indices.tolist())
        )
        recall = found / exact.indices.numel()
        assert recall >= floors[backend], (backend, metric, recall)
        # Scores are on the same scale as the exact backend (euclidean: -distance).
        same = approx.indices == exact.indices
        torch.testing.assert_close(approx.scores[same], exact.scores[same], rtol=1e-4, atol=1e-4)


def test_scores_follow_similarity_matrix_convention():
    vectors = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    for backend in ["exact", "faiss_flat"]:
        result = build_index(vectors, backend, "euclidean").search(torch.zeros(1, 2), 3)
        assert result.indices.tolist() == [[0, 2, 1]]
        torch.testing.assert_close(result.scores, torch.tensor([[0.0, -math.sqrt(2), -5.0]]))
        result = build_index(vectors, backend, "cosine").search(torch.tensor([[1.0, 1.0]]), 1)
        assert result.indices.tolist() == [[2]]
        torch.testing.assert_close(result.scores, torch.tensor([[1.0]]))


@pytest.mark.parametrize("backend", list_indexes())
def test_wrong_dimension_or_metric_is_a_clear_error(backend):
    index = build_index(randn(300, 8), backend, "cosine", **FAISS_PARAMS.get(backend, {}))
    with pytest.raises(ValueError, match="dimension 4 but the index was built for dimension 8"):
        index.search(randn(2, 4), 3)
    with pytest.raises(ValueError, match="built with metric='cosine', got metric='dot'"):
        index.search(randn(2, 8), 3, metric="dot")
    with pytest.raises(ValueError, match="dimension 5 but the index was built for dimension 8"):
        index.add(randn(2, 5))
    assert index.search(randn(2, 8), 3, metric="cosine").indices.shape == (2, 3)


def test_add_checks_ids_and_metadata():
    index = ExactIndex(dim=2)
    with pytest.raises(ValueError, match="search"):
        index.search(randn(1, 2), 1)
    index.add(randn(3, 2))
    assert index.ids == ["0", "1", "2"]
    with pytest.raises(ValueError, match="already in the index"):
        index.add(randn(1, 2), ids=["1"])
    with pytest.raises(ValueError, match="unique"):
        index.add(randn(2, 2), ids=["x", "x"])
    with pytest.raises(TypeError, match="ids must be strings"):
        index.add(randn(1, 2), ids=[7])
    with pytest.raises(TypeError, match=r"metadata\[1\] must be JSON-serialisable"):
        index.add(randn(2, 2), ids=["a", "b"], metadata=[{}, {"x": object()}])
    with pytest.raises(ValueError, match="NaN"):
        index.add(torch.full((1, 2), float("nan")))
    with pytest.raises(ValueError, match="one entry per vector"):
        index.add(randn(2, 2), ids=["a"])
    assert len(index) == 3  # failed adds change nothing
    index.add(np.ones((1, 2), dtype=np.float64), ids=["numpy"])
    assert index.search(np.ones((1, 2)), 1).ids == [["numpy"]]
    with pytest.raises(ValueError, match="nlist=16"):
        create_index("faiss_ivf", dim=2, nlist=16).add(randn(10, 2))


def test_adding_in_batches_equals_one_build():
    vectors, query = randn(100, 6, seed=9), randn(5, 6, seed=10)
    whole = build_index(vectors, "exact", "dot").search(query, 8)
    index = ExactIndex(dim=6, metric="dot", chunk_size=16)
    for part in vectors.split(30):
        index.add(part)
    parts = index.search(query, 8)
    assert torch.equal(parts.indices, whole.indices)
    assert parts.ids == whole.ids


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "index.ckx"
    old = build_index(randn(20, 4, seed=11), "exact", ids=[f"old{i}" for i in range(20)])
    old.save(path)
    original = path.read_bytes()
    new = build_index(randn(30, 4, seed=12), "exact")

    real_write, calls = os.write, []

    def write_once_then_fail(fd, data):  # the first chunk lands, the second finds a full disk
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_once_then_fail)
    with pytest.raises(DiskFullError, match="disk is full"):
        new.save(path)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.ckx"]  # no temp file left
    assert load_index(path).ids[0] == "old0"
    monkeypatch.undo()
    new.save(path)
    assert len(load_index(path)) == 30


def test_load_rejects_foreign_files(tmp_path):
    path = tmp_path / "not-an-index.bin"
    path.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not a contrastkit index file"):
        load_index(path)


def test_search_time_knobs_take_effect_without_rebuild(tmp_path):
    vectors, query = randn(2000, 16, seed=13), randn(50, 16, seed=14)
    truth = build_index(vectors, "exact").search(query, 10).indices
    ivf = build_index(vectors, "faiss_ivf", nlist=32, nprobe=1)

    def recall(index):
        found = index.search(query, 10).indices
        return sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist())) / 500

    low = recall(ivf)
    ivf.nprobe = 32  # every cell: exact
    assert recall(ivf) == 1.0 > low
    ivf.save(tmp_path / "ivf.ckx")
    assert load_index(tmp_path / "ivf.ckx").nprobe == 32


@pytest.mark.parametrize("seed", range(6))
def test_many_ties_match_reference_for_random_chunkings(seed):
    # Entries in {-1, 0, 1}: dot products are small integers, so ties are everywhere and exact.
    g = torch.Generator().manual_seed(seed)
    n, k = (
        int(torch.randint(5, 40, (1,), generator=g)),
        int(torch.randint(1, 12, (1,), generator=g)),
    )
    corpus = torch.randint(-1, 2, (n, 3), generator=g).float()
    query = torch.randint(-1, 2, (9, 3), generator=g).float()
    exclude = torch.randint(-1, n, (9,), generator=g)
    chunk_size = int(torch.randint(1, n + 1, (1,), generator=g))
    scores, indices = chunked_topk(
        query, corpus, k, metric="dot", exclude=exclude, chunk_size=chunk_size, query_chunk_size=4
    )
    sim = query @ corpus.T
    for q in range(9):
        ranking = sorted(
            (j for j in range(n) if j != int(exclude[q])), key=lambda j, q=q: (-float(sim[q, j]), j)
        )[:k]
        got = [j for j in indices[q].tolist() if j >= 0]
        assert got == ranking, (q, chunk_size)
        assert scores[q, : len(got)].tolist() == [float(sim[q, j]) for j in ranking]
