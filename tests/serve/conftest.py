"""Small real runs for the service tests: a digits SimCLR run and a WordNet text-pairs run, each
trained for seconds once per session and indexed with ``contrastkit.train.search.build_index``."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tests.train.conftest import tiny_config, tiny_pairs_config

LOCAL = "http://127.0.0.1"
"""TestClient's base URL: a loopback Host, which a service without an API key requires (its
default ``testserver`` would be refused like any other name)."""


@pytest.fixture(scope="session")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from contrastkit.train import load_config_dict, train
    from contrastkit.train.search import build_index

    tmp = tmp_path_factory.mktemp("serve_image")
    run = train(load_config_dict(tiny_config(tmp)), tmp / "digits")
    build_index(run)
    return Path(run)


@pytest.fixture(scope="session")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from contrastkit.train import load_config_dict, train
    from contrastkit.train.search import build_index

    tmp = tmp_path_factory.mktemp("serve_text")
    run = train(load_config_dict(tiny_pairs_config(tmp)), tmp / "adverbs")
    build_index(run)
    return Path(run)


@pytest.fixture(scope="session")
def image_text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two towers (CLIP layout): rendered Noto emoji <-> their names, a 4-wide CNN and a tiny
    from-scratch text tower, 3 steps; the corpus is the held-out emoji images."""
    from contrastkit.train import load_config_dict, train
    from contrastkit.train.search import build_index

    tmp = tmp_path_factory.mktemp("serve_image_text")
    cfg = tiny_pairs_config(
        tmp,
        name="emoji",
        data={"dataset": "emoji", "options": {"size": 16}},
        model={
            "name": "emoji_towers",
            "width": 4,
            "out_dim": 16,
            "options": {
                "text": "tiny_text",
                "text_options": {
                    "hidden_size": 16,
                    "num_layers": 1,
                    "num_heads": 2,
                    "max_length": 16,
                },
            },
        },
        loss={"name": "info_nce", "params": {"temperature": 0.1, "symmetric": True}},
        eval={"recall_at": [1, 5]},
    )
    for key in ("subset", "test_subset"):
        cfg["data"].pop(key)
    for key in ("corpus_size", "queries"):
        cfg["eval"].pop(key)
    cfg["negatives"] = {}
    cfg["task"] = "image_text"
    run = train(load_config_dict(cfg), tmp / "emoji")
    build_index(run)
    return Path(run)


def png_bytes(image) -> bytes:
    """(C, H, W) float in [0, 1] -> PNG bytes."""
    from PIL import Image

    pixels = (image.float().clamp(0, 1) * 255).round().byte()
    array = pixels[0] if pixels.shape[0] == 1 else pixels.permute(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(array.contiguous().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer /health in {timeout} s")


def start_server(run: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``python -m contrastkit.cli serve RUN`` on a free loopback port (real uvicorn); ``env``:
    variables added to this process's environment."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "contrastkit.cli", "serve", str(run), "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url
