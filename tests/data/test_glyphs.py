"""The glyph identity set: coverage of every face (fontTools and the rendering fallback agree),
a disjoint seeded split by character, balanced deterministic LFW pairs, and an export that loads
back through data/identity.py pixel for pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.data import DataNotFoundError
from contrastkit.data.glyphs import (
    FACES,
    GlyphFace,
    _covered_by_rendering,
    _gb2312_level1,
    export_glyphs,
    glyph_codepoints,
    glyph_name,
    glyph_pairs,
    load_glyphs,
)
from contrastkit.data.identity import export_identity, load_identity_folder, read_pairs

pytestmark = pytest.mark.skipif(
    not all(Path(f.path).is_file() for f in FACES),
    reason="CJK fonts missing: make setup installs them (fonts-noto-cjk, fonts-arphic-*, ...)",
)
LIMIT = 120


def test_every_face_covers_every_character():
    from fontTools.ttLib import TTFont

    from contrastkit.data.glyphs import _face_index

    chars = glyph_codepoints()
    assert 2000 < len(chars) <= 3755
    assert chars == [c for c in _gb2312_level1() if c in set(chars)]  # GB2312 order
    for face in FACES:
        cmap = TTFont(face.path, fontNumber=_face_index(face), lazy=True).getBestCmap()
        assert all(c in cmap for c in chars), face.name
    assert 0x7231 not in chars  # 爱: a simplified form the Japanese IPA fonts lack
    assert glyph_codepoints(limit=5) == chars[:5]


def test_rendering_fallback_agrees_with_the_cmap():
    sample = [0x7231, *_gb2312_level1()[:60:3], 0x4E00]
    covered = set(glyph_codepoints())
    expected = [c for c in sample if c in covered]
    assert 0 < len(expected) < len(sample) - 3  # 爱 and others are left out
    assert _covered_by_rendering(FACES, sample) == expected


def test_renders_and_split():
    everything = load_glyphs(size=32, limit=LIMIT)
    f = len(FACES)
    assert everything.images.shape == (LIMIT * f, 1, 32, 32)
    assert everything.images.dtype == torch.uint8
    images = everything.images.view(LIMIT, f, 32, 32)
    assert (images.amin(dim=(2, 3)) < 128).all()  # ink in every render
    assert (images[:, :, 0, :] == 255).float().mean() > 0.9  # on white, centred
    # a character's faces differ from each other (styles), and characters differ
    assert (images[0, 0].int() - images[0, 4].int()).abs().sum() > 0
    train = load_glyphs("train", size=32, limit=LIMIT, test_fraction=0.3, seed=1)
    test = load_glyphs("test", size=32, limit=LIMIT, test_fraction=0.3, seed=1)
    tr, te = set(train.groups.tolist()), set(test.groups.tolist())
    assert not tr & te and tr | te == set(everything.groups.tolist())
    assert 0.15 < len(te) / LIMIT < 0.45
    assert test.labels.tolist() == [k for k in range(len(te)) for _ in range(f)]  # dense
    assert test.classes == [glyph_name(c) for c in test.groups[::f].tolist()]
    again = load_glyphs("test", size=32, limit=LIMIT, test_fraction=0.3, seed=1, cache=False)
    assert torch.equal(again.images, test.images)  # the cache holds what rendering gives
    other = load_glyphs("test", size=32, limit=LIMIT, test_fraction=0.3, seed=2)
    assert set(other.groups.tolist()) != te
    # the split does not depend on limit: a held-out character stays held out
    small = load_glyphs("test", size=32, limit=LIMIT // 2, test_fraction=0.3, seed=1)
    assert set(small.groups.tolist()) <= te


def parse(text: str) -> tuple[list[str], list[list[str]]]:
    lines = text.splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def test_pairs_balanced_disjoint_and_deterministic():
    chars = glyph_codepoints(limit=80)
    text = glyph_pairs(chars, 12, folds=10, pairs_per_fold=25, seed=3)
    assert text == glyph_pairs(chars, 12, folds=10, pairs_per_fold=25, seed=3)
    assert text != glyph_pairs(chars, 12, folds=10, pairs_per_fold=25, seed=4)
    header, rows = parse(text)
    assert header == ["10", "25"] and len(rows) == 10 * 50
    seen_in: dict[str, int] = {}
    for k in range(10):
        fold = rows[k * 50 : (k + 1) * 50]
        same, diff = fold[:25], fold[25:]
        assert all(len(r) == 3 and int(r[1]) < int(r[2]) for r in same)  # two different faces
        assert all(len(r) == 4 and r[0] != r[2] for r in diff)
        assert len({tuple(r) for r in fold}) == 50  # no repeated pair
        for r in fold:
            for name in (r[0], r[2]) if len(r) == 4 else (r[0],):
                assert seen_in.setdefault(name, k) == k  # each character in one fold only
    with pytest.raises(ValueError, match="pairs_per_fold=1000 is more than"):
        glyph_pairs(chars, 12, pairs_per_fold=1000)
    with pytest.raises(ValueError, match="at least two each"):
        glyph_pairs(chars[:15], 12)


def test_export_loads_back(tmp_path):
    root = export_identity(
        "glyphs", tmp_path / "glyphs", limit=LIMIT, test_fraction=0.3, pairs_per_fold=10
    )
    train, test = load_identity_folder(root / "train"), load_identity_folder(root / "test")
    held_out = load_glyphs("test", size=32, limit=LIMIT, test_fraction=0.3)
    assert test.names == sorted(held_out.classes)
    assert len(train) + len(test) == LIMIT and not set(train.names) & set(test.names)
    assert all(len(files) == len(FACES) for files in test.files.values())
    pairs = read_pairs(root / "test" / "pairs.txt")
    assert len(pairs) == 200 and int(pairs.same.sum()) == 100
    assert torch.bincount(pairs.folds).tolist() == [20] * 10
    images = pairs.load_images(image_size=32, channels=1)  # (U, 1, 32, 32)
    # PNG is lossless: image f of a character is its render in FACES[f - 1]
    row = {name: k for k, name in enumerate(held_out.classes)}
    for u, path in enumerate(pairs.paths):
        name, file = path.split("/")
        f = int(file.rsplit("_", 1)[1].split(".")[0]) - 1
        expected = held_out.images[row[name] * len(FACES) + f]
        assert torch.equal(images[u], expected), path
    faces = (root / "faces.txt").read_text().splitlines()
    assert faces[0] == "1\tNoto Sans CJK SC Regular" and len(faces) == len(FACES)
    # a second export replaces the first; a foreign non-empty folder is refused
    export_glyphs(root, limit=LIMIT // 2, test_fraction=0.5, pairs_per_fold=5)
    assert (
        len(load_identity_folder(root / "train")) + len(load_identity_folder(root / "test"))
        == LIMIT // 2
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(
        ValueError, match=r"holds 'notes\.txt', which a glyph export does not write"
    ):
        export_glyphs(tmp_path / "mine", limit=LIMIT)
    with pytest.raises(ValueError, match="name must be one of"):
        export_identity("faces", tmp_path / "x")


def test_missing_font_and_bad_arguments(tmp_path):
    gone = GlyphFace("Nope Sans", "Regular", str(tmp_path / "nope.ttf"), "fonts-nope")
    with pytest.raises(DataNotFoundError, match="apt-get install -y fonts-nope"):
        load_glyphs(faces=[*FACES[:2], gone], limit=10)
    with pytest.raises(ValueError, match="size must be an int in"):
        load_glyphs(size=3)
    with pytest.raises(ValueError, match="limit must be None"):
        load_glyphs(limit=1)
    bad = GlyphFace("Noto Sans CJK ZZ", "Regular", FACES[0].path, "fonts-noto-cjk")
    with pytest.raises(ValueError, match="holds no face 'Noto Sans CJK ZZ'"):
        load_glyphs(faces=[FACES[1], bad], limit=10, cache=False)


def test_images_are_not_duplicates_across_faces():
    """Every face contributes a distinct style: no two faces render a character identically."""
    data = load_glyphs(size=32, limit=40).images.view(40, len(FACES), -1).float()
    diff = (data[:, :, None, :] - data[:, None, :, :]).abs().mean(-1)  # (K, F, F)
    off = diff[:, ~torch.eye(len(FACES), dtype=torch.bool)]
    assert float(np.median(off.numpy())) > 5.0 and float(off.min()) > 0.0
