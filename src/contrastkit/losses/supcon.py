"""Supervised contrastive loss module; see :func:`contrastkit.functional.supervised_contrastive`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.collectives import world_group
from contrastkit.functional import supervised_contrastive
from contrastkit.functional.ring import check_collective
from contrastkit.functional.similarity import check_metric
from contrastkit.losses.examples import temperature_repr
from contrastkit.losses.registry import register
from contrastkit.losses.temperature import (
    LearnableTemperature,
    init_temperature,
    resolve_temperature,
)


@register("supcon")
class SupCon(nn.Module):
    """SupCon over (B, D) or (B, V, D) embeddings with (B,) labels.

    >>> import torch
    >>> SupCon(temperature=0.1)(torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2])).ndim
    0
    """

    inputs = "labelled"
    distributed = "gather"

    def __init__(
        self,
        temperature: float | LearnableTemperature = 0.1,
        metric: str = "cosine",
        gather_distributed: bool = False,
        collective: str = "auto",
    ) -> None:
        super().__init__()
        self.temperature = init_temperature(temperature)
        self.metric = check_metric(metric)
        self.gather_distributed = bool(gather_distributed)
        self.collective = check_collective(collective)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        emb = torch.randn(8, 16, generator=generator, dtype=torch.float64)
        return (emb, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))

    def forward(self, embeddings: Tensor, labels: Tensor, *, reduction: str = "mean") -> Tensor:
        return supervised_contrastive(
            embeddings,
            labels,
            temperature=resolve_temperature(self.temperature),
            metric=self.metric,
            reduction=reduction,
            group=world_group() if self.gather_distributed else None,
            collective=self.collective,
        )

    def extra_repr(self) -> str:
        return f"temperature={temperature_repr(self.temperature)}, metric={self.metric!r}"
