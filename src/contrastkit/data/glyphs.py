"""A packaged identity set on real data: Han characters in the CJK typefaces Debian ships.

The **identity** is a character (a Unicode code point, named ``"U+6C38"``); its **photos** are
that character in each of :data:`FACES`, 12 typefaces from 9 Debian packages: Noto Sans and
Noto Serif CJK SC in their Regular and Bold weights (faces of the ``.ttc`` collections, opened
with ``ImageFont.truetype(path, index=...)``), AR PL UMing (Ming) and UKai (brush Kai),
WenQuanYi Micro Hei and Zen Hei, IPAGothic and IPAMincho (Japanese forms), HanaMinA and
BabelStone Han. As in face verification the photos of one identity differ in style (stroke
weight, serifs, brush shapes, regional glyph forms) and the identities differ in content;
augmentation (crops, blur, noise) is the training views' job.

**Which characters**: the 3,755 level-1 characters of GB2312 (the most frequent simplified
Chinese characters, in GB2312's pinyin order), kept when every face maps them (its ``cmap``,
read with fontTools when installed; otherwise rendered and compared with the face's ``.notdef``
box) and every render has ink: 2,568 with Debian 12's fonts. ``limit`` takes the first
``limit`` of them, for quick tests.

**Images**: ``size`` x ``size`` grayscale uint8, black on white, the character drawn at
``0.85 * size`` pixels and centred by its ink box. Rendering takes ~1.3 ms a glyph (about 40 s
for all 30k at 32 px); the result is cached under :func:`contrastkit.data.cache_dir`
(``glyphs/``, written atomically, keyed by the size, the limit and the font files), as the
emoji renders are.

**Split by identity**: a character is held out when ``crc32(f"{seed}:{codepoint}")`` falls
below ``test_fraction`` (:func:`contrastkit.data._common.held_out_mask`), so no test identity
is seen in training and the split does not depend on ``limit``.

**Pairs**: :func:`glyph_pairs` writes LFW's ``pairs.txt`` for the held-out characters: the
identities are dealt into 10 folds (each identity in one fold, as LFW's folds are disjoint in
people), and each fold draws ``pairs_per_fold`` same pairs (two different faces of one
character) and as many different pairs (two characters of the fold, a face each), without
repetition, from a seeded generator. :func:`export_glyphs` writes the whole set as LFW-layout
folders (``contrastkit data export-identity glyphs DIR``).

>>> ds = load_glyphs(split="test", size=32, limit=60)  # doctest: +SKIP
>>> ds.images.shape, len(FACES), ds.classes[0]  # 10 held-out characters x 12 faces  # doctest: +SKIP
(torch.Size([120, 1, 32, 32]), 12, 'U+57C3')
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contrastkit.data._common import (
    ImageDataset,
    atomic_write_bytes,
    cache_dir,
    check_fraction,
    check_split,
    held_out_mask,
    missing,
    write_cache,
)

__all__ = [
    "FACES",
    "GlyphFace",
    "export_glyphs",
    "glyph_codepoints",
    "glyph_name",
    "glyph_pairs",
    "load_glyphs",
]

RENDER_VERSION = 1  # bump when the rendering changes: old caches are then ignored
INK = 0.85  # the font's pixel size relative to the image side


@dataclass(frozen=True)
class GlyphFace:
    """One typeface: the font file, the face inside it (``family``, ``style`` as Pillow names
    them; a ``.ttc`` collection holds several) and the Debian package that ships it."""

    family: str
    style: str
    path: str
    package: str

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}"


_NOTO = "/usr/share/fonts/opentype/noto"
FACES: tuple[GlyphFace, ...] = (
    GlyphFace("Noto Sans CJK SC", "Regular", f"{_NOTO}/NotoSansCJK-Regular.ttc", "fonts-noto-cjk"),
    GlyphFace("Noto Sans CJK SC", "Bold", f"{_NOTO}/NotoSansCJK-Bold.ttc", "fonts-noto-cjk"),
    GlyphFace(
        "Noto Serif CJK SC", "Regular", f"{_NOTO}/NotoSerifCJK-Regular.ttc", "fonts-noto-cjk"
    ),
    GlyphFace("Noto Serif CJK SC", "Bold", f"{_NOTO}/NotoSerifCJK-Bold.ttc", "fonts-noto-cjk"),
    GlyphFace(
        "AR PL UMing CN",
        "Light",
        "/usr/share/fonts/truetype/arphic/uming.ttc",
        "fonts-arphic-uming",
    ),
    GlyphFace(
        "AR PL UKai CN", "Book", "/usr/share/fonts/truetype/arphic/ukai.ttc", "fonts-arphic-ukai"
    ),
    GlyphFace(
        "WenQuanYi Micro Hei",
        "Regular",
        "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
        "fonts-wqy-microhei",
    ),
    GlyphFace(
        "WenQuanYi Zen Hei",
        "Regular",
        "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
        "fonts-wqy-zenhei",
    ),
    GlyphFace(
        "IPAGothic",
        "Regular",
        "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf",
        "fonts-ipafont-gothic",
    ),
    GlyphFace(
        "IPAMincho",
        "Regular",
        "/usr/share/fonts/opentype/ipafont-mincho/ipam.ttf",
        "fonts-ipafont-mincho",
    ),
    GlyphFace(
        "HanaMinA", "Regular", "/usr/share/fonts/truetype/hanazono/HanaMinA.ttf", "fonts-hanazono"
    ),
    GlyphFace(
        "BabelStone Han",
        "Regular",
        "/usr/share/fonts/truetype/babelstone/BabelStoneHan.ttf",
        "fonts-babelstone-han",
    ),
)
_MAX_FACES_PER_FILE = 32  # faces tried when looking for a family inside a collection


def glyph_name(codepoint: int) -> str:
    """The identity name of a character: ``glyph_name(0x6C38) == "U+6C38"``."""
    return f"U+{codepoint:04X}"


def _gb2312_level1() -> list[int]:
    """The 3,755 level-1 GB2312 characters (rows 16-55), in GB2312's (pinyin) order."""
    out = []
    for row in range(0xB0, 0xD8):
        for cell in range(0xA1, 0xFF):
            try:
                out.append(ord(bytes([row, cell]).decode("gb2312")))
            except UnicodeDecodeError:  # the 5 unassigned cells at the end of row 55
                continue
    return out


