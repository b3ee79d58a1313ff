"""Checks run inside ONE two-rank gloo group (process start is the expensive part).

Every rank builds the same global batch from a seeded generator, takes its slice, and compares
its distributed loss and gradients with the single-process computation on the global batch:

* the mean over ranks of the per-rank loss equals the global loss;
* the per-rank embedding gradient divided by W (DDP's averaging) equals the global gradient's
  slice; replicated parameters (temperature, bias, encoder weights) get the global gradient after
  averaging over ranks.

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
from torch import Tensor, nn

from contrastkit import distributed as cd
from contrastkit.functional import (
    KeyRoles,
    info_nce,
    nt_xent,
    sigmoid_contrastive,
    supervised_contrastive,
    tiling,
)
from contrastkit.gradcache import grad_cache_step

B, D, M = 5, 6, 3
TOL = {"rtol": 1e-9, "atol": 1e-10}


def _over_world(loss: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``loss`` computed over the ranks of the default process group (its ``group``)."""

    def over_world(*args: object, **kwargs: object) -> Tensor:
        return loss(*args, group=dist.group.WORLD, **kwargs)

    return over_world


_info_nce_world = _over_world(info_nce)
_nt_xent_world = _over_world(nt_xent)
_supervised_contrastive_world = _over_world(supervised_contrastive)
_sigmoid_contrastive_world = _over_world(sigmoid_contrastive)
ROLE_KEYS = ("positive_mask", "ignore_mask", "query_labels", "key_labels", "query_ids", "key_ids")


def _as_roles(kwargs: dict) -> dict:
    """The cases' flat mask / label / id keywords as the one ``roles=KeyRoles(...)``."""
    roles = {k: v for k, v in kwargs.items() if k in ROLE_KEYS}
    rest = {k: v for k, v in kwargs.items() if k not in ROLE_KEYS}
    return {**rest, "roles": KeyRoles(**roles)} if roles else rest


def _mean_over_ranks(x: Tensor) -> Tensor:
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def _close(name: str, a: Tensor, b: Tensor, **tol: float) -> None:
    tol = tol or TOL
    if not torch.allclose(a, b, **tol):
        raise AssertionError(f"{name}: max |diff| = {float((a - b).abs().max()):.3e}")


