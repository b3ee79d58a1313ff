"""Index backends: build time, queries per second and recall@10 against exact search, plus the
overhead of the contrastkit wrapper over calling FAISS directly on the same FAISS object.

Data: 100k random 256-d L2-normalised vectors (cosine), 1k random normalised queries. Random
high-dimensional data is the hard case for approximate search (no cluster structure), so the
HNSW / IVF recall there is a lower bound; a second part uses real, clustered vectors
(Fashion-MNIST pixels, PCA to 256-d; skipped when the Debian package is missing).

Run: ``.venv/bin/python benchmarks/run.py index`` (about 1-3 minutes on 2 cores).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from contrastkit.functional.similarity import normalize
from contrastkit.index import build_index

N, D, Q, K = 100_000, 256, 1_000, 10
REPEATS = 3
# (backend, build params, search-time settings tried on the same built index)
BACKENDS: list[tuple[str, dict[str, Any], list[dict[str, int]]]] = [
    ("exact", {}, [{}]),
    ("faiss_flat", {}, [{}]),
    # m=16, ef_construction=40 (not the class defaults 32 / 80) keeps the build inside the
    # benchmark's time budget on 2 cores.
    ("faiss_hnsw", {"m": 16, "ef_construction": 40}, [{"ef_search": 64}, {"ef_search": 256}]),
    ("faiss_ivf", {"nlist": 256}, [{"nprobe": 16}, {"nprobe": 64}]),
]

REAL_BACKENDS: list[tuple[str, dict[str, Any], list[dict[str, int]]]] = [
    ("exact", {}, [{}]),
    ("faiss_hnsw", {"m": 16, "ef_construction": 40}, [{"ef_search": 64}]),
    ("faiss_ivf", {"nlist": 256}, [{"nprobe": 16}]),
]
# The compressed backends, with their defaults (chosen from D and N) and the query-time knob.
COMPRESSED_BACKENDS: list[tuple[str, dict[str, Any], list[dict[str, int]]]] = [
    ("exact", {}, [{}]),
    ("faiss_fp16", {}, [{}]),
    ("faiss_sq8", {}, [{}]),
    ("faiss_binary", {}, [{"rescore": 4}, {"rescore": 10}, {"rescore": 40}]),
    ("faiss_ivfpq", {}, [{"nprobe": 16}, {"nprobe": 64}]),
]
# Backends whose FAISS object takes other inputs than float queries (binary codes) or is
# rebuilt at training time: timed through the wrapper only.
WRAPPER_ONLY = {"faiss_binary", "faiss_ivfpq", "faiss_sq8", "faiss_fp16"}
MINILM_N = int(os.environ.get("CK_BENCH_MINILM_N", "20000"))
STREAM_NS = [int(n) for n in os.environ.get("CK_BENCH_STREAM_NS", "100000,1000000").split(",")]
STREAM_D = 384
# Fixed IVF-PQ parameters (not the N-dependent defaults) so the rows differ only in N.
STREAM_BACKENDS: list[tuple[str, dict[str, int]]] = [
    ("faiss_ivfpq", {"nlist": 256, "m": 48, "nbits": 8}),
    ("faiss_sq8", {}),
    ("faiss_binary", {}),
]


class _Replay:
    """Stands in for a FAISS index and returns a recorded answer instantly, so that timing the
    wrapper around it measures the wrapper's own work (checks, normalisation, conversions)."""

    def __init__(self, distances: np.ndarray, labels: np.ndarray) -> None:
        self.answer = (distances, labels)
        self.hnsw = SimpleNamespace(efSearch=0)
        self.nprobe = 0

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.answer


def _wrapper_only_s(index: Any, queries: torch.Tensor, direct_answer: Any) -> float:
    real = index._faiss
    index._faiss = _Replay(*direct_answer)
    try:
        return min(_timed(lambda: index.search(queries, K)) for _ in range(20))
    finally:
        index._faiss = real


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist())) / truth.size


