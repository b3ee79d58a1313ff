"""Sub-center ArcFace loss module; see :func:`contrastkit.functional.proxy.subcenter_arcface_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.class_logits import DEFAULT_BLOCK_SIZE
from contrastkit.functional.proxy import subcenter_arcface_loss
from contrastkit.losses.class_centres import centres, labelled_example
from contrastkit.losses.registry import register


@register("subcenter_arcface")
class SubCenterArcFace(nn.Module):
    """Sub-center ArcFace: ``num_subcenters`` centres per class, a class's cosine the max over
    them; ``self.weight: (C * K, D)``, class-major (rows ``c*K .. c*K+K-1`` are class ``c``).

    Same arguments as :class:`~contrastkit.losses.arcface.ArcFace`, plus ``num_subcenters`` (K,
    3 in the paper). ``forward(embeddings (B, D), labels (B,))``.

    >>> loss = SubCenterArcFace(num_classes=5, embedding_dim=8, num_subcenters=2)
    >>> loss.weight.shape, loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4])).ndim
    (torch.Size([10, 8]), 0)
    """

    inputs = "labelled"
    class_centres = "weight"  # trainers give it SGD: contrastkit.train.optimizer
    distributed = "local"

    def __init__(
        self,
        num_classes: int = 10,
        embedding_dim: int = 128,
        num_subcenters: int = 3,
        margin: float = 0.5,
        scale: float = 64.0,
        easy_margin: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE,
        sample_fraction: float = 1.0,
        shard_classes: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.embedding_dim = num_classes, embedding_dim
        self.num_subcenters = num_subcenters
        self.weight = centres(
            num_classes, embedding_dim, num_subcenters=num_subcenters, shard_classes=shard_classes
        )
        self.margin, self.scale, self.easy_margin = float(margin), float(scale), bool(easy_margin)
        self.block_size, self.sample_fraction = block_size, float(sample_fraction)
        self.shard_classes = bool(shard_classes)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward`` (D = 16: a prefix of the default
        ``embedding_dim``, as a Matryoshka wrapper passes; C = 10)."""
        return labelled_example(generator)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return subcenter_arcface_loss(
            embeddings,
            labels,
            self.weight,
            num_subcenters=self.num_subcenters,
            margin=self.margin,
            scale=self.scale,
            easy_margin=self.easy_margin,
            block_size=self.block_size,
            sample_fraction=self.sample_fraction,
            shard_classes=self.shard_classes,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"num_subcenters={self.num_subcenters}, margin={self.margin}, scale={self.scale}"
        )