def _global(seed: int, *shape: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _compare(
    global_inputs: list[Tensor],
    sliced: list[bool],
    global_fn: Callable[..., Tensor],
    local_fn: Callable[..., Tensor],
) -> None:
    """Loss and gradient parity; ``sliced[i]`` says whether input i is split over ranks by rows
    (otherwise it is replicated, like a parameter)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    g_leaves = [x.clone().requires_grad_() for x in global_inputs]
    g_loss = global_fn(*g_leaves)
    g_loss.backward()
    l_leaves = []
    for x, s in zip(global_inputs, sliced):
        local = x[rank * (x.shape[0] // world) :][: x.shape[0] // world] if s else x
        l_leaves.append(local.clone().requires_grad_())
    l_loss = local_fn(*l_leaves)
    l_loss.backward()
    _close("loss", _mean_over_ranks(l_loss), g_loss.detach())
    for i, (gl, ll, s) in enumerate(zip(g_leaves, l_leaves, sliced)):
        if s:
            rows = gl.shape[0] // world
            _close(f"grad[{i}]", ll.grad / world, gl.grad[rank * rows : (rank + 1) * rows])
        else:
            _close(f"grad[{i}]", _mean_over_ranks(ll.grad), gl.grad)


def _slice(x: Tensor) -> Tensor:
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = x.shape[0] // world
    return x[rank * rows : (rank + 1) * rows]


def check_all_gather_backward_sums() -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.full((2, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)
    y = cd.all_gather_with_grad(x)  # (4, 3)
    _close(
        "gathered",
        y.detach(),
        torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)]).double(),
    )
    weight = torch.arange(12, dtype=torch.float64).view(4, 3) * (rank + 1)
    (y * weight).sum().backward()
    # d/dx_r of sum over ranks r' of <y, w_r'>: the summed weights on rank r's rows.
    total = torch.arange(12, dtype=torch.float64).view(4, 3) * sum(r + 1 for r in range(world))
    _close("grad", x.grad, total[rank * 2 : rank * 2 + 2])


def check_all_gather_bool_and_long() -> None:
    rank = dist.get_rank()
    mask = torch.tensor([rank == 0, True])
    assert cd.all_gather(mask).tolist() == [True, True, False, True]
    assert cd.all_gather(torch.tensor([rank])).tolist() == [0, 1]


def check_info_nce_plain() -> None:
    q, k = _global(1, 2 * B, D), _global(2, 2 * B, D)
    _compare(
        [q, k],
        [True, True],
        lambda a, b: info_nce(a, b, temperature=0.1),
        lambda a, b: info_nce(a, b, temperature=0.1, group=dist.group.WORLD),
    )


def check_info_nce_symmetric_dot() -> None:
    q, k = _global(3, 2 * B, D), _global(4, 2 * B, D)
    _compare(
        [q, k],
        [True, True],
        lambda a, b: info_nce(a, b, temperature=0.5, metric="dot", symmetric=True),
        lambda a, b: _info_nce_world(a, b, temperature=0.5, metric="dot", symmetric=True),
    )


def check_info_nce_shared_negatives() -> None:
    # Each rank brings its own M hard negatives; globally the W*M follow the W*B keys.
    q, k, n = _global(5, 2 * B, D), _global(6, 2 * B, D), _global(7, 2 * M, D)
    _compare(
        [q, k, n],
        [True, True, True],
        lambda a, b, c: info_nce(a, b, c, temperature=0.2),
        lambda a, b, c: _info_nce_world(a, b, c, temperature=0.2),
    )


def check_info_nce_per_query_negatives_symmetric() -> None:
    q, k, n = _global(8, 2 * B, D), _global(9, 2 * B, D), _global(10, 2 * B, M, D)
    _compare(
        [q, k, n],
        [True, True, True],
        lambda a, b, c: info_nce(a, b, c, temperature=0.2, symmetric=True),
        lambda a, b, c: _info_nce_world(a, b, c, temperature=0.2, symmetric=True),
    )


def check_info_nce_masks_symmetric_negatives() -> None:
    g = 2 * B
    q, k, n = _global(11, g, D), _global(12, g, D), _global(13, 2 * M, D)
    gen = torch.Generator().manual_seed(14)
    pos = torch.rand(g, g, generator=gen) < 0.15  # (G, G) global masks
    ign = torch.rand(g, g + 2 * M, generator=gen) < 0.25  # (G, G + W*M)
    _compare(
        [q, k, n],
        [True, True, True],
        lambda a, b, c: info_nce(
            a,
            b,
            c,
            temperature=0.3,
            symmetric=True,
            roles=KeyRoles(positive_mask=pos, ignore_mask=ign),
        ),
        lambda a, b, c: _info_nce_world(
            a,
            b,
            c,
            temperature=0.3,
            symmetric=True,
            roles=KeyRoles(positive_mask=_slice(pos), ignore_mask=_slice(ign)),
        ),
    )


def check_info_nce_labels_ids_symmetric() -> None:
    g = 2 * B
    q, k = _global(15, g, D), _global(16, g, D)
    gen = torch.Generator().manual_seed(17)
    ql, kl = torch.randint(0, 4, (g,), generator=gen), torch.randint(0, 4, (g,), generator=gen)
    qi, ki = torch.randint(0, 6, (g,), generator=gen), torch.randint(0, 6, (g,), generator=gen)
    _compare(
        [q, k],
        [True, True],
        lambda a, b: info_nce(
            a,
            b,
            temperature=0.3,
            symmetric=True,
            roles=KeyRoles(query_labels=ql, key_labels=kl, query_ids=qi, key_ids=ki),
        ),
        lambda a, b: _info_nce_world(
            a,
            b,
            temperature=0.3,
            symmetric=True,
            roles=KeyRoles(
                query_labels=_slice(ql),
                key_labels=_slice(kl),
                query_ids=_slice(qi),
                key_ids=_slice(ki),
            ),
        ),
    )


def check_info_nce_reductions() -> None:
    world = dist.get_world_size()
    q, k = _global(18, 2 * B, D), _global(19, 2 * B, D)
    ref = info_nce(q, k, temperature=0.1, reduction="none")
    got = _info_nce_world(_slice(q), _slice(k), temperature=0.1, reduction="none")
    _close("none", got, _slice(ref))
    _compare(
        [q, k],
        [True, True],
        lambda a, b: info_nce(a, b, temperature=0.1, reduction="sum"),
        lambda a, b: _info_nce_world(a, b, temperature=0.1, reduction="sum"),
    )
    assert world == 2


def check_info_nce_learnable_temperature() -> None:
    q, k = _global(20, 2 * B, D), _global(21, 2 * B, D)
    t = torch.tensor(0.2, dtype=torch.float64)
    _compare(
        [q, k, t],
        [True, True, False],
        lambda a, b, c: info_nce(a, b, temperature=c),
        lambda a, b, c: _info_nce_world(a, b, temperature=c),
    )


def _symmetric_cases() -> list[tuple[str, dict[str, object], dict[str, object]]]:
    """``(name, global kwargs, this rank's kwargs)`` of symmetric InfoNCE over every option the
    row-block path (each rank only its (B, W*B) block, column statistics all-reduced) takes."""
    g = 2 * B
    gen = torch.Generator().manual_seed(40)
    pos = torch.rand(g, g, generator=gen) < 0.15  # (G, G)
    ign = torch.rand(g, g, generator=gen) < 0.25  # (G, G)
    groups = torch.randint(0, 3, (g,), generator=gen)  # grouped pairs: query label = key label
    ql, kl = torch.randint(0, 4, (g,), generator=gen), torch.randint(0, 4, (g,), generator=gen)
    ids = torch.randint(0, 6, (g,), generator=gen)
    cases: list[tuple[str, dict[str, object], dict[str, object]]] = [
        ("plain", {}, {}),
        ("dot", {"metric": "dot"}, {}),
        ("euclidean", {"metric": "euclidean"}, {}),
        ("ignore_mask", {"ignore_mask": ign}, {"ignore_mask": _slice(ign)}),
        ("positive_mask", {"positive_mask": pos}, {"positive_mask": _slice(pos)}),
        ("grouped labels", {"query_labels": groups, "key_labels": groups}, {}),
        ("labels", {"query_labels": ql, "key_labels": kl}, {}),
        ("ids", {"query_ids": ids, "key_ids": ids}, {}),
        ("dot labels", {"metric": "dot", "query_labels": groups, "key_labels": groups}, {}),
        (
            "euclidean masks",
            {"metric": "euclidean", "ignore_mask": ign, "positive_mask": pos},
            {"ignore_mask": _slice(ign), "positive_mask": _slice(pos)},
        ),
    ]
    out = []
    for name, glob, local in cases:
        local = dict(local)
        for key in ("query_labels", "key_labels", "query_ids", "key_ids"):
            if key in glob:
                local[key] = _slice(glob[key])
        out.append((name, glob, {**glob, **local}))
    return out


def check_info_nce_symmetric_row_blocks() -> None:
    """Symmetric InfoNCE, every option, dense and chunked (several column tiles): loss and the
    gradients of query, key and a learnable temperature equal the float64 global batch's."""
    q, k = _global(41, 2 * B, D), _global(42, 2 * B, D)
    t = torch.tensor(0.3, dtype=torch.float64)
    for name, glob, local in _symmetric_cases():
        for chunk in (None, 2, 3):
            try:
                _compare(
                    [q, k, t],
                    [True, True, False],
                    lambda a, b, c, kw=glob: info_nce(
                        a, b, temperature=c, symmetric=True, **_as_roles(kw)
                    ),
                    lambda a, b, c, kw=local, ch=chunk: tiling(chunk_size=ch)(_info_nce_world)(
                        a, b, temperature=c, symmetric=True, **_as_roles(kw)
                    ),
                )
            except AssertionError as err:
                raise AssertionError(f"{name}, chunk_size={chunk}: {err}") from None


def check_info_nce_symmetric_negatives_reductions() -> None:
    """Shared and per-query negatives (rows only), with an ignore mask over them, and the
    reductions, through both paths."""
    g = 2 * B
    q, k = _global(43, g, D), _global(44, g, D)
    shared, per_query = _global(45, 2 * M, D), _global(46, g, M, D)
    gen = torch.Generator().manual_seed(47)
    ign = torch.rand(g, g + 2 * M, generator=gen) < 0.25  # (G, G + W*M)
    ign_pq = torch.rand(g, g + M, generator=gen) < 0.25  # (G, G + M)
    t = torch.tensor(0.2, dtype=torch.float64)
    for chunk in (None, 2):
        for name, negs, mask in (("shared", shared, ign), ("per-query", per_query, ign_pq)):
            try:
                _compare(
                    [q, k, negs, t],
                    [True, True, True, False],
                    lambda a, b, c, tt, m=mask: info_nce(
                        a, b, c, temperature=tt, symmetric=True, roles=KeyRoles(ignore_mask=m)
                    ),
                    lambda a, b, c, tt, m=mask, ch=chunk: tiling(chunk_size=ch)(_info_nce_world)(
                        a,
                        b,
                        c,
                        temperature=tt,
                        symmetric=True,
                        roles=KeyRoles(ignore_mask=_slice(m)),
                    ),
                )
            except AssertionError as err:
                raise AssertionError(f"{name} negatives, chunk_size={chunk}: {err}") from None
        ref = info_nce(q, k, temperature=0.2, symmetric=True, reduction="none")
        got = tiling(chunk_size=chunk)(_info_nce_world)(
            _slice(q),
            _slice(k),
            temperature=0.2,
            symmetric=True,
            reduction="none",
        )
        _close(f"none, chunk_size={chunk}", got, _slice(ref))
        _compare(
            [q, k],
            [True, True],
            lambda a, b: info_nce(a, b, temperature=0.2, symmetric=True, reduction="sum"),
            lambda a, b, ch=chunk: tiling(chunk_size=ch)(_info_nce_world)(
                a, b, temperature=0.2, symmetric=True, reduction="sum"
            ),
        )


def check_info_nce_symmetric_ranks_that_differ() -> None:
    """Ranks whose data take different branches call the same collectives: rank 0's logits are
    small (no max shift), rank 1's large (shifted); rank 1's positive logits are below -300 and
    rank 0 ignores all of rank 1's columns, so those columns' log-sum-exp comes only from rank 1
    (exp(-lse) overflows unless clamped). Per-query negatives of different sizes M on the ranks
    (the dense path on one rank, the chunked one on the other) do not desynchronise either."""
    rank, g = dist.get_rank(), 2 * B
    u = torch.ones(D, dtype=torch.float64)
    q = torch.cat([_global(48, B, D) * 1e-3, u * torch.linspace(5.0, 9.0, B)[:, None]])
    k = torch.cat([_global(49, B, D), -3.0 * u.expand(B, D) + 0.1 * _global(50, B, D)])
    ign = torch.zeros(g, g, dtype=torch.bool)
    ign[:B, B:] = True  # rank 0's rows never see rank 1's keys
    for chunk in (None, 2):
        _compare(
            [q, k],
            [True, True],
            lambda a, b: info_nce(
                a, b, temperature=0.1, metric="dot", symmetric=True, roles=KeyRoles(ignore_mask=ign)
            ),
            lambda a, b, ch=chunk: tiling(chunk_size=ch)(_info_nce_world)(
                a,
                b,
                temperature=0.1,
                metric="dot",
                symmetric=True,
                roles=KeyRoles(ignore_mask=_slice(ign)),
            ),
        )
    # rank r brings (B, 1 + 2r, D) per-query negatives; chunk_size=None: the automatic choice
    # is dense below 2**22 logits, so patch it to 0 on rank 1 (chunked there, dense on rank 0)
    from unittest import mock

    from contrastkit.functional import engine

    n_local = _global(51 + rank, B, 1 + 2 * rank, D)
    ql, kl = _slice(_global(53, g, D)).requires_grad_(), _slice(_global(54, g, D))
    with mock.patch.object(engine, "DENSE_MAX_LOGITS", 2**22 if rank == 0 else 0):
        loss = _info_nce_world(ql, kl, n_local, temperature=0.2, symmetric=True)
    loss.backward()  # reaching the end on both ranks is the check (no hang, no error)
    assert torch.isfinite(loss) and torch.isfinite(ql.grad).all()


def _half_contract(name: str, out: Tensor, ref: Tensor, grads: list, ref_grads: list) -> None:
    """The half-precision contract of tests/functional/test_engine_half.py: loss in float32
    within 1e-3 relative of the float64 reference on the same rounded inputs, gradients in the
    input dtype with cosine >= 0.9999."""
    if out.dtype != torch.float32:
        raise AssertionError(f"{name}: loss dtype {out.dtype}, expected float32")
    rel = float((out.double() - ref).abs() / ref.abs())
    if rel > 1e-3:
        raise AssertionError(f"{name}: loss relative error {rel:.2e} > 1e-3")
    for i, (gr, rg) in enumerate(zip(grads, ref_grads)):
        cos = float(nn.functional.cosine_similarity(gr.double().flatten(), rg.flatten(), dim=0))
        if not cos >= 0.9999:
            raise AssertionError(f"{name}: grad[{i}] cosine {cos:.6f} < 0.9999")


def check_info_nce_symmetric_fp32_bf16() -> None:
    """fp32 and bf16 inputs (dense and chunked, with ids and labels): the loss comes back in
    float32 and the gradients in the input dtype; fp32 matches the float64 global batch to
    float32 precision, bf16 meets the engine's half contract against float64 on the same
    bf16-rounded values. DDP-style: the per-rank gradient / W is the global gradient's slice."""
    from unittest import mock

    from contrastkit.functional import engine

    rank, world, g = dist.get_rank(), dist.get_world_size(), 4 * B
    gen = torch.Generator().manual_seed(55)
    ids = torch.randint(0, 12, (g,), generator=gen)
    groups = torch.randint(0, 5, (g,), generator=gen)
    for dtype in (torch.float32, torch.bfloat16):
        q64, k64 = _global(56, g, 16).to(dtype).double(), _global(57, g, 16).to(dtype).double()
        for chunk in (None, 3):
            for mode in ("normalized", "raw") if dtype == torch.bfloat16 else ("normalized",):
                for kw in (
                    {"query_ids": ids, "key_ids": ids},
                    {"query_labels": groups, "key_labels": groups},
                ):
                    where = f"{dtype} chunk_size={chunk} {mode} {sorted(kw)[0]}"
                    t64 = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
                    a, b = q64.clone().requires_grad_(), k64.clone().requires_grad_()
                    ref = info_nce(a, b, temperature=t64, symmetric=True, **_as_roles(kw))
                    ref.backward()
                    ql = _slice(q64).to(dtype).requires_grad_()
                    kl = _slice(k64).to(dtype).requires_grad_()
                    t = torch.tensor(0.07, requires_grad=True)
                    local_kw = {key: _slice(v) for key, v in kw.items()}
                    with mock.patch.object(engine, "HALF_PRODUCTS", mode):
                        out = tiling(chunk_size=chunk)(_info_nce_world)(
                            ql, kl, temperature=t, symmetric=True, **_as_roles(local_kw)
                        )
                    out.backward()
                    if ql.grad.dtype != dtype or kl.grad.dtype != dtype:
                        raise AssertionError(f"{where}: gradient dtype {ql.grad.dtype}")
                    rows = slice(rank * g // world, (rank + 1) * g // world)
                    loss = _mean_over_ranks(out.double())
                    grads = [ql.grad / world, kl.grad / world, _mean_over_ranks(t.grad)]
                    ref_grads = [a.grad[rows], b.grad[rows], t64.grad]
                    if dtype == torch.float32:
                        _close(f"{where} loss", loss, ref.detach(), rtol=1e-5, atol=1e-6)
                        for i, (gr, rg) in enumerate(zip(grads, ref_grads)):
                            _close(f"{where} grad[{i}]", gr.double(), rg, rtol=1e-4, atol=1e-6)
                    else:
                        _half_contract(where, loss.float(), ref.detach(), grads, ref_grads)


def check_symmetric_flops_are_one_over_w() -> None:
    """Symmetric InfoNCE on W = 2 ranks: each rank's fwd + bwd counts (FlopCounterMode, exact
    and deterministic) at most 0.55x the single-process symmetric loss on the 2B global batch,
    like the one-directional loss (0.5 both: 1/W of the global work per rank)."""
    from torch.utils.flop_counter import FlopCounterMode

    b, d = 64, 32
    q, k = _global(58, 2 * b, d).float(), _global(59, 2 * b, d).float()

    def flops(fn: Callable[[Tensor, Tensor], Tensor], a: Tensor, c: Tensor) -> int:
        a, c = a.clone().requires_grad_(), c.clone().requires_grad_()
        with FlopCounterMode(display=False) as counter:
            fn(a, c).backward()
        return counter.get_total_flops()

    ratios = {}
    for symmetric in (False, True):
        whole = flops(lambda a, c, s=symmetric: info_nce(a, c, temperature=0.1, symmetric=s), q, k)
        per_rank = flops(
            lambda a, c, s=symmetric: _info_nce_world(a, c, temperature=0.1, symmetric=s),
            _slice(q),
            _slice(k),
        )
        ratios[symmetric] = per_rank / whole
    if not ratios[True] <= 0.55:
        raise AssertionError(
            f"symmetric per-rank / global FLOPs {ratios[True]:.3f} > 0.55 "
            f"(one-directional {ratios[False]:.3f})"
        )
    assert abs(ratios[True] - ratios[False]) < 0.05, ratios


def check_nt_xent() -> None:
    z1, z2 = _global(22, 2 * B, D), _global(23, 2 * B, D)
    _compare(
        [z1, z2],
        [True, True],
        lambda a, b: nt_xent(a, b, temperature=0.5),
        lambda a, b: nt_xent(a, b, temperature=0.5, group=dist.group.WORLD),
    )


def check_supcon() -> None:
    x = _global(24, 2 * B, D)
    labels = torch.tensor([0, 1, 2, 0, 7, 1, 2, 3, 3, 9])  # 7 and 9 have no positive
    _compare(
        [x],
        [True],
        lambda a: supervised_contrastive(a, labels, temperature=0.2),
        lambda a: supervised_contrastive(
            a, _slice(labels), temperature=0.2, group=dist.group.WORLD
        ),
    )


def check_supcon_views_euclidean() -> None:
    x = _global(25, 2 * B, 2, D)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 5, 6, 4])
    _compare(
        [x],
        [True],
        lambda a: supervised_contrastive(a, labels, temperature=0.7, metric="euclidean"),
        lambda a: _supervised_contrastive_world(
            a, _slice(labels), temperature=0.7, metric="euclidean"
        ),
    )


def check_sigmoid_learnable() -> None:
    a, b = _global(26, 2 * B, D), _global(27, 2 * B, D)
    t = torch.tensor(0.3, dtype=torch.float64)
    bias = torch.tensor(-2.0, dtype=torch.float64)
    _compare(
        [a, b, t, bias],
        [True, True, False, False],
        lambda x, y, tt, bb: sigmoid_contrastive(x, y, temperature=tt, bias=bb),
        lambda x, y, tt, bb: sigmoid_contrastive(
            x, y, temperature=tt, bias=bb, group=dist.group.WORLD
        ),
    )


def check_chunked_engine() -> None:
    """Every distributed loss through the memory-linear engine (chunk_size) vs the dense global."""
    q, k, n = _global(28, 2 * B, D), _global(29, 2 * B, D), _global(30, 2 * M, D)
    _compare(
        [q, k, n],
        [True, True, True],
        lambda a, b, c: info_nce(a, b, c, temperature=0.1),
        lambda a, b, c: tiling(chunk_size=2)(_info_nce_world)(a, b, c, temperature=0.1),
    )
    _compare(
        [q, k],
        [True, True],
        lambda a, b: info_nce(a, b, temperature=0.1, symmetric=True),
        lambda a, b: tiling(chunk_size=3)(_info_nce_world)(a, b, temperature=0.1, symmetric=True),
    )
    _compare(
        [q, k],
        [True, True],
        lambda a, b: nt_xent(a, b, temperature=0.5),
        lambda a, b: tiling(chunk_size=3)(_nt_xent_world)(a, b, temperature=0.5),
    )
    labels = torch.tensor([0, 1, 2, 0, 7, 1, 2, 3, 3, 9])
    _compare(
        [q],
        [True],
        lambda a: supervised_contrastive(a, labels, temperature=0.2),
        lambda a: tiling(chunk_size=2)(_supervised_contrastive_world)(
            a, _slice(labels), temperature=0.2
        ),
    )
    _compare(
        [q, k],
        [True, True],
        lambda a, b: sigmoid_contrastive(a, b, temperature=0.3, bias=-1.0),
        lambda a, b: tiling(chunk_size=2)(_sigmoid_contrastive_world)(
            a, b, temperature=0.3, bias=-1.0
        ),
    )


def check_loss_modules_pass_the_switch() -> None:
    from contrastkit.losses import create_loss

    q, k = _global(35, 2 * B, D), _global(36, 2 * B, D)
    for name, kwargs in [("info_nce", {"symmetric": True}), ("nt_xent", {})]:
        local = create_loss(name, temperature=0.3, gather_distributed=True, **kwargs)
        plain = create_loss(name, temperature=0.3, **kwargs)
        _compare([q, k], [True, True], plain, local)
    labels = torch.tensor([0, 1, 2, 0, 7, 1, 2, 3, 3, 9])
    local = create_loss("supcon", temperature=0.3, gather_distributed=True)
    _compare(
        [q],
        [True],
        lambda a: create_loss("supcon", temperature=0.3)(a, labels),
        lambda a: local(a, _slice(labels)),
    )
    siglip = create_loss("sigmoid_contrastive", temperature=0.3, bias=-1.0, gather_distributed=True)
    _compare(
        [q, k], [True, True], create_loss("sigmoid_contrastive", temperature=0.3, bias=-1.0), siglip
    )


def check_mismatched_batch_sizes_raise_on_every_rank() -> None:
    rank = dist.get_rank()
    q = torch.randn(3 + rank, 4)
    try:
        _info_nce_world(q, q, temperature=0.1)
    except ValueError as err:
        assert "same batch size on every rank" in str(err) and "[3, 4]" in str(err), str(err)
    else:
        raise AssertionError("mismatched batch sizes did not raise")
    # Different numbers of shared negatives are caught the same way.
    n = torch.randn(2 + rank, 4)
    try:
        _info_nce_world(q[:3], q[:3], n, temperature=0.1)
    except ValueError as err:
        assert "negatives must have the same batch size" in str(err), str(err)
    else:
        raise AssertionError("mismatched negatives did not raise")
    # The group is still usable afterwards (no rank is stuck in a collective).
    cd.check_same_batch_size("query", 5)


def check_local_shaped_mask_gets_a_hint() -> None:
    q = torch.randn(3, 4)
    try:
        _info_nce_world(
            q, q, temperature=0.1, roles=KeyRoles(ignore_mask=torch.zeros(3, 3, dtype=torch.bool))
        )
    except ValueError as err:
        assert "must have shape (3, 6), got (3, 3)" in str(err), str(err)
        assert "columns of ALL ranks" in str(err), str(err)
    else:
        raise AssertionError("a (B, B) mask on 2 ranks did not raise")


def check_samplers_default_to_the_process_group() -> None:
    from contrastkit.negatives import MPerClassSampler, NoDuplicatesSampler

    labels = [i % 6 for i in range(60)]
    for sampler in (MPerClassSampler(labels, 2, 6, seed=1), NoDuplicatesSampler(labels, 6)):
        sampler.set_epoch(3)
        mine = torch.tensor(sorted(i for b in sampler for i in b))
        everything = cd.all_gather(mine)
        assert len(set(everything.tolist())) == everything.numel() > 0  # disjoint ranks
        assert cd.all_gather(torch.tensor([len(sampler)])).unique().numel() == 1
    try:
        MPerClassSampler(labels, 2, 6, num_replicas=3, rank=0)
    except ValueError as err:
        assert "does not match the process group's world size 2" in str(err), str(err)
    else:
        raise AssertionError("a world size that disagrees with the process group did not raise")


def _encoder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 4)).double()


