"""Softmax-contrastive losses over a ring of processes: no rank holds every key.

With a process group of W ranks the gathered path (``collective="gather"``) all-gathers the
keys, so every rank holds the ``(W*B, D)`` keys, their ``(W*B, D)`` gradient and the
all-reduce of that gradient. The ring (``collective="ring"``; Inf-CL, Wang et al. 2024,
"Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss",
https://arxiv.org/abs/2410.17243) passes the key blocks around the ranks instead: in W steps
each rank computes its ``(B, D)`` queries against the one ``(B, D)`` block it holds while the
block travels on to the next rank (send/recv with the next and previous rank, the transfer of
the next block overlapping the compute on this one), and every statistic is combined with an
online log-sum-exp, so the loss and the gradients are exact:

* forward: each rank keeps its rows' running max, sum of exponentials, positive-logit sum and
  count (4 x (B,)); for the symmetric loss every key block carries its own columns' running
  statistics (4 x (B,)) around the ring, updated by each rank's rows, and after W hops they are
  back at the block's owner: the key -> query log-sum-exp over the queries of all ranks;
* backward: the key blocks travel again with their columns' log-sum-exp and upstream gradient,
  and each block's ``(B, D)`` gradient accumulator travels with it, collecting every rank's
  ``dL/dk`` (each tile's logits are recomputed); after W hops it is home: the key's gradient
  summed over the ranks, which the gathered path gets from its all-reduce.

The column statistics and the gradient accumulator of the block a rank holds are computed
into a fresh buffer and merged with the ones arriving from the previous rank after the
compute, so their transfer overlaps the compute as well. Tiles are ``RING_TILE_ROWS`` queries
by ``COLUMN_BLOCK_RATIO * RING_TILE_ROWS`` columns (:func:`~contrastkit.functional.tiling`
sets the rows); on a block whose logits are provably within ``+-UNSHIFTED_BOUND`` (from the
norms: cosine at a temperature >= 0.025 always is) one ``exp`` per logit serves both
directions, without a max pass, as in the engine's tiles.

A rank holds its queries and keys, two key blocks (the one it computes on and the one
arriving), three gradient accumulators (its share, the one arriving, the one leaving), the
per-row and per-column statistics and one tile of logits: memory that does not grow with W. Shared extra negatives ``(M, D)`` travel with their rank's keys; per-query
negatives ``(B, M, D)`` stay local; labels and ids travel with the keys they describe; the
masks are this rank's rows against the global columns, as for the gathered path.

The losses choose with one argument, ``collective`` (:data:`COLLECTIVES`):
``"gather"``, ``"ring"`` or ``"auto"`` (the default): the ring when the gathered keys would
hold at least :data:`RING_MIN_GATHERED_BYTES`, see :func:`use_ring`. Without a process group
(or W = 1) there is nothing to gather and every choice is the engine's local loss.

Shape notation: B local batch (rows per rank), W world size, D embedding dim, M negatives.

>>> from contrastkit.collectives import Ranks
>>> g = torch.Generator().manual_seed(0)
>>> q, k = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
>>> loss, valid = ring_softmax_contrastive(q, k, ranks=Ranks.of(None), temperature=0.1,
...                                        symmetric=True)  # a ring of one
>>> from contrastkit.functional import info_nce
>>> bool(torch.isclose(loss.mean(), info_nce(q, k, temperature=0.1, symmetric=True)))
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from contrastkit._checks import check_mask, check_temperature
from contrastkit.collectives import Ranks
from contrastkit.functional.engine import (
    _CHUNK_SIZE,
    COLUMN_BLOCK_RATIO,
    NO_ROLES,
    ContrastiveProblem,
    KeyRoles,
    _logit_space,
    _warn_no_positive,
    compute_dtype,
)
from contrastkit.functional.similarity import check_metric

__all__ = [
    "COLLECTIVES",
    "RING_MIN_GATHERED_BYTES",
    "check_collective",
    "ring_reduce",
    "ring_softmax_contrastive",
    "use_ring",
]

COLLECTIVES = ("auto", "gather", "ring")
"""How a loss with a ``group`` reaches the other ranks' keys: all-gather them, pass them
around a ring, or choose by size (:func:`use_ring`)."""
RING_MIN_GATHERED_BYTES = 2**30
"""``collective="auto"`` takes the ring when the gathered keys (and shared negatives), ``W * (B
+ M) * D`` elements of the compute dtype, would hold at least this many bytes (1 GiB: e.g. W =
64, B = 16,384, D = 256 in float32; the gathered path then holds about four times that with the
keys' gradient and copies), the gathered path below. The ring trades step time for memory
(1.35-1.55x the gathered step on this CPU, docs/scaling.md), so it is the default only where the
gathered keys themselves are a real cost."""
UNSHIFTED_BOUND = 40.0
"""Blocks whose logits are provably within +-40 (from the norms) take one ``exp`` per logit
for both directions, without a max pass (like the engine's tiles)."""
RING_TILE_ROWS = 256
"""The ring's tiles: ``RING_TILE_ROWS`` queries by ``COLUMN_BLOCK_RATIO * RING_TILE_ROWS``
columns of the held block (1 MiB of float32 logits), unless :func:`contrastkit.functional.
tiling` sets the rows."""

_TAG_STATS = 64  # message tags: the key block uses 0.., its column statistics / gradient these
_TAG_GRAD = 96


def check_collective(collective: object) -> str:
    """``collective`` if it is one of :data:`COLLECTIVES`, else one clear ValueError.

    >>> check_collective("ring")
    'ring'
    >>> check_collective("allgather")
    Traceback (most recent call last):
    ...
    ValueError: collective must be one of 'auto', 'gather', 'ring', got 'allgather'.
    """
    if not isinstance(collective, str) or collective not in COLLECTIVES:
        choices = ", ".join(repr(c) for c in COLLECTIVES)
        raise ValueError(f"collective must be one of {choices}, got {collective!r}.")
    return collective


def use_ring(
    collective: str, ranks: Ranks, rows: int, dim: int, dtype: torch.dtype, shared: int = 0
) -> bool:
    """Whether a loss over ``ranks`` with ``rows`` keys and ``shared`` shared negatives per rank
    of width ``dim`` runs on the ring: ``"ring"`` and ``"gather"`` say so (one process: never);
    ``"auto"`` when the gathered ``(W * (rows + shared), dim)`` keys in the compute dtype of
    ``dtype`` would hold at least :data:`RING_MIN_GATHERED_BYTES`. Every rank decides the
    same (its arguments are checked equal across ranks first).

    >>> two, many = Ranks(group=None, world=2, rank=0), Ranks(group=None, world=64, rank=0)
    >>> use_ring("auto", two, 4096, 256, torch.float32), use_ring("auto", many, 16384, 256, torch.bfloat16)
    (False, True)
    """
    collective = check_collective(collective)
    if ranks.world == 1 or collective == "gather":
        return False
    if collective == "ring":
        return True
    size = torch.empty((), dtype=compute_dtype(dtype)).element_size()
    return ranks.world * (rows + shared) * dim * size >= RING_MIN_GATHERED_BYTES


@dataclass(frozen=True)
class _Ring:
    """What the ring Function needs besides the tensors (local rows, global columns).

    ``own``: the role of key ``i`` of this rank's own block for query ``i``: ``"positive"``
    (InfoNCE), ``"self"`` (NT-Xent, SupCon: neither positive nor candidate) or None. Columns are
    numbered as in the gathered problem: the W*B keys rank-major, then the W*M shared negatives
    rank-major (or the M per-query negatives).
    """

    ranks: Ranks
    metric: str  # "dot" or "euclidean": logit space (see functional.tiled)
    n_keys: int  # B keys at the head of each block; M shared negatives after them
    n_shared: int
    own: str | None
    symmetric: bool
    roles: KeyRoles  # local labels / ids (B,), masks (B, global columns)
    chunk: int
    col_chunk: int

    def travelling(self) -> list[Tensor]:
        """This rank's labels / ids that travel with its keys."""
        r = self.roles
        return [t for t in (r.key_labels, r.key_ids) if t is not None]

    def tiles(self, rows: int, width: int) -> list[tuple[int, int, int, int]]:
        step_r, step_c = self.chunk, self.col_chunk
        return [
            (r0, min(r0 + step_r, rows), c0, min(c0 + step_c, width))
            for r0 in range(0, rows, step_r)
            for c0 in range(0, width, step_c)
        ]

    def masks(
        self, block: int, r0: int, r1: int, c0: int, c1: int, held: list[Tensor], device: Any
    ) -> tuple[Tensor | None, Tensor | None, int]:
        """``(positive (R, Ck) or None, dropped (R, C) or None, Ck)`` of local rows ``r0:r1``
        against columns ``c0:c1`` of rank ``block``'s block (its first Ck are keys)."""
        r, b, w = self.roles, self.n_keys, self.ranks.world
        rows, ck = r1 - r0, max(0, min(c1, b) - c0)
        labels = held[0] if r.key_labels is not None else None
        ids = held[-1] if r.key_ids is not None else None
        pos: Tensor | None = None
        drop: Tensor | None = None
        g0 = block * b + c0  # global column of the tile's first key
        if ck:
            keys = slice(c0, c0 + ck)
            if r.query_labels is not None:
                pos = r.query_labels[r0:r1, None] == labels[None, keys]
            if r.positive_mask is not None:
                extra = r.positive_mask[r0:r1, g0 : g0 + ck]
                pos = extra.clone() if pos is None else pos | extra
            if r.query_ids is not None:
                drop = torch.zeros(rows, c1 - c0, dtype=torch.bool, device=device)
                drop[:, :ck] = r.query_ids[r0:r1, None] == ids[None, keys]
            diag = self._own_diagonal(block, r0, r1, c0, ck, device)
            if diag is not None and self.own == "positive":
                if pos is None:
                    pos = torch.zeros(rows, ck, dtype=torch.bool, device=device)
                pos[diag] = True
            elif diag is not None:  # "self": out of the softmax, never a positive
                if drop is None:
                    drop = torch.zeros(rows, c1 - c0, dtype=torch.bool, device=device)
                drop[diag] = True
                if pos is not None:
                    pos[diag] = False
        if r.ignore_mask is not None:
            parts = [r.ignore_mask[r0:r1, g0 : g0 + ck]] if ck else []
            if c1 - c0 > ck:  # negatives: shared ones of rank `block`, after the W*B keys
                s0 = w * b + block * self.n_shared + max(c0, b) - b
                parts.append(r.ignore_mask[r0:r1, s0 : s0 + (c1 - c0 - ck)])
            ignore = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
            drop = ignore.clone() if drop is None else drop | ignore
        if drop is not None and pos is not None:
            drop[:, :ck] &= ~pos  # a positive is never dropped
        return pos, drop, ck

    def _own_diagonal(
        self, block: int, r0: int, r1: int, c0: int, ck: int, device: Any
    ) -> tuple[Tensor, Tensor] | None:
        """(row, column) tile indices of the pairs (query i, own key i) in this tile."""
        if self.own is None or block != self.ranks.rank:
            return None
        lo, hi = max(r0, c0), min(r1, c0 + ck)
        if lo >= hi:
            return None
        i = torch.arange(lo, hi, device=device)
        return i - r0, i - c0


def _logits(q: Tensor, kk: Tensor, metric: str) -> Tensor:
    """(R, D) x (C, D) -> (R, C): ``q . k`` or ``-|q - k|``."""
    out = q @ kk.T
    if metric == "euclidean":
        sq_q, sq_k = (q * q).sum(1), (kk * kk).sum(1)
        out.mul_(-2.0).add_(sq_q[:, None]).add_(sq_k[None, :]).clamp_(min=0.0).sqrt_().neg_()
    return out


def _per_query_logits(q: Tensor, neg: Tensor, metric: str) -> Tensor:
    """(R, D) x (R, M, D) -> (R, M): each query against its own negatives."""
    out = torch.bmm(neg, q[:, :, None]).squeeze(2)
    if metric == "euclidean":
        sq = (q * q).sum(1)[:, None] + (neg * neg).sum(2) - 2.0 * out
        out = sq.clamp_(min=0.0).sqrt_().neg_()
    return out


def _online(top: Tensor, total: Tensor, logits: Tensor, dim: int) -> None:
    """Running log-sum-exp over ``dim`` (``top``: max so far, ``total``: sum of exp(l - top))."""
    new = torch.maximum(top, logits.amax(dim))
    scaled = logits - (new[:, None] if dim == 1 else new[None, :])
    total.mul_((top - new).exp_()).add_(scaled.exp_().sum(dim))
    top.copy_(new)


def _add_unshifted(top: Tensor, total: Tensor, sums: Tensor) -> None:
    """Add ``sums`` = sum of exp(l) (no shift: every |l| <= UNSHIFTED_BOUND) to the running
    ``(top, total)`` of :func:`_online`, shifting by ``max(top, 0)``."""
    new = top.clamp(min=0.0)
    total.mul_((top - new).exp_()).add_(sums * (-new).exp_())
    top.copy_(new)


def _merge(a: Tensor, b: Tensor) -> Tensor:
    """Two (4, n) partial column statistics (max, sum of exp(l - max), positive sum, count)
    of the same columns over different rows -> those over all the rows."""
    top = torch.maximum(a[0], b[0])
    total = a[1] * (a[0] - top).exp() + b[1] * (b[0] - top).exp()
    return torch.stack([top, total, a[2] + b[2], a[3] + b[3]])


def _lse(top: Tensor, total: Tensor) -> Tensor:
    return top + torch.where(total > 0, total, 1.0).log()


def _bounded(q_norm: float, kk: Tensor, metric: str) -> bool:
    """Every logit of these queries against the block ``kk`` is within +-UNSHIFTED_BOUND
    (Cauchy-Schwarz: ``|q . k| <= |q| |k|``, ``|q - k| <= |q| + |k|``)."""
    k_norm = float(torch.linalg.vector_norm(kk, dim=1).max()) if kk.shape[0] else 0.0
    bound = q_norm * k_norm if metric == "dot" else q_norm + k_norm
    return bound <= UNSHIFTED_BOUND


class _RingSoftmaxLoss(torch.autograd.Function):
    """Per-anchor row and own-column losses over the ring (module docstring). Inputs in logit
    space: ``q: (B, D)``, ``kk: (B + M, D)`` this rank's keys then shared negatives, ``neg:
    (B, M, D)`` per-query negatives or None. Outputs: row (B,), col (B,) (this rank's keys;
    zeros unless symmetric), row_valid (B,), col_valid (B,).

    Each step sends the block on while computing on it; the column statistics (forward) and
    the gradient accumulator (backward) of the block a rank holds are computed into a fresh
    buffer and merged with the ones arriving from the previous rank after the compute, so
    their transfer overlaps the compute too."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, kk: Tensor, neg: Tensor | None, ring: _Ring) -> Any:
        b, dtype, ranks = q.shape[0], q.dtype, ring.ranks
        floor = torch.finfo(dtype).min
        rows = torch.zeros(4, b, dtype=dtype, device=q.device)  # max, sum exp, pos sum, count
        rows[0] = floor
        q, kk = q.detach(), kk.detach()
        q_norm = float(torch.linalg.vector_norm(q, dim=1).max())
        if neg is not None:
            _per_query_forward(ring, q, neg.detach(), rows)
        held = [kk, *ring.travelling()]
        stats: Callable[[], list[Tensor]] | None = None  # column statistics in flight
        for step in range(ranks.world):
            block = (ranks.rank - step) % ranks.world
            wait = ranks.ring_pass(held) if step < ranks.world - 1 else None
            bounded = _bounded(q_norm, held[0], ring.metric)
            cols = torch.zeros(4, ring.n_keys, dtype=dtype, device=q.device)  # this rank's rows
            cols[0] = floor
            for r0, r1, c0, c1 in ring.tiles(b, kk.shape[0]):
                logits = _logits(q[r0:r1], held[0][c0:c1], ring.metric)
                pos, drop, ck = ring.masks(block, r0, r1, c0, c1, held[1:], q.device)
                keys = slice(c0, c0 + ck)
                if drop is not None:
                    logits.masked_fill_(drop, float("-inf"))
                if pos is not None:
                    pos_logits = torch.where(pos, logits[:, :ck], 0.0)
                    rows[2, r0:r1] += pos_logits.sum(1)
                    rows[3, r0:r1] += pos.sum(1)
                    if ring.symmetric:
                        cols[2, keys] += pos_logits.sum(0)
                        cols[3, keys] += pos.sum(0)
                if bounded:  # one exp for both directions, no max pass
                    e = logits.exp_()
                    _add_unshifted(rows[0, r0:r1], rows[1, r0:r1], e.sum(1))
                    if ring.symmetric and ck:
                        _add_unshifted(cols[0, keys], cols[1, keys], e[:, :ck].sum(0))
                    continue
                _online(rows[0, r0:r1], rows[1, r0:r1], logits, 1)
                if ring.symmetric and ck:
                    _online(cols[0, keys], cols[1, keys], logits[:, :ck], 0)
            if ring.symmetric:  # with the previous ranks' share, on to the next (W hops: home)
                if stats is not None:
                    cols = _merge(stats()[0], cols)
                stats = ranks.ring_pass([cols], _TAG_STATS)
            if wait is not None:
                held = wait()
        row_lse, row_valid = _lse(rows[0], rows[1]), rows[3] > 0
        row = torch.where(row_valid, row_lse - rows[2] / rows[3].clamp(min=1.0), 0.0)
        if stats is not None:
            cols = stats()[0]
            col_lse, col_n = _lse(cols[0], cols[1]), cols[3]
            col_valid = col_n > 0
            col = torch.where(col_valid, col_lse - cols[2] / col_n.clamp(min=1.0), 0.0)
        else:
            col_lse = col_n = col = torch.zeros_like(row)
            col_valid = torch.ones_like(row_valid)
        ctx.save_for_backward(q, kk, neg, row_lse, rows[3], col_lse, col_n)
        ctx.ring, ctx.q_norm = ring, q_norm
        ctx.mark_non_differentiable(row_valid, col_valid)
        return row, col, row_valid, col_valid

    @staticmethod
    def backward(ctx: Any, g_row: Tensor | None, g_col: Tensor | None, *_: Any) -> Any:
        q, kk, neg, row_lse, row_n, col_lse, col_n = ctx.saved_tensors
        ring: _Ring = ctx.ring
        ranks, b = ring.ranks, q.shape[0]
        g_row = torch.zeros_like(row_lse) if g_row is None else g_row.to(q.dtype)
        g_row = torch.where(row_n > 0, g_row, 0.0)
        row_pos = g_row / row_n.clamp(min=1.0)  # the weight of each positive logit
        # exp(l - lse) g = exp(l) * (g exp(-lse)) on bounded blocks; lse >= -bound there
        row_unshifted = g_row * (-row_lse.clamp(min=-UNSHIFTED_BOUND)).exp()
        dq = torch.zeros_like(q)
        dneg = None if neg is None else _per_query_backward(ring, q, neg, row_lse, g_row, dq)
        held = [kk, *ring.travelling()]
        if ring.symmetric:
            g_col = torch.zeros_like(col_lse) if g_col is None else g_col.to(q.dtype)
            g_col = torch.where(col_n > 0, g_col, 0.0)
            col_unshifted = g_col * (-col_lse.clamp(min=-UNSHIFTED_BOUND)).exp()
            info = [col_lse, g_col, g_col / col_n.clamp(min=1.0), col_unshifted]
            held.append(torch.stack(info))  # (4, B), travels with the keys
        sending: Callable[[], list[Tensor]] | None = None  # a gradient accumulator in flight
        for step in range(ranks.world):
            block = (ranks.rank - step) % ranks.world
            wait = ranks.ring_pass(held) if step < ranks.world - 1 else None
            bounded = _bounded(ctx.q_norm, held[0], ring.metric)
            col_info = held[-1] if ring.symmetric else None
            n_ints = len(held) - 1 - int(ring.symmetric)
            grad = torch.zeros_like(kk)  # this rank's share of the held block's dL/dk
            for r0, r1, c0, c1 in ring.tiles(b, kk.shape[0]):
                q_t, k_t = q[r0:r1], held[0][c0:c1]
                logits = _logits(q_t, k_t, ring.metric)
                pos, drop, ck = ring.masks(block, r0, r1, c0, c1, held[1 : 1 + n_ints], q.device)
                if drop is not None:
                    logits.masked_fill_(drop, float("-inf"))
                sym = col_info is not None and ck > 0
                if bounded:
                    e = logits.exp_() if ring.metric == "dot" else logits.exp()
                    weight = row_unshifted[r0:r1, None]
                    if sym:
                        e[:, :ck].mul_(weight + col_info[3, None, c0 : c0 + ck])
                        e[:, ck:].mul_(weight)
                        g = e
                    else:
                        g = e.mul_(weight)
                else:
                    g = (logits - row_lse[r0:r1, None]).exp_().mul_(g_row[r0:r1, None])
                    if sym:
                        lse, w = col_info[0, c0 : c0 + ck], col_info[1, c0 : c0 + ck]
                        g[:, :ck] += (logits[:, :ck] - lse[None, :]).exp_().mul_(w[None, :])
                if pos is not None:
                    w_pos = row_pos[r0:r1, None]
                    if sym:
                        w_pos = w_pos + col_info[2, None, c0 : c0 + ck]
                    g[:, :ck].sub_(pos * w_pos)
                _backprop(g, logits, q_t, k_t, ring.metric, dq[r0:r1], grad[c0:c1])
            if sending is not None:  # the previous ranks' share of this block, arrived meanwhile
                grad += sending()[0]
            sending = ranks.ring_pass([grad], _TAG_GRAD)  # W hops: home with every share
            if wait is not None:
                held = wait()
        assert sending is not None  # world >= 1
        return dq, sending()[0], dneg, None


def _backprop(
    g: Tensor, logits: Tensor, q: Tensor, kk: Tensor, metric: str, dq: Tensor, dkk: Tensor
) -> None:
    """Logit gradient ``g: (R, C)`` of a tile -> add to ``dq: (R, D)`` and ``dkk: (C, D)``."""
    if metric == "euclidean":  # logit -d: dd/dq = (q - k) / d, 0 where d = 0 (and dropped)
        dist = logits.neg()
        g = torch.where(dist > 0, g / dist, 0.0)
        dq.addcmul_(g.sum(1)[:, None], q, value=-1.0)
        dkk.addcmul_(g.sum(0)[:, None], kk, value=-1.0)
    dq.addmm_(g, kk)
    dkk.addmm_(g.T, q)


def _per_query_forward(ring: _Ring, q: Tensor, neg: Tensor, rows: Tensor) -> None:
    """The per-query negatives' logits into the rows' running statistics (no positive there)."""
    for r0, r1, _, _ in ring.tiles(q.shape[0], 1):
        logits = _per_query_logits(q[r0:r1], neg[r0:r1], ring.metric)
        drop = _per_query_dropped(ring, r0, r1, neg.shape[1])
        if drop is not None:
            logits.masked_fill_(drop, float("-inf"))
        _online(rows[0, r0:r1], rows[1, r0:r1], logits, 1)


def _per_query_backward(
    ring: _Ring, q: Tensor, neg: Tensor, row_lse: Tensor, g_row: Tensor, dq: Tensor
) -> Tensor:
    dneg = torch.zeros_like(neg)
    for r0, r1, _, _ in ring.tiles(q.shape[0], 1):
        q_t, n_t = q[r0:r1], neg[r0:r1]
        logits = _per_query_logits(q_t, n_t, ring.metric)
        drop = _per_query_dropped(ring, r0, r1, neg.shape[1])
        if drop is not None:
            logits.masked_fill_(drop, float("-inf"))
        g = (logits - row_lse[r0:r1, None]).exp_().mul_(g_row[r0:r1, None])  # (R, M)
        if ring.metric == "euclidean":
            dist = logits.neg()
            g = torch.where(dist > 0, g / dist, 0.0)
            dq[r0:r1] -= g.sum(1)[:, None] * q_t
            dneg[r0:r1] = g[:, :, None] * (q_t[:, None, :] - n_t)
        else:
            dneg[r0:r1] = g[:, :, None] * q_t[:, None, :]
        dq[r0:r1] += torch.bmm(g[:, None, :], n_t).squeeze(1)
    return dneg


def _per_query_dropped(ring: _Ring, r0: int, r1: int, m: int) -> Tensor | None:
    mask = ring.roles.ignore_mask
    if mask is None:
        return None
    start = ring.ranks.world * ring.n_keys
    return mask[r0:r1, start : start + m]


def ring_softmax_contrastive(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    ranks: Ranks,
    temperature: float | Tensor,
    metric: str = "cosine",
    own: str | None = "positive",
    roles: KeyRoles = NO_ROLES,
    symmetric: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-anchor softmax-contrastive loss of this rank's queries against the keys of all
    ``ranks``, the keys passed around the ring (module docstring); the same value and gradients
    as the gathered problem of :func:`contrastkit.functional.info_nce` with a ``group``.

    For anchor ``i`` with positives ``P(i)`` among the kept candidates ``C(i)`` of all ranks::

        loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / t) / sum_{c in C(i)} exp(s_ic / t) )

    and with ``symmetric`` the mean of that and its key -> query twin for this rank's key ``i``
    over the queries of all ranks (CLIP).

    Args:
        query: (B, D) this rank's queries.
        key: (B, D) this rank's keys (the same B on every rank).
        negatives: (M, D) this rank's shared negatives (they travel with its keys; every
            query sees the W*M of all ranks) or (B, M, D) per-query negatives (local), or None.
        ranks: the processes (:class:`contrastkit.collectives.Ranks`); every rank must run
            the forward and the backward pass (both pass messages).
        temperature: > 0, float or scalar tensor (gradients flow to a tensor temperature).
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        own: what this rank's key ``i`` is to its query ``i``: ``"positive"`` (InfoNCE),
            ``"self"`` (neither positive nor candidate: NT-Xent, SupCon) or None.
        roles: local ``query_labels`` / ``key_labels`` / ``query_ids`` / ``key_ids`` (B,)
            (the keys' travel with them) and masks as this rank's rows against the global
            columns: ``positive_mask`` (B, W*B), ``ignore_mask`` (B, W*B + W*M) with shared
            negatives or (B, W*B + M) with per-query ones.
        symmetric: add the key -> query direction (no extra negatives in it).

    Returns:
        ``(loss, valid)``, both (B,), in the compute dtype (float64 for float64 inputs, else
        float32); ``loss`` is 0 where ``valid`` is False (an anchor without a positive).

    >>> one = Ranks.of(None)
    >>> q = torch.ones(4, 8)
    >>> loss, _ = ring_softmax_contrastive(q, q, ranks=one, temperature=0.5)
    >>> round(float(loss.mean()), 4)  # log 4: nothing to tell apart
    1.3863
    """
    metric = check_metric(metric)
    check_temperature(temperature)
    b = query.shape[0]
    if own not in ("positive", "self", None):
        raise ValueError(f"own must be 'positive', 'self' or None, got {own!r}.")
    problem = ContrastiveProblem(query, key, negatives, roles=NO_ROLES)  # shape checks
    if key.shape[0] != b:
        raise ValueError(
            f"the ring needs as many keys as queries on each rank, got B={b} queries and "
            f"{key.shape[0]} keys; pass collective='gather' for other shapes."
        )
    shared = negatives is not None and negatives.ndim == 2
    m = 0 if negatives is None else negatives.shape[-2]
    w = ranks.world
    replace(roles, positive_mask=None, ignore_mask=None).check(b, b)  # local labels / ids
    if roles.positive_mask is not None:
        check_mask("positive_mask", roles.positive_mask, (b, w * b))
    if roles.ignore_mask is not None:
        check_mask("ignore_mask", roles.ignore_mask, (b, w * b + (w * m if shared else m)))
    q, k, neg = _logit_space(problem, temperature, metric)
    kk = torch.cat([k, neg]) if shared else k  # (B + M, D): what travels
    chunk = min(_CHUNK_SIZE.get() or RING_TILE_ROWS, b)  # tiling() or the ring's own tiles
    ring = _Ring(
        ranks=ranks,
        metric="euclidean" if metric == "euclidean" else "dot",
        n_keys=b,
        n_shared=m if shared else 0,
        own=own,
        symmetric=symmetric,
        roles=roles,
        chunk=chunk,
        col_chunk=COLUMN_BLOCK_RATIO * chunk,
    )
    row, col, row_valid, col_valid = _RingSoftmaxLoss.apply(q, kk, None if shared else neg, ring)
    if symmetric:
        valid = row_valid & col_valid
        return torch.where(valid, 0.5 * (row + col), 0.0), valid
    return row, row_valid


def ring_reduce(loss: Tensor, valid: Tensor, reduction: str) -> Tensor:
    """``"sum"`` of the per-anchor ``loss`` of :func:`ring_softmax_contrastive` (its invalid
    anchors are 0 already) or ``"none"``, always through the ring's graph: every rank must run
    the ring's backward pass, even one whose anchors are all invalid (it warns, as the engine's
    :func:`~contrastkit.functional.engine.reduce_valid` does, and contributes 0).

    >>> ring_reduce(torch.tensor([1.0, 2.0]), torch.tensor([True, True]), "sum")
    tensor(3.)
    """
    if not bool(valid.any()):
        _warn_no_positive()
    return loss if reduction == "none" else loss.sum()
