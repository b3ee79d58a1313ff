"""Softmax and sigmoid contrastive objectives.

Shape notation (used across contrastkit): B batch, V views, D embedding dim, M extra negatives,
N corpus, Q queries, K neighbours.

All softmax losses here go through one engine (:mod:`contrastkit.functional.engine`), compute the
softmax in float32 (float64 for float64 inputs) and return the loss in that dtype: a
half-precision (bf16 / fp16) batch gets a float32 loss and gradients in its own dtype.

Each loss has one code path for a local and a distributed batch. ``group`` names the
``torch.distributed`` process group whose ranks hold the rest of the batch (e.g.
:func:`contrastkit.collectives.world_group`); the local queries are compared with the keys of
all its ranks, gathered by :mod:`contrastkit.collectives` (the identity with ``group=None``, the
default, or a single process). On W ranks with a local batch of B, the candidates are rank-major
(the W*B keys, then the gathered shared negatives), masks are this rank's B rows against those
global columns, and a rank returns its share of the global loss: the ``"mean"`` over ranks of
the per-rank values, and the gradients DDP averages, are exactly those of the single-process
loss on the concatenated global batch (:mod:`contrastkit.distributed` states the contract).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

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
from contrastkit.collectives import Ranks
from contrastkit.functional.engine import (
    NO_ROLES,
    ContrastiveProblem,
    KeyRoles,
    RowShards,
    compute_dtype,
    reduce_valid,
    sigmoid_contrastive_rows,
    softmax_contrastive,
)
from contrastkit.functional.precision import own_precision
from contrastkit.functional.ring import (
    check_collective,
    ring_reduce,
    ring_softmax_contrastive,
    use_ring,
)
from contrastkit.functional.similarity import (
    check_metric,
    check_paired_loss_inputs,
    paired_similarity_unchecked,
)

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = [
    "KeyRoles",
    "info_nce",
    "nt_xent",
    "reduce_valid",
    "sigmoid_contrastive",
    "supervised_contrastive",
]


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


@own_precision("half")
def info_nce(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float | Tensor,
    metric: str = "cosine",
    symmetric: bool = False,
    roles: KeyRoles | None = None,
    reduction: str = "mean",
    group: ProcessGroup | None = None,
    collective: str = "auto",
) -> Tensor:
    """InfoNCE with in-batch negatives (van den Oord et al. 2018, https://arxiv.org/abs/1807.03748).

    Key ``i`` is the positive of query ``i``; every other key is an in-batch negative, and any
    ``negatives`` join the candidates after the B keys. For anchor ``i`` with positives ``P(i)``::

        loss_i = -1/|P(i)| sum_{p in P(i)} log softmax_p(s(q_i, c) / temperature)

    over the non-ignored candidates ``c``. With ``symmetric=True`` the key -> query direction over
    the in-batch block is added and the two are averaged: the CLIP loss (Radford et al. 2021,
    https://arxiv.org/abs/2103.00020). Extra negatives only enter the query -> key direction.

    Related: :func:`nt_xent` is InfoNCE over 2B views with the partner as key;
    :func:`supervised_contrastive` takes positives from labels; :func:`sigmoid_contrastive` replaces
    the softmax by independent binary terms; ``MultipleNegativesRankingLoss`` of
    sentence-transformers is ``info_nce(metric="cosine")`` with ``temperature = 1 / scale``.

    Args:
        query: (B, D) query embeddings.
        key: (B, D) key embeddings, row i the positive of query i.
        negatives: optional extra negatives, (M, D) shared by all queries (hard negatives, a
            queue) or (B, M, D) per query. Logits are (B, B + M).
        temperature: > 0, float or scalar tensor (e.g. a learnable temperature).
        metric: ``"cosine"`` (default), ``"dot"`` or ``"euclidean"``.
        symmetric: average with the key -> query direction.
        roles: which other keys are positives and which candidates are ignored
            (:class:`~contrastkit.functional.engine.KeyRoles`): ``positive_mask`` (B, B) extra
            positives (the diagonal always is one), ``ignore_mask`` (B, B + M) dropped
            candidates (known false negatives; positives are never dropped), labels
            ``query_labels`` / ``key_labels`` (B,) (shared label = positive) and ids
            ``query_ids`` / ``key_ids`` (B,) (shared id = ignored), without a dense mask.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (one value per anchor, shape (B,)).
            With a ``group``: this rank's share, whose mean over the ranks is the global
            ``"mean"`` / ``"sum"`` (``"none"``: this rank's rows of the global per-anchor loss).
        group: the ``torch.distributed`` process group whose ranks hold the rest of the
            batch (e.g. :func:`contrastkit.collectives.world_group`): the local queries against
            the keys (and shared negatives, labels, ids) gathered from all its ranks, masks as
            the local rows against those global columns, per-query negatives local; see the
            module docstring. None (default) or a single process: this batch alone.
        collective: how a ``group``'s keys reach this rank: ``"gather"`` (all-gather them),
            ``"ring"`` (pass them around the ranks; no rank holds all W*B keys,
            :mod:`contrastkit.functional.ring`) or ``"auto"`` (default: the ring from
            :data:`~contrastkit.functional.ring.RING_MIN_GATHERED_BYTES` of gathered keys).
            The same value and gradients either way.

    Returns:
        Scalar loss, or (B,) with ``reduction="none"``: float64 for float64 ``query``, float32
        otherwise (also for bf16 / fp16).

    >>> g = torch.Generator().manual_seed(0)
    >>> q = torch.randn(8, 16, generator=g)
    >>> float(info_nce(q, q, temperature=0.1)) < 0.01
    True
    >>> same = torch.ones(8, 16)
    >>> round(float(info_nce(same, same, temperature=0.1)), 4)  # log B: nothing to tell apart
    2.0794
    >>> ids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])  # query 7 repeats query 0's document
    >>> float(info_nce(q, q, temperature=0.1, roles=KeyRoles(query_ids=ids, key_ids=ids))) < 0.01
    True

    The memory-linear chunked path is the engine's choice (automatic beyond 2**22 logits);
    ``with contrastkit.functional.tiling(chunk_size=256):`` forces it, with the same value and
    gradients.
    """
    metric, reduction = check_paired_loss_inputs(
        "query", query, "key", key, temperature=temperature, metric=metric, reduction=reduction
    )
    b = query.shape[0]
    roles = NO_ROLES if roles is None else roles
    if not isinstance(roles, KeyRoles):
        raise TypeError(
            f"roles must be a KeyRoles or None, got {type(roles).__name__}; e.g. "
            "roles=KeyRoles(ignore_mask=mask) or KeyRoles(query_ids=ids, key_ids=ids)."
        )
    for name in ("query_labels", "key_labels", "query_ids", "key_ids"):
        if getattr(roles, name) is not None:  # local (B,) before the keys' are gathered
            check_labels(name, getattr(roles, name), b, what=name.split("_")[0])
    collective = check_collective(collective)
    ranks = Ranks.of(group)
    ranks.check_same_batch_size("query", b)
    n = ranks.world * b
    shared = 0
    if negatives is not None:
        _check_negatives(negatives, query)
        if negatives.ndim == 2:
            ranks.check_same_batch_size("negatives", negatives.shape[0])
            shared = negatives.shape[0]
    m = 0 if negatives is None else (ranks.world * shared or negatives.shape[-2])
    if roles.positive_mask is not None:
        _check_global_mask("positive_mask", roles.positive_mask, (b, n), ranks.world)
    if roles.ignore_mask is not None:
        _check_global_mask("ignore_mask", roles.ignore_mask, (b, n + m), ranks.world)
    if use_ring(collective, ranks, b, query.shape[1], query.dtype, shared):
        loss, valid = ring_softmax_contrastive(
            query,
            key,
            negatives,
            ranks=ranks,
            temperature=temperature,
            metric=metric,
            roles=roles,
            symmetric=symmetric,
        )
        loss = ring_reduce(loss, valid, reduction)
        return _share(loss, n, reduction, ranks).to(compute_dtype(query.dtype))
    all_key = ranks.gather_with_grad(key)  # (W*B, D) rank-major
    if shared:
        negatives = ranks.gather_with_grad(negatives)  # (W*M, D), after the W*B keys
    # Symmetric on W > 1 ranks: only this rank's row block (B, W*B); the key -> query direction
    # of every global key combines the blocks' column statistics over the ranks (RowShards).
    shards = RowShards(ranks.rank * b, ranks.all_reduce_) if symmetric and ranks.world > 1 else None
    problem = ContrastiveProblem(
        query,
        all_key,
        negatives,
        positive_offset=ranks.rank * b,
        roles=replace(  # the keys' labels and ids travel with the keys: (W*B,)
            roles,
            key_labels=None if roles.key_labels is None else ranks.gather(roles.key_labels),
            key_ids=None if roles.key_ids is None else ranks.gather(roles.key_ids),
        ),
        symmetric=symmetric,
        row_shards=shards,
    )
    loss = softmax_contrastive(
        problem,
        temperature=temperature,
        metric=metric,
        reduction="none" if reduction == "none" else "sum",
    )
    # Every anchor has its designated positive, so all W*B anchors are valid.
    return _share(loss, n, reduction, ranks).to(compute_dtype(query.dtype))


@own_precision("half")
def nt_xent(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float | Tensor,
    metric: str = "cosine",
    reduction: str = "mean",
    group: ProcessGroup | None = None,
    collective: str = "auto",
) -> Tensor:
    """NT-Xent, the SimCLR loss (Chen et al. 2020, https://arxiv.org/abs/2002.05709).

    The 2B views ``z = [z1; z2]`` are all anchors; the positive of view ``i`` is its partner
    (``z1[i]`` <-> ``z2[i]``) and the other 2B - 2 views are negatives (self excluded)::

        loss_i = -log( exp(s(z_i, z_partner)/t) / sum_{j != i} exp(s(z_i, z_j)/t) )

    averaged over the 2B anchors. It is :func:`info_nce` with ``query = [z1; z2]``,
    ``key = [z2; z1]`` and each view's own row ignored; with labels it generalises to
    :func:`supervised_contrastive`. Matches pytorch-metric-learning's ``NTXentLoss``.

    Args:
        z1: (B, D) first views.
        z2: (B, D) second views, row i the same example as ``z1[i]``.
        temperature: > 0, float or scalar tensor.
        metric: ``"cosine"`` (default), ``"dot"`` or ``"euclidean"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` ((2B,) per view: z1 rows then z2 rows).
        group: the process group whose ranks hold the rest of the batch (see
            :func:`info_nce`); None (default): this batch alone.
        collective: ``"gather"``, ``"ring"`` or ``"auto"`` (default), see :func:`info_nce`.

    Returns:
        Scalar loss, or (2B,) with ``reduction="none"``.

    >>> same = torch.ones(4, 8)
    >>> round(float(nt_xent(same, same, temperature=0.5)), 4)  # log(2B - 1)
    1.9459
    """
    metric, reduction = check_paired_loss_inputs(
        "z1", z1, "z2", z2, temperature=temperature, metric=metric, reduction=reduction
    )
    b = z1.shape[0]
    collective = check_collective(collective)
    ranks = Ranks.of(group)
    ranks.check_same_batch_size("z1", b)
    anchors = torch.cat([z1, z2], dim=0)  # (2B, D): this rank's block of the candidates
    if use_ring(collective, ranks, 2 * b, z1.shape[1], z1.dtype):
        example = torch.arange(b, device=z1.device) + ranks.rank * b
        labels = torch.cat([example, example])  # (2B,): a view's partner shares its example
        loss, valid = ring_softmax_contrastive(
            anchors,
            anchors,
            ranks=ranks,
            temperature=temperature,
            metric=metric,
            own="self",
            roles=KeyRoles(query_labels=labels, key_labels=labels),
        )
        loss = ring_reduce(loss, valid, reduction)
        return _share(loss, 2 * ranks.world * b, reduction, ranks).to(compute_dtype(z1.dtype))
    candidates = ranks.gather_with_grad(anchors)  # (2WB, D): [z1_r; z2_r] for r = 0..W-1
    if ranks.world == 1:
        # The partner of anchor i is z[(i + B) mod 2B]: an index, no labels to compare.
        partners: dict[str, object] = {"positive_offset": b}
    else:
        # The ranks' blocks interleave, so no single offset reaches every partner: a view's
        # partner is the other view of the same example, label = the global example index.
        example = torch.arange(b, device=z1.device) + ranks.rank * b
        labels = torch.cat([example, example])  # (2B,)
        partners = {
            "positive_offset": None,
            "roles": KeyRoles(query_labels=labels, key_labels=ranks.gather(labels)),  # (2WB,)
        }
    problem = ContrastiveProblem(
        anchors,
        candidates,
        self_offset=2 * b * ranks.rank,  # anchor j is candidate 2 B rank + j
        **partners,  # type: ignore[arg-type]
    )
    loss = softmax_contrastive(
        problem,
        temperature=temperature,
        metric=metric,
        reduction="none" if reduction == "none" else "sum",
    )
    return _share(loss, 2 * ranks.world * b, reduction, ranks).to(compute_dtype(z1.dtype))


@own_precision("half")
def supervised_contrastive(
    embeddings: Tensor,
    labels: Tensor,
    *,
    temperature: float | Tensor,
    metric: str = "cosine",
    reduction: str = "mean",
    group: ProcessGroup | None = None,
    collective: str = "auto",
) -> Tensor:
    """Supervised contrastive loss, SupCon "outside" form (Khosla et al. 2020,
    https://arxiv.org/abs/2004.11362).

    Every other example with the same label is a positive; self is excluded from the softmax::

        loss_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip/t) / sum_{a != i} exp(s_ia/t) )

    Anchors without a positive are left out of the mean. If no anchor has a positive the result is
    a zero that still backpropagates (with a warning), never NaN. With one positive per anchor it
    is :func:`nt_xent`; matches pytorch-metric-learning's ``SupConLoss``.

    Args:
        embeddings: (B, D), or (B, V, D) with V views sharing the label of their example.
        labels: (B,) integer class labels.
        temperature: > 0, float or scalar tensor.
        metric: ``"cosine"`` (default), ``"dot"`` or ``"euclidean"``.
        reduction: ``"mean"`` (over valid anchors), ``"sum"`` or ``"none"`` ((B*V,), view-major:
            all first views, then all second views; 0 for anchors without a positive).
        group: the process group whose ranks hold the rest of the batch (see
            :func:`info_nce`); None (default): this batch alone.
        collective: ``"gather"``, ``"ring"`` or ``"auto"`` (default), see :func:`info_nce`.

    The positives come from the labels (never a dense (BV, BV) mask on the chunked path).

    Returns:
        Scalar loss, or per-anchor losses with ``reduction="none"``.

    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> round(float(supervised_contrastive(torch.ones(4, 3), labels, temperature=0.1)), 4)  # log 3
    1.0986
    """
    check_embeddings("embeddings", embeddings, ndim=(2, 3))
    check_labels("labels", labels, embeddings.shape[0])
    check_temperature(temperature)
    metric = check_metric(metric)
    reduction = check_reduction(reduction)
    collective = check_collective(collective)
    ranks = Ranks.of(group)
    ranks.check_same_batch_size("embeddings", embeddings.shape[0])
    z, lab = flatten_views(embeddings, labels)  # (V*B, D), (V*B,) local anchors, view-major
    if use_ring(collective, ranks, z.shape[0], z.shape[1], z.dtype):
        loss, valid = ring_softmax_contrastive(
            z,
            z,
            ranks=ranks,
            temperature=temperature,
            metric=metric,
            own="self",
            roles=KeyRoles(query_labels=lab, key_labels=lab),
        )
        loss = ring_reduce(loss, valid, reduction)
        if reduction == "none":
            return loss
        n_valid = ranks.all_reduce_(valid.sum().to(torch.long))  # valid anchors of all ranks
        return _share(loss, int(n_valid), reduction, ranks).to(compute_dtype(embeddings.dtype))
    all_lab = ranks.gather(lab)  # (W*V*B,)
    problem = ContrastiveProblem(
        z,
        ranks.gather_with_grad(z),  # (W*V*B, D): each rank's flattened block in turn
        positive_offset=None,
        self_offset=z.shape[0] * ranks.rank,  # anchor j is candidate V B rank + j
        roles=KeyRoles(query_labels=lab, key_labels=all_lab),
    )
    loss = softmax_contrastive(
        problem,
        temperature=temperature,
        metric=metric,
        reduction="none" if reduction == "none" else "sum",
    )
    if reduction == "none":
        return loss
    # Valid anchors of all ranks, from the gathered labels: a label seen at least twice.
    _, inverse, counts = torch.unique(all_lab, return_inverse=True, return_counts=True)
    n_valid = int((counts[inverse] > 1).sum())
    return _share(loss, n_valid, reduction, ranks).to(compute_dtype(embeddings.dtype))


def flatten_views(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(B, V, D) -> (V*B, D) view-major, labels repeated to (V*B,); (B, D) passes through."""
    if embeddings.ndim == 2:
        return embeddings, labels
    b, v, d = embeddings.shape
    z = embeddings.transpose(0, 1).reshape(v * b, d)  # (V*B, D): view 0 of all, then view 1 ...
    return z, labels.repeat(v)


@own_precision("half")
def sigmoid_contrastive(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float | Tensor,
    bias: float | Tensor,
    metric: str = "cosine",
    reduction: str = "mean",
    group: ProcessGroup | None = None,
) -> Tensor:
    """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023, https://arxiv.org/abs/2303.15343).

    Every pair (i, j) is an independent binary problem: logit ``s(a_i, b_j) / temperature + bias``
    with label +1 on the diagonal and -1 elsewhere::

        loss = -1/B sum_i sum_j log sigmoid(label_ij * logit_ij)

    Unlike :func:`info_nce` there is no softmax over the batch, so no global normalisation is
    needed across devices. SigLIP initialises ``temperature = 0.1`` and ``bias = -10``.

    Args:
        a: (B, D) e.g. image embeddings.
        b: (B, D) e.g. text embeddings, row i matching ``a[i]``.
        temperature: > 0, float or scalar tensor.
        bias: float or scalar tensor (learnable in SigLIP).
        metric: ``"cosine"`` (default), ``"dot"`` or ``"euclidean"``.
        reduction: ``"mean"`` (sum over pairs / B, as in the paper), ``"sum"`` (over all pairs) or
            ``"none"`` ((B,) per row of ``a``, summed over its B pairs).
        group: the process group whose ranks hold the rest of the batch (see
            :func:`info_nce`); None (default): this batch alone.

    >>> x = torch.eye(4)
    >>> round(float(sigmoid_contrastive(x, x, temperature=0.1, bias=-5.0)), 4)
    0.0269
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
    ranks = Ranks.of(group)
    ranks.check_same_batch_size("a", n)
    dtype = compute_dtype(a.dtype)
    all_b = ranks.gather_with_grad(b)  # (W*B, D)
    # Local rows of a against the b of every rank, one rank block at a time: every global pair
    # is computed on exactly one rank. An off-diagonal block has no positive; its rows are the
    # diagonal-block formula plus l_ii, since softplus(x) - softplus(-x) = x.
    per_row: Tensor | None = None
    for r in range(ranks.world):
        block = all_b[r * n : (r + 1) * n]  # (B, D): the columns of rank r
        rows = sigmoid_contrastive_rows(
            a, block, temperature=temperature, bias=bias, metric=metric
        )  # (B,), positive on the diagonal
        if r != ranks.rank:  # no positive in this block: turn the diagonal term into a negative
            diag = paired_similarity_unchecked(a.to(dtype), block.to(dtype), metric)
            rows = rows + diag / temperature + bias
        per_row = rows if per_row is None else per_row + rows
    assert per_row is not None  # world >= 1
    if reduction == "none":
        return per_row.to(dtype)
    total = per_row.sum()
    # "mean": the sum over pairs / B, as in the paper (its mean over ranks: the global one)
    return _share(total, n * ranks.world, reduction, ranks).to(dtype)


def _share(loss: Tensor, n_valid: int, reduction: str, ranks: Ranks) -> Tensor:
    """This rank's share of the global reduction, from its per-anchor ``loss`` ((B,), with
    ``"none"``, returned as is) or its sum over valid anchors (a scalar).

    The mean over the ranks of the returned values is the global ``"mean"`` (``n_valid``: the
    valid anchors of all ranks) or ``"sum"``: local sum * W / n_valid, or W * local sum. One
    process: the plain mean / sum.
    """
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss * ranks.world
    return loss * ranks.world / max(int(n_valid), 1)


def _check_global_mask(name: str, mask: Tensor, shape: tuple[int, int], world: int) -> None:
    """A mask has this rank's B rows against the columns of all ranks; hint at that when not."""
    try:
        check_mask(name, mask, shape)
    except ValueError as err:
        if world == 1:
            raise
        raise ValueError(
            f"{err} With a process group of W={world} ranks a mask has this rank's B "
            "query rows against the columns of ALL ranks (W*B keys, then the gathered "
            "negatives); build it from gathered ids, e.g. ids[:, None] == all_gather(ids)[None, :], "
            "or pass query_ids/key_ids instead."
        ) from None
