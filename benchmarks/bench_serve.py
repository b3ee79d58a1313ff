"""``contrastkit serve`` under load: 1 / 8 / 32 concurrent clients on 127.0.0.1, with
micro-batching (``--max-batch 32 --max-wait-ms 5``, adaptive: a request that finds the model idle
is dispatched at once) and without (``--max-batch 1``), on two runs:

* ``POST /search`` (a base64 PNG, k=10) on an image run whose index is the demo's size:
  60,000 x 1,152 float32, ``faiss_flat`` (every query scans 276 MB; a micro-batch is one GEMM);
* ``POST /v1/embeddings`` (the OpenAI-compatible route, one short text) on a text run (the
  packaged MiniLM).

Each configuration is a real ``contrastkit serve`` process (uvicorn, one model thread, one torch
thread); both configurations of a route run at once and are loaded in turn (batching, then
without, at each client count, ``CK_BENCH_SERVE_REPEATS`` times), so a change in the machine's
load hits both alike. The clients are as cheap as a closed loop can be, so that they leave the
shared cores to the server: asyncio streams in this process send pre-encoded HTTP/1.1 requests
(a pool of 32 different queries, cycled) on keep-alive connections and read the status line and
``content-length`` of each answer. Reported per row: requests/s, p50/p95/p99 latency, errors (any
non-200 or transport error), the mean micro-batch size and search batch size read from
``/metrics``, the server's CPU time per request (all its threads, from ``/proc``), the clients'
CPU share (CPU seconds of this process per second of load), the load average when the row
started, and the throughput gain and p99 ratio over ``--max-batch 1`` at the same load.

The runs: ``CK_BENCH_SERVE_RUN`` (e.g. ``runs/simclr_fashion_mnist_demo`` after ``make demo``;
it must have an index), else the demo when it exists, else a stand-in of the same shape: the
demo recipe's model (small CNN, width 32, 1,152-d backbone features) trained for 3 steps on the
60,000 Fashion-MNIST training images into ``.bench/serve/`` (throughput does not depend on how
well it is trained; about 2 minutes of CPU once). ``CK_BENCH_SERVE_TEXT_RUN`` likewise, else
``minilm_wordnet`` trained for 1 step into ``.bench/serve/``. ``CK_BENCH_SERVE_CLIENTS``
("1,8,32"), ``CK_BENCH_SERVE_SECONDS`` (10) and ``CK_BENCH_SERVE_REPEATS`` (2) size the load,
``CK_BENCH_SERVE_ROUTES`` ("search,embeddings") picks the routes; ``CK_BENCH_QUICK=1`` is 8
clients x 3 s, once.

Run: ``.venv/bin/python benchmarks/run.py serve`` (about 5 minutes at the defaults, plus the
stand-ins' first build).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
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
REPEATS = int(os.environ.get("CK_BENCH_SERVE_REPEATS", 1 if QUICK else 2))
POOL = 32  # different queries, cycled by every client
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


def _query_pngs(run: Path, n: int = POOL) -> list[str]:
    """The first ``n`` test images of the run, as base64 PNG."""
    from PIL import Image

    from contrastkit.train.run import load_run

    _, task, _ = load_run(run)
    out = []
    for image, _label in task.examples(n):  # (C, H, W) in [0, 1]
        pixels = (image.clamp(0, 1) * 255).round().byte()
        array = pixels[0] if pixels.shape[0] == 1 else pixels.permute(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(array.contiguous().numpy()).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


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


def request_bytes(path: str, body: dict, port: int) -> bytes:
    """One HTTP/1.1 keep-alive POST of ``body`` as JSON, encoded once."""
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")  # fmt: skip
    return head.encode() + data


async def _client(
    port: int, requests: list[bytes], first: int, stop: float, latencies: list[float]
) -> int:
    """One closed-loop client: send, read the answer, repeat until ``stop``; returns errors.
    Answers are read by their ``content-length`` (every route answers JSON with one)."""
    errors, i = 0, first
    reader = writer = None
    while time.perf_counter() < stop:
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(requests[i % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")  # type: ignore[union-attr]
            at = head.lower().find(b"content-length:")
            if at < 0:
                raise ConnectionError("an answer without content-length")
            await reader.readexactly(int(head[at + 15 : head.find(b"\r\n", at)]))  # type: ignore[union-attr]
            ok = head[9:12] == b"200"
        except (OSError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            ok = False
            if writer is not None:
                writer.close()
            reader = writer = None
        if ok:
            latencies.append(time.perf_counter() - start)
        else:
            errors += 1
        i += 1
    if writer is not None:
        writer.close()
    return errors


async def _load(
    port: int, requests: list[bytes], clients: int, seconds: float
) -> tuple[list[float], int]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    errors = await asyncio.gather(
        *(_client(port, requests, c, stop, latencies) for c in range(clients))
    )
    return latencies, sum(errors)


def _batch_stats(url: str) -> tuple[float, float, float, float]:
    """(sum, count) of the model batch sizes, then of the search batch sizes."""
    text = httpx.get(url + "/metrics").text

    def value(name: str) -> float:
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]

    return tuple(value(f"contrastkit_{kind}batch_size_{part}")  # type: ignore[return-value]
                 for kind in ("", "search_") for part in ("sum", "count"))  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc``; NaN where
    there is no ``/proc``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(proc: subprocess.Popen, url: str, requests: list[bytes], clients: int) -> dict:
    """One load of ``clients`` x ``SECONDS`` against one server: the raw sums of a row."""
    port = int(url.rsplit(":", 1)[1])
    load = os.getloadavg()[0]
    before, server_before = _batch_stats(url), cpu_seconds(proc.pid)
    cpu, start = time.process_time(), time.perf_counter()
    latencies, errors = asyncio.run(_load(port, requests, clients, SECONDS))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    server = cpu_seconds(proc.pid) - server_before
    after = _batch_stats(url)
    return {"latencies": latencies, "errors": errors, "wall": wall, "client_cpu": cpu,
            "server_cpu": server, "load": load,
            "batch": (after[0] - before[0], after[1] - before[1]),
            "search": (after[2] - before[2], after[3] - before[3])}  # fmt: skip


def _row(route: str, name: str, clients: int, parts: list[dict]) -> dict:
    latencies = [x for p in parts for x in p["latencies"]]
    wall = sum(p["wall"] for p in parts)
    n = len(latencies)
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    batch = [sum(p["batch"][i] for p in parts) for i in (0, 1)]
    search = [sum(p["search"][i] for p in parts) for i in (0, 1)]
    return {
        "route": route,
        "config": name,
        "clients": clients,
        "requests": n,
        "req_per_s": n / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": sum(p["errors"] for p in parts),
        "mean_batch": batch[0] / batch[1] if batch[1] else 0.0,
        "mean_search_batch": search[0] / search[1] if search[1] else 0.0,
        "server_cpu_ms_per_req": 1000 * sum(p["server_cpu"] for p in parts) / max(n, 1),
        "client_cpu_share": sum(p["client_cpu"] for p in parts) / wall,
        "load_avg": min(p["load"] for p in parts),
    }


def _rows(route: str, run_dir: Path, path: str, bodies: list[dict]) -> list[dict]:
    """Both configurations served at once, loaded in turn at each client count."""
    servers = {name: _start(run_dir, args, max(CLIENTS)) for name, args in CONFIGS}
    rows = []
    try:
        requests = {}
        for name, (_, url) in servers.items():
            port = int(url.rsplit(":", 1)[1])
            if path == "/v1/embeddings":  # the served run's name
                model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
                bodies = [{**body, "model": model} for body in bodies]
            requests[name] = [request_bytes(path, body, port) for body in bodies]
            asyncio.run(_load(port, requests[name], 2, 1.0))  # warm up the model and the index
        for clients in CLIENTS:
            parts: dict[str, list[dict]] = {name: [] for name in servers}
            for _ in range(REPEATS):
                for name, (proc, url) in servers.items():
                    parts[name].append(_measure(proc, url, requests[name], clients))
            rows += [_row(route, name, clients, parts[name]) for name in servers]
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(60)
    for row in rows:
        base = next(
            r for r in rows if r["config"] == "no batching" and r["clients"] == row["clients"]
        )
        row["gain_vs_batch_1"] = (
            row["req_per_s"] / base["req_per_s"] if base["req_per_s"] else float("nan")
        )
        row["p99_vs_batch_1"] = row["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan")
    return rows


TEXTS = [
    "a quick brown fox jumps over the lazy dog", "how do I reset my password", "quickly",
    "the weather tomorrow in Paris", "a recipe for bread without yeast", "slowly but surely",
    "what is the capital of Australia", "an ankle boot in black leather", "running shoes",
    "the history of the printing press", "a red dress for a summer wedding", "to be or not to be",
]  # fmt: skip


def run() -> dict:
    rows: list[dict] = []
    served = []
    if "search" in ROUTES:
        image = _image_run()
        served.append(f"/search on {image}")
        bodies = [{"image": png, "k": 10} for png in _query_pngs(image)]
        rows += _rows("/search (image)", image, "/search", bodies)
    if "embeddings" in ROUTES:
        text = _text_run()
        served.append(f"/v1/embeddings on {text}")
        bodies = [{"input": text, "model": "(from /v1/models)"} for text in TEXTS]
        rows += _rows("/v1/embeddings (text)", text, "/v1/embeddings", bodies)
    return {
        "title": f"contrastkit serve: clients {'/'.join(map(str, CLIENTS))} x {SECONDS:g} s, "
        "batching on/off",
        "rows": rows,
        "notes": f"Runs served: {'; '.join(served)}. Server: one process, one model thread, torch "
        f"threads 1; both configurations loaded in turn, {REPEATS} x {SECONDS:g} s per row. Clients: "
        "asyncio streams sending pre-encoded requests, in this process, on the same machine "
        "(their CPU share is a column); load_avg is the machine's 1-minute load when the row "
        "started.",
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
