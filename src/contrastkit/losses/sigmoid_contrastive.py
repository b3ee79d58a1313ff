"""SigLIP pairwise sigmoid loss module; see :func:`contrastkit.functional.sigmoid_contrastive`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.collectives import world_group
from contrastkit.functional import sigmoid_contrastive
from contrastkit.functional.similarity import check_metric
from contrastkit.losses.examples import paired_example
from contrastkit.losses.registry import register
from contrastkit.losses.temperature import (
    LearnableTemperature,
    init_temperature,
    resolve_temperature,
)


@register("sigmoid_contrastive")
class SigmoidContrastive(nn.Module):
    """SigLIP loss with a temperature (float or learnable) and a bias (fixed or learnable).

    Args:
        temperature: float > 0 or :class:`LearnableTemperature` (SigLIP starts at 0.1).
        bias: initial bias (SigLIP starts at -10).
        learn_bias: make the bias an ``nn.Parameter``.
        metric: ``"cosine"``, ``"dot"`` or ``"euclidean"``.

    >>> loss = SigmoidContrastive(temperature=LearnableTemperature(0.1, max_scale=100.0), learn_bias=True)
    >>> sorted(n for n, _ in loss.named_parameters())
    ['bias', 'temperature.log_scale']
    """

    inputs = "pair"
    distributed = "gather"

    def __init__(
        self,
        temperature: float | LearnableTemperature = 0.1,
        bias: float = -10.0,
        learn_bias: bool = False,
        metric: str = "cosine",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = init_temperature(temperature)
        self.metric = check_metric(metric)
        self.gather_distributed = bool(gather_distributed)
        b = torch.tensor(float(bias))
        if learn_bias:
            self.bias = nn.Parameter(b)
        else:
            self.register_buffer("bias", b)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return paired_example(generator)

    def forward(self, a: Tensor, b: Tensor, *, reduction: str = "mean") -> Tensor:
        return sigmoid_contrastive(
            a,
            b,
            temperature=resolve_temperature(self.temperature),
            bias=self.bias,
            metric=self.metric,
            reduction=reduction,
            group=world_group() if self.gather_distributed else None,
        )
