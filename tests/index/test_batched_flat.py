"""A batch of queries on the flat backends is one matrix product (FAISS's BLAS path from
``BLAS_MIN_QUERIES`` queries; the exact backend's chunked GEMM) and answers what each query
answers alone, and what exact search answers."""

from __future__ import annotations

import pytest
import torch

faiss = pytest.importorskip("faiss")

from contrastkit.index import build_index  # noqa: E402
from contrastkit.index.faiss_backends import BLAS_MIN_QUERIES  # noqa: E402


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_a_batch_equals_its_queries_one_by_one(metric: str) -> None:
    g = torch.Generator().manual_seed(0)
    corpus = torch.randn(3000, 48, generator=g)
    queries = torch.randn(40, 48, generator=g)
    flat = build_index(corpus, backend="faiss_flat", metric=metric)
    exact = build_index(corpus, backend="exact", metric=metric)
    assert faiss.cvar.distance_compute_blas_threshold == BLAS_MIN_QUERIES  # the GEMM path
    batch = flat.search(queries, 10)  # 40 >= BLAS_MIN_QUERIES: one GEMM
    alone = [flat.search(queries[i : i + 1], 10) for i in range(len(queries))]  # per-query path
    reference = exact.search(queries, 10)
    for i, one in enumerate(alone):
        assert batch.indices[i].tolist() == one.indices[0].tolist()
        torch.testing.assert_close(batch.scores[i], one.scores[0], atol=1e-4, rtol=1e-5)
    assert batch.indices.tolist() == reference.indices.tolist()
    torch.testing.assert_close(batch.scores, reference.scores, atol=1e-4, rtol=1e-5)
    for q in (BLAS_MIN_QUERIES - 1, BLAS_MIN_QUERIES):  # either side of the switch
        assert flat.search(queries[:q], 10).indices.tolist() == reference.indices[:q].tolist()
