"""``serve`` on an audio run (issue 29): a tiny ``audio_text`` run trained on a folder of WAV tones
written here and indexed; ``/search/upload`` with a WAV equals ``contrastkit search`` with the same
file, ``/embed`` with base64 audio equals the task's own ``embed_audio``, a text file named
``.wav`` is refused naming the field, ``/audio/{position}`` answers the corpus clip's bytes, and
the page (in Debian's chromium) plays the hits of a text search with ``<audio>``."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("soundfile", reason="soundfile decodes audio")
import soundfile
from fastapi.testclient import TestClient

from audio_tones import RATE, write_tones
from contrastkit.cli import main
from contrastkit.data.audio import crop_or_pad, load_audio
from contrastkit.serve import create_app_from_run
from contrastkit.train.run import load_run
from contrastkit.train.search import search

from .conftest import LOCAL, b64, free_port, wait_healthy

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 clips (6 tones x 3 speakers), a manifest, and a text file named ``notes.wav``."""
    return write_tones(tmp_path_factory.mktemp("tones"))


@pytest.fixture(scope="module")
def run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ``audio_text`` run of tests/train/test_audio_tasks.py, trained and indexed."""
    tmp = tmp_path_factory.mktemp("audio-run")
    cfg = {
        "name": "audio_text",
        "task": "audio_text",
        "data": {
            "dataset": "audio_folder",
            "root": str(folder / "manifest.csv"),
            "options": {"test_fraction": 0.34},
        },
        "audio": {"clip_seconds": 0.6},
        "model": {
            "name": "audio_cnn",
            "width": 4,
            "out_dim": 16,
            "options": {"sample_rate": RATE, "n_mels": 16, "n_fft": 256, "hop_length": 80},
            "text": {
                "name": "tiny_text",
                "options": {"hidden_size": 16, "num_layers": 1, "num_heads": 2},
            },
        },
        "optim": {"batch_size": 4, "warmup_steps": 0},
        "train": {
            "max_steps": 2,
            "output_dir": str(tmp / "runs"),
            "progress": False,
            "checkpoint_every": 0,
            "monitor_every": 0,
            "precision": "fp32",
        },
        "eval": {"recall_at": [1, 5]},
    }
    path = tmp / "audio_text.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    out = tmp / "runs" / "audio_text"
    assert main(["index", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def client(run: Path) -> Iterator[TestClient]:
    with TestClient(create_app_from_run(run), base_url=LOCAL) as c:
        yield c


def test_health_says_audio(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["query_kinds"] == ["text", "audio"] and body["corpus"] == "audio"


def test_upload_wav_equals_cli_search(client: TestClient, run: Path, folder: Path) -> None:
    wav = folder / "low_ann.wav"
    want = search(run, str(wav), k=5)
    r = client.post("/search/upload", files={"file": ("q.wav", wav.read_bytes(), "audio/wav")},
                    data={"k": "5"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tower"] == "audio"
    got = body["results"]
    assert [h["position"] for h in got] == [h["position"] for h in want]
    assert [h["id"] for h in got] == [h["id"] for h in want]
    np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5)
    assert all(h["audio"] == f"/audio/{h['position']}" for h in got)
    # the same clip as base64 through /search
    r = client.post("/search", json={"audio": b64(wav.read_bytes()), "k": 5})
    assert r.status_code == 200, r.text
    assert [h["position"] for h in r.json()["results"]] == [h["position"] for h in want]


def test_text_query_searches_audio(client: TestClient, run: Path) -> None:
    want = search(run, "a low sound", k=4)
    r = client.post("/search", json={"query": "a low sound", "k": 4})
    assert r.status_code == 200, r.text
    assert [h["position"] for h in r.json()["results"]] == [h["position"] for h in want]


def test_embed_audio_equals_task(client: TestClient, run: Path, folder: Path) -> None:
    _, task, _ = load_run(run)
    files = [folder / "high_bob.wav", folder / "rising_cid.wav"]
    clips = [crop_or_pad(torch.from_numpy(load_audio(f, RATE)[0]), task.clip_samples)
             for f in files]  # fmt: skip
    want = task.embed_audio(torch.stack([c for c, _ in clips]), torch.stack([m for _, m in clips]))
    r = client.post("/embed", json={"audio": [b64(f.read_bytes()) for f in files]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tower"] == "audio" and body["dim"] == want.shape[1]
    np.testing.assert_allclose(np.array(body["embeddings"]), want.numpy(), atol=1e-5)
    # a FLAC of the same samples embeds the same
    buf = io.BytesIO()
    wave, _ = soundfile.read(files[0], dtype="float32")
    soundfile.write(buf, wave, RATE, format="FLAC")
    r = client.post("/embed", json={"audio": [b64(buf.getvalue())]})
    np.testing.assert_allclose(np.array(r.json()["embeddings"][0]), want[0].numpy(), atol=1e-3)


def test_bad_audio_names_the_field(client: TestClient, folder: Path) -> None:
    text = (folder / "notes.wav").read_bytes()
    r = client.post("/search/upload", files={"file": ("notes.wav", text, "audio/wav")})
    assert r.status_code == 400 and r.json()["field"] == "file", r.text
    assert "WAV" in r.json()["allowed"]
    r = client.post("/search/upload", files={"file": ("empty.wav", b"", "audio/wav")})
    assert r.status_code == 400 and r.json()["field"] == "file", r.text
    r = client.post("/search", json={"audio": b64(text)})
    assert r.status_code == 400 and r.json()["field"] == "audio", r.text
    r = client.post("/search", json={"audio": "@@not base64@@"})
    assert r.status_code == 400 and r.json()["field"] == "audio", r.text
    r = client.post("/embed", json={"audio": [b64((folder / "low_ann.wav").read_bytes()),
                                              b64(text)]})  # fmt: skip
    assert r.status_code == 400 and r.json()["field"] == "audio[1]", r.text
    r = client.post("/search", json={"query": "x", "audio": b64(text)})
    assert r.status_code == 400 and r.json()["field"] == "query/image/audio", r.text
    r = client.post("/search", json={"image": b64(text)})  # this run sees no images
    assert r.status_code == 400 and r.json()["field"] == "image", r.text


def test_audio_route_serves_corpus_clips(client: TestClient, run: Path) -> None:
    _, task, _ = load_run(run)
    n = task.corpus_size()
    r = client.get("/audio/0")
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert r.content == Path(task.corpus_clip_path(0)).read_bytes()
    wave, rate = soundfile.read(io.BytesIO(r.content))
    assert rate == RATE and wave.size > 0
    for bad in (n, -1):
        r = client.get(f"/audio/{bad}")
        assert r.status_code == 404 and r.json()["field"] == "position", r.text
    r = client.get("/audio/manifest.csv")  # a path is never taken, only a position
    assert r.status_code == 400 and r.json()["field"] == "position", r.text
    r = client.get("/audio/..%2Fmanifest.csv")
    assert r.status_code == 404 and b"path,text" not in r.content, r.text


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (`make setup` installs them)",
)
def test_page_plays_hits(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("selenium", reason="selenium is in the test extra")
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app_from_run(run), host="127.0.0.1",
                                          port=port, log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--autoplay-policy=no-user-gesture-required"):  # fmt: skip
        options.add_argument(flag)
    driver = None
    try:
        wait_healthy(url, timeout=60)
        driver = webdriver.Chrome(
            options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
        )
        driver.set_page_load_timeout(60)
        driver.get(url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert driver.find_element(By.ID, "file").get_attribute("accept") == "audio/*"
        driver.find_element(By.ID, "query").send_keys("a low sound")
        driver.find_element(By.ID, "k-text").clear()
        driver.find_element(By.ID, "k-text").send_keys("3")
        driver.find_element(By.ID, "search-text").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 3)
        want = search(run, "a low sound", k=3)
        shown = [e.get_attribute("data-position")
                 for e in driver.find_elements(By.CSS_SELECTOR, "#results .result")]  # fmt: skip
        assert shown == [str(h["position"]) for h in want]
        players = driver.find_elements(By.CSS_SELECTOR, "#results .result audio")
        assert len(players) == 3
        assert [p.get_attribute("data-src") for p in players] == [
            f"/audio/{h['position']}" for h in want
        ]
        # each player gets its clip's bytes and the browser decodes them (a duration appears)
        wait.until(lambda d: all((p.get_attribute("src") or "").startswith("blob:")
                                 for p in players))  # fmt: skip
        for p in players:
            driver.execute_script("arguments[0].preload = 'auto'; arguments[0].load();", p)
        wait.until(lambda d: all(
            (d.execute_script("return arguments[0].duration;", p) or 0) > 0.3 for p in players
        ))  # fmt: skip
    finally:
        if driver is not None:
            driver.quit()
        server.should_exit = True
        thread.join(30)
