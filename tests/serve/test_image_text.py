"""A two-tower run (image <-> text, CLIP layout) served: text queries and image queries search the
same image corpus, ``/embed`` says which tower answered."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
import torch
from fastapi.testclient import TestClient

from contrastkit.data.images import load_image
from contrastkit.index import load_index
from contrastkit.serve import create_app_from_run
from contrastkit.train.run import load_run
from contrastkit.train.search import INDEX_FILE

from .conftest import LOCAL, b64, png_bytes


@pytest.fixture(scope="module")
def client(image_text_run: Path):
    with TestClient(create_app_from_run(image_text_run), base_url=LOCAL) as client:
        yield client


def test_health_offers_both_query_kinds(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["query_kinds"] == ["text", "image"]
    assert health["corpus"] == "image"


def test_text_and_image_queries_search_the_image_corpus(
    client: TestClient, image_text_run: Path
) -> None:
    _, task, _ = load_run(image_text_run)
    index = load_index(image_text_run / INDEX_FILE)
    caption = task.examples(1)[0][0]
    body = client.post("/search", json={"query": caption, "k": 5}).json()
    assert body["tower"] == "text"
    want = index.search(task.embed_texts([caption]), 5).ids[0]
    assert [hit["id"] for hit in body["results"]] == want
    assert all(hit["thumb"] == f"/thumb/{hit['position']}" for hit in body["results"])

    image = task.corpus_items()[7]  # (C, H, W): the corpus image itself ranks first
    body = client.post("/search", json={"image": b64(png_bytes(image)), "k": 3}).json()
    assert body["tower"] == "image"
    assert body["results"][0]["position"] == 7
    thumb = client.get("/thumb/7").content
    decoded = load_image(thumb, channels=image.shape[0], size=None)
    assert torch.allclose(decoded, image, atol=1 / 255 + 1e-6)


def test_embed_names_the_tower(client: TestClient, image_text_run: Path) -> None:
    _, task, _ = load_run(image_text_run)
    texts = ["grinning face", "red heart"]
    body = client.post("/embed", json={"texts": texts}).json()
    assert body["tower"] == "text"
    torch.testing.assert_close(
        torch.tensor(body["embeddings"]), task.embed_texts(texts), atol=1e-5, rtol=1e-5
    )
    image = task.corpus_items()[0]
    body = client.post("/embed", json={"images": [b64(png_bytes(image))]}).json()
    assert body["tower"] == "image" and len(body["embeddings"]) == 1
