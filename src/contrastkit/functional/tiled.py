"""Blocked exact kernels behind :mod:`contrastkit.functional.engine` (memory O(chunk * N)).

Everything here works in *logit space*: the engine has already applied the metric's
normalisation and the temperature (``query / t`` for dot/cosine, both sides ``/ t`` for
euclidean), so a logit is ``q_i . k_j`` (``metric="dot"``) or ``-|q_i - k_j|``
(``metric="euclidean"``), and autograd differentiates that preparation outside these Functions.

The queries are cut into strips of ``chunk`` rows (shared negatives are concatenated to the keys
once). :class:`TiledSoftmaxLoss` further cuts each strip into ``chunk x col_chunk`` tiles that
stay in cache while their logits are exponentiated and summed: row statistics stream across a
strip's tiles and column statistics (the key -> query direction of the symmetric loss) across
strips, both with an online log-sum-exp. Peak extra memory is a few ``(chunk, N + M)`` float32
buffers plus the ``(N + M, D)`` gradient accumulators; the ``(B, N)`` matrix never exists.

* :class:`TiledSoftmaxLoss` -- per-anchor row (and column) losses; the backward pass recomputes
  each tile's logits from the saved embeddings and the saved log-sum-exp of every row/column
  (a bounded number of tiles is kept from the forward pass instead).
* :class:`FusedRowSoftmaxLoss` -- one direction, output ``sum over valid anchors``; the gradient
  is accumulated during the forward pass (a full-width strip holds its rows' exact
  statistics), so no recomputation, and backward only scales the stored gradients.
* :class:`TiledSigmoidLoss` -- SigLIP's pairwise sigmoid, whose per-logit gradient is local.

>>> g = torch.Generator().manual_seed(0)
>>> q, k = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
>>> s = Structure(n_keys=5, positive_offset=0, symmetric=True)
>>> row, col, vr, vc = TiledSoftmaxLoss.apply(q, k, None, s, Blocks("dot", 2, col_chunk=3))
>>> dense = torch.logsumexp(q @ k.T, 1) - (q * k).sum(1)
>>> torch.allclose(row, dense)
True
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.functional import bf16_gemm

__all__ = ["Blocks", "FusedRowSoftmaxLoss", "Structure", "TiledSigmoidLoss", "TiledSoftmaxLoss"]


@dataclass(frozen=True)
class Structure:
    """Which candidates are positives / ignored, described without a dense (B, N) tensor.

    Attributes mirror :class:`contrastkit.functional.engine.ContrastiveProblem`: ``n_keys`` (N),
    ``positive_offset`` (key ``(offset + i) mod N`` is the positive of query i, or None),
    ``self_offset`` (key ``(offset + i) mod N`` is query i itself: neither positive nor
    candidate, or None), labels ``(B,)`` / ``(N,)``, ids ``(B,)`` / ``(N,)``, and the optional
    dense ``positive_mask: (B, N)`` and ``ignore_mask: (B, N + M)``; ``symmetric`` adds the
    key -> query direction (N == B, or the B rows are one shard of the rows of a larger problem
    with ``column_reduce``, see :class:`TiledSoftmaxLoss`).
    """

    n_keys: int
    positive_offset: int | None = 0
    self_offset: int | None = None
    query_labels: Tensor | None = None
    key_labels: Tensor | None = None
    query_ids: Tensor | None = None
    key_ids: Tensor | None = None
    positive_mask: Tensor | None = None
    ignore_mask: Tensor | None = None
    symmetric: bool = False
    column_reduce: Callable[[Tensor, str], Tensor] | None = None

    @property
    def simple(self) -> bool:
        """Only index-described positives / self-exclusion: no per-strip mask is built."""
        return (
            self.query_labels is None
            and self.query_ids is None
            and self.positive_mask is None
            and self.ignore_mask is None
        )


@dataclass(frozen=True)
class Blocks:
    """How the kernels cut and compute a problem: everything but the tensors and the structure.

    Attributes:
        metric: the logits, ``"dot"`` (``q_i . k_j``) or ``"euclidean"`` (``-|q_i - k_j|``).
        chunk: query rows per strip.
        col_chunk: candidate columns per tile of :class:`TiledSoftmaxLoss` (its strips are cut
            into ``chunk x col_chunk`` tiles); None: full-width tiles.
        cache_bytes: :class:`TiledSoftmaxLoss` keeps up to this many bytes of exponentiated
            forward tiles for the backward pass (0: recompute every tile).
        operand: the dtype the block products' operands are rounded to (half precision), or
            None for the inputs' own dtype.

    >>> Blocks("dot", 256)
    Blocks(metric='dot', chunk=256, col_chunk=None, cache_bytes=0, operand=None)
    """

    metric: str
    chunk: int
    col_chunk: int | None = None
    cache_bytes: int = 0
    operand: torch.dtype | None = None


class _Tile:
    """Logits of query rows ``r0:r1`` against candidate columns ``c0:c1``, with their masks.

    Columns are numbered as in the dense ``(B, N + M)`` problem: keys ``0..N-1``, then the M
    negatives (shared ones are rows ``N..`` of ``kk``, per-query ones come from ``neg_s``). A
    tile holds either only key columns or only negative columns, except the full-width strips
    of :class:`FusedRowSoftmaxLoss` and :class:`TiledSigmoidLoss` (``c0 = 0``, ``c1 = N + M``).
    """

    def __init__(
        self,
        s: Structure,
        r0: int,
        r1: int,
        c0: int,
        c1: int,
        q_s: Tensor,
        kk: Tensor,
        neg_s: Tensor | None,
        metric: str,
        kk_sq: Tensor | None,
        buf: Tensor,
        cached: bool = False,
        scale: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        n, kw = s.n_keys, kk.shape[0]
        self.scale = scale  # (row scales of this strip (R,), column scales of kk (kw,)) or None
        rows = r1 - r0
        self.rows, self.c0 = rows, c0
        self.a0, self.a1 = min(c0, kw), min(c1, kw)  # the columns that are rows of kk
        self.n_key = max(0, min(c1, n) - c0)  # leading key columns (the rest are negatives)
        self.col_slice = slice(c0, c0 + self.n_key)
        self.use_neg = neg_s is not None and c1 > kw
        n_kk = self.a1 - self.a0
        logits = buf[: rows * n_kk].view(rows, n_kk)
        # cached: buf already holds this tile's exp(logits) from the forward pass, masked entries
        # 0 (only key tiles are kept): the positives' positions are derived, nothing is written.
        if not cached:
            logits = self._logits(logits, q_s, kk, neg_s, metric, kk_sq)
        self.logits = logits
        self.pos_mask: Tensor | None = None
        self.pos_at: tuple[Tensor, Tensor] | None = None  # index positives, see _pick
        if not self.n_key and s.ignore_mask is None:
            return  # negatives only: no positive, nothing ignored
        ar = torch.arange(rows, device=q_s.device)
        gi = ar + r0  # global query index
        self_at = None  # the self pair of each row, where it falls in this tile
        if s.self_offset is not None and self.n_key:
            self_at = _pick((gi + s.self_offset) % n - c0, self.n_key)
        self._positives(s, r0, r1, gi, self_at)
        if cached:
            return
        ignore = self._ignored(s, r0, r1)
        if ignore is not None:
            logits.masked_fill_(ignore, float("-inf"))
        if self_at is not None:
            _put(logits, self_at, float("-inf"))

    def _logits(
        self,
        logits: Tensor,
        q_s: Tensor,
        kk: Tensor,
        neg_s: Tensor | None,
        metric: str,
        kk_sq: Tensor | None,
    ) -> Tensor:
        """Write the key (and shared-negative) logits into ``logits``; append per-query ones."""
        if logits.shape[1]:
            block_logits(q_s, kk[self.a0 : self.a1], logits)
            if self.scale is not None:  # raw-input products: l_ij = a_i b_j (x_i . y_j)
                logits.mul_(self.scale[0][:, None]).mul_(self.scale[1][None, self.a0 : self.a1])
            if metric == "euclidean":
                q_sq = _sq_norms(q_s)
                logits.mul_(-2.0).add_(q_sq[:, None]).add_(kk_sq[None, self.a0 : self.a1])
                logits.clamp_(min=0.0).sqrt_().neg_()
        if not self.use_neg:
            return logits
        # per-query negatives are kept in the accumulation dtype (a batched matrix-vector
        # product gains nothing from half operands); the (R, D) strip is cast to match.
        q_a = q_s.to(neg_s.dtype)
        extra = torch.bmm(neg_s, q_a[:, :, None]).squeeze(2)  # (R, M) per-query negatives
        if self.scale is not None:
            extra = extra * self.scale[0][:, None]
        if metric == "euclidean":
            sq = _sq_norms(q_a)[:, None] + (neg_s * neg_s).sum(2) - 2.0 * extra
            extra = -sq.clamp_(min=0.0).sqrt_()
        return torch.cat([logits, extra], dim=1) if logits.shape[1] else extra  # (R, width)

    def _positives(
        self,
        s: Structure,
        r0: int,
        r1: int,
        gi: Tensor,
        self_at: tuple[Tensor, Tensor] | None,
    ) -> None:
        """The positives: one per row at most (``pos_at``, see :func:`_pick`) or a mask."""
        n, c0, nk = s.n_keys, self.c0, self.n_key
        if s.simple:
            if s.positive_offset is not None and nk:
                idx, hit = _pick((gi + s.positive_offset) % n - c0, nk)
                if s.self_offset is not None:
                    hit &= (gi + s.positive_offset) % n != (gi + s.self_offset) % n
                self.pos_at = idx, hit
            return
        # SupCon's labels-only case: one compare, no ignore mask; self-exclusion is an index write
        cs = self.col_slice
        pos: Tensor | None = None
        if s.query_labels is not None:
            pos = s.query_labels[r0:r1, None] == s.key_labels[None, cs]
        if s.positive_mask is not None:
            pos = (
                s.positive_mask[r0:r1, cs].clone()
                if pos is None
                else pos | s.positive_mask[r0:r1, cs]
            )
        if pos is None:
            pos = torch.zeros(r1 - r0, nk, dtype=torch.bool, device=gi.device)
        if s.positive_offset is not None and nk:
            idx, hit = _pick((gi + s.positive_offset) % n - c0, nk)
            _put(pos, (idx, hit), True)
        if self_at is not None:
            _put(pos, self_at, False)
        self.pos_mask = pos

    def _ignored(self, s: Structure, r0: int, r1: int) -> Tensor | None:
        """Entries left out of the softmax besides the self pairs (the given mask, keys sharing
        the query's id), never a positive; None when there are none."""
        if s.ignore_mask is None and s.query_ids is None:
            return None
        assert self.pos_mask is not None  # either one makes the structure non-simple
        width, nk, cs = self.logits.shape[1], self.n_key, self.col_slice
        if s.ignore_mask is not None:
            ignore = s.ignore_mask[r0:r1, self.c0 : self.c0 + width].clone()
        else:
            ignore = torch.zeros(r1 - r0, width, dtype=torch.bool, device=self.logits.device)
        if s.query_ids is not None:
            ignore[:, :nk] |= s.query_ids[r0:r1, None] == s.key_ids[None, cs]
        ignore[:, :nk] &= ~self.pos_mask
        return ignore

    def row_positive(self) -> tuple[Tensor, Tensor]:
        """Sum of positive logits and number of positives per row in this tile, both (R,)."""
        lg = self.logits
        if self.pos_mask is not None:
            pos_sum = torch.where(self.pos_mask, lg[:, : self.n_key], 0.0).sum(1)  # -inf * 0 = nan
            return pos_sum, self.pos_mask.sum(1).to(lg.dtype)
        if self.pos_at is None:
            pos_sum = torch.zeros(self.rows, dtype=lg.dtype, device=lg.device)
            return pos_sum, torch.zeros_like(pos_sum)
        idx, hit = self.pos_at
        pos_sum = torch.where(hit, lg.gather(1, idx).squeeze(1), 0.0)  # (R,)
        return pos_sum, hit.to(lg.dtype)

    def col_positive_add(self, col_sum: Tensor, col_count: Tensor) -> None:
        """Add this tile's positive logits / counts per key column (key -> query direction)."""
        lg = self.logits
        if self.pos_mask is not None:
            col_sum[self.col_slice] += torch.where(self.pos_mask, lg[:, : self.n_key], 0.0).sum(0)
            col_count[self.col_slice] += self.pos_mask.sum(0).to(lg.dtype)
        elif self.pos_at is not None:
            idx, hit = self.pos_at
            cols = idx.squeeze(1) + self.c0  # rows without a positive here add 0
            col_sum.index_add_(0, cols, torch.where(hit, lg.gather(1, idx).squeeze(1), 0.0))
            col_count.index_add_(0, cols, hit.to(lg.dtype))

    def subtract_positive(self, grad: Tensor, row_w: Tensor | None, col_w: Tensor | None) -> None:
        """grad[i, p] -= row_w[i] + col_w[p] for every positive p of row i (in place).

        ``row_w`` is indexed by the tile's rows (R,), ``col_w`` by global key column (N,).
        """
        if self.pos_mask is not None:
            g = grad[:, : self.n_key]
            if row_w is not None:
                g.addcmul_(self.pos_mask, row_w[:, None], value=-1.0)
            if col_w is not None:
                g.addcmul_(self.pos_mask, col_w[None, self.col_slice], value=-1.0)
        elif self.pos_at is not None:
            idx, hit = self.pos_at
            w = torch.zeros(self.rows, dtype=grad.dtype, device=grad.device)
            if row_w is not None:
                w += row_w
            if col_w is not None:
                w += col_w[idx.squeeze(1) + self.c0]
            grad.scatter_add_(1, idx, torch.where(hit, -w, 0.0)[:, None])

    def scale_weights(self, grad: Tensor) -> None:
        """``g'_ij = g_ij a_i b_j`` in place (raw-input products; per-query negative columns
        take ``a_i`` only): the products with the raw operands then give ``dL/dx``, ``dL/dy``."""
        if self.scale is None:
            return
        n_kk = self.a1 - self.a0
        grad.mul_(self.scale[0][:, None])
        if n_kk:
            grad[:, :n_kk].mul_(self.scale[1][None, self.a0 : self.a1])

    def backprop(
        self,
        grad: Tensor,
        q_s: Tensor,
        kk: Tensor,
        neg_s: Tensor | None,
        metric: str,
        dq_s: Tensor,
        dkk: Tensor,
        dneg_s: Tensor | None,
    ) -> None:
        """Logit gradient (R, width) of this tile -> add to dq_s, dkk[a0:a1] and dneg_s."""
        n_kk = self.a1 - self.a0
        if metric == "euclidean":
            # logit = -d, dd/dq = (q - k) / d: scale by 1/d (0 where d = 0, like the safe sqrt).
            dist = self.logits.neg()
            grad = torch.where(dist > 0, grad / dist, 0.0)
        if n_kk:
            g_keys, k_t, dk_t = grad[:, :n_kk], kk[self.a0 : self.a1], dkk[self.a0 : self.a1]
            if g_keys.dtype != k_t.dtype:  # half operands: round the weights once, not twice
                g_keys = g_keys.to(k_t.dtype)
            _add_mm_(dq_s, g_keys, k_t)
            _add_mm_(dk_t, g_keys.T, q_s)
            if metric == "euclidean":
                g_sum = grad[:, :n_kk]
                dq_s -= g_sum.sum(1)[:, None] * q_s
                dk_t -= g_sum.sum(0)[:, None] * k_t
        if self.use_neg:
            g_neg = grad[:, n_kk:]  # (R, M)
            q_a = q_s.to(neg_s.dtype)
            dq_s += torch.bmm(g_neg[:, None, :], neg_s).squeeze(1)
            dneg_s += g_neg[:, :, None] * q_a[:, None, :]  # (R, M, D)
            if metric == "euclidean":
                dq_s -= g_neg.sum(1)[:, None] * q_a
                dneg_s -= g_neg[:, :, None] * neg_s


def _pick(cols: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """One column per row of a tile, without a host sync: ``cols: (R,)`` tile columns (possibly
    outside ``[0, width)``) -> ``(idx (R, 1) clamped into the tile, hit (R,) bool in the tile)``.

    Selecting the rows that hit with a boolean index would need their count on the host (a
    device sync per tile on CUDA); gather / scatter at the clamped column with ``hit`` deciding
    the value never does.
    """
    hit = (cols >= 0) & (cols < width)
    return cols.clamp(0, width - 1)[:, None], hit


def _put(x: Tensor, at: tuple[Tensor, Tensor], value: float | bool) -> None:
    """``x[i, idx[i]] = value`` for the rows that hit (in place, sync-free; see :func:`_pick`)."""
    idx, hit = at
    x.scatter_(1, idx, torch.where(hit[:, None], value, x.gather(1, idx)))


def _keys(key: Tensor, negatives: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Shared negatives join the keys as extra columns; per-query ones stay apart, in the
    accumulation dtype (their batched matrix-vector products are memory-bound)."""
    if negatives is not None and negatives.ndim == 2:
        return torch.cat([key, negatives], dim=0), None  # (N + M, D)
    if negatives is None:
        return key, None
    return key, negatives.to(acc_dtype(negatives.dtype))  # (B, M, D)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of logits, statistics and gradient accumulators: float64 stays float64,
    everything else (float32, and half-precision operands) accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _buffer(rows: int, width: int, like: Tensor) -> Tensor:
    """A 1-D ``rows * width`` buffer of ``like``'s accumulation dtype, on its device."""
    return torch.empty(rows * width, dtype=acc_dtype(like.dtype), device=like.device)


def _sq_norms(x: Tensor) -> Tensor:
    """Squared row norms ``|x_i|^2`` (rows,) in the accumulation dtype (euclidean logits)."""
    x = x.to(acc_dtype(x.dtype))
    return (x * x).sum(-1)


def _has_out_dtype(x: Tensor) -> bool:
    """Whether this torch has a half x half -> float32 GEMM for ``x``'s device (``mm.dtype``:
    CUDA since torch 2.8; never the CPU build)."""
    return x.device.type == "cuda" and hasattr(torch.ops.aten.mm, "dtype")


def block_logits(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """``out <- a @ b.T`` in ``out``'s (float32 / float64) dtype: exact-product logits.

    ``a: (R, D)``, ``b: (C, D)`` of the same dtype, ``out: (R, C)``. Same dtypes: one GEMM into
    ``out`` (the float32 path, unchanged). Half-precision operands, never rounding a logit to half:

    * CUDA: one GEMM with half operands and a float32 result (``torch.mm(..., out_dtype=)``);
    * CPU bf16 with bf16 dot products: the same single GEMM from oneDNN
      (:func:`contrastkit.functional.bf16_gemm.addmm_`), about 5x the float32 GEMM here;
    * elsewhere (CPU bf16 without oneDNN; CUDA before torch 2.8): ``hi = a @ b.T`` rounded to
      bf16, then the residual ``a @ b.T - hi`` from a second bf16 GEMM that accumulates with
      ``hi`` in float32 before rounding (``addmm_(beta=-1)`` in place on ``hi``); ``hi +
      residual`` is within ``2**-17`` relative of the float32 product (the residual's own bf16
      rounding), and two bf16 GEMMs still beat one float32 GEMM.

    >>> a, b = torch.randn(3, 8).bfloat16(), torch.randn(5, 8).bfloat16()
    >>> out = block_logits(a, b, torch.empty(3, 5))
    >>> torch.allclose(out, a.float() @ b.float().T, rtol=1e-5, atol=1e-5)
    True
    """
    if a.dtype == out.dtype:
        return torch.mm(a, b.T, out=out)
    if _has_out_dtype(a):
        return torch.mm(a, b.T, out_dtype=out.dtype, out=out)
    if out.dtype == torch.float32 and bf16_gemm.available(a):
        return bf16_gemm.addmm_(out, a, b.T, beta=0.0)
    hi = torch.mm(a, b.T)  # (R, C) rounded to half
    out.copy_(hi)
    residual = hi.addmm_(a, b.T, beta=-1.0)  # in place: float32-accumulated a @ b.T - hi
    return out.add_(residual)


def _add_mm_(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` with ``acc`` in the accumulation dtype and ``b`` the operand dtype.

    ``a`` (gradient weights, float32) is rounded to ``b``'s half dtype for the product: the
    gradient it feeds is returned in that dtype anyway. The weights are complete by then (the
    positives' ``p - 1`` is formed in float32: rounding ``p`` near 1 to bf16 first would cancel
    catastrophically, measured gradient cosine 0.98). Same dtypes: one ``addmm_``. Half operands
    accumulate into ``acc`` in float32 where a half x half -> float32 GEMM exists (CUDA's
    ``out_dtype``, oneDNN on the CPU); otherwise the bf16-rounded product is added.
    """
    if a.dtype == b.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    a = a.to(b.dtype)
    if _has_out_dtype(b):
        acc += torch.mm(a, b, out_dtype=acc.dtype)
    elif acc.dtype == torch.float32 and bf16_gemm.available(b):
        bf16_gemm.addmm_(acc, a, b)
    else:
        acc += torch.mm(a, b)


class _SlotPool:
    """Free CPU tile buffers of one size, kept between calls for :class:`TiledSoftmaxLoss`.

    Several fresh 16 MiB buffers alive at once are page-faulted in on every call (the allocator
    hands them back to the OS): five cost 28 ms against 2 ms when reused, measured on a 2-core
    CPU. At most ``limit`` bytes are kept; other devices allocate directly (CUDA caches).
    Losses computed on several threads at once share it under a lock.
    """

    def __init__(self) -> None:
        self.free: list[Tensor] = []
        self.lock = threading.Lock()

    def take(self, numel: int, like: Tensor) -> Tensor:
        """A 1-D buffer of ``numel`` elements of ``like``'s dtype and device (contents undefined)."""
        if like.device.type == "cpu":
            with self.lock:
                if self.free and _kind(self.free[-1]) == (numel, like.dtype):
                    return self.free.pop()
        return torch.empty(numel, dtype=like.dtype, device=like.device)

    def give(self, slots: list[Tensor], limit: int) -> None:
        """Keep ``slots`` (no longer used by their call) for the next one, up to ``limit`` bytes."""
        slots = [t for t in slots if t.device.type == "cpu"]
        with self.lock:
            if slots and self.free and _kind(self.free[0]) != _kind(slots[0]):
                self.free.clear()  # one size at a time: at most one problem's slots
            for t in slots:
                if (len(self.free) + 1) * t.numel() * t.element_size() <= limit:
                    self.free.append(t)


def _kind(t: Tensor) -> tuple[int, torch.dtype]:
    return t.numel(), t.dtype


_POOL = _SlotPool()


def _column_tiles(n: int, kw: int, m3: int, width: int) -> list[tuple[int, int]]:
    """Column ranges of the 2-D tiling: keys in ``width`` steps, shared negatives likewise,
    per-query negatives (``m3`` columns after the ``kw`` rows of kk) as one range."""
    ranges = [(c, min(c + width, n)) for c in range(0, n, width)]
    ranges += [(c, min(c + width, kw)) for c in range(n, kw, width)]
    if m3:
        ranges.append((kw, kw + m3))
    return ranges


_UNSHIFTED_BOUND = {False: 40.0, True: 300.0}
"""The largest |logit| :func:`_unshifted` exponentiates without a max shift (float32,
float64)."""


def _unshifted(
    query: Tensor,
    kk: Tensor,
    neg3: Tensor | None,
    metric: str,
    scale: tuple[Tensor, Tensor] | None = None,
) -> bool:
    """True when every logit is provably small enough for ``exp`` without a max shift.

    Cauchy-Schwarz bounds |q . k| by max|q| max|k| (euclidean: |q - k| <= max|q| + max|k|).
    Within +-40 (float32; +-300 in float64) ``exp`` neither overflows nor underflows, so one
    ``exp`` per logit serves both the row and the column sums: no max pass, no second exp
    (cosine similarity at temperature >= 0.025 always qualifies).
    """
    acc = acc_dtype(query.dtype)
    q_norm = torch.linalg.vector_norm(query, dim=-1, dtype=acc)
    kk_norm = torch.linalg.vector_norm(kk, dim=-1, dtype=acc)
    if scale is not None:  # raw-input products: the logit-space norms are |x_i| a_i, |y_j| b_j
        q_norm, kk_norm = q_norm * scale[0], kk_norm * scale[1]
    q_max = float(q_norm.max()) if query.numel() else 0.0
    k_norm = [float(kk_norm.max())]
    if neg3 is not None and neg3.numel():
        k_norm.append(float(torch.linalg.vector_norm(neg3, dim=-1, dtype=acc).max()))
    k_max = max(k_norm)
    bound = q_max + k_max if metric == "euclidean" else q_max * k_max
    return bound <= _UNSHIFTED_BOUND[query.dtype == torch.float64]


def _logit_space_rows(x: Tensor, scale: Tensor | None) -> Tensor:
    """``x`` in the accumulation dtype, times its row scales when the products are raw."""
    x = x.to(acc_dtype(x.dtype))
    return x if scale is None else x * scale[:, None]


def _scale_grads(
    dq: Tensor, dkk: Tensor, query: Tensor, kk: Tensor, scale: tuple[Tensor, Tensor] | None
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of the row / column scales from the raw-input gradients (None, None without
    scales): ``dL/da_i = x_i . dL/dx_i / a_i`` (the ``(B, D)`` results, no extra tile pass)."""
    if scale is None:
        return None, None
    return _row_dots(query, dq) / scale[0], _row_dots(kk, dkk) / scale[1]


def _row_dots(x: Tensor, acc: Tensor, block: int = 4096) -> Tensor:
    """``(x_i . acc_i)`` per row (rows,) in ``acc``'s dtype, ``block`` rows at a time (no
    float32 copy of the whole half ``x`` at the backward's peak)."""
    out = torch.empty(x.shape[0], dtype=acc.dtype, device=acc.device)
    for r0 in range(0, x.shape[0], block):
        out[r0 : r0 + block] = torch.linalg.vecdot(
            x[r0 : r0 + block].to(acc.dtype), acc[r0 : r0 + block]
        )
    return out


def _labelled_backprop(
    labelled: _LabelPositives,
    row_w: Tensor,
    col_w: Tensor | None,
    query: Tensor,
    kk: Tensor,
    dq: Tensor,
    dkk: Tensor,
    scale: tuple[Tensor, Tensor] | None,
) -> None:
    """The class-sum positive term into ``dq``, ``dkk``; with raw-input products it is computed
    in logit space (``a_i x_i``, ``b_j y_j``) and taken back with ``dL/dx_i = a_i dL/dq~_i``."""
    if scale is None:
        labelled.backprop(row_w, col_w, query, kk, dq, dkk)
        return
    dq_l, dkk_l = torch.zeros_like(dq), torch.zeros_like(dkk)
    q_l, kk_l = _logit_space_rows(query, scale[0]), _logit_space_rows(kk, scale[1])
    labelled.backprop(row_w, col_w, q_l, kk_l, dq_l, dkk_l)
    dq.add_(dq_l * scale[0][:, None])
    dkk.add_(dkk_l * scale[1][:, None])


def _strip_scale(
    scale: tuple[Tensor, Tensor] | None, r0: int, r1: int
) -> tuple[Tensor, Tensor] | None:
    """The row scales of strip ``r0:r1`` with all column scales (None without scales)."""
    return None if scale is None else (scale[0][r0:r1], scale[1])


def _logit_space_pair(
    query: Tensor, kk: Tensor, scale: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor]:
    """``(query, kk)`` as the class sums see them: in logit space (scaled, float32) when the
    products are raw, else unchanged."""
    if scale is None:
        return query, kk
    return _logit_space_rows(query, scale[0]), _logit_space_rows(kk, scale[1])


def _dtypes(*tensors: Tensor | None) -> tuple[torch.dtype | None, ...]:
    return tuple(None if t is None else t.dtype for t in tensors)


def _as_operands(
    query: Tensor, key: Tensor, negatives: Tensor | None, operand: torch.dtype | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The block products' operands: ``query``, ``key`` and shared ``negatives`` rounded to
    ``operand`` (None: unchanged); per-query negatives stay as they are (see :func:`_keys`).

    The Functions take the float32 logit-space tensors and round them here, so that their
    gradients leave in float32 and are rounded once, at the user's tensor, after the
    normalisation's backward. (The tight-cluster limit of docs/engine.md comes from this
    rounding of the operands, not from the gradients' dtype: measured the same either way.)
    """
    if operand is None or query.dtype == operand:
        return query, key, negatives
    if negatives is not None and negatives.ndim == 2:
        negatives = negatives.to(operand)
    return query.to(operand), key.to(operand), negatives


def _input_dtype_grads(
    dq: Tensor, dkk: Tensor, dneg3: Tensor | None, n: int, dtypes: tuple
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Split the float32 accumulators into the gradients of ``(query, key, negatives)``, each
    in its input's dtype ``dtypes`` (a no-op for float32 / float64 inputs); ``n`` keys."""
    q_dtype, k_dtype, n_dtype = dtypes
    dkey = dkk[:n].to(k_dtype)
    if n_dtype is None:
        return dq.to(q_dtype), dkey, None
    dneg = dneg3 if dneg3 is not None else dkk[n:]
    return dq.to(q_dtype), dkey, dneg.to(n_dtype)


def _finite_floor(x: Tensor) -> Tensor:
    """Replace -inf maxima (fully ignored rows) by the dtype's lowest finite value."""
    return x.clamp(min=torch.finfo(x.dtype).min)


class TiledSoftmaxLoss(torch.autograd.Function):
    """Per-anchor softmax-contrastive losses, tile by tile, backward by recomputation.

    ``apply(query, key, negatives, structure, blocks, row_scale=None, col_scale=None)`` with
    logit-space ``query: (B, D)``, ``key: (N, D)``, ``negatives: (M, D) | (B, M, D) | None``,
    a :class:`Structure` and the :class:`Blocks` settings; tiles are ``blocks.chunk`` query
    rows by ``blocks.col_chunk`` candidate columns. Returns ``(row_loss (B,), col_loss (N,) or empty, row_valid (B,),
    col_valid (N,) or empty)``; a loss is ``lse - mean positive logit`` and 0 where the anchor
    has no positive. Row statistics stream across a strip's column tiles and column statistics
    across strips (online log-sum-exp).

    ``structure.column_reduce`` (symmetric only; None: the B rows are all the rows) is for a (B, N)
    block that holds one shard of the rows of a larger problem, the other shards' rows living
    on other processes (:func:`contrastkit.functional.info_nce` with a ``group``): an in-place
    ``column_reduce(x, op)`` with ``op`` ``"max"`` / ``"sum"`` over the shards, called the same
    way on every shard whatever its data. The column statistics of the block's rows are then
    combined over the shards (:func:`combine_column_shards`), so ``col_loss`` is the loss of
    the N columns over the rows of *all* shards, the same on every shard; in the backward pass
    the upstream column gradient is summed over the shards, and each shard backpropagates its
    own rows' share of every column's loss. Every shard must run the backward pass.

    With a gradient wanted, the first tiles' exponentiated logits (``metric="dot"`` without a
    max shift) are kept for the backward pass, which then skips their product and ``exp``: at
    most ``blocks.cache_bytes`` and never more than two strips' worth, so memory stays O(chunk * N).
    A second backward through a retained graph recomputes every tile.
    """

    @staticmethod
    def forward(
        ctx,
        query,
        key,
        negatives,
        structure,
        blocks,
        row_scale=None,
        col_scale=None,
    ):
        metric, chunk, symmetric = blocks.metric, blocks.chunk, structure.symmetric
        column_reduce, cache_bytes = structure.column_reduce, blocks.cache_bytes
        ctx.dtypes = _dtypes(query, key, negatives)
        query, key, negatives = _as_operands(query, key, negatives, blocks.operand)
        b, n = query.shape[0], key.shape[0]
        scale = None if row_scale is None else (row_scale, col_scale)
        kk, neg3 = _keys(key, negatives)
        kw, m3 = kk.shape[0], 0 if neg3 is None else neg3.shape[1]
        col_chunk = blocks.col_chunk or max(kw, 1)  # None: full-width tiles
        tiles = _column_tiles(n, kw, m3, col_chunk)
        kk_sq = _sq_norms(kk) if metric == "euclidean" else None
        acc = acc_dtype(query.dtype)
        lowest = torch.finfo(acc).min
        row_lse = torch.empty(b, dtype=acc, device=query.device)
        row_pos = torch.zeros_like(row_lse)
        row_cnt = torch.zeros_like(row_lse)
        unshifted = _unshifted(query, kk, neg3, metric, scale)
        if symmetric:
            col_max = torch.full((n,), 0.0 if unshifted else lowest, dtype=acc, device=query.device)
            col_sum = torch.zeros_like(col_max)
            col_pos = torch.zeros_like(col_max)
            col_cnt = torch.zeros_like(col_max)
        buf = _buffer(chunk, min(col_chunk, kw), query)
        labelled, tiling = _LabelPositives.split(
            structure, metric, *_logit_space_pair(query, kk, scale), columns=symmetric
        )
        cache: dict[tuple[int, int], Tensor] = {}
        n_slots = 0
        if unshifted and metric == "dot" and any(ctx.needs_input_grad[:3]):
            slot_bytes = buf.numel() * buf.element_size()
            per_strip = sum(c1 <= kw for _, c1 in tiles)  # tiles of rows of kk
            n_slots = min(cache_bytes // slot_bytes, 2 * per_strip)
        for r0 in range(0, b, chunk):
            r1 = min(r0 + chunk, b)
            q_s = query[r0:r1]
            neg_s = None if neg3 is None else neg3[r0:r1]
            r_max = torch.full(
                (r1 - r0,), 0.0 if unshifted else lowest, dtype=acc, device=query.device
            )  # allocated on the device: no host-to-device copy per strip
            r_sum = torch.zeros_like(r_max)
            for c0, c1 in tiles:
                out = buf
                if len(cache) < n_slots and c1 <= kw:
                    out = cache[r0, c0] = _POOL.take(buf.numel(), buf)
                tile = _Tile(
                    tiling,
                    r0,
                    r1,
                    c0,
                    c1,
                    q_s,
                    kk,
                    neg_s,
                    metric,
                    kk_sq,
                    out,
                    scale=_strip_scale(scale, r0, r1),
                )
                lg, nk = tile.logits, tile.n_key
                keyed = symmetric and nk > 0
                if labelled is None:  # else the positives come from class sums after the loop
                    pos_sum, count = tile.row_positive()
                    row_pos[r0:r1] += pos_sum
                    row_cnt[r0:r1] += count
                    if keyed:
                        tile.col_positive_add(col_pos, col_cnt)
                if unshifted:  # one exp, in place, for both directions
                    lg.exp_()
                    r_sum += lg.sum(1)
                    if keyed:
                        col_sum[tile.col_slice] += lg[:, :nk].sum(0)
                    continue
                new_r = _finite_floor(torch.maximum(r_max, lg.amax(1)))
                r_sum.mul_((r_max - new_r).exp_()).add_((lg - new_r[:, None]).exp_().sum(1))
                r_max = new_r
                if keyed:
                    cs, lk = tile.col_slice, lg[:, :nk]
                    new_c = torch.maximum(col_max[cs], lk.amax(0))
                    col_sum[cs] = col_sum[cs] * (col_max[cs] - new_c).exp_()
                    col_sum[cs] += (lk - new_c[None, :]).exp_().sum(0)
                    col_max[cs] = new_c
            row_lse[r0:r1] = r_max + r_sum.log()
        if labelled is not None:  # positives from class sums, not from the tiles
            row_pos += labelled.pos_sum
            row_cnt += labelled.count
            if symmetric:
                col_pos += labelled.col_pos_sum
                col_cnt += labelled.col_count
        row_valid = row_cnt > 0
        row_loss = torch.where(row_valid, row_lse - row_pos / row_cnt.clamp(min=1.0), 0.0)
        # Rows / columns without a positive get lse = +inf: zero probability, never NaN.
        row_lse = torch.where(row_valid, row_lse, float("inf"))
        if symmetric and column_reduce is not None:  # the other shards' rows of every column
            col_max, col_sum, col_pos, col_cnt = combine_column_shards(
                column_reduce, col_max, col_sum, col_pos, col_cnt
            )
        if symmetric:
            col_valid = col_cnt > 0
            col_lse = col_max + col_sum.log()
            col_loss = torch.where(col_valid, col_lse - col_pos / col_cnt.clamp(min=1.0), 0.0)
            col_lse = torch.where(col_valid, col_lse, float("inf"))
        else:
            col_valid = torch.zeros(0, dtype=torch.bool, device=query.device)
            col_loss = col_lse = torch.zeros(0, dtype=acc, device=query.device)
            col_cnt = col_lse
        ctx.save_for_backward(
            query, key, negatives, row_lse, row_cnt, col_lse, col_cnt, row_scale, col_scale
        )
        ctx.tiling, ctx.metric, ctx.symmetric = tiling, metric, symmetric
        ctx.column_reduce = column_reduce if symmetric else None
        ctx.chunk, ctx.col_chunk, ctx.unshifted = chunk, col_chunk, unshifted
        ctx.cache, ctx.cache_bytes, ctx.labelled = cache, cache_bytes, labelled
        ctx.mark_non_differentiable(row_valid, col_valid)
        return row_loss, col_loss, row_valid, col_valid

    @staticmethod
    def backward(ctx, g_row, g_col, _gv1, _gv2):
        query, key, negatives, row_lse, row_cnt, col_lse, col_cnt, *scale = ctx.saved_tensors
        scale = None if scale[0] is None else (scale[0], scale[1])
        metric, chunk, labelled, tiling = ctx.metric, ctx.chunk, ctx.labelled, ctx.tiling
        b, n = query.shape[0], key.shape[0]
        kk, neg3 = _keys(key, negatives)
        kw, m3 = kk.shape[0], 0 if neg3 is None else neg3.shape[1]
        tiles = _column_tiles(n, kw, m3, ctx.col_chunk)
        kk_sq = _sq_norms(kk) if metric == "euclidean" else None
        row_w = torch.zeros_like(row_lse) if g_row is None else g_row * (row_cnt > 0)
        row_pw = row_w / row_cnt.clamp(min=1.0)
        col_w = col_pw = None
        if ctx.column_reduce is not None:
            # every shard's column losses depend on this shard's rows: sum their gradients
            # (each shard sends its own columns' gradient, zeros elsewhere), on every shard
            g_col = torch.zeros_like(col_lse) if g_col is None else g_col.to(col_lse.dtype)
            g_col = ctx.column_reduce(g_col.contiguous().clone(), "sum")
        if ctx.symmetric and g_col is not None:
            col_w = g_col * (col_cnt > 0)
            col_pw = col_w / col_cnt.clamp(min=1.0)
        acc = row_lse.dtype  # gradients accumulate in float32 (float64), returned in the input's
        dq = torch.zeros_like(query, dtype=acc)
        dkk = torch.zeros_like(kk, dtype=acc)
        dneg3 = None if neg3 is None else torch.zeros_like(neg3)
        buf = _buffer(chunk, min(ctx.col_chunk, kw), query)
        buf2 = _buffer(chunk, max(min(ctx.col_chunk, kw), m3), query)
        row_u = row_w * torch.exp(-row_lse)
        col_u = None
        if col_w is not None:
            lse = col_lse
            if ctx.column_reduce is not None:
                # a column whose rows are all ignored here takes its lse from the other shards'
                # logits, whatever their size: clamp it to this shard's unshifted logit floor so
                # that exp(-lse) stays finite (its tiles' e = 0 then; exact elsewhere, where
                # lse >= a kept logit >= -floor)
                lse = col_lse.clamp(min=-_UNSHIFTED_BOUND[col_lse.dtype == torch.float64])
            col_u = col_w * torch.exp(-lse)
        cache, ctx.cache = ctx.cache, {}  # a second backward (retained graph) recomputes
        for r0 in range(0, b, chunk):
            r1 = min(r0 + chunk, b)
            q_s = query[r0:r1]
            neg_s = None if neg3 is None else neg3[r0:r1]
            dneg_s = None if dneg3 is None else dneg3[r0:r1]
            for c0, c1 in tiles:
                slot = cache.get((r0, c0))
                out = buf if slot is None else slot
                tile = _Tile(
                    tiling,
                    r0,
                    r1,
                    c0,
                    c1,
                    q_s,
                    kk,
                    neg_s,
                    metric,
                    kk_sq,
                    out,
                    slot is not None,
                    scale=_strip_scale(scale, r0, r1),
                )
                lg, nk, cs = tile.logits, tile.n_key, tile.col_slice
                keyed = col_w is not None and nk > 0
                if ctx.unshifted:
                    # d loss / d logit_ij = e^{l_ij} (w_i e^{-lse_i} + w'_j e^{-lse'_j}) - positives
                    e = lg  # a kept tile is exponentiated already
                    if slot is None:
                        e = lg.exp() if metric == "euclidean" else lg.exp_()
                    grad = buf2[: e.numel()].view(e.shape)
                    if keyed:  # key tiles hold key columns only: (u_i + v_j), then times e
                        torch.add(row_u[r0:r1, None], col_u[None, cs], out=grad).mul_(e)
                    else:
                        torch.mul(e, row_u[r0:r1, None], out=grad)
                else:
                    grad = (lg - row_lse[r0:r1, None]).exp_().mul_(row_w[r0:r1, None])
                    if keyed:
                        grad[:, :nk] += (
                            (lg[:, :nk] - col_lse[None, cs]).exp_().mul_(col_w[None, cs])
                        )
                tile.subtract_positive(grad, row_pw[r0:r1], col_pw)
                tile.scale_weights(grad)
                tile.backprop(grad, q_s, kk, neg_s, metric, dq[r0:r1], dkk, dneg_s)
        _POOL.give(list(cache.values()), ctx.cache_bytes)
        if labelled is not None:
            _labelled_backprop(labelled, row_pw, col_pw, query, kk, dq, dkk, scale)
        d_rows, d_cols = _scale_grads(dq, dkk, query, kk, scale)
        dq, dkey, dneg = _input_dtype_grads(dq, dkk, dneg3, n, ctx.dtypes)
        return dq, dkey, dneg, None, None, d_rows, d_cols


def combine_column_shards(
    reduce: Callable[[Tensor, str], Tensor],
    col_max: Tensor,
    col_sum: Tensor,
    col_pos: Tensor,
    col_cnt: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Column statistics over the rows of all shards from each shard's partial ones.

    Each shard holds, per column (N,), a reference ``col_max`` and ``col_sum = sum_i
    exp(l_ij - col_max_j)`` over its rows (``col_max`` is the running max, or 0 without a max
    shift: not a max then), the sum of its positive logits ``col_pos`` and their count
    ``col_cnt``. Returns the same four over all shards, ``col_max`` the max over the shards of
    their partial log-sum-exps ``col_max + log col_sum`` (so that every rescaled term is <= 1
    and the largest is 1, whatever reference each shard used) and ``col_sum`` the sum of the
    rescaled terms. Two collectives, the same on every shard: ``reduce(x, "max")`` of (N,),
    then ``reduce(x, "sum")`` of a (3, N) stack. The inputs are not modified.

    >>> one = lambda x, op: x  # one shard: nothing to combine
    >>> m, s = torch.zeros(2), torch.tensor([1.0, 2.0])
    >>> top, total, _, _ = combine_column_shards(one, m, s, s, s)
    >>> torch.allclose(top + total.log(), s.log())
    True
    """
    lowest = torch.finfo(col_max.dtype).min
    partial = (col_max + col_sum.log()).clamp(min=lowest)  # (N,); empty columns: -inf floored
    top = reduce(partial.clone(), "max")  # (N,)
    stats = torch.stack([(partial - top).exp(), col_pos, col_cnt])  # (3, N)
    stats = reduce(stats, "sum")
    return top, stats[0], stats[1], stats[2]


class _LabelPositives:
    """Positives given by labels alone (SupCon; InfoNCE with labels when every index positive
    shares its query's label), from class sums instead of per-tile masks.

    With dot logits ``l_ij = q_i . k_j`` and positives ``P = {(i, j) : y'_j = y_i}`` minus the
    self pairs ``(i, s(i))``, anchor i's positive logit sum is ``q_i . (S_{y_i} - [y'_{s(i)} =
    y_i] k_{s(i)})`` with class sums ``S_c = sum_{j : y'_j = c} k_j``, and key j's (the key ->
    query direction) is ``k_j . (R_{y'_j} - [same] q_{s^-1(j)})`` with ``R_c = sum_{i : y_i = c}
    q_i``. The gradient's positive term ``-sum_{(i, j) in P} (a_i + b_j) q_i . k_j`` (row weights
    a, column weights b) goes back through the same sums: O((B + N) D) work instead of building,
    reading and subtracting a mask for every tile. The tiles then only exclude the self pairs.
    """

    def __init__(self, s: Structure, query: Tensor, kk: Tensor, columns: bool) -> None:
        n, b = s.n_keys, query.shape[0]
        acc = acc_dtype(query.dtype)  # class sums of half embeddings accumulate in float32
        query, kk = query.to(acc), kk[:n].to(acc)
        classes, inverse = torch.unique(
            torch.cat([s.query_labels, s.key_labels]), return_inverse=True
        )
        self.yq, self.yk = inverse[:b], inverse[b:]
        self.n_classes = c = classes.shape[0]
        keys = kk[:n]
        pos_keys = self._class_sum(keys, self.yk)[self.yq]  # (B, D): keys sharing the label
        count = torch.bincount(self.yk, minlength=c).to(query.dtype)[self.yq]
        # self pairs (i, s(i)) are no positives: 1 where s(i) shares query i's label
        self.self_cols: Tensor | None = None
        self.same: Tensor | None = None
        if s.self_offset is not None:
            self.self_cols = (torch.arange(b, device=query.device) + s.self_offset) % n
            self.same = (self.yk[self.self_cols] == self.yq).to(query.dtype)
            pos_keys = pos_keys - self.same[:, None] * keys[self.self_cols]
            count = count - self.same
        self.pos_keys, self.count = pos_keys, count
        self.pos_sum = (query * pos_keys).sum(1)
        if columns:  # key -> query direction (symmetric: N == B, s a bijection)
            pos_queries = self._class_sum(query, self.yq)[self.yk]  # (N, D)
            col_count = torch.bincount(self.yq, minlength=c).to(query.dtype)[self.yk]
            if self.self_cols is not None and self.same is not None:
                pos_queries.index_add_(0, self.self_cols, self.same[:, None] * query, alpha=-1.0)
                col_count = col_count.index_add(0, self.self_cols, self.same, alpha=-1.0)
            self.col_pos_sum = (keys * pos_queries).sum(1)
            self.col_count, self.pos_queries = col_count, pos_queries
        self.structure = Structure(n_keys=n, positive_offset=None, self_offset=s.self_offset)

    @classmethod
    def split(
        cls, s: Structure, metric: str, query: Tensor, kk: Tensor, columns: bool
    ) -> tuple[_LabelPositives | None, Structure]:
        """The label positives when they :meth:`apply <applies>`, and the structure the tiles
        then follow (``s`` itself when they do not)."""
        if not cls.applies(s, metric):
            return None, s
        labelled = cls(s, query, kk, columns)
        return labelled, labelled.structure

    def _class_sum(self, x: Tensor, labels: Tensor) -> Tensor:
        return x.new_zeros(self.n_classes, x.shape[1]).index_add_(0, labels, x)

    @staticmethod
    def applies(s: Structure, metric: str) -> bool:
        """Labels alone decide the positives: no ids or dense masks, and the index positive
        (InfoNCE's ``(i + offset) mod N``), if any, already shares its query's label."""
        if metric != "dot" or s.query_labels is None or s.key_labels is None:
            return False
        if s.query_ids is not None or s.positive_mask is not None or s.ignore_mask is not None:
            return False
        if s.positive_offset is None:
            return True
        if s.self_offset is not None and s.positive_offset % s.n_keys == s.self_offset % s.n_keys:
            return False
        b = s.query_labels.shape[0]
        cols = (torch.arange(b, device=s.query_labels.device) + s.positive_offset) % s.n_keys
        return bool((s.key_labels[cols] == s.query_labels).all())

    def backprop(
        self,
        row_w: Tensor,
        col_w: Tensor | None,
        query: Tensor,
        kk: Tensor,
        dq: Tensor,
        dkk: Tensor,
    ) -> None:
        """Subtract the positive term with weights per positive: ``row_w[i]`` (B,) for anchor i's
        (``w_i / |P(i)|``), plus ``col_w[j]`` (N,) for key j's in the symmetric loss."""
        n = self.yk.shape[0]
        query, kk = query.to(dq.dtype), kk[:n].to(dq.dtype)
        dq -= row_w[:, None] * self.pos_keys
        wq = row_w[:, None] * query  # (B, D)
        dk = self._class_sum(wq, self.yq)[self.yk]  # (N, D)
        if self.self_cols is not None and self.same is not None:
            dk.index_add_(0, self.self_cols, self.same[:, None] * wq, alpha=-1.0)
        if col_w is not None:
            dk += col_w[:, None] * self.pos_queries
            wk = col_w[:, None] * kk[:n]  # (N, D)
            dq_col = self._class_sum(wk, self.yk)[self.yq]  # (B, D)
            if self.self_cols is not None and self.same is not None:
                dq_col -= self.same[:, None] * wk[self.self_cols]
            dq -= dq_col
        dkk[:n] -= dk


class FusedRowSoftmaxLoss(torch.autograd.Function):
    """One-directional loss summed over valid anchors, gradients accumulated in the forward pass.

    ``apply(query, key, negatives, structure, blocks, row_scale=None, col_scale=None)`` (logit
    space, shapes as in :class:`TiledSoftmaxLoss`; strips of ``blocks.chunk`` rows) returns ``(loss_sum (), row_valid (B,))``; each strip of
    ``chunk`` query rows spans all candidates, so its row statistics are exact at once. Only use
    it when a gradient is wanted: the forward pass always computes it.
    """

    @staticmethod
    def forward(
        ctx,
        query,
        key,
        negatives,
        structure,
        blocks,
        row_scale=None,
        col_scale=None,
    ):
        metric, chunk = blocks.metric, blocks.chunk
        ctx.dtypes = _dtypes(query, key, negatives)
        query, key, negatives = _as_operands(query, key, negatives, blocks.operand)
        scale = None if row_scale is None else (row_scale, col_scale)
        b, n = query.shape[0], key.shape[0]
        kk, neg3 = _keys(key, negatives)
        width = kk.shape[0] + (0 if neg3 is None else neg3.shape[1])
        kk_sq = _sq_norms(kk) if metric == "euclidean" else None
        acc = acc_dtype(query.dtype)
        dq = torch.zeros_like(query, dtype=acc)
        dkk = torch.zeros_like(kk, dtype=acc)
        dneg3 = None if neg3 is None else torch.zeros_like(neg3)
        valid = torch.empty(b, dtype=torch.bool, device=query.device)
        total = torch.zeros((), dtype=acc, device=query.device)
        buf = _buffer(chunk, kk.shape[0], query)
        unshifted = _unshifted(query, kk, neg3, metric, scale)
        labelled, strips = _LabelPositives.split(
            structure, metric, *_logit_space_pair(query, kk, scale), columns=False
        )
        for r0 in range(0, b, chunk):
            r1 = min(r0 + chunk, b)
            q_s = query[r0:r1]
            neg_s = None if neg3 is None else neg3[r0:r1]
            strip = _Tile(
                strips,
                r0,
                r1,
                0,
                width,
                q_s,
                kk,
                neg_s,
                metric,
                kk_sq,
                buf,
                scale=_strip_scale(scale, r0, r1),
            )
            lg = strip.logits
            if labelled is None:
                pos_sum, count = strip.row_positive()
            else:
                pos_sum, count = labelled.pos_sum[r0:r1], labelled.count[r0:r1]
            ok = count > 0
            if unshifted:
                m = torch.zeros(r1 - r0, dtype=lg.dtype, device=lg.device)
                probs = lg.clone() if metric == "euclidean" else lg
            else:
                m = _finite_floor(lg.amax(1))
                # euclidean keeps the logits: its backprop needs the distances.
                probs = lg.sub_(m[:, None]) if metric == "dot" else lg - m[:, None]
            probs.exp_()
            denom = probs.sum(1)
            lse = m + denom.log()
            total += torch.where(ok, lse - pos_sum / count.clamp(min=1.0), 0.0).sum()
            w = ok.to(lg.dtype)
            probs.mul_((w / denom)[:, None])
            strip.subtract_positive(probs, w / count.clamp(min=1.0), None)
            strip.scale_weights(probs)
            dneg_s = None if dneg3 is None else dneg3[r0:r1]
            strip.backprop(probs, q_s, kk, neg_s, metric, dq[r0:r1], dkk, dneg_s)
            valid[r0:r1] = ok
        if labelled is not None:
            row_w = valid / labelled.count.clamp(min=1.0)
            _labelled_backprop(labelled, row_w, None, query, kk, dq, dkk, scale)
        d_rows, d_cols = _scale_grads(dq, dkk, query, kk, scale)
        # kept in float32: the upstream gradient scales them before they are rounded
        dkey = dkk[:n]
        dneg = dneg3 if neg3 is not None else (dkk[n:] if negatives is not None else None)
        ctx.save_for_backward(dq, dkey, dneg, d_rows, d_cols)
        ctx.mark_non_differentiable(valid)
        return total, valid

    @staticmethod
    def backward(ctx, g_total, _g_valid):
        dq, dkey, dneg, d_rows, d_cols = ctx.saved_tensors
        q_dtype, k_dtype, n_dtype = ctx.dtypes
        return (
            (dq * g_total).to(q_dtype),
            (dkey * g_total).to(k_dtype),
            None if dneg is None else (dneg * g_total).to(n_dtype),
            None,
            None,
            None if d_rows is None else d_rows * g_total,
            None if d_cols is None else d_cols * g_total,
        )


class TiledSigmoidLoss(torch.autograd.Function):
    """Per-row SigLIP loss ``sum_j softplus(l_ij) - l_ii`` with ``l = s(a_i, b_j) + bias``.

    ``apply(a, b, bias, blocks)`` with logit-space ``a: (B, D)``, ``b: (B, D)``, scalar
    ``bias`` tensor; returns (B,). Uses ``-log sigmoid(x) = softplus(-x) = softplus(x) - x``.
    """

    @staticmethod
    def forward(ctx, a, b, bias, blocks):
        metric, chunk = blocks.metric, blocks.chunk
        ctx.dtypes = a.dtype, b.dtype
        a, b, _ = _as_operands(a, b, None, blocks.operand)
        s = Structure(n_keys=b.shape[0], positive_offset=0)
        b_sq = _sq_norms(b) if metric == "euclidean" else None
        out = torch.empty(a.shape[0], dtype=acc_dtype(a.dtype), device=a.device)
        buf = _buffer(chunk, b.shape[0], a)
        for r0 in range(0, a.shape[0], chunk):
            r1 = min(r0 + chunk, a.shape[0])
            strip = _Tile(s, r0, r1, 0, b.shape[0], a[r0:r1], b, None, metric, b_sq, buf)
            lg = strip.logits.add_(bias)
            pos_sum, _ = strip.row_positive()
            out[r0:r1] = F.softplus(lg).sum(1) - pos_sum
        ctx.save_for_backward(a, b, bias)
        ctx.metric, ctx.chunk = metric, chunk
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, bias = ctx.saved_tensors
        s = Structure(n_keys=b.shape[0], positive_offset=0)
        b_sq = _sq_norms(b) if ctx.metric == "euclidean" else None
        acc = acc_dtype(a.dtype)
        da = torch.zeros_like(a, dtype=acc)
        db = torch.zeros_like(b, dtype=acc)
        dbias = torch.zeros((), dtype=acc, device=a.device)
        buf = _buffer(ctx.chunk, b.shape[0], a)
        for r0 in range(0, a.shape[0], ctx.chunk):
            r1 = min(r0 + ctx.chunk, a.shape[0])
            strip = _Tile(s, r0, r1, 0, b.shape[0], a[r0:r1], b, None, ctx.metric, b_sq, buf)
            grad = torch.sigmoid(strip.logits + bias).mul_(g[r0:r1, None])
            strip.subtract_positive(grad, g[r0:r1], None)
            dbias += grad.sum()
            strip.backprop(grad, a[r0:r1], b, None, ctx.metric, da[r0:r1], db, None)
        a_dtype, b_dtype = ctx.dtypes
        dbias = dbias.reshape(bias.shape).to(bias.dtype)
        return da.to(a_dtype), db.to(b_dtype), dbias, None
