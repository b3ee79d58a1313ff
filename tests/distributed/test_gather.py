"""Two-rank gloo tests: the gathered losses equal the single-process global-batch losses.

One process group runs every check of :mod:`dist_worker` (starting processes is the expensive
part); each check is reported as its own test item.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dist_worker

from contrastkit import distributed as cd
from spawn_ranks import spawn_ranks

WORLD = 2


def _run_group() -> list[dict[str, str]]:
    return spawn_ranks(dist_worker.worker, WORLD, "ck_dist_")


def test_two_ranks_equal_the_global_batch() -> None:
    """All checks of dist_worker in ONE two-rank group (a single test item, so that pytest-xdist
    does not start the group once per worker). Each failing check is listed with its traceback."""
    results = _run_group()
    failures = []
    for check in sorted(dist_worker.CHECKS):
        for rank, res in enumerate(results):
            if res.get(check) != "ok":
                failures.append(f"{check} on rank {rank}:\n{res.get(check, 'did not run')}")
    assert not failures, f"{len(failures)} failing check(s):\n" + "\n".join(failures)
    assert len(results[0]) == len(dist_worker.CHECKS) >= 18


def test_single_process_is_the_plain_loss() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    from contrastkit.functional import info_nce

    assert cd.get_world_size() == 1 and cd.get_rank() == 0
    assert torch.allclose(
        info_nce(q, k, temperature=0.1, symmetric=True, group=cd.world_group()),
        info_nce(q, k, temperature=0.1, symmetric=True),
    )
