"""Images in and out of the service: uploads decoded to the model's input, corpus images as PNG."""

from __future__ import annotations

import io
from typing import Any

from contrastkit.serve.errors import BadInput

__all__ = ["MAX_PIXELS", "decode_image", "image_pixels", "png"]

MAX_PIXELS = 25_000_000  # an upload larger than this (e.g. 5000 x 5000) is refused undecoded
FORMATS = "PNG, JPEG, BMP, GIF, WebP or TIFF"


def decode_image(data: bytes, shape: tuple[int, int, int], field: str) -> Any:
    """Encoded image bytes -> (C, H, W) float in [0, 1] at ``shape`` = (C, H, W), the model's
    input; :class:`BadInput` naming ``field`` for bytes that are not an image of the allowed
    formats (never handed to another decoder: an EPS upload does not reach Ghostscript) or an
    image too large (refused from its header, before its pixels are decoded)."""
    from contrastkit.data.images import (
        ImageDecodeError,
        ImageTooLargeError,
        load_image,
        open_image,
    )

    c, h, w = shape
    try:
        with open_image(data, name=field) as probe:  # reads the header only
            width, height = probe.size
        if width * height > MAX_PIXELS:  # a small file can be a huge image
            raise BadInput(field, f"{width}x{height} pixels", f"at most {MAX_PIXELS:,} pixels")
        return load_image(data, channels=c, size=(h, w), name=field)
    except ImageTooLargeError:  # over Pillow's limit (MAX_IMAGE_PIXELS): a decompression bomb
        raise BadInput(
            field, data[:16], f"a {FORMATS} image of at most {MAX_PIXELS:,} pixels"
        ) from None
    except ImageDecodeError:  # not an image of those formats, a truncated file
        raise BadInput(field, data[:16], f"the bytes of a {FORMATS} image") from None


def image_pixels(data: bytes, field: str) -> int:
    """Width x height of an encoded image, read from its header only (no pixel is decoded);
    :class:`BadInput` naming ``field`` for bytes that are not an image of the allowed formats."""
    from contrastkit.data.images import ImageDecodeError, ImageTooLargeError, open_image

    try:
        with open_image(data, name=field) as probe:  # reads the header only
            width, height = probe.size
    except ImageTooLargeError:
        raise BadInput(
            field, data[:16], f"a {FORMATS} image of at most {MAX_PIXELS:,} pixels"
        ) from None
    except ImageDecodeError:
        raise BadInput(field, data[:16], f"the bytes of a {FORMATS} image") from None
    return int(width) * int(height)


def png(image: Any) -> bytes:
    """(C, H, W) in [0, 1] -> PNG bytes."""
    from PIL import Image

    pixels = (image.float().clamp(0, 1) * 255).round().byte()  # (C, H, W)
    array = pixels[0] if pixels.shape[0] == 1 else pixels.permute(1, 2, 0)  # (H, W[, C])
    buf = io.BytesIO()
    Image.fromarray(array.contiguous().numpy()).save(buf, format="PNG")
    return buf.getvalue()
