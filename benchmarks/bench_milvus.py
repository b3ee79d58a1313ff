"""The Milvus backend (milvus-lite, an embedded ``.db`` file) against the FAISS flat index file
at 10^5 documents: indexing throughput (documents/s, written until searchable: FAISS ``add`` +
``save``; Milvus ``insert`` + ``flush``) and query throughput (one query per call, k=10, and
one call of 32 queries), exact search both.

Documents: ``CK_BENCH_MILVUS_N`` (100,000) random unit vectors of ``CK_BENCH_MILVUS_DIM`` (384,
MiniLM's width) with ``{"label", "text"}`` metadata; ``CK_BENCH_QUICK=1``: 10,000. The same
vectors go to both; the top-10 ids of the queries are compared (``same_top10``). One process,
the machine's threads as they are (FAISS: OpenMP; milvus-lite: its own server process).

Run: ``.venv/bin/python benchmarks/run.py milvus`` (about 2 minutes).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

QUICK = os.environ.get("CK_BENCH_QUICK") == "1"
N = int(os.environ.get("CK_BENCH_MILVUS_N", 10_000 if QUICK else 100_000))
DIM = int(os.environ.get("CK_BENCH_MILVUS_DIM", 384))
QUERIES = 50


def run() -> dict:
    from contrastkit.index import build_index, load_index
    from contrastkit.index.milvus import MilvusIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [str(i) for i in range(N)]
    meta = [{"label": f"class {i % 10}", "text": f"document {i}"} for i in range(N)]
    queries = torch.from_numpy(vectors[rng.choice(N, QUERIES, replace=False)] + 0.01)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        index = build_index(torch.from_numpy(vectors), backend="faiss_flat", ids=ids, metadata=meta)
        index.save(Path(tmp) / "corpus.ckindex")
        faiss_build = time.perf_counter() - start
        index = load_index(Path(tmp) / "corpus.ckindex")

        start = time.perf_counter()
        milvus = MilvusIndex.create(
            str(Path(tmp) / "corpus.db"),
            "corpus",
            DIM,
            "cosine",
            ["label", "text"],
            ["label", "text"],
        )  # string metadata mirrored in VARCHAR columns, as `contrastkit index --to milvus` does
        for lo in range(0, N, 8192):
            milvus.add(vectors[lo : lo + 8192], ids[lo : lo + 8192], meta[lo : lo + 8192], lo)
        milvus.flush()
        milvus_build = time.perf_counter() - start

        same = 0
        for name, backend, build in (("faiss_flat file", index, faiss_build),
                                     ("milvus-lite", milvus, milvus_build)):  # fmt: skip
            start = time.perf_counter()
            answers = [backend.search(queries[i : i + 1], 10).ids[0] for i in range(QUERIES)]
            single = time.perf_counter() - start
            start = time.perf_counter()
            backend.search(queries[:32], 10)
            batch = time.perf_counter() - start
            start = time.perf_counter()
            filtered = [backend.search_among(queries[i : i + 1], 10, np.arange(0, N, 10))
                        if name.startswith("faiss")
                        else backend.search(queries[i : i + 1], 10, filter={"label": "class 0"})
                        for i in range(10)]  # fmt: skip
            filtered_s = time.perf_counter() - start
            if name == "faiss_flat file":
                reference = answers
            else:
                same = sum(a == b for a, b in zip(answers, reference))
            rows.append({
                "backend": name,
                "documents": N,
                "dim": DIM,
                "index_docs_per_s": N / build,
                "index_s": build,
                "query_per_s_single": QUERIES / single,
                "query_per_s_batch32": 32 / batch,
                "filtered_query_ms": filtered_s / len(filtered) * 1000,
            })  # fmt: skip
    return {
        "title": f"Milvus (milvus-lite) vs the FAISS flat file, {N:,} x {DIM} documents, exact",
        "rows": rows,
        "notes": f"Top-10 ids equal on {same}/{QUERIES} queries. Filter: label == 'class 0' "
        "(10% of the corpus; FAISS scores those positions, Milvus evaluates the expression).",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
