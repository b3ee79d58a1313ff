"""Losses of a cross-encoder (reranker), on the scores it gives (query, document) pairs.

Shapes: ``logits: (N,)`` one score per labelled pair and ``labels: (N,)`` in [0, 1] (pointwise);
``logits: (B, 1 + M)`` the scores of each query's positive (column 0) and of its M mined
negatives, ``mask: (B, M)`` bool, False for padding (listwise).

* Pointwise binary cross-entropy (monoBERT, Nogueira & Cho 2019,
  https://arxiv.org/abs/1901.04085): ``-[y log sigma(z) + (1 - y) log(1 - sigma(z))]``, averaged.
* Listwise softmax cross-entropy (Gao et al. 2021, "Rethink Training of BERT Rerankers in
  Multi-Stage Retrieval Pipeline", https://arxiv.org/abs/2101.08751, the LCE loss):
  ``-log softmax(z_b)[0]`` over each query's 1 + M candidates, averaged over queries; the
  reranker counterpart of InfoNCE with hard negatives.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit._checks import check_tensor
from contrastkit.functional.precision import own_precision

__all__ = ["listwise_softmax_cross_entropy", "pointwise_binary_cross_entropy"]


@own_precision("float32")
def pointwise_binary_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``labels``.

    Args:
        logits: (N,) raw scores. labels: (N,) in [0, 1] (1 relevant, 0 not; soft labels allowed).

    Returns:
        A scalar.

    >>> pointwise_binary_cross_entropy(torch.tensor([0.0]), torch.tensor([1.0]))
    tensor(0.6931)
    """
    check_tensor("logits", logits, ndim=1)
    labels = check_tensor("labels", labels, ndim=1)
    if labels.shape != logits.shape:
        raise ValueError(
            f"labels must be {tuple(logits.shape)} like logits, got {tuple(labels.shape)}."
        )
    if bool(((labels < 0) | (labels > 1)).any()):
        raise ValueError("labels must lie in [0, 1] (1: relevant, 0: not relevant).")
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


@own_precision("float32")
def listwise_softmax_cross_entropy(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over queries of ``-log softmax(logits[b])[0]`` (the positive is column 0).

    Args:
        logits: (B, 1 + M). mask: (B, M) bool or None; masked negatives leave the softmax.

    Returns:
        A scalar; ``log(1 + M)`` when every score is equal.

    >>> listwise_softmax_cross_entropy(torch.zeros(2, 4))
    tensor(1.3863)
    """
    check_tensor("logits", logits, ndim=2)
    b, c = logits.shape
    if c < 2:
        raise ValueError(
            f"logits must hold a positive and >= 1 negative per query, got {c} column."
        )
    if mask is not None:
        if mask.dtype != torch.bool or mask.shape != (b, c - 1):
            raise ValueError(
                f"mask must be a (B, M) = {(b, c - 1)} bool tensor, got {tuple(mask.shape)}."
            )
        keep = torch.cat([mask.new_ones(b, 1), mask], dim=1)  # (B, 1 + M)
        logits = logits.masked_fill(~keep, float("-inf"))
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()
