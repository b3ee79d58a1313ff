"""Serving a cross-encoder run (``task: rerank``): a real tiny run, trained for 3 steps, served
with no index; ``POST /rerank`` answers the run's own ``score_pairs``, best first, and the
routes that embed or search answer the service's one 4xx body naming why."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
import torch
import transformers
from fastapi.testclient import TestClient

from contrastkit.encoders.cross_encoder import score_pairs
from contrastkit.serve import create_app_from_run
from contrastkit.train.run import load_run

from .conftest import LOCAL, start_server

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789"]
TEXTS = ["doc 3 about 3", "other 1", "a longer document about 5 and 6", "doc 4 about 4"]


def _tiny_bert(folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=128, num_labels=1,
    )  # fmt: skip
    transformers.BertModel(cfg).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB))
    return folder


def _pairs(path: Path) -> Path:
    rows = [
        {"query": f"q {i}", "positive": f"doc {i} about {i % 7}",
         "negatives": [f"other {j}" for j in range(i % 3 + 1)], "id": i}
        for i in range(60)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def rerank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from contrastkit.train import load_config_dict, train

    tmp = tmp_path_factory.mktemp("serve_rerank")
    raw = {
        "name": "rerank", "task": "rerank", "seed": 0,
        "data": {"dataset": "pairs_file", "root": str(_pairs(tmp / "p.jsonl"))},
        "model": {"name": str(_tiny_bert(tmp / "bert")), "negatives": 2, "max_length": 32},
        "loss": {"name": "listwise_ce"},
        "optim": {"batch_size": 8, "lr": 1e-3},
        "train": {
            "max_steps": 3, "output_dir": str(tmp / "runs"), "progress": False,
            "threads": 1, "checkpoint_every": 0, "precision": "fp32",
        },
        "eval": {"corpus_size": 6},
    }  # fmt: skip
    return Path(train(load_config_dict(raw), tmp / "run"))


@pytest.fixture(scope="module")
def client(rerank_run: Path):
    with TestClient(create_app_from_run(rerank_run), base_url=LOCAL) as c:
        yield c


def _reference(run: Path, query: str, texts: list[str]) -> list[float]:
    """The run's own cross-encoder scores (logits), outside the service."""
    _, task, _ = load_run(run)
    return score_pairs(task.cross_encoder, query, texts)


def test_rerank_scores_is_score_pairs_as_a_tensor(rerank_run: Path) -> None:
    _, task, _ = load_run(rerank_run)
    scores = task.rerank_scores("q 3", TEXTS)
    assert scores.dtype == torch.float32 and scores.shape == (len(TEXTS),)
    assert scores.tolist() == pytest.approx(_reference(rerank_run, "q 3", TEXTS), abs=1e-6)


def test_rerank_answers_the_runs_scores_best_first(client: TestClient, rerank_run: Path) -> None:
    want = _reference(rerank_run, "q 3", TEXTS)
    assert len(set(want)) == len(want)  # distinct scores: the order is a real check
    body = {"query": "q 3", "texts": TEXTS, "raw_scores": True}
    ranked = client.post("/rerank", json=body)
    assert ranked.status_code == 200, ranked.text
    ranked = ranked.json()
    assert sorted(r["index"] for r in ranked) == list(range(len(TEXTS)))
    for r in ranked:
        assert r["score"] == pytest.approx(want[r["index"]], abs=1e-5)
        assert "text" not in r
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert [r["index"] for r in ranked] == sorted(range(len(TEXTS)), key=lambda i: -want[i])
    # TEI's default: sigmoid of the logits, same order; return_text adds each text
    squashed = client.post("/rerank", json={"query": "q 3", "texts": TEXTS, "return_text": True})
    squashed = squashed.json()
    assert [r["index"] for r in squashed] == [r["index"] for r in ranked]
    for r in squashed:
        assert r["score"] == pytest.approx(
            float(torch.tensor(want[r["index"]]).sigmoid()), abs=1e-5
        )
        assert r["text"] == TEXTS[r["index"]]


def test_a_rerank_run_serves_health_info_metrics(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200, health.text
    h = health.json()
    assert h["query_kinds"] == [] and h["index_size"] == 0 and h["index_path"] is None
    info = client.get("/info").json()
    assert "reranker" in info["model_type"] and info["model_id"] == "rerank"
    assert info["max_input_length"] == 32  # the cross-encoder's own max_length
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/embed", {"texts": ["a"]}),
        ("post", "/embed", {"inputs": "a"}),
        ("post", "/search", {"query": "a"}),
        ("post", "/v1/embeddings", {"input": "a", "model": "rerank"}),
        ("post", "/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"]}}),
        ("get", "/", None),
    ],
)
def test_embedding_routes_say_the_run_embeds_nothing(
    client: TestClient, method: str, path: str, body: dict | None
) -> None:
    response = getattr(client, method)(path, **({"json": body} if body is not None else {}))
    assert response.status_code == 404, response.text
    refused = response.json()
    assert {"error", "field", "value", "allowed"} <= set(refused)
    assert refused["field"] == "model" and "cross-encoder" in refused["allowed"]
    assert "/rerank" in refused["allowed"]


def test_bad_rerank_bodies_keep_the_one_shape(client: TestClient) -> None:
    for body, field in [({"query": "", "texts": ["a"]}, "query"),
                        ({"query": "q", "texts": []}, "texts"),
                        ({"query": "q", "texts": ["a"], "return_text": "yes"}, "return_text")]:  # fmt: skip
        response = client.post("/rerank", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field


def test_contrastkit_serve_starts_on_a_rerank_run(rerank_run: Path) -> None:
    """The real command (uvicorn, a subprocess): a rerank run has no index and still serves."""
    proc, url = start_server(rerank_run)
    try:
        ranked = httpx.post(url + "/rerank", json={"query": "q 3", "texts": TEXTS,
                                                   "raw_scores": True}, timeout=30)  # fmt: skip
        assert ranked.status_code == 200, ranked.text
        want = _reference(rerank_run, "q 3", TEXTS)
        for r in ranked.json():
            assert r["score"] == pytest.approx(want[r["index"]], abs=1e-5)
        assert httpx.post(url + "/embed", json={"texts": ["a"]}, timeout=30).status_code == 404
    finally:
        proc.terminate()
        proc.wait(30)


def test_an_index_for_a_rerank_run_is_one_line(rerank_run: Path, tmp_path: Path) -> None:
    """A cross-encoder searches no index: ``--index`` is refused with one line (exit 2)."""
    from contrastkit.cli import main

    index = tmp_path / "some.ckindex"
    index.write_bytes(b"x")
    with pytest.raises(ValueError, match="cross-encoder run") as err:
        create_app_from_run(rerank_run, index)
    assert "\n" not in str(err.value) and "without --index" in str(err.value)
    assert main(["serve", str(rerank_run), "--index", str(index)]) == 2
