"""Matryoshka (Kusupati et al. 2022): generated from the loss registry, every embedding loss
wrapped in ``matryoshka`` equals the weighted sum of the loss on the prefix slices written out by
hand, gets gradients only on the trained prefix, passes gradcheck, and cosine losses see
renormalised prefixes; plus the bad-input errors and the trainer helper."""

from __future__ import annotations

import pytest
import torch

from contrastkit.functional import tiling
from contrastkit.losses import (
    LOSSES,
    InfoNCE,
    LearnableTemperature,
    NTXent,
    create_loss,
    list_losses,
    matryoshka,
    truncate_embeddings,
    wrap_matryoshka,
)
from contrastkit.losses.matryoshka import NOT_EMBEDDING_LOSSES

EMBEDDING_LOSSES = [n for n in list_losses() if n not in NOT_EMBEDDING_LOSSES]
DIMS, WEIGHTS = (2, 5, 16), (0.5, 1.0, 2.0)


def _inputs(name: str, seed: int = 0) -> tuple:
    inputs = LOSSES.get(name).example_inputs(torch.Generator().manual_seed(seed))
    assert inputs[0].shape[-1] == 16, f"{name}: the generated tests assume D = 16"
    return tuple(
        x.detach().clone().requires_grad_() if x.is_floating_point() else x for x in inputs
    )


def reference(loss_fn, inputs: tuple, dims=DIMS, weights=WEIGHTS) -> torch.Tensor:
    """sum_i w_i * loss(z[..., :d_i], ...), each (B, D) or (B, M, D) embedding input sliced by
    hand (D = 16; scores and labels have another last size)."""
    total = torch.zeros((), dtype=torch.float64)
    for d, w in zip(dims, weights):
        sliced = [
            x[..., :d] if x.is_floating_point() and x.ndim >= 2 and x.shape[-1] == 16 else x
            for x in inputs
        ]
        total = total + w * loss_fn(*sliced)
    return total


def test_the_embedding_losses_are_all_but_the_score_losses() -> None:
    assert {"info_nce", "nt_xent", "supcon", "triplet_margin", "vicreg"} <= set(EMBEDDING_LOSSES)
    assert set(list_losses()) - set(EMBEDDING_LOSSES) == {
        "dino",
        "swav",
        "preference",
        "listwise_ce",
        "pointwise_bce",
    }


