"""Issue 31's pipeline on the packaged WordNet BEIR set, each stage a fixed number of steps on one
thread: pretrained MiniLM -> InfoNCE with mined negatives -> + teacher filtering -> + distillation
-> + the cross-encoder reranking the distilled model's top candidates (nDCG@10 and R@100 on
qrels/test, 500 queries, 7,002 documents).

The stages are the commands of ``configs/minilm_distill_beir_wordnet.yaml`` (and of
``minilm_reranker_beir_wordnet.yaml``), run through the CLI in one folder, each child process with
one thread (``OMP_NUM_THREADS=1``; the recipes set ``train.threads: 1``). Every row reports the
CPU seconds (user + system) of the commands that made it, which, unlike wall time, hardly depend
on what else runs on the machine. ``BENCH_DISTILL_STEPS`` (default 50) sets the bi-encoder
stages' steps (batch 64; the distillation recipe's ``train.max_steps`` is the same number),
``BENCH_DISTILL_RERANK_TOP`` (default 20, as in the recipe) the reranked depth; ``BENCH_DISTILL_DIR`` keeps the
folder (data, mined files, runs, and ``cpu.json``: each finished stage's CPU seconds) instead of a
temporary one, and a rerun with the same folder skips the stages that finished (an interrupted
run goes on where it stopped).

Run: ``BENCH_DISTILL=1 .venv/bin/python benchmarks/run.py distill`` (without the variable it
returns an empty table saying so, so ``make bench`` stays short: the whole pipeline is about
45 CPU minutes; the cross-encoder is most of it).
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

from contrastkit.atomic import write_text

STEPS = int(os.environ.get("BENCH_DISTILL_STEPS", "50"))
TOP = int(os.environ.get("BENCH_DISTILL_RERANK_TOP", "20"))
TITLE = "issue 31: distillation and reranking on BEIR WordNet (test split, nDCG@10 / R@100)"
DATA = "beir-wordnet"
FIXED = [  # fixed steps on one thread, no time budget
    f"train.max_steps={STEPS}",
    "train.time_budget_s=null",
    "train.fit_schedule_to_budget=false",
    "train.threads=1",
]
INFO_NCE = "loss=[{name: info_nce, params: {temperature: 0.05, symmetric: true}}]"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _ck(cwd: Path, *args: str) -> float:
    """Run ``contrastkit ARGS`` in ``cwd`` on one thread; the CPU seconds it took."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    before = _cpu()
    cmd = [sys.executable, "-m", "contrastkit.cli", *args]
    print("$ contrastkit " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True, env=env, stdout=subprocess.DEVNULL)
    return _cpu() - before


def _sets(*pairs: str) -> list[str]:
    return [x for s in pairs for x in ("--set", s)]


def _metrics(path: Path, key: str = "metrics") -> dict:
    m = json.loads(path.read_text())[key]
    return {"nDCG@10": round(m["nDCG@10"], 4), "R@100": round(m["Recall@100"], 4)}


def _steps(run: Path) -> int:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return max((r["step"] for r in rows if "loss" in r), default=0)


class _Stages(dict[str, float]):
    """Stage name -> CPU seconds, kept in ``d/cpu.json`` after every stage."""

    def __init__(self, d: Path) -> None:
        self.path = d / "cpu.json"
        super().__init__(json.loads(self.path.read_text()) if self.path.exists() else {})

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        write_text(self.path, json.dumps(self, indent=1))


