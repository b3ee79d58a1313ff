"""Which items each optimizer step trains on: ``data.sampler`` as a resumable order.

* ``random``: a fresh permutation per epoch (the ragged tail dropped);
* ``m_per_class``: :class:`contrastkit.negatives.MPerClassSampler` (``data.sampler_m`` items of
  each of batch / m classes, from the task's ``train_labels``);
* ``no_duplicates``: :class:`contrastkit.negatives.NoDuplicatesSampler` (no two rows of a batch
  share a group id, from the task's ``train_groups``).

Every order is DDP-aware (rank ``r`` of ``W`` takes its share of the same global batch, so the
ranks' batches together are the single-process batch of ``W * batch_size``), has an exact
length per epoch and a ``state_dict`` that the checkpoint stores, so ``--resume`` continues on
the same items.

>>> order = DataOrder(10, batch_size=4, seed=0)
>>> [len(order.next()) for _ in range(3)], order.epoch
([4, 4, 4], 1)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class DataOrder:
    """Epoch-wise random permutations of ``n`` items, ``batch_size`` per rank at a time."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if n < batch_size * world:
            raise ValueError(
                f"optim.batch_size={batch_size} x {world} process(es) exceeds the {n} training "
                "items; lower optim.batch_size or use more data."
            )
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0
        self.epoch = 0

    def next(self) -> Tensor:
        step_size = self.batch_size * self.world
        if self.pos + step_size > self.n:  # drop the ragged tail, start a new epoch
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
            self.epoch += 1
        start = self.pos + self.rank * self.batch_size
        self.pos += step_size
        return self.perm[start : start + self.batch_size]

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "perm": self.perm,
            "pos": self.pos,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.perm, self.pos, self.epoch = state["perm"], int(state["pos"]), int(state["epoch"])


class SamplerOrder:
    """A library batch sampler (``set_epoch`` + exact ``len``) as a resumable order: the state
    is (epoch, batch position), the batches of an epoch follow from its seed."""

    def __init__(self, sampler: Any) -> None:
        if len(sampler) == 0:
            raise ValueError(
                "data.sampler: the sampler makes no batch from the training items; lower "
                "optim.batch_size (or data.sampler_m), or use more data."
            )
        self.sampler, self.epoch, self.pos = sampler, 0, 0
        self._batches = list(sampler)

    def next(self) -> Tensor:
        if self.pos >= len(self._batches):
            self.epoch, self.pos = self.epoch + 1, 0
            self._load_epoch()
        batch = self._batches[self.pos]
        self.pos += 1
        return torch.as_tensor(batch, dtype=torch.long)

    def _load_epoch(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self._batches = list(self.sampler)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._load_epoch()


class MixtureOrder:
    """Batches from a mixture of sources (``data.mixture``): every batch from one source.

    The training items are the sources' rows one after the other (``sizes``); each source keeps
    its own epoch-wise :class:`DataOrder`. Step ``t`` draws its source from a generator seeded by
    ``(seed, t)`` alone (``proportional``: with probability ``weight / sum(weights)``), or takes
    source ``t mod S`` (``round_robin``): every process of a torchrun job draws the same source at
    every step without communicating, and a resumed run (the per-source orders and ``t`` are the
    state) draws what an uninterrupted one would.

    >>> order = MixtureOrder([10, 20], [1.0, 1.0], batch_size=2, seed=0, sampling="round_robin")
    >>> [order.source_of(t) for t in range(4)], int(order.next().max()) < 10
    ([0, 1, 0, 1], True)
    """

    def __init__(
        self,
        sizes: list[int],
        weights: list[float],
        batch_size: int,
        seed: int,
        sampling: str = "proportional",
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.orders = [
            DataOrder(n, batch_size, seed + 1000 * (i + 1), rank, world)
            for i, n in enumerate(sizes)
        ]
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.seed, self.sampling, self.step = seed, sampling, 0

    def source_of(self, step: int) -> int:
        """The source of step ``step`` (a function of the seed and the step only)."""
        if self.sampling == "round_robin":
            return step % len(self.orders)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return int(torch.multinomial(self.weights, 1, generator=g))

    def next(self) -> Tensor:
        source = self.source_of(self.step)
        self.step += 1
        return self.orders[source].next() + self.offsets[source]

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "sources": [o.state_dict() for o in self.orders]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        for order, s in zip(self.orders, state["sources"]):
            order.load_state_dict(s)


def build_order(
    cfg: Any, task: Any, rank: int = 0, world: int = 1
) -> DataOrder | SamplerOrder | MixtureOrder:
    """The order ``cfg.data.sampler`` names over the task's training items (``data.mixture``:
    a :class:`MixtureOrder` over the task's ``source_sizes``)."""
    from contrastkit.negatives import MPerClassSampler, NoDuplicatesSampler

    d, b = cfg.data, cfg.optim.batch_size
    if getattr(d, "mixture", None):
        return MixtureOrder(
            list(task.source_sizes),
            [s.weight for s in d.mixture],
            b,
            cfg.seed,
            d.mixture_sampling,
            rank,
            world,
        )
    if d.sampler == "random":
        return DataOrder(task.num_train, b, cfg.seed, rank, world)
    if d.sampler == "m_per_class":
        if task.train_labels is None:
            raise ValueError(
                f"data.sampler: got 'm_per_class'; task: {cfg.task} has no class labels; use "
                "random or no_duplicates."
            )
        sampler: Any = MPerClassSampler(
            task.train_labels,
            m=d.sampler_m,
            batch_size=b,
            seed=cfg.seed,
            num_replicas=world,
            rank=rank,
        )
    else:
        keys = task.train_groups if task.train_groups is not None else task.train_labels
        if keys is None:
            raise ValueError(
                f"data.sampler: got 'no_duplicates'; task: {cfg.task} has no group ids; use random."
            )
        sampler = NoDuplicatesSampler(
            keys.tolist(), batch_size=b, seed=cfg.seed, num_replicas=world, rank=rank
        )
    return SamplerOrder(sampler)
