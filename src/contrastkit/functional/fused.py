"""Fused Triton kernels for the engine's softmax losses (the chunked path's GPU form).

The torch tile loop (:mod:`contrastkit.functional.tiled`) launches a GEMM, an ``exp``, a
reduction and a weight update per tile, each writing its ``chunk x col_chunk`` intermediate to
memory. The kernels here are FlashAttention-style (Dao et al., 2022, "FlashAttention: Fast and
Memory-Efficient Exact Attention with IO-Awareness", https://arxiv.org/abs/2205.14135;
Inf-CL, Wang et al., 2024, https://arxiv.org/abs/2410.17243, for the contrastive loss): a
block of queries stays on chip while blocks of keys stream past it, and every logit lives only
in registers:

* forward: block products ``Q_blk K_blk^T`` with float32 accumulation, an online log-sum-exp by
  rows and (symmetric loss) by columns, and the positive (target) logits and their count, all
  float32 (:func:`~contrastkit.functional._fused_kernels.stats_kernel`). When every logit is
  provably within +-40 (Cauchy-Schwarz on the norms, as the torch path checks: cosine at
  tau >= 0.025 always is) the column sums come from the same pass, ``sum_i e^{l_ij}`` added
  atomically without a max shift; otherwise a second pass runs over the columns;
* backward: each tile's logits recomputed from the embeddings and the saved log-sum-exps, the
  logit gradient ``G`` formed in float32 and rounded to the operand dtype for the products
  ``dQ = G K`` and ``dK = G^T Q``, accumulated in float32
  (:func:`~contrastkit.functional._fused_kernels.grad_kernel`, once for dQ, once for dK).

Peak extra memory is O(B + N) floats of statistics plus the float32 gradients: no tile is
ever written to memory.

**Which problems take it** (:func:`unsupported` says why one does not): float32, bf16 and fp16
inputs (every ``engine.HALF_PRODUCTS`` mode); ``metric`` ``"cosine"`` or ``"dot"``; any
``positive_offset`` (or None) and ``self_offset``; ``symmetric`` or one-directional, every
``reduction``; label positives (``KeyRoles(query_labels=, key_labels=)``) and id-ignored keys
(``query_ids=, key_ids=``); shared extra negatives ``(M, D)``; ``row_shards`` (the symmetric
loss of ``info_nce(..., group=)``, its column statistics all-reduced over the ranks as the
torch path does). So InfoNCE / CLIP in every form, NT-Xent and SupCon. Everything else runs
the torch tile loop, which stays the reference: float64 inputs, ``"euclidean"``, per-query
negatives ``(B, M, D)``, the dense ``positive_mask`` / ``ignore_mask``, inputs of 2**31
elements or more.

**When**: the engine takes the fused path wherever it would take the chunked path (above
``DENSE_MAX_LOGITS``, or inside :func:`~contrastkit.functional.engine.tiling`; the kernels pick
their own blocks) for CUDA tensors when Triton imports. ``CONTRASTKIT_FUSED_KERNELS=off`` in
the environment (read at each call) or ``with fused_kernels("off"):`` keeps the torch tile loop;
``with fused_kernels("interpret"):`` also runs CPU tensors through Triton's interpreter, which
must be switched on before Triton is imported (``TRITON_INTERPRET=1`` in the process's
environment): this is how the tests prove the kernels on a machine without a GPU.

>>> with fused_kernels("off"):
...     current_mode()
'off'
>>> from contrastkit.functional.engine import ContrastiveProblem
>>> x = torch.randn(4, 2, dtype=torch.float64)
>>> unsupported(ContrastiveProblem(x, x), "dot")
'float64 inputs (the torch path is the float64 reference)'
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import threading
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from contrastkit.functional.tiled import (
    Structure,
    _scale_grads,
    _unshifted,
    combine_column_shards,
)

if TYPE_CHECKING:  # engine imports this module
    from contrastkit.functional.engine import ContrastiveProblem

__all__ = [
    "CONFIGS",
    "MODES",
    "FusedSoftmaxLoss",
    "current_mode",
    "default_configs",
    "fused_kernels",
    "in_graph",
    "runs_fused",
    "unsupported",
]

MODES = ("auto", "off", "interpret")
"""``"auto"``: CUDA tensors take the fused path when Triton imports; ``"off"``: never (the
torch tile loop); ``"interpret"``: CUDA and CPU tensors, through Triton's interpreter
(``TRITON_INTERPRET=1`` set before Triton is imported)."""
ENV = "CONTRASTKIT_FUSED_KERNELS"
"""The environment variable that sets the default mode (``off`` to switch the kernels off)."""

_MODE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "contrastkit_fused_kernels", default=None
)


def _check_mode(mode: object, where: str) -> str:
    if mode not in MODES:
        raise ValueError(
            f"{where} must be one of {MODES}, got {mode!r}; use 'off' to keep the torch tile loop."
        )
    return mode


@contextlib.contextmanager
def fused_kernels(mode: str = "auto") -> Iterator[None]:
    """Within the block, the engine's chunked path uses the fused kernels as ``mode`` says
    (:data:`MODES`); scoped like :func:`~contrastkit.functional.engine.tiling`, read when a
    loss runs its forward pass.

    >>> with fused_kernels("off"):
    ...     with fused_kernels():
    ...         current_mode()
    'auto'
    """
    token = _MODE.set(_check_mode(mode, "fused_kernels(mode)"))
    try:
        yield
    finally:
        _MODE.reset(token)


def current_mode() -> str:
    """The innermost :func:`fused_kernels` setting, else ``$CONTRASTKIT_FUSED_KERNELS``, else
    ``"auto"``."""
    mode = _MODE.get()
    if mode is None:
        mode = _check_mode(os.environ.get(ENV, "auto").strip().lower(), f"${ENV}")
    return mode


@functools.cache
def _kernels() -> ModuleType | None:
    """The kernels module, or None when Triton does not import (a broken install warns once)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    except Exception as err:  # e.g. a triton built for another torch: keep the torch path
        warnings.warn(
            f"triton is installed but does not import ({err!r}); the engine keeps its torch "
            f"tile loop. Reinstall triton or set {ENV}=off to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    from contrastkit.functional import _fused_kernels

    return _fused_kernels


def interpreter_on() -> bool:
    """Whether Triton's kernels run in its interpreter in this process (``TRITON_INTERPRET=1``
    when Triton was imported)."""
    kernels = _kernels()
    if kernels is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernels.stats_kernel, InterpretedFunction)


