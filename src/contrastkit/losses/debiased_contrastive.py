"""Debiased contrastive loss module; see :func:`contrastkit.functional.debiased.debiased_contrastive`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.debiased import _check_tau_plus, debiased_contrastive
from contrastkit.functional.similarity import check_metric
from contrastkit.losses.examples import paired_example, temperature_repr
from contrastkit.losses.registry import register
from contrastkit.losses.temperature import (
    LearnableTemperature,
    init_temperature,
    resolve_temperature,
)


@register("debiased_contrastive")
class DebiasedContrastive(nn.Module):
    """Debiased contrastive loss (Chuang et al. 2020): InfoNCE corrected by a class prior.

    Args:
        temperature: float > 0 or a :class:`LearnableTemperature`.
        tau_plus: class prior in [0, 1).
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.

    >>> loss = DebiasedContrastive(temperature=0.5, tau_plus=0.1)
    >>> loss(torch.randn(6, 4), torch.randn(6, 4)).shape
    torch.Size([])
    """

    inputs = "pair"
    distributed = "global_batch"

    def __init__(
        self,
        temperature: float | LearnableTemperature = 0.5,
        tau_plus: float = 0.1,
        metric: str = "cosine",
    ) -> None:
        super().__init__()
        self.temperature = init_temperature(temperature)
        self.tau_plus = _check_tau_plus(tau_plus)
        self.metric = check_metric(metric)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return paired_example(generator)

    def forward(self, query: Tensor, key: Tensor, *, reduction: str = "mean") -> Tensor:
        return debiased_contrastive(
            query,
            key,
            temperature=resolve_temperature(self.temperature),
            tau_plus=self.tau_plus,
            metric=self.metric,
            reduction=reduction,
        )

    def extra_repr(self) -> str:
        return f"temperature={temperature_repr(self.temperature)}, tau_plus={self.tau_plus}, metric={self.metric!r}"
