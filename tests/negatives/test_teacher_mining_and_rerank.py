"""A cross-encoder as teacher and second stage: `contrastkit mine --scorer` writes the teacher's
scores (and drops what it finds nearly as relevant as the positive), and `eval-retrieval
--rerank` reports reranked figures beside the first-stage ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from contrastkit.cli import main
from contrastkit.data.beir import load_beir_pairs
from contrastkit.data.files import load_pairs
from contrastkit.encoders.cross_encoder import load_cross_encoder, score_pairs

from .test_offline_mining import _beir

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]


def _cross_encoder(folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=1,
    )  # fmt: skip
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB))
    return folder


def _models(tmp_path: Path) -> tuple[Path, Path]:
    from contrastkit.encoders.text import TextEncoder

    bi = TextEncoder.from_scratch(hidden_size=16, num_layers=1, num_heads=2).save(tmp_path / "m")
    return bi, _cross_encoder(tmp_path / "ce")


def test_mine_with_a_scorer_writes_teacher_scores(tmp_path: Path) -> None:
    bi, ce = _models(tmp_path)
    data = _beir(tmp_path / "beir")
    out = tmp_path / "mined.jsonl"
    argv = ["mine", str(bi), str(data), str(out), "--num-negatives", "2", "--scorer", str(ce)]
    assert main([*argv, "--scorer-ratio", "1.0"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    teacher = load_cross_encoder(ce)
    for row in rows:
        assert len(row["scores"]) == 1 + len(row["negatives"]) and len(row["negatives"]) <= 2
        want = score_pairs(teacher, row["query"], [row["positive"], *row["negatives"]])
        assert row["scores"] == pytest.approx(want, abs=1e-5)
    # the scores travel into training rows (the distillation losses' teacher_scores)
    pairs = load_beir_pairs(data, "train", mined=out)
    assert pairs.scores is not None and all(len(s) >= 1 for s in pairs.scores)
    assert load_pairs(out).scores == [r["scores"] for r in rows]
    # a strict ratio drops every candidate the teacher scores near the positive
    strict = tmp_path / "strict.jsonl"
    assert main([*argv[:3], str(strict), *argv[4:], "--scorer-ratio", "0.01"]) == 0
    for row in map(json.loads, strict.read_text().splitlines()):
        p = torch.sigmoid(torch.tensor(row["scores"], dtype=torch.float64))
        assert bool((p[1:] <= 0.01 * p[0]).all())


def test_mine_with_a_folder_that_is_not_a_cross_encoder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bi, _ = _models(tmp_path)
    data = _beir(tmp_path / "beir")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.safetensors").write_bytes(b"")
    capsys.readouterr()  # the fixtures' save_pretrained progress
    code = main(
        ["mine", str(bi), str(data), str(tmp_path / "o.jsonl"), "--scorer", str(tmp_path / "empty")]
    )
    err = capsys.readouterr().err.strip()
    assert code in (2, 4) and "not a sequence-classification model folder" in err
    assert len(err.splitlines()) == 1


def test_eval_retrieval_reranks_the_top_candidates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bi, ce = _models(tmp_path)
    data = _beir(tmp_path / "beir")
    (data / "qrels" / "test.tsv").write_text((data / "qrels" / "train.tsv").read_text())
    out = tmp_path / "r.json"
    argv = ["eval-retrieval", str(bi), str(data), "--k", "1", "5", "--rerank", str(ce)]
    assert main([*argv, "--rerank-top", "5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "first stage" in printed and "reranked" in printed
    result = json.loads(out.read_text())
    assert set(result["reranked_metrics"]) == set(result["metrics"])
    # reranking the top 1 cannot change anything at k = 1
    assert main([*argv, "--rerank-top", "1", "--json", str(out)]) == 0
    one = json.loads(out.read_text())
    assert one["reranked_metrics"]["nDCG@1"] == one["metrics"]["nDCG@1"]
