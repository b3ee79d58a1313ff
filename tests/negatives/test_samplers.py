"""Sampler invariants: coverage, no duplicates, M per class, exact length, disjoint ranks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from contrastkit.negatives import MPerClassSampler, NoDuplicatesSampler


def _labels(seed: int = 0, n: int = 203, classes: int = 11) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g).tolist()
    return labels + list(range(classes)) * 4  # every class has at least 4 examples


SKEWED = [0] * 100 + [c for c in range(1, 9) for _ in range(4 + 3 * c)]  # one huge class


@pytest.mark.parametrize(
    ("m", "batch_size", "world", "skewed"),
    [(2, 8, 1, False), (4, 12, 2, False), (3, 9, 3, False), (2, 6, 2, True), (4, 16, 1, True)],
)
def test_m_per_class_invariants(m: int, batch_size: int, world: int, skewed: bool) -> None:
    labels = SKEWED if skewed else _labels()
    samplers = [
        MPerClassSampler(labels, m, batch_size, seed=3, num_replicas=world, rank=r)
        for r in range(world)
    ]
    seen: list[int] = []
    for s in samplers:
        s.set_epoch(1)
        batches = list(s)
        assert len(batches) == len(s)  # exact length
        for b in batches:
            assert len(b) == batch_size and len(set(b)) == batch_size
            counts = Counter(labels[i] for i in b)
            assert set(counts.values()) == {m} and len(counts) == batch_size // m
        seen.extend(i for b in batches for i in b)
    assert len(seen) == len(set(seen))  # no duplicates, disjoint across ranks
    assert len({len(s) for s in samplers}) == 1  # every rank the same number of batches
    # Coverage: the packing reaches the most batches possible with P distinct classes each,
    # max t such that sum_c min(groups_c, t) >= P t, split evenly over the ranks.
    groups = [c // m for c in Counter(labels).values()]
    p = batch_size // m
    best = max(t for t in range(sum(groups) + 1) if sum(min(g, t) for g in groups) >= p * t)
    assert len(samplers[0]) == best // world


def test_m_per_class_is_deterministic_per_epoch_and_changes_across_epochs() -> None:
    labels = _labels(1)
    a, b = MPerClassSampler(labels, 2, 8, seed=5), MPerClassSampler(labels, 2, 8, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    n = len(a)
    b.set_epoch(3)
    assert list(a) != list(b) and len(b) == n  # length does not depend on the epoch


def test_m_per_class_errors() -> None:
    with pytest.raises(ValueError, match=r"m=3 is larger than the size of 1 class"):
        MPerClassSampler([0, 0, 0, 1, 1, 2, 2, 2], 3, 6)
    with pytest.raises(ValueError, match="batch_size must be a multiple of m"):
        MPerClassSampler([0, 0, 1, 1], 2, 5)
    with pytest.raises(ValueError, match="only 2 classes"):
        MPerClassSampler([0, 0, 1, 1], 2, 6)
    with pytest.raises(ValueError, match="rank must be an int in"):
        MPerClassSampler([0, 0, 1, 1], 2, 4, num_replicas=2, rank=2)


def test_no_duplicates_invariants_across_ranks() -> None:
    g = torch.Generator().manual_seed(0)
    texts = [f"t{int(i)}" for i in torch.randint(0, 40, (300,), generator=g)]
    pairs = [(texts[i], f"doc{i % 50}") for i in range(300)]  # two keys per example
    world = 2
    seen: list[int] = []
    lengths = []
    for r in range(world):
        s = NoDuplicatesSampler(pairs, 16, seed=1, num_replicas=world, rank=r)
        s.set_epoch(4)
        batches = list(s)
        assert len(batches) == len(s)
        lengths.append(len(s))
        for b in batches:
            assert len(b) == 16
            keys = [k for i in b for k in pairs[i]]
            assert len(keys) == len(set(keys))  # no key twice in a batch
        seen.extend(i for b in batches for i in b)
    assert len(seen) == len(set(seen))
    assert lengths[0] == lengths[1]


def test_no_duplicates_covers_everything_when_keys_are_unique() -> None:
    s = NoDuplicatesSampler(list(range(50)), 8, drop_last=False, seed=2)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert len(s) == 7 and [len(b) for b in batches].count(8) == 6


def test_no_duplicates_with_a_dataloader() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.arange(20))
    keys = [i % 7 for i in range(20)]
    loader = DataLoader(data, batch_sampler=NoDuplicatesSampler(keys, 5, seed=0))
    for (batch,) in loader:
        assert len({keys[int(i)] for i in batch}) == 5
