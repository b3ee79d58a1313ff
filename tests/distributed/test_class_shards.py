"""Two-rank gloo test: the class-sharded margin softmax (each rank holds C / W centres, the
log-sum-exp and the target logits combined by all-reduce) equals the single-process loss in
value and gradient. One process group runs every check of :mod:`class_shard_worker`."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import class_shard_worker

from contrastkit.functional.class_logits import class_shard
from contrastkit.functional.proxy import arcface_loss
from spawn_ranks import spawn_ranks

WORLD = 2


def test_two_ranks_holding_half_the_classes_equal_one_process() -> None:
    results = spawn_ranks(class_shard_worker.worker, WORLD, "ck_shard_")
    failures = [
        f"{check} on rank {rank}:\n{res.get(check, 'did not run')}"
        for check in sorted(class_shard_worker.CHECKS)
        for rank, res in enumerate(results)
        if res.get(check) != "ok"
    ]
    assert not failures, f"{len(failures)} failing check(s):\n" + "\n".join(failures)
    assert len(results[0]) == len(class_shard_worker.CHECKS) >= 7


def test_class_shards_cover_the_classes_once() -> None:
    for c, w in ((7, 2), (9, 4), (10, 3), (4, 4)):
        bounds = [class_shard(c, r, w) for r in range(w)]
        assert bounds[0][0] == 0 and bounds[-1][1] == c
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        assert all(stop > start for start, stop in bounds)


def test_single_process_shard_classes_is_the_plain_loss() -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    assert torch.equal(arcface_loss(x, y, w, shard_classes=True), arcface_loss(x, y, w))