def _random_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return normalize(torch.randn(N, D, generator=g)), normalize(torch.randn(Q, D, generator=g))


def _fashion_mnist_data() -> tuple[torch.Tensor, torch.Tensor] | None:
    """Real structured vectors: Fashion-MNIST pixels, PCA to 256-d (fitted on train), normalised.
    Corpus: the 60k training images; queries: the first 1k test images."""
    try:
        from contrastkit.data.fashion_mnist import load_fashion_mnist

        train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    except Exception:  # the Debian package is missing: skip this part
        return None
    x = train.images.flatten(1).float() / 255.0  # (60000, 784)
    mean = x.mean(0)
    sample = x[:10_000] - mean  # the principal axes are stable on 10k images
    _, _, v = torch.linalg.svd(sample.T @ sample)  # (784, 784) eigenvectors of the scatter
    basis = v[:D].T  # (784, 256)
    corpus = normalize((x - mean) @ basis)
    queries = normalize((test.images[:Q].flatten(1).float() / 255.0 - mean) @ basis)
    return corpus, queries


def _trained_data() -> tuple[torch.Tensor, torch.Tensor] | None:
    """Embeddings of a trained model: the corpus index and test embeddings of a finished run
    (``CK_BENCH_RUN``, default ``runs/simclr_fashion_mnist_demo``, what ``make demo`` writes).
    Corpus: the run's 60k train embeddings; queries: its first 1k test embeddings."""
    run_dir = Path(
        os.environ.get(
            "CK_BENCH_RUN", Path(__file__).resolve().parents[1] / "runs/simclr_fashion_mnist_demo"
        )
    )
    index_path, arrays_path = run_dir / "index/corpus.ckindex", run_dir / "eval_arrays.safetensors"
    if not (index_path.exists() and arrays_path.exists()):
        return None
    from safetensors.torch import load_file

    from contrastkit.index import load_index

    index = load_index(index_path)
    corpus = torch.from_numpy(index.faiss_index.reconstruct_n(0, index.faiss_index.ntotal))
    queries = load_file(str(arrays_path))["test_embeddings"][:Q]
    return normalize(corpus.float()), normalize(queries.float())


def _minilm_data() -> tuple[torch.Tensor, torch.Tensor] | None:
    """MiniLM (all-MiniLM-L6-v2, packaged) embeddings of WordNet glosses (all parts of speech,
    seeded order): the first ``CK_BENCH_MINILM_N`` as the corpus, the next ``Q`` as queries."""
    try:
        from contrastkit.data.wordnet import load_wordnet
        from contrastkit.encoders.text import TextEncoder, default_model_path

        glosses = sorted(set(load_wordnet("lemma_gloss", split="all").positive))
        encoder = TextEncoder(default_model_path()).eval()
    except Exception:  # WordNet or MiniLM missing: skip this part
        return None
    order = torch.randperm(len(glosses), generator=torch.Generator().manual_seed(0))
    texts = [glosses[i] for i in order[: MINILM_N + Q].tolist()]
    with torch.no_grad():
        emb = encoder.encode(texts, batch_size=128).float()
    return emb[: len(texts) - Q], emb[len(texts) - Q :]


