"""Multi-Similarity loss module; see :func:`contrastkit.functional.proxy.multi_similarity_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.proxy import multi_similarity_loss
from contrastkit.losses.class_centres import labelled_example
from contrastkit.losses.registry import register


@register("multi_similarity")
class MultiSimilarity(nn.Module):
    """Multi-Similarity over the batch's pairs (alpha 2, beta 50, base 0.5); no centres.

    >>> MultiSimilarity()(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])).ndim
    0
    """

    inputs = "labelled"
    distributed = "global_batch"

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5) -> None:
        super().__init__()
        self.alpha, self.beta, self.base = float(alpha), float(beta), float(base)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``."""
        return labelled_example(generator)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return multi_similarity_loss(
            embeddings, labels, alpha=self.alpha, beta=self.beta, base=self.base
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, base={self.base}"
