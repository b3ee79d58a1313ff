"""The ring (``collective="ring"``, :mod:`contrastkit.functional.ring`) on 2, 3 and 4 gloo
processes: value and gradients equal the gathered path's and the single-process global
batch's (the checks of :mod:`ring_worker`); and the one clear error for an unknown choice."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ring_worker

from contrastkit.functional import info_nce, nt_xent, supervised_contrastive
from contrastkit.losses import create_loss
from spawn_ranks import spawn_ranks


def _run_group(world: int) -> list[dict[str, str]]:
    return spawn_ranks(ring_worker.worker, world, f"ck_ring{world}_")


def test_ring_equals_gather_and_the_global_batch_on_2_3_4_ranks() -> None:
    """One test item (so pytest-xdist does not split it) that starts 4 processes; every check
    of ring_worker runs on the subgroups of the last 2 and 3 of them and on all 4."""
    results = _run_group(4)
    failures = []
    for w in ring_worker.WORLDS:
        for check in sorted(ring_worker.CHECKS):
            for rank in range(4 - w, 4):
                got = results[rank].get(f"W={w} {check}")
                if got != "ok":
                    failures.append(f"W={w} {check} on rank {rank}:\n{got}")
    assert not failures, f"{len(failures)} failing check(s):\n" + "\n".join(failures)
    assert len(results[-1]) == 3 * len(ring_worker.CHECKS) >= 15  # the last rank: all 3


@pytest.mark.parametrize(
    "call",
    [
        lambda x: info_nce(x, x, temperature=0.1, collective="allgather"),
        lambda x: nt_xent(x, x, temperature=0.1, collective="allgather"),
        lambda x: supervised_contrastive(
            x, torch.arange(4) % 2, temperature=0.1, collective="allgather"
        ),
        lambda x: create_loss("info_nce", collective="allgather"),
    ],
)
def test_unknown_collective_is_one_clear_error(call) -> None:
    with pytest.raises(ValueError) as err:
        call(torch.randn(4, 3))
    assert str(err.value) == (
        "collective must be one of 'auto', 'gather', 'ring', got 'allgather'."
    )
