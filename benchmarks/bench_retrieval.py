"""BEIR-format retrieval: eval-retrieval time and peak memory at N = 100,000 documents, and the
pretrained MiniLM on the packaged WordNet BEIR set.

Part 1 (scale): a synthetic BEIR collection (N documents of 8 words drawn from WordNet-free
synthetic vocabulary, Q = 1,000 queries with 1-3 judged documents each) evaluated with
:func:`contrastkit.eval.evaluate_retrieval` and a tiny from-scratch BERT (hidden 32, 1 layer),
so that the time is the pipeline's (chunked embedding + streamed top-k + scoring), not a big
model's. Each size runs in a child process; its peak RSS comes from
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``. The dense (Q, N) float32 score matrix that
the streamed search avoids is shown for comparison.

Part 2 (quality): ``export_beir("wordnet")`` with its defaults, evaluated with the packaged
all-MiniLM-L6-v2 (skipped when wordnet-base is missing).

Run: ``.venv/bin/python benchmarks/run.py retrieval`` (a few minutes on 2 cores). Sizes can be
lowered for a smoke run: ``BENCH_RETRIEVAL_N=2000 BENCH_RETRIEVAL_MINILM=0``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

N = int(os.environ.get("BENCH_RETRIEVAL_N", "100000"))
Q = int(os.environ.get("BENCH_RETRIEVAL_Q", "1000"))
MINILM = os.environ.get("BENCH_RETRIEVAL_MINILM", "1") != "0"
VOCAB = 2000


def _synthetic(n: int, q: int, seed: int = 0) -> tuple[dict, dict, dict]:
    g = torch.Generator().manual_seed(seed)
    words = [f"w{i}" for i in range(VOCAB)]
    tokens = torch.randint(0, VOCAB, (n, 8), generator=g).tolist()
    corpus = {
        f"d{i}": {"title": "", "text": " ".join(words[t] for t in row)}
        for i, row in enumerate(tokens)
    }
    queries, qrels = {}, {}
    for j in range(q):
        rel = torch.randint(0, n, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g)
        first = tokens[int(rel[0])]
        queries[f"q{j}"] = " ".join(words[t] for t in first[:4])  # half of a relevant document
        qrels[f"q{j}"] = {f"d{int(r)}": 1 + (i == 0) for i, r in enumerate(rel.tolist())}
    return corpus, queries, qrels


def _worker(n: int, q: int) -> None:
    """Child process: build the collection, time evaluate_retrieval, print JSON."""
    from contrastkit.encoders.text import TextEncoder
    from contrastkit.eval import evaluate_retrieval

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    corpus, queries, qrels = _synthetic(n, q)
    enc = TextEncoder.from_scratch(hidden_size=32, num_layers=1, num_heads=2, max_length=16)
    enc.eval()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    metrics = evaluate_retrieval(
        lambda t: enc.encode(t, batch_size=256),
        lambda t: enc.encode(t, batch_size=256),
        corpus,
        queries,
        qrels,
    )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "rss_before_kb": before, "rss_peak_kb": peak,
                      "nDCG@10": metrics["nDCG@10"]}))  # fmt: skip


def _scale_rows() -> list[dict]:
    rows = []
    for n in sorted({max(N // 10, 200), N}):
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", str(n), str(min(Q, n))],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "part": "scale (tiny BERT)",
                "documents": n,
                "queries": min(Q, n),
                "eval_s": round(child["seconds"], 2),
                "docs_per_s": round(n / child["seconds"]),
                "peak_rss_mb": round(child["rss_peak_kb"] / 1024, 1),
                "rss_growth_mb": round((child["rss_peak_kb"] - child["rss_before_kb"]) / 1024, 1),
                "dense_QxN_mb": round(min(Q, n) * n * 4 / 2**20, 1),
            }
        )
    return rows


def _minilm_rows() -> list[dict]:
    from contrastkit.data.beir import export_beir, load_beir
    from contrastkit.data.wordnet import DEFAULT_ROOT
    from contrastkit.encoders.text import TextEncoder
    from contrastkit.eval import evaluate_retrieval

    if not MINILM or not (DEFAULT_ROOT / "data.noun").exists():
        return []
    with tempfile.TemporaryDirectory() as tmp:
        root = export_beir("wordnet", Path(tmp) / "wordnet")
        data = load_beir(root, "test")
        enc = TextEncoder()
        t0 = time.perf_counter()
        m = evaluate_retrieval(enc.encode, enc.encode, data.corpus, data.queries, data.qrels)
        seconds = time.perf_counter() - t0
    return [
        {
            "part": "quality (MiniLM, packaged wordnet test)",
            "documents": len(data.corpus),
            "queries": len(data.qrels),
            "eval_s": round(seconds, 1),
            "nDCG@10": round(m["nDCG@10"], 4),
            "Recall@100": round(m["Recall@100"], 4),
            "MAP@100": round(m["MAP@100"], 4),
        }
    ]


FINETUNE_BUDGET = float(os.environ.get("BENCH_RETRIEVAL_FINETUNE_S", "150"))


def _cli(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = [sys.executable, "-m", "contrastkit.cli", *args]
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)


def _finetune_rows() -> list[dict]:
    """The packaged set: pretrained MiniLM vs the recipe fine-tuned with and without mined
    negatives, one session, each fine-tuning under the same time budget (the CLI, as a user
    runs it: export-beir, mine, train, eval-retrieval)."""
    from contrastkit.data.wordnet import DEFAULT_ROOT

    if not MINILM or FINETUNE_BUDGET <= 0 or not (DEFAULT_ROOT / "data.noun").exists():
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        beir, out = Path(tmp) / "beir", Path(tmp)
        _cli("data", "export-beir", "wordnet", str(beir))
        _cli("mine", "minilm", str(beir), str(out / "mined.jsonl"), "--num-negatives", "4",
             "--skip-top", "2", "--max-rank", "50", "--max-score-ratio", "0.95")  # fmt: skip
        common = ["--set", f"train.time_budget_s={FINETUNE_BUDGET}", "--set", "train.progress=false",
                  "--set", "eval.raw_baseline=false"]  # fmt: skip
        runs = {
            "pretrained MiniLM": "minilm",
            "fine-tuned, mined negatives": out / "mined",
            "fine-tuned, no mined negatives": out / "plain",
        }
        _cli("train", "minilm_beir_wordnet", "--set", f"data.root={beir}", "--set",
             f"data.options.mined={out / 'mined.jsonl'}", *common, "--run-dir", str(out / "mined"))  # fmt: skip
        _cli("train", "minilm_beir_wordnet", "--set", f"data.root={beir}", "--set",
             "data.options.mined=null", *common, "--run-dir", str(out / "plain"))  # fmt: skip
        for name, model in runs.items():
            _cli("eval-retrieval", str(model), str(beir), "--json", str(out / "m.json"))
            m = json.loads((out / "m.json").read_text())
            m = m.get("metrics", m)
            rows.append(
                {
                    "part": f"fine-tuning ({FINETUNE_BUDGET:.0f} s each)",
                    "model": name,
                    "nDCG@10": round(m["nDCG@10"], 4),
                    "Recall@100": round(m["Recall@100"], 4),
                    "MAP@100": round(m["MAP@100"], 4),
                }
            )
    return rows


def run() -> dict:
    return {
        "title": "BEIR-format retrieval evaluation (eval-retrieval)",
        "rows": _scale_rows() + _minilm_rows() + _finetune_rows(),
        "notes": "Scale rows: synthetic 8-word documents, tiny from-scratch BERT (hidden 32), "
        "1 torch thread, corpus embedded in chunks of 4096 and streamed through a running "
        "top-100; peak RSS of the child process (includes torch + transformers, ~0.3-0.5 GB). "
        "dense_QxN_mb is the (Q, N) float32 score matrix the streamed search never builds. "
        "Quality row: the packaged WordNet BEIR set (export_beir defaults), pretrained "
        "all-MiniLM-L6-v2. Fine-tuning rows: the minilm_beir_wordnet recipe for "
        "BENCH_RETRIEVAL_FINETUNE_S seconds on mined negatives vs on the BEIR folder itself.",
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker(int(sys.argv[2]), int(sys.argv[3]))
    else:
        print(json.dumps(run(), indent=2))
