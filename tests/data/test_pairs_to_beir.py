"""Your own held-out pairs as a BEIR folder (issue 35, point 3)."""

from __future__ import annotations

import json
from pathlib import Path

from contrastkit.cli import main
from contrastkit.data.beir import load_beir


def test_export_beir_pairs_from_a_csv_with_your_columns(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rows = "question,answer,wrong\nwhat is a dog,a domestic canine,a cat\nwhat is a cat," \
        "a small feline,a dog\nwhat is a dog,man's best friend,a fish\n"  # fmt: skip
    source = tmp_path / "held.csv"
    source.write_text(rows)
    columns = json.dumps({"query": "question", "positive": "answer", "negatives": ["wrong"]})
    out = tmp_path / "beir"
    assert main(["data", "export-beir", "pairs", str(source), str(out), "--columns", columns]) == 0
    data = load_beir(out, "test")
    assert sorted(data.queries.values()) == ["what is a cat", "what is a dog"]
    dog = next(q for q, t in data.queries.items() if t == "what is a dog")
    relevant = {data.corpus[d]["text"] for d in data.qrels[dog]}
    assert relevant == {"a domestic canine", "man's best friend"}
    texts = {doc["text"] for doc in data.corpus.values()}
    assert {"a fish", "a cat", "a dog"} - texts == set()  # distractors, unjudged ("a cat" is
    assert "test: 2 queries, 3 judged" in capsys.readouterr().out  # also a negative)


def test_export_beir_bad_input_is_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["data", "export-beir", "pairs", str(tmp_path / "out")]) == 2
    assert "pairs SOURCE DIR" in capsys.readouterr().err
    assert main(["data", "export-beir", "pairs", str(tmp_path / "no.jsonl"), "x"]) == 4
    assert main(["data", "export-beir", "pairs", "a.jsonl", "x", "--columns", "{bad"]) == 2
    assert "--columns: not valid JSON" in capsys.readouterr().err
