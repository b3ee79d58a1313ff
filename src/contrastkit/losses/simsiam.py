"""SimSiam loss module (its predictor is :class:`contrastkit.encoders.PredictionHead`).

See :func:`contrastkit.functional.noncontrastive.simsiam_loss`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.noncontrastive import simsiam_loss
from contrastkit.losses.registry import register


@register("simsiam")
class SimSiamLoss(nn.Module):
    """SimSiam's symmetric negative cosine with stop-gradient on the targets.

    ``forward(prediction1, prediction2, target1, target2)``: predictions ``h(z_i)`` and
    projections ``z_i`` of the two views, each (B, D); scalar in [-1, 1].

    Args:
        stop_gradient: detach the targets; ``False`` exists only to reproduce the collapse.

    >>> z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    >>> float(SimSiamLoss()(z2, z1, z1, z2))
    -1.0
    """

    inputs = "prediction"
    distributed = "local"

    # Targets (positions 2 and 3 of forward) receive no gradient by design.
    stop_gradient_inputs = (2, 3)

    def __init__(self, stop_gradient: bool = True) -> None:
        super().__init__()
        self.stop_gradient = bool(stop_gradient)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return tuple(torch.randn(8, 16, generator=generator, dtype=torch.float64) for _ in range(4))

    def forward(
        self, prediction1: Tensor, prediction2: Tensor, target1: Tensor, target2: Tensor
    ) -> Tensor:
        return simsiam_loss(
            prediction1, prediction2, target1, target2, stop_gradient=self.stop_gradient
        )

    def extra_repr(self) -> str:
        return f"stop_gradient={self.stop_gradient}"
