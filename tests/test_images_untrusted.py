"""Untrusted image files: every image is opened through ``contrastkit.data.images.open_image``,
which tries only PNG, JPEG, BMP, GIF, WebP and TIFF. A file another Pillow plugin would parse
(EPS runs Ghostscript where it is installed) is refused unread, and a decompression bomb (a small
file whose header claims billions of pixels) is one ``ImageDecodeError`` line, never Pillow's
``DecompressionBombError`` escaping as a crash (issue 33, point 3)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from contrastkit.data.image_folder import ImageFiles, SkippedFile, decode_image
from contrastkit.data.images import ImageDecodeError, ImageTooLargeError, load_image, open_image

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 70-byte PNG whose header claims ``width x height`` pixels (10^10 by default)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def fake_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``gs`` first on PATH that logs each call: where Ghostscript is installed, Pillow's EPS
    plugin runs it on the file (the native parser an upload must never reach). Returns the log."""
    from PIL import EpsImagePlugin

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gs-calls.log"
    gs = bin_dir / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexit 0\n')
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow looks for gs again
    return log


@pytest.fixture
def ghostscript_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return fake_ghostscript(tmp_path, monkeypatch)


def test_eps_bytes_and_files_are_refused_unparsed(tmp_path: Path, ghostscript_calls: Path) -> None:
    path = tmp_path / "photo.png"  # an EPS file under an image suffix
    path.write_bytes(EPS)
    for source, name in ((EPS, "upload"), (path, str(path))):
        with pytest.raises(ImageDecodeError, match=r"not a readable image \(PNG, JPEG") as err:
            load_image(source, channels=3, size=(8, 8), name=name)
        assert name in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(ImageDecodeError):
            open_image(source)
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode_image(path, channels=3, image_size=8)
    assert not ghostscript_calls.exists(), ghostscript_calls.read_text()


def test_eps_in_an_image_folder_is_one_skipped_file(
    tmp_path: Path, ghostscript_calls: Path
) -> None:
    from PIL import Image

    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (12, 12), (200, 0, 0)).save(root / "cat" / "0.png")
    (root / "cat" / "1.png").write_bytes(EPS)
    files = ImageFiles(root, image_size=8)
    assert isinstance(files[0], dict)
    skipped = files[1]
    assert isinstance(skipped, SkippedFile) and skipped.key == "cat/1.png"
    assert "1.png" in skipped.reason and "PNG, JPEG, BMP, GIF, WebP or TIFF" in skipped.reason
    with pytest.raises(ImageDecodeError, match=r"1\.png"):
        files.thumbnail(1)
    assert not ghostscript_calls.exists(), ghostscript_calls.read_text()


def test_a_decompression_bomb_is_one_line_refused_undecoded(tmp_path: Path) -> None:
    bomb = bomb_png()
    assert len(bomb) < 100
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    for source in (bomb, path):
        with pytest.raises(ImageTooLargeError, match="too many pixels") as err:
            load_image(source, channels=1, size=(8, 8), name="query")
        assert isinstance(err.value, ImageDecodeError)  # exit 2 in the CLI, a 400 in serve
        assert "\n" not in str(err.value) and "10000000000 pixels" in str(err.value)
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png"):
        decode_image(path, channels=1, image_size=8)


def test_a_bomb_in_an_image_folder_is_skipped_not_a_crash(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    Image.new("L", (12, 12), 90).save(root / "a.png")
    (root / "b.png").write_bytes(bomb_png())
    files = ImageFiles(root, image_size=8)  # probes the first files' headers for channels
    assert isinstance(files[0], dict)
    assert isinstance(files[1], SkippedFile) and "too many pixels" in files[1].reason
    with pytest.raises(ImageTooLargeError):
        files.thumbnail(1)


def test_a_lowered_pixel_limit_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # an operator's own, stricter limit
    path = tmp_path / "big.png"
    Image.new("L", (20, 20)).save(path)  # 400 pixels > 2 * 50
    with pytest.raises(ImageTooLargeError, match=r"big\.png"):
        load_image(path, channels=1, size=None)


def test_every_image_is_opened_through_open_image() -> None:
    """No module but ``data/images.py`` calls Pillow's ``Image.open`` (which tries every format
    Pillow knows): the library and the service open images through ``open_image`` only."""
    import contrastkit

    src = Path(contrastkit.__file__).parent
    callers = [
        str(path.relative_to(src))
        for path in sorted(src.rglob("*.py"))
        if "Image.open(" in path.read_text(encoding="utf-8") and path.name != "images.py"
    ]
    assert callers == [], callers
    assert "Image.open(handle, formats=IMAGE_FORMATS)" in (src / "data" / "images.py").read_text()
