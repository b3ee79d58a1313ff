"""task: rerank: a cross-encoder trained on pairs with negatives, exported as a folder that
sentence-transformers' CrossEncoder loads and scores equally; bad folders are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from contrastkit.encoders.cross_encoder import load_cross_encoder, score_pairs
from contrastkit.export import export_run
from contrastkit.train import train
from contrastkit.train.config import load_config_dict

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789"]


def tiny_bert(folder: Path, *, head: bool = False) -> Path:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=128, num_labels=1,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg) if head else transformers.BertModel(cfg)
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB))
    return folder


def pairs_file(path: Path) -> Path:
    rows = [
        {
            "query": f"q {i}",
            "positive": f"doc {i} about {i % 7}",
            "negatives": [f"other {j}" for j in range(i % 3 + 1)],
            "id": i,
        }
        for i in range(60)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("loss", ["listwise_ce", "pointwise_bce"])
def test_rerank_trains_exports_and_matches_sentence_transformers(tmp_path: Path, loss: str) -> None:
    st = pytest.importorskip("sentence_transformers")
    raw = {
        "name": "rerank",
        "task": "rerank",
        "seed": 0,
        "data": {"dataset": "pairs_file", "root": str(pairs_file(tmp_path / "p.jsonl"))},
        "model": {"name": str(tiny_bert(tmp_path / "bert")), "negatives": 2, "max_length": 32},
        "loss": {"name": loss},
        "optim": {"batch_size": 8, "lr": 1e-3},
        "train": {
            "max_steps": 3, "output_dir": str(tmp_path / "runs"), "progress": False,
            "threads": 1, "checkpoint_every": 0, "precision": "fp32",
        },
        "eval": {"corpus_size": 6},
    }  # fmt: skip
    run = train(load_config_dict(raw), tmp_path / "run")
    result = json.loads((run / "eval.json").read_text())
    assert set(result["metrics"]) == {"R@1", "MRR"}
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(f"loss/{loss}" in r for r in logged)
    out = export_run(run, tmp_path / "exported", "sentence-transformers")
    ours = load_cross_encoder(out)
    docs = ["doc 3 about 3", "other 1", "a longer document about 5 and 6"]
    theirs = st.CrossEncoder(str(out)).predict([("q 3", d) for d in docs])
    assert score_pairs(ours, "q 3", docs) == pytest.approx(theirs.tolist(), abs=1e-5)


def test_a_folder_without_a_sequence_classification_model_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "clip"
    transformers.CLIPVisionModel(
        transformers.CLIPVisionConfig(
            hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
            image_size=8, patch_size=4,
        )
    ).save_pretrained(folder)  # fmt: skip
    with pytest.raises(ValueError, match="not a sequence-classification model folder") as err:
        load_cross_encoder(folder)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_cross_encoder(tmp_path / "missing")


def test_a_trained_reranker_folder_keeps_its_head(tmp_path: Path) -> None:
    folder = tiny_bert(tmp_path / "ce", head=True)
    a = score_pairs(load_cross_encoder(folder), "q 1", ["doc 1", "other"])
    b = score_pairs(load_cross_encoder(folder), "q 1", ["doc 1", "other"])
    assert a == b  # no fresh (random) head when the folder has one


def test_a_saved_reranker_scores_at_its_own_max_length_as_sentence_transformers(
    tmp_path: Path,
) -> None:
    """A reranker trained at 8 tokens per pair truncates at 8 when loaded again (it once fell
    back to 256, so pairs longer than the training length scored differently here and in
    sentence-transformers' CrossEncoder, which reads the tokenizer's model_max_length)."""
    st = pytest.importorskip("sentence_transformers")
    trained = load_cross_encoder(tiny_bert(tmp_path / "ce", head=True), max_length=8)
    out = trained.save(tmp_path / "saved")
    loaded = load_cross_encoder(out)
    assert loaded.max_length == 8
    docs = ["a long document about 1 2 3 4 5 6 7 8 9 and more", "doc 2"]
    theirs = st.CrossEncoder(str(out)).predict([("q 1", d) for d in docs])
    assert score_pairs(loaded, "q 1", docs) == pytest.approx(theirs.tolist(), abs=1e-5)
    assert score_pairs(trained, "q 1", docs) == pytest.approx(theirs.tolist(), abs=1e-5)


def test_length_sorted_groups_score_and_train_like_one_padded_batch(tmp_path: Path) -> None:
    """bucket_size only trims padding: the scores and their gradients equal one padded call."""
    model = load_cross_encoder(tiny_bert(tmp_path / "ce", head=True))
    model.eval()
    queries = [f"q {i}" for i in range(7)]
    docs = ["doc " + " ".join(str(j) for j in range(i * 3)) for i in range(7)]  # lengths vary
    grads = []
    for size in (None, 2, 3):
        model.bucket_size = size
        model.zero_grad()
        scores = model(queries, docs)
        (scores * torch.arange(7.0)).sum().backward()
        grads.append((scores.detach(), model.model.classifier.weight.grad.clone()))
    for scores, grad in grads[1:]:
        torch.testing.assert_close(scores, grads[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, grads[0][1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="bucket_size must be an int >= 1"):
        type(model)(model.model, model.tokenizer, bucket_size=0)