def _bench(
    dataset: str, vectors: torch.Tensor, queries: torch.Tensor, backends: list[Any]
) -> list[dict[str, Any]]:
    queries_np = np.ascontiguousarray(queries.numpy())
    ids = [f"doc-{i}" for i in range(vectors.shape[0])]
    rows = []
    truth: np.ndarray | None = None
    for backend, params, settings in backends:
        start = time.perf_counter()
        index = build_index(vectors, backend, "cosine", ids=ids, **params)
        build_s = time.perf_counter() - start
        for setting in settings:
            for name, value in setting.items():
                setattr(index, name, value)
            indices = index.search(queries, K).indices.numpy()
            if truth is None:  # the exact backend comes first and is the oracle
                truth = indices
            raw = getattr(index, "faiss_index", None)  # the FAISS object the wrapper searches
            if backend in WRAPPER_ONLY:
                raw = None
            wrapper, direct = [], []
            for _ in range(REPEATS):  # interleaved, best of REPEATS: robust to a busy machine
                wrapper.append(_timed(lambda index=index: index.search(queries, K)))
                if raw is not None:
                    direct.append(_timed(lambda raw=raw: raw.search(queries_np, K)))
            all_params = {**params, **setting}
            row: dict[str, Any] = {
                "data": dataset,
                "backend": backend,
                "params": ",".join(f"{k}={v}" for k, v in all_params.items()) or "-",
                "build_s": round(build_s, 2),
                "qps": round(Q / min(wrapper)),
                "recall@10": round(_recall(indices, truth), 4),
                "bytes/vector": index.bytes_per_vector,
                "faiss_qps": "-",
                "wrapper_ms": "-",
                "overhead_%": "-",
                "e2e_overhead_%": "-",
            }
            if raw is not None:
                own_s = _wrapper_only_s(index, queries, raw.search(queries_np, K))
                row["faiss_qps"] = round(Q / min(direct))
                row["wrapper_ms"] = round(1000 * own_s, 2)
                row["overhead_%"] = round(100.0 * own_s / min(direct), 2)
                row["e2e_overhead_%"] = round(100.0 * (min(wrapper) / min(direct) - 1.0), 1)
            rows.append(row)
            print(row, flush=True)
    return rows


STREAM_SCRIPT = r"""
import json, sys, tempfile, time
import numpy as np
from contrastkit.index.streaming import EmbeddingSpec, IndexSpec, stream_index

n, d, backend, params = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
freq = np.random.default_rng(0).uniform(0.001, 1.0, size=(1, d))
phase = np.random.default_rng(1).uniform(0, 6.3, size=(1, d))

class Synthetic:  # a cheap deterministic encoder: doc i -> sin(i * freq + phase)
    def size(self):
        return n
    def chunk(self, start, stop):
        i = np.arange(start, stop, dtype=np.float64)[:, None]
        return np.sin(i * freq + phase).astype(np.float32), [None] * (stop - start)

def peak_kb():  # this process's own high-water mark (ru_maxrss keeps the parent's across exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

base = peak_kb()
with tempfile.TemporaryDirectory() as folder:
    t0 = time.perf_counter()
    built = stream_index(Synthetic(), folder, IndexSpec(backend, params=params, train_size=20_000),
                         EmbeddingSpec(dtype="float16", chunk=8192), progress=False)
    seconds = time.perf_counter() - t0
peak = peak_kb()
print(json.dumps({"seconds": seconds, "peak_kb": peak, "base_kb": base,
                  "bytes_per_vector": built.index.bytes_per_vector, "n": len(built.index)}))
"""


def _bench_streaming() -> list[dict[str, Any]]:
    """``stream_index`` on N synthetic documents (a deterministic sin encoder, D=384, float16
    embeddings file, chunks of 8192): docs/s and peak RSS in a fresh process per N, so the peaks
    compare; the index's own bytes are N * bytes/vector (+ the ids/metadata lists)."""
    import json
    import subprocess
    import sys

    rows = []
    for backend, params in STREAM_BACKENDS:
        for n in STREAM_NS:
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    STREAM_SCRIPT,
                    str(n),
                    str(STREAM_D),
                    backend,
                    json.dumps(params),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            res = json.loads(out.stdout.strip().splitlines()[-1])
            row = {
                "data": f"stream synthetic {n} x {STREAM_D}",
                "backend": backend,
                "params": ",".join(f"{k}={v}" for k, v in params.items()) or "-",
                "docs_per_s": round(n / res["seconds"]),
                "seconds": round(res["seconds"], 1),
                "peak_rss_mb": round(res["peak_kb"] / 1024),
                "rss_above_imports_mb": round((res["peak_kb"] - res["base_kb"]) / 1024),
                "index_codes_mb": round(n * res["bytes_per_vector"] / 2**20, 1),
            }
            rows.append(row)
            print(row, flush=True)
    return rows


