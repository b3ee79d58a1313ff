"""Identity folders and their pairs: LFW's pairs.txt (LFW naming and sorted-order numbering) and
CSV pairs over a small LFW-layout folder written here in several image formats, and every bad
input as one ValueError naming the file and line (or the argument) and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from contrastkit.data import DataNotFoundError
from contrastkit.data.identity import (
    IdentityDataError,
    load_identity_folder,
    read_pairs,
)
from contrastkit.eval.verification import indexed_pair_scores, verification_metrics

# identity -> file names (Dee's files do not follow LFW's naming: numbered in sorted order)
LAYOUT = {
    "Ann": ["Ann_0001.jpg", "Ann_0002.jpg", "Ann_0003.jpg"],
    "Bob": ["Bob_0001.png", "Bob_0002.png"],
    "Cid": ["Cid_0001.webp"],
    "Dee": ["b.png", "a.jpg", "c.bmp"],
}

GOOD_PAIRS = """2\t2
Ann\t1\t2
Dee\t1\t3
Ann 3 Bob 2
Cid 1 Dee 2
Bob 1 2
Ann 2 3
Bob 1 Cid 1
Dee 3 Ann 1
"""


@pytest.fixture(scope="module")
def lfw(tmp_path_factory) -> Path:
    """An LFW-layout folder: each identity's images share a grey level of their own."""
    root = tmp_path_factory.mktemp("lfw")
    for k, (name, files) in enumerate(LAYOUT.items()):
        (root / name).mkdir()
        for i, file in enumerate(files):
            colour = (40 * k + 10 * i, 60 * k, 255 - 40 * k)
            Image.new("RGB", (20 + 4 * i, 24), colour).save(root / name / file)
    (root / "pairs.txt").write_text(GOOD_PAIRS)
    return root


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text)
    return path


def test_folder_lists_identities(lfw):
    folder = load_identity_folder(lfw)
    assert folder.names == ["Ann", "Bob", "Cid", "Dee"]
    assert folder.files["Dee"] == ["Dee/a.jpg", "Dee/b.png", "Dee/c.bmp"]
    assert folder.num_images == 9
    files = folder.image_files(image_size=8)
    assert files.classes == folder.names and len(files) == 9


