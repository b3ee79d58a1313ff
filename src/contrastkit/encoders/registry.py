"""The encoder registry: configs name encoders by string.

>>> "small_cnn" in ENCODERS
True
>>> create_encoder("mlp", in_features=4, hidden_features=8, embedding_dim=2)(torch.rand(3, 4)).shape
torch.Size([3, 2])
"""

from __future__ import annotations

from typing import Any

import torch  # noqa: F401  (used by the doctest)
from torch import nn

from contrastkit.registry import Registry

ENCODERS: Registry = Registry("encoder")
register = ENCODERS.register


def _load_all() -> None:
    # Importing the modules registers their encoders.
    from contrastkit.encoders import heads, resnet, text, vision  # noqa: F401


PRETRAINED: frozenset[str] = frozenset({"hf", "hf_text", "minilm"})
"""Registered encoders that load trained weights (text towers from a model folder: the packaged
all-MiniLM-L6-v2 or the user's own); every other entry starts from a random initialisation."""


def is_pretrained(name: str) -> bool:
    """Whether the encoder registered as ``name`` starts from trained weights (fine-tuning wants
    a learning rate about 10x lower than training from scratch).

    >>> is_pretrained("minilm"), is_pretrained("small_cnn")
    (True, False)
    """
    return name in PRETRAINED


def create_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the encoder registered as ``name`` (see :func:`list_encoders`)."""
    _load_all()
    return ENCODERS.create(name, **kwargs)


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a shell-style ``pattern``."""
    _load_all()
    return ENCODERS.list(pattern)
