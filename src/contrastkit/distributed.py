"""The one differentiable all-gather, and the contrastive losses computed over all ranks.

On W ranks with a local batch of B pairs, every local query is compared with the keys of all
ranks (W * B candidates, rank-major: the keys of rank 0, then of rank 1, ...). The positive of
local query ``i`` on rank ``r`` is global key ``r * B + i``. Extra negatives join the candidates
*after* the W * B keys, so positives are never interleaved with them.

Each rank returns the mean over its *local* anchors. The mean of these values over ranks is the
single-process loss on the concatenated global batch, and because :func:`all_gather_with_grad`
sums the gradient of every rank in its backward, the gradients that DDP averages over ranks are
exactly the gradients of that global loss::

    grad_DDP(theta) = 1/W sum_r d loss_r / d theta = d loss_global / d theta

The losses are reached through the ``gather_distributed=True`` switch of
:func:`contrastkit.functional.info_nce`, :func:`~contrastkit.functional.nt_xent`,
:func:`~contrastkit.functional.supervised_contrastive` and
:func:`~contrastkit.functional.sigmoid_contrastive` (and the loss modules), or directly through
the ``*_distributed`` functions here. Without an initialised process group (or with W = 1)
everything reduces to the local computation, so the same script runs on one process.

Shape notation: B local batch, W world size, D embedding dim, M extra negatives.

>>> q = torch.eye(4)
>>> float(info_nce_distributed(q, q, temperature=0.05)) < 1e-6  # one process: plain InfoNCE
True
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from contrastkit._checks import (
    check_embeddings,
    check_labels,
    check_mask,
    check_pair,
    check_reduction,
    check_temperature,
)
from contrastkit.functional.engine import (
    ContrastiveProblem,
    RowShards,
    compute_dtype,
    sigmoid_contrastive_rows,
    softmax_contrastive,
)
from contrastkit.functional.similarity import (
    check_metric,
    check_paired_loss_inputs,
    paired_similarity_unchecked,
)

__all__ = [
    "GlobalBatchLoss",
    "all_gather",
    "all_gather_with_grad",
    "all_reduce_",
    "check_same_batch_size",
    "get_rank",
    "get_world_size",
    "info_nce_distributed",
    "is_distributed",
    "nt_xent_distributed",
    "pregathered",
    "sigmoid_contrastive_distributed",
    "supervised_contrastive_distributed",
]


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of ranks W, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def check_same_batch_size(name: str, n: int) -> None:
    """Raise on every rank if the ranks disagree on a batch size (all-gathers the sizes first).

    Every rank gets the same list of sizes, so every rank raises the same error instead of one
    rank hanging in a later collective.

    >>> check_same_batch_size("query", 8)  # one process: nothing to compare
    """
    world = get_world_size()
    if world == 1:
        return
    size = torch.tensor([int(n)], dtype=torch.long, device=_collective_device())
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    values = [int(s) for s in sizes]
    if len(set(values)) != 1:
        raise ValueError(
            f"{name} must have the same batch size on every rank for gather_distributed=True, got "
            f"sizes {values} on ranks 0..{world - 1}; use drop_last=True in the DataLoader (or a "
            "batch sampler with an exact length) so every rank sees full batches."
        )


def _collective_device() -> torch.device:
    """Device the process group's backend communicates on (CPU for gloo, CUDA for nccl)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over ranks and keeps the slice.

    Each rank's loss depends on every rank's embeddings, so the gradient of the summed loss with
    respect to this rank's rows is the all-reduced (summed) gradient restricted to those rows.
    A backward that only kept the local gradient (no sum) loses every cross-rank term.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # (W*B, ...)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows]