def _check_faces(faces: Sequence[GlyphFace]) -> None:
    for face in faces:
        if not Path(face.path).is_file():
            raise missing(f"the {face.name} font", face.path, face.package, "faces")


def _face_index(face: GlyphFace) -> int:
    """Which face of the font file is ``face`` (0 for a plain .ttf)."""
    from PIL import ImageFont

    for index in range(_MAX_FACES_PER_FILE):
        try:
            font = ImageFont.truetype(face.path, 16, index=index)
        except OSError:  # past the last face of the collection
            break
        if font.getname() == (face.family, face.style):
            return index
    raise ValueError(
        f"{face.path} holds no face {face.family!r} {face.style!r}; the font package "
        f"{face.package} may have changed: pass faces= with the family and style Pillow reports."
    )


def _fonts(faces: Sequence[GlyphFace], size: int) -> list:  # list[ImageFont.FreeTypeFont]
    from PIL import ImageFont

    px = max(4, round(INK * size))
    return [ImageFont.truetype(f.path, px, index=_face_index(f)) for f in faces]


def _fingerprint(faces: Sequence[GlyphFace]) -> list[object]:
    """What identifies the font files (a changed file invalidates the caches)."""
    out: list[object] = [RENDER_VERSION]
    for face in faces:
        stat = Path(face.path).stat()
        out += [face.name, str(Path(face.path).resolve()), stat.st_size, stat.st_mtime_ns]
    return out


