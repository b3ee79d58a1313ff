"""Triplet margin loss module; see :func:`contrastkit.functional.triplet_margin`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional import triplet_margin
from contrastkit.functional.margin import _check_margin
from contrastkit.functional.similarity import check_metric
from contrastkit.losses.registry import register


@register("triplet_margin")
class TripletMargin(nn.Module):
    """Triplet loss with online mining over a labelled batch.

    >>> import torch
    >>> TripletMargin(margin=0.2)(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])).ndim
    0
    """

    inputs = "labelled"
    distributed = "global_batch"

    def __init__(
        self, margin: float = 0.2, metric: str = "euclidean", mining: str = "batch_hard"
    ) -> None:
        super().__init__()
        self.margin = _check_margin(margin)
        self.metric = check_metric(metric)
        self.mining = mining

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        emb = torch.randn(8, 16, generator=generator, dtype=torch.float64)
        return (emb, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return triplet_margin(
            embeddings, labels, margin=self.margin, metric=self.metric, mining=self.mining
        )
