"""MarginMSE loss module; see :func:`contrastkit.functional.distill.margin_mse`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.distill import margin_mse
from contrastkit.functional.similarity import check_metric
from contrastkit.losses.examples import distillation_example
from contrastkit.losses.registry import register


@register("margin_mse")
class MarginMSE(nn.Module):
    """MarginMSE (Hofstätter et al. 2020, https://arxiv.org/abs/2010.02666): the student's
    margins ``s(q, p) - s(q, n)`` regress the teacher's ``t_p - t_n``.

    ``forward(query (B, D), key (B, D), negatives (B, M, D), teacher_scores (B, 1 + M), *,
    mask=None)``; the teacher's scores come from the data (``contrastkit mine --scorer``).
    Relations: :class:`~contrastkit.losses.listwise_kl.ListwiseKL` matches the whole softmax
    instead of each margin; combine either with ``info_nce`` as weighted loss terms.

    >>> q, k, n, t = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 3, 4), torch.randn(2, 4)
    >>> MarginMSE()(q, k, n, t).shape
    torch.Size([])
    """

    inputs = "teacher_scores"
    distributed = "local"
    stop_gradient_inputs = (3,)  # the teacher's scores are data

    def __init__(self, metric: str = "dot") -> None:
        super().__init__()
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
        return margin_mse(query, key, negatives, teacher_scores, metric=self.metric, mask=mask)

    def extra_repr(self) -> str:
        return f"metric={self.metric!r}"