_PREGATHERED: contextvars.ContextVar[dict[int, tuple[Tensor, Callable[[], Tensor]]] | None] = (
    contextvars.ContextVar("contrastkit_pregathered", default=None)
)


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Differentiable all-gather along dim 0: (B, ...) on each rank -> (W*B, ...), rank-major.

    Backward all-reduces (sums) the incoming gradient and returns this rank's slice. Batch sizes
    must agree across ranks (checked with :func:`check_same_batch_size` by the losses). Inside
    :func:`pregathered`, a tensor registered there is answered from its registered gather
    instead of a new collective.

    >>> all_gather_with_grad(torch.ones(2, 3)).shape  # one process: identity
    torch.Size([2, 3])
    """
    if get_world_size() == 1:
        return x
    known = _PREGATHERED.get()
    if known is not None:
        entry = known.get(id(x))
        if entry is not None and entry[0] is x:
            return entry[1]()
    return _AllGatherWithGrad.apply(x)


@contextlib.contextmanager
def pregathered(pairs: Sequence[tuple[Tensor, Callable[[], Tensor]]]) -> Iterator[None]:
    """Within the block, ``all_gather_with_grad(local)`` returns ``gathered()`` for every
    registered ``(local, gathered)`` pair (matched by tensor identity) instead of gathering again.

    This is how several losses share one gather: e.g. Matryoshka registers each prefix view
    ``z[:, :d]`` of its embeddings ``z: (B, D)`` with a callable returning the same prefix of one
    gather ``(W*B, D)`` of ``z`` (run on first use), and every prefix loss reads its keys from
    that one gather. The gradient stays exact: the prefix gradients add up on the one gathered
    tensor, whose backward all-reduces them once. ``gathered()`` must return what
    :func:`all_gather_with_grad` of ``local`` would. Being a callable, the shared gather runs
    only if a loss asks for it: a loss that gathers a concatenation of its inputs instead (like
    NT-Xent) costs no extra collective.

    >>> z = torch.randn(4, 8)
    >>> view = z[:, :2]
    >>> with pregathered([(view, lambda: view)]):
    ...     all_gather_with_grad(view) is view
    True
    """
    previous = _PREGATHERED.get()
    table = dict(previous or {})
    table.update({id(local): (local, gathered) for local, gathered in pairs})
    token = _PREGATHERED.set(table)
    try:
        yield
    finally:
        _PREGATHERED.reset(token)


@torch.no_grad()
def all_gather(x: Tensor) -> Tensor:
    """All-gather without gradient along dim 0, for labels, ids and masks (any dtype, bool too).

    >>> all_gather(torch.tensor([1, 2]))
    tensor([1, 2])
    """
    if get_world_size() == 1:
        return x
    world = get_world_size()
    send = x.to(torch.uint8) if x.dtype == torch.bool else x  # gloo has no bool collectives
    send = send.contiguous()
    parts = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(parts, send)
    out = torch.cat(parts, dim=0)
    return out.bool() if x.dtype == torch.bool else out


_REDUCE_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


@torch.no_grad()
def all_reduce_(x: Tensor, op: str = "sum", group: Any = None) -> Tensor:
    """All-reduce ``x`` in place over the ranks (``op``: ``"sum"``, ``"max"``, ``"min"``) and
    return it; one process: ``x`` unchanged. The library's loose collectives (Sinkhorn's
    balance, DINO's centre, the streaming monitors) all go through here.

    >>> all_reduce_(torch.tensor([1.0, 2.0]), "max")
    tensor([1., 2.])
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"op must be one of {sorted(_REDUCE_OPS)}, got {op!r}.")
    if not is_distributed() or dist.get_world_size(group) == 1:
        return x
    dist.all_reduce(x, op=getattr(dist.ReduceOp, _REDUCE_OPS[op]), group=group)
    return x


def _all_reduce_sum(x: Tensor) -> Tensor:
    if get_world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def _finish(local_sum: Tensor, n_valid_global: int | Tensor, reduction: str) -> Tensor:
    """Per-rank value whose mean over ranks is the global ``mean`` / ``sum``.

    ``mean``: local sum * W / (number of valid anchors on all ranks), which is the mean over the
    local anchors when every anchor is valid; ``sum``: W * local sum.
    """
    world = get_world_size()
    if reduction == "sum":
        return local_sum * world
    return local_sum * world / max(int(n_valid_global), 1)


def _check_negatives(negatives: Tensor, query: Tensor) -> None:
    check_embeddings("negatives", negatives, ndim=(2, 3))
    if negatives.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"negatives must have embedding dimension {query.shape[-1]} like query, got shape "
            f"{tuple(negatives.shape)}."
        )
    if negatives.ndim == 3 and negatives.shape[0] != query.shape[0]:
        raise ValueError(
            f"per-query negatives must have shape (B, M, D) with B={query.shape[0]} like query, "
            f"got {tuple(negatives.shape)}; pass (M, D) to share negatives across queries."
        )
    if negatives.dtype != query.dtype:
        raise TypeError(
            f"negatives must have dtype {query.dtype} like query, got {negatives.dtype}."
        )


