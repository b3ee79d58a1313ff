"""Issue 33, the service's part: uploads that would reach another decoder (point 3), a keyless
loopback server used from another site (point 10), and the smaller gaps of point 12 (ReDoc from a
CDN, absolute paths in a public ``/health``, the API key only on the command line, indexes built
with ``--dim``, thumbnails decoded on the event loop, Ctrl-C)."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
import torch
from fastapi.testclient import TestClient
from tests.test_images_untrusted import EPS, bomb_png, fake_ghostscript

from contrastkit.cli import main
from contrastkit.index import load_index
from contrastkit.serve import ServeSettings, create_app, create_app_from_run
from contrastkit.serve.embedder import Embedder
from contrastkit.train.run import load_run
from contrastkit.train.search import INDEX_FILE

from .conftest import LOCAL, b64, png_bytes, start_server


@pytest.fixture(scope="module")
def client(image_run: Path):
    with TestClient(create_app_from_run(image_run), base_url=LOCAL) as client:
        yield client


@pytest.fixture(scope="module")
def query_png(image_run: Path) -> bytes:
    _, task, _ = load_run(image_run)
    return png_bytes(task.examples(1)[0][0])


@pytest.fixture
def ghostscript_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return fake_ghostscript(tmp_path, monkeypatch)


def _refused(response: httpx.Response, status: int, field: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "field", "value", "allowed"} and body["field"] == field, body
    return body


# -- point 3: only the allowed image formats reach a decoder ----------------------------------
def test_an_eps_upload_never_reaches_ghostscript(
    client: TestClient, ghostscript_calls: Path
) -> None:
    upload = client.post("/search/upload", files={"file": ("photo.png", EPS, "image/png")})
    body = _refused(upload, 400, "file")
    assert "PNG, JPEG, BMP, GIF, WebP or TIFF" in body["allowed"]
    _refused(client.post("/search", json={"image": b64(EPS)}), 400, "image")
    _refused(client.post("/embed", json={"images": [b64(EPS)]}), 400, "images[0]")
    assert not ghostscript_calls.exists(), ghostscript_calls.read_text()


def test_a_decompression_bomb_upload_is_a_400(client: TestClient) -> None:
    body = _refused(client.post("/search", json={"image": b64(bomb_png())}), 400, "image")
    assert "pixels" in body["allowed"]


def test_cli_search_with_a_bomb_image_exits_2_in_one_line(
    image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    assert main(["search", str(image_run), str(bomb)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bomb.png" in err[0] and "too many pixels" in err[0], err


# -- point 10: a keyless loopback server refuses other sites ------------------------------------
def test_a_foreign_host_is_refused_without_a_key(client: TestClient, query_png: bytes) -> None:
    rebound = {"Host": "evil.example:8000"}  # DNS rebinding: evil.example resolved to 127.0.0.1
    body = _refused(client.get("/health", headers=rebound), 421, "Host")
    assert "--api-key" in body["allowed"]
    _refused(client.post("/admin/reload", headers=rebound), 421, "Host")
    search = {"image": b64(query_png), "k": 1}
    _refused(client.post("/search", json=search, headers=rebound), 421, "Host")
    for host in ("127.0.0.1:8000", "localhost:8000", "localhost", "[::1]:8000"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host


def test_cross_site_posts_are_refused_same_origin_ones_pass(
    client: TestClient, query_png: bytes
) -> None:
    # what a form on https://evil.example posting to http://127.0.0.1:8000 sends
    cross = [
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
    ]
    for headers in cross:
        field = next(iter(headers))
        _refused(client.post("/admin/reload", headers=headers), 403, field)
        upload = client.post(
            "/search/upload", files={"file": ("q.png", query_png, "image/png")}, headers=headers
        )
        _refused(upload, 403, field)
    # the search page's own fetch calls, and programs (curl sends neither header)
    own = {"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"}
    assert client.post("/admin/reload", headers=own).status_code == 200
    files = {"file": ("q.png", query_png, "image/png")}
    assert client.post("/search/upload", files=files, headers=own).status_code == 200
    assert client.post("/search/upload", files=files).status_code == 200
    assert client.get("/health", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_with_a_key_other_hosts_are_served(image_run: Path) -> None:
    settings = ServeSettings(api_key="s3cret")
    app = create_app_from_run(image_run, settings=settings)
    with TestClient(app, base_url="http://search.example.org") as keyed:
        assert keyed.get("/health").status_code == 200
        key = {"X-API-Key": "s3cret"}
        assert keyed.post("/admin/reload", headers=key).status_code == 200


# -- point 12 -------------------------------------------------------------------------------
def test_redoc_is_off(client: TestClient) -> None:
    assert client.get("/redoc").status_code == 404  # it loaded its script from a CDN
    assert client.get("/docs").status_code == 200  # Swagger UI, its assets served locally


def test_health_shows_paths_only_to_the_key_holder(image_run: Path) -> None:
    settings = ServeSettings(api_key="s3cret")
    with TestClient(create_app_from_run(image_run, settings=settings), base_url=LOCAL) as keyed:
        public = keyed.get("/health").json()
        assert public["index_path"] == Path(INDEX_FILE).name and public["run"] == image_run.name
        assert str(image_run) not in str(public)
        private = keyed.get("/health", headers={"Authorization": "Bearer s3cret"}).json()
        assert private["index_path"] == str(image_run / INDEX_FILE)
        assert private["run"] == str(image_run)


def test_api_key_from_the_environment(
    image_run: Path, monkeypatch: pytest.MonkeyPatch, query_png: bytes
) -> None:
    proc, url = start_server(image_run, env={"CONTRASTKIT_API_KEY": "from-env"})
    try:
        body = {"image": b64(query_png), "k": 1}
        assert httpx.post(url + "/search", json=body).status_code == 401
        ok = httpx.post(url + "/search", json=body, headers={"X-API-Key": "from-env"})
        assert ok.status_code == 200
    finally:
        proc.kill()
        proc.wait(10)


def test_api_key_file_is_read_and_checked(
    image_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], query_png: bytes
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    key_file.chmod(0o644)  # readable by other users: refused
    assert main(["serve", str(image_run), "--api-key-file", str(key_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chmod 600" in err[0], err
    key_file.chmod(0o600)
    proc, url = start_server(image_run, "--api-key-file", str(key_file))
    try:
        body = {"image": b64(query_png), "k": 1}
        assert httpx.post(url + "/search", json=body).status_code == 401
        ok = httpx.post(url + "/search", json=body, headers={"X-API-Key": "from-file"})
        assert ok.status_code == 200
    finally:
        proc.kill()
        proc.wait(10)
    assert main(["serve", str(image_run), "--api-key", "x", "--api-key-file", str(key_file)]) == 2
    assert "both given" in capsys.readouterr().err


def test_an_index_built_with_dim_is_served_like_search(
    image_run: Path, tmp_path: Path, query_png: bytes
) -> None:
    from contrastkit.train.search import build_index, search

    run = tmp_path / "narrow"
    shutil.copytree(image_run, run)
    full = load_index(run / INDEX_FILE).dim
    with pytest.warns(UserWarning):  # 8 is not among the run's trained Matryoshka widths
        build_index(run, dim=8)
    assert load_index(run / INDEX_FILE).dim == 8 < full
    query = tmp_path / "query.png"
    query.write_bytes(query_png)
    want = [hit["id"] for hit in search(run, str(query), k=5)]
    with TestClient(create_app_from_run(run), base_url=LOCAL) as narrow:
        assert narrow.get("/health").json()["dimension"] == 8
        got = narrow.post("/search", json={"image": b64(query_png), "k": 5}).json()["results"]
        assert [hit["id"] for hit in got] == want


class _Corpus:
    """Corpus images that record whether they were read on a thread running an event loop."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.on_loop = images, []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        return self.images[i]


