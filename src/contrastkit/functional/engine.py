"""The one softmax-contrastive engine every softmax loss goes through.

A *contrastive problem* (:class:`ContrastiveProblem`) is: queries ``query: (B, D)``, keys
``key: (N, D)`` with ``N >= B`` allowed (local queries against gathered keys), optional extra
negatives ``negatives: (M, D)`` shared by all queries or ``(B, M, D)`` per query, appended after
the N keys, and a description of which candidates are *positives* and which are *ignored*:

* ``positive_offset``: key ``(positive_offset + i) mod N`` is the designated positive of query
  ``i`` (0 for paired batches, ``rank * B`` for gathered keys, ``B`` for NT-Xent's ``[z1; z2]``
  against itself); None for no designated positive;
* ``self_offset``: key ``(self_offset + i) mod N`` is query ``i`` itself (NT-Xent, SupCon where
  the queries are the keys): it is neither a positive nor a candidate;
* ``roles`` (:class:`KeyRoles`, the one argument users pass to :func:`~contrastkit.functional.
  info_nce`): ``query_labels: (B,)``, ``key_labels: (N,)`` (a key with the query's label is a
  positive), ``query_ids: (B,)``, ``key_ids: (N,)`` (a key with the query's id that is not a
  positive is an ignored false negative, e.g. the same document twice in a batch), and the
  dense ``positive_mask: (B, N)`` and ``ignore_mask: (B, N + M)`` for small problems.

Negatives are never positives; a positive is never ignored. For an anchor ``i`` with positive
set ``P(i)`` and kept candidates ``C(i)``::

    loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / t) / sum_{c in C(i)} exp(s_ic / t) )

(the SupCon "outside" form). Anchors with no positive are not valid: their loss is 0 and they are
left out of the mean. With ``symmetric=True`` (requires ``N == B``) the key -> query direction
over the (B, N) block is added: anchor ``i``'s loss is the mean of row ``i`` and column ``i``, and
it is valid when both are.

``row_shards`` (:class:`RowShards`) lifts ``N == B`` for the symmetric loss of a problem whose
rows are spread over processes: the B queries are one shard of the rows of a larger problem
(this rank's queries against the keys of all ranks), each shard computes only its (B, N) block,
and the column (key -> query) statistics are combined over the shards by an all-reduce, so
column ``j``'s loss runs over the rows of all shards. Anchor ``i`` pairs row ``i`` with column
``row_shards.column_offset + i`` (its own key). This is how
:func:`contrastkit.functional.info_nce` with a ``group`` computes the symmetric loss on W ranks at
1/W of the single-process work per rank.

Two paths compute it, with the same value and gradients:

* dense (:func:`softmax_contrastive_dense`, the reference oracle): materialises the (B, N + M)
  logits; fastest for small problems;
* chunked (:mod:`contrastkit.functional.tiled`): strips of ``chunk_size`` queries against all
  candidates, exact online log-sum-exp, custom autograd Functions; peak extra memory
  O(chunk_size * (N + M)) instead of O(B * (N + M)). The one-directional loss with
  ``reduction="mean"``/``"sum"`` under autograd accumulates its gradient during the forward
  pass (no recomputation); otherwise each strip is cut into ``chunk_size x
  COLUMN_BLOCK_RATIO * chunk_size`` tiles that stay in cache, and the backward pass recomputes
  each tile's logits from the saved embeddings and the saved per-row / per-column log-sum-exp
  (the first two strips' tiles are kept from the forward pass instead, up to
  ``TILE_CACHE_BYTES``).
  Cosine inputs are normalised and divided by the temperature in one autograd node
  (:func:`contrastkit.functional.similarity.normalize_over`).

On CUDA the chunked path runs fused Triton kernels instead of the torch tile loop when Triton
imports and they take the problem (:mod:`contrastkit.functional.fused`: FlashAttention-style,
no tile written to memory; ``CONTRASTKIT_FUSED_KERNELS=off`` or ``fused_kernels("off")`` keeps
the tile loop, which stays the fallback and the reference).

:func:`softmax_contrastive` picks the path; tiling is the engine's, not the losses': by default
it is automatic -- dense while ``B * (N + M) <= DENSE_MAX_LOGITS`` (2**22 logits, 16 MiB in
float32, i.e. B = N = 2048), chunked with :func:`default_chunk_size` rows beyond; inside
``with tiling(chunk_size=n):`` every loss takes the chunked path with strips of ``n`` rows. Softmaxes are computed in float32 (float64 for float64 inputs) so half-precision inputs
at small temperatures do not overflow. For bf16 / fp16 inputs the chunked path's block products
run with half operands and float32 results (:func:`contrastkit.functional.tiled.block_logits`:
the logits are never rounded to half), the gradients come back in the input dtype and the loss
in float32 (see docs/engine.md for the accuracy contract).

>>> g = torch.Generator().manual_seed(0)
>>> q, k = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
>>> p = ContrastiveProblem(q, k, symmetric=True)
>>> dense = softmax_contrastive(p, temperature=0.1)
>>> with tiling(chunk_size=4):
...     chunked = softmax_contrastive(p, temperature=0.1)
>>> torch.allclose(dense, chunked)
True
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from contrastkit._checks import (
    check_embeddings,
    check_labels,
    check_mask,
    check_pair,
    check_reduction,
    check_temperature,
)
from contrastkit.functional.fused import FusedSoftmaxLoss, runs_fused
from contrastkit.functional.precision import own_precision
from contrastkit.functional.similarity import (
    check_metric,
    normalize_over,
    similarity_matrix_unchecked,
)
from contrastkit.functional.tiled import (
    Blocks,
    FusedRowSoftmaxLoss,
    Structure,
    TiledSigmoidLoss,
    TiledSoftmaxLoss,
)

DENSE_MAX_LOGITS = 2**22
"""Automatic path selection: dense while the logit matrix has at most this many entries."""
STRIP_LOGITS = 2**23
"""Automatic height of full-width strips: about this many logits per strip (32 MiB of float32)."""
TILE_ROWS = 1024
"""Automatic height of the recomputing path's tiles."""
COLUMN_BLOCK_RATIO = 4
"""Tiles of the recomputing path are ``chunk`` rows by ``COLUMN_BLOCK_RATIO * chunk`` columns."""
HALF_PRODUCTS = "normalized"
"""The block-product operands of the chunked path for bf16 / fp16 inputs (docs/engine.md):

* ``"normalized"`` (default, fastest): the normalised, temperature-scaled embeddings rounded
  to half (:func:`operand_dtype`);
* ``"raw"`` (cosine): the raw half inputs themselves, their norms and the temperature applied
  to the float32 logits: exact products (loss error ~1e-7 instead of ~1e-4), no float32 copy
  of the embeddings kept for the backward, 15-40 % slower on a CPU (two passes more per tile);
* ``"float32"``: float32 operands, exact products of the half values at float32 speed (for
  nearly collapsed classes, the known limit of the other two).
"""
HALF_PRODUCT_MODES = ("normalized", "raw", "float32")
TILE_CACHE_BYTES = 64 * 2**20
"""The recomputing path keeps up to this many bytes of exponentiated forward tiles (never more
than two strips' worth) so that the backward pass skips their product; 0 recomputes every tile."""


