"""A real ``contrastkit serve`` process (uvicorn on 127.0.0.1, a free port): the index is swapped
under load without a failed request, and SIGTERM finishes the request in flight and exits 0."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
import torch

from contrastkit.cli import main
from contrastkit.index import build_index, load_index
from contrastkit.train.run import load_run
from contrastkit.train.search import INDEX_FILE

from .conftest import b64, png_bytes, start_server


@pytest.fixture(scope="module")
def served(image_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A copy of the digits run (its index is rewritten here) and its live server."""
    run = tmp_path_factory.mktemp("served") / "digits"
    shutil.copytree(image_run, run)
    proc, url = start_server(run, "--threads", "1")
    try:
        yield run, proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_index_hot_swap_fails_no_request(served: tuple) -> None:
    run, _, url = served
    _, task, _ = load_run(run)
    query = {"image": b64(png_bytes(task.examples(1)[0][0])), "k": 3}
    original = load_index(run / INDEX_FILE)
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                statuses.append(client.post("/search", json=query).status_code)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        vectors = torch.randn(50, original.dim, generator=torch.Generator().manual_seed(0))
        ids = [f"swapped-{i}" for i in range(50)]
        swapped = build_index(vectors, metric="cosine", ids=ids, metadata=[{"label": "x"}] * 50)
        swapped.save(run / INDEX_FILE)  # atomic rename over the served file
        deadline = time.monotonic() + 20
        while httpx.get(url + "/health").json()["index_size"] != 50:
            assert time.monotonic() < deadline, "the server did not pick up the new index"
            time.sleep(0.1)
        hits = httpx.post(url + "/search", json=query).json()["results"]
        assert all(hit["id"].startswith("swapped-") for hit in hits)
        # `contrastkit index RUN` itself writes the run's index back
        assert main(["index", str(run)]) == 0
        while httpx.get(url + "/health").json()["index_size"] != len(original):
            assert time.monotonic() < deadline, "the server did not pick up the rebuilt index"
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert len(statuses) > 10 and set(statuses) == {200}, statuses
    assert httpx.get(url + "/health").json()["index_version"] >= 3
    assert httpx.post(url + "/admin/reload").status_code == 200
    assert "contrastkit_index_reloads_total" in httpx.get(url + "/metrics").text


def test_sigterm_finishes_the_request_in_flight_and_exits_0(served: tuple) -> None:
    run, proc, url = served
    _, task, _ = load_run(run)
    body = ('{"k": 2, "image": "' + b64(png_bytes(task.examples(1)[0][0])) + '"}').encode()
    sent_half = threading.Event()

    def slow_body() -> Iterator[bytes]:  # the request is in flight while its body streams
        half = len(body) // 2
        yield body[:half]
        sent_half.set()
        time.sleep(1.5)
        yield body[half:]

    result: dict = {}

    def request() -> None:
        headers = {"content-type": "application/json"}
        with httpx.Client(timeout=30) as client:
            result["response"] = client.post(url + "/search", content=slow_body(), headers=headers)

    thread = threading.Thread(target=request)
    thread.start()
    assert sent_half.wait(10)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):  # no longer accepting
        httpx.get(url + "/health", timeout=2)
    thread.join(30)
    response = result["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 2
    assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""


def test_cli_refuses_a_public_bind_without_key(image_run: Path, capsys) -> None:
    assert main(["serve", str(image_run), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("contrastkit serve: --host '0.0.0.0'")
    assert "--api-key" in err[0]


def test_cli_names_a_missing_run_or_index(tmp_path: Path, image_run: Path, capsys) -> None:
    assert main(["serve", str(tmp_path / "nope")]) == 4
    assert "contrastkit serve:" in capsys.readouterr().err
    assert main(["serve", str(image_run), "--index", str(tmp_path / "x.ckindex")]) == 4
    assert "x.ckindex" in capsys.readouterr().err
    assert main(["serve", str(image_run), "--max-batch", "0"]) == 2
    assert "max_batch" in capsys.readouterr().err


def test_serve_has_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--index", "--api-key", "--max-batch", "--max-wait-ms",
                 "--queue", "--max-body-mb", "--threads"):  # fmt: skip
        assert flag in out
