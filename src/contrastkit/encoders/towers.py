"""Two-tower models: a dual encoder for query/key pairs and an image-text model.

A dual encoder embeds the two sides of a pair separately, so keys can be indexed once and
searched with any query (DPR, Karpukhin et al. 2020, https://arxiv.org/abs/2004.04906). With
one shared tower both sides live in one space by construction (symmetric tasks: paraphrases,
duplicates); separate towers suit asymmetric ones (question -> passage).

:class:`ImageTextModel` is CLIP's two-tower layout (Radford et al. 2021,
https://arxiv.org/abs/2103.00020): an image encoder and a text encoder, each followed by a
linear projection into a shared D-dim space, L2-normalised, with a learnable temperature
(:class:`contrastkit.losses.LearnableTemperature`) for the symmetric InfoNCE loss.
"""

from __future__ import annotations

import copy
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.losses.temperature import LearnableTemperature


class DualEncoder(nn.Module):
    """``(query, key) -> (query embeddings (B, D), key embeddings (B, D))``.

    Args:
        query_encoder: the query tower.
        key_encoder: the key tower; ``None`` shares the query tower (``shared=True``) or makes
            an independent copy of it (``shared=False``).
        shared: with ``key_encoder=None``, whether both sides use the same weights.

    >>> from contrastkit.encoders.vision import MLPEncoder
    >>> import torch
    >>> dual = DualEncoder(MLPEncoder(4, 8, 2), shared=False)
    >>> q, k = dual(torch.rand(3, 4), torch.rand(3, 4))
    >>> q.shape, k.shape, dual.shared
    (torch.Size([3, 2]), torch.Size([3, 2]), False)
    """

    def __init__(
        self, query_encoder: nn.Module, key_encoder: nn.Module | None = None, shared: bool = True
    ) -> None:
        super().__init__()
        if key_encoder is not None and key_encoder is query_encoder:
            key_encoder = None
        self.query_encoder = query_encoder
        if key_encoder is None and not shared:
            key_encoder = copy.deepcopy(query_encoder)
        self.key_encoder = key_encoder  # None: shared with query_encoder
        self.shared = key_encoder is None

    def encode_query(self, query: Any) -> Tensor:
        return self.query_encoder(query)

    def encode_key(self, key: Any) -> Tensor:
        return (self.query_encoder if self.key_encoder is None else self.key_encoder)(key)

    def forward(self, query: Any, key: Any) -> tuple[Tensor, Tensor]:
        return self.encode_query(query), self.encode_key(key)


def _width(module: nn.Module, given: int | None, name: str) -> int:
    if given is not None:
        return int(given)
    width = getattr(module, "out_features", None)
    if width is None:
        raise ValueError(
            f"{name} has no out_features attribute; pass {name.replace('encoder', 'dim')}= "
            "(its output width)."
        )
    return int(width)


class ImageTextModel(nn.Module):
    """CLIP-style towers: ``(images, texts) -> (image embeddings (B, D), text embeddings (B, D))``,
    both L2-normalised; ``temperature()`` is the learnable temperature for the loss.

    Args:
        image_encoder: images -> (B, F_img) (e.g. :class:`SmallCNN`).
        text_encoder: texts -> (B, F_txt) (e.g. :class:`TextEncoder`).
        embedding_dim: D, the shared space.
        image_dim, text_dim: F_img, F_txt when the encoders lack ``out_features``.
        temperature: initial temperature (CLIP: 0.07).

    >>> import torch
    >>> from contrastkit.encoders.vision import SmallCNN
    >>> model = ImageTextModel(SmallCNN(3), nn.EmbeddingBag(10, 16), 8, text_dim=16)
    >>> img, txt = model(torch.rand(2, 3, 16, 16), torch.tensor([[1, 2], [3, 4]]))
    >>> img.shape, txt.shape, round(model.temperature().item(), 2)
    (torch.Size([2, 8]), torch.Size([2, 8]), 0.07)
    >>> model.logits(img, txt).shape  # image i vs text j, divided by the temperature
    torch.Size([2, 2])
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        embedding_dim: int = 128,
        image_dim: int | None = None,
        text_dim: int | None = None,
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.image_projection = nn.Linear(
            _width(image_encoder, image_dim, "image_encoder"), embedding_dim
        )
        self.text_projection = nn.Linear(
            _width(text_encoder, text_dim, "text_encoder"), embedding_dim
        )
        self.temperature = LearnableTemperature(temperature)
        self.out_features = embedding_dim

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, D) normalised image embeddings."""
        return F.normalize(self.image_projection(self.image_encoder(images)), dim=-1)

    def encode_text(self, texts: Any) -> Tensor:
        """(B, D) normalised text embeddings."""
        return F.normalize(self.text_projection(self.text_encoder(texts)), dim=-1)

    def forward(self, images: Tensor, texts: Any) -> tuple[Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(texts)

    def logits(self, image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
        """(B_img, B_txt) cosine similarities divided by the learnable temperature."""
        return image_embeddings @ text_embeddings.T / self.temperature()
