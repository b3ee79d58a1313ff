"""Encoders: backbones, projection heads, text towers, momentum (EMA) copies.

Configs name encoders through the registry: ``create_encoder("small_cnn", in_channels=1)``.
"""

from contrastkit.encoders.audio import AudioCNN, HFAudioEncoder
from contrastkit.encoders.heads import PredictionHead, ProjectedEncoder, ProjectionHead
from contrastkit.encoders.hf_vision import HFVisionEncoder, ImagePreprocess
from contrastkit.encoders.momentum import MomentumEncoder, cosine_momentum
from contrastkit.encoders.registry import ENCODERS, create_encoder, list_encoders, register
from contrastkit.encoders.resnet import ResNet, resnet18, resnet50
from contrastkit.encoders.saved import load_encoder, save_encoder
from contrastkit.encoders.text import EmbedTokens, TextEncoder, mean_pool, tiny_text_encoder
from contrastkit.encoders.towers import DualEncoder, ImageTextModel
from contrastkit.encoders.vision import MLPEncoder, SmallCNN, SmallResNet

__all__ = [
    "ENCODERS",
    "AudioCNN",
    "DualEncoder",
    "EmbedTokens",
    "HFAudioEncoder",
    "HFVisionEncoder",
    "ImagePreprocess",
    "ImageTextModel",
    "MLPEncoder",
    "MomentumEncoder",
    "PredictionHead",
    "ProjectedEncoder",
    "ProjectionHead",
    "ResNet",
    "SmallCNN",
    "SmallResNet",
    "TextEncoder",
    "cosine_momentum",
    "create_encoder",
    "list_encoders",
    "load_encoder",
    "mean_pool",
    "register",
    "resnet18",
    "resnet50",
    "save_encoder",
    "tiny_text_encoder",
]
