"""VICReg loss module; see :func:`contrastkit.functional.noncontrastive.vicreg_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit._checks import check_positive_number
from contrastkit.functional.noncontrastive import (
    vicreg_covariance,
    vicreg_invariance,
    vicreg_loss,
    vicreg_variance,
)
from contrastkit.losses.registry import register


@register("vicreg")
class VICRegLoss(nn.Module):
    """VICReg: invariance + variance hinge + covariance penalty, weights 25 / 25 / 1.

    ``forward(query, key)`` on (B, D) expander outputs of two views returns the weighted sum;
    :meth:`parts` returns the three unweighted terms for logging.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(16, 4, generator=g)
    >>> sorted(VICRegLoss().parts(z, z))
    ['covariance', 'invariance', 'variance']
    """

    inputs = "pair"
    distributed = "global_batch"

    def __init__(
        self,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.invariance_weight = check_positive_number(
            "invariance_weight", invariance_weight, allow_zero=True
        )
        self.variance_weight = check_positive_number(
            "variance_weight", variance_weight, allow_zero=True
        )
        self.covariance_weight = check_positive_number(
            "covariance_weight", covariance_weight, allow_zero=True
        )
        self.gamma = check_positive_number("gamma", gamma)
        self.eps = check_positive_number("eps", eps)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return (
            torch.randn(8, 16, generator=generator, dtype=torch.float64),
            torch.randn(8, 16, generator=generator, dtype=torch.float64),
        )

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return vicreg_loss(
            query,
            key,
            invariance_weight=self.invariance_weight,
            variance_weight=self.variance_weight,
            covariance_weight=self.covariance_weight,
            gamma=self.gamma,
            eps=self.eps,
        )

    def parts(self, query: Tensor, key: Tensor) -> dict[str, Tensor]:
        """The unweighted terms: invariance, variance (mean of views), covariance (sum of views)."""
        return {
            "invariance": vicreg_invariance(query, key),
            "variance": 0.5
            * (
                vicreg_variance(query, gamma=self.gamma, eps=self.eps)
                + vicreg_variance(key, gamma=self.gamma, eps=self.eps)
            ),
            "covariance": vicreg_covariance(query) + vicreg_covariance(key),
        }

    def extra_repr(self) -> str:
        return (
            f"invariance_weight={self.invariance_weight:g}, variance_weight={self.variance_weight:g}, "
            f"covariance_weight={self.covariance_weight:g}"
        )
