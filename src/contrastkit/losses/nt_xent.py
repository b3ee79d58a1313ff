"""NT-Xent (SimCLR) loss module; see :func:`contrastkit.functional.nt_xent`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.collectives import world_group
from contrastkit.functional import nt_xent
from contrastkit.functional.ring import check_collective
from contrastkit.functional.similarity import check_metric
from contrastkit.losses.examples import paired_example, temperature_repr
from contrastkit.losses.registry import register
from contrastkit.losses.temperature import (
    LearnableTemperature,
    init_temperature,
    resolve_temperature,
)


@register("nt_xent")
class NTXent(nn.Module):
    """SimCLR's NT-Xent over two views.

    >>> import torch
    >>> NTXent(temperature=0.5)(torch.ones(4, 8), torch.ones(4, 8)).item() > 1.9
    True
    """

    inputs = "pair"
    distributed = "gather"

    def __init__(
        self,
        temperature: float | LearnableTemperature = 0.5,
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
        return paired_example(generator)

    def forward(self, z1: Tensor, z2: Tensor, *, reduction: str = "mean") -> Tensor:
        return nt_xent(
            z1,
            z2,
            temperature=resolve_temperature(self.temperature),
            metric=self.metric,
            reduction=reduction,
            group=world_group() if self.gather_distributed else None,
            collective=self.collective,
        )

    def extra_repr(self) -> str:
        return f"temperature={temperature_repr(self.temperature)}, metric={self.metric!r}"