def _demo_run() -> Path:
    return Path(
        os.environ.get(
            "CK_BENCH_RUN", Path(__file__).resolve().parents[1] / "runs/simclr_fashion_mnist_demo"
        )
    )


def _index_command(run_dir: Path, processes: int) -> tuple[float, Any]:
    """``contrastkit index RUN`` (``torchrun --nproc_per_node P`` for P > 1, one thread per
    process; one process gets every core); return (seconds, the built index)."""
    import shutil
    import subprocess
    import sys

    from contrastkit.index import load_index

    shutil.rmtree(run_dir / "index", ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    threads = max(1, (os.cpu_count() or 2) // processes)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cli = ["-m", "contrastkit.cli", "index", str(run_dir), "--no-progress"]
    if processes > 1:
        launch = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone"]
        cli = launch + cli
    start = time.perf_counter()
    subprocess.run([sys.executable, *cli], env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, load_index(run_dir / "index/corpus.ckindex")


def _bench_sharded() -> list[dict[str, Any]]:
    """``contrastkit index`` of the demo run's 60k-image corpus: one process vs ``torchrun`` with
    two (each embeds half and writes a shard; the shards are merged), on a copy of the run folder
    (the demo's own index stays). Same results: ids and scores of 1k test-embedding queries."""
    import shutil
    import tempfile

    from safetensors.torch import load_file

    demo = _demo_run()
    if not (demo / "config.yaml").exists() or not (demo / "checkpoints").exists():
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / demo.name
        shutil.copytree(demo, run_dir, ignore=shutil.ignore_patterns("index", "report*"))
        queries = normalize(load_file(str(run_dir / "eval_arrays.safetensors"))["test_embeddings"])
        queries = queries[:Q].float()
        answers = {}
        for processes in (1, 2):
            seconds, index = _index_command(run_dir, processes)
            answers[processes] = index.search(queries, K)
            rows.append(
                {
                    "data": f"demo corpus {len(index)} images",
                    "backend": "faiss_flat",
                    "params": f"processes={processes}",
                    "build_s": round(seconds, 1),
                    "docs_per_s": round(len(index) / seconds),
                }
            )
        same_ids = answers[1].ids == answers[2].ids  # (Q, K) nested lists of ids
        diff = float(abs(answers[1].scores - answers[2].scores).max())
        for row in rows:
            row["same_top10_as_1_process"] = same_ids
            row["max_score_diff"] = diff
    return rows


def run() -> dict:
    parts = set(
        os.environ.get("CK_BENCH_INDEX_PARTS", "random,fmnist,trained,minilm,stream,sharded").split(
            ","
        )
    )
    rows = _bench("random", *_random_data(), BACKENDS) if "random" in parts else []
    fmnist = _fashion_mnist_data() if "fmnist" in parts else None
    if fmnist is not None:
        rows += _bench("fmnist-pca", *fmnist, REAL_BACKENDS)
        rows += _bench("fmnist-pca", *fmnist, COMPRESSED_BACKENDS[1:])
    trained = _trained_data() if "trained" in parts else None
    if trained is not None:
        rows += _bench(f"trained-{trained[0].shape[1]}d", *trained, REAL_BACKENDS)
        rows += _bench(f"trained-{trained[0].shape[1]}d", *trained, COMPRESSED_BACKENDS[1:])
    minilm = _minilm_data() if "minilm" in parts else None
    if minilm is not None:
        rows += _bench(f"minilm-glosses-{minilm[0].shape[0]}", *minilm, COMPRESSED_BACKENDS)
    stream_rows = _bench_streaming() if "stream" in parts else []
    sharded_rows = _bench_sharded() if "sharded" in parts else []
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    notes = (
        f"random: {N} x {D} random normalised vectors (the hard case for approximate search: no "
        f"structure); fmnist-pca: Fashion-MNIST's 60k training images as pixels -> PCA {D}-d -> "
        f"normalised (real, clustered vectors); trained-*: the SimCLR backbone embeddings of the run "
        "that `make demo` writes (skipped when no such run exists). {Q} queries, k={K}, cosine; torch threads "
        f"{torch.get_num_threads()}, OMP_NUM_THREADS={threads}. qps: wrapper search (best of "
        f"{REPEATS}, interleaved with the direct call); faiss_qps: the same FAISS index searched "
        "directly with pre-normalised float32 numpy queries; wrapper_ms: the wrapper's own work "
        "per search call (input checks, normalisation, conversions; timed around a FAISS stand-in "
        "that replays the answer); overhead_% = wrapper_ms / direct FAISS time (target <= 10%); "
        "e2e_overhead_% = wrapper time / direct time - 1 measured end to end (on a shared machine "
        "dominated by noise). recall@10 is against the exact backend. build_s includes id "
        "bookkeeping and IVF k-means training; ef_search / nprobe are varied on one built index. "
        f"minilm-glosses-N: all-MiniLM-L6-v2 embeddings (384-d) of N WordNet glosses "
        f"(CK_BENCH_MINILM_N); compressed backends use their defaults (IVF-PQ: chosen from D and "
        f"N) and are timed through the wrapper only. bytes/vector: the index's own bytes per "
        f"vector (codes + FAISS ids/links; faiss_binary keeps 4*D more on disk for rescoring). "
        f"stream rows: stream_index on N synthetic documents (CK_BENCH_STREAM_NS), a cheap "
        f"deterministic sin encoder, D={STREAM_D}, float16 embeddings file, one fresh process per "
        "row; rss_above_imports_mb should grow with N only by index_codes_mb plus the ids and "
        "metadata lists. sharded rows: `contrastkit index RUN` of the demo run (a copy) with one "
        "process (all cores) vs `torchrun --nproc_per_node 2` (one thread each), wall time of "
        "the command (imports, data, embedding, shards, merge); same_top10: the 1k test queries "
        "get the same ids from both indexes. Select parts with "
        "CK_BENCH_INDEX_PARTS=random,fmnist,trained,minilm,stream,sharded."
    )
    sections = [{"title": "Index backends (cosine, k=10)", "rows": rows, "notes": notes}]
    if stream_rows:
        sections.append(
            {
                "title": "contrastkit index streaming: N synthetic documents",
                "rows": stream_rows,
                "notes": "stream_index (what `contrastkit index` runs) on N synthetic "
                f"documents, a deterministic sin encoder, D={STREAM_D}, float16 embeddings file, "
                "chunks of 8192, training sample 20k, one fresh process per row; peak RSS is the "
                "child's own VmHWM; rss_above_imports_mb should grow with N only by "
                "index_codes_mb plus the ids and metadata (JSON header) of the index file.",
            }
        )
    if sharded_rows:
        sections.append(
            {
                "title": "contrastkit index: one process vs torchrun 2 (demo run)",
                "rows": sharded_rows,
                "notes": "`contrastkit index RUN` of a copy of the demo run (60k Fashion-MNIST "
                "train images through its trained CNN, faiss_flat): one process with 2 threads vs "
                "`torchrun --nproc_per_node 2` with one thread each (each embeds half into a "
                "shard, rank 0 merges); build_s is the command's wall time incl. imports and "
                "data; same_top10: 1k test queries get the same ids from both indexes.",
            }
        )
    return sections


if __name__ == "__main__":
    for section in run():
        for r in section["rows"]:
            print(r)
