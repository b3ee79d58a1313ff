"""User pair/triplet files (JSONL, CSV, Parquet) and labelled image folders, including bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contrastkit.data import DataNotFoundError, PairFileError, load_image_folder, load_pairs

ROWS = [
    {"query": "how to boil an egg", "positive": "Place eggs in boiling water for 9 minutes.",
     "negative": "Fry the egg in butter.", "id": "egg", "label": "cooking"},
    {"query": "boiling eggs", "positive": "Boil eggs for about nine minutes.",
     "negative": "", "id": "egg", "label": "cooking"},
    {"query": "capital of France", "positive": "Paris is the capital of France.",
     "negative": "Lyon is a city in France.", "id": "paris", "label": "geo"},
]  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def write_csv(path, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_pair_formats_agree(tmp_path, fmt):
    writer = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}[fmt]
    pairs = load_pairs(writer(tmp_path / f"pairs.{fmt}", ROWS))
    assert pairs.query == [r["query"] for r in ROWS]
    assert pairs.positive == [r["positive"] for r in ROWS]
    assert pairs.negatives == [["Fry the egg in butter."], [], ["Lyon is a city in France."]]
    assert pairs.classes == ["cooking", "geo"] and pairs.labels.tolist() == [0, 0, 1]
    assert pairs.groups.tolist() == [0, 0, 1]  # rows sharing an id are one group
    assert pairs.ids == ["egg", "egg", "paris"]


def test_numbered_and_list_negatives(tmp_path):
    path = write_csv(
        tmp_path / "t.csv",
        [{"query": "q", "positive": "p", "negative_2": "n2", "negative_1": "n1"}],
    )
    assert load_pairs(path).negatives == [["n1", "n2"]]
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"query": "q", "positive": "p", "negatives": ["a", "b"]}]
    )
    pairs = load_pairs(path)
    assert pairs.negatives == [["a", "b"]] and pairs.labels.tolist() == [-1]


def test_pairs_without_negatives_and_integer_labels(tmp_path):
    rows = [{"query": f"q{i}", "positive": f"p{i}", "label": i % 3} for i in range(200)]
    path = write_parquet(tmp_path / "p.parquet", rows)
    pairs = load_pairs(path)
    assert pairs.negatives is None and pairs.classes == ["0", "1", "2"]
    assert pairs.labels.tolist() == [i % 3 for i in range(200)]
    train, test = load_pairs(path, "train"), load_pairs(path, "test")
    assert len(train) + len(test) == 200 and len(test) > 0
    assert set(train.query).isdisjoint(test.query)


def test_csv_with_bom_and_numeric_string_labels(tmp_path):
    path = tmp_path / "excel.csv"
    rows = "".join(f"q{i},p{i},{lab}\n" for i, lab in enumerate([10, 2, 2, 1]))
    path.write_text("\ufeffquery,positive,label\n" + rows, encoding="utf-8")
    pairs = load_pairs(path)
    assert pairs.classes == ["1", "2", "10"] and pairs.labels.tolist() == [2, 1, 1, 0]


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "a", "positive": "b"}\n\n{"query": "c"}\n', encoding="utf-8")
    with pytest.raises(PairFileError, match=r"bad\.jsonl:3: missing or empty 'positive'"):
        load_pairs(path)
    path.write_text('{"query": "a", "positive": "b"}\n{"query": "c", oops}\n', encoding="utf-8")
    with pytest.raises(PairFileError, match=r"bad\.jsonl:2: invalid JSON"):
        load_pairs(path)
    path.write_text('["a", "b"]\n', encoding="utf-8")
    with pytest.raises(PairFileError, match=r"bad\.jsonl:1: expected a JSON object"):
        load_pairs(path)
    path.write_text('{"query": "a", "positive": 3}\n', encoding="utf-8")
    with pytest.raises(PairFileError, match=r"bad\.jsonl:1: 'positive' must be a string"):
        load_pairs(path)
    path.write_text('{"query": "a", "positive": "b", "negatives": [1]}\n', encoding="utf-8")
    with pytest.raises(PairFileError, match=r"bad\.jsonl:1: 'negatives' must be a list"):
        load_pairs(path)


def test_csv_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('query,positive\na,b\n"multi\nline",d\nc,d,extra\n', encoding="utf-8")
    with pytest.raises(PairFileError, match=r"bad\.csv:5: 3 cells but the header has 2"):
        load_pairs(path)
    path.write_text("query,positive\na,b\nc,\n", encoding="utf-8")
    with pytest.raises(PairFileError, match=r"bad\.csv:3: missing or empty 'positive'"):
        load_pairs(path)
    path.write_text("question,answer\na,b\n", encoding="utf-8")
    with pytest.raises(PairFileError, match=r"bad\.csv:2: .*columns here: 'question', 'answer'"):
        load_pairs(path)
    path.write_text("", encoding="utf-8")
    with pytest.raises(PairFileError, match=r"bad\.csv:1: empty file"):
        load_pairs(path)


def test_parquet_error_names_row(tmp_path):
    path = write_parquet(
        tmp_path / "bad.parquet",
        [{"query": "a", "positive": "b"}, {"query": "c", "positive": None}],
    )
    with pytest.raises(PairFileError, match=r"bad\.parquet:2: missing or empty 'positive'"):
        load_pairs(path)


def test_pair_file_path_errors(tmp_path):
    with pytest.raises(ValueError, match=r"suffix picks the format"):
        load_pairs(tmp_path / "pairs.txt")
    with pytest.raises(DataNotFoundError, match="path="):
        load_pairs(tmp_path / "missing.jsonl")


def make_folder(root, sizes):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, size in sizes.items():
        (root / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("ignored")
    return root


def test_image_folder(tmp_path):
    root = make_folder(tmp_path / "imgs", {"cat": 16, "dog": 16})
    ds = load_image_folder(root)
    assert ds.images.shape == (6, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    gray = load_image_folder(root, size=8, channels=1)
    assert gray.images.shape == (6, 1, 8, 8)


def test_image_folder_errors(tmp_path):
    root = make_folder(tmp_path / "imgs", {"cat": 16, "dog": 12})
    with pytest.raises(ValueError, match=r"dog/0\.png: size .* pass size="):
        load_image_folder(root)
    assert load_image_folder(root, size=10).images.shape == (6, 3, 10, 10)
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png: not a readable image"):
        load_image_folder(root, size=10)
    with pytest.raises(DataNotFoundError, match="root="):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_image_folder(tmp_path / "empty")
