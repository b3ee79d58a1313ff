"""Batch samplers that shape what a batch can contrast.

* :class:`MPerClassSampler`: every batch holds P = batch_size / m distinct classes with exactly m
  examples each, so each anchor has m - 1 positives (supervised contrastive, triplet mining).
* :class:`NoDuplicatesSampler`: no two examples of a batch share a key (a text, a document id),
  so in-batch negatives are never copies of the positive (sentence-transformers'
  ``NoDuplicatesBatchSampler``).

Both are ``batch_sampler``s for ``torch.utils.data.DataLoader(dataset, batch_sampler=...)``:
deterministic given ``seed`` and the epoch set with ``set_epoch`` (call it every epoch, as with
``DistributedSampler``), rank-aware (each rank gets every W-th batch of the same global order, so
ranks are disjoint and see the same number of batches), and with an exact ``__len__``.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["MPerClassSampler", "NoDuplicatesSampler"]


def _replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    from contrastkit.distributed import get_rank, get_world_size, is_distributed

    if is_distributed() and num_replicas is not None and num_replicas != get_world_size():
        raise ValueError(
            f"num_replicas={num_replicas} does not match the process group's world size "
            f"{get_world_size()}; omit num_replicas and rank to take them from torch.distributed."
        )
    world = get_world_size() if num_replicas is None else num_replicas
    r = get_rank() if rank is None else rank
    if not isinstance(world, int) or world <= 0:
        raise ValueError(f"num_replicas must be an int > 0, got {world!r}.")
    if not isinstance(r, int) or not 0 <= r < world:
        raise ValueError(f"rank must be an int in [0, {world}), got {r!r}.")
    return world, r


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


class _EpochBatchSampler:
    """Shared epoch / rank logic: subclasses build the global list of batches for an epoch."""

    def __init__(self, seed: int, num_replicas: int | None, rank: int | None) -> None:
        self.seed = int(seed)
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: a different, reproducible order per epoch."""
        self.epoch = int(epoch)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def _global_batches(self) -> list[list[int]]:
        raise NotImplementedError

    def _rank_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            batches = self._global_batches()
            usable = len(batches) - len(batches) % self.num_replicas  # equal count on every rank
            self._cache = (self.epoch, batches[self.rank : usable : self.num_replicas])
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._rank_batches()

    def __len__(self) -> int:
        return len(self._rank_batches())


