"""bf16 x bf16 -> float32 matrix products on x86 CPUs, through oneDNN's ``gemm_bf16bf16f32``.

The CPU build of torch has no half x half -> float32 product (``torch.mm(..., out_dtype=)`` is
registered for CUDA only): its bf16 ``mm`` rounds every result to bf16. oneDNN, the library
behind torch's own CPU GEMMs, has one in its C API::

    C = alpha * op(A) @ op(B) + beta * C,   A: (M, K) bf16,  B: (K, N) bf16,  C: (M, N) float32

with float32 accumulation and a float32 result, run on the CPU's bf16 dot-product units
(AVX512-BF16 ``vdpbf16ps``, or AMX). torch links oneDNN statically and exports none of it, so
the shared library comes from the ``onednn-cpu-gomp`` wheel (oneDNN 3.2 built against GNU
OpenMP, the runtime torch already loaded: the process keeps one OpenMP thread pool, and
``torch.set_num_threads`` sets the products' threads too). Measured on the 2-core AVX512-BF16
machine, 8,192 x 256 x 8,192: float32 ``mm`` 202 GFLOP/s, bf16 ``mm`` (bf16 result) 511,
``gemm_bf16bf16f32`` 1,016 GFLOP/s, max error 3.7e-5 against float64 on logits up to ~80.

:func:`available` says whether the product can be used for a tensor (a CPU bf16 tensor, the
library found, a CPU with bf16 dot products: without them oneDNN would emulate them, slower
than the float32 GEMM); :func:`addmm_` runs it. The engine falls back to its two-GEMM
``hi + residual`` product when it is not available (:func:`contrastkit.functional.tiled.
block_logits`).

>>> a, b = torch.randn(4, 8).bfloat16(), torch.randn(8, 3).bfloat16()
>>> out = torch.zeros(4, 3)
>>> if available(a):
...     _ = addmm_(out, a, b)
... else:
...     _ = out.addmm_(a.float(), b.float())
>>> torch.allclose(out, a.float() @ b.float(), rtol=1e-5, atol=1e-5)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import site
import sys

import torch
from torch import Tensor

__all__ = ["addmm_", "available", "cpu_has_bf16_dot"]

_LIBRARY_NAMES = ("libdnnl.so.3", "libdnnl.so")


@functools.cache
def cpu_has_bf16_dot() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16): where bf16
    runs natively (the trainer's ``train.precision: auto`` picks bf16 there)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


@functools.cache
def _gemm() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """oneDNN's ``dnnl_gemm_bf16bf16f32`` from the environment's ``lib/`` (where the wheel
    installs it; the user base's for ``pip install --user``) or the system's library path;
    None when there is none."""
    prefixes = [sys.prefix, site.getuserbase()]  # pip install, pip install --user
    candidates = [os.path.join(p, "lib", name) for p in prefixes for name in _LIBRARY_NAMES]
    found = ctypes.util.find_library("dnnl")
    if found:
        candidates.append(found)
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            fn = lib.dnnl_gemm_bf16bf16f32
        except (OSError, AttributeError):
            continue
        dim = ctypes.c_int64
        fn.argtypes = [
            ctypes.c_char, ctypes.c_char, dim, dim, dim, ctypes.c_float,
            ctypes.c_void_p, dim, ctypes.c_void_p, dim, ctypes.c_float, ctypes.c_void_p, dim,
        ]  # fmt: skip
        fn.restype = ctypes.c_int
        return fn
    return None


def available(x: Tensor) -> bool:
    """Whether :func:`addmm_` runs for operands like ``x``: a CPU bf16 tensor, oneDNN found and
    a CPU with bf16 dot products."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and cpu_has_bf16_dot()
        and _gemm() is not None
    )


def _operand(x: Tensor) -> tuple[Tensor, bytes, int]:
    """``x`` (rows, cols) as oneDNN's row-major operand: (tensor, 'N' | 'T', leading dim)."""
    rows, cols = x.shape
    if x.stride(1) == 1 and x.stride(0) >= max(cols, 1):
        return x, b"N", max(x.stride(0), cols, 1)
    if x.stride(0) == 1 and x.stride(1) >= max(rows, 1):
        return x, b"T", max(x.stride(1), rows, 1)
    x = x.contiguous()
    return x, b"N", max(cols, 1)


def addmm_(out: Tensor, a: Tensor, b: Tensor, beta: float = 1.0) -> Tensor:
    """``out <- beta * out + a @ b`` in float32, in place; ``a: (M, K)``, ``b: (K, N)`` bf16 CPU
    tensors (any row- or column-major strides), ``out: (M, N)`` float32. ``beta = 0`` ignores
    ``out``'s contents (NaN included). Call only when :func:`available` is True."""
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or out.shape != (m, n):
        raise ValueError(
            f"addmm_: shapes {tuple(out.shape)} += {tuple(a.shape)} @ {tuple(b.shape)}"
        )
    if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16 or out.dtype != torch.float32:
        raise ValueError(
            f"addmm_: wants bf16 @ bf16 -> float32, got {a.dtype}, {b.dtype}, {out.dtype}"
        )
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_() if beta == 0 else out.mul_(beta)
    target = out
    if out.stride(1) != 1 or out.stride(0) < n:
        target = torch.empty((m, n), dtype=torch.float32) if beta == 0 else out.contiguous()
    a, trans_a, lda = _operand(a)
    b, trans_b, ldb = _operand(b)
    status = _gemm()(  # type: ignore[misc]
        trans_a, trans_b, m, n, k, 1.0,
        a.data_ptr(), lda, b.data_ptr(), ldb, float(beta), target.data_ptr(), target.stride(0),
    )  # fmt: skip
    if status != 0:
        raise RuntimeError(f"dnnl_gemm_bf16bf16f32 failed with oneDNN status {status}")
    if target is not out:
        out.copy_(target)
    return out