def check_ddp_parameter_gradients() -> None:
    """End to end: DDP-averaged encoder gradients equal the single-process global-batch step."""
    x_q, x_k = _global(31, 2 * B, D), _global(32, 2 * B, D)
    ref = _encoder(0)
    info_nce(ref(x_q), ref(x_k), temperature=0.1, symmetric=True).backward()
    model = nn.parallel.DistributedDataParallel(_encoder(0))
    _info_nce_world(
        model(_slice(x_q)), model(_slice(x_k)), temperature=0.1, symmetric=True
    ).backward()
    for (name, p), r in zip(model.module.named_parameters(), ref.parameters()):
        _close(name, p.grad, r.grad)


def check_negative_control_gather_without_summed_backward() -> None:
    """The parity checks can fail: a gather whose backward keeps only the local gradient (the
    classic bug) gives DDP gradients that differ from the global-batch ones."""
    rank, world = dist.get_rank(), dist.get_world_size()
    x_q, x_k = _global(37, 2 * B, D), _global(38, 2 * B, D)
    ref = _encoder(2)
    info_nce(ref(x_q), ref(x_k), temperature=0.1).backward()
    model = nn.parallel.DistributedDataParallel(_encoder(2))
    q, k = model(_slice(x_q)), model(_slice(x_k))
    parts = list(cd.all_gather(k.detach()).split(B))
    parts[rank] = k  # gradient reaches only the local keys, from the local loss only
    all_k = torch.cat(parts)
    logits = nn.functional.normalize(q, dim=1) @ nn.functional.normalize(all_k, dim=1).T / 0.1
    target = torch.arange(B) + rank * B
    nn.functional.cross_entropy(logits, target).backward()
    first = next(model.module.parameters()).grad
    assert not torch.allclose(first, next(ref.parameters()).grad, rtol=1e-6, atol=1e-9)
    assert world == 2


def check_gradcache_under_ddp() -> None:
    """GradCache with no_sync until the last chunk + gathered loss == global plain step."""
    x_q, x_k = _global(33, 2 * B, D), _global(34, 2 * B, D)
    ref = _encoder(1)
    nt_xent(ref(x_q), ref(x_k), temperature=0.5).backward()
    model = nn.parallel.DistributedDataParallel(_encoder(1))
    loss = grad_cache_step(
        model,
        (_slice(x_q), _slice(x_k)),
        lambda a, b: _nt_xent_world(a, b, temperature=0.5),
        chunk_size=2,
    )
    _close("loss", _mean_over_ranks(loss), nt_xent(ref(x_q), ref(x_k), temperature=0.5).detach())
    for (name, p), r in zip(model.module.named_parameters(), ref.parameters()):
        _close(name, p.grad, r.grad)


CHECKS = {name: fn for name, fn in globals().items() if name.startswith("check_")}


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
