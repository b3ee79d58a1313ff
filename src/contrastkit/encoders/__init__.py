"""Encoders: backbones, projection heads, text towers, momentum (EMA) copies."""

from contrastkit.encoders.momentum import MomentumEncoder, cosine_momentum

__all__ = ["MomentumEncoder", "cosine_momentum"]