@pytest.mark.parametrize("name", EMBEDDING_LOSSES)
def test_equals_the_weighted_sum_over_prefixes(name: str) -> None:
    loss_fn = create_loss(name).double()
    inputs = _inputs(name)
    got = matryoshka(loss_fn, DIMS, WEIGHTS)(*inputs)
    assert got.ndim == 0 and torch.isfinite(got)
    torch.testing.assert_close(got, reference(loss_fn, inputs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", EMBEDDING_LOSSES)
def test_gradients_reach_only_the_trained_prefix_and_pass_gradcheck(name: str) -> None:
    loss_fn = create_loss(name).double()
    wrapped = matryoshka(loss_fn, (3, 8))
    inputs = _inputs(name, seed=1)
    wrapped(*inputs).backward()
    stopped = getattr(loss_fn, "stop_gradient_inputs", ())
    for i, x in enumerate(inputs):
        if x.is_floating_point() and i not in stopped:
            assert x.grad[:, :8].abs().sum() > 0, f"{name}: input {i} got no gradient"
            assert torch.all(x.grad[:, 8:] == 0), f"{name}: coordinates past 8 got a gradient"
    if not getattr(loss_fn, "numerical_gradcheck", True):
        return
    floats = [i for i, x in enumerate(inputs) if x.is_floating_point() and i not in stopped]

    def fn(*leaves: torch.Tensor) -> torch.Tensor:
        args = list(inputs)
        for i, leaf in zip(floats, leaves):
            args[i] = leaf
        return wrapped(*args)

    leaves = tuple(inputs[i].detach().clone().requires_grad_() for i in floats)
    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize(
    "name", [n for n in EMBEDDING_LOSSES if getattr(create_loss(n), "metric", None) == "cosine"]
)
def test_cosine_losses_see_renormalised_prefixes(name: str) -> None:
    # The loss normalises each prefix itself: feeding explicitly renormalised prefixes
    # (truncate_embeddings) gives the same value.
    loss_fn = create_loss(name).double()
    inputs = _inputs(name, seed=2)
    got = matryoshka(loss_fn, (4,))(*inputs)
    renormed = [truncate_embeddings(x, 4) if x.is_floating_point() else x for x in inputs]
    torch.testing.assert_close(got, loss_fn(*renormed), rtol=1e-10, atol=1e-12)


def test_extra_negatives_and_keyword_arguments_are_sliced_too() -> None:
    g = torch.Generator().manual_seed(3)
    q, k, neg = (torch.randn(6, 12, generator=g) for _ in range(3))
    base = InfoNCE(temperature=0.2)
    got = matryoshka(base, (4, 12))(q, k, negatives=neg)
    expected = base(q[:, :4], k[:, :4], negatives=neg[:, :4]) + base(q, k, negatives=neg)
    torch.testing.assert_close(got, expected)


def test_the_full_width_alone_is_the_wrapped_loss_and_learnable_parts_are_shared() -> None:
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    base = InfoNCE(temperature=0.1)
    assert torch.equal(matryoshka(base, (16,))(q, k), base(q, k))
    learnable = InfoNCE(temperature=LearnableTemperature(0.1))
    wrapped = matryoshka(learnable, (4, 16))
    assert [p is q for p, q in zip(wrapped.parameters(), learnable.parameters())] == [True]
    assert wrapped.metric == "cosine" and wrapped.gather_distributed is False


def test_bad_input_is_a_clear_error() -> None:
    q = torch.randn(4, 8, generator=torch.Generator().manual_seed(5))
    with pytest.raises(
        ValueError, match=r"dims=\[4, 16\] go up to 16 but the embeddings are 8 wide"
    ):
        matryoshka(NTXent(), (4, 16))(q, q)
    with pytest.raises(ValueError, match=r"strictly increasing.*pass \[4, 8\]"):
        matryoshka(NTXent(), (8, 4))
    with pytest.raises(ValueError, match="non-empty sequence"):
        matryoshka(NTXent(), 8)
    with pytest.raises(ValueError, match="positive ints"):
        matryoshka(NTXent(), (0, 8))
    with pytest.raises(ValueError, match=r"weights must be 2 non-negative numbers"):
        matryoshka(NTXent(), (4, 8), weights=(1.0,))
    with pytest.raises(TypeError, match="'dino' does not take embeddings"):
        matryoshka(create_loss("dino"), (4, 8))
    with pytest.raises(TypeError, match="already a Matryoshka wrapper"):
        matryoshka(matryoshka(NTXent(), (4,)), (2,))
    with pytest.raises(ValueError, match=r"dim=9 is larger than the embedding width 8"):
        truncate_embeddings(q, 9)


def test_wrap_matryoshka_for_the_trainer() -> None:
    base = NTXent()
    assert wrap_matryoshka(base, None) is base and wrap_matryoshka(base, []) is base
    wrapped = wrap_matryoshka(base, [4, 8])
    assert wrapped.dims == (4, 8) and wrapped.loss is base


WORKER = r"""
import json, sys
import torch
import torch.distributed as dist
from contrastkit.losses import InfoNCE, NTXent, matryoshka

rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
torch.set_num_threads(1)
float_gathers = 0
plain_all_gather = dist.all_gather

def counting_all_gather(parts, tensor, *args, **kwargs):
    global float_gathers
    float_gathers += tensor.is_floating_point()
    return plain_all_gather(parts, tensor, *args, **kwargs)

dist.all_gather = counting_all_gather
B, D, dims = 4, 12, (3, 6, 12)
g = torch.Generator().manual_seed(0)
q_all = torch.randn(world * B, D, generator=g, dtype=torch.float64)
k_all = torch.randn(world * B, D, generator=g, dtype=torch.float64)
report = {}
for name, make in (("info_nce", lambda gd: InfoNCE(0.1, symmetric=True, gather_distributed=gd)),
                   ("nt_xent", lambda gd: NTXent(0.2, gather_distributed=gd))):
    qg, kg = q_all.clone().requires_grad_(), k_all.clone().requires_grad_()
    reference = matryoshka(make(False), dims)(qg, kg)  # one process, the global batch
    reference.backward()
    rows = slice(rank * B, (rank + 1) * B)
    q, k = q_all[rows].clone().requires_grad_(), k_all[rows].clone().requires_grad_()
    before = float_gathers
    loss = matryoshka(make(True), dims)(q, k)
    gathers = float_gathers - before
    loss.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    report[name] = {
        "loss_diff": float((mean / world - reference).abs()),
        "grad_q_diff": float((q.grad / world - qg.grad[rows]).abs().max()),
        "grad_k_diff": float((k.grad / world - kg.grad[rows]).abs().max()),
        "float_gathers": gathers,
    }
with open(out, "w") as handle:
    json.dump(report, handle)
dist.destroy_process_group()
"""


def test_two_ranks_share_one_gather_and_equal_the_global_batch(tmp_path) -> None:
    """Two gloo processes: the mean over ranks of the Matryoshka loss and the DDP-averaged
    gradients equal the single-process loss on the global batch, with one float gather per
    embedding input (not one per prefix)."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(r),
                "2",
                str(tmp_path / "store"),
                str(tmp_path / f"r{r}.json"),
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    for r in range(2):
        report = json.loads((tmp_path / f"r{r}.json").read_text())
        for name, res in report.items():
            assert res["loss_diff"] < 1e-12, (name, r, res)
            assert res["grad_q_diff"] < 1e-12 and res["grad_k_diff"] < 1e-12, (name, r, res)
        # info_nce (symmetric) gathers the keys once (one gather per prefix would be 3; the
        # queries are not gathered: the key -> query direction all-reduces column statistics
        # instead); nt_xent gathers the concatenation [z1; z2], which cannot be shared: one per
        # prefix, and no wasted gather of the full inputs.
        assert report["info_nce"]["float_gathers"] == 1, report
        assert report["nt_xent"]["float_gathers"] == 3, report


class _ChunkedInfoNCE(torch.nn.Module):
    """InfoNCE through the memory-linear engine (query blocks of 3 rows)."""

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        from contrastkit.functional import info_nce

        return tiling(chunk_size=3)(info_nce)(query, key, temperature=0.1, symmetric=True)


def test_prefix_views_through_the_memory_linear_engine_match_the_dense_loss() -> None:
    # The prefixes are non-contiguous views; the chunked engine must give the dense values and
    # gradients on them.
    g = torch.Generator().manual_seed(6)
    q = torch.randn(10, 16, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(10, 16, generator=g, dtype=torch.float64, requires_grad=True)
    chunked = matryoshka(_ChunkedInfoNCE(), (4, 8, 16))(q, k)
    gq, gk = torch.autograd.grad(chunked, (q, k))
    dense = matryoshka(InfoNCE(temperature=0.1, symmetric=True), (4, 8, 16))(q, k)
    dq, dk = torch.autograd.grad(dense, (q, k))
    torch.testing.assert_close(chunked, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gq, dq, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gk, dk, rtol=1e-10, atol=1e-12)