def unsupported(problem: ContrastiveProblem, metric: str) -> str | None:
    """Why the fused kernels do not compute ``problem`` (None: they do), whatever the device.

    ``metric`` is the engine's (``"cosine"``, ``"dot"``, ``"euclidean"``).
    """
    p, r = problem, problem.roles
    if p.query.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        what = "float64" if p.query.dtype == torch.float64 else str(p.query.dtype)
        return f"{what} inputs (the torch path is the float64 reference)"
    if metric == "euclidean":
        return "the euclidean metric"
    if p.negatives is not None and p.negatives.ndim == 3:
        return "per-query negatives (B, M, D)"
    if r.positive_mask is not None or r.ignore_mask is not None:
        return "a dense positive_mask / ignore_mask"
    rows = max(p.n_queries, p.n_keys + p.n_negatives)
    if rows * p.query.shape[1] >= 2**31:
        return "more than 2**31 elements in one input (the kernels' offsets are 32-bit)"
    return None


def runs_fused(problem: ContrastiveProblem, metric: str) -> bool:
    """Whether the engine's chunked path should run the fused kernels for ``problem`` now: the
    mode (:func:`current_mode`), the device, Triton and :func:`unsupported` agree."""
    mode = current_mode()
    if mode == "off":
        return False
    device = problem.query.device.type
    if mode == "auto" and device != "cuda":
        return False
    if unsupported(problem, metric) is not None or _kernels() is None:
        return False
    if mode == "interpret" and not interpreter_on():
        raise RuntimeError(
            "fused_kernels('interpret') needs Triton's interpreter, which is chosen when Triton "
            "is imported: set TRITON_INTERPRET=1 in the environment of the process (before "
            "anything imports triton)."
        )
    return device == "cuda" or mode == "interpret"


