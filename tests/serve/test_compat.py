"""The drop-in routes: OpenAI's ``/v1/embeddings`` and ``/v1/models`` (driven by the real
``openai`` client against a real uvicorn server), text-embeddings-inference's ``/embed`` body,
``/similarity``, ``/rerank`` and ``/info``, and the back-pressure TEI has (429 + Retry-After,
token and pixel budgets, bounded image decoding)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
import torch
from fastapi.testclient import TestClient

from contrastkit.index import build_index
from contrastkit.serve import ServeSettings, create_app, create_app_from_run
from contrastkit.serve.embedder import Embedder

from .conftest import LOCAL, b64, start_server

KEY = "compat-test-key"


def _bad(response: httpx.Response, status: int, field: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    assert {"error", "value", "allowed"} <= set(body), body
    return body


@pytest.fixture(scope="module")
def served_text(text_run: Path):
    """A real ``contrastkit serve`` of the text run, behind an API key."""
    proc, url = start_server(text_run, env={"CONTRASTKIT_API_KEY": KEY})
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def text_client(text_run: Path):
    with TestClient(create_app_from_run(text_run), base_url=LOCAL) as client:
        yield client


def _model_name(text_run: Path) -> str:
    return Embedder.from_run(text_run).name


# --- the real openai client ------------------------------------------------------------------


def test_openai_client_embeddings_equal_embed_and_the_run(text_run: Path, served_text: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=served_text + "/v1", api_key=KEY, max_retries=0)
    name = _model_name(text_run)
    assert [m.id for m in client.models.list().data] == [name]
    texts = ["quickly", "in a careful manner", "slowly"]
    as_base64 = client.embeddings.create(model=name, input=texts)  # the client's default
    as_float = client.embeddings.create(model=name, input=texts, encoding_format="float")
    got = np.asarray([d.embedding for d in as_base64.data], dtype=np.float32)
    assert [d.index for d in as_base64.data] == [0, 1, 2]
    np.testing.assert_allclose(got, [d.embedding for d in as_float.data], rtol=0, atol=1e-6)
    embed = httpx.post(served_text + "/embed", json={"texts": texts},
                       headers={"Authorization": f"Bearer {KEY}"}).json()  # fmt: skip
    np.testing.assert_allclose(got, embed["embeddings"], rtol=0, atol=1e-6)
    own = Embedder.from_run(text_run).embed("text", texts).numpy()
    np.testing.assert_allclose(got, own, rtol=0, atol=1e-5)
    assert as_base64.usage.prompt_tokens == as_base64.usage.total_tokens > len(texts)
    single = client.embeddings.create(model=name, input="quickly", encoding_format="float")
    np.testing.assert_allclose(single.data[0].embedding, got[0], rtol=0, atol=1e-6)


def test_openai_client_errors(text_run: Path, served_text: str) -> None:
    openai = pytest.importorskip("openai")
    name = _model_name(text_run)
    wrong = openai.OpenAI(base_url=served_text + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model=name, input="x")
    client = openai.OpenAI(base_url=served_text + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert err.value.response.json()["field"] == "model"
    with pytest.raises(openai.BadRequestError) as err:  # not a Matryoshka run
        client.embeddings.create(model=name, input="x", dimensions=8)
    assert err.value.response.json()["field"] == "dimensions"
    assert "matryoshka" in err.value.response.json()["allowed"].lower()


def test_huggingface_hub_inference_client(served_text: str) -> None:
    """huggingface_hub's TEI client: ``feature_extraction`` posts ``{"inputs", "parameters"}`` to
    the URL given as the model, ``sentence_similarity`` likewise."""
    hub = pytest.importorskip("huggingface_hub")
    auth = {"Authorization": f"Bearer {KEY}"}
    embed = hub.InferenceClient(model=served_text + "/embed", token=KEY)
    rows = np.asarray(embed.feature_extraction("quickly"))
    want = httpx.post(served_text + "/embed", json={"inputs": ["quickly"]}, headers=auth).json()
    np.testing.assert_allclose(rows.reshape(1, -1), want, atol=1e-6)
    raw = np.asarray(embed.feature_extraction("quickly", normalize=False))
    own = httpx.post(served_text + "/embed", json={"texts": ["quickly"]}, headers=auth).json()
    np.testing.assert_allclose(raw.reshape(1, -1), own["embeddings"], atol=1e-6)
    similarity = hub.InferenceClient(model=served_text + "/similarity", token=KEY)
    sims = similarity.sentence_similarity("quickly", other_sentences=["fast", "slowly"])
    body = {"inputs": {"source_sentence": "quickly", "sentences": ["fast", "slowly"]}}
    want = httpx.post(served_text + "/similarity", json=body, headers=auth).json()
    np.testing.assert_allclose(sims, want, atol=1e-6)


# --- OpenAI routes in-process: bad input -------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"input": "x"}, 400, "model"),
        ({"model": "other", "input": "x"}, 404, "model"),
        ({"input": ""}, 400, "input[0]"),
        ({"input": ["a", " "]}, 400, "input[1]"),
        ({"input": []}, 400, "input"),
        ({"input": ["a"] * 65}, 400, "input"),
        ({"input": [[1, 2, 3]]}, 400, "input"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": "x", "dimensions": 4}, 400, "dimensions"),
        ({"input": "x", "temperature": 1}, 400, "temperature"),
        ({"input": " ".join(["word"] * 20000)}, 413, "input"),
    ],
)
def test_v1_embeddings_bad_input(text_client: TestClient, text_run: Path, body, status, field):
    if field != "model":  # else the missing or unknown model is the error
        body = {"model": _model_name(text_run), **body}
    _bad(text_client.post("/v1/embeddings", json=body), status, field)


def test_v1_embeddings_malformed_body(text_client: TestClient) -> None:
    response = text_client.post(
        "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}
    )
    _bad(response, 400, "body")


def test_v1_models_retrieve(text_client: TestClient, text_run: Path) -> None:
    name = _model_name(text_run)
    assert text_client.get(f"/v1/models/{name}").json()["id"] == name
    _bad(text_client.get("/v1/models/gpt-4"), 404, "model")


# --- TEI routes ----------------------------------------------------------------------------------


def test_tei_embed_body(text_client: TestClient) -> None:
    texts = ["quickly", "slowly"]
    ours = torch.tensor(text_client.post("/embed", json={"texts": texts}).json()["embeddings"])
    rows = text_client.post("/embed", json={"inputs": texts}).json()
    np.testing.assert_allclose(rows, torch.nn.functional.normalize(ours, dim=1), atol=1e-6)
    raw = text_client.post("/embed", json={"inputs": texts, "normalize": False}).json()
    np.testing.assert_allclose(raw, ours, atol=1e-6)
    one = text_client.post("/embed", json={"inputs": "quickly"}).json()
    np.testing.assert_allclose(one, rows[:1], atol=1e-6)
    long_text = " ".join(["word"] * 400)  # more tokens than the model reads (max_length 16)
    _bad(text_client.post("/embed", json={"inputs": long_text}), 413, "inputs[0]")
    cut = text_client.post("/embed", json={"inputs": long_text, "truncate": True})
    assert cut.status_code == 200
    _bad(text_client.post("/embed", json={"inputs": ""}), 400, "inputs[0]")
    _bad(text_client.post("/embed", json={"inputs": "a", "texts": ["b"]}), 400, "inputs/texts")
    _bad(text_client.post("/embed", json={"texts": ["a"], "normalize": True}), 400, "normalize")
    _bad(text_client.post("/embed", json={"inputs": ["a"] * 65}), 400, "inputs")


def test_tei_similarity_info_and_rerank_refusal(text_client: TestClient, text_run: Path) -> None:
    body = {"inputs": {"source_sentence": "quickly", "sentences": ["fast", "slowly"]}}
    sims = text_client.post("/similarity", json=body).json()
    rows = torch.tensor(
        text_client.post("/embed", json={"inputs": ["quickly", "fast", "slowly"]}).json()
    )
    np.testing.assert_allclose(sims, (rows[1:] @ rows[0]).tolist(), atol=1e-5)
    _bad(text_client.post("/similarity", json={"inputs": {"source_sentence": "x"}}), 400,
         "inputs.sentences")  # fmt: skip
    _bad(text_client.post("/similarity", json={"inputs": "x"}), 400, "inputs")
    info = text_client.get("/info").json()
    assert info["model_id"] == _model_name(text_run)
    assert info["max_input_length"] == 16 and "embedding" in info["model_type"]
    refused = _bad(text_client.post("/rerank", json={"query": "q", "texts": ["a"]}), 404, "model")
    assert "cross-encoder" in refused["allowed"]


def _toy_app(tmp_path: Path, embedder: Embedder, **settings) -> object:
    index = build_index(torch.eye(4), backend="exact", ids=list("abcd"))
    path = tmp_path / "toy.ckindex"
    index.save(path)
    return create_app(embedder, path, ServeSettings(**settings))


def test_rerank_with_a_cross_encoder(tmp_path: Path) -> None:
    """The documented interface: ``Embedder.rerank(query, texts) -> (N,)`` scores."""
    scores = lambda query, texts: torch.tensor([float(len(t)) for t in texts])  # noqa: E731
    toy = Embedder("toy-reranker", ("text",), embed_texts=lambda t: torch.ones(len(t), 4),
                   rerank=scores)  # fmt: skip
    with TestClient(_toy_app(tmp_path, toy), base_url=LOCAL) as client:
        body = {"query": "q", "texts": ["ab", "abcd", "a"], "return_text": True, "raw_scores": True}
        ranked = client.post("/rerank", json=body).json()
        assert [r["index"] for r in ranked] == [1, 0, 2]
        assert [r["score"] for r in ranked] == [4.0, 2.0, 1.0]
        assert ranked[0]["text"] == "abcd"
        squashed = client.post("/rerank", json={"query": "q", "texts": ["ab"]}).json()
        assert squashed == [
            {"index": 0, "score": pytest.approx(float(torch.tensor(2.0).sigmoid()))}
        ]
        assert "reranker" in client.get("/info").json()["model_type"]
        _bad(client.post("/rerank", json={"query": "", "texts": ["a"]}), 400, "query")
        _bad(client.post("/rerank", json={"query": "q", "texts": []}), 400, "texts")


# --- back-pressure -------------------------------------------------------------------------------


def test_concurrency_cap_answers_429_with_retry_after(tmp_path: Path) -> None:
    release, entered = threading.Event(), threading.Event()

    def slow(texts: list[str]) -> torch.Tensor:
        entered.set()
        release.wait(30)
        return torch.ones(len(texts), 4)

    toy = Embedder("toy", ("text",), embed_texts=slow)
    release.set()  # the probe at start passes
    app = _toy_app(tmp_path, toy, max_concurrency=1)
    release.clear()
    entered.clear()  # the probe at start entered too
    with TestClient(app, base_url=LOCAL) as client:
        first: dict = {}
        worker = threading.Thread(
            target=lambda: first.update(r=client.post("/embed", json={"texts": ["a"]}))
        )
        worker.start()
        assert entered.wait(30)
        busy = client.post("/embed", json={"texts": ["b"]})
        assert client.get("/health").status_code == 200  # never capped
        assert client.get("/metrics").status_code == 200
        release.set()
        worker.join(30)
    body = _bad(busy, 429, "concurrency")
    assert busy.headers["Retry-After"] == "1" and "max-concurrency" in body["allowed"]
    assert first["r"].status_code == 200


def _png(size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size), dtype=np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def test_pixel_budget_refuses_before_decoding(tmp_path: Path, monkeypatch) -> None:
    import contrastkit.serve.state as state_module

    decoded: list[str] = []
    real = state_module.decode_image
    monkeypatch.setattr(state_module, "decode_image",
                        lambda *a: decoded.append(a[2]) or real(*a))  # fmt: skip
    toy = Embedder("toy", ("image",), embed_images=lambda x: x.flatten(1)[:, :4],
                   image_shape=(1, 8, 8))  # fmt: skip
    with TestClient(_toy_app(tmp_path, toy, max_pixels=100 * 100), base_url=LOCAL) as client:
        small, big = b64(_png(64)), b64(_png(101))
        assert client.post("/embed", json={"images": [small]}).status_code == 200
        decoded.clear()
        _bad(client.post("/embed", json={"images": [small, small, small]}), 413, "images")
        _bad(client.post("/search", json={"image": big}), 413, "image")
        assert decoded == []  # refused from the headers: nothing was decoded


def test_a_burst_of_large_uploads_does_not_starve_health(tmp_path: Path, monkeypatch) -> None:
    """16 concurrent 2000 x 2000 uploads with ``decode_threads=1``: at most one decodes at a
    time, and ``/health`` answers while they queue."""
    import contrastkit.serve.state as state_module

    real = state_module.decode_image
    lock = threading.Lock()
    now = {"in": 0, "max": 0}

    def counted(*args):
        with lock:
            now["in"] += 1
            now["max"] = max(now["max"], now["in"])
        try:
            time.sleep(0.05)
            return real(*args)
        finally:
            with lock:
                now["in"] -= 1

    monkeypatch.setattr(state_module, "decode_image", counted)
    toy = Embedder("toy", ("image",), embed_images=lambda x: x.flatten(1)[:, :4],
                   image_shape=(1, 8, 8))  # fmt: skip
    app = _toy_app(tmp_path, toy, decode_threads=1, max_body_mb=64)
    big = b64(_png(2000))
    with TestClient(app, base_url=LOCAL) as client:
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(
                    client.post("/search", json={"image": big, "k": 1}).status_code
                )
            )
            for _ in range(16)
        ]
        for t in threads:
            t.start()
        health_s = []
        while any(t.is_alive() for t in threads) and len(health_s) < 20:
            start = time.perf_counter()
            assert client.get("/health").status_code == 200
            health_s.append(time.perf_counter() - start)
        for t in threads:
            t.join(120)
    assert results == [200] * 16
    assert now["max"] == 1  # bounded count
    assert health_s and max(health_s) < 10  # bounded time: answered while uploads queued
