"""Decoding one image (a file path or raw bytes) into the tensor an image encoder takes.

Every place that turns a user's image into model input (``contrastkit search``, the web
service, image folders) goes through :func:`load_image`, so a file that is not an image gets
one clear error naming it, never a decoder traceback.

>>> import io
>>> from PIL import Image
>>> buf = io.BytesIO(); Image.new("RGB", (40, 20), (255, 0, 0)).save(buf, format="PNG")
>>> x = load_image(buf.getvalue(), channels=1, size=(28, 28))
>>> tuple(x.shape), x.dtype
((1, 28, 28), torch.float32)
>>> try:
...     load_image(b"not an image", channels=3, size=(8, 8), name="upload")
... except ImageDecodeError as err:
...     print(err)
upload: not a readable image (PNG, JPEG, BMP, GIF, WebP or TIFF); pass an image file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ImageDecodeError(ValueError):
    """Bytes or a file that do not decode as an image; the message names the source."""


def load_image(
    source: str | os.PathLike | bytes,
    *,
    channels: int,
    size: tuple[int, int] | None,
    name: str | None = None,
) -> Tensor:
    """Decode ``source`` to float32 (C, H, W) in [0, 1].

    Args:
        source: a file path or the encoded bytes of an image.
        channels: 1 (grayscale) or 3 (RGB); the image is converted.
        size: (H, W) to resize to (bilinear), or None to keep its size.
        name: how errors name the source (default: the path, or ``"image bytes"``).

    Raises:
        FileNotFoundError: the path does not exist.
        ImageDecodeError: the data is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    if isinstance(source, (bytes, bytearray)):
        label = name or "image bytes"
        handle: io.BytesIO | Path = io.BytesIO(bytes(source))
    else:
        handle = Path(source)
        label = name or str(handle)
        if not handle.is_file():
            raise FileNotFoundError(f"{label}: no such image file; pass the path of a PNG/JPEG.")
    try:
        with Image.open(handle) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            if size is not None:
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(
            f"{label}: not a readable image (PNG, JPEG, BMP, GIF, WebP or TIFF); pass an image file."
        ) from err
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
    return torch.from_numpy(array.copy()).float() / 255.0  # (C, H, W)