def test_thumbnails_are_made_off_the_event_loop(image_run: Path) -> None:
    embedder = Embedder.from_run(image_run)
    corpus = _Corpus(
        torch.rand(6, *embedder.image_shape, generator=torch.Generator().manual_seed(0))
    )
    embedder.thumbnails = corpus  # type: ignore[assignment]
    with TestClient(create_app(embedder, image_run / INDEX_FILE), base_url=LOCAL) as thumbs:
        for position in range(3):
            response = thumbs.get(f"/thumb/{position}")
            assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    assert corpus.on_loop == [False, False, False]


def test_ctrl_c_stops_the_server_with_exit_0(image_run: Path) -> None:
    proc, _ = start_server(image_run)
    try:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, proc.stderr.read() if proc.stderr else ""


# -- point 11: a filter scores only the items it matches ------------------------------------
class _Counted:
    """An index that records the work asked of it: the rows each call ranks (a ``search``
    ranks all N vectors for each query; ``search_among`` the positions it is given)."""

    def __init__(self, index) -> None:
        self.index, self.calls = index, []

    def __len__(self) -> int:
        return len(self.index)

    def __getattr__(self, name: str):
        return getattr(self.index, name)

    def search(self, query, k, **kwargs):
        self.calls.append(("search", len(self.index) * len(query), k))
        return self.index.search(query, k, **kwargs)

    def search_among(self, query, k, positions):
        self.calls.append(("search_among", len(positions) * len(query), k))
        return self.index.search_among(query, k, positions)