def _covered(faces: Sequence[GlyphFace], candidates: list[int], cache: bool = True) -> list[int]:
    """The candidates every face maps (fontTools' cmap; else: renders unlike .notdef),
    cached beside the renders (reading the cmaps takes seconds)."""
    tag = hashlib.sha1(repr([*_fingerprint(faces), candidates]).encode()).hexdigest()[:12]
    cache_file = cache_dir() / "glyphs" / f"coverage_{tag}.npy"
    if cache and cache_file.exists():
        try:
            return np.load(cache_file).tolist()
        except (OSError, ValueError):
            pass  # a corrupt cache is rebuilt below
    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        covered = _covered_by_rendering(faces, candidates)
    else:
        keep = set(candidates)
        for face in faces:
            font = TTFont(face.path, fontNumber=_face_index(face), lazy=True)  # only the cmap
            keep &= set(font.getBestCmap())
        covered = [c for c in candidates if c in keep]
    if cache:
        buf = io.BytesIO()
        np.save(buf, np.asarray(covered, dtype=np.int64))
        write_cache(cache_file, buf.getvalue())
    return covered


def _covered_by_rendering(faces: Sequence[GlyphFace], candidates: list[int]) -> list[int]:
    """Without fontTools: a character a face lacks renders as that face's .notdef box, the
    glyph a private-use code point (U+10FFFD) gets."""
    keep = list(candidates)
    for font in _fonts(faces, 32):
        notdef = font.getmask(chr(0x10FFFD))
        box = (notdef.size, bytes(notdef))
        kept = []
        for c in keep:
            mask = font.getmask(chr(c))
            if (mask.size, bytes(mask)) != box:
                kept.append(c)
        keep = kept
    return keep


def glyph_codepoints(faces: Sequence[GlyphFace] = FACES, limit: int | None = None) -> list[int]:
    """The characters of the set: GB2312 level 1 (pinyin order) that every face covers, the
    first ``limit`` of them (None: all). Rendering may still drop one with an empty glyph."""
    _check_faces(faces)
    covered = _covered(faces, _gb2312_level1())
    return covered if limit is None else covered[:limit]


