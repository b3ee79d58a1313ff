"""The encoder registry: configs name encoders by string, and every encoder declares what it is
when it registers (read back with :func:`encoder_spec`).

Members import this module and register themselves; the package ``__init__`` imports the members,
so importing anything from ``contrastkit.encoders`` fills the registry, and this module imports
none of them (no import cycle).

>>> "small_cnn" in ENCODERS
True
>>> create_encoder("mlp", in_features=4, hidden_features=8, embedding_dim=2)(torch.rand(3, 4)).shape
torch.Size([3, 2])
>>> encoder_spec("minilm")
EncoderSpec(inputs='text', pretrained=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch  # noqa: F401  (used by the doctest)
from torch import nn

from contrastkit.registry import Registry

INPUTS = ("image", "text", "embedding", "audio")
"""What an encoder's ``forward`` takes. ``"image"``: ``(B, C, H, W)`` float images (``mlp``
flattens them, so it also takes ``(B, F)`` features); ``"text"``: a list of B strings (text
towers also embed tokenized batches); ``"embedding"``: ``(B, D)`` features from another encoder
(projection and prediction heads); ``"audio"``: ``(B, T)`` float mono waveforms and a ``(B, T)``
bool mask of the real samples (audio towers)."""


@dataclass(frozen=True)
class EncoderSpec:
    """What a registered encoder declares: its ``inputs`` (one of :data:`INPUTS`) and whether it
    starts from trained weights (``pretrained``: fine-tuning wants a learning rate about 10x
    lower than training from scratch)."""

    inputs: str
    pretrained: bool = False

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, got {self.inputs!r}.")
        if not isinstance(self.pretrained, bool):
            raise TypeError(f"pretrained must be a bool, got {self.pretrained!r}.")


ENCODERS: Registry = Registry("encoder", declares=EncoderSpec)
register = ENCODERS.register


def encoder_spec(name: str) -> EncoderSpec:
    """What the encoder registered as ``name`` declared (an unknown name is a ValueError with
    suggestions).

    >>> encoder_spec("small_cnn")
    EncoderSpec(inputs='image', pretrained=False)
    """
    return ENCODERS.spec(name)


def is_pretrained(name: str) -> bool:
    """Whether the encoder registered as ``name`` starts from trained weights (its declared
    ``pretrained``); False for a name that is not registered (the config names the typo).

    >>> is_pretrained("minilm"), is_pretrained("small_cnn")
    (True, False)
    """
    return name in ENCODERS and encoder_spec(name).pretrained


def create_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the encoder registered as ``name`` (see :func:`list_encoders`)."""
    return ENCODERS.create(name, **kwargs)


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a shell-style ``pattern``."""
    return ENCODERS.list(pattern)
