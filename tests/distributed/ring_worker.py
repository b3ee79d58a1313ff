"""Checks of the ring (``collective="ring"``) on gloo groups of W = 2, 3 and 4 ranks.

Starting processes is the expensive part, so ONE group of 4 processes runs every check three
times: on the subgroups of ranks {2, 3} and {1, 2, 3} (whose group ranks 0.. are not their
global ranks: the ring must pass to the group's neighbours) and on all four.
Every rank builds the same float64 global batch of W*B rows from a seeded generator and takes
its B rows. Each check runs the loss three ways and compares value and gradients
(tolerance-tight): the ring, the gathered path (``collective="gather"``) on the same ranks,
and the single-process loss on the global batch (after DDP's averaging: the mean over ranks of
the loss and of the replicated parameters' gradients, the embeddings' gradient / W).

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

from contrastkit.functional import (
    KeyRoles,
    info_nce,
    nt_xent,
    supervised_contrastive,
    tiling,
)

B, D, M = 3, 4, 2
TOL = {"rtol": 1e-10, "atol": 1e-12}
GROUP: dist.ProcessGroup | None = None  # the group the checks run on (set by the worker)


def _rank() -> int:
    return dist.get_rank(GROUP)


def _world() -> int:
    return dist.get_world_size(GROUP)


def _close(name: str, a: Tensor, b: Tensor) -> None:
    if not torch.allclose(a, b, **TOL):
        raise AssertionError(f"{name}: max |diff| = {float((a - b).abs().max()):.3e}")


def _mean_over_ranks(x: Tensor) -> Tensor:
    x = x.detach().clone()
    dist.all_reduce(x, group=GROUP)
    return x / _world()


def _global(seed: int, *shape: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _slice(x: Tensor) -> Tensor:
    rank, world = _rank(), _world()
    rows = x.shape[0] // world
    return x[rank * rows : (rank + 1) * rows]


def _run(fn: Callable[..., Tensor], inputs: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    leaves = [x.clone().requires_grad_() for x in inputs]
    loss = fn(*leaves)
    loss.sum().backward()
    return loss.detach(), [leaf.grad for leaf in leaves]


def _three_ways(
    inputs: list[Tensor],
    sliced: list[bool],
    global_fn: Callable[..., Tensor],
    local_fn: Callable[..., Tensor],
) -> None:
    """``local_fn(*local_inputs, collective=...)`` on the ring == on the gathered path ==
    ``global_fn(*inputs)``; ``sliced[i]``: input i is split over the ranks by rows (else
    replicated, like a temperature)."""
    world = _world()
    local = [_slice(x) if s else x for x, s in zip(inputs, sliced)]
    ring = _run(lambda *a: local_fn(*a, collective="ring"), local)
    gather = _run(lambda *a: local_fn(*a, collective="gather"), local)
    ref = _run(global_fn, inputs)
    _close("ring vs gather: loss", ring[0], gather[0])
    for i, (r, g) in enumerate(zip(ring[1], gather[1])):
        _close(f"ring vs gather: grad[{i}]", r, g)
    _close("ring vs one process: loss", _mean_over_ranks(ring[0].sum()), ref[0].sum())
    for i, (r, g, s) in enumerate(zip(ring[1], ref[1], sliced)):
        want = _slice(g) if s else g
        got = r / world if s else _mean_over_ranks(r)
        _close(f"ring vs one process: grad[{i}]", got, want)


def _group() -> dict[str, object]:
    return {"group": GROUP}


def check_info_nce_plain_and_symmetric() -> None:
    g = _world() * B
    q, k = _global(1, g, D), _global(2, g, D)
    for symmetric in (False, True):
        for chunk in (None, 2):  # one tile per block / 2-row, 8-column tiles
            try:
                _three_ways(
                    [q, k],
                    [True, True],
                    lambda a, b, s=symmetric: info_nce(a, b, temperature=0.1, symmetric=s),
                    lambda a, b, s=symmetric, c=chunk, **kw: tiling(chunk_size=c)(info_nce)(
                        a, b, temperature=0.1, symmetric=s, **_group(), **kw
                    ),
                )
            except AssertionError as err:
                raise AssertionError(f"symmetric={symmetric}, chunk={chunk}: {err}") from None


def check_info_nce_labels_ids_learnable_temperature() -> None:
    g = _world() * B
    q, k = _global(3, g, D), _global(4, g, D)
    gen = torch.Generator().manual_seed(5)
    ql, kl = torch.randint(0, 3, (g,), generator=gen), torch.randint(0, 3, (g,), generator=gen)
    ids = torch.randint(0, 4, (g,), generator=gen)
    # cosine at t = 0.3: logits within +-40 (one exp, no max pass); dot at t = 0.05: not
    for symmetric in (False, True):
        for metric in ("cosine", "dot"):
            t = torch.tensor(0.3 if metric == "cosine" else 0.05, dtype=torch.float64)
            try:
                _three_ways(
                    [q, k, t],
                    [True, True, False],
                    lambda a, b, tt, s=symmetric, m=metric: info_nce(
                        a,
                        b,
                        temperature=tt,
                        metric=m,
                        symmetric=s,
                        roles=KeyRoles(query_labels=ql, key_labels=kl, query_ids=ids, key_ids=ids),
                    ),
                    lambda a, b, tt, s=symmetric, m=metric, **kw: info_nce(
                        a,
                        b,
                        temperature=tt,
                        metric=m,
                        symmetric=s,
                        roles=KeyRoles(
                            query_labels=_slice(ql),
                            key_labels=_slice(kl),
                            query_ids=_slice(ids),
                            key_ids=_slice(ids),
                        ),
                        **_group(),
                        **kw,
                    ),
                )
            except AssertionError as err:
                raise AssertionError(f"symmetric={symmetric}, {metric}: {err}") from None


def check_info_nce_masks_and_negatives() -> None:
    """Shared negatives travel with the keys (masks over the W*M of them), per-query ones stay
    local; euclidean and dot, one-directional and symmetric, chunked."""
    w = _world()
    g = w * B
    q, k = _global(6, g, D), _global(7, g, D)
    shared, per_query = _global(8, w * M, D), _global(9, g, M, D)
    gen = torch.Generator().manual_seed(10)
    pos = torch.rand(g, g, generator=gen) < 0.2
    cases = [  # euclidean at t = 0.02 and dot at 0.2: beyond / within the one-exp bound
        ("shared", shared, torch.rand(g, g + w * M, generator=gen) < 0.25, "euclidean", False),
        ("per-query", per_query, torch.rand(g, g + M, generator=gen) < 0.25, "dot", True),
    ]
    for name, negs, ign, metric, symmetric in cases:
        options = {
            "temperature": 0.02 if metric == "euclidean" else 0.2,
            "metric": metric,
            "symmetric": symmetric,
            "reduction": "sum",
        }

        def whole(a: Tensor, b: Tensor, c: Tensor, ign: Tensor = ign, kw: dict = options) -> Tensor:
            return info_nce(a, b, c, roles=KeyRoles(positive_mask=pos, ignore_mask=ign), **kw)

        for chunk in (None, 2):

            def ranks(
                a: Tensor,
                b: Tensor,
                c: Tensor,
                collective: str,
                ign: Tensor = ign,
                kw: dict = options,
                chunk: int | None = chunk,
            ) -> Tensor:
                roles = KeyRoles(positive_mask=_slice(pos), ignore_mask=_slice(ign))
                with tiling(chunk_size=chunk):
                    return info_nce(a, b, c, roles=roles, collective=collective, **_group(), **kw)

            try:
                _three_ways([q, k, negs], [True, True, True], whole, ranks)
            except AssertionError as err:
                raise AssertionError(f"{name} negatives, chunk={chunk}: {err}") from None


def check_nt_xent_and_supcon() -> None:
    g = _world() * B
    z1, z2 = _global(11, g, D), _global(12, g, D)
    _three_ways(
        [z1, z2],
        [True, True],
        lambda a, b: nt_xent(a, b, temperature=0.5),
        lambda a, b, **kw: nt_xent(a, b, temperature=0.5, **_group(), **kw),
    )
    views = _global(13, g, 2, D)
    labels = torch.arange(g) % (g - 1)  # label 0 twice, the others once (per view: twice)
    labels[-1] = 99  # no other example: its two views are each other's only positive
    _three_ways(
        [views],
        [True],
        lambda a: supervised_contrastive(a, labels, temperature=0.2, metric="euclidean"),
        lambda a, **kw: supervised_contrastive(
            a, _slice(labels), temperature=0.2, metric="euclidean", **_group(), **kw
        ),
    )
    flat = _global(14, g, D)
    sparse = torch.arange(g)
    sparse[-1] = 0  # one pair: most anchors (and whole ranks) have no positive
    _three_ways(
        [flat],
        [True],
        lambda a: supervised_contrastive(a, sparse, temperature=0.2),
        lambda a, **kw: supervised_contrastive(
            a, _slice(sparse), temperature=0.2, **_group(), **kw
        ),
    )


def check_loss_module_and_auto() -> None:
    from contrastkit.functional import ring
    from contrastkit.losses import create_loss

    g = _world() * B
    q, k = _global(15, g, D), _global(16, g, D)
    if _world() == dist.get_world_size():  # a loss module computes over the default group
        _three_ways(
            [q, k],
            [True, True],
            create_loss("info_nce", temperature=0.3, symmetric=True),
            lambda a, b, collective: create_loss(
                "info_nce",
                temperature=0.3,
                symmetric=True,
                gather_distributed=True,
                collective=collective,
            )(a, b),
        )
    # "auto" picks the ring above the size: a threshold of 0 bytes makes every problem big
    saved = ring.RING_MIN_GATHERED_BYTES
    try:
        ring.RING_MIN_GATHERED_BYTES = 0
        auto = info_nce(_slice(q), _slice(k), temperature=0.3, group=GROUP)
    finally:
        ring.RING_MIN_GATHERED_BYTES = saved
    gather = info_nce(_slice(q), _slice(k), temperature=0.3, group=GROUP)
    _close("auto (ring) vs auto (gather)", auto, gather)


CHECKS = {name: fn for name, fn in globals().items() if name.startswith("check_")}


WORLDS = (2, 3, 4)


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Rank ``rank`` of ``world`` = 4 processes: every check on the last 2, 3, 4 ranks;
    results ``{"W=<w> <check>": "ok" | traceback}``."""
    global GROUP
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    results = {}
    try:
        for w in WORLDS:
            GROUP = dist.new_group(list(range(world - w, world)))  # every rank creates it
            if rank >= world - w:
                for name, fn in CHECKS.items():
                    try:
                        fn()
                        results[f"W={w} {name}"] = "ok"
                    except Exception:
                        results[f"W={w} {name}"] = traceback.format_exc()
                    dist.barrier(GROUP)
            dist.barrier()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()
