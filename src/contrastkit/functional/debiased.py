"""Objectives that correct InfoNCE for false and easy negatives.

Shapes: ``query: (B, D)``, ``key: (B, D)`` with key i the positive of query i (the other B - 1
keys are the negatives, N = B - 1), and for the decoupled loss two views ``z1, z2: (B, D)``.
Logits are ``l_ij = s(q_i, k_j) / temperature``.

* :func:`debiased_contrastive` (Chuang et al. 2020, https://arxiv.org/abs/2007.00224): with a
  class prior ``tau_plus`` (the probability that a random "negative" is really a positive), the
  negative term is replaced by an estimate of the true-negative term::

      Ng_i = max( (sum_{j != i} e^{l_ij} - N tau_plus e^{l_ii}) / (1 - tau_plus), N e^{-1/t} )
      loss_i = -log( e^{l_ii} / (e^{l_ii} + Ng_i) )

* :func:`hard_negative_contrastive` (Robinson et al. 2021, https://arxiv.org/abs/2010.04592):
  negatives are importance-weighted by ``w_ij = e^{beta l_ij} / mean_j e^{beta l_ij}`` before the
  same debiasing, so harder (more similar) negatives count more; ``beta = 0`` is the debiased loss,
  ``beta = 0, tau_plus = 0`` is InfoNCE.

* :func:`decoupled_contrastive` (Yeh et al. 2022, https://arxiv.org/abs/2110.06848): NT-Xent with the
  positive removed from the denominator (decoupling the positive and negative gradients, which
  makes small batches work), optionally with the von Mises-Fisher weighting of the positive
  (DCLW, ``weight_sigma``).

The floor ``N e^{-1/t}`` is the theoretical minimum of the negative term for cosine similarity
(``s >= -1``); it keeps ``Ng`` positive. Everything is computed in log space in float32 (float64
for float64 inputs), so small temperatures do not overflow.

Related: :func:`contrastkit.functional.info_nce` (the uncorrected loss), the false-negative masks of
:mod:`contrastkit.negatives` (remove known false negatives instead of correcting on average).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contrastkit._checks import (
    reduce,
)
from contrastkit.functional.engine import compute_dtype
from contrastkit.functional.precision import own_precision
from contrastkit.functional.similarity import (
    check_paired_loss_inputs,
    similarity_matrix_unchecked,
)

__all__ = ["debiased_contrastive", "decoupled_contrastive", "hard_negative_contrastive"]


def _check_tau_plus(tau_plus: object) -> float:
    if (
        not isinstance(tau_plus, (int, float))
        or isinstance(tau_plus, bool)
        or not 0.0 <= tau_plus < 1.0
    ):
        raise ValueError(
            f"tau_plus must be a float in [0, 1) (the class prior, e.g. 0.1 for 10 classes), "
            f"got {tau_plus!r}."
        )
    return float(tau_plus)


@own_precision("float32")
def hard_negative_contrastive(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float | Tensor,
    beta: float = 1.0,
    tau_plus: float = 0.1,
    metric: str = "cosine",
    reduction: str = "mean",
) -> Tensor:
    """Hard-negative contrastive loss (HCL) of Robinson et al. 2021, https://arxiv.org/abs/2010.04592.

    With logits ``l_ij`` and N = B - 1 negatives per query::

        R_i = N * sum_{j != i} e^{(1 + beta) l_ij} / sum_{j != i} e^{beta l_ij}
        Ng_i = max( (R_i - N tau_plus e^{l_ii}) / (1 - tau_plus), N e^{-1/t} )
        loss_i = -log( e^{l_ii} / (e^{l_ii} + Ng_i) )

    Args:
        query: (B, D), B >= 2.
        key: (B, D), row i the positive of query i.
        temperature: > 0, float or scalar tensor.
        beta: concentration >= 0 on hard negatives (the paper uses 0.5 to 1).
        tau_plus: class prior in [0, 1) for debiasing (0 disables it).
        metric: ``"cosine"`` (default; the floor assumes it), ``"dot"`` or ``"euclidean"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` ((B,)).

    >>> g = torch.Generator().manual_seed(0)
    >>> q, k = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    >>> from contrastkit.functional import info_nce
    >>> plain = hard_negative_contrastive(q, k, temperature=0.5, beta=0.0, tau_plus=0.0)
    >>> bool(torch.isclose(plain, info_nce(q, k, temperature=0.5)))
    True
    """
    metric, reduction = check_paired_loss_inputs(
        "query", query, "key", key, temperature=temperature, metric=metric, reduction=reduction
    )
    tau_plus = _check_tau_plus(tau_plus)
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or beta < 0:
        raise ValueError(
            f"beta must be a float >= 0 (0 = no hard-negative weighting), got {beta!r}."
        )
    b = query.shape[0]
    if b < 2:
        raise ValueError(f"query needs at least 2 rows (one positive, >= 1 negative), got {b}.")
    dtype = compute_dtype(query.dtype)
    logits = similarity_matrix_unchecked(query.to(dtype), key.to(dtype), metric) / temperature
    eye = torch.eye(b, dtype=torch.bool, device=query.device)
    pos = logits.diagonal()  # (B,) l_ii
    n = b - 1
    # log R_i = log N + logsumexp((1 + beta) l) - logsumexp(beta l) over the negatives (the
    # positives are masked after scaling: 0 * -inf would be NaN).
    weighted = ((1.0 + beta) * logits).masked_fill(eye, float("-inf"))  # (B, B)
    plain = (beta * logits).masked_fill(eye, float("-inf"))  # (B, B)
    log_r = math.log(n) + torch.logsumexp(weighted, 1) - torch.logsumexp(plain, 1)
    log_floor = math.log(n) - 1.0 / temperature  # scalar (tensor if temperature is)
    loss = _debiased_terms(pos, log_r, log_floor, n, tau_plus)
    return reduce(loss, reduction).to(query.dtype)


def _debiased_terms(
    pos: Tensor, log_r: Tensor, log_floor: float | Tensor, n: int, tau_plus: float
) -> Tensor:
    """``-log(e^pos / (e^pos + max((e^log_r - n tau e^pos) / (1 - tau), e^log_floor)))`` stably."""
    shift = torch.maximum(pos, log_r).detach()  # (B,) common scale, out of the graph
    p = torch.exp(pos - shift)
    r = torch.exp(log_r - shift)
    floor = torch.exp(log_floor - shift)
    ng = torch.maximum((r - n * tau_plus * p) / (1.0 - tau_plus), floor)
    return -(pos - shift) + torch.log(p + ng)


@own_precision("float32")
def debiased_contrastive(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float | Tensor,
    tau_plus: float = 0.1,
    metric: str = "cosine",
    reduction: str = "mean",
) -> Tensor:
    """Debiased contrastive loss of Chuang et al. 2020, https://arxiv.org/abs/2007.00224.

    InfoNCE whose negative term is corrected for the expected share ``tau_plus`` of same-class
    "negatives" (see the module docstring for the formula). It is
    :func:`hard_negative_contrastive` with ``beta = 0``; ``tau_plus = 0`` gives InfoNCE.

    Args:
        query: (B, D), B >= 2.
        key: (B, D), row i the positive of query i.
        temperature: > 0.
        tau_plus: class prior in [0, 1), e.g. 1 / number of classes.
        metric: ``"cosine"`` (default), ``"dot"`` or ``"euclidean"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` ((B,)).

    >>> g = torch.Generator().manual_seed(0)
    >>> q, k = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    >>> from contrastkit.functional import info_nce
    >>> unbiased = debiased_contrastive(q, k, temperature=0.5, tau_plus=0.0)
    >>> bool(torch.isclose(unbiased, info_nce(q, k, temperature=0.5)))
    True
    """
    return hard_negative_contrastive(
        query,
        key,
        temperature=temperature,
        beta=0.0,
        tau_plus=tau_plus,
        metric=metric,
        reduction=reduction,
    )


@own_precision("float32")
def decoupled_contrastive(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float | Tensor,
    weight_sigma: float | None = None,
    metric: str = "cosine",
    reduction: str = "mean",
) -> Tensor:
    """Decoupled contrastive loss (DCL/DCLW) of Yeh et al. 2022, https://arxiv.org/abs/2110.06848.

    Over the 2B views like :func:`contrastkit.functional.nt_xent`, but the positive leaves the
    denominator: for view ``i`` with partner ``p``::

        loss_i = -w_i l_ip + log sum_{j not in {i, p}} e^{l_ij}

    ``w_i = 1`` (DCL) or, with ``weight_sigma`` (DCLW), ``w_i = 2 - B softmax_i(s_ip / sigma)``
    over the positive pairs (harder positives weigh more). The mean over 2B views is half the
    paper's ``L(z1, z2) + L(z2, z1)``.

    Args:
        z1: (B, D) first views; z2: (B, D) second views, B >= 2.
        temperature: > 0.
        weight_sigma: None (DCL) or sigma > 0 of the DCLW weighting (the paper uses 0.5).
        metric: ``"cosine"`` (default), ``"dot"`` or ``"euclidean"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` ((2B,): z1 rows then z2 rows).

    >>> z = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    >>> bool(decoupled_contrastive(z, z, temperature=0.1) < 0)  # aligned pairs: negative values
    True
    """
    metric, reduction = check_paired_loss_inputs(
        "z1", z1, "z2", z2, temperature=temperature, metric=metric, reduction=reduction
    )
    b = z1.shape[0]
    if b < 2:
        raise ValueError(f"z1 needs at least 2 rows (>= 1 negative besides the partner), got {b}.")
    if weight_sigma is not None and (
        not isinstance(weight_sigma, (int, float))
        or isinstance(weight_sigma, bool)
        or weight_sigma <= 0
    ):
        raise ValueError(
            f"weight_sigma must be None (DCL) or a float > 0 (DCLW), got {weight_sigma!r}."
        )
    dtype = compute_dtype(z1.dtype)
    z = torch.cat([z1, z2], dim=0).to(dtype)  # (2B, D)
    sim = similarity_matrix_unchecked(z, z, metric)  # (2B, 2B)
    rows = torch.arange(2 * b, device=z1.device)
    partner = (rows + b) % (2 * b)
    pos_sim = sim[rows, partner]  # (2B,)
    drop = torch.zeros(2 * b, 2 * b, dtype=torch.bool, device=z1.device)
    drop[rows, rows] = True
    drop[rows, partner] = True
    negative = torch.logsumexp((sim / temperature).masked_fill(drop, float("-inf")), dim=1)
    weight = 1.0
    if weight_sigma is not None:
        w = 2.0 - b * torch.softmax(pos_sim[:b] / weight_sigma, dim=0)  # (B,) per positive pair
        weight = torch.cat([w, w])  # (2B,): both views of a pair share it
    loss = -weight * pos_sim / temperature + negative
    return reduce(loss, reduction).to(z1.dtype)
