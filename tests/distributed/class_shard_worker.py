"""Checks run inside ONE two-rank gloo group for the class-sharded margin softmax
(:mod:`contrastkit.functional.class_logits`, ``shard_classes=True``).

Every rank builds the same global batch and the same global centres, keeps its rows of the
batch and its shard of the classes, and compares with the single-process loss on everything:

* the mean over ranks of the per-rank loss equals the global loss;
* the per-rank embedding gradient divided by W (DDP's averaging) equals the global gradient's
  slice; each rank's centres get exactly the global gradient of their rows; a replicated
  learnable temperature gets the global gradient after averaging.

Results are written as JSON ``{check: "ok" | traceback}`` per rank.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from contrastkit.functional.class_logits import class_shard
from contrastkit.functional.proxy import (
    arcface_loss,
    cosface_loss,
    proxy_nca_loss,
    subcenter_arcface_loss,
)
from contrastkit.losses import ArcFace

B, D, C = 5, 6, 7  # local batch, dim, classes (shards of 4 and 3 on two ranks)
TOL = {"rtol": 1e-9, "atol": 1e-11}


def _mean_over_ranks(x: Tensor) -> Tensor:
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def _close(name: str, a: Tensor, b: Tensor) -> None:
    if not torch.allclose(a, b, **TOL):
        raise AssertionError(f"{name}: max |diff| = {float((a - b).abs().max()):.3e}")


def _compare(fn: Callable[..., Tensor], k: int = 1, seed: int = 0) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(world * B, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (world * B,), generator=g)
    w = torch.randn(C * k, D, generator=g, dtype=torch.float64)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    single = fn(xg, y, wg, shard_classes=False)
    single.backward()
    start, stop = class_shard(C, rank, world)
    rows = slice(rank * B, (rank + 1) * B)
    xl = x[rows].clone().requires_grad_()
    wl = w[start * k : stop * k].clone().requires_grad_()
    local = fn(xl, y[rows], wl, shard_classes=True)
    local.backward()
    _close("loss", _mean_over_ranks(local), single.detach())
    assert xg.grad is not None and xl.grad is not None and wl.grad is not None
    _close("embedding grad", xl.grad / world, xg.grad[rows])
    assert wg.grad is not None
    _close("centre grad", wl.grad, wg.grad[start * k : stop * k])


def check_arcface() -> None:
    _compare(lambda x, y, w, **kw: arcface_loss(x, y, w, scale=16.0, block_size=2, **kw))


def check_cosface_sum_reduction() -> None:
    _compare(
        lambda x, y, w, **kw: cosface_loss(
            x, y, w, scale=16.0, block_size=3, reduction="sum", **kw
        ),
        seed=1,
    )


def check_subcenter_arcface() -> None:
    _compare(
        lambda x, y, w, **kw: subcenter_arcface_loss(
            x, y, w, num_subcenters=2, scale=16.0, block_size=1, **kw
        ),
        k=2,
        seed=2,
    )


def check_learnable_temperature() -> None:
    t_single = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    t_local = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)

    def fn(x: Tensor, y: Tensor, w: Tensor, *, shard_classes: bool) -> Tensor:
        t = t_local if shard_classes else t_single
        return proxy_nca_loss(x, y, w, temperature=t, block_size=2, shard_classes=shard_classes)

    _compare(fn, seed=3)
    assert t_local.grad is not None and t_single.grad is not None
    _close("temperature grad", _mean_over_ranks(t_local.grad), t_single.grad)


def check_module_holds_its_shard() -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    loss = ArcFace(num_classes=C, embedding_dim=D, shard_classes=True)
    start, stop = class_shard(C, rank, world)
    assert loss.weight.shape == (stop - start, D), loss.weight.shape
    value = loss(torch.randn(B, D), torch.arange(B) % C)
    value.backward()
    assert torch.isfinite(value) and loss.weight.grad is not None


def check_partial_fc_over_shards() -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    start, stop = class_shard(C, rank, world)
    w = torch.randn(stop - start, D, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 6, 6, 1])  # classes 0, 1 on rank 0; 6 on rank 1
    value = cosface_loss(
        torch.randn(B, D, dtype=torch.float64),
        y,
        w,
        sample_fraction=0.5,
        generator=torch.Generator().manual_seed(rank),
        shard_classes=True,
    )
    value.backward()
    assert torch.isfinite(value) and w.grad is not None
    mine = [c - start for c in (0, 1, 6) if start <= c < stop]
    assert (w.grad[mine].abs().sum(dim=1) > 0).all()  # the batch's classes always kept


def check_bad_label_raises_on_every_rank() -> None:
    y = torch.tensor([0, 1, 2, 3, 7 if dist.get_rank() == 1 else 0])  # only rank 1 is wrong
    try:
        start, stop = class_shard(C, dist.get_rank(), dist.get_world_size())
        arcface_loss(torch.randn(B, D), y, torch.randn(stop - start, D), shard_classes=True)
    except ValueError as err:
        assert "[0, 7), got 7" in str(err), str(err)
    else:
        raise AssertionError("no ValueError for a label >= num_classes")


CHECKS = {name: fn for name, fn in globals().items() if name.startswith("check_") and callable(fn)}


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    results = {}
    try:
        for name, fn in CHECKS.items():
            try:
                fn()
                results[name] = "ok"
            except Exception:
                results[name] = traceback.format_exc()
            dist.barrier()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()
