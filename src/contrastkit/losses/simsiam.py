"""SimSiam loss module and the small predictor head shared with BYOL.

See :func:`contrastkit.functional.noncontrastive.simsiam_loss`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.noncontrastive import simsiam_loss
from contrastkit.losses.registry import register


class PredictionHead(nn.Module):
    """The predictor ``h`` of SimSiam / BYOL: ``Linear -> BatchNorm -> ReLU -> Linear``.

    A bottleneck MLP (SimSiam: 2048 -> 512 -> 2048; BYOL: 256 -> 4096 -> 256) applied to the
    online branch only; together with the stop-gradient it is what keeps these methods from
    collapsing.

    Args:
        dim: input and output width D.
        hidden_dim: width of the hidden layer.

    >>> head = PredictionHead(8, 4)
    >>> head(torch.randn(5, 8)).shape
    torch.Size([5, 8])
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, D) -> (B, D)."""
        return self.net(x)


@register("simsiam")
class SimSiamLoss(nn.Module):
    """SimSiam's symmetric negative cosine with stop-gradient on the targets.

    ``forward(prediction1, prediction2, target1, target2)``: predictions ``h(z_i)`` and
    projections ``z_i`` of the two views, each (B, D); scalar in [-1, 1].

    Args:
        stop_gradient: detach the targets; ``False`` exists only to reproduce the collapse.

    >>> z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    >>> float(SimSiamLoss()(z2, z1, z1, z2))
    -1.0
    """

    # Targets (positions 2 and 3 of forward) receive no gradient by design.
    stop_gradient_inputs = (2, 3)

    def __init__(self, stop_gradient: bool = True) -> None:
        super().__init__()
        self.stop_gradient = bool(stop_gradient)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward``, used by the registry-generated tests."""
        return tuple(torch.randn(8, 16, generator=generator, dtype=torch.float64) for _ in range(4))

    def forward(
        self, prediction1: Tensor, prediction2: Tensor, target1: Tensor, target2: Tensor
    ) -> Tensor:
        return simsiam_loss(
            prediction1, prediction2, target1, target2, stop_gradient=self.stop_gradient
        )

    def extra_repr(self) -> str:
        return f"stop_gradient={self.stop_gradient}"
