"""Miners: in-batch top-k and offline mining through an index or exact search."""

from __future__ import annotations

import pytest
import torch

from contrastkit.functional import info_nce, similarity_matrix
from contrastkit.negatives import exact_search, hard_negatives_in_batch, mine_hard_negatives


def test_in_batch_topk_matches_sort() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(7, 5, generator=g), torch.randn(9, 5, generator=g)
    idx = hard_negatives_in_batch(q, k, 3)
    s = similarity_matrix(q, k)
    for i in range(7):
        order = [j for j in s[i].argsort(descending=True).tolist() if j != i]
        assert idx[i].tolist() == order[:3]
    # Ready for the loss as per-query negatives.
    loss = info_nce(q, k[:7], k[idx], temperature=0.1)
    assert torch.isfinite(loss)


def test_in_batch_respects_ignore_and_pads() -> None:
    q = torch.eye(3)
    ignore = torch.tensor([[False, True, True], [False, False, False], [False, False, False]])
    idx = hard_negatives_in_batch(q, q, 2, ignore_mask=ignore)
    assert idx[0].tolist() == [-1, -1]
    with pytest.raises(ValueError, match="k must be <= N - 1"):
        hard_negatives_in_batch(q, q, 3)


def _corpus(
    seed: int = 0, n: int = 60, q: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    corpus = torch.randn(n, 16, generator=g)
    positives = torch.randperm(n, generator=g)[:q]
    query = corpus[positives] + 0.3 * torch.randn(q, 16, generator=g)
    return query, corpus, positives


def test_offline_mining_rules_against_a_loop() -> None:
    query, corpus, positives = _corpus()
    mined = mine_hard_negatives(query, corpus, positives, num_negatives=4, skip_top=2, margin=0.05)
    s = similarity_matrix(query, corpus)
    for i in range(len(query)):
        pos_score = s[i, positives[i]]
        ranked = [j for j in s[i].argsort(descending=True).tolist() if j != positives[i]][2:]
        expected = [j for j in ranked if s[i, j] < pos_score - 0.05][:4]
        assert mined.indices[i].tolist() == expected
        torch.testing.assert_close(mined.scores[i], s[i, expected].float(), rtol=1e-5, atol=1e-5)
    assert (mined.counts() == 4).all()
    triplets = mined.triplets()
    assert len(triplets) == 4 * len(query)
    assert all(p == int(positives[qi]) for qi, p, _ in triplets)


def test_offline_mining_through_the_index_package_equals_exact() -> None:
    from contrastkit.index import build_index

    query, corpus, positives = _corpus(1)
    index = build_index(corpus, backend="exact", metric="cosine")
    a = mine_hard_negatives(
        query, corpus, positives, num_negatives=5, index=index, max_score_ratio=0.95
    )
    b = mine_hard_negatives(query, corpus, positives, num_negatives=5, max_score_ratio=0.95)
    assert torch.equal(a.indices, b.indices)


def test_any_object_with_search_works_and_padding() -> None:
    class TupleIndex:
        def __init__(self, corpus: torch.Tensor) -> None:
            self.corpus = corpus

        def search(self, query: torch.Tensor, k: int):
            return exact_search(query, self.corpus, k)

    query, corpus, positives = _corpus(2)
    mined = mine_hard_negatives(
        query,
        corpus,
        [[int(p)] for p in positives],
        num_negatives=3,
        margin=10.0,
        index=TupleIndex(corpus),
    )
    assert (mined.indices == -1).all()  # a cosine margin of 10 leaves nothing
    assert mined.triplets() == []


def test_several_positives_are_all_excluded() -> None:
    query, corpus, _ = _corpus(3)
    nearest = exact_search(query, corpus, 3)[1]
    lists = [nearest[i].tolist() for i in range(len(query))]  # treat the 3 nearest as positives
    mined = mine_hard_negatives(query, corpus, lists, num_negatives=2)
    for i, row in enumerate(mined.indices.tolist()):
        assert not set(row) & set(lists[i])


def test_bad_input() -> None:
    query, corpus, positives = _corpus()
    with pytest.raises(ValueError, match="positives must be a"):
        mine_hard_negatives(query, corpus, positives[:3])
    with pytest.raises(ValueError, match="skip_top must be an int >= 0"):
        mine_hard_negatives(query, corpus, positives, skip_top=-1)
    with pytest.raises(ValueError, match="corpus rows in"):
        mine_hard_negatives(query, corpus, positives + 1000)
