"""Offline mining with filters: the rank window, duplicate texts, judged-relevant documents, the
text-level miner and `contrastkit mine` (output read back by load_pairs)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch

from contrastkit.cli import main
from contrastkit.data import group_ids
from contrastkit.data.beir import BeirData
from contrastkit.data.files import load_pairs
from contrastkit.functional import similarity_matrix
from contrastkit.negatives import (
    MiningRows,
    mine_hard_negatives,
    mine_text_negatives,
    rows_from_beir,
    rows_from_pairs,
)


def _case(seed: int = 0, n: int = 50, q: int = 6):
    g = torch.Generator().manual_seed(seed)
    corpus = torch.randn(n, 8, generator=g)
    positives = [torch.randperm(n, generator=g)[:3].tolist() for _ in range(q)]
    query = torch.stack([corpus[p[0]] for p in positives]) + 0.5 * torch.randn(q, 8, generator=g)
    groups = torch.randint(0, n // 3, (n,), generator=g)  # many duplicate "texts"
    return query, corpus, positives, groups


def _reference(query, corpus, positives, *, num, skip_top, max_rank, margin, ratio, groups):
    """The filters written out as a loop over the full, sorted score row."""
    s = similarity_matrix(query, corpus)
    out = []
    for i, pos in enumerate(positives):
        bound = float(s[i, pos[0]])
        ranked = [j for j in s[i].argsort(descending=True, stable=True).tolist() if j not in pos]
        ranked = ranked[skip_top:max_rank]
        ranked = [j for j in ranked if margin is None or float(s[i, j]) < bound - margin]
        ranked = [j for j in ranked if ratio is None or float(s[i, j]) < bound * ratio]
        if groups is not None:
            seen, unique = {int(groups[p]) for p in pos}, []
            for j in ranked:
                if int(groups[j]) not in seen:
                    seen.add(int(groups[j]))
                    unique.append(j)
            ranked = unique
        out.append(ranked[:num])
    return out


@pytest.mark.parametrize(
    ("skip_top", "max_rank", "margin", "ratio", "dedup"),
    [(0, None, None, None, False), (2, 12, None, None, False), (1, 20, 0.05, None, True),
     (0, 30, None, 0.9, True), (3, None, 0.0, 0.95, True)],
)  # fmt: skip
def test_filters_match_a_loop(skip_top, max_rank, margin, ratio, dedup) -> None:
    query, corpus, positives, groups = _case()
    kw = {"skip_top": skip_top, "max_rank": max_rank, "margin": margin, "ratio": ratio}
    mined = mine_hard_negatives(
        query,
        corpus,
        positives,
        num_negatives=6,
        skip_top=skip_top,
        max_rank=max_rank,
        margin=margin,
        max_score_ratio=ratio,
        corpus_groups=groups if dedup else None,
        search_k=50,
    )
    expected = _reference(query, corpus, positives, num=6, groups=groups if dedup else None, **kw)
    for i, row in enumerate(mined.indices.tolist()):
        assert [j for j in row if j >= 0] == expected[i]
        assert not set(row) & set(positives[i])  # never a judged-relevant row


def test_rank_window_and_groups_are_checked() -> None:
    query, corpus, positives, groups = _case()
    with pytest.raises(ValueError, match=r"max_rank must be an int > skip_top=2"):
        mine_hard_negatives(query, corpus, positives, skip_top=2, max_rank=2)
    with pytest.raises(ValueError, match=r"corpus_groups must be a \(N,\) = \(50,\) long tensor"):
        mine_hard_negatives(query, corpus, positives, corpus_groups=groups[:5])


def _hash_encoder(dim: int = 256):
    """A real, deterministic text embedding: L2-normalised character-trigram counts."""

    def encode(texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), dim)
        for i, text in enumerate(texts):
            padded = f"  {text.lower()} "
            for a in range(len(padded) - 2):
                out[i, zlib.crc32(padded[a : a + 3].encode()) % dim] += 1.0
        return torch.nn.functional.normalize(out, dim=1)

    return encode


def test_text_miner_skips_relevant_and_duplicate_texts() -> None:
    corpus = [
        "a domestic dog",
        "a domestic dog ",
        "A Domestic Dog",
        "a wild dog",
        "a dogfish",
        "a car",
    ]
    data = BeirData(
        {f"d{i}": {"title": "", "text": t} for i, t in enumerate(corpus)},
        {"q": "domestic dog"},
        {"q": {"d0": 2, "d3": 1, "d5": 0}},
    )
    rows = rows_from_beir(data, min_score=2)
    assert rows.positives == [[0, 3]]  # the positive first, then every judged-relevant document
    enc = _hash_encoder()
    (row,) = mine_text_negatives(enc, enc, rows, num_negatives=5)
    assert row["positive"] == "a domestic dog" and row["id"] == "q"
    # d1 / d2 repeat the positive's text (dedup), d3 is judged relevant: none is a negative
    assert set(row["negatives"]) == {"a dogfish", "a car"}
    (loose,) = mine_text_negatives(enc, enc, rows, num_negatives=5, dedup=False)
    # without dedup the copies of the positive's text come back (documents are stripped)
    assert {"a domestic dog", "A Domestic Dog"} <= set(loose["negatives"])
    assert "a wild dog" not in loose["negatives"]


def test_rows_from_pairs_groups_are_relevant(tmp_path: Path) -> None:
    from contrastkit.data._common import TextPairs

    pairs = TextPairs(
        ["dog", "puppy", "car"],
        ["a canine", "a young dog", "a vehicle"],
        groups=group_ids(["g1", "g1", "g2"]),
        ids=["g1", "g1", "g2"],
        negatives=[["a cat"], [], []],
    )
    rows = rows_from_pairs(pairs)
    assert rows.corpus == ["a canine", "a young dog", "a vehicle", "a cat"]
    assert rows.positives == [[0, 1], [1, 0], [2]]
    assert isinstance(rows, MiningRows)


def _beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = ["a domestic dog", "a wild wolf", "a young dog", "a fast car", "a red apple", "heavy rain",
            "a small cat", "a green pear", "a truck", "light snow"]  # fmt: skip
    (root / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs)
        )
    )
    queries = ["dog", "car", "fruit"]
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(queries))
    )
    (root / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\td0\t2\nq0\td2\t1\nq1\td3\t1\nq1\td8\t1\nq2\td4\t1\n"
        "q2\td7\t1\nq2\td5\t0\n"
    )
    return root


def test_cli_mine_writes_a_pairs_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from contrastkit.encoders.text import TextEncoder

    model = TextEncoder.from_scratch(hidden_size=16, num_layers=1, num_heads=2).save(tmp_path / "m")
    data = _beir(tmp_path / "beir")
    out = tmp_path / "mined.jsonl"
    argv = ["mine", str(model), str(data), str(out), "--num-negatives", "3", "--skip-top", "1"]
    assert main([*argv, "--max-rank", "8"]) == 0
    assert "mined" in capsys.readouterr().out
    pairs = load_pairs(out)
    assert len(pairs) == 6  # one row per judged-relevant (query, document)
    relevant = {"dog": {"a domestic dog", "a young dog"}, "car": {"a fast car", "a truck"},
                "fruit": {"a red apple", "a green pear"}}  # fmt: skip
    assert pairs.negatives is not None
    for q, negs in zip(pairs.query, pairs.negatives):
        assert 1 <= len(negs) <= 3 and not set(negs) & relevant[q]
    # the mined file is itself valid DATA (a pairs file) for another round of mining
    again = tmp_path / "again.jsonl"
    assert main(["mine", str(model), str(out), str(again), "--num-negatives", "2"]) == 0
    assert len(load_pairs(again)) == 6
    # --num-negatives 0: the same rows without negatives (the baseline training file), no model
    plain = tmp_path / "plain.jsonl"
    assert (
        main(["mine", str(tmp_path / "no-model"), str(data), str(plain), "--num-negatives", "0"])
        == 0
    )
    baseline = load_pairs(plain)
    assert baseline.query == pairs.query and baseline.positive == pairs.positive
    assert baseline.negatives is None
    # errors: one line, documented codes
    capsys.readouterr()
    assert main(["mine", str(model), str(tmp_path / "none"), str(again)]) == 4
    assert "DATA" in capsys.readouterr().err
    assert main(["mine", str(model), str(data), str(tmp_path / "x.csv")]) == 2
    assert main([*argv, "--max-rank", "1"]) == 2
    assert "max_rank must be an int > skip_top=1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["mine", "--help"], ["eval-retrieval", "--help"],
                                  ["data", "export-beir", "--help"]])  # fmt: skip
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0 and "usage: contrastkit" in capsys.readouterr().out
