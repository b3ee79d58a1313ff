"""The engine on CUDA: parity with the CPU float64 reference, half-precision block products with
float32 logits (``torch.mm(..., out_dtype=torch.float32)``), buffers on the input's device and
no host sync inside the tile loop. Every test runs twice: with the fused Triton kernels
(``contrastkit.functional.fused``, compiled for real; the default on CUDA when Triton imports)
and with the torch tile loop (``fused_kernels("off")``). Skipped without a GPU (none was lent
when this was written: these tests have not run yet; ``benchmarks/bench_gpu_engine.py`` runs
them first on a GPU machine).
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import contrastkit.functional as F
from contrastkit.functional import KeyRoles, engine, fused, tiled, tiling
from contrastkit.functional.engine import ContrastiveProblem, softmax_contrastive

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# float32 on CUDA may use TF32 products when the user allows it; the tests pin it off
TOL = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (1e-3, 0.9999), torch.float16: (1e-3, 0.9999)}


@pytest.fixture(params=["normalized", "raw"], autouse=True)
def _half_products(request):
    """Both half-operand modes (``engine.HALF_PRODUCTS``); float32 ignores the setting."""
    with mock.patch.object(engine, "HALF_PRODUCTS", request.param):
        yield


@pytest.fixture(params=["auto", "off"], autouse=True)
def kernels(request):
    """The fused Triton kernels (where they take the problem) and the torch tile loop."""
    if request.param == "auto" and fused._kernels() is None:
        pytest.skip("triton does not import: the fused kernels cannot run")
    with fused.fused_kernels(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _inputs(*shapes, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(*s, generator=g).to(device=CUDA, dtype=dtype).requires_grad_() for s in shapes
    ]


def _check(fn, tensors, dtype, where=""):
    """``fn`` on CUDA tensors vs ``fn`` on their float64 CPU copies: loss and gradients."""
    ref_in = [t.detach().cpu().double().requires_grad_() for t in tensors]
    ref = fn(*ref_in)
    ref_grads = torch.autograd.grad(ref.sum(), ref_in)
    out = fn(*tensors)
    grads = torch.autograd.grad(out.sum(), tensors)
    assert out.device.type == "cuda" and out.dtype == torch.float32, where
    rtol, cos_min = TOL[dtype]
    rel = ((out.sum().double().cpu() - ref.sum()).abs() / ref.sum().abs()).item()
    assert rel <= rtol, f"loss relative error {rel:.2e}, {where}"
    for t, g, rg in zip(tensors, grads, ref_grads, strict=True):
        assert g.device.type == "cuda" and g.dtype == t.dtype, where
        cos = torch.nn.functional.cosine_similarity(g.double().cpu().flatten(), rg.flatten(), dim=0)
        assert cos >= (cos_min if dtype != torch.float32 else 1 - 1e-8), f"grad cos {cos}, {where}"


def test_block_logits_out_dtype_is_float32_and_exact():
    for dtype in (torch.bfloat16, torch.float16):
        a, b = _inputs((256, 128), (512, 128), seed=0, dtype=dtype)
        out = tiled.block_logits(a.detach(), b.detach(), torch.empty(256, 512, device=CUDA))
        ref = a.detach().double() @ b.detach().double().T
        assert out.dtype == torch.float32
        assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("chunk", [None, 64])
def test_info_nce_parity(dtype, symmetric, chunk):
    q, k = _inputs((512, 64), (512, 64), seed=1, dtype=dtype)
    for cache in (engine.TILE_CACHE_BYTES, 0):  # kept tiles allocate on the GPU, not the pool
        with mock.patch.object(engine, "TILE_CACHE_BYTES", cache):
            _check(
                lambda q_, k_: tiling(chunk_size=chunk)(F.info_nce)(
                    q_, k_, temperature=0.07, symmetric=symmetric
                ),
                [q, k],
                dtype,
                where=f"{dtype} symmetric={symmetric} chunk={chunk} cache={cache}",
            )
    assert not any(t.device.type == "cuda" for t in tiled._POOL.free)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masks_labels_negatives_supcon_sigmoid(dtype):
    b, m = 96, 8
    q, k, neg, neg3 = _inputs((b, 32), (b, 32), (m, 32), (b, m, 32), seed=2, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 6, (b,), generator=g).to(CUDA)
    ids = torch.randint(0, 40, (b,), generator=g).to(CUDA)
    ignore = (torch.rand(b, b + m, generator=g) < 0.1).to(CUDA)

    def on(x, like):  # masks / labels follow the inputs to the reference's device
        return x.to(like.device)

    cases = {
        "labels": lambda q_, k_: tiling(chunk_size=32)(F.info_nce)(
            q_,
            k_,
            temperature=0.1,
            roles=KeyRoles(query_labels=on(labels, q_), key_labels=on(labels, q_)),
        ),
        "ids+negatives": lambda q_, k_, n_: tiling(chunk_size=32)(F.info_nce)(
            q_,
            k_,
            n_,
            temperature=0.1,
            reduction="none",
            roles=KeyRoles(query_ids=on(ids, q_), key_ids=on(ids, q_), ignore_mask=on(ignore, q_)),
        ),
        "per-query negatives": lambda q_, k_, n_: tiling(chunk_size=32)(F.info_nce)(
            q_, k_, n_, temperature=0.1
        ),
        "supcon": lambda q_: tiling(chunk_size=32)(F.supervised_contrastive)(
            q_, on(labels, q_), temperature=0.1
        ),
        "sigmoid": lambda q_, k_: tiling(chunk_size=32)(F.sigmoid_contrastive)(
            q_, k_, temperature=0.5, bias=-2.0
        ),
    }
    args = {
        "labels": [q, k],
        "ids+negatives": [q, k, neg],
        "per-query negatives": [q, k, neg3],
        "supcon": [q],
        "sigmoid": [q, k],
    }
    for name, fn in cases.items():
        _check(fn, args[name], dtype, where=f"{name} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("with_roles", [False, True])
def test_the_fused_kernels_run_on_cuda(kernels, dtype, symmetric, with_roles):
    """With Triton the chunked path's problems that the kernels take do run them (their autograd
    node is in the graph), symmetric and not, with labels and ids or without, and match
    float64 (both half-product modes, from the autouse fixture)."""
    q, k = _inputs((300, 96), (300, 96), seed=5, dtype=dtype)
    g = torch.Generator().manual_seed(6)
    labels, ids = (
        torch.randint(0, 20, (300,), generator=g),
        torch.randint(0, 250, (300,), generator=g),
    )

    def loss_fn(q_, k_):
        roles = KeyRoles()
        if with_roles:
            lab, idx = labels.to(q_.device), ids.to(q_.device)
            roles = KeyRoles(query_labels=lab, key_labels=lab, query_ids=idx, key_ids=idx)
        with tiling(chunk_size=64):
            return F.info_nce(q_, k_, temperature=0.05, symmetric=symmetric, roles=roles)

    assert fused.in_graph(loss_fn(q, k)) == (kernels == "auto"), (dtype, symmetric, with_roles)
    where = f"{dtype} symmetric={symmetric} roles={with_roles} kernels={kernels}"
    _check(loss_fn, [q, k], dtype, where=where)


def test_no_host_sync_in_the_tile_loop():
    """Only the documented per-call syncs: their count must not grow with the number of tiles."""
    q, k = _inputs((2048, 64), (2048, 64), seed=4, dtype=torch.bfloat16)
    counts = []
    for chunk in (512, 128):  # 4x4 vs 16x16 tiles
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with _count_sync_warnings() as seen:
                loss = tiling(chunk_size=chunk)(softmax_contrastive)(
                    ContrastiveProblem(q, k, symmetric=True), temperature=0.07
                )
                loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(len(seen))
    assert counts[0] == counts[1], f"syncs grow with the tiles: {counts}"


class _count_sync_warnings:
    """Collect the warnings ``torch.cuda.set_sync_debug_mode("warn")`` emits."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self.seen = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self.seen

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
