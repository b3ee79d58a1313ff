"""BEIR folders: reading (and its errors), training pairs, the packaged WordNet set and its CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from contrastkit.cli import main
from contrastkit.data import load_wordnet
from contrastkit.data.beir import BeirData, export_beir, load_beir, load_beir_pairs
from contrastkit.data.wordnet import DEFAULT_ROOT, _read_hypernyms, _read_synsets

needs_wordnet = pytest.mark.skipif(
    not (DEFAULT_ROOT / "data.noun").exists(), reason="wordnet-base is not installed"
)


def _folder(root: Path, qrels: str, corpus: str | None = None, queries: str | None = None) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    if corpus is None:
        corpus = "".join(
            json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"}) + "\n"
            for i in range(4)
        )
    if queries is None:
        queries = "".join(
            json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(3)
        )
    (root / "corpus.jsonl").write_text(corpus)
    (root / "queries.jsonl").write_text(queries)
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


HEADER = "query-id\tcorpus-id\tscore\n"


def test_load_graded_judgements(tmp_path: Path) -> None:
    root = _folder(tmp_path, HEADER + "q0\td0\t2\nq0\td1\t0\nq1\td2\t1\n")
    data = load_beir(root, "test")
    assert data.qrels == {"q0": {"d0": 2, "d1": 0}, "q1": {"d2": 1}}
    assert data.corpus["d1"] == {"title": "T1", "text": "text 1"}
    assert data.queries["q2"] == "query 2"
    # no header line is fine too
    (root / "qrels" / "test.tsv").write_text("q0\td0\t2\n")
    assert load_beir(root).qrels == {"q0": {"d0": 2}}


@pytest.mark.parametrize(
    ("qrels", "message"),
    [
        (HEADER + "q0\td0\t1\nq0\td1\n", r"test.tsv:3: expected 3 tab-separated fields .* got 2"),
        (HEADER + "q0\td0\tvery\n", r"test.tsv:2: score must be an integer grade .* got 'very'"),
        (HEADER + "q0\td0\t1.5\n", r"test.tsv:2: score must be an integer"),
        (HEADER + "q0\td0\t1\nq0\td0\t2\n", r"test.tsv:3: duplicate judgement of \('q0', 'd0'\)"),
        (HEADER + "nobody\td0\t1\n", r"no judgements of known queries"),
    ],
)
def test_bad_qrels_name_file_and_line(tmp_path: Path, qrels: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_beir(_folder(tmp_path, qrels))


def test_bad_jsonl_and_missing_files(tmp_path: Path) -> None:
    dup = '{"_id": "d0", "text": "a"}\n{"_id": "d1", "text": "b"}\n{"_id": "d0", "text": "c"}\n'
    with pytest.raises(ValueError, match=r"corpus.jsonl:3: duplicate _id 'd0' \(first on line 1\)"):
        load_beir(_folder(tmp_path / "a", HEADER + "q0\td0\t1\n", corpus=dup))
    with pytest.raises(ValueError, match=r"queries.jsonl:1: invalid JSON"):
        load_beir(_folder(tmp_path / "b", HEADER + "q0\td0\t1\n", queries="{oops\n"))
    with pytest.raises(ValueError, match=r"corpus.jsonl has no documents"):
        load_beir(_folder(tmp_path / "c", HEADER + "q0\td0\t1\n", corpus="\n"))
    with pytest.raises(
        ValueError, match=r"corpus.jsonl:1: expected a JSON object with a non-empty '_id'"
    ):
        load_beir(_folder(tmp_path / "d", HEADER, corpus='{"text": "no id"}\n'))
    root = _folder(tmp_path / "e", HEADER + "q0\td0\t1\n")
    with pytest.raises(
        FileNotFoundError, match=r"dev.tsv not found \(split='dev'\); splits present: \['test'\]"
    ):
        load_beir(root, "dev")
    (root / "queries.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"queries.jsonl not found"):
        load_beir(root)
    with pytest.raises(FileNotFoundError, match="BEIR folder not found"):
        load_beir(tmp_path / "nowhere")


def test_unknown_ids_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    qrels = HEADER + "q0\td0\t1\nq0\tghost\t1\nq9\td0\t1\nq8\td1\t1\n"
    with caplog.at_level(logging.WARNING, logger="contrastkit.data.beir"):
        data = load_beir(_folder(tmp_path, qrels))
    text = caplog.text
    assert "2 judgements name query ids missing" in text and "'q9'" in text
    assert "1 name document ids missing" in text and "'ghost'" in text
    # unknown queries are dropped (nothing to search); unknown documents stay (trec_eval
    # counts them as relevant documents that were not retrieved)
    assert data.qrels == {"q0": {"d0": 1, "ghost": 1}}


def test_beir_pairs_rows_groups_and_negatives(tmp_path: Path) -> None:
    qrels = HEADER + "q0\td0\t2\nq0\td1\t1\nq0\td2\t0\nq1\td3\t1\nq1\tghost\t2\n"
    root = _folder(tmp_path, qrels)
    (root / "qrels" / "train.tsv").write_text(qrels)
    pairs = load_beir_pairs(root, "train")
    assert pairs.query == ["query 0", "query 0", "query 1"]
    assert pairs.positive == ["T0 text 0", "T1 text 1", "T3 text 3"]
    assert pairs.ids == ["q0", "q0", "q1"]
    assert pairs.groups.tolist() == [0, 0, 1]  # rows of one query: masked as false negatives
    assert pairs.negatives == [["T2 text 2"], ["T2 text 2"], []]
    best = load_beir_pairs(root, "train", min_score=2)
    assert best.positive == ["T0 text 0"]
    assert load_beir_pairs(root, "train", negatives=False).negatives is None
    with pytest.raises(ValueError, match="min_score must be an int >= 1"):
        load_beir_pairs(root, "train", min_score=0)


@needs_wordnet
def test_wordnet_export_judgements_and_split(tmp_path: Path) -> None:
    root = export_beir(
        "wordnet", tmp_path / "wn", test_queries=40, train_queries=60, corpus_size=400
    )
    test, train = load_beir(root, "test"), load_beir(root, "train")
    assert len(test.qrels) == 40 and len(train.qrels) == 60
    assert not set(test.qrels) & set(train.qrels)  # disjoint queries
    assert len(test.corpus) >= 400
    synsets = {sid: lemmas for sid, _, lemmas, _, _ in _read_synsets(str(DEFAULT_ROOT), "n")}
    hypernyms = _read_hypernyms(str(DEFAULT_ROOT), "n")
    held_out = set(load_wordnet("lemma_gloss", split="test", pos="n").ids)
    for split, data in (("test", test), ("train", train)):
        for qid, judged in data.qrels.items():
            lemma = data.queries[qid]
            own = {d for d, g in judged.items() if g == 2}
            assert own == {sid for sid, lemmas in synsets.items() if lemma in lemmas}
            related = {d for d, g in judged.items() if g == 1}
            for d in related:  # a hypernym or a hyponym of one of the lemma's synsets
                assert any(d in hypernyms[s] or s in hypernyms[d] for s in own)
            assert set(judged) <= set(data.corpus)
            # consistent with the WordNet loader's split: a test query's synsets are all held
            # out, a train query's never
            assert (own <= held_out) if split == "test" else not (own & held_out)
    again = export_beir(
        "wordnet", tmp_path / "wn2", test_queries=40, train_queries=60, corpus_size=400
    )
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "qrels/train.tsv"):
        assert (root / name).read_bytes() == (again / name).read_bytes()  # deterministic


def test_export_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"name must be one of \['wordnet'\]"):
        export_beir("msmarco", tmp_path)
    with pytest.raises(ValueError, match="test_queries must be a positive int"):
        export_beir("wordnet", tmp_path, test_queries=0)
    with pytest.raises(FileNotFoundError, match="WordNet directory not found"):
        export_beir("wordnet", tmp_path, wordnet_root=tmp_path / "nowordnet")


@needs_wordnet
def test_cli_export_beir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "set"
    argv = ["data", "export-beir", "wordnet", str(out), "--test-queries", "20"]
    assert main([*argv, "--train-queries", "30", "--corpus-size", "100"]) == 0
    printed = capsys.readouterr().out
    assert "test: 20 queries" in printed and "train: 30 queries" in printed
    assert isinstance(load_beir(out), BeirData)
    assert main(["data", "export-beir", "nope", str(out)]) == 2
    assert capsys.readouterr().err.startswith("contrastkit data: name must be one of")
    assert main(["data"]) == 2
