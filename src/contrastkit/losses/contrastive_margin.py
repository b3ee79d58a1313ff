"""Pairwise contrastive margin loss module; see :func:`contrastkit.functional.contrastive_margin`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional import contrastive_margin
from contrastkit.functional.margin import _check_margin
from contrastkit.losses.registry import register


@register("contrastive_margin")
class ContrastiveMargin(nn.Module):
    """Hadsell et al. 2006 pairwise loss.

    >>> import torch
    >>> a = torch.zeros(2, 2)
    >>> ContrastiveMargin(margin=1.0)(a, a, torch.tensor([True, False])).item()
    0.5
    """

    inputs = "pair_labels"
    distributed = "local"

    def __init__(self, margin: float = 1.0, metric: str = "euclidean") -> None:
        super().__init__()
        self.margin = _check_margin(margin, allow_zero=False)
        self.metric = metric

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        g = generator
        a = torch.randn(8, 16, generator=g, dtype=torch.float64)
        b = torch.randn(8, 16, generator=g, dtype=torch.float64) * 0.1
        return (a, b, torch.tensor([True, False] * 4))

    def forward(
        self, a: Tensor, b: Tensor, is_positive: Tensor, *, reduction: str = "mean"
    ) -> Tensor:
        return contrastive_margin(
            a, b, is_positive, margin=self.margin, metric=self.metric, reduction=reduction
        )
