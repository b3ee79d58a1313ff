"""Issue 31's pipeline on the packaged WordNet BEIR set, each stage under a fixed budget:
pretrained MiniLM -> InfoNCE with mined negatives -> + teacher filtering -> + distillation ->
+ the cross-encoder reranking the distilled model's top 100 (nDCG@10 etc. on qrels/test).

The stages are the commands of ``configs/minilm_distill_beir_wordnet.yaml``, run through the CLI
in a temporary folder. Budgets (seconds of training per stage) come from
``BENCH_DISTILL_BUDGET`` (default 600) and ``BENCH_DISTILL_RERANKER_BUDGET`` (default 1200);
``BENCH_DISTILL_RERANK_TOP`` (default 100) sets the reranked depth.

Run: ``BENCH_DISTILL=1 .venv/bin/python benchmarks/run.py distill`` (without the variable it
returns a "skipped" entry, so ``make bench`` stays short; about an hour on a quiet 2-core CPU; the
reranker needs thousands of steps to be a useful teacher: on a shared, loaded CPU it reached
17 steps in 6 minutes and stayed at chance, see docs/training.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET = int(os.environ.get("BENCH_DISTILL_BUDGET", "600"))
RERANKER_BUDGET = int(os.environ.get("BENCH_DISTILL_RERANKER_BUDGET", "1200"))
TOP = int(os.environ.get("BENCH_DISTILL_RERANK_TOP", "100"))
INFO_NCE = "loss=[{name: info_nce, params: {temperature: 0.05, symmetric: true}}]"


def _ck(*args: str, cwd: Path) -> float:
    """Run ``contrastkit ARGS`` in ``cwd``; the seconds it took."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "contrastkit.cli", *args], cwd=cwd, check=True)
    return time.perf_counter() - t0


def _train(recipe: str, run: str, mined: str, cwd: Path, *extra: str) -> float:
    sets = ["data.root=bw", f"data.options.mined={mined}", f"train.time_budget_s={BUDGET}"]
    sets += list(extra)
    return _ck("train", recipe, "--run-dir", run, *(x for s in sets for x in ("--set", s)), cwd=cwd)


def _ndcg(path: Path, key: str = "metrics") -> dict:
    m = json.loads(path.read_text())[key]
    return {k: round(m[k], 4) for k in ("nDCG@10", "Recall@100", "MRR@10") if k in m}


def run() -> dict:
    if os.environ.get("BENCH_DISTILL") != "1":  # an hour: only when asked for
        return {
            "title": "issue 31: distillation and reranking on BEIR WordNet (test split)",
            "skipped": "set BENCH_DISTILL=1 to run it (about an hour on a quiet 2-core CPU)",
        }
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        seconds["export"] = _ck("data", "export-beir", "wordnet", "bw", cwd=d)
        seconds["pretrained"] = _ck("eval-retrieval", "minilm", "bw", "--json", "pre.json", cwd=d)
        seconds["mine"] = _ck(
            "mine", "minilm", "bw", "bw/mined.jsonl", "--num-negatives", "4", "--skip-top", "2",
            "--max-rank", "50", "--max-score-ratio", "0.95", cwd=d,
        )  # fmt: skip
        seconds["mined"] = _train("minilm_beir_wordnet", "runs/mined", "bw/mined.jsonl", d)
        seconds["reranker"] = _ck(
            "train", "minilm_reranker_beir_wordnet", "--run-dir", "runs/reranker", "--set",
            "data.root=bw", "--set", "data.options.mined=bw/mined.jsonl", "--set",
            f"train.time_budget_s={RERANKER_BUDGET}", cwd=d,
        )  # fmt: skip
        _ck("export", "runs/reranker", "reranker", "--format", "sentence-transformers", cwd=d)
        seconds["scored_mine"] = _ck(
            "mine", "minilm", "bw", "bw/scored.jsonl", "--num-negatives", "4",
            "--scorer-candidates", "8", "--max-rank", "50", "--scorer", "reranker", cwd=d,
        )  # fmt: skip
        seconds["filtered"] = _train(
            "minilm_distill_beir_wordnet", "runs/filtered", "bw/scored.jsonl", d, INFO_NCE
        )
        seconds["distilled"] = _train(
            "minilm_distill_beir_wordnet", "runs/distilled", "bw/scored.jsonl", d
        )
        for name in ("mined", "filtered"):
            _ck("eval-retrieval", f"runs/{name}", "bw", "--json", f"{name}.json", cwd=d)
        seconds["rerank_eval"] = _ck(
            "eval-retrieval", "runs/distilled", "bw", "--rerank", "reranker", "--rerank-top",
            str(TOP), "--json", "distilled.json", cwd=d,
        )  # fmt: skip
        return {
            "title": "issue 31: distillation and reranking on BEIR WordNet (test split)",
            "budget_s": BUDGET,
            "reranker_budget_s": RERANKER_BUDGET,
            "pretrained": _ndcg(d / "pre.json"),
            "infonce_mined": _ndcg(d / "mined.json"),
            "teacher_filtered": _ndcg(d / "filtered.json"),
            "distilled": _ndcg(d / "distilled.json"),
            f"distilled_reranked_top{TOP}": _ndcg(d / "distilled.json", "reranked_metrics"),
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
        }