class MPerClassSampler(_EpochBatchSampler):
    """Batches of P = batch_size / m distinct classes with exactly m examples each.

    Per epoch, each class's examples are shuffled and cut into groups of m (a remainder smaller
    than m waits for another epoch's shuffle); batches are filled greedily from the classes with
    the most groups left (the packing that yields the most batches), then shuffled. The number of
    batches depends only on the class sizes, so ``len`` is the same every epoch.

    Args:
        labels: (N,) integer class of every dataset example (a tensor or a sequence).
        m: examples per class in a batch, >= 1; every class needs at least m examples.
        batch_size: a multiple of m.
        seed: base seed; the epoch is mixed in.
        num_replicas, rank: DDP world size and rank (default: from ``torch.distributed``).

    >>> labels = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    >>> sampler = MPerClassSampler(labels, m=2, batch_size=4)
    >>> len(sampler), len(list(sampler))
    (3, 3)
    >>> all(sorted([labels[i] for i in b]).count(labels[b[0]]) == 2 for b in sampler)
    True
    """

    def __init__(
        self,
        labels: Tensor | Sequence[int],
        m: int,
        batch_size: int,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        self.m = _check_int("m", m)
        self.batch_size = _check_int("batch_size", batch_size)
        if batch_size % m:
            raise ValueError(
                f"batch_size must be a multiple of m={m} (P classes x m examples), got {batch_size}; "
                f"use batch_size={max(1, batch_size // m) * m}."
            )
        self.classes_per_batch = batch_size // m
        labels_list = labels.tolist() if isinstance(labels, Tensor) else list(labels)
        by_class: dict[int, list[int]] = {}
        for i, c in enumerate(labels_list):
            by_class.setdefault(int(c), []).append(i)
        small = {c: len(ix) for c, ix in by_class.items() if len(ix) < m}
        if small:
            shown = dict(list(small.items())[:5])
            raise ValueError(
                f"m={m} is larger than the size of {len(small)} class(es) (class: size, first "
                f"five: {shown}); lower m, or drop classes with fewer than m examples from the "
                "dataset."
            )
        if len(by_class) < self.classes_per_batch:
            raise ValueError(
                f"batch_size / m = {self.classes_per_batch} classes per batch, but the labels have "
                f"only {len(by_class)} classes; lower batch_size or raise m."
            )
        self.by_class = by_class

    def _global_batches(self) -> list[list[int]]:
        g = self._generator()
        groups: dict[int, list[list[int]]] = {}
        for c, ix in self.by_class.items():
            perm = torch.randperm(len(ix), generator=g).tolist()
            shuffled = [ix[p] for p in perm]
            groups[c] = [
                shuffled[s : s + self.m] for s in range(0, len(shuffled) - self.m + 1, self.m)
            ]
        # Greedy "most groups left first" with a random tie-breaking order of the classes,
        # through a heap: O(batches * P log C).
        order = torch.randperm(len(groups), generator=g).tolist()
        classes = list(groups)
        heap = [(-len(groups[classes[o]]), tie, classes[o]) for tie, o in enumerate(order)]
        heapq.heapify(heap)
        batches = []
        while len(heap) >= self.classes_per_batch:
            picked = [heapq.heappop(heap) for _ in range(self.classes_per_batch)]
            batch = []
            for _, tie, c in picked:
                batch.extend(groups[c].pop())
                if groups[c]:
                    heapq.heappush(heap, (-len(groups[c]), tie, c))
            batches.append(batch)
        perm = torch.randperm(len(batches), generator=g).tolist()
        return [batches[p] for p in perm]


class NoDuplicatesSampler(_EpochBatchSampler):
    """Batches in which no two examples share a key.

    Per epoch the examples are shuffled; each batch takes the next examples in that order whose
    keys are not yet in the batch, and skipped examples stay first in line for the next batch.
    With ``drop_last=True`` (default) a batch that cannot be filled is dropped. ``len`` is
    exact for the current epoch (it runs the epoch's packing once and caches it).

    Args:
        keys: one key per example, or a tuple of keys per example (e.g. ``(query_text,
            positive_text)``: no text may appear twice in a batch).
        batch_size: examples per batch.
        drop_last: drop the last incomplete batch.
        seed, num_replicas, rank: as in :class:`MPerClassSampler`.

    >>> keys = ["a", "a", "b", "c", "c", "d"]
    >>> batches = list(NoDuplicatesSampler(keys, batch_size=3))
    >>> all(len({keys[i] for i in b}) == len(b) == 3 for b in batches), len(batches)
    (True, 1)
    """

    def __init__(
        self,
        keys: Sequence[Hashable | tuple[Hashable, ...]],
        batch_size: int,
        *,
        drop_last: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(seed, num_replicas, rank)
        self.batch_size = _check_int("batch_size", batch_size)
        self.drop_last = bool(drop_last)
        self.keys = [k if isinstance(k, tuple) else (k,) for k in keys]

    def _global_batches(self) -> list[list[int]]:
        order = torch.randperm(len(self.keys), generator=self._generator()).tolist()
        remaining = dict.fromkeys(order)  # insertion-ordered set of waiting examples
        batches = []
        while remaining:
            batch: list[int] = []
            seen: set[Hashable] = set()
            for i in remaining:
                ks = self.keys[i]
                if seen.isdisjoint(ks):
                    batch.append(i)
                    seen.update(ks)
                    if len(batch) == self.batch_size:
                        break
            for i in batch:
                del remaining[i]
            # A short batch means every waiting example clashed with it; with drop_last it is
            # dropped and packing goes on with the rest.
            if len(batch) == self.batch_size or not self.drop_last:
                batches.append(batch)
        return batches
