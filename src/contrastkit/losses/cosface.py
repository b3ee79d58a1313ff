"""CosFace loss module; see :func:`contrastkit.functional.proxy.cosface_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.class_logits import DEFAULT_BLOCK_SIZE
from contrastkit.functional.proxy import cosface_loss
from contrastkit.losses.class_centres import centres, labelled_example
from contrastkit.losses.registry import register


@register("cosface")
class CosFace(nn.Module):
    """CosFace (additive cosine margin, 0.35; scale 64) over ``num_classes`` class centres
    ``self.weight: (C, D)``. Same engine options as :class:`~contrastkit.losses.arcface.ArcFace`.

    >>> loss = CosFace(num_classes=5, embedding_dim=8)
    >>> loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4])).ndim
    0
    """

    inputs = "labelled"
    class_centres = "weight"  # trainers give it SGD: contrastkit.train.optimizer
    distributed = "local"

    def __init__(
        self,
        num_classes: int = 10,
        embedding_dim: int = 128,
        margin: float = 0.35,
        scale: float = 64.0,
        block_size: int = DEFAULT_BLOCK_SIZE,
        sample_fraction: float = 1.0,
        shard_classes: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.embedding_dim = num_classes, embedding_dim
        self.weight = centres(num_classes, embedding_dim, shard_classes=shard_classes)
        self.margin, self.scale = float(margin), float(scale)
        self.block_size, self.sample_fraction = block_size, float(sample_fraction)
        self.shard_classes = bool(shard_classes)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward`` (D = 16: a prefix of the default
        ``embedding_dim``, as a Matryoshka wrapper passes; C = 10)."""
        return labelled_example(generator)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return cosface_loss(
            embeddings,
            labels,
            self.weight,
            margin=self.margin,
            scale=self.scale,
            block_size=self.block_size,
            sample_fraction=self.sample_fraction,
            shard_classes=self.shard_classes,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"margin={self.margin}, scale={self.scale}"
        )
