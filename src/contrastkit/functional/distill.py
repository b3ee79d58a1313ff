"""Distillation of a teacher's scores (a cross-encoder) into a bi-encoder.

Shapes: ``query: (B, D)``, ``key: (B, D)`` the positive of each query, ``negatives: (B, M, D)``
M candidates of each query, ``teacher_scores: (B, 1 + M)`` the teacher's score of the positive
(column 0) and of each negative, ``mask: (B, M)`` bool, False where a row has fewer than M
negatives (padding). The student's scores are ``s(query, candidate)`` of ``metric``.

* MarginMSE (Hofstätter et al. 2020, https://arxiv.org/abs/2010.02666): the mean squared error
  between the student's margins ``s(q, p) - s(q, n)`` and the teacher's ``t_p - t_n``; margins are
  free of each model's scale offset, so a dot-product student can follow a cross-encoder.
* Listwise KL (RocketQAv2, Ren et al. 2021, https://arxiv.org/abs/2110.07367; BGE's
  distillation): ``KL(softmax(t / teacher_temperature) || softmax(s / temperature))`` over the
  1 + M candidates of each query, times ``temperature ** 2`` (Hinton et al. 2015's gradient
  scale), averaged over queries.

Neighbours: InfoNCE with hard negatives (:func:`contrastkit.functional.info_nce`) is the listwise
KL with a one-hot teacher; both combine with it as weighted loss terms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit._checks import check_embeddings, check_temperature, check_tensor
from contrastkit.functional.precision import own_precision
from contrastkit.functional.similarity import check_metric, paired_similarity_unchecked

__all__ = ["candidate_scores", "listwise_kl_distillation", "margin_mse"]


def _check(query: Tensor, key: Tensor, negatives: Tensor, teacher_scores: Tensor) -> None:
    check_embeddings("query", query)
    check_embeddings("key", key)
    check_embeddings("negatives", negatives, ndim=3)
    check_tensor("teacher_scores", teacher_scores, ndim=2)
    b, d = query.shape
    if key.shape != (b, d) or negatives.shape[0] != b or negatives.shape[2] != d:
        raise ValueError(
            f"key must be (B, D) = {(b, d)} and negatives (B, M, D), got {tuple(key.shape)} and "
            f"{tuple(negatives.shape)}."
        )
    m = negatives.shape[1]
    if teacher_scores.shape != (b, 1 + m):
        raise ValueError(
            f"teacher_scores must be (B, 1 + M) = {(b, 1 + m)}: the teacher's score of the "
            f"positive, then of each negative; got {tuple(teacher_scores.shape)}."
        )


def candidate_scores(query: Tensor, key: Tensor, negatives: Tensor, metric: str) -> Tensor:
    """(B, 1 + M): the student's score of the positive (column 0) and of each negative.

    >>> q = torch.tensor([[1.0, 0.0]]); p = torch.tensor([[2.0, 0.0]]); n = torch.tensor([[[0.0, 1.0]]])
    >>> candidate_scores(q, p, n, "dot")
    tensor([[2., 0.]])
    """
    metric = check_metric(metric)
    candidates = torch.cat([key[:, None], negatives], dim=1)  # (B, 1 + M, D)
    b, c, d = candidates.shape
    expanded = query[:, None].expand(b, c, d).reshape(b * c, d)  # (B * (1 + M), D)
    return paired_similarity_unchecked(expanded, candidates.reshape(b * c, d), metric).view(b, c)


def _mask(mask: Tensor | None, b: int, m: int, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(b, m, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (b, m):
        raise ValueError(
            f"mask must be a (B, M) = {(b, m)} bool tensor (False: padding), got "
            f"{getattr(mask, 'shape', type(mask).__name__)}."
        )
    return mask


@own_precision("float32")
def margin_mse(
    query: Tensor,
    key: Tensor,
    negatives: Tensor,
    teacher_scores: Tensor,
    *,
    metric: str = "dot",
    mask: Tensor | None = None,
) -> Tensor:
    """MarginMSE (Hofstätter et al. 2020): ``mean((s_p - s_n) - (t_p - t_n))^2`` over every
    (query, negative) pair that ``mask`` keeps.

    Args:
        query: (B, D). key: (B, D). negatives: (B, M, D).
        teacher_scores: (B, 1 + M); no gradient flows into it.
        metric: the student's similarity (``"dot"`` in the paper).
        mask: (B, M) bool or None (every negative is real).

    Returns:
        A scalar.

    >>> q = torch.tensor([[1.0, 0.0]]); p = torch.tensor([[2.0, 0.0]]); n = torch.tensor([[[0.0, 1.0]]])
    >>> margin_mse(q, p, n, torch.tensor([[5.0, 3.0]]))  # student margin 2 = teacher margin 2
    tensor(0.)
    """
    _check(query, key, negatives, teacher_scores)
    b, m = negatives.shape[:2]
    keep = _mask(mask, b, m, query.device)
    s = candidate_scores(query, key, negatives, metric)  # (B, 1 + M)
    t = teacher_scores.detach().to(s.dtype)
    error = (s[:, :1] - s[:, 1:]) - (t[:, :1] - t[:, 1:])  # (B, M)
    return (error.pow(2) * keep).sum() / keep.sum().clamp_min(1)


@own_precision("float32")
def listwise_kl_distillation(
    query: Tensor,
    key: Tensor,
    negatives: Tensor,
    teacher_scores: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    teacher_temperature: float = 1.0,
    metric: str = "dot",
    mask: Tensor | None = None,
) -> Tensor:
    """Listwise KL distillation (RocketQAv2; BGE): the student's softmax over each query's
    1 + M candidates follows the teacher's (module docstring).

    Args:
        query: (B, D). key: (B, D). negatives: (B, M, D).
        teacher_scores: (B, 1 + M); no gradient flows into it.
        temperature: divides the student's scores; the loss is multiplied by its square.
        teacher_temperature: divides the teacher's scores.
        metric: the student's similarity.
        mask: (B, M) bool or None; masked candidates leave both softmaxes.

    Returns:
        A scalar: ``sum_c p_t log(p_t / p_s)`` averaged over queries, times ``temperature ** 2``.

    >>> q = torch.tensor([[1.0, 0.0]]); p = torch.tensor([[2.0, 0.0]]); n = torch.tensor([[[0.0, 1.0]]])
    >>> listwise_kl_distillation(q, p, n, torch.tensor([[2.0, 0.0]]))  # same distribution
    tensor(0.)
    """
    _check(query, key, negatives, teacher_scores)
    check_temperature(temperature)
    check_temperature(teacher_temperature, "teacher_temperature")
    b, m = negatives.shape[:2]
    keep = torch.cat(
        [_mask(mask, b, m, query.device).new_ones(b, 1), _mask(mask, b, m, query.device)], 1
    )
    s = candidate_scores(query, key, negatives, metric) / temperature  # (B, 1 + M)
    t = teacher_scores.detach().to(s.dtype) / teacher_temperature
    s = s.masked_fill(~keep, float("-inf"))
    t = t.masked_fill(~keep, float("-inf"))
    log_p_student = torch.log_softmax(s, dim=1)
    log_p_teacher = torch.log_softmax(t, dim=1)
    p_teacher = log_p_teacher.exp()
    terms = torch.where(keep, p_teacher * (log_p_teacher - log_p_student), s.new_zeros(()))
    return terms.sum(1).mean() * temperature**2
