"""Margin and ranking objectives: triplet, pairwise contrastive, margin ranking, preferences.

These compare distances or scores against a margin instead of normalising over candidates with a
softmax. Similarity-space convention: with ``s`` the similarity of :mod:`similarity` (larger is
closer; for ``"euclidean"`` ``s = -distance``), a triplet term is ``max(0, s_an - s_ap + margin)``,
which for the Euclidean metric is the familiar ``max(0, d_ap - d_an + margin)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit._checks import (
    check_choice,
    check_embeddings,
    check_labels,
    check_pair,
    check_positive_number,
    check_reduction,
    check_tensor,
    reduce,
)
from contrastkit.functional.engine import compute_dtype
from contrastkit.functional.precision import own_precision
from contrastkit.functional.similarity import (
    check_metric,
    paired_similarity_unchecked,
    similarity_matrix_unchecked,
)

__all__ = [
    "contrastive_margin",
    "margin_ranking",
    "preference_loss",
    "triplet_loss",
    "triplet_margin",
]

MINING = ("batch_hard", "batch_semihard", "batch_all")
PREFERENCE_KINDS = ("logistic", "hinge")


def _check_margin(margin: object, *, allow_zero: bool = True) -> float:
    return check_positive_number("margin", margin, allow_zero=allow_zero)


@own_precision("float32")
def triplet_margin(
    embeddings: Tensor,
    labels: Tensor,
    *,
    margin: float,
    metric: str = "euclidean",
    mining: str = "batch_hard",
) -> Tensor:
    """Triplet margin loss over a labelled batch with online mining.

    A triplet (a, p, n) has ``label[a] == label[p]``, ``a != p`` and ``label[a] != label[n]``;
    its loss is ``max(0, s_an - s_ap + margin)`` (FaceNet, Schroff et al. 2015,
    https://arxiv.org/abs/1503.03832).

    - ``"batch_hard"`` (Hermans et al. 2017, https://arxiv.org/abs/1703.07737): per anchor, the
      hardest positive against the hardest negative; mean over anchors with at least one of each.
    - ``"batch_semihard"`` (FaceNet; TensorFlow Addons' semantics): per (a, p) pair, the closest
      negative that is farther than p; if none is, the farthest negative; mean over (a, p) pairs.
    - ``"batch_all"``: mean over every valid triplet (zero terms included).

    Matches pytorch-metric-learning's ``TripletMarginLoss`` with ``MeanReducer`` (and its
    ``BatchHardMiner`` for ``"batch_hard"``). Related: :func:`triplet_loss` for explicit triplets,
    :func:`supervised_contrastive` for the softmax counterpart.

    Args:
        embeddings: (B, D).
        labels: (B,) integer labels.
        margin: >= 0, in similarity units (distance units for ``"euclidean"``).
        metric: ``"euclidean"`` (default), ``"cosine"`` or ``"dot"``.
        mining: ``"batch_hard"``, ``"batch_semihard"`` or ``"batch_all"``.

    Returns:
        Scalar loss; a differentiable 0 when the batch has no valid triplet.

    >>> emb = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0]])
    >>> float(triplet_margin(emb, torch.tensor([0, 0, 1, 1]), margin=0.5))
    0.0
    >>> float(triplet_margin(emb, torch.tensor([0, 1, 0, 1]), margin=0.5))
    2.5
    """
    check_embeddings("embeddings", embeddings)
    check_labels("labels", labels, embeddings.shape[0])
    margin = _check_margin(margin)
    metric = check_metric(metric)
    mining = check_choice("mining", mining, MINING)
    sim = similarity_matrix_unchecked(embeddings, embeddings, metric)  # (B, B)
    n = embeddings.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    same = labels[:, None] == labels[None, :]
    pos = same & ~eye  # (B, B)
    neg = ~same  # (B, B)
    zero = embeddings.sum() * 0.0
    if mining == "batch_hard":
        valid = pos.any(1) & neg.any(1)
        if not bool(valid.any()):
            return zero
        inf = torch.finfo(sim.dtype).max
        hardest_pos = sim.masked_fill(~pos, inf).amin(dim=1)  # (B,) least similar positive
        hardest_neg = sim.masked_fill(~neg, -inf).amax(dim=1)  # (B,) most similar negative
        return F.relu(hardest_neg - hardest_pos + margin)[valid].mean()
    if mining == "batch_all":
        # (B, B, B): term [a, p, n]
        valid = pos[:, :, None] & neg[:, None, :]
        if not bool(valid.any()):
            return zero
        terms = F.relu(sim[:, None, :] - sim[:, :, None] + margin)
        return terms[valid].mean()
    # batch_semihard: per (a, p), negatives less similar than p (farther) are semi-hard candidates.
    if not bool(pos.any()) or not bool(neg.any()):
        return zero
    s_ap = sim[:, :, None]  # (B, B, 1) indexed [a, p]
    s_an = sim[:, None, :]  # (B, 1, B) indexed [a, n]
    farther = neg[:, None, :] & (s_an < s_ap)  # (B, B, B)
    neg_inf = torch.finfo(sim.dtype).min
    # closest negative that is still farther than p: the most similar among `farther`
    semi = torch.where(farther, s_an.expand_as(farther), neg_inf).amax(dim=2)  # (B, B)
    has_semi = farther.any(dim=2)
    # otherwise the farthest negative (least similar) of the anchor
    easiest = sim.masked_fill(~neg, -neg_inf).amin(dim=1)  # (B,)
    chosen = torch.where(has_semi, semi, easiest[:, None].expand_as(semi))  # (B, B)
    anchors_with_neg = neg.any(1)[:, None]
    pair_valid = pos & anchors_with_neg
    if not bool(pair_valid.any()):
        return zero
    return F.relu(chosen - sim + margin)[pair_valid].mean()


@own_precision("float32")
def triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    margin: float,
    metric: str = "euclidean",
    reduction: str = "mean",
) -> Tensor:
    """Triplet margin loss over explicit triplets: ``max(0, s(a, n) - s(a, p) + margin)``.

    With the Euclidean metric this equals ``torch.nn.functional.triplet_margin_loss`` (eps=0).
    Related: :func:`triplet_margin` mines triplets from a labelled batch.

    Args:
        anchor: (B, D).
        positive: (B, D).
        negative: (B, D).
        margin: >= 0.
        metric: ``"euclidean"`` (default), ``"cosine"`` or ``"dot"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` ((B,)).

    >>> a = torch.zeros(1, 2)
    >>> float(triplet_loss(a, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.5]]), margin=1.0))
    0.5
    """
    for name, x in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        check_embeddings(name, x)
    check_pair("anchor", anchor, "positive", positive)
    check_pair("anchor", anchor, "negative", negative)
    margin = _check_margin(margin)
    metric = check_metric(metric)
    reduction = check_reduction(reduction)
    s_ap = paired_similarity_unchecked(anchor, positive, metric)
    s_an = paired_similarity_unchecked(anchor, negative, metric)
    return reduce(F.relu(s_an - s_ap + margin), reduction)


@own_precision("float32")
def contrastive_margin(
    a: Tensor,
    b: Tensor,
    is_positive: Tensor,
    *,
    margin: float,
    metric: str = "euclidean",
    reduction: str = "mean",
) -> Tensor:
    """Pairwise contrastive (margin) loss (Hadsell, Chopra & LeCun 2006,
    http://yann.lecun.com/exdb/publis/pdf/hadsell-chopra-lecun-06.pdf).

    With distance ``d`` (Euclidean, or ``1 - cos`` for ``"cosine"``)::

        loss = d^2                    for positive pairs
        loss = max(0, margin - d)^2   for negative pairs

    averaged over pairs. pytorch-metric-learning's ``ContrastiveLoss`` uses the same hinge on the
    unsquared distance (and averages non-zero terms); :func:`triplet_loss` compares relative instead
    of absolute distances.

    Args:
        a: (B, D).
        b: (B, D), row i paired with ``a[i]``.
        is_positive: (B,) bool, True where the pair should be close.
        margin: > 0, the distance beyond which negatives cost nothing.
        metric: ``"euclidean"`` (default) or ``"cosine"`` (``"dot"`` has no distance).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` ((B,)).

    >>> a = torch.zeros(2, 2)
    >>> b = torch.tensor([[3.0, 4.0], [0.0, 0.5]])
    >>> contrastive_margin(a, b, torch.tensor([True, False]), margin=1.0, reduction="none")
    tensor([25.0000,  0.2500])
    """
    check_embeddings("a", a)
    check_embeddings("b", b)
    check_pair("a", a, "b", b)
    if not isinstance(is_positive, Tensor) or is_positive.dtype != torch.bool:
        raise TypeError(
            f"is_positive must be a bool tensor, got "
            f"{is_positive.dtype if isinstance(is_positive, Tensor) else type(is_positive).__name__}."
        )
    if tuple(is_positive.shape) != (a.shape[0],):
        raise ValueError(
            f"is_positive must have shape ({a.shape[0]},) to match a, got {tuple(is_positive.shape)}."
        )
    margin = _check_margin(margin, allow_zero=False)
    metric = check_choice("metric", metric, ("euclidean", "cosine"))
    reduction = check_reduction(reduction)
    s = paired_similarity_unchecked(a, b, metric)
    d = -s if metric == "euclidean" else 1.0 - s
    loss = torch.where(is_positive, d.pow(2), F.relu(margin - d).pow(2))
    return reduce(loss, reduction)


@own_precision("float32")
def margin_ranking(
    positive_scores: Tensor,
    negative_scores: Tensor,
    *,
    margin: float,
    reduction: str = "mean",
) -> Tensor:
    """Margin ranking loss: the positive must outscore the negative by ``margin``::

        loss = max(0, margin - (s_pos - s_neg))

    Equals ``torch.nn.functional.margin_ranking_loss(pos, neg, ones, margin)``. Related:
    :func:`preference_loss` (``kind="hinge"`` is this loss on chosen/rejected scores).

    Args:
        positive_scores: (B,) scores of the positives.
        negative_scores: (B,) one negative per positive, or (B, K) K negatives per positive.
        margin: >= 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the broadcast shape).

    >>> margin_ranking(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]), margin=1.0)
    tensor(0.5000)
    """
    check_tensor("positive_scores", positive_scores, ndim=1)
    check_tensor("negative_scores", negative_scores, ndim=(1, 2))
    if negative_scores.shape[0] != positive_scores.shape[0]:
        raise ValueError(
            "negative_scores must have as many rows as positive_scores, got "
            f"{tuple(negative_scores.shape)} and {tuple(positive_scores.shape)}."
        )
    margin = _check_margin(margin)
    reduction = check_reduction(reduction)
    pos = positive_scores if negative_scores.ndim == 1 else positive_scores[:, None]
    return reduce(F.relu(margin - (pos - negative_scores)), reduction)


@own_precision("float32")
def preference_loss(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    *,
    kind: str = "logistic",
    margin: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Pairwise preference loss for a scorer or reward model.

    - ``"logistic"``: Bradley-Terry, ``-log sigmoid(s_chosen - s_rejected - margin)``
      (as in reward modelling, Ouyang et al. 2022, https://arxiv.org/abs/2203.02155).
    - ``"hinge"``: ``max(0, margin - (s_chosen - s_rejected))``, i.e. :func:`margin_ranking`.

    Args:
        chosen_scores: (B,) scores of the preferred responses.
        rejected_scores: (B,) scores of the rejected responses.
        kind: ``"logistic"`` (default) or ``"hinge"``.
        margin: >= 0 required gap.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` ((B,)).

    >>> round(float(preference_loss(torch.tensor([1.0]), torch.tensor([1.0]))), 4)  # log 2
    0.6931
    """
    check_tensor("chosen_scores", chosen_scores, ndim=1)
    check_tensor("rejected_scores", rejected_scores, ndim=1)
    if chosen_scores.shape != rejected_scores.shape:
        raise ValueError(
            "chosen_scores and rejected_scores must have the same shape (one rejected per chosen), "
            f"got {tuple(chosen_scores.shape)} and {tuple(rejected_scores.shape)}."
        )
    kind = check_choice("kind", kind, PREFERENCE_KINDS)
    margin = _check_margin(margin)
    reduction = check_reduction(reduction)
    dtype = compute_dtype(chosen_scores.dtype)
    gap = chosen_scores.to(dtype) - rejected_scores.to(dtype)
    loss = -F.logsigmoid(gap - margin) if kind == "logistic" else F.relu(margin - gap)
    return reduce(loss, reduction).to(chosen_scores.dtype)