@pytest.fixture(scope="module")
def large_index(tmp_path_factory: pytest.TempPathFactory):
    """10^5 vectors labelled "common" but for three labelled "rare" (positions 7, 50_000, 99_999)."""
    from contrastkit.index import build_index

    n = 100_000
    vectors = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    labels = ["common"] * n
    for position in (7, 50_000, 99_999):
        labels[position] = "rare"
    index = build_index(vectors, metric="cosine", metadata=[{"label": x} for x in labels])
    path = tmp_path_factory.mktemp("large") / "large.ckindex"
    index.save(path)
    return path, vectors


def _loaded(path: Path):
    from dataclasses import replace

    from contrastkit.serve.live_index import IndexHolder

    loaded = IndexHolder(path).loaded
    return replace(loaded, index=_Counted(loaded.index))


def test_a_filter_on_an_absent_value_searches_nothing(large_index: tuple) -> None:
    from contrastkit.serve.live_index import search_many

    loaded = _loaded(large_index[0])
    query = torch.randn(1, 8, generator=torch.Generator().manual_seed(1))
    for flt in ({"label": "absent"}, {"id": "no-such-id"}, {"label": "rare", "id": "0"}):
        assert search_many(loaded, query, [10], [flt]) == [[]]
    assert loaded.index.calls == []  # answered from the value -> positions map, no ranking


def test_a_rare_filter_value_scores_only_its_items(large_index: tuple) -> None:
    from contrastkit.serve.live_index import search_many

    path, vectors = large_index
    loaded = _loaded(path)
    query = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    filters = [{"label": "rare"}, {}]
    rare, plain = search_many(loaded, query, [10, 4], filters)
    assert [call[:2] for call in loaded.index.calls] == [
        ("search", len(vectors)),  # the unfiltered query: one ranking of all N
        ("search_among", 3),  # the filtered one: its 3 items, not N
    ]
    # the same hits as scoring the three by hand (cosine), best first
    rows = torch.tensor([7, 50_000, 99_999])
    scores = torch.nn.functional.normalize(vectors[rows], dim=1) @ torch.nn.functional.normalize(
        query[0], dim=0
    )
    order = scores.argsort(descending=True)
    assert [hit["position"] for hit in rare] == rows[order].tolist()
    assert [hit["score"] for hit in rare] == pytest.approx(scores[order].tolist(), abs=1e-5)
    assert {hit["metadata"]["label"] for hit in rare} == {"rare"}
    assert len(plain) == 4
    common = search_many(loaded, query[:1], [5], [{"label": "common"}])[0]
    assert len(common) == 5 and {hit["metadata"]["label"] for hit in common} == {"common"}


@pytest.mark.parametrize(
    "backend", ["exact", "faiss_flat", "faiss_sq8", "faiss_hnsw", "faiss_binary"]
)
def test_filtered_search_equals_the_filtered_ranking(backend: str, tmp_path: Path) -> None:
    """Every backend: the hits of a filter are the backend's own ranking of the whole index,
    restricted to the matching items (what the filter meant before it scored only those)."""
    from contrastkit.index import create_index
    from contrastkit.serve.live_index import IndexHolder, search_many

    g = torch.Generator().manual_seed(3)
    vectors, query = torch.randn(2000, 16, generator=g), torch.randn(1, 16, generator=g)
    labels = [str(i % 7) for i in range(2000)]
    index = create_index(backend, dim=16)
    index.add(vectors, metadata=[{"label": x} for x in labels])
    path = tmp_path / "i.ckindex"
    index.save(path)
    loaded = IndexHolder(path).loaded
    full = loaded.index.search(query, 2000)
    want = [p for p in full.indices[0].tolist() if p >= 0 and labels[p] == "3"][:6]
    got = search_many(loaded, query, [6], [{"label": "3"}])[0]
    assert [hit["position"] for hit in got] == want
