"""Compressed backends (fp16, sq8, binary + rescoring, IVF-PQ): recall@10 against exact search on
real MiniLM embeddings, stated bytes per vector, query-time nprobe, training on a sample, the
binary index's memory-mapped float file, and the bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastkit.index import (
    FaissBinaryIndex,
    build_index,
    create_index,
    default_ivfpq_params,
    load_index,
)

pytest.importorskip("faiss")
# The session fixture embeds 2,200 glosses with MiniLM once (about 10 s on one core).
pytestmark = pytest.mark.slow

COMPRESSED = ("faiss_fp16", "faiss_sq8", "faiss_binary", "faiss_ivfpq")


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def recall_at_10(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist()))
    return hits / truth.numel()


@pytest.fixture(scope="module")
def exact_top10(minilm_glosses):
    corpus, queries = minilm_glosses
    return build_index(corpus, "exact", "cosine").search(queries, 10)


# Floors on 2,000 MiniLM gloss embeddings (384-d, cosine), measured once on this data:
# fp16 0.9995, sq8 0.995, binary (rescore=10) 0.9875, IVF-PQ with its defaults for 2,000
# training vectors (nlist=51, m=96, nbits=5) at nprobe=16: 0.766.
FLOORS = {"faiss_fp16": 0.995, "faiss_sq8": 0.98, "faiss_binary": 0.96, "faiss_ivfpq": 0.72}


@pytest.mark.parametrize("backend", COMPRESSED)
def test_recall_at_10_against_exact_on_minilm_embeddings(backend, minilm_glosses, exact_top10):
    corpus, queries = minilm_glosses
    index = create_index(backend, dim=384, metric="cosine")  # defaults: out of the box
    index.add(corpus)
    found = index.search(queries, 10)
    assert recall_at_10(found.indices, exact_top10.indices) >= FLOORS[backend]
    # Scores stay on the cosine scale: within the quantisation error of the exact ones.
    tolerance = {"faiss_fp16": 1e-3, "faiss_sq8": 2e-2, "faiss_binary": 1e-5, "faiss_ivfpq": 0.25}
    same = found.indices == exact_top10.indices
    assert same.any()
    torch.testing.assert_close(
        found.scores[same], exact_top10.scores[same], atol=tolerance[backend], rtol=0
    )


def test_bytes_per_vector_is_stated_and_matches_the_codes(minilm_glosses):
    corpus, _ = minilm_glosses
    expected = {"faiss_fp16": 768.0, "faiss_sq8": 384.0, "faiss_binary": 48.0}
    for backend, nbytes in expected.items():
        index = build_index(corpus, backend)
        assert index.bytes_per_vector == nbytes
        # FAISS's own code size agrees (the flat codes are the whole payload per vector).
        assert index.faiss_index.code_size == nbytes
    pq = build_index(corpus, "faiss_ivfpq", m=48, nbits=8, nlist=8)
    assert pq.faiss_index.code_size == 48 and pq.bytes_per_vector == 48 + 8
    assert build_index(corpus, "exact").bytes_per_vector == 4 * 384
    assert FaissBinaryIndex(dim=384).disk_bytes_per_vector == 48 + 4 * 384


def test_nprobe_at_query_time_trades_recall_and_does_not_stick(minilm_glosses, exact_top10):
    corpus, queries = minilm_glosses
    index = build_index(corpus, "faiss_ivfpq", nprobe=16)
    nlist = index.nlist
    one = recall_at_10(index.search(queries, 10, nprobe=1).indices, exact_top10.indices)
    every = recall_at_10(index.search(queries, 10, nprobe=nlist).indices, exact_top10.indices)
    assert one < every
    assert index.nprobe == 16  # the per-call setting is not kept
    ivf = build_index(corpus, "faiss_ivf", nlist=16, nprobe=1)
    assert recall_at_10(ivf.search(queries, 10, nprobe=16).indices, exact_top10.indices) == 1.0
    hnsw = build_index(corpus, "faiss_hnsw", m=8, ef_construction=16, ef_search=10)
    low = recall_at_10(hnsw.search(queries, 10).indices, exact_top10.indices)
    high = recall_at_10(hnsw.search(queries, 10, ef=200).indices, exact_top10.indices)
    assert high >= low and high > 0.97 and hnsw.ef_search == 10


def test_train_on_a_sample_then_add_in_chunks_equals_one_add(minilm_glosses):
    corpus, queries = minilm_glosses
    sample = corpus[torch.randperm(2000, generator=torch.Generator().manual_seed(1))[:1000]]
    for backend in ("faiss_ivfpq", "faiss_sq8"):
        chunked = create_index(backend, dim=384)
        chunked.train(sample)
        assert chunked.is_trained
        for part in corpus.split(300):
            chunked.add(part)
        whole = create_index(backend, dim=384)
        whole.train(sample)
        whole.add(corpus)
        assert torch.equal(chunked.search(queries, 10).indices, whole.search(queries, 10).indices)
    # The IVF-PQ defaults were chosen from the training sample (1,000), not from later chunks.
    pq = create_index("faiss_ivfpq", dim=384)
    pq.train(sample)
    chosen = default_ivfpq_params(384, 1000)
    assert (pq.nlist, pq.m, pq.nbits) == (chosen["nlist"], chosen["m"], chosen["nbits"])


def test_binary_index_memory_maps_its_float_file(tmp_path, minilm_glosses):
    corpus, queries = minilm_glosses
    index = build_index(corpus[:500], "faiss_binary", ids=[f"g{i}" for i in range(500)])
    path = tmp_path / "corpus.ckindex"
    index.save(path)
    (side,) = tmp_path.glob("corpus.ckindex.*.f32")  # a new name per save (see test_index.py)
    assert side.stat().st_size == 500 * 384 * 4
    loaded = load_index(path)
    assert isinstance(loaded._floats[0], np.memmap)
    before, after = index.search(queries, 5), loaded.search(queries, 5)
    assert torch.equal(before.indices, after.indices) and before.ids == after.ids
    # The rescoring is exact: the scores equal the exact cosine of the returned vectors.
    unit = torch.nn.functional.normalize(corpus[:500], dim=1)
    q = torch.nn.functional.normalize(queries, dim=1)
    exact = (q[:, None, :] * unit[after.indices]).sum(-1)
    torch.testing.assert_close(after.scores, exact, atol=1e-5, rtol=0)
    side.write_bytes(side.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"corpus\.ckindex\.\w+\.f32.*different saves.*rebuild"):
        load_index(path)
    side.unlink()
    with pytest.raises(FileNotFoundError, match=r"corpus\.ckindex\.\w+\.f32.* copy both files"):
        load_index(path)


def test_bad_input_names_the_argument_the_value_and_the_fix():
    with pytest.raises(ValueError, match=r"m=7 does not divide dim=384.*divisors of 384"):
        create_index("faiss_ivfpq", dim=384, m=7)
    with pytest.raises(ValueError, match=r"needs at least nlist=64 vectors.*got 50.*smaller nlist"):
        create_index("faiss_ivfpq", dim=8, nlist=64).add(randn(50, 8))
    with pytest.raises(ValueError, match=r"needs at least nbits=256 vectors.*got 100"):
        create_index("faiss_ivfpq", dim=8, nlist=2, nbits=8).train(randn(100, 8))
    with pytest.raises(ValueError, match="nbits must be between 1 and 16"):
        create_index("faiss_ivfpq", dim=8, nbits=17)
    for backend in COMPRESSED:
        index = build_index(randn(300, 8, seed=1), backend)
        with pytest.raises(ValueError, match=r"k=301 is more than the 300 vectors.*k <= 300"):
            index.search(randn(1, 8), 301)
        assert index.search(randn(1, 8), 300).indices.shape == (1, 300)
    with pytest.raises(ValueError, match=r"nprobe=4 is a search setting of IVF backends.*'exact'"):
        build_index(randn(10, 8), "exact").search(randn(1, 8), 3, nprobe=4)
    with pytest.raises(ValueError, match=r"ef=4 is a search setting of faiss_hnsw.*'faiss_ivfpq'"):
        build_index(randn(300, 8), "faiss_ivfpq").search(randn(1, 8), 3, ef=4)
    with pytest.raises(ValueError, match="nprobe must be a positive int"):
        build_index(randn(300, 8), "faiss_ivf", nlist=4).search(randn(1, 8), 3, nprobe=0)
    # The exact backends keep clamping k (their empty slots are explicit).
    assert build_index(randn(10, 8), "exact").search(randn(1, 8), 30).indices.shape == (1, 10)
