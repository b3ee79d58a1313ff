"""Image <-> text pairs: Noto colour emoji rendered with Pillow, captioned by their Unicode names.

Noto Color Emoji (Debian ``fonts-noto-color-emoji``) is a bitmap (CBDT) font: Pillow renders it
only at size 109 (``ImageFont.truetype(path, 109)``, ``draw.text(..., embedded_color=True)``),
giving 136x128 glyphs that are composited on white and downscaled. Every single-codepoint
pictographic symbol in the font's character map (Unicode category ``So``, regional-indicator
letters excluded) is one pair: image <-> ``unicodedata.name`` in lower case (``"grinning
face"``). Labels are the Unicode block (``Emoticons``, ``Transport and Map Symbols``, ...).

Rendering takes about a second; the result is cached per size under
:func:`contrastkit.data.cache_dir` (written atomically).
"""

from __future__ import annotations

import hashlib
import io
import unicodedata
from pathlib import Path

import numpy as np
import torch

from contrastkit.data._common import (
    ImageDataset,
    cache_dir,
    check_split,
    missing,
    select_split,
    write_cache,
)

DEFAULT_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the only size the CBDT bitmaps render at
_GLYPH = (136, 128)
BLOCKS = [
    (0x0080, 0x00FF, "Latin-1 Supplement"),
    (0x2000, 0x206F, "General Punctuation"),
    (0x2100, 0x214F, "Letterlike Symbols"),
    (0x2190, 0x21FF, "Arrows"),
    (0x2300, 0x23FF, "Miscellaneous Technical"),
    (0x2460, 0x24FF, "Enclosed Alphanumerics"),
    (0x25A0, 0x25FF, "Geometric Shapes"),
    (0x2600, 0x26FF, "Miscellaneous Symbols"),
    (0x2700, 0x27BF, "Dingbats"),
    (0x2900, 0x297F, "Supplemental Arrows-B"),
    (0x2B00, 0x2BFF, "Miscellaneous Symbols and Arrows"),
    (0x3000, 0x303F, "CJK Symbols and Punctuation"),
    (0x3200, 0x32FF, "Enclosed CJK Letters and Months"),
    (0x1F000, 0x1F02F, "Mahjong Tiles"),
    (0x1F0A0, 0x1F0FF, "Playing Cards"),
    (0x1F100, 0x1F1FF, "Enclosed Alphanumeric Supplement"),
    (0x1F200, 0x1F2FF, "Enclosed Ideographic Supplement"),
    (0x1F300, 0x1F5FF, "Miscellaneous Symbols and Pictographs"),
    (0x1F600, 0x1F64F, "Emoticons"),
    (0x1F680, 0x1F6FF, "Transport and Map Symbols"),
    (0x1F780, 0x1F7FF, "Geometric Shapes Extended"),
    (0x1F900, 0x1F9FF, "Supplemental Symbols and Pictographs"),
    (0x1FA70, 0x1FAFF, "Symbols and Pictographs Extended-A"),
]


def unicode_block(codepoint: int) -> str:
    """The Unicode block name of ``codepoint`` (``"Other"`` outside the emoji blocks).

    >>> unicode_block(0x1F600)
    'Emoticons'
    """
    for lo, hi, name in BLOCKS:
        if lo <= codepoint <= hi:
            return name
    return "Other"


def emoji_codepoints(font_path: str | Path = DEFAULT_FONT) -> list[int]:
    """Single-codepoint pictographs (sorted): those the font maps when fontTools is installed
    (it comes with matplotlib), else every candidate in the emoji blocks (glyphs the font
    lacks render blank and are dropped when rendering)."""

    def wanted(c: int) -> bool:
        return (
            unicodedata.category(chr(c)) == "So"
            and not 0x1F1E6 <= c <= 0x1F1FF  # regional indicators render as boxed letters
            and unicodedata.name(chr(c), None) is not None
        )

    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        return [c for lo, hi, _ in BLOCKS for c in range(lo, hi + 1) if wanted(c)]
    cmap = TTFont(str(font_path), lazy=True).getBestCmap()  # reads only the cmap table
    return sorted(c for c in cmap if wanted(c))


def _render(codepoints: list[int], font_path: Path, size: int) -> tuple[np.ndarray, list[int]]:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), FONT_SIZE)
    images, kept = [], []
    for c in codepoints:
        glyph = Image.new("RGBA", _GLYPH, (255, 255, 255, 0))
        ImageDraw.Draw(glyph).text((0, 0), chr(c), font=font, embedded_color=True)
        if glyph.getbbox() is None:  # the font has no bitmap for it
            continue
        canvas = Image.new("RGB", _GLYPH, (255, 255, 255))
        canvas.paste(glyph, mask=glyph.getchannel("A"))
        small = canvas.resize((size, size), Image.Resampling.LANCZOS)
        images.append(np.asarray(small, dtype=np.uint8).transpose(2, 0, 1))  # (3, S, S)
        kept.append(c)
    return np.stack(images), kept


def load_emoji(
    split: str = "all",
    size: int = 64,
    font_path: str | Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    cache: bool = True,
) -> ImageDataset:
    """Rendered emoji with captions and Unicode-block labels.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"`` (split by emoji with a seeded hash).
        size: output side in pixels (e.g. 64 or 32).
        font_path: the NotoColorEmoji.ttf to render (default: the Debian location).
        test_fraction: share of emoji in the test split.
        seed: changes which emoji are held out.
        cache: read/write rendered images under :func:`cache_dir`.

    Returns:
        :class:`ImageDataset` with ``images: (N, 3, size, size)`` uint8 RGB on white,
        ``texts`` the lower-case Unicode names, ``labels: (N,)`` the block index into
        ``classes``, ``groups: (N,)`` the codepoint.

    >>> ds = load_emoji(size=32)  # doctest: +SKIP
    >>> ds.images.shape[1:], ds.texts[ds.groups.tolist().index(0x1F600)]  # doctest: +SKIP
    (torch.Size([3, 32, 32]), 'grinning face')
    """
    check_split(split)
    if not isinstance(size, int) or isinstance(size, bool) or not 4 <= size <= 512:
        raise ValueError(f"size must be an int in [4, 512] (e.g. 64 or 32), got {size!r}.")
    font = Path(font_path) if font_path is not None else DEFAULT_FONT
    if not font.is_file():
        raise missing("Noto Color Emoji font", font, "fonts-noto-color-emoji", "font_path")
    stat = font.stat()
    tag = hashlib.sha1(f"{font.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[
        :12
    ]
    cache_file = cache_dir() / "emoji" / f"noto_{size}_{tag}.npz"
    images = kept = None
    if cache and cache_file.exists():
        try:
            with np.load(cache_file) as z:
                images, kept = z["images"], z["codepoints"].tolist()
        except (OSError, ValueError, KeyError):
            images = None  # a corrupt cache is rebuilt below
    if images is None:
        images, kept = _render(emoji_codepoints(font), font, size)
        if cache:
            buf = io.BytesIO()
            np.savez(buf, images=images, codepoints=np.asarray(kept, dtype=np.int64))
            write_cache(cache_file, buf.getvalue())
    blocks = [unicode_block(c) for c in kept]
    classes = [name for _, _, name in BLOCKS if name in set(blocks)]
    if "Other" in blocks:
        classes.append("Other")
    data = ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.tensor([classes.index(b) for b in blocks], dtype=torch.long),
        classes,
        torch.tensor(kept, dtype=torch.long),
        [unicodedata.name(chr(c)).lower() for c in kept],
    )
    return select_split(data, [str(c) for c in kept], split, test_fraction, seed)
