"""False-negative masks: loop references and their effect in info_nce."""

from __future__ import annotations

import pytest
import torch

from contrastkit.functional import KeyRoles, info_nce, similarity_matrix
from contrastkit.negatives import (
    mask_from_guide,
    mask_from_ids,
    mask_from_labels,
    mask_from_texts,
    mask_from_threshold,
)


def test_ids_mask_matches_loop_and_never_masks_the_positive() -> None:
    g = torch.Generator().manual_seed(0)
    qi, ki, ni = (torch.randint(0, 4, (n,), generator=g) for n in (6, 6, 3))
    mask = mask_from_ids(qi, ki, ni)
    cand = torch.cat([ki, ni])
    for i in range(6):
        for j in range(9):
            assert bool(mask[i, j]) == (i != j and bool(qi[i] == cand[j]))


def test_texts_mask_duplicates_of_the_positive() -> None:
    queries = ["what is a cat", "what is a dog", "cats?"]
    keys = ["a cat is an animal", "a dog barks", "a cat is an animal"]
    mask = mask_from_texts(queries, keys, ["a dog barks", "unrelated"])
    assert mask.int().tolist() == [[0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [1, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="must pair up"):
        mask_from_texts(["a"], ["b", "c"])


def test_labels_mask() -> None:
    mask = mask_from_labels(torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0, 1]))
    assert mask.int().tolist() == [[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]


def test_threshold_mask_matches_loop() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, n = (
        torch.randn(5, 3, generator=g),
        torch.randn(5, 3, generator=g),
        torch.randn(2, 3, generator=g),
    )
    mask = mask_from_threshold(q, k, n, threshold=0.3)
    s = similarity_matrix(q, torch.cat([k, n]))
    expected = s > 0.3
    expected[torch.arange(5), torch.arange(5)] = False
    assert torch.equal(mask, expected)


def test_guide_mask_is_gistembed_rule_and_lowers_the_loss() -> None:
    g = torch.Generator().manual_seed(2)
    gq, gk = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    gk[3] = gq[0]  # the guide sees key 3 as a perfect match of query 0: a false negative
    mask = mask_from_guide(gq, gk, margin=0.05)
    s = similarity_matrix(gq, gk)
    for i in range(6):
        for j in range(6):
            assert bool(mask[i, j]) == (i != j and bool(s[i, j] > s[i, i] - 0.05))
    assert mask[0, 3]
    q, k = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert info_nce(q, k, temperature=0.1, roles=KeyRoles(ignore_mask=mask)) < info_nce(
        q, k, temperature=0.1
    )


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="query_ids must be a 1-D integer tensor"):
        mask_from_ids(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="margin must be >= 0"):
        mask_from_guide(torch.randn(2, 2), torch.randn(2, 2), margin=-1.0)
    with pytest.raises(ValueError, match="at least as many rows"):
        mask_from_guide(torch.randn(3, 2), torch.randn(2, 2))
