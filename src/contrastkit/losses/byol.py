"""BYOL loss module; see :func:`contrastkit.functional.noncontrastive.byol_loss`.

The teacher is :class:`contrastkit.encoders.MomentumEncoder` (with
:func:`contrastkit.encoders.momentum.cosine_momentum`); the predictor is
:class:`contrastkit.encoders.PredictionHead`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.noncontrastive import byol_loss
from contrastkit.losses.registry import register


@register("byol")
class BYOLLoss(nn.Module):
    """BYOL's symmetric ``2 - 2 cos`` between online predictions and teacher projections.

    ``forward(prediction1, prediction2, target1, target2)``: online predictions of views 1 and 2
    and teacher projections of views 1 and 2, each (B, D); scalar in [0, 4].

    A training step (the teacher is an EMA copy of the online encoder)::

        teacher = MomentumEncoder(online, momentum=0.99)
        p1, p2 = predictor(online(x1)), predictor(online(x2))
        loss = BYOLLoss()(p1, p2, teacher(x1), teacher(x2))
        loss.backward(); optimizer.step()
        teacher.update(online, cosine_momentum(step, total_steps, base=0.99))

    >>> x = torch.randn(4, 8)
    >>> float(BYOLLoss()(x, x, x, x))
    0.0
    """

    inputs = "prediction"
    distributed = "local"
    momentum_teacher = True

    # Teacher projections (positions 2 and 3 of forward) receive no gradient by design.
    stop_gradient_inputs = (2, 3)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return tuple(torch.randn(8, 16, generator=generator, dtype=torch.float64) for _ in range(4))

    def forward(
        self, prediction1: Tensor, prediction2: Tensor, target1: Tensor, target2: Tensor
    ) -> Tensor:
        return byol_loss(prediction1, prediction2, target1, target2)
