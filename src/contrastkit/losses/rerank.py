"""The cross-encoder (reranker) losses; see :mod:`contrastkit.functional.rerank`.

Both take the scores a cross-encoder gives (query, document) pairs, not embeddings:
``pointwise_bce(logits (N,), labels (N,))`` and ``listwise_ce(logits (B, 1 + M), *, mask)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.rerank import (
    listwise_softmax_cross_entropy,
    pointwise_binary_cross_entropy,
)
from contrastkit.losses.registry import register


@register("pointwise_bce")
class PointwiseBCE(nn.Module):
    """Binary cross-entropy of each (query, document) score against its 0/1 label (monoBERT,
    https://arxiv.org/abs/1901.04085). Relations: :class:`ListwiseCE` compares a query's
    candidates with each other instead of with a fixed threshold.

    >>> PointwiseBCE()(torch.zeros(3), torch.tensor([1.0, 0.0, 0.0]))
    tensor(0.6931)
    """

    inputs = "pointwise"
    distributed = "local"
    stop_gradient_inputs = (1,)  # labels are data

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        logits = torch.randn(8, generator=generator, dtype=torch.float64)
        return logits, (torch.arange(8) % 2).to(torch.float64)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return pointwise_binary_cross_entropy(logits, labels)


@register("listwise_ce")
class ListwiseCE(nn.Module):
    """Listwise softmax cross-entropy over a query's positive (column 0) and its mined negatives
    (Gao et al. 2021, https://arxiv.org/abs/2101.08751). Relations: InfoNCE with hard negatives
    is the same loss on a bi-encoder's similarities; :class:`PointwiseBCE` scores each pair alone.

    >>> ListwiseCE()(torch.zeros(2, 4))
    tensor(1.3863)
    """

    inputs = "listwise"
    distributed = "local"

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return (torch.randn(6, 4, generator=generator, dtype=torch.float64),)

    def forward(self, logits: Tensor, *, mask: Tensor | None = None) -> Tensor:
        return listwise_softmax_cross_entropy(logits, mask)
