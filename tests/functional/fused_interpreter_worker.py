"""The fused Triton kernels through Triton's interpreter, run in a subprocess by test_engine_fused.py.

Triton picks its interpreter when it is imported (``TRITON_INTERPRET=1``), for the whole
process, so these cases run in a process of their own: ``python fused_interpreter_worker.py``
with ``TRITON_INTERPRET=1`` prints one JSON object, the figures of every case (see
:func:`case_figures`) and the benchmark's dry run; the tests assert on them.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

LOSS_SCALE = 2.0**10
"""Upstream gradient scale for half inputs, as in test_engine_half.py (fp16 subnormals)."""
B, D = 20, 24
"""Two 16-row blocks each way and two 16-wide steps over D: every kernel loop and mask runs."""


def _run(fn: Callable, tensors: list[torch.Tensor], scale: float):
    out = fn(*tensors)
    weight = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape) * scale
    grads = torch.autograd.grad((out * weight).sum(), tensors)
    return out, grads


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def case_figures(fn: Callable, tensors: list[torch.Tensor]) -> dict:
    """``fn`` with the fused kernels vs the torch tile loop (same dtype) and vs float64 (the
    torch path on the same rounded inputs, ``x.double()``): loss error, per-anchor error
    (error / max(|loss_i|, 1)), gradient cosines, dtypes, and whether the fused path ran."""
    from contrastkit.functional import tiling
    from contrastkit.functional.fused import fused_kernels, in_graph

    half = tensors[0].dtype in (torch.bfloat16, torch.float16)
    scale = LOSS_SCALE if half else 1.0
    with tiling(chunk_size=16):
        with fused_kernels("interpret"):
            out, grads = _run(fn, tensors, scale)
        ran = in_graph(out)  # the graph's nodes outlive the backward pass
        with fused_kernels("off"):
            torch_out, torch_grads = _run(fn, tensors, scale)
        ref_in = [t.detach().double().requires_grad_() for t in tensors]
        ref, ref_grads = _run(fn, ref_in, scale)
    loss_dtype = str(out.dtype)
    out, torch_out, ref = out.detach().double(), torch_out.detach().double(), ref.detach()
    return {
        "fused_ran": ran,
        "half": half,
        "loss_dtype": loss_dtype,
        "grad_dtypes_ok": all(g.dtype == t.dtype for g, t in zip(grads, tensors, strict=True)),
        "rel_vs_f64": float((out.sum() - ref.sum()).abs() / ref.sum().abs()),
        "anchor_vs_f64": float(((out - ref).abs() / ref.abs().clamp(min=1.0)).max()),
        "cos_vs_f64": min(_cos(g, r) for g, r in zip(grads, ref_grads, strict=True)),
        "rel_vs_torch": float((out.sum() - torch_out.sum()).abs() / torch_out.sum().abs()),
        "cos_vs_torch": min(_cos(g, r) for g, r in zip(grads, torch_grads, strict=True)),
        "grad_err_vs_torch": max(
            float((g.double() - r.double()).abs().max() / r.double().abs().max())
            for g, r in zip(grads, torch_grads, strict=True)
        ),
    }


def _inputs(*shapes, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).to(dtype).requires_grad_() for s in shapes]


def engine_cases() -> dict[str, dict]:
    """Every structure the fused path takes, through the public losses."""
    import contrastkit.functional as F
    from contrastkit.functional import KeyRoles

    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 4, (B,), generator=g)
    ids = torch.randint(0, 10, (B,), generator=g)
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    cases = {
        "symmetric info_nce fp32": (
            lambda q, k: F.info_nce(q, k, temperature=0.07, symmetric=True),
            _inputs((B, D), (B, D), dtype=fp32, seed=1),
        ),
        "symmetric info_nce bf16 tau=0.01": (
            lambda q, k: F.info_nce(q, k, temperature=0.01, symmetric=True),
            _inputs((B, D), (B, D), dtype=bf16, seed=2),
        ),
        "one-directional info_nce fp16, reduction=none": (
            lambda q, k: F.info_nce(q, k, temperature=0.07, reduction="none"),
            _inputs((B, D), (B, D), dtype=fp16, seed=3),
        ),
        "nt_xent bf16 (self_offset)": (
            lambda a, b: F.nt_xent(a, b, temperature=0.2),
            _inputs((B // 2, D), (B // 2, D), dtype=bf16, seed=4),
        ),
        "supcon fp32 (labels, self_offset)": (
            lambda z: F.supervised_contrastive(
                z.view(B // 2, 2, D), labels[: B // 2], temperature=0.1
            ),
            _inputs((B, D), dtype=fp32, seed=5),
        ),
        "symmetric info_nce bf16, labels + ids, reduction=none": (
            lambda q, k: F.info_nce(
                q,
                k,
                temperature=0.1,
                symmetric=True,
                reduction="none",
                roles=KeyRoles(query_labels=labels, key_labels=labels, query_ids=ids, key_ids=ids),
            ),
            _inputs((B, D), (B, D), dtype=bf16, seed=6),
        ),
        "info_nce fp32, shared negatives + ids, dot": (
            lambda q, k, n: F.info_nce(
                q, k, n, temperature=0.5, metric="dot", roles=KeyRoles(query_ids=ids, key_ids=ids)
            ),
            _inputs((B, D), (B, D), (7, D), dtype=fp32, seed=8),
        ),
        "symmetric info_nce bf16, shared negatives, raw products": (
            _raw_products(lambda q, k, n: F.info_nce(q, k, n, temperature=0.05, symmetric=True)),
            _inputs((B, D), (B, D), (5, D), dtype=bf16, seed=11),
        ),
    }
    return {name: case_figures(fn, tensors) for name, (fn, tensors) in cases.items()}


def _raw_products(fn: Callable) -> Callable:
    """``fn`` with ``engine.HALF_PRODUCTS = "raw"`` (the module setting, restored after)."""
    from contrastkit.functional import engine

    def wrapped(*args):
        old, engine.HALF_PRODUCTS = engine.HALF_PRODUCTS, "raw"
        try:
            return fn(*args)
        finally:
            engine.HALF_PRODUCTS = old

    return wrapped


def fp16_operand_case() -> dict:
    """fp16 *operands* in the kernels (on a CPU the engine upcasts fp16 inputs to float32, as
    its torch path does; on CUDA they stay fp16): the Function itself against float64 on the
    fp16-rounded logit-space inputs."""
    from contrastkit.functional.fused import FusedSoftmaxLoss
    from contrastkit.functional.tiled import Structure

    q, k = _inputs((B, D), (B, D), dtype=torch.float32, seed=9)
    q32, k32 = q.detach() * 3.0, k.detach() * 3.0  # logits of a few units, like cosine / tau
    q32.requires_grad_(), k32.requires_grad_()
    s = Structure(n_keys=B, positive_offset=0, symmetric=True)
    row, col, _, _ = FusedSoftmaxLoss.apply(q32, k32, None, s, torch.float16)
    out, grads = row + col, None
    grads = torch.autograd.grad(out.sum() * LOSS_SCALE, [q32, k32])
    qr = q32.detach().half().double().requires_grad_()
    kr = k32.detach().half().double().requires_grad_()
    logits = qr @ kr.T
    ref = (logits.logsumexp(1) - logits.diagonal()) + (logits.logsumexp(0) - logits.diagonal())
    ref_grads = torch.autograd.grad(ref.sum() * LOSS_SCALE, [qr, kr])
    return {
        "rel_vs_f64": float((out.sum().double() - ref.sum()).abs() / ref.sum().abs()),
        "cos_vs_f64": min(_cos(g, r) for g, r in zip(grads, ref_grads, strict=True)),
    }


def _sharded(q: torch.Tensor, k: torch.Tensor, world: int, mode: str):
    """Symmetric InfoNCE with the rows of ``q`` split over ``world`` thread "ranks" (an
    in-memory all-reduce), each computing its (B / world, N) block with ``row_shards``; returns
    the summed loss and the gradients of q (rows of every rank) and k (summed over the ranks)."""
    import threading

    from contrastkit.functional import tiling
    from contrastkit.functional.engine import ContrastiveProblem, RowShards, softmax_contrastive
    from contrastkit.functional.fused import fused_kernels

    rows = q.shape[0] // world
    slots: list = [None] * world
    barrier = threading.Barrier(world, timeout=120)
    results: list = [None] * world

    def reduce_for(rank: int):
        def reduce(x: torch.Tensor, op: str) -> torch.Tensor:
            slots[rank] = x.clone()
            barrier.wait()
            stacked = torch.stack(slots)
            out = stacked.amax(0) if op == "max" else stacked.sum(0)
            barrier.wait()
            return x.copy_(out)

        return reduce

    def rank_fn(rank: int) -> None:
        q_r = q[rank * rows : (rank + 1) * rows].detach().clone().requires_grad_()
        k_r = k.detach().clone().requires_grad_()
        shards = RowShards(column_offset=rank * rows, all_reduce=reduce_for(rank))
        problem = ContrastiveProblem(
            q_r, k_r, positive_offset=rank * rows, symmetric=True, row_shards=shards
        )
        with tiling(chunk_size=8), fused_kernels(mode):
            loss = softmax_contrastive(problem, temperature=0.1, reduction="sum")
        results[rank] = (loss.detach(), *torch.autograd.grad(loss, [q_r, k_r]), in_graph(loss))

    from contrastkit.functional.fused import in_graph

    threads = [threading.Thread(target=rank_fn, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loss = sum(r[0] for r in results)
    dq = torch.cat([r[1] for r in results])
    dk = sum(r[2] for r in results)
    return loss, dq, dk, all(r[3] for r in results)


def row_shards_case() -> dict:
    """The symmetric loss over 2 simulated ranks (``row_shards``): fused vs the torch path's
    sharded run and vs the whole batch in float64 in one process."""
    from contrastkit.functional.engine import ContrastiveProblem, softmax_contrastive

    q, k = _inputs((B, D), (B, D), dtype=torch.float32, seed=10)
    loss, dq, dk, ran = _sharded(q, k, 2, "interpret")
    t_loss, t_dq, t_dk, _ = _sharded(q, k, 2, "off")
    qd, kd = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    whole = softmax_contrastive(
        ContrastiveProblem(qd, kd, symmetric=True), temperature=0.1, reduction="sum"
    )
    ref_dq, ref_dk = torch.autograd.grad(whole, [qd, kd])
    return {
        "fused_ran": ran,
        "rel_vs_f64": float((loss.double() - whole).abs() / whole.abs()),
        "cos_vs_f64": min(_cos(dq, ref_dq), _cos(dk, ref_dk)),
        "rel_vs_torch": float((loss - t_loss).abs() / t_loss.abs()),
        "cos_vs_torch": min(_cos(dq, t_dq), _cos(dk, t_dk)),
    }


def main() -> int:
    torch.set_num_threads(1)
    from contrastkit.functional.fused import interpreter_on

    if not interpreter_on():
        print(json.dumps({"error": "TRITON_INTERPRET=1 was not set before triton was imported"}))
        return 1
    figures = {
        "engine": engine_cases(),
        "fp16_operands": fp16_operand_case(),
        "row_shards": row_shards_case(),
    }
    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(bench))
    import bench_gpu_engine

    out = Path(sys.argv[1]) / "gpu_engine.json"
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        code = bench_gpu_engine.main(["--dry-run", "--out", str(out)])
    figures["bench_dry_run"] = {"returncode": code}
    figures["bench_dry_run"]["report"] = json.loads(out.read_text())
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