def _draw(font, ch: str, size: int) -> np.ndarray:  # font: ImageFont.FreeTypeFont
    """(size, size) uint8, black ink on white, centred by the ink box."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), ch, font=font)
    draw.text(
        ((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top),
        ch,
        font=font,
        fill=255,
    )
    return 255 - np.asarray(canvas, dtype=np.uint8)


def _render(
    faces: Sequence[GlyphFace], size: int, limit: int | None, cache: bool = True
) -> tuple[np.ndarray, list[int]]:
    """(K, F, S, S) uint8 renders and the K code points: the first ``limit`` characters that
    every face covers and draws with ink."""
    fonts = _fonts(faces, size)
    images, kept = [], []
    for c in _covered(faces, _gb2312_level1(), cache):
        if limit is not None and len(kept) == limit:
            break
        row = [_draw(font, chr(c), size) for font in fonts]
        if any(r.min() == 255 for r in row):  # a face maps it to an empty glyph
            continue
        images.append(np.stack(row))
        kept.append(c)
    if not kept:
        raise ValueError("no character is covered by every face; pass fewer faces.")
    return np.stack(images), kept


def _check_size(size: object) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 256:
        raise ValueError(f"size must be an int in [8, 256] (e.g. 32 or 48), got {size!r}.")
    return size


def _check_limit(limit: object) -> int | None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 2):
        raise ValueError(
            f"limit must be None (every character) or an int >= 2 (the first N characters, "
            f"e.g. 200 for a quick run), got {limit!r}."
        )
    return limit


def _renders(
    faces: Sequence[GlyphFace], size: int, limit: int | None, cache: bool
) -> tuple[np.ndarray, list[int]]:
    """:func:`_render`, through the cache."""
    _check_faces(faces)
    fingerprint = [*_fingerprint(faces), size, limit, INK]
    tag = hashlib.sha1(repr(fingerprint).encode()).hexdigest()[:12]
    cache_file = cache_dir() / "glyphs" / f"glyphs_{size}_{limit or 'all'}_{tag}.npz"
    if cache and cache_file.exists():
        try:
            with np.load(cache_file) as z:
                return z["images"], z["codepoints"].tolist()
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache is rebuilt below
    images, kept = _render(faces, size, limit, cache)
    if cache:
        buf = io.BytesIO()
        np.savez(buf, images=images, codepoints=np.asarray(kept, dtype=np.int64))
        write_cache(cache_file, buf.getvalue())
    return images, kept


def _test_mask(codepoints: Sequence[int], test_fraction: float, seed: int) -> list[bool]:
    return held_out_mask([str(c) for c in codepoints], test_fraction, seed).tolist()


def load_glyphs(
    split: str = "all",
    size: int = 32,
    *,
    limit: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    faces: Sequence[GlyphFace] = FACES,
    cache: bool = True,
) -> ImageDataset:
    """Han characters (identities) rendered in every face (their photos).

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``; split by character (a seeded hash).
        size: image side S in pixels (e.g. 32 or 48).
        limit: only the first ``limit`` characters (None: all 2,568), for quick runs.
        test_fraction: share of characters held out.
        seed: changes which characters are held out.
        faces: the typefaces (default :data:`FACES`).
        cache: read/write the renders under :func:`cache_dir`.

    Returns:
        :class:`ImageDataset` with ``images: (K * F, 1, S, S)`` uint8 (black on white),
        character-major (row ``k * F + f`` is character k in ``faces[f]``); ``labels: (K * F,)``
        0..K-1, dense within the split, into ``classes`` (the K names, ``"U+6C38"``);
        ``groups`` the code points.

    Raises:
        DataNotFoundError: a font file is missing (the message names its Debian package).
    """
    check_split(split)
    _check_size(size)
    _check_limit(limit)
    check_fraction(test_fraction)
    images, kept = _renders(faces, size, limit, cache)
    if split != "all":
        test = _test_mask(kept, test_fraction, seed)
        rows = [k for k, t in enumerate(test) if t == (split == "test")]
        if not rows:
            raise ValueError(
                f"split={split!r} holds no character (limit={limit}, "
                f"test_fraction={test_fraction}); raise limit or change test_fraction."
            )
        images, kept = images[rows], [kept[k] for k in rows]
    k, f = images.shape[:2]
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images.reshape(k * f, 1, size, size))),
        torch.arange(k).repeat_interleave(f),  # (K * F,)
        [glyph_name(c) for c in kept],
        torch.tensor(kept, dtype=torch.long).repeat_interleave(f),  # (K * F,)
    )


def glyph_pairs(
    codepoints: Sequence[int],
    num_faces: int,
    *,
    folds: int = 10,
    pairs_per_fold: int = 300,
    seed: int = 0,
) -> str:
    """LFW's ``pairs.txt`` over ``codepoints`` (each with ``num_faces`` images numbered 1..F).

    The characters are dealt into ``folds`` disjoint groups (seeded); fold k draws, without
    repetition, ``pairs_per_fold`` same lines ``name i j`` (i < j, two faces of one character of
    the fold) then as many different lines ``name1 i name2 j`` (two characters of the fold).

    Returns:
        the file's text: the header ``"{folds}\\t{pairs_per_fold}"`` and
        ``folds * 2 * pairs_per_fold`` lines.

    >>> print(glyph_pairs([0x4E00, 0x4E8C, 0x4E09, 0x56DB], 3, folds=2, pairs_per_fold=1))
    2	1
    U+4E00	1	2
    U+4E00	1	U+56DB	2
    U+4E8C	1	2
    U+4E8C	1	U+4E09	3
    """
    for arg, value, low in (("folds", folds, 1), ("pairs_per_fold", pairs_per_fold, 1),
                            ("num_faces", num_faces, 2)):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}, got {value!r}.")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(codepoints), generator=g).tolist()
    groups = [[codepoints[i] for i in order[k::folds]] for k in range(folds)]
    smallest = min(len(group) for group in groups)
    if smallest < 2:
        raise ValueError(
            f"{len(codepoints)} characters cannot fill {folds} folds with at least two each; "
            "raise limit or test_fraction, or lower folds."
        )
    face_pairs = [(i, j) for i in range(num_faces) for j in range(i + 1, num_faces)]
    most = min(smallest * len(face_pairs), smallest * (smallest - 1) // 2 * num_faces**2)
    if pairs_per_fold > most:
        raise ValueError(
            f"pairs_per_fold={pairs_per_fold} is more than the smallest fold's {smallest} "
            f"characters give without repeating a pair ({most}); lower pairs_per_fold to {most} "
            "or raise limit."
        )
    lines = [f"{folds}\t{pairs_per_fold}"]
    for group in groups:
        for draw in torch.randperm(len(group) * len(face_pairs), generator=g)[:pairs_per_fold]:
            c, p = divmod(int(draw), len(face_pairs))
            i, j = face_pairs[p]
            lines.append(f"{glyph_name(group[c])}\t{i + 1}\t{j + 1}")
        couples = [(a, b) for a in range(len(group)) for b in range(a + 1, len(group))]
        for draw in torch.randperm(len(couples) * num_faces**2, generator=g)[:pairs_per_fold]:
            couple, faces = divmod(int(draw), num_faces**2)
            a, b = couples[couple]
            i, j = divmod(faces, num_faces)
            lines.append(f"{glyph_name(group[a])}\t{i + 1}\t{glyph_name(group[b])}\t{j + 1}")
    return "\n".join(lines) + "\n"


_WRITTEN = ("train", "test", "faces.txt")  # what an export writes into root


def export_glyphs(
    root: str | Path,
    *,
    size: int = 32,
    limit: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    pairs_per_fold: int = 300,
    folds: int = 10,
    faces: Sequence[GlyphFace] = FACES,
    cache: bool = True,
) -> Path:
    """Write the glyph set as LFW-layout folders::

        root/train/U+4E00/U+4E00_0001.png ...    training characters, image f = faces[f - 1]
        root/test/U+4E8C/U+4E8C_0001.png ...     held-out characters
        root/test/pairs.txt                      LFW pairs over root/test (:func:`glyph_pairs`)
        root/faces.txt                           "f<TAB>face name" for each image number

    Both folders load with :func:`contrastkit.data.identity.load_identity_folder`; the pairs
    with :func:`contrastkit.data.identity.read_pairs`. The arguments are
    :func:`load_glyphs`'s and :func:`glyph_pairs`'s. ``root`` must be new, empty, or hold only
    what an export writes (an earlier or interrupted export: its ``train`` and ``test``
    folders are replaced).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    from PIL import Image

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"root={str(root)!r} is a file; pass a folder to write the set into.")
    foreign = (
        sorted(e.name for e in root.iterdir() if e.name not in _WRITTEN) if root.is_dir() else []
    )
    if foreign:
        raise ValueError(
            f"root={str(root)!r} holds {foreign[0]!r}, which a glyph export does not write; pass "
            "a new or empty folder (or an earlier export's)."
        )
    _check_size(size)
    _check_limit(limit)
    check_fraction(test_fraction)
    images, kept = _renders(faces, size, limit, cache)
    test = _test_mask(kept, test_fraction, seed)
    held_out = [c for c, t in zip(kept, test) if t]
    pairs = glyph_pairs(held_out, len(faces), folds=folds, pairs_per_fold=pairs_per_fold, seed=seed)
    for part in ("train", "test"):
        shutil.rmtree(root / part, ignore_errors=True)
    (root / "faces.txt").unlink(missing_ok=True)
    for k, (c, t) in enumerate(zip(kept, test)):
        name = glyph_name(c)
        folder = root / ("test" if t else "train") / name
        folder.mkdir(parents=True)
        for f in range(len(faces)):
            Image.fromarray(images[k, f]).save(folder / f"{name}_{f + 1:04d}.png")
    atomic_write_bytes(root / "test" / "pairs.txt", pairs.encode())
    listing = "".join(f"{f + 1}\t{face.name}\n" for f, face in enumerate(faces))
    atomic_write_bytes(root / "faces.txt", listing.encode())
    return root
