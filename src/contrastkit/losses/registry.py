"""The loss registry: configs name losses, tests iterate them.

>>> "info_nce" in list_losses()
True
>>> create_loss("info_nce", temperature=0.1)
InfoNCE(temperature=0.1, metric='cosine', symmetric=False)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from contrastkit.registry import Registry

LOSSES: Registry[Any] = Registry("loss")
register = LOSSES.register


def list_losses(pattern: str = "*") -> list[str]:
    """Registered loss names matching a shell-style pattern."""
    return LOSSES.list(pattern)


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered loss module by name."""
    return LOSSES.create(name, **kwargs)