def _check_pair_labels(
    q_name: str, q: Tensor | None, k_name: str, k: Tensor | None, b: int
) -> None:
    if (q is None) != (k is None):
        raise ValueError(
            f"{q_name} and {k_name} go together, got only {q_name if q is not None else k_name}; "
            "pass both (the same tensor when the queries are the keys)."
        )
    if q is not None:
        check_labels(q_name, q, b, what="query")
        check_labels(k_name, k, b, what="key")


def _check_global_mask(name: str, mask: Tensor, shape: tuple[int, int], world: int) -> None:
    try:
        check_mask(name, mask, shape)
    except ValueError as err:
        raise ValueError(
            f"{err} With gather_distributed=True on W={world} ranks a mask has this rank's B "
            "query rows against the columns of ALL ranks (W*B keys, then the gathered "
            "negatives); build it from gathered ids, e.g. ids[:, None] == all_gather(ids)[None, :], "
            "or pass query_ids/key_ids instead."
        ) from None


def info_nce_distributed(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float | Tensor,
    metric: str = "cosine",
    symmetric: bool = False,
    positive_mask: Tensor | None = None,
    ignore_mask: Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    query_labels: Tensor | None = None,
    key_labels: Tensor | None = None,
    query_ids: Tensor | None = None,
    key_ids: Tensor | None = None,
) -> Tensor:
    """InfoNCE of the local queries against the keys of all ranks.

    Same loss as :func:`contrastkit.functional.info_nce` on the concatenated global batch (see
    the module docstring for the gradient contract), computed by the same engine
    (:func:`contrastkit.functional.engine.softmax_contrastive`, dense or chunked).

    Each rank computes only its row block, the local queries against the W*B gathered keys
    (B x W*B logits, 1/W of the global batch's), in both directions. With ``symmetric=True`` the
    key -> query loss of global key ``j`` is a log-sum-exp over the queries of *all* ranks: each
    rank computes its block's column statistics (column max / sum of exponentials, positive
    logits and their count), they are all-reduced (:func:`all_reduce_`: a max of (W*B,), then a
    sum of (3, W*B)) and the rank holding key ``j`` reports its column loss; in the backward pass
    the (W*B,) column gradient is all-reduced and every rank backpropagates its own rows' share
    (to the local queries, and to the gathered keys through :func:`all_gather_with_grad`). No
    query gather, no gathered masks, memory linear as in the engine
    (:class:`contrastkit.functional.engine.RowShards`). Every option takes this path; every
    rank must compute the loss and run its backward pass (collectives on both). On one process
    the two directions are two problems, as before.

    Args:
        query: (B, D) local queries.
        key: (B, D) local keys, row i the positive of query i (global key ``rank * B + i``).
        negatives: (M, D) shared extra negatives of this rank (hard negatives, this rank's queue):
            they are gathered, so every query sees all W * M; or (B, M, D) per-query negatives,
            which stay local. Candidates are ``[W*B keys, then W*M (or M) negatives]``.
        temperature: > 0.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        symmetric: also the key -> query direction: each local key against the queries of all
            ranks (over the W*B keys only, never the negatives); the per-anchor loss is the mean
            of the two directions.
        positive_mask: (B, W*B) bool, extra positives: local query rows against global key
            columns (this rank's rows of the global (W*B, W*B) mask).
        ignore_mask: (B, W*B + M') bool with M' = W*M (shared) or M (per-query): local rows
            against global candidates. Ids are usually simpler (below).
        reduction: ``"mean"`` (the local mean; its mean over ranks is the global loss),
            ``"sum"`` (W * local sum) or ``"none"`` ((B,): this rank's rows of the global
            per-anchor loss).
        chunk_size: None (automatic) or query rows per block of the memory-linear engine.
        query_labels: (B,) and key_labels: (B,) local labels (gathered): keys sharing a query's
            label are extra positives.
        query_ids: (B,) and key_ids: (B,) local ids (gathered): keys of another rank or this one
            sharing a query's id are ignored (duplicates / false negatives).

    Returns:
        Scalar, or (B,) with ``reduction="none"``: float64 for float64 inputs, else float32 (half
        inputs: the loss in float32, as the single-process path).

    >>> g = torch.Generator().manual_seed(0)
    >>> q, k = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    >>> from contrastkit.functional import info_nce
    >>> one = info_nce_distributed(q, k, temperature=0.1)
    >>> bool(torch.isclose(one, info_nce(q, k, temperature=0.1)))
    True
    """
    metric, reduction = check_paired_loss_inputs(
        "query", query, "key", key, temperature=temperature, metric=metric, reduction=reduction
    )
    b = query.shape[0]
    _check_pair_labels("query_labels", query_labels, "key_labels", key_labels, b)
    _check_pair_labels("query_ids", query_ids, "key_ids", key_ids, b)
    check_same_batch_size("query", b)
    world, rank = get_world_size(), get_rank()
    n = world * b
    all_key = all_gather_with_grad(key)  # (W*B, D) rank-major
    if negatives is not None:
        _check_negatives(negatives, query)
        if negatives.ndim == 2:
            check_same_batch_size("negatives", negatives.shape[0])
            negatives = all_gather_with_grad(negatives)  # (W*M, D), after the W*B keys
    m = 0 if negatives is None else negatives.shape[-2]
    if positive_mask is not None:
        _check_global_mask("positive_mask", positive_mask, (b, n), world)
    if ignore_mask is not None:
        _check_global_mask("ignore_mask", ignore_mask, (b, n + m), world)
    all_key_labels = None if key_labels is None else all_gather(key_labels)  # (W*B,)
    all_key_ids = None if key_ids is None else all_gather(key_ids)  # (W*B,)
    # Symmetric on W > 1 ranks: only this rank's row block (B, W*B); the key -> query direction
    # of every global key combines the blocks' column statistics over the ranks (RowShards).
    shards = RowShards(rank * b, all_reduce_) if symmetric and world > 1 else None
    forward = ContrastiveProblem(
        query,
        all_key,
        negatives,
        positive_offset=rank * b,
        query_labels=query_labels,
        key_labels=all_key_labels,
        query_ids=query_ids,
        key_ids=all_key_ids,
        positive_mask=positive_mask,
        ignore_mask=ignore_mask,
        symmetric=shards is not None,
        row_shards=shards,
    )
    two_blocks = symmetric and shards is None  # W = 1: the two directions as two problems
    inner = "none" if (reduction == "none" or two_blocks) else "sum"
    loss = softmax_contrastive(
        forward, temperature=temperature, metric=metric, chunk_size=chunk_size, reduction=inner
    )
    if two_blocks:
        # W = 1 (the gathers are identities): key -> query as a second problem, the keys
        # against the queries with the transposed masks, unchanged from before RowShards.
        own = torch.arange(b, device=query.device) + rank * b  # global columns of local keys
        backward = ContrastiveProblem(
            key,
            all_gather_with_grad(query),  # (W*B, D)
            positive_offset=rank * b,
            query_labels=key_labels,
            key_labels=None if query_labels is None else all_gather(query_labels),
            query_ids=key_ids,
            key_ids=None if query_ids is None else all_gather(query_ids),
            positive_mask=None
            if positive_mask is None
            else all_gather(positive_mask)[:, own].T.contiguous(),  # (B, W*B)
            ignore_mask=None
            if ignore_mask is None
            else all_gather(ignore_mask[:, :n])[:, own].T.contiguous(),  # (B, W*B)
        )
        loss_t = softmax_contrastive(
            backward,
            temperature=temperature,
            metric=metric,
            chunk_size=chunk_size,
            reduction="none",
        )
        loss = 0.5 * (loss + loss_t)  # (B,)
    if reduction == "none":
        return loss
    # Every anchor has its designated positive, so all W*B anchors are valid.
    return _finish(loss.sum() if loss.ndim else loss, n, reduction).to(compute_dtype(query.dtype))


