"""Hard-negative contrastive loss module; see
:func:`contrastkit.functional.debiased.hard_negative_contrastive`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit._checks import check_positive_number
from contrastkit.functional.debiased import _check_tau_plus, hard_negative_contrastive
from contrastkit.functional.similarity import check_metric
from contrastkit.losses.examples import paired_example
from contrastkit.losses.registry import register
from contrastkit.losses.temperature import (
    LearnableTemperature,
    init_temperature,
    resolve_temperature,
)


@register("hard_negative_contrastive")
class HardNegativeContrastive(nn.Module):
    """Hard-negative weighted, debiased InfoNCE (Robinson et al. 2021).

    Args:
        temperature: float > 0 or a :class:`LearnableTemperature`.
        beta: concentration on hard negatives, >= 0.
        tau_plus: class prior in [0, 1).
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.

    >>> HardNegativeContrastive(beta=1.0)(torch.randn(6, 4), torch.randn(6, 4)).shape
    torch.Size([])
    """

    inputs = "pair"
    distributed = "global_batch"

    def __init__(
        self,
        temperature: float | LearnableTemperature = 0.5,
        beta: float = 1.0,
        tau_plus: float = 0.1,
        metric: str = "cosine",
    ) -> None:
        super().__init__()
        self.temperature = init_temperature(temperature)
        self.beta = check_positive_number("beta", beta, allow_zero=True)
        self.tau_plus = _check_tau_plus(tau_plus)
        self.metric = check_metric(metric)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return paired_example(generator)

    def forward(self, query: Tensor, key: Tensor, *, reduction: str = "mean") -> Tensor:
        return hard_negative_contrastive(
            query,
            key,
            temperature=resolve_temperature(self.temperature),
            beta=self.beta,
            tau_plus=self.tau_plus,
            metric=self.metric,
            reduction=reduction,
        )

    def extra_repr(self) -> str:
        t = self.temperature if isinstance(self.temperature, float) else "learnable"
        return (
            f"temperature={t}, beta={self.beta}, tau_plus={self.tau_plus}, metric={self.metric!r}"
        )