def in_graph(loss: Tensor) -> bool:
    """Whether the fused kernels computed (part of) ``loss``: their autograd node is in its graph
    (the nodes outlive a backward pass).

    >>> in_graph(torch.ones(2, requires_grad=True).sum())
    False
    """
    todo, seen = [loss.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "FusedSoftmaxLossBackward":
            return True
        todo.extend(nxt for nxt, _ in node.next_functions)
    return False


CONFIGS: dict[str, list[dict[str, int]]] = {}
"""Block configs to try on a GPU instead of :func:`default_configs`, by kernel (``"stats"``,
``"grad"``), in order: for tuning (``benchmarks/bench_gpu_engine.py`` measures the candidates
and sets the fastest first). Empty: the defaults."""


def default_configs(
    kind: str, dim: int, operand: torch.dtype = torch.bfloat16
) -> list[dict[str, int]]:
    """The GPU block configs of kernel ``kind`` (``"stats"`` or ``"grad"``) for ``operand``
    (the block products' dtype) and embeddings of dimension ``dim``, in the order
    :func:`_launch` tries them (the next when one does not fit the chip's shared memory).

    Chosen from an ahead-of-time compilation for sm_90 with Triton's own ``ptxas``
    (``benchmarks/bench_gpu_engine.py --compile-check 90``, no GPU needed): the first config of
    each list compiles without register spills, the half ones onto ``wgmma`` tensor cores. No
    GPU was lent, so none is timed; the benchmark times them all on its first GPU.

    The gradient kernel keeps a ``BLOCK_M x BLOCK_DO`` float32 accumulator: where D is wider
    than ``BLOCK_DO`` its D slices are separate programs that each recompute their tiles'
    logits (D = 512: twice with ``BLOCK_DO = 256``; holding all 512 spills 792 bytes a thread
    at sm_90, the second half config). float32 products run on FMA units (IEEE; no TF32
    unless torch allows it) and need smaller tiles.

    >>> [c["BLOCK_DO"] for c in default_configs("grad", 512)]
    [256, 512, 128, 64]
    >>> [c["BLOCK_DO"] for c in default_configs("grad", 64, torch.float32)]
    [64]
    """
    d = max(16, 1 << (dim - 1).bit_length())  # D rounded up to a power of two
    if kind == "stats" and operand == torch.float32:
        ladder = [
            {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16, "num_warps": 8, "num_stages": 2},
            {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1},
        ]
    elif kind == "stats":
        ladder = [
            {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
            {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2},
            {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 1},
        ]
    elif operand == torch.float32:
        ladder = [
            {
                "BLOCK_M": 32,
                "BLOCK_N": 32,
                "BLOCK_K": 32,
                "BLOCK_DO": min(128, d),
                "num_warps": 4,
                "num_stages": 1,
            },
            {
                "BLOCK_M": 32,
                "BLOCK_N": 32,
                "BLOCK_K": 32,
                "BLOCK_DO": min(64, d),
                "num_warps": 4,
                "num_stages": 1,
            },
        ]
    else:
        ladder = [
            {
                "BLOCK_M": 64,
                "BLOCK_N": 64,
                "BLOCK_K": 64,
                "BLOCK_DO": min(256, d),
                "num_warps": 8,
                "num_stages": 2,
            },
            {
                "BLOCK_M": 64,
                "BLOCK_N": 64,
                "BLOCK_K": 64,
                "BLOCK_DO": min(512, d),
                "num_warps": 8,
                "num_stages": 2,
            },
            {
                "BLOCK_M": 64,
                "BLOCK_N": 64,
                "BLOCK_K": 32,
                "BLOCK_DO": min(128, d),
                "num_warps": 4,
                "num_stages": 1,
            },
            {
                "BLOCK_M": 32,
                "BLOCK_N": 32,
                "BLOCK_K": 32,
                "BLOCK_DO": min(64, d),
                "num_warps": 4,
                "num_stages": 1,
            },
        ]
    return [c for i, c in enumerate(ladder) if c not in ladder[:i]]  # small D: duplicates


def _configs(kind: str, interpret: bool, dim: int, operand: torch.dtype) -> list[dict[str, int]]:
    """The configs :func:`_launch` tries: small blocks in the interpreter (it runs every program
    in numpy; 16 is ``tl.dot``'s least size), else :data:`CONFIGS` or the defaults."""
    if interpret:
        tile = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}
        return [tile if kind == "stats" else {**tile, "BLOCK_DO": 16}]
    return CONFIGS.get(kind) or default_configs(kind, dim, operand)


_CHOSEN: dict[tuple, dict[str, int]] = {}
"""The config that launched, per (kernel, operand dtype, D, device): the next call starts there."""
_INTERPRETER_LOCK = threading.Lock()
"""Triton's interpreter patches ``triton.language`` while a kernel runs: one launch at a time
(threads computing losses at once, e.g. the row-shard tests' simulated ranks)."""


def _launch(kind: str, a: Tensor, grid, *args, **flags) -> None:
    """Launch kernel ``kind`` on ``grid(config)`` with the first config of :func:`_configs` that
    fits the device (``OutOfResources``: the next, smaller one)."""
    kernels, interpret = _kernels(), interpreter_on()
    kernel = kernels.stats_kernel if kind == "stats" else kernels.grad_kernel
    key = (kind, a.dtype, a.shape[1], str(a.device))
    configs = _configs(kind, interpret, a.shape[1], a.dtype)
    if _CHOSEN.get(key) in configs:  # start from the one that fitted last time
        configs = configs[configs.index(_CHOSEN[key]) :]
    flags.update(PRECISION=_precision(a), DOT_F32=interpret)
    if interpret:
        with _INTERPRETER_LOCK:
            kernel[grid(configs[0])](*args, **flags, **configs[0])
        return
    from triton.runtime.errors import OutOfResources

    with torch.cuda.device(a.device):
        for i, cfg in enumerate(configs):
            try:
                kernel[grid(cfg)](*args, **flags, **cfg)
            except OutOfResources:
                if i == len(configs) - 1:
                    raise
                continue
            _CHOSEN[key] = cfg
            return


class _Roles:
    """The kernels' view of a :class:`~contrastkit.functional.tiled.Structure`: offsets reduced
    mod N, flags, and label / id tensors (a placeholder pointer when absent)."""

    def __init__(self, s: Structure, like: Tensor) -> None:
        n = s.n_keys
        self.n_keys = n
        self.has_pos = s.positive_offset is not None
        self.has_self = s.self_offset is not None
        self.pos_off = 0 if s.positive_offset is None else s.positive_offset % n
        self.self_off = 0 if s.self_offset is None else s.self_offset % n
        self.has_labels = s.query_labels is not None
        self.has_ids = s.query_ids is not None
        self.labels = (
            (s.query_labels.contiguous(), s.key_labels.contiguous())
            if self.has_labels
            else (like, like)
        )
        self.ids = (
            (s.query_ids.contiguous(), s.key_ids.contiguous()) if self.has_ids else (like, like)
        )

    def args(self) -> tuple:
        return (*self.labels, *self.ids)

    def scalars(self) -> tuple[int, int, int]:
        return self.n_keys, self.pos_off, self.self_off

    def flags(self, transposed: bool) -> dict[str, bool]:
        return {
            "TRANSPOSED": transposed,
            "HAS_POS": self.has_pos,
            "HAS_SELF": self.has_self,
            "HAS_LABELS": self.has_labels,
            "HAS_IDS": self.has_ids,
        }


def _precision(x: Tensor) -> str:
    """``tl.dot``'s ``input_precision``, which only concerns float32 operands: IEEE products
    unless torch allows TF32 for its own CUDA matmuls (half operands: the default)."""
    if x.dtype != torch.float32:
        return "tf32"
    if x.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _stats(
    a: Tensor,
    b: Tensor,
    roles: _Roles,
    transposed: bool,
    scales: tuple[Tensor, Tensor] | None,
    columns: bool = False,
) -> tuple[Tensor, ...]:
    """``(lse, pos_sum, count)`` of every row of ``a`` against ``b``, each (rows of a,) float32;
    ``scales``: the row scales of a and of b (raw-input products) or None. With ``columns``
    (the logits bounded, see :func:`_unshifted`) also ``(sum of e^l, pos_sum, count)`` of every
    key column (n_keys,) from the same pass."""
    n_a, dim = a.shape
    out = [torch.empty(n_a, dtype=torch.float32, device=a.device) for _ in range(3)]
    cols = [torch.zeros(roles.n_keys if columns else 0, device=a.device) for _ in range(3)]
    _launch(
        "stats",
        a,
        lambda cfg: (_cdiv(n_a, cfg["BLOCK_M"]),),
        a,
        b,
        *out,
        *(cols if columns else out),
        *(scales or (out[0], out[0])),
        *roles.args(),
        n_a,
        b.shape[0],
        dim,
        *roles.scalars(),
        **roles.flags(transposed),
        HAS_SCALE=scales is not None,
        COLUMNS=columns,
    )
    return (*out, *cols) if columns else tuple(out)


def _grad(
    a: Tensor,
    b: Tensor,
    roles: _Roles,
    transposed: bool,
    a_stats: tuple[Tensor, Tensor, Tensor] | None,
    b_stats: tuple[Tensor, Tensor, Tensor] | None,
    scales: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """``dA = G B`` (rows of a, D) in float32; ``*_stats`` are ``(lse, w, pw)`` or None,
    ``scales`` as for :func:`_stats`."""
    n_a, dim = a.shape
    out = torch.empty(n_a, dim, dtype=torch.float32, device=a.device)
    none = (out, out, out)  # placeholders the kernel never reads (HAS_A / HAS_B false)
    _launch(
        "grad",
        a,
        lambda cfg: (_cdiv(n_a, cfg["BLOCK_M"]), _cdiv(dim, cfg["BLOCK_DO"])),
        a,
        b,
        out,
        *(a_stats or none),
        *(b_stats or none),
        *(scales or none[:2]),
        *roles.args(),
        n_a,
        b.shape[0],
        dim,
        *roles.scalars(),
        **roles.flags(transposed),
        HAS_A=a_stats is not None,
        HAS_B=b_stats is not None,
        HAS_SCALE=scales is not None,
    )
    return out


def _cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints."""
    return -(-a // b)


def _pad(x: Tensor, width: int, value: float) -> Tensor:
    """``x`` (N,) extended to (width,) with ``value`` (the shared negatives' columns)."""
    if x.shape[0] == width:
        return x
    return torch.cat([x, x.new_full((width - x.shape[0],), value)])


class FusedSoftmaxLoss(torch.autograd.Function):
    """Per-anchor softmax-contrastive losses with the fused kernels; the contract of
    :class:`~contrastkit.functional.tiled.TiledSoftmaxLoss`.

    ``apply(query, key, negatives, structure, operand, row_scale=None, col_scale=None)`` with
    logit-space ``query: (B, D)``, ``key: (N, D)``, shared ``negatives: (M, D)`` or None
    (float32 from the engine's preparation), a :class:`~contrastkit.functional.tiled.Structure`
    of a problem that :func:`unsupported` accepts, and the operand dtype of the block products
    (None: the inputs' own). With ``row_scale: (B,)`` and ``col_scale: (N + M,)`` the inputs are
    the raw half embeddings and ``l_ij = row_scale_i col_scale_j (q_i . k_j)``
    (``engine.HALF_PRODUCTS = "raw"``; the scales get their gradients). Returns ``(row_loss (B,), col_loss (N,) or empty, row_valid (B,), col_valid (N,) or
    empty)``, float32; a loss is ``lse - mean positive logit``, 0 without a positive. The
    gradients come back in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, query, key, negatives, structure, operand, row_scale=None, col_scale=None):
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (query, key, negatives))
        op = operand or query.dtype
        n = key.shape[0]
        q = query.to(op).contiguous()
        kk = key if negatives is None else torch.cat([key, negatives.to(key.dtype)])
        kk = kk.to(op).contiguous()  # (N + M, D)
        roles = _Roles(structure, q)
        scales = None if row_scale is None else (row_scale.float(), col_scale.float())
        symmetric = structure.symmetric
        one_pass = symmetric and _unshifted(q, kk, None, "dot", scales)
        row_lse, row_pos, row_cnt, *col_stats = _stats(q, kk, roles, False, scales, one_pass)
        row_valid = row_cnt > 0
        row_loss = torch.where(row_valid, row_lse - row_pos / row_cnt.clamp(min=1.0), 0.0)
        row_lse = torch.where(row_valid, row_lse, float("inf"))  # no loss: zero probability
        reduce = structure.column_reduce if structure.symmetric else None
        if symmetric:
            if one_pass:  # the column sums came with the rows (unshifted: lse = log sum)
                col_sum, col_pos, col_cnt = col_stats
                col_lse = col_sum.log()
            else:  # a second pass, over the columns, with an online max
                t_scales = None if scales is None else (scales[1][:n], scales[0])
                col_lse, col_pos, col_cnt = _stats(kk[:n], q, roles, True, t_scales)
            if reduce is not None:  # the columns over the rows of every shard
                col_lse, col_sum, col_pos, col_cnt = combine_column_shards(
                    reduce, col_lse, torch.ones_like(col_lse), col_pos, col_cnt
                )
                col_lse = col_lse + col_sum.log()
            col_valid = col_cnt > 0
            col_loss = torch.where(col_valid, col_lse - col_pos / col_cnt.clamp(min=1.0), 0.0)
            col_lse = torch.where(col_valid, col_lse, float("inf"))
        else:
            col_valid = torch.zeros(0, dtype=torch.bool, device=q.device)
            col_loss = col_lse = col_cnt = row_lse.new_zeros(0)
        ctx.save_for_backward(q, kk, row_lse, row_cnt, col_lse, col_cnt, *(scales or (None, None)))
        ctx.roles, ctx.symmetric, ctx.n, ctx.reduce = roles, structure.symmetric, n, reduce
        ctx.mark_non_differentiable(row_valid, col_valid)
        return row_loss, col_loss, row_valid, col_valid

    @staticmethod
    def backward(ctx, g_row, g_col, _g_row_valid, _g_col_valid):
        q, kk, row_lse, row_cnt, col_lse, col_cnt, *scales = ctx.saved_tensors
        scales = None if scales[0] is None else (scales[0], scales[1])
        roles, n, width = ctx.roles, ctx.n, kk.shape[0]
        row_w = torch.zeros_like(row_lse) if g_row is None else g_row.float() * (row_cnt > 0)
        rows = (row_lse, row_w, row_w / row_cnt.clamp(min=1.0))
        cols = None
        if ctx.reduce is not None:
            # every shard's column losses depend on this shard's rows: sum their gradients (each
            # shard sends its own columns', zeros elsewhere), on every shard, g_col or not
            g_col = torch.zeros_like(col_lse) if g_col is None else g_col.float()
            g_col = ctx.reduce(g_col.contiguous().clone(), "sum")
        if ctx.symmetric and g_col is not None:
            col_w = g_col.float() * (col_cnt > 0)
            col_pw = col_w / col_cnt.clamp(min=1.0)
            # the shared negatives' columns have no key -> query loss
            cols = (_pad(col_lse, width, float("inf")), _pad(col_w, width, 0.0))
            cols = (*cols, _pad(col_pw, width, 0.0))
        t_scales = None if scales is None else (scales[1], scales[0])
        dq = _grad(q, kk, roles, False, rows, cols, scales)  # (B, D)
        dkk = _grad(kk, q, roles, True, cols, rows, t_scales)  # (N + M, D)
        d_rows, d_cols = _scale_grads(dq, dkk, q, kk, scales)
        q_dtype, k_dtype, n_dtype = ctx.dtypes
        dneg = None if n_dtype is None else dkk[n:].to(n_dtype)
        return dq.to(q_dtype), dkk[:n].to(k_dtype), dneg, None, None, d_rows, d_cols