def nt_xent_distributed(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float | Tensor,
    metric: str = "cosine",
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """NT-Xent with the views of all ranks as candidates.

    The 2B local views are anchors; the candidates are the 2 W B views of all ranks (the anchor
    itself removed), and the positive of ``z1[i]`` is its partner ``z2[i]``. Same loss as
    :func:`contrastkit.functional.nt_xent` on the global batch.

    Args:
        z1: (B, D) first views.
        z2: (B, D) second views.
        temperature: > 0.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        reduction: ``"mean"``, ``"sum"`` (W * local sum) or ``"none"`` ((2B,): local z1 rows then
            local z2 rows).
        chunk_size: None (automatic) or query rows per block of the memory-linear engine.

    >>> from contrastkit.functional import nt_xent
    >>> z = torch.randn(4, 8)
    >>> bool(torch.isclose(nt_xent_distributed(z, z + 0.1, temperature=0.5),
    ...                    nt_xent(z, z + 0.1, temperature=0.5)))
    True
    """
    metric, reduction = check_paired_loss_inputs(
        "z1", z1, "z2", z2, temperature=temperature, metric=metric, reduction=reduction
    )
    b = z1.shape[0]
    check_same_batch_size("z1", b)
    world, rank = get_world_size(), get_rank()
    anchors = torch.cat([z1, z2], dim=0)  # (2B, D): this rank's block of the candidates
    candidates = all_gather_with_grad(anchors)  # (2WB, D): [z1_r; z2_r] for r = 0..W-1
    # The partner of a view is the other view of the same example: label = global example index.
    example = torch.arange(b, device=z1.device) + rank * b
    labels = torch.cat([example, example])  # (2B,)
    problem = ContrastiveProblem(
        anchors,
        candidates,
        positive_offset=None,
        self_offset=2 * b * rank,  # anchor j is candidate 2 B rank + j
        query_labels=labels,
        key_labels=all_gather(labels),  # (2WB,)
    )
    inner = "none" if reduction == "none" else "sum"
    loss = softmax_contrastive(
        problem, temperature=temperature, metric=metric, chunk_size=chunk_size, reduction=inner
    )
    if reduction == "none":
        return loss
    return _finish(loss, 2 * world * b, reduction).to(compute_dtype(z1.dtype))


def supervised_contrastive_distributed(
    embeddings: Tensor,
    labels: Tensor,
    *,
    temperature: float | Tensor,
    metric: str = "cosine",
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """Supervised contrastive loss with the examples (and labels) of all ranks as candidates.

    Same loss as :func:`contrastkit.functional.supervised_contrastive` on the global batch. The
    ``"mean"`` is over the valid anchors (with at least one positive) of *all* ranks: each rank
    returns its local sum * W / global valid count, whose mean over ranks is the global loss.

    Args:
        embeddings: (B, D) or (B, V, D) local examples.
        labels: (B,) integer labels, gathered with the embeddings.
        temperature: > 0.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` ((V*B,) local anchors, view-major; 0 for
            anchors without a positive).
        chunk_size: None (automatic) or query rows per block of the memory-linear engine.

    >>> from contrastkit.functional import supervised_contrastive
    >>> x, y = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    >>> bool(torch.isclose(supervised_contrastive_distributed(x, y, temperature=0.2),
    ...                    supervised_contrastive(x, y, temperature=0.2)))
    True
    """
    check_embeddings("embeddings", embeddings, ndim=(2, 3))
    check_labels("labels", labels, embeddings.shape[0])
    check_temperature(temperature)
    metric = check_metric(metric)
    reduction = check_reduction(reduction)
    check_same_batch_size("embeddings", embeddings.shape[0])
    rank = get_rank()
    z, lab = _flatten_views(embeddings, labels)  # (V*B, D), (V*B,) local anchors, view-major
    n_local = z.shape[0]
    all_z = all_gather_with_grad(z)  # (W*V*B, D): each rank's flattened block in turn
    all_lab = all_gather(lab)  # (W*V*B,)
    problem = ContrastiveProblem(
        z,
        all_z,
        positive_offset=None,
        self_offset=n_local * rank,  # anchor j is candidate V B rank + j
        query_labels=lab,
        key_labels=all_lab,
    )
    inner = "none" if reduction == "none" else "sum"
    loss = softmax_contrastive(
        problem, temperature=temperature, metric=metric, chunk_size=chunk_size, reduction=inner
    )
    if reduction == "none":
        return loss
    # Valid anchors of all ranks, from the gathered labels: a label seen at least twice.
    _, inverse, counts = torch.unique(all_lab, return_inverse=True, return_counts=True)
    n_valid = int((counts[inverse] > 1).sum())
    return _finish(loss, n_valid, reduction).to(compute_dtype(embeddings.dtype))


def _flatten_views(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(B, V, D) -> (V*B, D) view-major, labels repeated to (V*B,); (B, D) passes through."""
    if embeddings.ndim == 2:
        return embeddings, labels
    b, v, d = embeddings.shape
    return embeddings.transpose(0, 1).reshape(v * b, d), labels.repeat(v)  # (V*B, D), (V*B,)


def sigmoid_contrastive_distributed(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor,
    bias: float | Tensor,
    metric: str = "cosine",
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> Tensor:
    """SigLIP's pairwise sigmoid loss over all pairs of the global batch.

    Local rows of ``a`` against the ``b`` of all ranks: every global pair is computed on exactly
    one rank. The B x W*B logits are processed one rank block at a time (chunked within a block
    by the engine); an off-diagonal block has no positive, and its rows are the diagonal-block
    formula plus ``l_ii`` since ``softplus(x) - softplus(-x) = x``. Same loss as
    :func:`contrastkit.functional.sigmoid_contrastive` on the global batch.

    Args:
        a: (B, D) local rows.
        b: (B, D) local columns, gathered.
        temperature: > 0.
        bias: float or scalar tensor.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.
        reduction: ``"mean"`` (local sum over pairs / B), ``"sum"`` (W * local sum) or ``"none"``
            ((B,) per local row of ``a``, summed over the W*B columns).
        chunk_size: None (automatic) or rows of ``a`` per block of the chunked path.

    >>> from contrastkit.functional import sigmoid_contrastive
    >>> x = torch.randn(4, 3)
    >>> bool(torch.isclose(sigmoid_contrastive_distributed(x, x, temperature=0.1, bias=-2.0),
    ...                    sigmoid_contrastive(x, x, temperature=0.1, bias=-2.0)))
    True
    """
    check_embeddings("a", a)
    check_embeddings("b", b)
    check_pair("a", a, "b", b)
    check_temperature(temperature)
    if isinstance(bias, Tensor):
        if bias.numel() != 1:
            raise ValueError(f"bias tensor must have one element, got shape {tuple(bias.shape)}.")
    elif not isinstance(bias, (int, float)) or isinstance(bias, bool):
        raise TypeError(f"bias must be a float or a scalar tensor, got {type(bias).__name__}.")
    metric = check_metric(metric)
    reduction = check_reduction(reduction)
    n = a.shape[0]
    check_same_batch_size("a", n)
    world, rank = get_world_size(), get_rank()
    dtype = compute_dtype(a.dtype)
    all_b = all_gather_with_grad(b)  # (W*B, D)
    per_row = torch.zeros(n, dtype=dtype, device=a.device)
    for r in range(world):
        block = all_b[r * n : (r + 1) * n]  # (B, D): the columns of rank r
        rows = sigmoid_contrastive_rows(
            a, block, temperature=temperature, bias=bias, metric=metric, chunk_size=chunk_size
        )  # (B,), positive on the diagonal
        if r != rank:  # no positive in this block: turn the diagonal term into a negative one
            diag = paired_similarity_unchecked(a.to(dtype), block.to(dtype), metric)
            rows = rows + diag / temperature + bias
        per_row = per_row + rows
    if reduction == "none":
        return per_row.to(compute_dtype(a.dtype))
    return _finish(per_row.sum(), world * n, reduction).to(compute_dtype(a.dtype))


class GlobalBatchLoss(torch.nn.Module):
    """A loss that needs every row of the global batch at once, under ``torch.distributed``.

    For losses that declare ``distributed = "global_batch"`` (batch statistics such as VICReg's
    covariance or Barlow Twins' cross-correlation, in-batch triplet mining): every tensor input
    is gathered with :func:`all_gather_with_grad` and the loss is computed on the global batch
    on every rank. Each rank's backward then carries ``W`` times the gradient of its own rows
    (the gather's backward sums the ranks' identical losses), so after DistributedDataParallel
    averages the ranks' parameter gradients they equal the single-process global-batch
    gradient exactly. The work is the whole batch's on every rank; the softmax losses avoid that
    with ``gather_distributed=True`` (local rows against gathered columns).

    Without a process group it is the loss itself.

    >>> from contrastkit.losses import create_loss
    >>> loss = GlobalBatchLoss(create_loss("vicreg"))
    >>> z = torch.randn(8, 4)
    >>> bool(torch.isclose(loss(z, z + 0.1), create_loss("vicreg")(z, z + 0.1)))
    True
    """

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, *inputs: Tensor, **kwargs: Any) -> Tensor:
        if get_world_size() == 1:
            return self.loss(*inputs, **kwargs)
        for i, x in enumerate(inputs):
            check_same_batch_size(f"input {i}", x.shape[0])
        gathered = [all_gather_with_grad(x) if x.requires_grad else all_gather(x) for x in inputs]
        return self.loss(*gathered, **kwargs)
