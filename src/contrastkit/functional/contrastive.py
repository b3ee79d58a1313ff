"""Softmax and sigmoid contrastive objectives.

Shape notation (used across contrastkit): B batch, V views, D embedding dim, M extra negatives,
N corpus, Q queries, K neighbours.

All softmax losses here go through one engine (:mod:`contrastkit.functional.engine`), compute the
softmax in float32 (float64 for float64 inputs) and return the loss in that dtype: a
half-precision (bf16 / fp16) batch gets a float32 loss and gradients in its own dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit._checks import (
    check_embeddings,
    check_labels,
    check_mask,
    check_pair,
    check_reduction,
    check_temperature,
    reduce,
)
from contrastkit.functional.engine import (
    ContrastiveProblem,
    compute_dtype,
    reduce_valid,
    sigmoid_contrastive_rows,
    softmax_contrastive,
)
from contrastkit.functional.precision import own_precision
from contrastkit.functional.similarity import check_metric, check_paired_loss_inputs

__all__ = [
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
    positive_mask: Tensor | None = None,
    ignore_mask: Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    query_labels: Tensor | None = None,
    key_labels: Tensor | None = None,
    query_ids: Tensor | None = None,
    key_ids: Tensor | None = None,
    gather_distributed: bool = False,
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
        positive_mask: (B, B) bool, extra positives among the keys (the diagonal always is one).
        ignore_mask: (B, B + M) bool, True drops a candidate from the softmax (known false
            negatives); positives are never dropped.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (one value per anchor, shape (B,)).
        chunk_size: None picks the path automatically (dense up to 2**22 logits, chunked
            beyond); an int forces the memory-linear chunked path with that many query rows
            per block. Both give the same value and gradients (:mod:`contrastkit.functional.engine`).
        query_labels: (B,) and key_labels: (B,) integer labels: keys sharing the query's label
            are extra positives, without a dense (B, B) mask.
        query_ids: (B,) and key_ids: (B,) integer ids: keys sharing the query's id that are not
            positives are ignored (duplicates / known false negatives), without a dense mask.
        gather_distributed: compute over all ranks of ``torch.distributed`` (local queries
            against the gathered keys, masks as local rows against global columns); see
            :mod:`contrastkit.distributed`. Without a process group it changes nothing.

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
    """
    if gather_distributed:
        from contrastkit.distributed import info_nce_distributed

        return info_nce_distributed(
            query,
            key,
            negatives,
            temperature=temperature,
            metric=metric,
            symmetric=symmetric,
            positive_mask=positive_mask,
            ignore_mask=ignore_mask,
            reduction=reduction,
            chunk_size=chunk_size,
            query_labels=query_labels,
            key_labels=key_labels,
            query_ids=query_ids,
            key_ids=key_ids,
        )
    metric, reduction = check_paired_loss_inputs(
        "query", query, "key", key, temperature=temperature, metric=metric, reduction=reduction
    )
    b = query.shape[0]
    m = 0
    if negatives is not None:
        _check_negatives(negatives, query)
        m = negatives.shape[-2]
    if positive_mask is not None:
        check_mask("positive_mask", positive_mask, (b, b))
    if ignore_mask is not None:
        check_mask("ignore_mask", ignore_mask, (b, b + m))
    problem = ContrastiveProblem(
        query,
        key,
        negatives,
        positive_offset=0,
        query_labels=query_labels,
        key_labels=key_labels,
        query_ids=query_ids,
        key_ids=key_ids,
        positive_mask=positive_mask,
        ignore_mask=ignore_mask,
        symmetric=symmetric,
    )
    return softmax_contrastive(
        problem, temperature=temperature, metric=metric, chunk_size=chunk_size, reduction=reduction
    )


