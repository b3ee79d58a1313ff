"""Two-rank gloo group: the monitor's statistics, the DINO center and SwAV's Sinkhorn codes,
all-reduced, equal one process seeing every batch. All distributed checks run in one spawned
group to save time."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import monitor_dist_worker as worker

from contrastkit.losses import DINOLoss
from contrastkit.monitor import CollapseMonitor


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_reduction_equals_single_process() -> None:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker.run, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=120) for _ in range(2))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for rank, result in results.items():
        assert isinstance(result, dict), f"rank {rank} failed: {result}"

    monitor = CollapseMonitor(warn=False)
    for q, k in worker.batches():
        monitor.update(q, k)
    expected = worker.observe(monitor, DINOLoss(center_momentum=0.5), worker.teacher_logits())

    for result in results.values():
        assert result["values"].keys() == expected["values"].keys()
        for name, value in expected["values"].items():
            assert result["values"][name] == pytest.approx(value, rel=1e-10, abs=1e-12), name
        assert result["positive_histogram"] == expected["positive_histogram"]
        assert result["negative_histogram"] == expected["negative_histogram"]
        assert result["center"] == pytest.approx(expected["center"], rel=1e-10)
        assert result["alerts"] == expected["alerts"]

    # Sinkhorn over the global batch: rank r holds rows 6r..6r+5 of the single-process codes
    whole = worker.swav_observe(slice(0, 12), distributed=False)
    codes = torch.tensor(results[0]["codes"] + results[1]["codes"], dtype=torch.float64)
    torch.testing.assert_close(codes, torch.tensor(whole["codes"], dtype=torch.float64))
    # each rank averages its own rows: the mean over ranks is the single-process loss
    mean_loss = (results[0]["swav"] + results[1]["swav"]) / 2
    assert mean_loss == pytest.approx(whole["swav"], rel=1e-10)
    # the module's gather_distributed is group=world_group() of the functional loss
    assert [r["swav_module"] for r in results.values()] == [r["swav"] for r in results.values()]
    # and the global balance differs from balancing each half alone
    local = worker.swav_observe(slice(0, 6), distributed=False)
    assert not torch.allclose(
        torch.tensor(local["codes"]), torch.tensor(results[0]["codes"]), rtol=1e-6
    )
