"""Opening and decoding one image (a file path or raw bytes) into the tensor an image encoder takes.

Every image the library or the service reads is opened by :func:`open_image`: only the formats
of :data:`IMAGE_FORMATS` (PNG, JPEG, BMP, GIF, WebP, TIFF) are tried, so a file Pillow would
hand to another decoder (EPS runs Ghostscript, where it is installed) is refused unread, and an
image whose header claims more than Pillow's ``Image.MAX_IMAGE_PIXELS`` pixels (a decompression
bomb) is refused before its pixels are decoded. Both get one :class:`ImageDecodeError` naming
the source, never a decoder traceback; :func:`load_image` turns a user's image into model input
(``contrastkit search``, the web service) through it.

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
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
"""The Pillow formats :func:`open_image` tries; no other decoder ever sees a user's bytes."""
_FORMATS_HINT = "PNG, JPEG, BMP, GIF, WebP or TIFF"


class ImageDecodeError(ValueError):
    """Bytes or a file that do not decode as an image; the message names the source."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose header claims more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS`` allows
    (a decompression bomb: a small file that would decode to gigabytes); refused undecoded."""


def open_image(source: str | os.PathLike | bytes, *, name: str | None = None):  # -> PIL.Image.Image
    """Open ``source`` (a path or encoded bytes) as a lazy PIL image, trying only
    :data:`IMAGE_FORMATS`; use it as a context manager. Only the header is read here.

    Raises:
        FileNotFoundError: the path does not exist.
        ImageDecodeError: not an image of those formats (an EPS, PDF or PSD file is refused
            without being parsed).
        ImageTooLargeError: a header claiming more than ``2 * Image.MAX_IMAGE_PIXELS`` pixels
            (a decompression bomb; an ``ImageDecodeError`` too).

    >>> try:
    ...     open_image(b"%!PS-Adobe-3.0 EPSF-3.0\\n%%BoundingBox: 0 0 10 10\\n", name="upload")
    ... except ImageDecodeError as err:
    ...     print(err)
    upload: not a readable image (PNG, JPEG, BMP, GIF, WebP or TIFF); pass an image file.
    """
    from PIL import Image

    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "image bytes"
        handle: io.BytesIO | Path = io.BytesIO(bytes(source))
    else:
        handle = Path(source)
        label = name or str(handle)
        if not handle.is_file():
            raise FileNotFoundError(f"{label}: no such image file; pass the path of a PNG/JPEG.")
    try:
        return Image.open(handle, formats=IMAGE_FORMATS)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{label}: no such image file; pass the path of a PNG/JPEG."
        ) from None
    except Image.DecompressionBombError as err:
        raise bomb_error(label, err) from None
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        raise ImageDecodeError(
            f"{label}: not a readable image ({_FORMATS_HINT}); pass an image file."
        ) from err


def bomb_error(label: str, err: Exception) -> ImageTooLargeError:
    """The one-line error for an image over Pillow's pixel limit (``Image.MAX_IMAGE_PIXELS``)."""
    return ImageTooLargeError(
        f"{label}: refused undecoded, too many pixels ({err}); pass a smaller image "
        "(or raise PIL.Image.MAX_IMAGE_PIXELS for images you trust)."
    )


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
        ImageDecodeError: the data is not a readable image (:func:`open_image`).
        ImageTooLargeError: more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` allows.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    label = name or ("image bytes" if isinstance(source, (bytes, bytearray)) else str(source))
    try:
        with open_image(source, name=label) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            if size is not None:
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (ImageDecodeError, FileNotFoundError):
        raise
    except Image.DecompressionBombError as err:  # a frame past the limit, found while decoding
        raise bomb_error(label, err) from None
    except (OSError, SyntaxError, ValueError) as err:  # a truncated or corrupt file
        raise ImageDecodeError(
            f"{label}: not a readable image ({_FORMATS_HINT}); pass an image file."
        ) from err
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
    return torch.from_numpy(array.copy()).float() / 255.0  # (C, H, W)
