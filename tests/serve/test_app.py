"""In-process tests of every endpoint and every bad input, on small real runs (FastAPI's
TestClient; the model, index and batcher are the real ones)."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
import torch
from fastapi.testclient import TestClient

from contrastkit.index import load_index
from contrastkit.serve import ServeSettings, create_app, create_app_from_run
from contrastkit.serve.embedder import Embedder
from contrastkit.train.run import load_run
from contrastkit.train.search import INDEX_FILE

from .conftest import LOCAL, b64, png_bytes


@pytest.fixture(scope="module")
def image_client(image_run: Path):
    with TestClient(create_app_from_run(image_run), base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="module")
def text_client(text_run: Path):
    with TestClient(create_app_from_run(text_run), base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="module")
def query_png(image_run: Path) -> bytes:
    _, task, _ = load_run(image_run)
    return png_bytes(task.examples(1)[0][0])


def _reference(run: Path, vector: torch.Tensor, k: int) -> list[str]:
    """The ids the index itself ranks first for ``vector: (1, D)``."""
    return load_index(run / INDEX_FILE).search(vector, k).ids[0]


def _bad(response: httpx.Response, status: int, field: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    assert {"error", "value", "allowed"} <= set(body), body
    assert field in body["error"]
    return body


# -- the happy paths ------------------------------------------------------------------------
def test_health_describes_model_and_index(image_client: TestClient, image_run: Path) -> None:
    index = load_index(image_run / INDEX_FILE)
    health = image_client.get("/health").json()
    assert health["status"] == "ok"
    assert health["model"] == "tiny"
    assert health["query_kinds"] == ["image"]
    assert health["corpus"] == "image"
    assert health["index_size"] == len(index) > 0
    assert health["dimension"] == index.dim
    assert health["metric"] == "cosine"
    assert health["uptime_s"] >= 0


def test_image_search_matches_the_index(
    image_client: TestClient, image_run: Path, query_png: bytes
) -> None:
    from contrastkit.data.images import load_image

    _, task, _ = load_run(image_run)
    c, h, w = task.image_shape
    vector = task.embed_images(load_image(query_png, channels=c, size=(h, w))[None])  # (1, D)
    expected = _reference(image_run, vector, 5)
    body = image_client.post("/search", json={"image": b64(query_png), "k": 5}).json()
    assert [hit["id"] for hit in body["results"]] == expected
    assert [hit["rank"] for hit in body["results"]] == [1, 2, 3, 4, 5]
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["results"][0]["thumb"] == f"/thumb/{body['results'][0]['position']}"
    assert body["tower"] == "image"
    # the multipart upload answers the same
    upload = image_client.post(
        "/search/upload", files={"file": ("q.png", query_png, "image/png")}, data={"k": "5"}
    ).json()
    assert [hit["id"] for hit in upload["results"]] == expected


def test_filter_returns_only_matching_labels(image_client: TestClient, query_png: bytes) -> None:
    unfiltered = image_client.post("/search", json={"image": b64(query_png), "k": 3}).json()
    top_label = unfiltered["results"][0]["metadata"]["label"]
    other = "0" if top_label != "0" else "1"
    body = image_client.post(
        "/search", json={"image": b64(query_png), "k": 7, "filter": {"label": other}}
    ).json()
    assert len(body["results"]) == 7
    assert {hit["metadata"]["label"] for hit in body["results"]} == {other}
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)
    by_id = image_client.post(
        "/search", json={"image": b64(query_png), "k": 3, "filter": {"id": "5"}}
    ).json()
    assert [hit["id"] for hit in by_id["results"]] == ["5"]


def test_thumbnail_is_the_corpus_image(image_client: TestClient, image_run: Path) -> None:
    from contrastkit.data.images import load_image

    _, task, _ = load_run(image_run)
    response = image_client.get("/thumb/3")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    decoded = load_image(response.content, channels=task.image_shape[0], size=None)  # (C, H, W)
    assert torch.allclose(decoded, task.corpus_items()[3], atol=1 / 255 + 1e-6)


def test_embed_images_and_texts_match_the_task(
    image_client: TestClient, text_client: TestClient, image_run: Path, text_run: Path,
    query_png: bytes,
) -> None:  # fmt: skip
    from contrastkit.data.images import load_image

    _, task, _ = load_run(image_run)
    c, h, w = task.image_shape
    body = image_client.post("/embed", json={"images": [b64(query_png)] * 2}).json()
    assert body["tower"] == "image"
    got = torch.tensor(body["embeddings"])  # (2, D)
    want = task.embed_images(load_image(query_png, channels=c, size=(h, w))[None])
    assert got.shape == (2, want.shape[1])
    torch.testing.assert_close(got, want.expand(2, -1), atol=1e-5, rtol=1e-5)

    _, ttask, _ = load_run(text_run)
    texts = ["quickly", "in a careful manner"]
    body = text_client.post("/embed", json={"texts": texts}).json()
    assert body["tower"] == "text" and body["dim"] == len(body["embeddings"][0])
    torch.testing.assert_close(
        torch.tensor(body["embeddings"]), ttask.embed_texts(texts), atol=1e-5, rtol=1e-5
    )


def test_text_search_matches_the_index(text_client: TestClient, text_run: Path) -> None:
    _, task, _ = load_run(text_run)
    query = task.examples(1)[0][0]
    body = text_client.post("/search", json={"query": query, "k": 4}).json()
    assert [hit["id"] for hit in body["results"]] == _reference(
        text_run, task.embed_texts([query]), 4
    )
    assert all(hit["thumb"] is None and hit["metadata"]["text"] for hit in body["results"])
    assert text_client.get("/health").json()["corpus"] == "text"


def test_metrics_count_requests_latency_and_batches(image_client: TestClient) -> None:
    image_client.get("/health")
    image_client.post("/search", json={"k": 3})  # a 400
    text = image_client.get("/metrics").text
    assert "# TYPE contrastkit_requests_total counter" in text
    assert 'contrastkit_requests_total{endpoint="/health",status="200"}' in text
    assert 'contrastkit_requests_total{endpoint="/search",status="400"}' in text
    assert 'contrastkit_request_seconds_bucket{endpoint="/search",le="+Inf"}' in text
    assert "# TYPE contrastkit_batch_size histogram" in text
    assert "contrastkit_batch_size_count" in text
    for line in text.splitlines():  # every sample line is `name{labels} number`
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_metrics_parse_with_prometheus_client(image_client: TestClient, image_run: Path) -> None:
    """``/metrics`` is valid exposition text: prometheus_client's own parser reads every family
    the docs list, with the types and values the service counted."""
    from prometheus_client.parser import text_string_to_metric_families

    image_client.get("/health")
    image_client.post("/search", json={"query": "x"})  # a 400 on an image model
    response = image_client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    types = {name: f.type for name, f in families.items()}
    assert types == {
        "contrastkit_requests": "counter",
        "contrastkit_request_seconds": "histogram",
        "contrastkit_batch_size": "histogram",
        "contrastkit_search_batch_size": "histogram",
        "contrastkit_rejected": "counter",
        "contrastkit_index_reloads": "counter",
        "contrastkit_queue_depth": "gauge",
        "contrastkit_index_size": "gauge",
        "contrastkit_uptime_seconds": "gauge",
    }
    samples = [s for f in families.values() for s in f.samples]

    def value(name: str, **labels: str) -> float:
        (found,) = [s.value for s in samples if s.name == name and s.labels == labels]
        return found

    assert value("contrastkit_requests_total", endpoint="/search", status="400") >= 1
    assert value("contrastkit_request_seconds_bucket", endpoint="/health", le="+Inf") >= 1
    assert value("contrastkit_index_size") == len(load_index(image_run / INDEX_FILE))
    assert value("contrastkit_rejected_total") == 0
    assert value("contrastkit_uptime_seconds") > 0
    assert not [s.name for s in samples if s.name.endswith("_created")]


def test_page_and_docs_are_served(image_client: TestClient) -> None:
    page = image_client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert ".innerHTML" not in page.text  # results are built with textContent only
    docs = image_client.get("/docs")
    assert docs.status_code == 200
    # the API page loads its JavaScript and CSS from this server, not from a CDN
    assert "cdn." not in docs.text and "/docs-assets/swagger-ui-bundle.js" in docs.text
    script = image_client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert "/search/upload" in image_client.get("/openapi.json").json()["paths"]


def test_admin_reload_swaps_in_a_new_index(image_run: Path, tmp_path: Path) -> None:
    from contrastkit.index import build_index

    path = tmp_path / "copy.ckindex"
    original = load_index(image_run / INDEX_FILE)
    original.save(path)
    with TestClient(create_app(Embedder.from_run(image_run), path), base_url=LOCAL) as client:
        assert client.get("/health").json()["index_size"] == len(original)
        vectors = torch.randn(10, original.dim, generator=torch.Generator().manual_seed(0))
        small = build_index(vectors, metric="cosine", ids=[f"n{i}" for i in range(10)],
                            metadata=[{"label": "x"}] * 10)  # fmt: skip
        small.save(path)  # atomic rename, as `contrastkit index` does
        assert client.get("/health").json()["index_size"] == 10  # seen on the next request
        body = client.post("/admin/reload").json()
        assert body["index_size"] == 10 and body["index_version"] == 3


# -- the micro-batcher and its bound --------------------------------------------------------
def test_concurrent_requests_share_a_batch(text_run: Path) -> None:
    settings = ServeSettings(max_batch=16, max_wait_ms=300)
    app = create_app_from_run(text_run, settings=settings)
    texts = [f"word {i}" for i in range(8)]

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        await app.state.serve.batcher.start()
        await app.state.serve.searcher.start()
        try:
            async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:
                return await asyncio.gather(
                    *(client.post("/search", json={"query": t, "k": 2}) for t in texts)
                )
        finally:
            await app.state.serve.searcher.stop()
            await app.state.serve.batcher.stop()

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 8
    metrics = app.state.serve.metrics
    calls, items = (metrics.value(f"contrastkit_batch_size_{s}") for s in ("count", "sum"))
    assert calls < 8 and items == 8  # fewer model calls than requests
    searches, queries = (
        metrics.value(f"contrastkit_search_batch_size_{s}") for s in ("count", "sum")
    )
    assert searches < 8 and queries == 8  # and fewer index calls: a model batch searches together
    # each got the answer of its own query, not a neighbour's in the batch
    _, task, _ = load_run(text_run)
    for text, response in zip(texts, responses):
        want = _reference(text_run, task.embed_texts([text]), 2)
        assert [hit["id"] for hit in response.json()["results"]] == want


def test_full_queue_answers_503_with_retry_after(text_run: Path) -> None:
    import threading

    gate, entered = threading.Event(), threading.Event()
    real = Embedder.from_run(text_run)

    armed = threading.Event()  # not for create_app's probe of the model's width

    def slow(texts: list[str]) -> torch.Tensor:
        if armed.is_set():
            entered.set()
            gate.wait(10)  # hold the model worker so the queue fills
        return real.embed_texts(texts)  # type: ignore[misc]

    embedder = Embedder("slow", ("text",), embed_texts=slow)
    settings = ServeSettings(max_batch=1, max_wait_ms=0, queue=2)
    app = create_app(embedder, text_run / INDEX_FILE, settings)
    armed.set()

    async def until(condition, what: str) -> None:
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise TimeoutError(what)

    async def main() -> list[httpx.Response]:
        await app.state.serve.batcher.start()
        await app.state.serve.searcher.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as client:

                def post(text: str) -> asyncio.Future:
                    return asyncio.ensure_future(client.post("/search", json={"query": text}))

                first = [post("in the model")]
                await until(entered.is_set, "the model call")
                first += [post("queued 1"), post("queued 2")]
                await until(lambda: app.state.serve.batcher.waiting == 2, "two queued requests")
                refused = await client.post("/search", json={"query": "one too many"})
                gate.set()
                return [refused, *await asyncio.gather(*first)]
        finally:
            gate.set()
            await app.state.serve.searcher.stop()
            await app.state.serve.batcher.stop()

    refused, *served = asyncio.run(main())
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["error"]
    assert [r.status_code for r in served] == [200, 200, 200]
    assert "contrastkit_rejected_total 1" in app.state.serve.metrics.render()


# -- bad input ------------------------------------------------------------------------------
BAD_IMAGE_REQUESTS = [
    # (method, path, kwargs, status, field)
    ("post", "/search", {"content": b'{"image": ', "headers": {"content-type": "application/json"}}, 400, "body"),
    ("post", "/search", {"content": b"not json at all"}, 400, "body"),
    ("post", "/search", {"json": {"image": 12}}, 400, "image"),
    ("post", "/search", {"json": {"image": "AAAA", "k": "5"}}, 400, "k"),
    ("post", "/search", {"json": {"image": "AAAA", "k": 2.5}}, 400, "k"),
    ("post", "/search", {"json": {"image": "AAAA", "colour": 1}}, 400, "colour"),
    ("post", "/search", {"json": {}}, 400, "query/image"),
    ("post", "/search", {"json": {"image": "@@@", "query": "x"}}, 400, "query/image"),
    ("post", "/search", {"json": {"query": "a text"}}, 400, "query"),
    ("post", "/search", {"json": {"image": "%%%not base64"}}, 400, "image"),
    ("post", "/search", {"json": {"image": base64.b64encode(b"GIF89a-but-not-really").decode()}}, 400, "image"),
    ("post", "/search", {"json": {"image": "QUJD", "k": 0}}, 400, "k"),
    ("post", "/search", {"json": {"image": "QUJD", "k": -3}}, 400, "k"),
    ("post", "/search", {"json": {"image": "QUJD", "k": 101}}, 400, "k"),
    ("post", "/search", {"json": {"image": "QUJD", "filter": {"label": [1]}}}, 400, "filter.label"),
    ("post", "/search", {"json": {"image": "QUJD", "filter": "label=3"}}, 400, "filter"),
    ("post", "/search/upload", {"files": {"file": ("x.png", b"\x89PNG broken", "image/png")}}, 400, "file"),
    ("post", "/search/upload", {"data": {"k": "3"}}, 400, "file"),
    ("post", "/search/upload", {"files": {"file": ("x.png", b"x", "image/png")}, "data": {"k": "many"}}, 400, "k"),
    ("post", "/embed", {"json": {"texts": ["a"]}}, 400, "texts"),
    ("post", "/embed", {"json": {"images": []}}, 400, "images"),
    ("post", "/embed", {"json": {"images": ["QUJD"] * 65}}, 400, "images"),
    ("post", "/embed", {"json": {"images": ["QUJD"], "texts": ["a"]}}, 400, "texts/images"),
    ("post", "/embed", {"json": {"images": "QUJD"}}, 400, "images"),
    ("get", "/thumb/100000", {}, 404, "position"),
    ("get", "/thumb/-1", {}, 404, "position"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "field"), BAD_IMAGE_REQUESTS)
def test_bad_input_on_an_image_run(
    image_client: TestClient, method: str, path: str, kwargs: dict, status: int, field: str
) -> None:
    _bad(getattr(image_client, method)(path, **kwargs), status, field)


ONE_SHAPE = {"error", "field", "value", "allowed"}


@pytest.mark.parametrize(
    ("path", "kwargs", "field", "value"),
    [
        ("/search", {"json": {"image": "QUJD", "k": "5"}}, "k", '"5"'),
        ("/search", {"json": {"image": "QUJD", "k": 0}}, "k", "0"),
        ("/search", {"json": {"image": "QUJD", "k": -1}}, "k", "-1"),
        ("/search", {"json": {"image": "QUJD", "k": 10**9}}, "k", "1000000000"),
        ("/search", {"json": {"image": "QUJD", "k": None}}, "k", "None"),
        ("/search", {"json": {"image": "QUJD", "k": True}}, "k", "True"),
        ("/search", {"json": {"query": ["a text"]}}, "query", "['a text']"),
        ("/search", {"json": {"image": "QUJD", "filter": {"label": {"x": 1}}}}, "filter.label",
         "{'x': 1}"),
        ("/search", {"json": {"k": 5}}, "query/image", '"neither"'),
        ("/search", {"json": {"image": "QUJD", "k": 5, "knn": 5}}, "knn", "5"),
        ("/search", {"json": ["QUJD"]}, "body", "['QUJD']"),
        ("/search/upload", {"files": {"file": ("q.png", b"x")}, "data": {"k": "0"}}, "k", '"0"'),
        ("/search/upload", {"files": {"file": ("q.png", b"x")}, "data": {"k": "5.5"}}, "k",
         '"5.5"'),
        ("/search/upload", {"files": {"file": ("q.png", b"x")}, "data": {"filter": "{"}},
         "filter", '"{"'),
        ("/search/upload", {"data": {"k": "5"}}, "file", None),
        ("/embed", {"json": {"images": ["QUJD", 7]}}, "images[1]", "7"),
        ("/embed", {"json": {"images": ["QUJD", "%%%"]}}, "images[1]", '"%%%"'),
        ("/embed", {"json": {"images": ["QUJD"] * 65}}, "images", '"65 items"'),
        ("/embed", {"json": {}}, "texts/images", '"neither"'),
    ],
)  # fmt: skip
def test_every_bad_field_answers_400_in_the_one_shape(
    image_client: TestClient, path: str, kwargs: dict, field: str, value: str | None
) -> None:
    """One validation layer: a value of the wrong type, out of bounds or missing gets the same
    status and body shape, naming the field (on 2b7de80 k="5" was FastAPI's 422 and k=0 a 400)."""
    response = image_client.post(path, **kwargs)
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == ONE_SHAPE, body
    assert body["field"] == field, body
    assert body["error"] == f"{field}: got {body['value']}; allowed: {body['allowed']}", body
    if value is not None:
        assert body["value"] == value, body
    if field == "k":
        assert body["allowed"] == "an integer from 1 to 100", body


def test_the_request_models_publish_their_bounds(image_client: TestClient) -> None:
    """The limits the models check are the ones the API page shows (``--max-k`` included)."""
    schemas = image_client.get("/openapi.json").json()["components"]["schemas"]
    k = schemas["SearchRequest"]["properties"]["k"]
    assert (k["minimum"], k["maximum"], k["default"]) == (1, 100, 10)
    assert k["description"] == "an integer from 1 to 100"


def test_unknown_filter_field_names_the_allowed_ones(
    image_client: TestClient, query_png: bytes
) -> None:
    body = _bad(
        image_client.post("/search", json={"image": b64(query_png), "filter": {"colour": "red"}}),
        400,
        "filter.colour",
    )
    assert "label" in body["allowed"]


def test_bad_input_on_a_text_run(text_client: TestClient, query_png: bytes) -> None:
    _bad(text_client.post("/search", json={"query": "   "}), 400, "query")
    _bad(text_client.post("/search", json={"query": ""}), 400, "query")
    _bad(text_client.post("/search", json={"image": b64(query_png)}), 400, "image")
    _bad(text_client.post("/embed", json={"texts": ["ok", ""]}), 400, "texts[1]")
    _bad(text_client.post("/embed", json={"texts": [1, 2]}), 400, "texts[0]")
    files = {"file": ("q.png", query_png, "image/png")}
    _bad(text_client.post("/search/upload", files=files), 400, "file")
    _bad(text_client.get("/thumb/0"), 404, "position")


def test_oversized_bodies_get_413(image_run: Path, query_png: bytes) -> None:
    settings = ServeSettings(max_body_mb=0.01)  # ~10 KB
    with TestClient(create_app_from_run(image_run, settings=settings), base_url=LOCAL) as client:
        big = "A" * 20_000
        _bad(client.post("/search", json={"image": big}), 413, "body")
        files = {"file": ("big.png", b"\0" * 20_000, "image/png")}
        _bad(client.post("/search/upload", files=files), 413, "body")

        def chunks():  # no Content-Length: the limit counts the streamed bytes
            for _ in range(20):
                yield b"A" * 1000

        _bad(client.post("/search", content=chunks()), 413, "body")
        ok = client.post("/search", json={"image": b64(query_png), "k": 1})
        assert ok.status_code == 200


def test_api_key_guards_everything_but_page_health_and_docs(
    image_run: Path, query_png: bytes
) -> None:
    settings = ServeSettings(api_key="s3cret")
    with TestClient(create_app_from_run(image_run, settings=settings), base_url=LOCAL) as client:
        for path in ("/", "/health", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert client.get("/health").json()["auth"] is True
        body = {"image": b64(query_png), "k": 1}
        _bad(client.post("/search", json=body), 401, "Authorization")
        _bad(client.post("/search", json=body, headers={"X-API-Key": "wrong"}), 401,
             "Authorization")  # fmt: skip
        _bad(client.get("/metrics"), 401, "Authorization")
        _bad(client.get("/thumb/0"), 401, "Authorization")
        _bad(client.post("/admin/reload"), 401, "Authorization")
        ok = {"Authorization": "Bearer s3cret"}
        assert client.post("/search", json=body, headers=ok).status_code == 200
        assert client.post("/search", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/thumb/0", headers=ok).status_code == 200
        assert client.post("/admin/reload", headers=ok).status_code == 200


def test_missing_run_or_index_names_the_file(tmp_path: Path, image_run: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.yaml"):
        create_app_from_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="contrastkit index"):
        create_app_from_run(image_run, index=tmp_path / "none.ckindex")
    with pytest.raises(ValueError, match="max_batch"):
        ServeSettings(max_batch=0)


def test_a_stream_of_bad_requests_leaves_memory_and_latency_flat(
    image_client: TestClient, query_png: bytes
) -> None:
    good = {"image": b64(query_png), "k": 5}

    def good_latency() -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            assert image_client.post("/search", json=good).status_code == 200
            times.append(time.perf_counter() - start)
        return sorted(times)[2]  # median of 5

    process = psutil.Process(os.getpid())
    for _ in range(20):  # warm every path (allocator pools, caches) before measuring
        image_client.post("/search", json={"image": "%%%"})
    before_rss, before_latency = process.memory_info().rss, good_latency()
    bad = [kwargs for method, _, kwargs, _, _ in BAD_IMAGE_REQUESTS if method == "post"]
    paths = [path for method, path, _, _, _ in BAD_IMAGE_REQUESTS if method == "post"]
    for i in range(300):
        response = image_client.post(paths[i % len(bad)], **bad[i % len(bad)])
        assert 400 <= response.status_code < 500
    after_rss, after_latency = process.memory_info().rss, good_latency()
    assert after_rss - before_rss < 50 * 2**20, (before_rss, after_rss)
    assert after_latency < 5 * before_latency + 0.05, (before_latency, after_latency)
    assert image_client.get("/health").status_code == 200


def test_an_unreadable_new_index_keeps_the_old_one_in_service(
    image_run: Path, tmp_path: Path, query_png: bytes
) -> None:
    path = tmp_path / "copy.ckindex"
    load_index(image_run / INDEX_FILE).save(path)
    with TestClient(create_app(Embedder.from_run(image_run), path), base_url=LOCAL) as client:
        size = client.get("/health").json()["index_size"]
        path.write_bytes(b"CKINDEX1 truncated")  # written in place, not renamed: unreadable
        with pytest.warns(RuntimeWarning, match="not readable"):
            response = client.post("/search", json={"image": b64(query_png), "k": 2})
        assert response.status_code == 200 and len(response.json()["results"]) == 2
        health = client.get("/health").json()
        assert (health["index_size"], health["index_version"]) == (size, 1)
        _bad(client.post("/admin/reload"), 409, "index")
        assert client.post("/search", json={"image": b64(query_png), "k": 2}).status_code == 200


def test_a_huge_image_is_refused_before_decoding(image_client: TestClient) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (6000, 5000)).save(buf, format="PNG")  # 30 MP of zeros: a ~30 KB file
    body = _bad(image_client.post("/search", json={"image": b64(buf.getvalue())}), 400, "image")
    assert "6000x5000" in body["value"] and "25,000,000" in body["allowed"]


def test_an_index_of_another_width_is_refused(image_run: Path, tmp_path: Path) -> None:
    from contrastkit.index import build_index

    dim = load_index(image_run / INDEX_FILE).dim
    wrong = build_index(torch.randn(5, dim + 3, generator=torch.Generator().manual_seed(1)))
    path = tmp_path / "wrong.ckindex"
    wrong.save(path)
    with pytest.raises(ValueError, match=rf"{dim + 3}-d vectors but the model embeds {dim}-d"):
        create_app(Embedder.from_run(image_run), path)
    good = tmp_path / "good.ckindex"
    load_index(image_run / INDEX_FILE).save(good)
    with TestClient(create_app(Embedder.from_run(image_run), good), base_url=LOCAL) as client:
        wrong.save(good)  # swapped in by rename, but for another model: not taken
        with pytest.warns(RuntimeWarning, match="not readable"):
            assert client.get("/health").json()["dimension"] == dim


def test_batched_search_equals_one_query_at_a_time(image_client: TestClient) -> None:
    from contrastkit.serve.live_index import search_index, search_many

    loaded = image_client.app.state.serve.holder.loaded
    index = loaded.index
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(5, index.dim, generator=g)  # (Q, D)
    ks = [1, 3, 10, 7, 2]
    filters = [{}, {"label": "3"}, {}, {"label": "9"}, {"id": "12"}]
    batched = search_many(loaded, queries, ks, filters)
    for i in range(5):
        alone = search_index(loaded, queries[i : i + 1], ks[i], filters[i])
        assert batched[i] == alone
        if not filters[i]:  # unfiltered: exactly the index's own top k
            assert [h["id"] for h in alone] == index.search(queries[i : i + 1], ks[i]).ids[0]
    assert {h["metadata"]["label"] for h in batched[1]} == {"3"} and len(batched[1]) == 3
    assert [h["id"] for h in batched[4]] == ["12"]
