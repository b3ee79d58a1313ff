"""Any local Hugging Face vision model folder as an image tower (``hf_vision``).

ViT, DINOv2, CLIPVisionModel, SiglipVisionModel, ConvNeXt: whatever ``transformers.AutoModel``
loads and calls with ``pixel_values`` (the vision tower of a CLIP / SigLIP folder too). The
folder's ``preprocessor_config.json`` is honoured by :class:`ImagePreprocess`: resize (to a
fixed ``height`` x ``width`` or the ``shortest_edge``, with the folder's resample filter),
centre crop, then ``(x - mean) / std``, all as batched torch ops on ``images (B, C, H, W)``
float in [0, 1], so the training views (crops, flips, jitter) still run before it on the batch.

Pooling (``pooling``): ``cls`` (the first token), ``mean`` (every token; every position of a
convolutional feature map), ``pooler`` (the model's own pooled output: ViT's tanh dense layer,
CLIP's post-layernorm CLS token, DINOv2's normalised CLS token, ConvNeXt's pooled map);
``auto`` takes ``pooler`` when the model has one, else ``mean``.

Numerics: torch's antialiased bilinear / bicubic resize is not PIL's, so the pixels of a resized
image differ slightly from ``AutoImageProcessor``'s (not measured here); an image already at the
model's size passes through the normalisation only (exact).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.encoders.registry import register
from contrastkit.errors import ArgumentError

PROCESSOR_CONFIG = "preprocessor_config.json"
POOLINGS = ("auto", "cls", "mean", "pooler")
# PIL's resample codes (what save_pretrained writes) -> torch interpolation modes
RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}
TWO_TOWER_TYPES = ("clip", "siglip")


def _pair(value: Any, key: str, path: Path) -> tuple[int, int] | int:
    """``{"height", "width"}`` -> (h, w); ``{"shortest_edge"}`` or an int -> int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return (int(value["height"]), int(value["width"]))
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
    raise ValueError(
        f"{path}: {key} = {value!r} is not an image size; write {{'height': H, 'width': W}} or "
        "{'shortest_edge': S}."
    )


@dataclass(frozen=True)
class ImagePreprocess:
    """A Hugging Face image processor's resize / crop / normalise as batched torch ops.

    Args:
        size: (h, w) to resize to, an int shortest edge (aspect kept), or None (no resize).
        crop: (h, w) centre crop after the resize, or None.
        mean, std: per-channel normalisation.
        mode: ``nearest``, ``bilinear`` or ``bicubic``.

    >>> pre = ImagePreprocess(size=(4, 4), crop=None, mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> pre(torch.ones(2, 3, 8, 8)).shape, float(pre(torch.ones(1, 3, 4, 4)).max())
    (torch.Size([2, 3, 4, 4]), 1.0)
    """

    size: tuple[int, int] | int | None
    crop: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    mode: str = "bicubic"

    @classmethod
    def from_folder(cls, folder: str | Path) -> ImagePreprocess:
        """Read ``folder/preprocessor_config.json`` (a missing file or key is one line naming
        it)."""
        path = Path(folder) / PROCESSOR_CONFIG
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: an image tower needs the folder's image-processor config "
                "(size, mean/std); save it beside the model with "
                "AutoImageProcessor.save_pretrained(folder)."
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a JSON object ({err}); re-save it.") from None
        size: tuple[int, int] | int | None = None
        if raw.get("do_resize", True):
            if "size" not in raw:
                raise ValueError(f"{path}: size is missing (do_resize is true); add it.")
            size = _pair(raw["size"], "size", path)
        crop = None
        if raw.get("do_center_crop", False) and raw.get("crop_size") is not None:
            c = _pair(raw["crop_size"], "crop_size", path)
            crop = c if isinstance(c, tuple) else (c, c)
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if raw.get("do_normalize", True):
            for key in ("image_mean", "image_std"):
                if not isinstance(raw.get(key), list | tuple | float | int):
                    raise ValueError(f"{path}: {key} = {raw.get(key)!r}; write 3 floats.")
            mean = tuple(float(v) for v in _three(raw["image_mean"]))
            std = tuple(float(v) for v in _three(raw["image_std"]))
        resample = raw.get("resample", 3)
        if resample not in RESAMPLE:
            raise ValueError(f"{path}: resample = {resample!r}; use a PIL filter code 0-5.")
        return cls(size, crop, mean, std, RESAMPLE[resample])

    @property
    def out_size(self) -> tuple[int, int] | None:
        """(h, w) of the output when it is fixed (a crop or a fixed resize)."""
        if self.crop is not None:
            return self.crop
        return self.size if isinstance(self.size, tuple) else None

    def __call__(self, images: Tensor) -> Tensor:
        """images: (B, C, H, W) float in [0, 1] -> pixel_values (B, C, h, w)."""
        x = images
        if self.size is not None:
            h, w = x.shape[-2:]
            if isinstance(self.size, int):
                s = self.size / min(h, w)
                target = (max(1, int(h * s)), max(1, int(w * s)))
            else:
                target = self.size
            if target != (h, w):
                smooth = self.mode != "nearest"
                x = (
                    F.interpolate(
                        x, size=target, mode=self.mode, antialias=smooth, align_corners=False
                    )
                    if smooth
                    else F.interpolate(x, size=target, mode="nearest")
                )
        if self.crop is not None:
            h, w = x.shape[-2:]
            ch, cw = self.crop
            top, left = max(0, (h - ch) // 2), max(0, (w - cw) // 2)
            x = x[..., top : top + ch, left : left + cw]  # (B, C, ch, cw)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _three(v: Any) -> list[float]:
    return [float(v)] * 3 if isinstance(v, int | float) else list(v)


def pool_vision(output: Any, pooling: str) -> Tensor:
    """(B, F) from a vision model's output: ``cls`` = token 0 of ``last_hidden_state`` (B, T, F),
    ``mean`` = its average over tokens (or over positions of a (B, F, H, W) map),
    ``pooler`` = ``pooler_output``."""
    hidden = output.last_hidden_state
    if pooling == "pooler":
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            raise ValueError("pooling='pooler': this model has no pooler output; use cls or mean.")
        return pooled.flatten(1)  # (B, F) (ConvNeXt: (B, F, 1, 1) in some versions)
    if hidden.ndim == 4:  # (B, F, H, W) convolutional map
        if pooling == "cls":
            raise ValueError("pooling='cls': a convolutional model has no CLS token; use mean.")
        return hidden.mean((2, 3))  # (B, F)
    return hidden[:, 0] if pooling == "cls" else hidden.mean(1)  # (B, F)


def load_vision_model(folder: Path) -> nn.Module:
    """The vision tower of a local folder: ``AutoModel`` of a vision model, or the
    ``vision_model`` of a CLIP / SigLIP folder. A folder whose model does not take
    ``pixel_values`` is one line naming its ``model_type``."""
    from contrastkit.encoders.text import (
        SAFE_LOADING,
        _transformers,
        check_safetensors_folder,
        quiet_transformers,
    )

    tf = _transformers()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"path {str(folder)!r} has no config.json; pass a folder saved with save_pretrained."
        )
    check_safetensors_folder(folder)
    config = tf.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    kind = getattr(config, "model_type", "?")
    with quiet_transformers(tf):
        if kind in TWO_TOWER_TYPES:
            classes = {"clip": tf.CLIPVisionModel, "siglip": tf.SiglipVisionModel}
            return classes[kind].from_pretrained(str(folder), **SAFE_LOADING)
        mapping = tf.AutoModel._model_mapping
        try:
            cls = mapping[type(config)]
        except KeyError:
            cls = None
        if cls is None or getattr(cls, "main_input_name", None) != "pixel_values":
            raise ArgumentError(
                f"{{path}}: config.json model_type = {kind!r} is not a vision model (its "
                "model does not take pixel_values); pass a ViT / DINOv2 / CLIP / SigLIP / "
                "ConvNeXt folder, or use the text encoder 'hf' for a text model.",
                "path",
            )
        return cls.from_pretrained(str(folder), **SAFE_LOADING)


