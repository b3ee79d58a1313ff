"""``contrastkit serve`` under load: 1 / 8 / 32 concurrent clients on 127.0.0.1, with
micro-batching (``--max-batch 32 --max-wait-ms 5``, adaptive: a request that finds the model idle
is dispatched at once) and without (``--max-batch 1``), on two runs:

* ``POST /search`` (a base64 PNG, k=10) on an image run whose index is the demo's size:
  60,000 x 1,152 float32, ``faiss_flat`` (every query scans 276 MB; a micro-batch is one GEMM);
* ``POST /v1/embeddings`` (the OpenAI-compatible route, one short text) on a text run (the
  packaged MiniLM).

Each configuration is a real ``contrastkit serve`` process (uvicorn, one model thread, one torch
thread); the clients are asyncio + httpx in this process, sending back to back. Reported per
row: requests/s, p50/p95/p99 latency, errors (any non-200 or transport error), the mean
micro-batch size read from ``/metrics``, and the gain over ``--max-batch 1`` at the same load.
The clients share the machine with the server, so on few cores the numbers are a lower bound.

The runs: ``CK_BENCH_SERVE_RUN`` (e.g. ``runs/simclr_fashion_mnist_demo`` after ``make demo``;
it must have an index), else the demo when it exists, else a stand-in of the same shape: the
demo recipe's model (small CNN, width 32, 1,152-d backbone features) trained for 3 steps on the
60,000 Fashion-MNIST training images into ``.bench/serve/`` (throughput does not depend on how
well it is trained; about 2 minutes of CPU once). ``CK_BENCH_SERVE_TEXT_RUN`` likewise, else
``minilm_wordnet`` trained for 1 step into ``.bench/serve/``. ``CK_BENCH_SERVE_CLIENTS``
("1,8,32") and ``CK_BENCH_SERVE_SECONDS`` (10) size the load, ``CK_BENCH_SERVE_ROUTES``
("search,embeddings") picks the routes; ``CK_BENCH_QUICK=1`` is 8 clients x 3 s.

Run: ``.venv/bin/python benchmarks/run.py serve`` (about 4 minutes at the defaults, plus the
stand-ins' first build).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("CK_BENCH_QUICK") == "1"
CLIENTS = [int(c) for c in os.environ.get("CK_BENCH_SERVE_CLIENTS", "8" if QUICK else "1,8,32")
           .split(",")]  # fmt: skip
SECONDS = float(os.environ.get("CK_BENCH_SERVE_SECONDS", 3 if QUICK else 10))
ROUTES = os.environ.get("CK_BENCH_SERVE_ROUTES", "search,embeddings").split(",")
CONFIGS = [("batching", ["--max-batch", "32", "--max-wait-ms", "5"]),
           ("no batching", ["--max-batch", "1", "--max-wait-ms", "0"])]  # fmt: skip
STAND_IN = ROOT / ".bench" / "serve"


def _image_run() -> Path:
    chosen = os.environ.get("CK_BENCH_SERVE_RUN")
    if chosen:
        return Path(chosen)
    demo = ROOT / "runs" / "simclr_fashion_mnist_demo"
    if (demo / "index" / "corpus.ckindex").exists():
        return demo
    run = STAND_IN / "demo_architecture_60k"
    if not (run / "index" / "corpus.ckindex").exists():  # the demo's model, trained 3 steps
        from contrastkit.train import load_config, train
        from contrastkit.train.search import build_index

        overrides = [
            "train.max_steps=3",
            "train.checkpoint_every=3",
            "train.fit_schedule_to_budget=false",
            "train.threads=1",
            "train.progress=false",
            "optim.batch_size=32",
            "optim.warmup_steps=1",
            "data.test_subset=500",
            "eval.probe=false",
            "eval.raw_baseline=false",
        ]  # fmt: skip  (no data.subset: the corpus is all 60,000 training images, as the demo's)
        build_index(train(load_config("simclr_fashion_mnist_demo", overrides), run))
    return run


def _text_run() -> Path:
    chosen = os.environ.get("CK_BENCH_SERVE_TEXT_RUN")
    if chosen:
        return Path(chosen)
    run = STAND_IN / "minilm_wordnet_1step"
    if not (run / "index" / "corpus.ckindex").exists():
        from contrastkit.train import load_config, train
        from contrastkit.train.search import build_index

        overrides = [
            "train.max_steps=1", "train.checkpoint_every=1", "train.fit_schedule_to_budget=false",
            "train.threads=1", "train.progress=false", "optim.batch_size=8", "optim.warmup_steps=1",
            "data.subset=64", "eval.corpus_size=200", "eval.raw_baseline=false",
        ]  # fmt: skip
        build_index(train(load_config("minilm_wordnet", overrides), run))
    return run


def _query_png(run: Path) -> str:
    from PIL import Image

    from contrastkit.train.run import load_run

    _, task, _ = load_run(run)
    image = task.examples(1)[0][0]  # (C, H, W) in [0, 1]
    pixels = (image.clamp(0, 1) * 255).round().byte()
    array = pixels[0] if pixels.shape[0] == 1 else pixels.permute(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(array.contiguous().numpy()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run: Path, args: list[str], clients: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "contrastkit.cli", "serve", str(run), "--port", str(port),
         "--threads", "1", "--queue", str(max(256, 4 * clients)),
         "--max-concurrency", str(max(256, 4 * clients)), *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"contrastkit serve exited: {proc.stderr.read()}")  # type: ignore[union-attr]
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("contrastkit serve did not start in 180 s")


async def _load(
    url: str, path: str, body: dict, clients: int, seconds: float
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        if "model" in body:  # /v1/embeddings: the served run's name
            body = {**body, "model": (await client.get("/v1/models")).json()["data"][0]["id"]}
        for _ in range(2):  # warm up the connection pool and the model
            await client.post(path, json=body)
        stop = time.perf_counter() + seconds

        async def one_client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                start = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, errors


def _batch_stats(url: str) -> tuple[float, float, float, float]:
    """(sum, count) of the model batch sizes, then of the search batch sizes."""
    text = httpx.get(url + "/metrics").text

    def value(name: str) -> float:
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]

    return tuple(value(f"contrastkit_{kind}batch_size_{part}")  # type: ignore[return-value]
                 for kind in ("", "search_") for part in ("sum", "count"))  # fmt: skip


def _rows(route: str, run_dir: Path, path: str, body: dict) -> list[dict]:
    rows = []
    for name, args in CONFIGS:
        proc, url = _start(run_dir, args, max(CLIENTS))
        try:
            for clients in CLIENTS:
                before = _batch_stats(url)
                start = time.perf_counter()
                latencies, errors = asyncio.run(_load(url, path, body, clients, SECONDS))
                wall = time.perf_counter() - start
                after = _batch_stats(url)
                calls = after[1] - before[1]
                searches = after[3] - before[3]
                ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
                rows.append({
                    "route": route,
                    "config": name,
                    "clients": clients,
                    "requests": len(latencies),
                    "req_per_s": len(latencies) / wall,
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p95_ms": float(np.percentile(ms, 95)),
                    "p99_ms": float(np.percentile(ms, 99)),
                    "errors": errors,
                    "mean_batch": (after[0] - before[0]) / calls if calls else 0.0,
                    "mean_search_batch": (after[2] - before[2]) / searches if searches else 0.0,
                })  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(60)
    for row in rows:
        base = next(
            r for r in rows if r["config"] == "no batching" and r["clients"] == row["clients"]
        )
        row["gain_vs_batch_1"] = (
            row["req_per_s"] / base["req_per_s"] if base["req_per_s"] else float("nan")
        )
    return rows


def run() -> dict:
    rows: list[dict] = []
    served = []
    if "search" in ROUTES:
        image = _image_run()
        served.append(f"/search on {image}")
        rows += _rows("/search (image)", image, "/search", {"image": _query_png(image), "k": 10})
    if "embeddings" in ROUTES:
        text = _text_run()
        served.append(f"/v1/embeddings on {text}")
        body = {"input": "a quick brown fox jumps over the lazy dog", "model": "(from /v1/models)"}
        rows += _rows("/v1/embeddings (text)", text, "/v1/embeddings", body)
    return {
        "title": f"contrastkit serve: clients {'/'.join(map(str, CLIENTS))} x {SECONDS:g} s, "
        "batching on/off",
        "rows": rows,
        "notes": f"Runs served: {'; '.join(served)}. Server: one process, one model thread, torch "
        "threads 1; clients (asyncio + httpx) share the machine with it.",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
