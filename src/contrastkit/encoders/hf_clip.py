"""A local CLIP or SigLIP folder as one two-tower model (``model.name: hf_clip``).

:class:`HFCLIPModel` holds transformers' ``CLIPModel`` / ``SiglipModel`` whole (both towers and
their projections), the folder's tokenizer and image processor (:class:`ImagePreprocess`), and
embeds as the checkpoint does: ``encode_image(images)`` = ``get_image_features`` normalised,
``encode_text(texts)`` = ``get_text_features`` normalised (CLIP pads to the longest text,
SigLIP to its fixed ``max_length`` as it was trained). The checkpoint's logit scale (and
SigLIP's bias) is what the loss starts from (:attr:`initial_temperature`,
:attr:`initial_bias`); :meth:`save_pretrained` writes a folder ``CLIPModel.from_pretrained`` /
``SiglipModel.from_pretrained`` loads.

CLIP: Radford et al. 2021, https://arxiv.org/abs/2103.00020; SigLIP: Zhai et al. 2023,
https://arxiv.org/abs/2303.15343.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.encoders.hf_vision import PROCESSOR_CONFIG, TWO_TOWER_TYPES, ImagePreprocess
from contrastkit.errors import ArgumentError


class HFCLIPModel(nn.Module):
    """``(images (B, C, H, W) in [0, 1], texts: B str) -> (image (B, D), text (B, D))``, both
    L2-normalised, from a local CLIP / SigLIP folder.

    Args:
        path: the folder (``config.json`` with model_type clip or siglip, safetensors weights,
            tokenizer files, ``preprocessor_config.json``).
        max_length: longest token sequence (default: the text tower's position limit).
    """

    def __init__(self, path: str | Path, max_length: int | None = None) -> None:
        super().__init__()
        from contrastkit.encoders.text import (
            SAFE_LOADING,
            _transformers,
            check_safetensors_folder,
            quiet_transformers,
        )

        tf = _transformers()
        folder = Path(path) if isinstance(path, str | Path) and str(path) else None
        if folder is None or not (folder / "config.json").is_file():
            raise ArgumentError(
                f"{{path}} must be a local CLIP / SigLIP folder (with config.json) for the model "
                f"'hf_clip', got {path!r}; nothing is downloaded.",
                "path",
            )
        check_safetensors_folder(folder)
        config = tf.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        self.kind = getattr(config, "model_type", "?")
        if self.kind not in TWO_TOWER_TYPES:
            raise ArgumentError(
                f"{{path}}: config.json model_type = {self.kind!r} is not a two-tower model; "
                "hf_clip takes a CLIPModel or SiglipModel folder (a single image tower: "
                "hf_vision).",
                "path",
            )
        with quiet_transformers(tf):
            self.model = tf.AutoModel.from_pretrained(str(folder), **SAFE_LOADING)
            self.tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        self.preprocess = ImagePreprocess.from_folder(folder)
        self._processor_file = folder / PROCESSOR_CONFIG
        limit = int(self.model.config.text_config.max_position_embeddings)
        self.max_length = min(int(max_length or limit), limit)
        self.out_features = int(
            getattr(self.model.config, "projection_dim", 0)
            or self.model.config.text_config.hidden_size
        )
        self.initial_temperature = min(1.0 / math.exp(float(self.model.logit_scale.detach())), 1.0)
        self.initial_temperature = max(self.initial_temperature, 0.01)
        bias = getattr(self.model, "logit_bias", None)
        self.initial_bias = float(bias.detach()) if bias is not None else None
        for name in ("logit_scale", "logit_bias"):  # the loss owns these while training
            p = getattr(self.model, name, None)
            if isinstance(p, nn.Parameter):
                p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """``input_ids`` (and ``attention_mask`` for CLIP): (B, T) on the model's device."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings (wrap a single string in a list).")
        padding = "max_length" if self.kind == "siglip" else True
        batch = self.tokenizer(
            list(texts),
            padding=padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        keep = ("input_ids", "attention_mask") if self.kind == "clip" else ("input_ids",)
        return {k: batch[k].to(self.device) for k in keep if k in batch}

    def encode_image(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) in [0, 1] -> (B, D) normalised ``get_image_features``."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # (B, 3, H, W)
        pixel_values = self.preprocess(images.float().contiguous())
        dtype = next(self.model.parameters()).dtype
        out = self.model.get_image_features(pixel_values=pixel_values.to(dtype))
        return F.normalize(_features(out), dim=-1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """B texts -> (B, D) normalised ``get_text_features``."""
        return self.encode_tokens(**self.tokenize(texts))

    def encode_tokens(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``input_ids`` (B, T) (and CLIP's ``attention_mask`` (B, T)) from :meth:`tokenize` ->
        (B, D) normalised ``get_text_features``: the text tower's graph (ONNX export)."""
        tokens = {"input_ids": input_ids}
        if attention_mask is not None:
            tokens["attention_mask"] = attention_mask
        return F.normalize(_features(self.model.get_text_features(**tokens)), dim=-1)

    def forward(self, images: Tensor, texts: list[str]) -> tuple[Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(texts)

    def set_logit_scale(self, temperature: float, bias: float | None = None) -> None:
        """Write a (learned) temperature and bias back into the checkpoint's parameters."""
        with torch.no_grad():
            self.model.logit_scale.fill_(math.log(1.0 / temperature))
            if bias is not None and getattr(self.model, "logit_bias", None) is not None:
                self.model.logit_bias.fill_(float(bias))

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write model, tokenizer and image-processor config: a folder ``AutoModel`` (and this
        class) loads."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        shutil.copyfile(self._processor_file, folder / PROCESSOR_CONFIG)
        return folder


def _features(out: Any) -> Tensor:
    """transformers 5 returns a model output whose ``pooler_output`` is the projection; older
    versions return the tensor itself."""
    return out if isinstance(out, Tensor) else out.pooler_output
