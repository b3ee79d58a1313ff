"""Circle loss module; see :func:`contrastkit.functional.proxy.circle_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.proxy import circle_loss
from contrastkit.losses.class_centres import labelled_example
from contrastkit.losses.registry import register


@register("circle")
class Circle(nn.Module):
    """Circle loss over the batch's pairs (m 0.4, gamma 80); no centres.

    >>> Circle()(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])).ndim
    0
    """

    inputs = "labelled"
    distributed = "global_batch"
    # The self-paced weights are held constant in the gradient (the paper's implementation), so
    # finite differences through forward cannot match it; tests/test_identity_losses.py checks
    # the gradient against pytorch-metric-learning and a float64 reference instead.
    numerical_gradcheck = False

    def __init__(self, m: float = 0.4, gamma: float = 80.0) -> None:
        super().__init__()
        self.m, self.gamma = float(m), float(gamma)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``."""
        return labelled_example(generator)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return circle_loss(embeddings, labels, m=self.m, gamma=self.gamma)

    def extra_repr(self) -> str:
        return f"m={self.m}, gamma={self.gamma}"
