"""Decoupled contrastive loss module; see
:func:`contrastkit.functional.debiased.decoupled_contrastive`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.debiased import decoupled_contrastive
from contrastkit.functional.similarity import check_metric
from contrastkit.losses.examples import paired_example, temperature_repr
from contrastkit.losses.registry import register
from contrastkit.losses.temperature import (
    LearnableTemperature,
    init_temperature,
    resolve_temperature,
)


@register("decoupled_contrastive")
class DecoupledContrastive(nn.Module):
    """DCL / DCLW (Yeh et al. 2022): NT-Xent without the positive in the denominator.

    Args:
        temperature: float > 0 or a :class:`LearnableTemperature`.
        weight_sigma: None (DCL) or sigma > 0 for the DCLW positive weighting.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.

    >>> DecoupledContrastive(weight_sigma=0.5)(torch.randn(6, 4), torch.randn(6, 4)).shape
    torch.Size([])
    """

    inputs = "pair"
    distributed = "global_batch"

    def __init__(
        self,
        temperature: float | LearnableTemperature = 0.1,
        weight_sigma: float | None = None,
        metric: str = "cosine",
    ) -> None:
        super().__init__()
        self.temperature = init_temperature(temperature)
        self.weight_sigma = weight_sigma
        self.metric = check_metric(metric)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return paired_example(generator)

    def forward(self, z1: Tensor, z2: Tensor, *, reduction: str = "mean") -> Tensor:
        return decoupled_contrastive(
            z1,
            z2,
            temperature=resolve_temperature(self.temperature),
            weight_sigma=self.weight_sigma,
            metric=self.metric,
            reduction=reduction,
        )

    def extra_repr(self) -> str:
        return f"temperature={temperature_repr(self.temperature)}, weight_sigma={self.weight_sigma}, metric={self.metric!r}"
