"""oneDNN's bf16 x bf16 -> float32 GEMM (``contrastkit.functional.bf16_gemm``) against float64."""

from __future__ import annotations

import pytest
import torch

from contrastkit.functional import bf16_gemm
from contrastkit.functional.tiled import block_logits

ON_THIS_CPU = bf16_gemm.available(torch.zeros(1, dtype=torch.bfloat16))
needs_onednn = pytest.mark.skipif(not ON_THIS_CPU, reason="no bf16 dot products or no oneDNN")


def _bf16(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 3).bfloat16()


def test_used_wherever_the_cpu_has_bf16_dot_products():
    """The Makefile installs the onednn-cpu-gomp wheel: on a CPU with AVX512-BF16 / AMX the
    product must be found (a missing library would silently fall back to two GEMMs)."""
    x = torch.zeros(2, 2, dtype=torch.bfloat16)
    assert bf16_gemm.available(x) == bf16_gemm.cpu_has_bf16_dot()
    assert not bf16_gemm.available(x.float())
    assert not bf16_gemm.available(x.half())


@needs_onednn
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
def test_matches_float64_for_every_layout(trans_a, trans_b, beta):
    m, k, n = 37, 300, 53
    a = _bf16(k, m, seed=1).T if trans_a else _bf16(m, k, seed=1)  # (M, K), column-major if T
    b = _bf16(n, k, seed=2).T if trans_b else _bf16(k, n, seed=2)
    c0 = torch.randn(m, n, generator=torch.Generator().manual_seed(3))
    out = c0.clone()
    if beta == 0.0:
        out.fill_(float("nan"))  # beta = 0 must not read the output
    bf16_gemm.addmm_(out, a, b, beta=beta)
    ref = beta * c0.double() + a.double() @ b.double()
    assert out.dtype == torch.float32
    err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    assert err < 1e-6, err  # float32 accumulation; a bf16 result would be ~4e-3


@needs_onednn
def test_strided_views_and_empty_shapes():
    a, b = _bf16(64, 40, seed=4), _bf16(70, 40, seed=5)
    buf = torch.zeros(16, 100)
    out = buf[3:13, 10:80]  # (10, 70) view with row stride 100
    bf16_gemm.addmm_(out, a[5:15], b.T, beta=0.0)
    torch.testing.assert_close(out, a[5:15].float() @ b.float().T, rtol=1e-6, atol=1e-4)
    assert buf[:3].abs().sum() == 0 and buf[:, :10].abs().sum() == 0  # nothing outside the view
    col = torch.zeros(70, 10).T  # column-major output: computed aside, copied in
    bf16_gemm.addmm_(col, a[5:15], b.T, beta=0.0)
    torch.testing.assert_close(col, out)
    empty = torch.ones(3, 4)
    bf16_gemm.addmm_(empty, _bf16(3, 0, seed=6), _bf16(0, 4, seed=7), beta=0.5)
    assert torch.equal(empty, torch.full((3, 4), 0.5))
    bf16_gemm.addmm_(torch.empty(0, 4), _bf16(0, 5, seed=8), _bf16(5, 4, seed=9))


@needs_onednn
def test_bad_shapes_and_dtypes_say_so():
    with pytest.raises(ValueError, match="shapes"):
        bf16_gemm.addmm_(torch.zeros(3, 3), _bf16(3, 4, seed=0), _bf16(5, 3, seed=0))
    with pytest.raises(ValueError, match="bf16 @ bf16 -> float32"):
        bf16_gemm.addmm_(torch.zeros(3, 3), _bf16(3, 4, seed=0).float(), _bf16(4, 3, seed=0))


@needs_onednn
def test_block_logits_takes_one_gemm_with_the_threads_torch_uses():
    """The engine's logits come from the oneDNN product (equal to calling it directly), under
    any torch thread count (one OpenMP pool: the wheel links the GNU runtime torch loaded)."""
    a, b = _bf16(300, 64, seed=10), _bf16(500, 64, seed=11)
    want = bf16_gemm.addmm_(torch.empty(300, 500), a, b.T, beta=0.0)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got = block_logits(a, b, torch.empty(300, 500))
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    finally:
        torch.set_num_threads(before)