@register("hf_vision", inputs="image", pretrained=True)
class HFVisionEncoder(nn.Module):
    """``images (B, C, H, W)`` in [0, 1] -> ``features (B, F)``: the folder's image processor
    (:class:`ImagePreprocess`), its vision model, then ``pooling``.

    Args:
        path: a local Hugging Face vision model folder with ``preprocessor_config.json``.
        pooling: ``auto``, ``cls``, ``mean`` or ``pooler`` (see the module docstring).
        in_channels: C of the images given (1: repeated to the model's 3 channels).
    """

    def __init__(self, path: str | Path, pooling: str = "auto", in_channels: int = 3) -> None:
        super().__init__()
        if not isinstance(path, str | Path) or not str(path) or not Path(path).is_dir():
            raise ArgumentError(
                f"{{path}} must be a local model folder for the encoder 'hf_vision', got "
                f"{path!r}; e.g. {{path}}=/models/dinov2-small (nothing is downloaded).",
                "path",
            )
        if pooling not in POOLINGS:
            raise ArgumentError(
                f"{{pooling}} = {pooling!r}; use one of {', '.join(POOLINGS)}.", "pooling"
            )
        folder = Path(path)
        self.model = load_vision_model(folder)
        self.preprocess = ImagePreprocess.from_folder(folder)
        self.in_channels = int(in_channels)
        self.pooling = pooling
        probe = self.preprocess.out_size or (32, 32)
        with torch.no_grad():
            was = self.model.training
            out = self.model.eval()(pixel_values=torch.zeros(1, 3, *probe))
            self.model.train(was)
        if pooling == "auto":
            self.pooling = "pooler" if getattr(out, "pooler_output", None) is not None else "mean"
        self.out_features = int(pool_vision(out, self.pooling).shape[-1])

    def forward(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4:
            raise ValueError("images must be a (B, C, H, W) float tensor in [0, 1].")
        if images.shape[1] == 1 and self.in_channels == 1:
            images = images.expand(-1, 3, -1, -1)  # (B, 3, H, W) grey as RGB
        pixel_values = self.preprocess(images.float().contiguous())  # (B, 3, h, w)
        dtype = next(self.model.parameters()).dtype
        return pool_vision(self.model(pixel_values=pixel_values.to(dtype)), self.pooling)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, pooling={self.pooling}"
