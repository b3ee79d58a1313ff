"""Objectives without explicit negatives: stop-gradient, variance, redundancy, clusters, teachers.

Shape notation (as across contrastkit): B batch, V views, D embedding dim, K prototypes or
output classes (SwAV, DINO). ``query`` and ``key`` are the two views of the same B examples.

Without negatives nothing in the loss itself forbids the trivial solution (every input mapped
to one point). Each objective here avoids it differently:

| objective                 | what prevents collapse                                   |
|---------------------------|----------------------------------------------------------|
| :func:`simsiam_loss`      | predictor + stop-gradient on the target branch           |
| :func:`byol_loss`         | predictor + stop-gradient + EMA teacher                  |
| :func:`vicreg_loss`       | a hinge on the per-dimension std + decorrelation         |
| :func:`barlow_twins_loss` | cross-correlation pushed to the identity                 |
| :func:`swav_loss`         | equipartitioned cluster codes (Sinkhorn-Knopp)           |
| :func:`dino_loss`         | teacher centering (against one dominant dim) + sharpening |

None of them guarantees it: watch the embeddings with :mod:`contrastkit.monitor`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit._checks import (
    check_embeddings,
    check_pair,
    check_positive_number,
    check_reduction,
    check_temperature,
    reduce,
)
from contrastkit.collectives import Ranks
from contrastkit.functional.precision import own_precision
from contrastkit.functional.similarity import normalize

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "cross_correlation",
    "dino_loss",
    "negative_cosine",
    "simsiam_loss",
    "sinkhorn_knopp",
    "swapped_prediction",
    "swav_loss",
    "vicreg_covariance",
    "vicreg_invariance",
    "vicreg_loss",
    "vicreg_variance",
]


# --------------------------------------------------------------------------- stop-gradient


@own_precision("float32")
def negative_cosine(
    prediction: Tensor,
    target: Tensor,
    *,
    stop_gradient: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """Negative cosine similarity ``D(p, z) = -cos(p, stopgrad(z))``, SimSiam's building block.

    Values lie in [-1, 1]; -1 when each prediction points along its target. Zero rows have
    cosine 0 (no NaN).

    Args:
        prediction: (B, D) output of the predictor on one view.
        target: (B, D) projection of the other view; detached when ``stop_gradient``.
        stop_gradient: detach ``target`` (the whole point of SimSiam; ``False`` collapses).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` ((B,)).

    >>> p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> negative_cosine(p, p)
    tensor(-1.)
    """
    check_embeddings("prediction", prediction)
    check_embeddings("target", target)
    check_pair("prediction", prediction, "target", target)
    reduction = check_reduction(reduction)
    if stop_gradient:
        target = target.detach()
    values = -(normalize(prediction) * normalize(target)).sum(dim=-1)  # (B,)
    return reduce(values, reduction)


@own_precision("float32")
def simsiam_loss(
    prediction1: Tensor,
    prediction2: Tensor,
    target1: Tensor,
    target2: Tensor,
    *,
    stop_gradient: bool = True,
) -> Tensor:
    """SimSiam's symmetric loss (Chen & He 2021, https://arxiv.org/abs/2011.10566).

    ``L = D(p1, z2) / 2 + D(p2, z1) / 2`` with ``D`` the :func:`negative_cosine` and ``z``
    behind a stop-gradient: ``p_i = h(f(x_i))`` is the predictor output of view ``i`` and
    ``z_i = f(x_i)`` its projection. The minimum is -1. Without the stop-gradient the encoder
    collapses to a constant within a few hundred steps (Chen & He, fig. 2); that failure is what
    :class:`contrastkit.monitor.CollapseMonitor` reports.

    Related: :func:`byol_loss` is the same objective with targets from an EMA teacher, written as
    ``2 - 2 cos``.

    Args:
        prediction1: (B, D) predictor output for view 1.
        prediction2: (B, D) predictor output for view 2.
        target1: (B, D) projection of view 1 (the target of ``prediction2``).
        target2: (B, D) projection of view 2 (the target of ``prediction1``).
        stop_gradient: detach the targets (``False`` only to demonstrate collapse).

    Returns:
        Scalar loss in [-1, 1].

    >>> g = torch.Generator().manual_seed(0)
    >>> z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    >>> float(simsiam_loss(z2, z1, z1, z2))  # predictions equal to the targets
    -1.0
    """
    check_embeddings("prediction1", prediction1)
    for name, x in (("prediction2", prediction2), ("target1", target1), ("target2", target2)):
        check_embeddings(name, x)
        check_pair("prediction1", prediction1, name, x)
    return 0.5 * (
        negative_cosine(prediction1, target2, stop_gradient=stop_gradient)
        + negative_cosine(prediction2, target1, stop_gradient=stop_gradient)
    )


@own_precision("float32")
def byol_loss(
    prediction1: Tensor,
    prediction2: Tensor,
    target1: Tensor,
    target2: Tensor,
    *,
    stop_gradient: bool = True,
) -> Tensor:
    """BYOL's symmetric regression loss (Grill et al. 2020, https://arxiv.org/abs/2006.07733).

    The online network predicts the EMA teacher's projection of the other view; with
    l2-normalised vectors the squared error is ``|p/|p| - z/|z||^2 = 2 - 2 cos(p, z)``::

        L = (2 - 2 cos(p1, sg(z2'))) / 2 + (2 - 2 cos(p2, sg(z1'))) / 2

    where ``z'`` come from the teacher (:class:`contrastkit.encoders.MomentumEncoder`, updated
    with :func:`contrastkit.encoders.momentum.cosine_momentum`). The paper sums the two
    directions; here they are averaged so that the value lies in [0, 4] like one direction.
    Equal to ``2 + 2 * simsiam_loss`` on the same tensors.

    Args:
        prediction1: (B, D) online predictor output for view 1.
        prediction2: (B, D) online predictor output for view 2.
        target1: (B, D) teacher projection of view 1 (the target of ``prediction2``).
        target2: (B, D) teacher projection of view 2 (the target of ``prediction1``).
        stop_gradient: detach the targets (teacher outputs usually carry no graph anyway).

    >>> x = torch.randn(4, 8)
    >>> float(byol_loss(x, x, x, x))
    0.0
    """
    return 2.0 + 2.0 * simsiam_loss(
        prediction1, prediction2, target1, target2, stop_gradient=stop_gradient
    )


# --------------------------------------------------------------------------- VICReg


def _check_batch(name: str, x: Tensor, minimum: int = 2) -> None:
    if x.shape[0] < minimum:
        raise ValueError(
            f"{name} needs at least {minimum} rows to estimate batch statistics, got shape "
            f"{tuple(x.shape)}; use a larger batch."
        )


@own_precision("float32")
def vicreg_invariance(query: Tensor, key: Tensor) -> Tensor:
    """VICReg invariance term: mean squared error between the two views.

    ``s(Z, Z') = 1/(B D) sum_{b,d} (z_bd - z'_bd)^2``; 0 for identical views.

    Args:
        query: (B, D) embeddings of view 1.
        key: (B, D) embeddings of view 2.

    >>> z = torch.randn(4, 3)
    >>> float(vicreg_invariance(z, z))
    0.0
    """
    check_embeddings("query", query)
    check_embeddings("key", key)
    check_pair("query", query, "key", key)
    return F.mse_loss(query, key)


@own_precision("float32")
def vicreg_variance(embeddings: Tensor, *, gamma: float = 1.0, eps: float = 1e-4) -> Tensor:
    """VICReg variance term: a hinge keeping every dimension's batch std above ``gamma``.

    ``v(Z) = 1/D sum_d max(0, gamma - sqrt(Var(z_d) + eps))`` with the unbiased variance over the
    batch. It is ``gamma - sqrt(eps)`` (about 1) for a collapsed batch and 0 once every std is
    at least ``gamma``.

    Args:
        embeddings: (B, D), B >= 2.
        gamma: target std (1 in the paper).
        eps: numerical stabiliser inside the square root.

    >>> round(float(vicreg_variance(torch.ones(8, 4))), 4)  # collapsed: 1 - sqrt(1e-4)
    0.99
    """
    check_embeddings("embeddings", embeddings)
    _check_batch("embeddings", embeddings)
    check_positive_number("gamma", gamma)
    check_positive_number("eps", eps)
    std = torch.sqrt(embeddings.var(dim=0) + eps)  # (D,)
    return F.relu(gamma - std).mean()


@own_precision("float32")
def vicreg_covariance(embeddings: Tensor) -> Tensor:
    """VICReg covariance term: squared off-diagonal covariances, divided by D.

    ``c(Z) = 1/D sum_{i != j} C(Z)_ij^2`` with ``C(Z)`` the (D, D) unbiased covariance over the
    batch; 0 when the dimensions are decorrelated.

    Args:
        embeddings: (B, D), B >= 2.

    >>> float(vicreg_covariance(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])))
    0.0
    """
    check_embeddings("embeddings", embeddings)
    _check_batch("embeddings", embeddings)
    b, d = embeddings.shape
    centered = embeddings - embeddings.mean(dim=0)  # (B, D)
    cov = centered.T @ centered / (b - 1)  # (D, D)
    off_diagonal = cov - torch.diag_embed(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


@own_precision("float32")
def vicreg_loss(
    query: Tensor,
    key: Tensor,
    *,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg (Bardes et al. 2022, https://arxiv.org/abs/2105.04906).

    Weighted sum of its three parts, as in the authors' code (whose weights 25/25/1 are the
    paper's defaults)::

        L = lambda s(Z, Z') + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z'))

    with :func:`vicreg_invariance` ``s``, :func:`vicreg_variance` ``v`` and
    :func:`vicreg_covariance` ``c``. The variance hinge is what stops collapse; with
    ``variance_weight = covariance_weight = 0`` the loss is plain invariance and collapses.

    Related: :func:`barlow_twins_loss` decorrelates the cross-correlation of the two views
    instead of each view's covariance.

    Args:
        query: (B, D) expander output for view 1, B >= 2.
        key: (B, D) expander output for view 2.
        invariance_weight: lambda.
        variance_weight: mu.
        covariance_weight: nu.
        gamma: target std of the variance hinge.
        eps: stabiliser of the std.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = 1.5 * torch.randn(1024, 4, generator=g)
    >>> float(vicreg_loss(z, z)) < 0.1  # identical, spread (std > 1), nearly decorrelated views
    True
    """
    for name, w in (
        ("invariance_weight", invariance_weight),
        ("variance_weight", variance_weight),
        ("covariance_weight", covariance_weight),
    ):
        check_positive_number(name, w, allow_zero=True)
    invariance = vicreg_invariance(query, key)
    variance = 0.5 * (
        vicreg_variance(query, gamma=gamma, eps=eps) + vicreg_variance(key, gamma=gamma, eps=eps)
    )
    covariance = vicreg_covariance(query) + vicreg_covariance(key)
    return (
        invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
    )


# --------------------------------------------------------------------------- Barlow Twins


@own_precision("float32")
def cross_correlation(query: Tensor, key: Tensor, *, eps: float = 1e-5) -> Tensor:
    """Barlow Twins' (D, D) cross-correlation of two batch-standardised views.

    Each dimension is standardised over the batch (mean 0, biased std 1, as a BatchNorm without
    affine), then ``C_ij = 1/B sum_b zq_bi zk_bj``; entries lie in [-1, 1].

    Args:
        query: (B, D), B >= 2.
        key: (B, D).
        eps: added to the variance before the square root.

    Returns:
        (D, D) cross-correlation matrix.

    >>> z = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    >>> cross_correlation(z, z)
    tensor([[1.0000, 1.0000],
            [1.0000, 1.0000]])
    """
    check_embeddings("query", query)
    check_embeddings("key", key)
    check_pair("query", query, "key", key)
    _check_batch("query", query)
    check_positive_number("eps", eps)
    b = query.shape[0]

    def standardise(x: Tensor) -> Tensor:
        centered = x - x.mean(dim=0)
        return centered / torch.sqrt(centered.pow(2).mean(dim=0) + eps)

    return standardise(query).T @ standardise(key) / b  # (D, D)


@own_precision("float32")
def barlow_twins_loss(
    query: Tensor, key: Tensor, *, redundancy_weight: float = 5.1e-3, eps: float = 1e-5
) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, https://arxiv.org/abs/2103.03230).

    Pushes the :func:`cross_correlation` ``C`` of the two views to the identity::

        L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2

    The diagonal term makes the views agree, the off-diagonal (redundancy reduction) term
    decorrelates the dimensions, which rules out collapse to a constant (``C`` would be 0) and to
    a low-rank subspace (off-diagonal entries near 1). ``lambda = 5.1e-3`` as in the authors'
    code; it scales roughly as 1/D.

    Related: :func:`vicreg_loss` regularises each view's own covariance instead.

    Args:
        query: (B, D) projector output for view 1, B >= 2.
        key: (B, D) projector output for view 2.
        redundancy_weight: lambda, weight of the off-diagonal term.
        eps: stabiliser of the batch std.

    >>> z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    >>> round(float(barlow_twins_loss(z, z)), 6)  # whitened, identical views: C = I
    0.0
    """
    check_positive_number("redundancy_weight", redundancy_weight, allow_zero=True)
    c = cross_correlation(query, key, eps=eps)  # (D, D)
    diagonal = torch.diagonal(c)
    on_diagonal = (1.0 - diagonal).pow(2).sum()
    off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()
    return on_diagonal + redundancy_weight * off_diagonal


# --------------------------------------------------------------------------- SwAV


@torch.no_grad()
@own_precision("float32")
def sinkhorn_knopp(
    scores: Tensor,
    *,
    epsilon: float = 0.05,
    iterations: int = 3,
    group: ProcessGroup | None = None,
) -> Tensor:
    """Soft cluster assignments with equal cluster sizes (Cuturi 2013; SwAV's codes).

    Finds ``Q = diag(u) exp(scores / epsilon) diag(v)`` whose rows sum to 1 (each example is fully
    assigned) and whose columns sum to B / K (each prototype gets an equal share of the batch), by
    alternately normalising columns and rows ``iterations`` times. The equipartition constraint
    is what keeps SwAV from assigning everything to one prototype. Computed without gradient, after
    subtracting the max, in float32 (float64 for float64 input, or when ``exp(scores / epsilon)``
    would underflow float32).

    Args:
        scores: (B, K) similarities of B examples to K prototypes.
        epsilon: entropic regularisation; smaller is closer to hard assignments (0.05 in SwAV).
        iterations: normalisation rounds (3 in SwAV); rows sum exactly to 1 after any number,
            columns converge to B / K.
        group: the ``torch.distributed`` process group whose ranks hold the rest of the batch
            (e.g. :func:`contrastkit.collectives.world_group`): the prototypes are balanced over
            the global batch of its ranks (equal batch sizes; SwAV's ``distributed_sinkhorn``),
            every rank of it must call. None (default): this batch alone.

    Returns:
        (B, K) codes, each row a distribution over prototypes, in the dtype of ``scores``.

    >>> scores = torch.rand(6, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1  # cosines
    >>> q = sinkhorn_knopp(scores, iterations=300)
    >>> torch.allclose(q.sum(dim=1), torch.ones(6)), torch.allclose(q.sum(dim=0), torch.full((3,), 2.0))
    (True, True)
    """
    check_embeddings("scores", scores)
    check_positive_number("epsilon", epsilon)
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1 (3 in SwAV), got {iterations!r}.")
    return _sinkhorn(scores, epsilon, iterations, Ranks.of(group))


@torch.no_grad()
def _sinkhorn(scores: Tensor, epsilon: float, iterations: int, ranks: Ranks) -> Tensor:
    world = ranks.world
    b, k = scores.shape
    logits = scores.float() / epsilon if scores.dtype != torch.float64 else scores / epsilon
    high, low = logits.max(), logits.min()
    if world > 1:  # the same shift and the same dtype on every rank
        ranks.all_reduce_(high, "max")
        ranks.all_reduce_(low, "min")
    logits = logits - high  # the shift cancels in the normalisation
    if logits.dtype != torch.float64 and float(low - high) < -80.0:
        logits = logits.double()  # exp would underflow to 0 in float32 (cosines never get here)
    q = torch.exp(logits)  # (B, K)
    total = q.sum()
    if world > 1:
        ranks.all_reduce_(total)
        b = b * world  # equal batch sizes on every rank, as in SwAV
    q = q / total
    for _ in range(iterations):
        columns = q.sum(dim=0, keepdim=True)  # (1, K)
        if world > 1:
            ranks.all_reduce_(columns)
        q = q / columns / k  # columns: each prototype holds 1/K of the mass
        q = q / q.sum(dim=1, keepdim=True) / b  # rows: each example holds 1/B of the mass
    return (q * b).to(scores.dtype)  # rows sum to 1


@own_precision("float32")
def swapped_prediction(
    scores1: Tensor,
    scores2: Tensor,
    codes1: Tensor,
    codes2: Tensor,
    *,
    temperature: float | Tensor,
) -> Tensor:
    """SwAV's swapped prediction: predict the codes of one view from the scores of the other.

    ``L = -1/(2B) sum_b [ q2_b . log softmax(s1_b / t) + q1_b . log softmax(s2_b / t) ]``.

    Args:
        scores1: (B, K) prototype scores of view 1.
        scores2: (B, K) prototype scores of view 2.
        codes1: (B, K) target codes of view 1 (rows are distributions), held fixed.
        codes2: (B, K) target codes of view 2.
        temperature: > 0 (0.1 in SwAV).

    >>> s = torch.zeros(2, 4)
    >>> q = torch.full((2, 4), 0.25)
    >>> round(float(swapped_prediction(s, s, q, q, temperature=0.1)), 4)  # log K
    1.3863
    """
    for name, x in (
        ("scores1", scores1),
        ("scores2", scores2),
        ("codes1", codes1),
        ("codes2", codes2),
    ):
        check_embeddings(name, x)
        if x.shape != scores1.shape:
            raise ValueError(
                f"{name} must have shape {tuple(scores1.shape)} like scores1, got {tuple(x.shape)}."
            )
    check_temperature(temperature)
    return _swapped_prediction(scores1, scores2, codes1, codes2, temperature)


def _swapped_prediction(
    scores1: Tensor, scores2: Tensor, codes1: Tensor, codes2: Tensor, temperature: float | Tensor
) -> Tensor:
    loss12 = -(codes2 * F.log_softmax(scores1 / temperature, dim=-1)).sum(dim=-1)  # (B,)
    loss21 = -(codes1 * F.log_softmax(scores2 / temperature, dim=-1)).sum(dim=-1)  # (B,)
    return 0.5 * (loss12 + loss21).mean()


@own_precision("float32")
def swav_loss(
    query: Tensor,
    key: Tensor,
    prototypes: Tensor,
    *,
    temperature: float | Tensor = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
    group: ProcessGroup | None = None,
) -> Tensor:
    """SwAV (Caron et al. 2020, https://arxiv.org/abs/2006.09882), two views, no queue.

    Both views and the prototypes are l2-normalised; scores are cosines ``s = z c^T`` (B, K).
    Codes ``q = sinkhorn_knopp(s)`` are computed without gradient and each view predicts the
    other's codes (:func:`swapped_prediction`). Gradients reach the embeddings and the
    prototypes through the predicted side only.

    Related: a clustering counterpart of :func:`contrastkit.functional.info_nce` (compare to
    prototypes instead of to other examples); :func:`dino_loss` replaces the Sinkhorn codes by a
    centred, sharpened teacher.

    Args:
        query: (B, D) projections of view 1.
        key: (B, D) projections of view 2.
        prototypes: (K, D) prototype vectors (a learnable weight).
        temperature: softmax temperature of the prediction (0.1).
        epsilon: Sinkhorn regularisation (0.05).
        sinkhorn_iterations: Sinkhorn rounds (3).
        group: the process group whose ranks hold the rest of the batch: the codes are
            balanced over its global batch (see :func:`sinkhorn_knopp`); None (default): this
            batch alone. Each rank returns the mean over its own rows, whose mean over the ranks
            is the loss of the global batch.

    >>> g = torch.Generator().manual_seed(0)
    >>> z, c = torch.randn(8, 4, generator=g), torch.randn(3, 4, generator=g)
    >>> loss = swav_loss(z, z + 0.1, c)
    >>> bool(0 < float(loss) < float(torch.log(torch.tensor(3.0))) + 1)
    True
    """
    check_embeddings("query", query)
    check_embeddings("key", key)
    check_pair("query", query, "key", key)
    check_embeddings("prototypes", prototypes)
    if prototypes.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"prototypes must have shape (K, {query.shape[-1]}) to match query, got "
            f"{tuple(prototypes.shape)}."
        )
    c = normalize(prototypes)  # (K, D)
    scores1 = normalize(query) @ c.T  # (B, K)
    scores2 = normalize(key) @ c.T  # (B, K)
    check_temperature(temperature)
    check_positive_number("epsilon", epsilon)
    if not isinstance(sinkhorn_iterations, int) or sinkhorn_iterations < 1:
        raise ValueError(
            f"sinkhorn_iterations must be an int >= 1 (3), got {sinkhorn_iterations!r}."
        )
    ranks = Ranks.of(group)
    codes1 = _sinkhorn(scores1.detach(), epsilon, sinkhorn_iterations, ranks)
    codes2 = _sinkhorn(scores2.detach(), epsilon, sinkhorn_iterations, ranks)
    return _swapped_prediction(scores1, scores2, codes1, codes2, temperature)


# --------------------------------------------------------------------------- DINO


@own_precision("float32")
def dino_loss(
    student: Tensor,
    teacher: Tensor,
    center: Tensor | None = None,
    *,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> Tensor:
    """DINO self-distillation (Caron et al. 2021, https://arxiv.org/abs/2104.14294).

    The student's softmax predicts the teacher's centred and sharpened softmax::

        P_t = softmax((t - center) / teacher_temperature)   (stop-gradient)
        L   = mean over pairs (teacher view u, student view v != u) of
              - sum_k P_t[u, b, k] log softmax(s[v, b] / student_temperature)_k

    Centering (subtracting a running mean of teacher outputs, kept by
    :meth:`contrastkit.losses.DINOLoss.update_center`) prevents one dimension from dominating; sharpening
    (a low ``teacher_temperature``) prevents the uniform output. Either alone collapses.

    Related: :func:`swav_loss` gets its targets from Sinkhorn instead of a teacher; the teacher
    is a :class:`contrastkit.encoders.MomentumEncoder` of the student.

    Args:
        student: (B, K) or (V, B, K) student logits for V crops.
        teacher: (B, K) or (T, B, K) teacher logits for T global crops; with 3-D inputs the first
            T student crops are the same images as the T teacher crops and those pairs are skipped.
            Detached inside.
        center: (K,) running center of teacher logits; ``None`` for none.
        student_temperature: > 0 (0.1).
        teacher_temperature: > 0, lower than the student's (0.04 to 0.07).

    Returns:
        Scalar loss.

    >>> t = torch.tensor([[5.0, 0.0, 0.0]])
    >>> dino_loss(t, t).item() < dino_loss(torch.zeros(1, 3), t).item()
    True
    """
    check_embeddings("student", student, ndim=(2, 3))
    check_embeddings("teacher", teacher, ndim=(2, 3))
    check_temperature(student_temperature, "student_temperature")
    check_temperature(teacher_temperature, "teacher_temperature")
    if student.ndim != teacher.ndim:
        raise ValueError(
            f"student and teacher must both be (B, K) or both (V, B, K), got shapes "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}."
        )
    if student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(
            f"student and teacher must agree in (B, K), got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}."
        )
    if student.ndim == 3 and teacher.shape[0] > student.shape[0]:
        raise ValueError(
            f"teacher has {teacher.shape[0]} crops but student only {student.shape[0]}; the "
            "student sees every crop the teacher sees (global crops first)."
        )
    teacher = teacher.detach()
    if center is not None:
        check_embeddings("center", center, ndim=(1, 2))
        if center.shape[-1] != teacher.shape[-1]:
            raise ValueError(
                f"center must have {teacher.shape[-1]} entries like the logits, got shape "
                f"{tuple(center.shape)}."
            )
        teacher = teacher - center.detach().reshape(-1)
    cross_crop = student.ndim == 3
    if not cross_crop:
        student, teacher = student.unsqueeze(0), teacher.unsqueeze(0)  # (1, B, K)
    target = F.softmax(teacher / teacher_temperature, dim=-1)  # (T, B, K)
    log_prediction = F.log_softmax(student / student_temperature, dim=-1)  # (V, B, K)
    # (T, V, B): cross-entropy of every teacher crop against every student crop
    ce = -torch.einsum("tbk,vbk->tvb", target, log_prediction)
    keep = torch.ones(ce.shape[:2], dtype=torch.bool, device=ce.device)  # (T, V)
    if cross_crop:
        same = torch.arange(teacher.shape[0], device=ce.device)
        keep[same, same] = False  # a crop does not predict itself
    if not bool(keep.any()):
        raise ValueError(
            "with one teacher and one student crop of the same image there is nothing to predict; "
            "pass at least two student crops or (B, K) tensors of two different views."
        )
    return ce[keep].mean()
