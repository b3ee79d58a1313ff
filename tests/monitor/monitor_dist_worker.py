"""Rank body of the 2-process gloo test in ``test_distributed.py`` (importable by spawned children).

Every rank builds the same batches, takes every other one, and reports what the monitor and the
DINO center computed after their all-reduce; the parent compares with one process seeing all.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from contrastkit.collectives import world_group
from contrastkit.functional.noncontrastive import sinkhorn_knopp, swav_loss
from contrastkit.losses import DINOLoss, SwAVLoss
from contrastkit.monitor import CollapseMonitor


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for size in (16, 9, 12, 5, 20):  # uneven, and rank 0 gets three batches, rank 1 two
        q = torch.randn(size, 8, generator=g, dtype=torch.float64) + 0.3
        out.append((q, q + 0.2 * torch.randn(size, 8, generator=g, dtype=torch.float64)))
    return out


def teacher_logits() -> torch.Tensor:
    return torch.randn(2, 10, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def swav_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scores (12, 5) for Sinkhorn; query, key (12, 4) and prototypes (5, 4) for SwAV."""
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(12, 5, generator=g, dtype=torch.float64) * 2 - 1
    query = torch.randn(12, 4, generator=g, dtype=torch.float64)
    key = query + 0.3 * torch.randn(12, 4, generator=g, dtype=torch.float64)
    return scores, query, key, torch.randn(5, 4, generator=g, dtype=torch.float64)


def swav_observe(rows: slice, distributed: bool) -> dict:
    scores, query, key, prototypes = swav_inputs()
    group = world_group() if distributed else None  # None: this process's rows alone
    module = SwAVLoss(dim=4, num_prototypes=5, gather_distributed=distributed).double()
    with torch.no_grad():
        module.prototypes.copy_(prototypes)
    return {
        "codes": sinkhorn_knopp(scores[rows], group=group).tolist(),
        "swav": float(swav_loss(query[rows], key[rows], prototypes, group=group)),
        "swav_module": float(module(query[rows], key[rows]).detach()),
    }


def observe(monitor: CollapseMonitor, dino: DINOLoss, teacher: torch.Tensor) -> dict:
    report = monitor.compute(step=0, reset=False)
    again = monitor.compute(step=1)  # reset=False kept the local window: same reduced values
    assert again.values.pop("rank_vs_best") == 1.0  # same window: the best rank so far
    assert again.values == report.values, (again.values, report.values)
    hist = report.histograms
    dino.update_center(teacher)
    return {
        "values": report.values,
        "positive_histogram": hist["positive"].tolist(),
        "negative_histogram": hist["negative"].tolist(),
        "center": dino.center.tolist(),
        "alerts": [a.metric for a in report.alerts],
    }


def run(rank: int, world_size: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        monitor = CollapseMonitor(warn=False)
        for i, (q, k) in enumerate(batches()):
            if i % world_size == rank:
                monitor.update(q, k)
        teacher = teacher_logits()[:, rank::world_size]  # this rank's share of the batch
        result = observe(monitor, DINOLoss(center_momentum=0.5), teacher)
        result.update(swav_observe(slice(6 * rank, 6 * rank + 6), distributed=True))
        queue.put((rank, result))
    except Exception as error:  # report instead of hanging the parent
        queue.put((rank, repr(error)))
    finally:
        dist.destroy_process_group()
