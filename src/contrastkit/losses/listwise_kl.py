"""Listwise KL distillation module; see
:func:`contrastkit.functional.distill.listwise_kl_distillation`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit._checks import check_temperature
from contrastkit.functional.distill import listwise_kl_distillation
from contrastkit.functional.similarity import check_metric
from contrastkit.losses.examples import distillation_example, temperature_repr
from contrastkit.losses.registry import register
from contrastkit.losses.temperature import (
    LearnableTemperature,
    init_temperature,
    resolve_temperature,
)


@register("listwise_kl")
class ListwiseKL(nn.Module):
    """Listwise KL distillation (RocketQAv2, https://arxiv.org/abs/2110.07367; BGE): each query's
    softmax over its positive and M negatives follows the teacher's.

    ``forward(query (B, D), key (B, D), negatives (B, M, D), teacher_scores (B, 1 + M), *,
    mask=None)``. ``temperature`` divides the student's scores (the loss is scaled by its
    square), ``teacher_temperature`` the teacher's. Relations: with a one-hot teacher this is
    InfoNCE over the row's own candidates; :class:`~contrastkit.losses.margin_mse.MarginMSE`
    regresses margins instead.

    >>> q, k, n, t = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 3, 4), torch.randn(2, 4)
    >>> ListwiseKL(temperature=0.05, metric="cosine")(q, k, n, t).shape
    torch.Size([])
    """

    inputs = "teacher_scores"
    distributed = "local"
    stop_gradient_inputs = (3,)  # the teacher's scores are data

    def __init__(
        self,
        temperature: float | LearnableTemperature = 1.0,
        teacher_temperature: float = 1.0,
        metric: str = "dot",
    ) -> None:
        super().__init__()
        self.temperature = init_temperature(temperature)
        check_temperature(teacher_temperature, "teacher_temperature")
        self.teacher_temperature = float(teacher_temperature)
        self.metric = check_metric(metric)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return distillation_example(generator)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        negatives: Tensor,
        teacher_scores: Tensor,
        *,
        mask: Tensor | None = None,
    ) -> Tensor:
        return listwise_kl_distillation(
            query,
            key,
            negatives,
            teacher_scores,
            temperature=resolve_temperature(self.temperature),
            teacher_temperature=self.teacher_temperature,
            metric=self.metric,
            mask=mask,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={temperature_repr(self.temperature)}, "
            f"teacher_temperature={self.teacher_temperature}, metric={self.metric!r}"
        )
