"""AnglE loss module; see :func:`contrastkit.functional.graded.angle_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.graded import angle_loss
from contrastkit.losses.examples import graded_example, temperature_repr
from contrastkit.losses.registry import register
from contrastkit.losses.temperature import (
    LearnableTemperature,
    init_temperature,
    resolve_temperature,
)


@register("angle")
class AnglE(nn.Module):
    """AnglE (Li & Li 2023, https://arxiv.org/abs/2309.12871): CoSENT on the angle similarity.

    ``forward(query (B, D), key (B, D), scores (B,))``; ``temperature`` is sentence-transformers'
    ``1 / scale``. Relations: :class:`~contrastkit.losses.cosent.CoSENT` ranks cosines instead (this
    one keeps a gradient where the cosine saturates).

    >>> q, k = torch.randn(4, 8), torch.randn(4, 8)
    >>> AnglE()(q, k, torch.tensor([0.1, 0.9, 0.5, 0.3])).shape
    torch.Size([])
    """

    inputs = "graded"
    distributed = "global_batch"
    stop_gradient_inputs = (2,)  # gold scores are data

    def __init__(self, temperature: float | LearnableTemperature = 0.05) -> None:
        super().__init__()
        self.temperature = init_temperature(temperature)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return graded_example(generator)

    def forward(self, query: Tensor, key: Tensor, scores: Tensor) -> Tensor:
        return angle_loss(query, key, scores, resolve_temperature(self.temperature))

    def extra_repr(self) -> str:
        return f"temperature={temperature_repr(self.temperature)}"
