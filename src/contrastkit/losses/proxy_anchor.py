"""Proxy Anchor loss module; see :func:`contrastkit.functional.proxy.proxy_anchor_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.class_logits import DEFAULT_BLOCK_SIZE
from contrastkit.functional.proxy import proxy_anchor_loss
from contrastkit.losses.class_centres import centres, labelled_example
from contrastkit.losses.registry import register


@register("proxy_anchor")
class ProxyAnchor(nn.Module):
    """Proxy Anchor (margin 0.1, alpha 32) over ``num_classes`` proxies ``self.weight: (C, D)``
    (Kaiming-normal init, as in the paper). Its positive term averages over the classes present
    in the batch, so under ``torchrun`` it needs the global batch (``distributed =
    "global_batch"``). The paper trains the proxies with a 100x larger learning rate.

    >>> loss = ProxyAnchor(num_classes=5, embedding_dim=8)
    >>> loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4])).ndim
    0
    """

    inputs = "labelled"
    class_centres = "weight"  # trainers give it SGD: contrastkit.train.optimizer
    distributed = "global_batch"

    def __init__(
        self,
        num_classes: int = 10,
        embedding_dim: int = 128,
        margin: float = 0.1,
        alpha: float = 32.0,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        super().__init__()
        self.num_classes, self.embedding_dim = num_classes, embedding_dim
        self.weight = centres(num_classes, embedding_dim, std=None)
        self.margin, self.alpha, self.block_size = float(margin), float(alpha), block_size

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward`` (D = 16: a prefix of the default
        ``embedding_dim``, as a Matryoshka wrapper passes; C = 10)."""
        return labelled_example(generator)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return proxy_anchor_loss(
            embeddings,
            labels,
            self.weight,
            margin=self.margin,
            alpha=self.alpha,
            block_size=self.block_size,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"margin={self.margin}, alpha={self.alpha}"
        )
