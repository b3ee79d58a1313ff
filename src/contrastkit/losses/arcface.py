"""ArcFace loss module; see :func:`contrastkit.functional.proxy.arcface_loss`."""

from __future__ import annotations

from torch import Tensor

from contrastkit.functional.class_logits import DEFAULT_BLOCK_SIZE
from contrastkit.functional.proxy import arcface_loss
from contrastkit.losses.class_centres import StreamedCentreLoss
from contrastkit.losses.registry import register


@register("arcface")
class ArcFace(StreamedCentreLoss):
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

    >>> import torch
    >>> loss = ArcFace(num_classes=5, embedding_dim=8)
    >>> loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4])).ndim
    0
    """

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
        self._init_centres(
            num_classes,
            embedding_dim,
            block_size=block_size,
            sample_fraction=sample_fraction,
            shard_classes=shard_classes,
        )
        self.margin, self.scale, self.easy_margin = float(margin), float(scale), bool(easy_margin)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return arcface_loss(
            embeddings,
            labels,
            self.weight,
            margin=self.margin,
            scale=self.scale,
            easy_margin=self.easy_margin,
            **self.engine_options(),
        )

    def repr_options(self) -> dict[str, object]:
        return {"margin": self.margin, "scale": self.scale}
