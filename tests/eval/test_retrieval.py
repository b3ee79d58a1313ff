"""Retrieval metrics against plain-loop references written from the definitions."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.eval import (
    HitRateAtK,
    MAPAtR,
    MRRAtK,
    NDCGAtK,
    PrecisionAtK,
    RecallAtK,
    Relevance,
    RetrievalMetrics,
    SearchChunks,
    hit_rate_at_k,
    map_at_r,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    r_precision,
    recall_at_k,
    retrieval_metrics,
    retrieval_scores,
)
from contrastkit.functional.similarity import similarity_matrix
from contrastkit.index import build_index


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_metrics(query, corpus, relevant_sets, ks, metric="cosine", exclude=None):
    """Rank the whole corpus with a Python sort on (-score, index), then apply the definitions."""
    sim = similarity_matrix(query, corpus, metric)
    out = {}
    for q in range(query.shape[0]):
        ranking = sorted(range(corpus.shape[0]), key=lambda j, q=q: (-float(sim[q, j]), j))
        rel = set(relevant_sets[q])
        if exclude is not None:
            ranking = [j for j in ranking if j != exclude[q]]
            rel.discard(exclude[q])
        R = len(rel)
        row = {}
        for k in ks:
            top = ranking[:k]
            found = [j in rel for j in top]
            if R == 0:
                for name in ("recall", "hit_rate", "precision", "mrr", "ndcg"):
                    row[f"{name}@{k}"] = math.nan
                continue
            row[f"recall@{k}"] = sum(found) / R
            row[f"hit_rate@{k}"] = float(any(found))
            row[f"precision@{k}"] = sum(found) / k
            row[f"mrr@{k}"] = next((1.0 / (i + 1) for i, f in enumerate(found) if f), 0.0)
            dcg = sum(1.0 / math.log2(i + 2) for i, f in enumerate(found) if f)
            idcg = sum(1.0 / math.log2(i + 2) for i in range(min(R, k)))
            row[f"ndcg@{k}"] = dcg / idcg
        if R == 0:
            row["map@r"] = row["r_precision"] = math.nan
        else:
            top = ranking[:R]
            ap, seen = 0.0, 0
            for i, j in enumerate(top):
                if j in rel:
                    seen += 1
                    ap += seen / (i + 1)
            row["map@r"] = ap / R
            row["r_precision"] = seen / R
        for name, value in row.items():
            out.setdefault(name, []).append(value)
    return {name: torch.tensor(values) for name, values in out.items()}


def assert_same(got: dict, want: dict) -> None:
    """Every metric returned equals the reference (which also has MAP@R when not requested)."""
    assert got and set(got) <= set(want)
    for name, values in got.items():
        torch.testing.assert_close(values, want[name].float(), equal_nan=True, msg=name)


KS = (1, 3, 10, 60)  # 60 > N: k larger than the corpus


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_label_relevance_matches_reference(metric):
    query = torch.randn(23, 6, generator=gen(0))
    corpus = torch.randn(40, 6, generator=gen(1))
    query_labels = torch.randint(0, 6, (23,), generator=gen(2))  # label 5: no relevant item
    corpus_labels = torch.randint(0, 5, (40,), generator=gen(3))
    got = retrieval_scores(
        query,
        corpus,
        Relevance(query_labels, corpus_labels),
        ks=KS,
        metric=metric,
        with_map_at_r=True,
        chunks=SearchChunks(corpus=7, query=5),
    )
    sets = [[j for j in range(40) if corpus_labels[j] == query_labels[q]] for q in range(23)]
    want = reference_metrics(query, corpus, sets, KS, metric)
    assert bool(torch.isnan(want["recall@1"]).any()), "the case must contain an empty query"
    assert_same(got, want)


def test_explicit_relevant_indices_one_or_many():
    query = torch.randn(12, 5, generator=gen(4))
    corpus = torch.randn(30, 5, generator=gen(5))
    relevant = torch.full((12, 4), -1, dtype=torch.long)
    sets = []
    for q in range(12):
        n = q % 5  # 0..4 relevant items, row 0 has none
        items = torch.randperm(30, generator=gen(100 + q))[:n]
        relevant[q, :n] = items
        sets.append(items.tolist())
    got = retrieval_scores(query, corpus, Relevance(relevant=relevant), ks=KS, with_map_at_r=True)
    assert_same(got, reference_metrics(query, corpus, sets, KS))
    # One relevant item per query as a (Q,) tensor.
    single = torch.randint(0, 30, (12,), generator=gen(6))
    got = retrieval_scores(query, corpus, Relevance(relevant=single), ks=(1, 5))
    assert_same(got, reference_metrics(query, corpus, [[int(i)] for i in single], (1, 5)))
    torch.testing.assert_close(got["recall@5"], got["hit_rate@5"])  # equal with one relevant


def test_leave_one_out_matches_reference():
    emb = torch.randn(25, 4, generator=gen(7))
    labels = torch.randint(0, 4, (25,), generator=gen(8))
    labels[0] = 9  # a singleton: nothing relevant once itself is excluded
    got = retrieval_scores(
        emb, emb, Relevance(labels, labels, exclude="self"), ks=KS, with_map_at_r=True,
        chunks=SearchChunks(corpus=6),
    )  # fmt: skip
    sets = [[j for j in range(25) if labels[j] == labels[q]] for q in range(25)]
    want = reference_metrics(emb, emb, sets, KS, exclude=list(range(25)))
    assert math.isnan(float(got["map@r"][0]))
    assert_same(got, want)


def test_ties_are_ranked_by_lower_corpus_index():
    # Items 0, 1 and 2 are identical; only item 2 is relevant: it ranks third.
    corpus = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    for chunk_size in (1, 2, 4):
        got = retrieval_scores(
            torch.tensor([[1.0, 0.0]]), corpus, Relevance(relevant=torch.tensor([2])), ks=(3,),
            chunks=SearchChunks(corpus=chunk_size),
        )  # fmt: skip
        assert got["mrr@3"].tolist() == pytest.approx([1 / 3])


def test_hand_made_values():
    hits = torch.tensor([[False, True, True, False], [True, False, False, False]])
    num_relevant = torch.tensor([2, 3])
    assert recall_at_k(hits, num_relevant, 2).tolist() == pytest.approx([0.5, 1 / 3])
    assert hit_rate_at_k(hits, num_relevant, 1).tolist() == [0.0, 1.0]
    assert precision_at_k(hits, num_relevant, 4).tolist() == [0.5, 0.25]
    assert mrr_at_k(hits, num_relevant, 4).tolist() == [0.5, 1.0]
    assert mrr_at_k(hits, num_relevant, 1).tolist() == [0.0, 1.0]
    d = 1 / math.log2(3)
    assert ndcg_at_k(hits, num_relevant, 2).tolist() == pytest.approx([d / (1 + d), 1 / (1 + d)])
    # MAP@R: query 0 (R=2): top 2 = [miss, hit] -> (1/2) / 2; query 1 (R=3): hit at 1 -> 1/3.
    assert map_at_r(hits, num_relevant).tolist() == pytest.approx([0.25, 1 / 3])
    assert r_precision(hits, num_relevant).tolist() == pytest.approx([0.5, 1 / 3])
    # Perfect ranking gives 1 everywhere.
    perfect = torch.tensor([[True, True, False]])
    for fn in (recall_at_k, ndcg_at_k, mrr_at_k):
        assert fn(perfect, torch.tensor([2]), 3).item() == 1.0
    assert map_at_r(perfect, torch.tensor([2])).item() == 1.0


def test_queries_without_relevant_items_are_skipped():
    corpus = torch.eye(3)
    metrics = retrieval_metrics(
        corpus, corpus, Relevance(relevant=torch.tensor([[0], [-1], [2]])), ks=(1,),
        with_map_at_r=True,
    )  # fmt: skip
    assert metrics["recall@1"] == 1.0 and metrics["map@r"] == 1.0
    assert metrics["skipped_queries"] == 1.0
    none = retrieval_metrics(corpus, corpus, Relevance(relevant=torch.full((3, 1), -1)), ks=(1,))
    assert math.isnan(none["recall@1"]) and none["skipped_queries"] == 3.0


def test_chunked_equals_unchunked():
    query = torch.randn(40, 8, generator=gen(9))
    corpus = torch.randn(300, 8, generator=gen(10))
    ql = torch.randint(0, 7, (40,), generator=gen(11))
    cl = torch.randint(0, 7, (300,), generator=gen(12))
    kw = {"ks": (1, 5, 20), "with_map_at_r": True}
    whole = retrieval_scores(
        query, corpus, Relevance(ql, cl), chunks=SearchChunks(10_000, 10_000), **kw
    )
    for chunk_size, query_chunk_size in [(1, 3), (17, 7), (64, 40)]:
        part = retrieval_scores(
            query,
            corpus,
            Relevance(ql, cl),
            chunks=SearchChunks(chunk_size, query_chunk_size),
            **kw,
        )
        assert_same(part, whole)


def test_index_backed_equals_exact_and_handles_exclude():
    emb = torch.randn(200, 8, generator=gen(13))
    labels = torch.randint(0, 5, (200,), generator=gen(14))
    relevance = Relevance(labels, labels, exclude="self")
    exact = retrieval_scores(emb, emb, relevance, metric="dot", ks=(1, 10))
    for backend in ("exact", "faiss_flat"):
        index = build_index(emb, backend, "dot")
        assert_same(retrieval_scores(emb, index, relevance, ks=(1, 10)), exact)
    with pytest.raises(ValueError, match="built with metric='dot'"):
        retrieval_scores(emb, index, relevance, metric="cosine", ks=(1, 10))


def test_stateful_metrics_equal_functional():
    query = torch.randn(50, 6, generator=gen(15))
    corpus = torch.randn(120, 6, generator=gen(16))
    ql = torch.randint(0, 8, (50,), generator=gen(17))  # labels 6, 7 absent from the corpus
    cl = torch.randint(0, 6, (120,), generator=gen(18))
    want = retrieval_metrics(query, corpus, Relevance(ql, cl), ks=(1, 5), with_map_at_r=True)
    collection = RetrievalMetrics(corpus, cl, ks=(1, 5), with_map_at_r=True)
    singles = {
        "recall@5": RecallAtK(corpus, cl, k=5),
        "hit_rate@1": HitRateAtK(corpus, cl, k=1),
        "precision@5": PrecisionAtK(corpus, cl, k=5),
        "mrr@5": MRRAtK(corpus, cl, k=5),
        "ndcg@5": NDCGAtK(corpus, cl, k=5),
        "map@r": MAPAtR(corpus, cl),
    }
    for batch in torch.arange(50).split(16):
        collection.update(query[batch], ql[batch])
        for metric in singles.values():
            metric.update(query[batch], ql[batch])
    got = collection.compute()
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name
    for name, metric in singles.items():
        assert metric.compute().item() == pytest.approx(want[name], abs=1e-6), name
    collection.reset()
    assert collection.compute() == {"skipped_queries": 0.0}


def test_errors_name_the_argument():
    hits = torch.tensor([[True, False]])
    with pytest.raises(TypeError, match="hits must be a"):
        recall_at_k(hits.float(), torch.tensor([1]), 1)
    with pytest.raises(ValueError, match="num_relevant must be"):
        recall_at_k(hits, torch.tensor([1, 2]), 1)
    with pytest.raises(ValueError, match="k must be a positive int"):
        recall_at_k(hits, torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="retrieve k >= R"):
        map_at_r(hits, torch.tensor([3]))
    q, c = torch.randn(3, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match="exclude='self' needs"):
        retrieval_scores(q, c, Relevance(relevant=torch.tensor([0, 1, 2]), exclude="self"))
    with pytest.raises(ValueError, match="repeats a corpus index"):
        retrieval_scores(q, c, Relevance(relevant=torch.tensor([[0, 0], [1, -1], [2, -1]])))
    with pytest.raises(TypeError, match="corpus must be an \\(N, D\\) tensor"):
        retrieval_scores(q, None, Relevance(relevant=torch.tensor([0, 1, 2])))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="corpus_labels must have shape"):
        retrieval_scores(q, c, Relevance(torch.tensor([0, 1, 2]), torch.tensor([1])))
    with pytest.raises(ValueError, match="either by labels or by relevant indices, not both"):
        Relevance(torch.tensor([0]), torch.tensor([0]), relevant=torch.tensor([0]))
    with pytest.raises(ValueError, match="give relevance as query_labels and corpus_labels"):
        Relevance(query_labels=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"exclude must be .* or 'self', got 'me'"):
        Relevance(relevant=torch.tensor([0]), exclude="me")
    with pytest.raises(ValueError, match=r"SearchChunks\.query must be a positive int, got 0"):
        SearchChunks(query=0)
    with pytest.raises(TypeError, match="relevance must be a Relevance"):
        retrieval_scores(q, c, torch.tensor([0, 1, 2]))  # type: ignore[arg-type]
