"""``contrastkit serve`` under load: N concurrent clients for S seconds on 127.0.0.1, once with
micro-batching (``--max-batch 32``) and once without (``--max-batch 1``), in one run.

Each configuration is a real ``contrastkit serve`` process (uvicorn, one model thread, one torch
thread); the clients are asyncio + httpx in this process, each sending ``POST /search`` with a
base64 PNG test image (k=10) back to back. Reported per configuration: requests/s, p50/p95/p99
latency, errors (any non-200 or transport error), the mean micro-batch size read from the
server's ``/metrics``, and the throughput gain over ``--max-batch 1``. The clients share the
machine with the server, so on few cores the numbers are a lower bound.

The run served: ``CK_BENCH_SERVE_RUN`` (e.g. ``runs/simclr_fashion_mnist_demo`` after
``make demo``, it must have an index), else ``runs/simclr_fashion_mnist_demo`` when it exists,
else the demo recipe's model (small CNN, width 32) trained for 3 steps on 5,000 Fashion-MNIST
images into ``.bench/serve/`` (throughput does not depend on how well it is trained). ``CK_BENCH_SERVE_CLIENTS`` (32) and
``CK_BENCH_SERVE_SECONDS`` (20) size the load; ``CK_BENCH_QUICK=1`` uses 8 clients x 3 s.

Run: ``.venv/bin/python benchmarks/run.py serve`` (about 1 minute at the defaults).
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
CLIENTS = int(os.environ.get("CK_BENCH_SERVE_CLIENTS", 8 if QUICK else 32))
SECONDS = float(os.environ.get("CK_BENCH_SERVE_SECONDS", 3 if QUICK else 20))
CONFIGS = [("micro-batching", ["--max-batch", "32", "--max-wait-ms", "5"]),
           ("no batching", ["--max-batch", "1", "--max-wait-ms", "0"])]  # fmt: skip


def _run_dir() -> Path:
    chosen = os.environ.get("CK_BENCH_SERVE_RUN")
    if chosen:
        return Path(chosen)
    demo = ROOT / "runs" / "simclr_fashion_mnist_demo"
    if (demo / "index" / "corpus.ckindex").exists():
        return demo
    run = ROOT / ".bench" / "serve" / "demo_architecture"
    if not (run / "index" / "corpus.ckindex").exists():  # the demo's model, trained 3 steps
        from contrastkit.train import load_config, train
        from contrastkit.train.search import build_index

        overrides = [
            "train.max_steps=3", "train.checkpoint_every=3", "train.fit_schedule_to_budget=false",
            "train.threads=1", "train.progress=false", "optim.batch_size=32", "optim.warmup_steps=1",
            "data.subset=5000", "data.test_subset=500", "eval.probe=false",
            "eval.raw_baseline=false",
        ]  # fmt: skip
        build_index(train(load_config("simclr_fashion_mnist_demo", overrides), run))
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


def _start(run: Path, args: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "contrastkit.cli", "serve", str(run), "--port", str(port),
         "--threads", "1", "--queue", str(max(256, 4 * CLIENTS)), *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"contrastkit serve exited: {proc.stderr.read()}")  # type: ignore[union-attr]
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("contrastkit serve did not start in 120 s")


async def _load(url: str, body: dict, clients: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        for _ in range(2):  # warm up the connection pool and the model
            await client.post("/search", json=body)
        stop = time.perf_counter() + seconds

        async def one_client() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                start = time.perf_counter()
                try:
                    response = await client.post("/search", json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, errors


def _mean_batch(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    total = float(re.search(r"^contrastkit_batch_size_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^contrastkit_batch_size_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return total / count if count else 0.0


def run() -> dict:
    run_dir = _run_dir()
    body = {"image": _query_png(run_dir), "k": 10}
    rows = []
    for name, args in CONFIGS:
        proc, url = _start(run_dir, args)
        try:
            start = time.perf_counter()
            latencies, errors = asyncio.run(_load(url, body, CLIENTS, SECONDS))
            wall = time.perf_counter() - start
            batch = _mean_batch(url)
        finally:
            proc.terminate()
            proc.wait(60)
        ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
        rows.append({
            "config": name,
            "flags": " ".join(args),
            "clients": CLIENTS,
            "seconds": SECONDS,
            "requests": len(latencies),
            "req_per_s": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)),
            "errors": errors,
            "mean_batch": batch,
        })  # fmt: skip
    base = rows[-1]["req_per_s"]
    for row in rows:
        row["gain_vs_batch_1"] = row["req_per_s"] / base if base else float("nan")
    return {
        "title": f"contrastkit serve: {CLIENTS} clients x {SECONDS:g} s, POST /search (image)",
        "rows": rows,
        "notes": f"Run served: {run_dir}. Server: one process, one model thread, torch threads 1; "
        "clients (asyncio + httpx) share the machine with it.",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
