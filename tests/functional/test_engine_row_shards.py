"""The symmetric loss with its rows split into shards (``ContrastiveProblem(row_shards=...)``).

Each shard computes only its (B, N) row block; the column (key -> query) statistics are
combined with the shards' ``all_reduce``. Here the shards are threads of one process with an
in-memory all-reduce (a barrier), so W = 3 and 4 run without a process group; the two-rank
gloo checks of tests/distributed cover the real collectives. Every shard's loss summed equals
the whole problem's, and so do the gradients (keys: summed over the shards, like the
backward of an all-gather).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from contrastkit.functional import tiling
from contrastkit.functional.engine import ContrastiveProblem, RowShards, softmax_contrastive
from reference import as_roles

B, D, M = 4, 5, 3


class _ThreadGroup:
    """An all-reduce over ``world`` threads: each deposits its tensor, then reads the result."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.slots: list[Tensor | None] = [None] * world
        self.barrier = threading.Barrier(world, timeout=60)
        self.calls: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(world)]

    def all_reduce(self, rank: int) -> Callable[[Tensor, str], Tensor]:
        def reduce(x: Tensor, op: str) -> Tensor:
            self.calls[rank].append((op, tuple(x.shape)))
            self.slots[rank] = x.clone()
            self.barrier.wait()
            stacked = torch.stack(self.slots)  # the same order on every thread: same sums
            out = stacked.amax(0) if op == "max" else stacked.sum(0)
            self.barrier.wait()  # nobody overwrites a slot before everyone has read
            return x.copy_(out)

        return reduce


def _run_shards(world: int, fn: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def target(rank: int) -> None:
        try:
            fn(rank)
        except BaseException as err:  # re-raised in the main thread
            errors.append(err)

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _randn(*shape: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _cases(n: int) -> dict[str, dict[str, object]]:
    g = torch.Generator().manual_seed(7)
    groups = torch.randint(0, 3, (n,), generator=g)
    return {
        "plain": {},
        "dot, grouped labels (class sums)": {
            "metric": "dot",
            "query_labels": groups,
            "key_labels": groups,
        },
        "euclidean, ids, positive_mask": {
            "metric": "euclidean",
            "query_ids": torch.randint(0, 5, (n,), generator=g),
            "key_ids": torch.randint(0, 5, (n,), generator=g),
            "positive_mask": torch.rand(n, n, generator=g) < 0.2,
        },
        "shared negatives, ignore_mask": {
            "negatives": True,
            "ignore_mask": torch.rand(n, n + M, generator=g) < 0.3,
        },
    }


def _shard_kwargs(kw: dict[str, object], rows: slice) -> dict[str, object]:
    """This shard's rows of the per-query options; key-side options stay whole."""
    out = dict(kw)
    for name in ("query_labels", "query_ids", "positive_mask", "ignore_mask"):
        if name in kw:
            out[name] = kw[name][rows]  # type: ignore[index]
    return out


@pytest.mark.parametrize("world", [3, 4])
@pytest.mark.parametrize("chunk", [None, 1, 3])
@pytest.mark.parametrize("case", list(_cases(12)))
def test_shards_equal_the_whole_problem(world: int, chunk: int | None, case: str) -> None:
    n = world * B
    kw = dict(_cases(n)[case])
    metric = str(kw.pop("metric", "cosine"))
    q, k, t = _randn(n, D, seed=1), _randn(n, D, seed=2), torch.tensor(0.3, dtype=torch.float64)
    negatives = _randn(M, D, seed=3) if kw.pop("negatives", False) else None

    leaves = [x.clone().requires_grad_() for x in (q, k, t)]
    neg = None if negatives is None else negatives.clone().requires_grad_()
    whole = ContrastiveProblem(leaves[0], leaves[1], neg, symmetric=True, **as_roles(kw))
    ref = softmax_contrastive(whole, temperature=leaves[2], metric=metric, reduction="none")
    ref.sum().backward()

    group = _ThreadGroup(world)
    out: dict[int, tuple[Tensor, list[Tensor | None]]] = {}

    def shard(rank: int) -> None:
        rows = slice(rank * B, (rank + 1) * B)
        qs, ks, ts = q[rows].clone().requires_grad_(), k.clone().requires_grad_(), t.clone()
        ts.requires_grad_()
        ns = None if negatives is None else negatives.clone().requires_grad_()
        problem = ContrastiveProblem(
            qs,
            ks,
            ns,
            positive_offset=rank * B,
            symmetric=True,
            row_shards=RowShards(rank * B, group.all_reduce(rank)),
            **as_roles(_shard_kwargs(kw, rows)),
        )
        loss = tiling(chunk_size=chunk)(softmax_contrastive)(
            problem, temperature=ts, metric=metric, reduction="none"
        )
        loss.sum().backward()
        out[rank] = loss.detach(), [qs.grad, ks.grad, ts.grad, None if ns is None else ns.grad]

    _run_shards(world, shard)
    tol = {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(torch.cat([out[r][0] for r in range(world)]), ref.detach(), **tol)
    torch.testing.assert_close(torch.cat([out[r][1][0] for r in range(world)]), leaves[0].grad)
    for i, leaf in ((1, leaves[1]), (2, leaves[2]), (3, neg)):
        if leaf is not None:  # replicated on every shard: the shards' gradients add up
            total = sum(out[r][1][i] for r in range(world))
            torch.testing.assert_close(total, leaf.grad, **tol)
    # no data-dependent collectives: every shard made the same calls
    assert all(calls == group.calls[0] for calls in group.calls), group.calls


def test_one_shard_is_the_symmetric_loss() -> None:
    q, k = _randn(6, D, seed=4), _randn(6, D, seed=5)
    alone = RowShards(column_offset=0, all_reduce=lambda x, op: x)
    for chunk in (None, 2):
        ref = softmax_contrastive(ContrastiveProblem(q, k, symmetric=True), temperature=0.2)
        got = tiling(chunk_size=chunk)(softmax_contrastive)(
            ContrastiveProblem(q, k, symmetric=True, row_shards=alone),
            temperature=0.2,
        )
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_row_shards_errors() -> None:
    q, k = torch.randn(4, 3), torch.randn(8, 3)
    alone = RowShards(column_offset=0, all_reduce=lambda x, op: x)
    with pytest.raises(ValueError, match="pass symmetric=True with it"):
        ContrastiveProblem(q, k, row_shards=alone)
    with pytest.raises(ValueError, match=r"column_offset must be an int in \[0, N - B\]"):
        ContrastiveProblem(q, k, symmetric=True, row_shards=RowShards(5, alone.all_reduce))
    with pytest.raises(TypeError, match="row_shards must be a RowShards"):
        ContrastiveProblem(q, k, symmetric=True, row_shards=(0, alone.all_reduce))  # type: ignore[arg-type]
