"""Barlow Twins loss module; see :func:`contrastkit.functional.noncontrastive.barlow_twins_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit._checks import check_positive_number
from contrastkit.functional.noncontrastive import barlow_twins_loss
from contrastkit.losses.registry import register


@register("barlow_twins")
class BarlowTwinsLoss(nn.Module):
    """Barlow Twins: cross-correlation of the two views pushed to the identity.

    ``forward(query, key)`` on (B, D) projector outputs, B >= 2.

    Args:
        redundancy_weight: weight of the off-diagonal term (5.1e-3; scale it like 1/D).

    >>> z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    >>> round(float(BarlowTwinsLoss()(z, z)), 6)
    0.0
    """

    inputs = "pair"
    distributed = "global_batch"

    def __init__(self, redundancy_weight: float = 5.1e-3, eps: float = 1e-5) -> None:
        super().__init__()
        self.redundancy_weight = check_positive_number(
            "redundancy_weight", redundancy_weight, allow_zero=True
        )
        self.eps = check_positive_number("eps", eps)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return (
            torch.randn(8, 16, generator=generator, dtype=torch.float64),
            torch.randn(8, 16, generator=generator, dtype=torch.float64),
        )

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return barlow_twins_loss(query, key, redundancy_weight=self.redundancy_weight, eps=self.eps)

    def extra_repr(self) -> str:
        return f"redundancy_weight={self.redundancy_weight:g}"