@own_precision("half")
def nt_xent(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float | Tensor,
    metric: str = "cosine",
    reduction: str = "mean",
    chunk_size: int | None = None,
    gather_distributed: bool = False,
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
        chunk_size: None (automatic) or query rows per block of the chunked engine path.
        gather_distributed: compute over all ranks of ``torch.distributed`` (see
            :mod:`contrastkit.distributed`); without a process group it changes nothing.

    Returns:
        Scalar loss, or (2B,) with ``reduction="none"``.

    >>> same = torch.ones(4, 8)
    >>> round(float(nt_xent(same, same, temperature=0.5)), 4)  # log(2B - 1)
    1.9459
    """
    if gather_distributed:
        from contrastkit.distributed import nt_xent_distributed

        return nt_xent_distributed(
            z1,
            z2,
            temperature=temperature,
            metric=metric,
            reduction=reduction,
            chunk_size=chunk_size,
        )
    metric, reduction = check_paired_loss_inputs(
        "z1", z1, "z2", z2, temperature=temperature, metric=metric, reduction=reduction
    )
    b = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)  # (2B, D) anchors and keys at once
    # The positive of anchor i is its partner z[(i + B) mod 2B]; key i is anchor i itself.
    problem = ContrastiveProblem(z, z, positive_offset=b, self_offset=0)
    return softmax_contrastive(
        problem, temperature=temperature, metric=metric, chunk_size=chunk_size, reduction=reduction
    )


@own_precision("half")
def supervised_contrastive(
    embeddings: Tensor,
    labels: Tensor,
    *,
    temperature: float | Tensor,
    metric: str = "cosine",
    reduction: str = "mean",
    chunk_size: int | None = None,
    gather_distributed: bool = False,
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
        chunk_size: None (automatic) or query rows per block of the chunked engine path; the
            positives come from the labels per block, never as a dense (BV, BV) mask.
        gather_distributed: compute over all ranks of ``torch.distributed`` (see
            :mod:`contrastkit.distributed`); without a process group it changes nothing.

    Returns:
        Scalar loss, or per-anchor losses with ``reduction="none"``.

    >>> labels = torch.tensor([0, 0, 1, 1])
    >>> round(float(supervised_contrastive(torch.ones(4, 3), labels, temperature=0.1)), 4)  # log 3
    1.0986
    """
    if gather_distributed:
        from contrastkit.distributed import supervised_contrastive_distributed

        return supervised_contrastive_distributed(
            embeddings,
            labels,
            temperature=temperature,
            metric=metric,
            reduction=reduction,
            chunk_size=chunk_size,
        )
    check_embeddings("embeddings", embeddings, ndim=(2, 3))
    check_labels("labels", labels, embeddings.shape[0])
    check_temperature(temperature)
    metric = check_metric(metric)
    reduction = check_reduction(reduction)
    z, lab = flatten_views(embeddings, labels)  # (B*V, D), (B*V,)
    problem = ContrastiveProblem(
        z, z, positive_offset=None, self_offset=0, query_labels=lab, key_labels=lab
    )
    return softmax_contrastive(
        problem, temperature=temperature, metric=metric, chunk_size=chunk_size, reduction=reduction
    )


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
    chunk_size: int | None = None,
    gather_distributed: bool = False,
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
        chunk_size: None (automatic) or rows of ``a`` per block of the chunked path, which
            never holds the (B, B) logits.
        gather_distributed: compute over all ranks of ``torch.distributed`` (see
            :mod:`contrastkit.distributed`); without a process group it changes nothing.

    >>> x = torch.eye(4)
    >>> round(float(sigmoid_contrastive(x, x, temperature=0.1, bias=-5.0)), 4)
    0.0269
    """
    if gather_distributed:
        from contrastkit.distributed import sigmoid_contrastive_distributed

        return sigmoid_contrastive_distributed(
            a,
            b,
            temperature=temperature,
            bias=bias,
            metric=metric,
            reduction=reduction,
            chunk_size=chunk_size,
        )
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
    per_row = sigmoid_contrastive_rows(
        a, b, temperature=temperature, bias=bias, metric=metric, chunk_size=chunk_size
    )  # (B,)
    n = a.shape[0]
    out = per_row.sum() / n if reduction == "mean" else reduce(per_row, reduction)
    return out.to(compute_dtype(a.dtype))  # float32 for half inputs, like the softmax losses