def test_lfw_pairs_txt(lfw):
    pairs = read_pairs(lfw / "pairs.txt")
    assert len(pairs) == 8
    first = [(pairs.paths[a], pairs.paths[b]) for a, b in zip(pairs.index_a, pairs.index_b)]
    assert first[:4] == [
        ("Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg"),
        ("Dee/a.jpg", "Dee/c.bmp"),  # sorted order: 1 = a.jpg, 3 = c.bmp
        ("Ann/Ann_0003.jpg", "Bob/Bob_0002.png"),
        ("Cid/Cid_0001.webp", "Dee/b.png"),
    ]
    assert pairs.same.tolist() == [True, True, False, False] * 2
    assert pairs.folds.tolist() == [0] * 4 + [1] * 4  # fold k: the k-th block of 2 * 2 lines
    assert pairs.where[0].endswith("pairs.txt:2")
    images = pairs.load_images(image_size=12)
    assert images.shape == (len(pairs.paths), 3, 12, 12) and images.dtype == torch.uint8
    # an end-to-end evaluation: pixel embeddings separate the identities here
    emb = images.flatten(1).float()
    scores = indexed_pair_scores(emb, pairs.index_a, pairs.index_b)
    m = verification_metrics(scores, pairs.same, folds=pairs.folds)
    assert 0.0 <= m["eer"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0


def test_single_number_header_deals_folds(lfw, tmp_path):
    path = write(lfw, "dev.txt", "2\nAnn 1 2\nBob 1 2\nAnn 1 Bob 1\nCid 1 Dee 1\n")
    pairs = read_pairs(path)
    assert pairs.same.tolist() == [True, True, False, False]
    assert pairs.folds.tolist() == read_pairs(path).folds.tolist()  # seeded


def test_csv_pairs(lfw):
    csv = write(
        lfw,
        "pairs.csv",
        "path_a,path_b,same,fold\nAnn/Ann_0001.jpg,Ann/Ann_0003.jpg,1,0\n"
        "Ann/Ann_0001.jpg,Bob/Bob_0001.png,0,1\n\n"
        f"{lfw / 'Dee/a.jpg'},Dee/b.png,true,1\n",
    )
    pairs = read_pairs(csv)
    assert pairs.same.tolist() == [True, False, True]
    assert pairs.folds.tolist() == [0, 1, 1]
    assert pairs.paths[0] == "Ann/Ann_0001.jpg" and pairs.path(3) == lfw / "Dee/a.jpg"
    assert pairs.where[2].endswith("pairs.csv:5")  # the blank line is skipped, lines still count
    assert pairs.load_images(image_size=6, channels=1).shape == (5, 1, 6, 6)
    rows = "".join(f"Ann/Ann_0001.jpg,Bob/Bob_0001.png,{i % 2}\n" for i in range(25))
    pairs = read_pairs(write(lfw, "nofold.csv", "path_a,path_b,same\n" + rows))
    counts = torch.bincount(pairs.folds, minlength=10)
    assert sorted(counts.tolist()) == [2] * 5 + [3] * 5  # dealt: sizes differ by at most 1
    assert torch.equal(pairs.folds, read_pairs(lfw / "nofold.csv").folds)


BAD_PAIRS = [
    # (file text, message pieces): the first line of the error is checked for each piece
    ("1 1\nAnn 1 4\nAnn 1 Bob 1\n", [":2:", "image 4 of 'Ann'", "does not exist", "Ann_0004.jpg"]),
    ("1 1\nAnn 1 2\nAnn 1 Bob 3\n", [":3:", "image 3 of 'Bob'", "fix the number"]),
    ("1 1\nDee 1 4\nAnn 1 Bob 1\n", [":2:", "image 4 of 'Dee'", "sorted file-name order"]),
    ("1 1\nZed 1 2\nAnn 1 Bob 1\n", [":2:", "identity 'Zed'", "add the folder"]),
    ("1 1\nann 1 2\nAnn 1 Bob 1\n", [":2:", "did you mean 'Ann'"]),
    ("1 1\nCid 1 2\nAnn 1 Bob 1\n", [":2:", "single image", "add another image of 'Cid'"]),
    ("1 1\nAnn 2 2\nAnn 1 Bob 1\n", [":2:", "twice", "two different images"]),
    ("1 1\nAnn 1 2\nAnn 1 Ann 2\n", [":3:", "naming Ann twice", "'Ann 1 2'"]),
    ("1 1\nAnn one 2\nAnn 1 Bob 1\n", [":2:", "is not a pair", "'name i j'"]),
    ("1 1\nAnn 1 2\nAnn 1 Bob\n", [":3:", "is not a pair", "fix the line"]),
    ("1 1\nAnn 0 2\nAnn 1 Bob 1\n", [":2:", "image numbers from 1"]),
    ("1 1\nAnn 1 2 Bob 1 2\nAnn 1 Bob 1\n", [":2:", "is not a pair"]),
    ("ten 300\nAnn 1 2\nAnn 1 Bob 1\n", [":1:", "header must be 'FOLDS PAIRS'"]),
    (
        "2 1\nAnn 1 2\nAnn 1 Bob 1\n",
        [":1:", "(4 lines), but 2 pair lines follow", "fix the header"],
    ),
    ("", ["empty", "header"]),
]


@pytest.mark.parametrize(("text", "pieces"), BAD_PAIRS)
def test_bad_pairs_txt(lfw, tmp_path, text, pieces):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_pairs(path, root=lfw)
    assert isinstance(info.value, IdentityDataError)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    for piece in pieces:
        assert piece in message


BAD_CSV = [
    ("path_a,path_b\nAnn/Ann_0001.jpg,Bob/Bob_0001.png\n", [":1:", "no column(s) 'same'"]),
    (
        "path_a,path_b,same\nAnn/Ann_0001.jpg,Bob/Bob_0009.png,0\n",
        [":2:", "path_b", "does not exist"],
    ),
    ("path_a,path_b,same\nAnn/Ann_0001.jpg,Bob/Bob_0001.png,maybe\n", [":2:", "write 1 (same"]),
    ("path_a,path_b,same\nAnn/Ann_0001.jpg,Ann/Ann_0001.jpg,1\n", [":2:", "with itself"]),
    ("path_a,path_b,same\n,Ann/Ann_0001.jpg,1\n", [":2:", "empty 'path_a'"]),
    ("path_a,path_b,same,fold\nAnn/Ann_0001.jpg,Bob/Bob_0001.png,0,x\n", [":2:", "integer fold"]),
    ("path_a,path_b,same\n", ["no pairs"]),
]


@pytest.mark.parametrize(("text", "pieces"), BAD_CSV)
def test_bad_csv(lfw, tmp_path, text, pieces):
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    with pytest.raises(IdentityDataError) as info:
        read_pairs(path, root=lfw)
    assert str(info.value).startswith(str(path))
    for piece in pieces:
        assert piece in str(info.value)


def test_fewer_than_two_identities(tmp_path):
    (tmp_path / "Ann").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "Ann" / "Ann_0001.png")
    (tmp_path / "Bob").mkdir()  # no images: not an identity
    with pytest.raises(
        IdentityDataError,
        match=r"root='.*' holds 1 identity folder\(s\) with images \(only 'Ann'\)",
    ):
        load_identity_folder(tmp_path)
    (tmp_path / "pairs.txt").write_text("1 1\nAnn 1 1\nAnn 1 Bob 1\n")
    with pytest.raises(IdentityDataError, match="at least two"):
        read_pairs(tmp_path / "pairs.txt")


def test_missing_files_and_formats(tmp_path, lfw):
    with pytest.raises(DataNotFoundError, match="pairs file not found"):
        read_pairs(tmp_path / "nope.txt")
    with pytest.raises(DataNotFoundError, match="identity folder not found"):
        load_identity_folder(tmp_path / "nope")
    with pytest.raises(IdentityDataError, match=r"pairs must be LFW's pairs.txt \(.txt\) or a CSV"):
        read_pairs(write(tmp_path, "pairs.json", "{}"))
