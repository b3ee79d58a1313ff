"""The one softmax-contrastive engine every softmax loss goes through.

A *contrastive problem* is: queries ``q: (B, D)``, candidates ``k: (N, D)`` (in-batch keys, then
any extra negatives), a boolean ``positive: (B, N)`` saying which candidates are positives of each
query, and a boolean ``ignore: (B, N)`` removing candidates from the softmax. For an anchor ``i``
with positive set ``P(i)`` and kept candidates ``C(i)``::

    loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / t) / sum_{c in C(i)} exp(s_ic / t) )

(the SupCon "outside" form; a positive is never ignored). Anchors with no positive are not
valid and are left out of the mean.

This module holds the dense reference path: it materialises the (B, N) logits. The softmax is
always computed in float32 (or float64 for float64 inputs) so that half-precision inputs at small
temperatures do not overflow.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.functional.similarity import similarity_matrix_unchecked


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
) -> tuple[Tensor, Tensor]:
    """Dense per-anchor softmax-contrastive loss.

    Args:
        query: (B, D).
        key: (N, D) in-batch candidates (N may exceed B, e.g. gathered keys).
        positive: (B, N + M) bool.
        ignore: (B, N + M) bool or None.
        negatives: (M, D) shared or (B, M, D) per-query extra negatives, or None.
        symmetric: also compute the key -> query direction over the (B, N) block; requires N == B.

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
    if symmetric:
        n_keys = key.shape[0]
        block = logits[:, :n_keys].T  # (N, B): key -> query
        ign = None if ignore is None else ignore[:, :n_keys].T
        loss_t, valid_t = masked_log_softmax_loss(block, positive[:, :n_keys].T, ign)
        loss = 0.5 * (loss + loss_t)
        valid = valid & valid_t
    return loss, valid


def _per_query_similarity(q: Tensor, negatives: Tensor, metric: str) -> Tensor:
    """(B, D) x (B, M, D) -> (B, M): each query against its own negatives."""
    from contrastkit.functional.similarity import paired_similarity_unchecked

    b, m, d = negatives.shape
    q_rep = q[:, None, :].expand(b, m, d).reshape(b * m, d)  # (B*M, D)
    return paired_similarity_unchecked(q_rep, negatives.reshape(b * m, d), metric).view(b, m)