def default_chunk_size(width: int, tiled: bool = False) -> int:
    """Automatic block height for ``width = N + M`` candidates.

    Full-width strips (``tiled=False``: the one-directional fused path, the sigmoid loss):
    ``STRIP_LOGITS // width`` rounded down to a multiple of 64, within [64, 2048] (1024 rows
    for N = 8192, 128 for N = 65,536), so a strip stays near the cache. Tiles of the recomputing path
    (``tiled=True``) do not span the width: ``TILE_ROWS`` rows by ``COLUMN_BLOCK_RATIO *
    TILE_ROWS`` columns whatever N is (measured fastest on a 2-core CPU, ``make bench``).

    >>> default_chunk_size(8192), default_chunk_size(65536), default_chunk_size(65536, tiled=True)
    (1024, 128, 1024)
    """
    if tiled:
        return TILE_ROWS
    rows = STRIP_LOGITS // max(width, 1) // 64 * 64
    return min(max(rows, 64), 2048)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32 (and the loss of
    half-precision inputs is returned in float32, as autocast does for its own losses)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def operand_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of the chunked path's block-product operands for inputs of ``dtype``.

    bf16 stays bf16 (CPU: avx512-bf16 / AMX GEMMs; CUDA: tensor cores), fp16 stays fp16 on CUDA
    and is upcast to float32 on CPU (whose fp16 GEMMs are emulated, ~20x slower than float32;
    the upcast is exact); float32 and float64 are unchanged. Logits, statistics and gradient
    accumulators are always :func:`compute_dtype`.

    >>> cpu = torch.device("cpu")
    >>> operand_dtype(torch.bfloat16, cpu), operand_dtype(torch.float16, cpu)
    (torch.bfloat16, torch.float32)
    """
    if HALF_PRODUCTS not in HALF_PRODUCT_MODES:
        raise ValueError(
            f"contrastkit.functional.engine.HALF_PRODUCTS must be one of {HALF_PRODUCT_MODES}, "
            f"got {HALF_PRODUCTS!r}; set it to 'normalized' (the default)."
        )
    if HALF_PRODUCTS == "float32" or (dtype == torch.float16 and device.type == "cpu"):
        return torch.float32
    if dtype in (torch.float16, torch.bfloat16):
        return dtype
    return compute_dtype(dtype)


def masked_log_softmax_loss(
    logits: Tensor, positive: Tensor, ignore: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Per-anchor loss from logits and masks.

    Args:
        logits: (B, N) similarities divided by the temperature.
        positive: (B, N) bool, positives of each row.
        ignore: (B, N) bool or None, candidates removed from the softmax (positives win).

    Returns:
        ``(loss, valid)``: (B,) per-anchor loss (0 where invalid) and (B,) bool of anchors with
        at least one positive.
    """
    if ignore is not None:
        logits = logits.masked_fill(ignore & ~positive, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = positive.sum(dim=1)
    valid = n_pos > 0
    # where() instead of multiply: ignored entries are -inf and -inf * 0 would be NaN.
    pos_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    loss = -pos_log_prob / n_pos.clamp_min(1).to(log_prob.dtype)
    return loss, valid


def softmax_contrastive_dense(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float | Tensor,
    metric: str,
    positive: Tensor,
    ignore: Tensor | None = None,
    negatives: Tensor | None = None,
    symmetric: bool = False,
    row_shards: RowShards | None = None,
) -> tuple[Tensor, Tensor]:
    """Dense per-anchor softmax-contrastive loss.

    Args:
        query: (B, D).
        key: (N, D) in-batch candidates (N may exceed B, e.g. gathered keys).
        positive: (B, N + M) bool.
        ignore: (B, N + M) bool or None.
        negatives: (M, D) shared or (B, M, D) per-query extra negatives, or None.
        symmetric: also compute the key -> query direction over the (B, N) block; requires N == B
            unless ``row_shards`` is given.
        row_shards: the rows are one shard of a larger problem (:class:`RowShards`): the
            column statistics are combined over the shards, anchor i's column is
            ``row_shards.column_offset + i``.

    Returns:
        ``(loss, valid)``, both (B,). With ``symmetric`` the loss is the mean of both directions.
    """
    dtype = compute_dtype(query.dtype)
    q, k = query.to(dtype), key.to(dtype)
    logits = similarity_matrix_unchecked(q, k, metric)  # (B, N)
    if negatives is not None:
        n = negatives.to(dtype)
        if n.ndim == 2:
            extra = similarity_matrix_unchecked(q, n, metric)  # (B, M)
        else:
            extra = _per_query_similarity(q, n, metric)  # (B, M)
        logits = torch.cat([logits, extra], dim=1)  # (B, N + M)
    logits = logits / temperature
    loss, valid = masked_log_softmax_loss(logits, positive, ignore)
    if symmetric and row_shards is not None:
        n_keys = key.shape[0]
        ign = None if ignore is None else ignore[:, :n_keys]
        col_loss, col_valid = sharded_column_loss(
            logits[:, :n_keys], positive[:, :n_keys], ign, row_shards.all_reduce
        )  # (N,) over the rows of all shards
        own = slice(row_shards.column_offset, row_shards.column_offset + q.shape[0])
        loss = 0.5 * (loss + col_loss[own])
        valid = valid & col_valid[own]
    elif symmetric:
        n_keys = key.shape[0]
        block = logits[:, :n_keys].T  # (N, B): key -> query
        ign = None if ignore is None else ignore[:, :n_keys].T
        loss_t, valid_t = masked_log_softmax_loss(block, positive[:, :n_keys].T, ign)
        loss = 0.5 * (loss + loss_t)
        valid = valid & valid_t
    return loss, valid


def sharded_column_loss(
    block: Tensor,
    positive: Tensor,
    ignore: Tensor | None,
    all_reduce: Callable[[Tensor, str], Tensor],
) -> tuple[Tensor, Tensor]:
    """Key -> query loss of every column of a (B, N) logit block whose rows are one shard.

    Column ``j``'s loss is ``lse_j - (sum of its positive logits) / (their count)`` over the
    rows of *all* shards. Each shard contributes its rows' share: the global column max first
    (``all_reduce(x, "max")``), then the sum of ``exp(l_ij - max_j)``, the positive logits and
    their count (one ``all_reduce(x, "sum")`` of a (3, N) stack): the collectives of the
    chunked path (:func:`contrastkit.functional.tiled.combine_column_shards`), called the same
    way on every shard. Differentiable: the backward pass sums the upstream (N,) gradient over
    the shards, and each shard backpropagates its own rows' share.

    Args:
        block: (B, N) logits of this shard's rows.
        positive: (B, N) bool.
        ignore: (B, N) bool or None (positives win).
        all_reduce: in-place reduction over the shards, ``all_reduce(x, op)``.

    Returns:
        ``(loss, valid)``, both (N,), the same on every shard (0 where a column has no positive).

    >>> one = lambda x, op: x  # a single shard is the plain column loss
    >>> lg = torch.randn(3, 3)
    >>> loss, _ = sharded_column_loss(lg, torch.eye(3, dtype=torch.bool), None, one)
    >>> torch.allclose(loss, torch.logsumexp(lg, 0) - lg.diagonal())
    True
    """
    if ignore is not None:
        block = block.masked_fill(ignore & ~positive, float("-inf"))
    top = block.detach().amax(0).clamp(min=torch.finfo(block.dtype).min)  # (N,), -inf floored
    top = all_reduce(top, "max")
    partial = (block - top).exp().sum(0)  # (N,): this shard's rows, exp(-inf) = 0
    # where() instead of multiply: ignored entries are -inf and -inf * 0 would be NaN.
    pos = torch.where(positive, block, torch.zeros_like(block)).sum(0)  # (N,)
    count = positive.sum(0).to(block.dtype)  # (N,)
    return _ShardedColumnLoss.apply(top, partial, pos, count, all_reduce)


class _ShardedColumnLoss(torch.autograd.Function):
    """``loss_j = top_j + log(sum_s partial_sj) - (sum_s pos_sj) / (sum_s count_sj)`` over the
    shards s (see :func:`sharded_column_loss`); backward: the upstream gradient summed over the
    shards, times each shard's local derivative."""

    @staticmethod
    def forward(ctx, top, partial, pos, count, all_reduce):
        stats = all_reduce(torch.stack([partial, pos, count]).detach(), "sum")  # (3, N)
        total, pos_sum, n_pos = stats[0], stats[1], stats[2]
        valid = n_pos > 0
        total = torch.where(valid, total, 1.0)  # columns without a positive: 0, no log(0)
        n_pos = n_pos.clamp(min=1.0)
        loss = torch.where(valid, top + total.log() - pos_sum / n_pos, 0.0)
        ctx.save_for_backward(total, n_pos, valid)
        ctx.all_reduce = all_reduce
        ctx.mark_non_differentiable(valid)
        return loss, valid

    @staticmethod
    def backward(ctx, g, _g_valid):
        total, n_pos, valid = ctx.saved_tensors
        g = torch.zeros_like(total) if g is None else g.to(total.dtype)
        g = ctx.all_reduce(g.contiguous().clone(), "sum") * valid  # (N,): every shard's columns
        return None, g / total, -g / n_pos, None, None


def _per_query_similarity(q: Tensor, negatives: Tensor, metric: str) -> Tensor:
    """(B, D) x (B, M, D) -> (B, M): each query against its own negatives."""
    from contrastkit.functional.similarity import paired_similarity_unchecked

    b, m, d = negatives.shape
    q_rep = q[:, None, :].expand(b, m, d).reshape(b * m, d)  # (B*M, D)
    return paired_similarity_unchecked(q_rep, negatives.reshape(b * m, d), metric).view(b, m)


@dataclass(frozen=True)
class RowShards:
    """The queries of a problem are one shard of the rows of a larger one (one rank of W).

    The symmetric loss then needs, for key column ``j``, a log-sum-exp over the rows of every
    shard: each shard computes its own rows' column statistics and ``all_reduce`` combines them
    (see the module docstring). ``all_reduce(x, op)`` reduces ``x`` in place over the shards and
    returns it, ``op`` ``"max"`` or ``"sum"`` (:func:`contrastkit.collectives.all_reduce_`); it
    is called the same number of times with the same shapes on every shard, whatever the data,
    forward and backward, so every shard must compute the loss and run its backward pass.

    Args:
        column_offset: the column paired with query ``i`` (its own key) is ``column_offset + i``;
            ``rank * B`` for local queries against the rank-major gathered keys.
        all_reduce: the in-place reduction over the shards.

    >>> RowShards(column_offset=0, all_reduce=lambda x, op: x).column_offset  # one shard
    0
    """

    column_offset: int
    all_reduce: Callable[[Tensor, str], Tensor]


@dataclass(frozen=True)
class KeyRoles:
    """Which keys are positives and which are ignored, besides a loss's designated positive.

    The one description of a softmax loss's positives and ignored candidates
    (:func:`~contrastkit.functional.info_nce` takes it as ``roles``; the engine reads it from
    :class:`ContrastiveProblem`). Every field is optional and they combine: a key is a
    positive when a label or the mask says so, ignored when an id or the mask says so, and a
    positive is never ignored.

    Args:
        positive_mask: (B, N) bool, extra positives among the N keys.
        ignore_mask: (B, N + M) bool, True drops a candidate from the softmax (known false
            negatives), over the keys and then the M extra negatives.
        query_labels: (B,) and key_labels: (N,) integer labels: keys sharing the query's label
            are positives, without a dense (B, N) mask.
        query_ids: (B,) and key_ids: (N,) integer ids: keys sharing the query's id that are not
            positives are ignored (duplicates / known false negatives), without a dense mask.

    With a process group (``group=``) a loss gathers ``key_labels`` and ``key_ids`` from the
    ranks with its keys, so pass the local (B,) ones; the masks are this rank's B rows against
    the global columns.

    >>> ids = torch.tensor([0, 1, 1])
    >>> KeyRoles(query_ids=ids, key_ids=ids).query_labels is None
    True
    >>> KeyRoles(query_labels=ids)
    Traceback (most recent call last):
    ...
    ValueError: query_labels and key_labels go together, got only query_labels; pass both (the same tensor when the queries are the keys).
    """

    positive_mask: Tensor | None = None
    ignore_mask: Tensor | None = None
    query_labels: Tensor | None = None
    key_labels: Tensor | None = None
    query_ids: Tensor | None = None
    key_ids: Tensor | None = None

    def __post_init__(self) -> None:
        for q_name, k_name in (("query_labels", "key_labels"), ("query_ids", "key_ids")):
            q_val, k_val = getattr(self, q_name), getattr(self, k_name)
            if (q_val is None) != (k_val is None):
                raise ValueError(
                    f"{q_name} and {k_name} go together, got only "
                    f"{q_name if q_val is not None else k_name}; pass both (the same tensor "
                    "when the queries are the keys)."
                )

    def check(self, n_queries: int, n_keys: int, n_negatives: int = 0) -> None:
        """Check the shapes against B = ``n_queries``, N = ``n_keys`` and M = ``n_negatives``."""
        for name in ("query_labels", "query_ids"):
            if getattr(self, name) is not None:
                check_labels(name, getattr(self, name), n_queries, what="query")
        for name in ("key_labels", "key_ids"):
            if getattr(self, name) is not None:
                check_labels(name, getattr(self, name), n_keys, what="key")
        if self.positive_mask is not None:
            check_mask("positive_mask", self.positive_mask, (n_queries, n_keys))
        if self.ignore_mask is not None:
            check_mask("ignore_mask", self.ignore_mask, (n_queries, n_keys + n_negatives))


NO_ROLES = KeyRoles()
"""Only the designated positives; nothing ignored."""


@dataclass
class ContrastiveProblem:
    """Queries, candidates, and who is a positive / ignored (see the module docstring).

    Args:
        query: (B, D) anchors.
        key: (N, D) in-batch candidates, N >= 1 (N > B for gathered keys).
        negatives: (M, D) shared or (B, M, D) per-query extra negatives, or None.
        positive_offset: key ``(positive_offset + i) mod N`` is the positive of query i; None
            for no designated positive (then labels or ``positive_mask`` must give positives).
        self_offset: key ``(self_offset + i) mod N`` is query i itself, removed; or None.
        roles: further positives / ignored candidates (:class:`KeyRoles`: labels, ids, masks).
        symmetric: add the key -> query direction; requires N == B unless ``row_shards``.
        row_shards: with ``symmetric``, the queries are one shard of the rows of a larger
            problem (:class:`RowShards`): the key -> query direction of the N keys runs over the
            rows of all shards, and anchor i's column is ``row_shards.column_offset + i``.

    >>> q, labels = torch.randn(3, 2), torch.tensor([0, 0, 1])
    >>> pos, ign = ContrastiveProblem(q, q, positive_offset=None, self_offset=0,
    ...     roles=KeyRoles(query_labels=labels, key_labels=labels)).to_dense()
    >>> pos.int().tolist(), ign.int().tolist()
    ([[0, 1, 0], [1, 0, 0], [0, 0, 0]], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    """

    query: Tensor
    key: Tensor
    negatives: Tensor | None = None
    positive_offset: int | None = 0
    self_offset: int | None = None
    roles: KeyRoles = field(default=NO_ROLES)
    symmetric: bool = False
    row_shards: RowShards | None = None

    def __post_init__(self) -> None:
        check_embeddings("query", self.query)
        check_embeddings("key", self.key)
        check_pair("query", self.query, "key", self.key, same_rows=False)
        b, n, m = self.n_queries, self.n_keys, self.n_negatives
        if self.negatives is not None:
            check_embeddings("negatives", self.negatives, ndim=(2, 3))
            check_pair("query", self.query, "negatives", self.negatives, same_rows=False)
            if self.negatives.ndim == 3 and self.negatives.shape[0] != b:
                raise ValueError(
                    f"per-query negatives must have shape (B, M, D) with B={b} like query, got "
                    f"{tuple(self.negatives.shape)}; pass (M, D) to share them across queries."
                )
        for name in ("positive_offset", "self_offset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"{name} must be an int or None, got {value!r}.")
        if not isinstance(self.roles, KeyRoles):
            raise TypeError(
                f"roles must be a KeyRoles, got {type(self.roles).__name__}; wrap masks, labels "
                "and ids as KeyRoles(ignore_mask=..., query_labels=..., ...)."
            )
        self.roles.check(b, n, m)
        if self.row_shards is not None:
            self._check_row_shards()
        elif self.symmetric and n != b:
            raise ValueError(
                f"symmetric=True needs as many keys as queries, got B={b} queries and N={n} "
                "keys; use symmetric=False for gathered or extra keys."
            )

    def _check_row_shards(self) -> None:
        shards, b, n = self.row_shards, self.n_queries, self.n_keys
        if not isinstance(shards, RowShards):
            raise TypeError(f"row_shards must be a RowShards or None, got {type(shards).__name__}.")
        if not self.symmetric:
            raise ValueError(
                "row_shards only concerns the key -> query direction; pass symmetric=True with "
                "it (or drop row_shards for the one-directional loss)."
            )
        offset = shards.column_offset
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= n - b:
            raise ValueError(
                f"row_shards.column_offset must be an int in [0, N - B] = [0, {n - b}] (the "
                f"first of the B={b} columns paired with the queries), got {offset!r}."
            )

    @property
    def n_queries(self) -> int:
        return self.query.shape[0]

    @property
    def n_keys(self) -> int:
        return self.key.shape[0]

    @property
    def n_negatives(self) -> int:
        return 0 if self.negatives is None else self.negatives.shape[-2]

    def structure(self) -> Structure:
        """The mask description the blocked kernels read (no dense tensor)."""
        r = self.roles
        return Structure(
            n_keys=self.n_keys,
            positive_offset=self.positive_offset,
            self_offset=self.self_offset,
            query_labels=r.query_labels,
            key_labels=r.key_labels,
            query_ids=r.query_ids,
            key_ids=r.key_ids,
            positive_mask=r.positive_mask,
            ignore_mask=r.ignore_mask,
            symmetric=self.symmetric,
            column_reduce=None if self.row_shards is None else self.row_shards.all_reduce,
        )

    def to_dense(self) -> tuple[Tensor, Tensor | None]:
        """``(positive, ignore)``, both (B, N + M) bool (ignore None when nothing is ignored)."""
        b, n, m = self.n_queries, self.n_keys, self.n_negatives
        r = self.roles
        device = self.query.device
        rows = torch.arange(b, device=device)
        positive = torch.zeros(b, n + m, dtype=torch.bool, device=device)
        if self.positive_offset is not None:
            positive[rows, (rows + self.positive_offset) % n] = True
        if r.query_labels is not None:
            positive[:, :n] |= r.query_labels[:, None] == r.key_labels[None, :]
        if r.positive_mask is not None:
            positive[:, :n] |= r.positive_mask
        ignore = torch.zeros(b, n + m, dtype=torch.bool, device=device)
        if r.ignore_mask is not None:
            ignore |= r.ignore_mask
        if r.query_ids is not None:
            ignore[:, :n] |= r.query_ids[:, None] == r.key_ids[None, :]
        if self.self_offset is not None:
            self_cols = (rows + self.self_offset) % n
            positive[rows, self_cols] = False
            ignore[rows, self_cols] = True
        ignore &= ~positive
        return positive, (ignore if bool(ignore.any()) else None)


_CHUNK_SIZE: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "contrastkit_chunk_size", default=None
)


def _check_chunk_size(chunk_size: object) -> int | None:
    if chunk_size is not None and (
        not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0
    ):
        raise ValueError(
            f"chunk_size must be a positive int (query rows per block, e.g. 256) or None for "
            f"automatic selection, got {chunk_size!r}."
        )
    return chunk_size


@contextlib.contextmanager
def tiling(chunk_size: int | None = None) -> Iterator[None]:
    """Within the block, the engine computes every softmax / sigmoid loss with ``chunk_size``
    query rows per block of its chunked path (None: the automatic choice, dense up to
    ``DENSE_MAX_LOGITS`` logits). Value and gradients are the same either way; the chunked path
    needs memory O(chunk_size * (N + M)) instead of O(B * (N + M)).

    Tiling is the engine's business: the losses take no ``chunk_size``. The setting is read when
    a loss runs its forward pass (the backward pass follows the forward's blocks), and also
    works as a decorator.

    >>> q = torch.randn(64, 8)
    >>> from contrastkit.functional import info_nce
    >>> with tiling(chunk_size=16):
    ...     chunked = info_nce(q, q.flip(0), temperature=0.1)
    >>> bool(torch.isclose(chunked, info_nce(q, q.flip(0), temperature=0.1)))
    True
    """
    token = _CHUNK_SIZE.set(_check_chunk_size(chunk_size))
    try:
        yield
    finally:
        _CHUNK_SIZE.reset(token)


def resolve_chunk_size(rows: int, width: int, tiled: bool = False) -> int | None:
    """The block height for ``rows`` queries against ``width = N + M`` candidates: the
    :func:`tiling` setting, or automatic (None = dense up to ``DENSE_MAX_LOGITS`` logits)."""
    chunk_size = _CHUNK_SIZE.get()
    if chunk_size is None:
        if rows * width <= DENSE_MAX_LOGITS:
            return None
        return min(default_chunk_size(width, tiled), rows)
    return min(chunk_size, max(rows, 1))


def _logit_space(
    problem: ContrastiveProblem, temperature: float | Tensor, metric: str
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Apply the metric's normalisation and the temperature once, outside the kernels.

    cosine / dot: ``q / t . k``; euclidean: ``-|q/t - k/t|``. Autograd backpropagates through
    this (normalisation and temperature included), in the compute dtype; the kernels round the
    result to :func:`operand_dtype` for their block products (``_kernel_operand``).
    """
    dtype = compute_dtype(problem.query.dtype)
    q, k, neg = problem.query, problem.key, problem.negatives
    if metric == "cosine":  # upcast inside the node: it keeps the half inputs, not copies
        q, k = normalize_over(q, temperature, dtype), normalize_over(k, 1.0, dtype)
        neg = None if neg is None else normalize_over(neg, 1.0, dtype)
    else:
        q, k = q.to(dtype), k.to(dtype)
        neg = None if neg is None else neg.to(dtype)
        q = q / temperature
        if metric == "euclidean":
            k = k / temperature
            neg = None if neg is None else neg / temperature
    return q, k, neg


def _inverse_norms(x: Tensor, temperature: float | Tensor) -> Tensor:
    """``1 / (|x_i| t)`` per row (B,) in float32, ``1 / t`` where ``|x_i| <= eps`` (like
    :func:`normalize_over`); differentiable, finite gradients at zero rows."""
    from contrastkit.functional.similarity import _EPS

    # the norm upcasts inside its node, which keeps the half x (not a float32 copy) for backward
    norm = torch.linalg.vector_norm(x, dim=-1, dtype=compute_dtype(x.dtype))
    unit = norm > _EPS
    inv = torch.where(unit, norm.clamp_min(_EPS).reciprocal(), 1.0)
    return inv / temperature


def _raw_space(
    problem: ContrastiveProblem, temperature: float | Tensor
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """Cosine with half operands: the kernels multiply the *raw* half inputs (exact products)
    and scale the float32 logits, ``l_ij = a_i b_j (x_i . y_j)`` with ``a = 1 / (|x| t)``,
    ``b = 1 / |y|`` (shared negatives' scales after the keys'); per-query negatives are
    normalised in float32 (their products stay float32). Rounding the normalised embeddings to
    half instead swamps the small gradient of nearly collapsed classes (docs/engine.md).

    Returns ``(query, key, negatives, row_scale (B,), col_scale (N + M_shared,))``.
    """
    q, k, neg = problem.query, problem.key, problem.negatives
    rows = _inverse_norms(q, temperature)
    cols = _inverse_norms(k, 1.0)
    if neg is not None and neg.ndim == 2:
        cols = torch.cat([cols, _inverse_norms(neg, 1.0)])
    elif neg is not None:
        neg = normalize_over(neg.to(compute_dtype(neg.dtype)), 1.0)  # (B, M, D)
    return q, k, neg, rows, cols


def _kernel_operand(x: Tensor) -> torch.dtype | None:
    """The kernels' operand dtype for inputs like ``x``, None when it is the compute dtype."""
    operand = operand_dtype(x.dtype, x.device)
    return None if operand == compute_dtype(x.dtype) else operand


@own_precision("half")
def softmax_contrastive(
    problem: ContrastiveProblem,
    *,
    temperature: float | Tensor,
    metric: str = "cosine",
    reduction: str = "mean",
) -> Tensor:
    """The softmax-contrastive loss of a :class:`ContrastiveProblem`, dense or chunked
    (:func:`tiling` sets the blocks).

    Args:
        problem: queries, candidates and the positive / ignore description.
        temperature: > 0, float or scalar tensor (gradients flow to a tensor temperature).
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        reduction: ``"mean"`` over valid anchors, ``"sum"`` over valid anchors, or ``"none"``
            ((B,), 0 for anchors without a positive). If no anchor is valid the result is a
            zero that still backpropagates, with a warning.

    Returns:
        Scalar, or (B,) with ``reduction="none"``: float64 for float64 inputs, float32 otherwise
        (half-precision inputs get a float32 loss; their gradients come back in their dtype).

    >>> q = torch.ones(4, 8)
    >>> round(float(softmax_contrastive(ContrastiveProblem(q, q), temperature=0.5)), 4)  # log 4
    1.3863
    """
    check_temperature(temperature)
    metric = check_metric(metric)
    reduction = check_reduction(reduction)
    p = problem
    learnable_t = isinstance(temperature, Tensor) and temperature.requires_grad
    wants_grad = torch.is_grad_enabled() and (
        learnable_t or any(t is not None and t.requires_grad for t in (p.query, p.key, p.negatives))
    )
    fused = wants_grad and not p.symmetric and reduction != "none"
    out_dtype = compute_dtype(p.query.dtype)
    chunk = resolve_chunk_size(p.n_queries, p.n_keys + p.n_negatives, not fused)
    if chunk is None:
        positive, ignore = p.to_dense()
        loss, valid = softmax_contrastive_dense(
            p.query,
            p.key,
            temperature=temperature,
            metric=metric,
            positive=positive,
            ignore=ignore,
            negatives=p.negatives,
            symmetric=p.symmetric,
            row_shards=p.row_shards,
        )
        return reduce_valid(loss, valid, reduction, p.query).to(out_dtype)
    operand, scales = _kernel_operand(p.query), (None, None)
    if metric == "cosine" and operand is not None and HALF_PRODUCTS == "raw":
        q, k, neg, *scales = _raw_space(p, temperature)
        operand = None  # the raw inputs are the operands already
    else:
        q, k, neg = _logit_space(p, temperature, metric)
    if runs_fused(p, metric):  # the chunked path's fused Triton kernels (GPU)
        row, col, row_valid, col_valid = FusedSoftmaxLoss.apply(
            q, k, neg, p.structure(), operand, *scales
        )
        return _reduce_rows_columns(p, row, col, row_valid, col_valid, reduction, q, out_dtype)
    kernel_metric = "euclidean" if metric == "euclidean" else "dot"
    if fused:
        blocks = Blocks(kernel_metric, chunk, operand=operand)
        total, valid = FusedRowSoftmaxLoss.apply(q, k, neg, p.structure(), blocks, *scales)
        n_valid = valid.sum()
        if int(n_valid) == 0:  # a zero through the Function: see reduce_valid
            _warn_no_positive()
            return (total * 0.0).to(out_dtype)
        out = total / n_valid if reduction == "mean" else total
        return out.to(out_dtype)
    blocks = Blocks(kernel_metric, chunk, COLUMN_BLOCK_RATIO * chunk, TILE_CACHE_BYTES, operand)
    row, col, row_valid, col_valid = TiledSoftmaxLoss.apply(
        q, k, neg, p.structure(), blocks, *scales
    )
    return _reduce_rows_columns(p, row, col, row_valid, col_valid, reduction, q, out_dtype)


def _reduce_rows_columns(
    p: ContrastiveProblem,
    row: Tensor,
    col: Tensor,
    row_valid: Tensor,
    col_valid: Tensor,
    reduction: str,
    graph_source: Tensor,
    out_dtype: torch.dtype,
) -> Tensor:
    """The anchors' losses from the row (B,) and column (N,) losses of the blocked kernels."""
    if p.row_shards is not None:  # col: the N columns over all shards' rows; ours follow
        own = slice(p.row_shards.column_offset, p.row_shards.column_offset + p.n_queries)
        loss, valid = 0.5 * (row + col[own]), row_valid & col_valid[own]
    elif p.symmetric:
        loss, valid = 0.5 * (row + col), row_valid & col_valid
    else:
        loss, valid = row, row_valid
    return reduce_valid(loss, valid, reduction, graph_source).to(out_dtype)


def _warn_no_positive() -> None:
    warnings.warn(
        "no anchor has a positive in this batch (every label is unique), so the loss is 0; "
        "use an M-per-class sampler so each batch holds at least two examples per class.",
        RuntimeWarning,
        stacklevel=4,
    )


def reduce_valid(loss: Tensor, valid: Tensor, reduction: str, graph_source: Tensor) -> Tensor:
    """Reduce per-anchor losses over valid anchors only; all-invalid gives a differentiable 0."""
    if not bool(valid.any()):
        _warn_no_positive()
        # A zero through the loss's own graph, not only its inputs': with a process group every
        # rank must run the backward's collectives (the keys' gather), also a rank whose anchors
        # are all invalid, or the others hang and miss its rows' share of their gradient.
        source = loss if loss.requires_grad else graph_source
        zero = torch.where(valid, source, 0.0).sum() * 0.0 if source is loss else source.sum() * 0.0
        return zero.expand(loss.shape).clone() if reduction == "none" else zero
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "mean":
        return loss.sum() / valid.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


@own_precision("half")
def sigmoid_contrastive_rows(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor,
    bias: float | Tensor,
    metric: str,
) -> Tensor:
    """Per-row SigLIP loss ``sum_j -log sigmoid(label_ij * (s(a_i, b_j) / t + bias))``.

    ``a: (B, D)``, ``b: (B, D)`` (inputs already checked); returns (B,) in the compute dtype.
    :func:`tiling` selects the path as for :func:`softmax_contrastive`; the chunked path never
    holds the (B, B) logits (its per-logit gradient is local, so backward just recomputes).
    """
    dtype = compute_dtype(a.dtype)
    chunk = resolve_chunk_size(a.shape[0], b.shape[0])
    if chunk is None:
        logits = similarity_matrix_unchecked(a.to(dtype), b.to(dtype), metric) / temperature + bias
        n = a.shape[0]
        sign = 2.0 * torch.eye(n, dtype=dtype, device=a.device) - 1.0  # +1 diagonal, -1 elsewhere
        return -torch.nn.functional.logsigmoid(sign * logits).sum(dim=1)
    problem = ContrastiveProblem(a, b)
    q, k, _ = _logit_space(problem, temperature, metric)
    if isinstance(bias, Tensor):
        bias_t = bias.to(dtype).reshape(())
    else:
        bias_t = torch.tensor(float(bias), dtype=dtype, device=a.device)
    kernel_metric = "euclidean" if metric == "euclidean" else "dot"
    blocks = Blocks(kernel_metric, chunk, operand=_kernel_operand(a))
    return TiledSigmoidLoss.apply(q, k, bias_t, blocks)