def stages() -> list[tuple[str, list[list[str]]]]:
    """(stage, its contrastkit commands), in order: the recipes' documented sequence."""
    mined, scored = f"{DATA}/mined.jsonl", f"{DATA}/scored.jsonl"
    return [
        ("export", [["data", "export-beir", "wordnet", DATA]]),
        ("pretrained", [["eval-retrieval", "minilm", DATA, "--json", "pretrained.json"]]),
        ("mine", [["mine", "minilm", DATA, mined, "--num-negatives", "4", "--skip-top", "2",
                   "--max-rank", "50", "--max-score-ratio", "0.95"]]),
        ("mined", [["train", "minilm_beir_wordnet", "--run-dir", "runs/mined",
                    *_sets(*FIXED, "eval.raw_baseline=false")],
                   ["eval-retrieval", "runs/mined", DATA, "--json", "mined.json"]]),
        ("reranker", [["train", "minilm_reranker_beir_wordnet", "--run-dir", "runs/reranker"],
                      ["export", "runs/reranker", "reranker", "--format", "sentence-transformers"]]),
        ("scored", [["mine", "minilm", DATA, scored, "--min-score", "2", "--num-negatives", "3",
                     "--scorer-candidates", "6", "--max-rank", "50", "--scorer", "reranker",
                     "--scorer-ratio", "0.95"]]),
        ("filtered", [["train", "minilm_distill_beir_wordnet", "--run-dir", "runs/filtered",
                       *_sets(*FIXED, INFO_NCE)],
                      ["eval-retrieval", "runs/filtered", DATA, "--json", "filtered.json"]]),
        ("distilled", [["train", "minilm_distill_beir_wordnet", "--run-dir", "runs/distilled",
                        *_sets(*FIXED)],
                       ["eval-retrieval", "runs/distilled", DATA, "--json", "distilled.json"]]),
        ("rerank", [["eval-retrieval", "runs/distilled", DATA, "--rerank", "reranker",
                     "--rerank-top", str(TOP), "--json", "reranked.json"]]),
    ]  # fmt: skip


def pipeline(d: Path) -> list[dict]:
    """Every stage in folder ``d`` (those ``d/cpu.json`` lists as done are skipped); one row
    per line of the table."""
    cpu = _Stages(d)
    for name, commands in stages():
        if name not in cpu:
            cpu[name] = sum(_ck(d, *c) for c in commands)
    pre = _metrics(d / "pretrained.json")
    rows = [
        {"stage": "pretrained MiniLM", "steps": 0, "cpu_s": cpu["pretrained"], **pre},
        {"stage": "InfoNCE + mined negatives", "steps": _steps(d / "runs/mined"),
         "cpu_s": cpu["mine"] + cpu["mined"], **_metrics(d / "mined.json")},
        {"stage": "cross-encoder (teacher)", "steps": _steps(d / "runs/reranker"),
         "cpu_s": cpu["reranker"], "nDCG@10": "-", "R@100": "-"},
        {"stage": "+ teacher filtering (InfoNCE)", "steps": _steps(d / "runs/filtered"),
         "cpu_s": cpu["scored"] + cpu["filtered"], **_metrics(d / "filtered.json")},
        {"stage": "+ distillation (InfoNCE + listwise KL)", "steps": _steps(d / "runs/distilled"),
         "cpu_s": cpu["distilled"], **_metrics(d / "distilled.json")},
        {"stage": f"+ reranking its top {TOP}", "steps": 0, "cpu_s": cpu["rerank"],
         **_metrics(d / "reranked.json", "reranked_metrics")},
    ]  # fmt: skip
    for r in rows:
        r["cpu_s"] = round(r["cpu_s"], 1)
    return rows


def run() -> dict:
    if os.environ.get("BENCH_DISTILL") != "1":  # ~45 CPU minutes: only when asked for
        return {
            "title": TITLE,
            "rows": [],
            "notes": "skipped: set BENCH_DISTILL=1 to run it (about 45 CPU minutes, one thread).",
        }
    load = os.getloadavg()
    start = time.perf_counter()
    if os.environ.get("BENCH_DISTILL_DIR"):
        folder = Path(os.environ["BENCH_DISTILL_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        rows = pipeline(folder)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = pipeline(Path(tmp))
    notes = (
        f"{STEPS} steps per bi-encoder stage (batch 64), one thread per process; cpu_s = user + "
        f"system seconds of the stage's commands (mining included); load average "
        f"{load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
        f"{time.perf_counter() - start:.0f} s wall."
    )
    return {"title": TITLE, "rows": rows, "notes": notes}
