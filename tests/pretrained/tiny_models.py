"""Tiny random Hugging Face folders written with save_pretrained (no download): CLIP, SigLIP,
ViT, DINOv2, ConvNeXt, each with an image-processor config, and the text models' tokenizer from
the packaged MiniLM (its 30,522 word pieces)."""

from __future__ import annotations

from pathlib import Path

import torch

from contrastkit.encoders.text import default_model_path

VOCAB = 30522
SEP, PAD = 102, 0


def _tokenizer(folder: Path) -> None:
    import transformers as tf

    tf.AutoTokenizer.from_pretrained(str(default_model_path())).save_pretrained(str(folder))


def _processor(folder: Path, size: int = 32, kind: str = "clip") -> None:
    import transformers as tf

    mean, std = [0.48, 0.45, 0.41], [0.27, 0.26, 0.28]
    if kind == "clip":
        proc = tf.CLIPImageProcessor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=mean,
            image_std=std,
        )
    else:
        proc = tf.ViTImageProcessor(
            size={"height": size, "width": size}, image_mean=mean, image_std=std
        )
    proc.save_pretrained(str(folder))


def tiny_clip(folder: Path, seed: int = 0) -> Path:
    import transformers as tf

    torch.manual_seed(seed)
    text = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        eos_token_id=SEP,
        pad_token_id=PAD,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    tf.CLIPModel(config).save_pretrained(str(folder))
    _tokenizer(folder)
    _processor(folder)
    return folder


def tiny_siglip(folder: Path, seed: int = 0) -> Path:
    import transformers as tf

    torch.manual_seed(seed)
    text = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        pad_token_id=PAD,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = tf.SiglipConfig(text_config=text, vision_config=vision)
    tf.SiglipModel(config).save_pretrained(str(folder))
    _tokenizer(folder)
    _processor(folder, kind="vit")
    return folder


def tiny_vit(folder: Path, kind: str = "vit", seed: int = 0) -> Path:
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    if kind == "vit":
        tf.ViTModel(tf.ViTConfig(**common)).save_pretrained(str(folder))
    elif kind == "dinov2":
        tf.Dinov2Model(tf.Dinov2Config(**common)).save_pretrained(str(folder))
    elif kind == "convnext":
        config = tf.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
        tf.ConvNextModel(config).save_pretrained(str(folder))
    else:
        raise ValueError(kind)
    _processor(folder, kind="vit")
    return folder
