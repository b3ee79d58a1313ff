"""ArcFace loss module; see :func:`contrastkit.functional.proxy.arcface_loss`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.functional.class_logits import DEFAULT_BLOCK_SIZE
from contrastkit.functional.proxy import arcface_loss
from contrastkit.losses.class_centres import centres, labelled_example
from contrastkit.losses.registry import register


@register("arcface")
class ArcFace(nn.Module):
    """ArcFace (additive angular margin, radians) over ``num_classes`` learnable class centres.

    ``forward(embeddings (B, D), labels (B,))``; the centres are ``self.weight: (C, D)``: give
    them to the optimiser with the encoder, checkpoint them, leave them out of the exported
    encoder. The class logits stream in blocks (never a ``(B, C)`` matrix), so C = 10^6 fits.

    Args:
        num_classes: C (the default 10 only serves the registry's tests: set it).
        embedding_dim: D of the embeddings.
        margin: additive angular margin in radians (0.5 = 28.6 degrees, insightface;
            pytorch-metric-learning's ``ArcFaceLoss`` takes degrees).
        scale: logit scale s (64).
        easy_margin: margin only where ``cos theta_y > 0`` (else the ``theta + m > pi``
            threshold: :func:`~contrastkit.functional.class_logits.arcface_margin`).
        block_size: classes per streamed block.
        sample_fraction: partial FC: fraction of the classes in each step's softmax (the
            batch's own always kept; biased, see :mod:`contrastkit.functional.class_logits`).
        shard_classes: under ``torchrun`` each rank holds ``C / W`` centres and the softmax is
            combined across ranks (build the module after ``init_process_group``).

    >>> loss = ArcFace(num_classes=5, embedding_dim=8)
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
        margin: float = 0.5,
        scale: float = 64.0,
        easy_margin: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE,
        sample_fraction: float = 1.0,
        shard_classes: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.embedding_dim = num_classes, embedding_dim
        self.weight = centres(num_classes, embedding_dim, shard_classes=shard_classes)
        self.margin, self.scale, self.easy_margin = float(margin), float(scale), bool(easy_margin)
        self.block_size, self.sample_fraction = block_size, float(sample_fraction)
        self.shard_classes = bool(shard_classes)

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward`` (D = 16: a prefix of the default
        ``embedding_dim``, as a Matryoshka wrapper passes; C = 10)."""
        return labelled_example(generator)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return arcface_loss(
            embeddings,
            labels,
            self.weight,
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
            f"margin={self.margin}, scale={self.scale}"
        )
