"""Text fine-tuning throughput: contrastkit's trainer against sentence-transformers' own
(``SentenceTransformerTrainer``), side by side (issue 30).

Both fine-tune the packaged all-MiniLM-L6-v2 on FOLDOC headword -> definition pairs (the
training split of :func:`contrastkit.data.load_foldoc`), batch 64, 64 tokens, in-batch
negatives at temperature 0.05: contrastkit's ``pairs`` task with ``info_nce`` (one direction)
and sentence-transformers' ``MultipleNegativesRankingLoss`` (scale 20 = 1 / 0.05). Everything
else is each trainer's default (precision: contrastkit's ``auto``, which is fp32 without native
bf16, and sentence-transformers' fp32; its fused AdamW, linear schedule; contrastkit's length
buckets, AdamW, cosine schedule), except the learning rate, 1e-4 on both sides, and what
would only write files (no checkpoints, no progress bars, no baseline evaluation).

Each run is a fresh process with one torch thread; runs alternate (contrastkit,
sentence-transformers, contrastkit, ...) so load drift on a shared machine hits both. pairs/s
is the wall-clock rate from the end of the warm-up steps to the end of the last step (data,
tokenisation, forward, backward, clipping, optimizer and logging all inside); pairs per
CPU-second is the same window over the process's CPU time (``time.process_time``), which an
oversubscribed machine inflates much less than the wall clock. Quality: the
first repeat's models after the same number of steps, scored by the same function
(:func:`contrastkit.eval.beir.evaluate_retrieval`: nDCG@10, Recall@1) on the FOLDOC test split
(1,488 headwords against their 1,488 definitions; entries never trained on).

``python benchmarks/bench_text_speed.py [--steps N] [--warmup K] [--repeats R]``; ``run()``
(for ``benchmarks/run.py``) uses the defaults below.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STEPS, WARMUP, REPEATS = 40, 4, 3
BATCH, MAX_LENGTH, LR, TEMPERATURE = 64, 64, 1e-4, 0.05


def write_foldoc(folder: Path) -> tuple[Path, Path]:
    """FOLDOC's train and test splits as pairs files (``query``, ``positive``, ``id`` = entry)."""
    from contrastkit.data import load_foldoc

    files = []
    for split in ("train", "test"):
        pairs = load_foldoc(split)
        path = folder / f"foldoc_{split}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for q, p, g in zip(pairs.query, pairs.positive, pairs.groups.tolist()):
                f.write(json.dumps({"query": q, "positive": p, "id": f"entry-{g}"}) + "\n")
        files.append(path)
    return files[0], files[1]


def _read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def quality(embed_query: Any, embed_document: Any, test: Path) -> dict[str, float]:
    """nDCG@10 and Recall@1 of headword -> definition retrieval over the test split, as a
    contrastkit run scores ``eval.heldout`` (:func:`~contrastkit.train.tasks.text_pairs.load_heldout`
    then :func:`~contrastkit.eval.beir.evaluate_retrieval`)."""
    from contrastkit.eval.beir import evaluate_retrieval
    from contrastkit.train.tasks.text_pairs import load_heldout

    data, _ = load_heldout(str(test), None)
    m = evaluate_retrieval(embed_query, embed_document, data.corpus, data.queries, data.qrels,
                           k_values=[1, 3, 5, 10, 100])  # fmt: skip
    return {"nDCG@10": m["nDCG@10"], "R@1": m["Recall@1"]}


def child_contrastkit(
    train_file: Path, test: Path, steps: int, warmup: int, out: Path, score: bool
) -> dict:
    from contrastkit.train.config import load_config_dict
    from contrastkit.train.loop import train
    from contrastkit.train.metrics_log import MetricsLog

    log_every = warmup  # one log record at the end of the warm-up, then every `warmup` steps
    raw = {
        "name": "ck",
        "seed": 0,
        "task": "pairs",
        "data": {"dataset": "pairs_file", "root": str(train_file)},
        "model": {"name": "minilm", "options": {"max_length": MAX_LENGTH}},
        "loss": {"name": "info_nce", "params": {"temperature": TEMPERATURE}},
        "optim": {"batch_size": BATCH, "lr": LR},
        "train": {"max_steps": steps, "threads": 1, "log_every": log_every,
                  "checkpoint_every": 0, "progress": False, "output_dir": str(out)},
        # eval.heldout: trains on all of train_file, scores the test split at the end
        "eval": {"raw_baseline": False, "heldout": str(test)} if score
        else {"raw_baseline": False, "corpus_size": 2, "recall_at": [1]},  # a token evaluation
    }  # fmt: skip
    cfg = load_config_dict(raw)
    cpu: dict[int, float] = {}  # step -> this process's CPU seconds at its log record
    write = MetricsLog.write

    def write_with_cpu_clock(self: MetricsLog, record: dict[str, Any]) -> None:
        if "items_per_s" in record:
            cpu[record["step"]] = time.process_time()
        write(self, record)

    MetricsLog.write = write_with_cpu_clock  # type: ignore[method-assign]
    run = train(cfg, out / "ck")
    MetricsLog.write = write  # type: ignore[method-assign]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "items_per_s" in r and r["step"] > warmup]
    # each record's items_per_s is the wall-clock rate since the previous record
    windows = zip([warmup, *(r["step"] for r in timed[:-1])], timed)
    seconds = sum((r["step"] - start) * BATCH / r["items_per_s"] for start, r in windows)
    items = (timed[-1]["step"] - warmup) * BATCH
    final = json.loads((run / "eval.json").read_text())["metrics"]  # quality() on the run
    q = {"nDCG@10": final["nDCG@10"], "R@1": final["Recall@1"]} if score else {}
    precision = next(r["precision"] for r in records if r.get("event") == "start")
    cpu_rate = items / (cpu[timed[-1]["step"]] - cpu[warmup])
    return {
        "pairs_per_s": items / seconds,
        "pairs_per_cpu_s": cpu_rate,
        "precision": precision,
        **q,
    }


def child_sentence_transformers(
    train_file: Path, test: Path, steps: int, warmup: int, out: Path, score: bool
) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from contrastkit.encoders.text import default_model_path

    rows = _read(train_file)
    data = Dataset.from_dict({"anchor": [r["query"] for r in rows],
                              "positive": [r["positive"] for r in rows]})  # fmt: skip
    model = SentenceTransformer(str(default_model_path()), device="cpu")
    model.max_seq_length = MAX_LENGTH
    ends: list[float] = []  # wall clock and CPU seconds at the end of each step
    cpu: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            ends.append(time.perf_counter())
            cpu.append(time.process_time())

    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st"),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        seed=0,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    loss = MultipleNegativesRankingLoss(model, scale=1 / TEMPERATURE)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=data, loss=loss, callbacks=[StepClock()]
    )
    trainer.train()
    pairs_per_s = (steps - warmup) * BATCH / (ends[steps - 1] - ends[warmup - 1])
    cpu_rate = (steps - warmup) * BATCH / (cpu[steps - 1] - cpu[warmup - 1])
    model.eval()
    q = {} if not score else quality(lambda t: model.encode(t, batch_size=128, convert_to_tensor=True),
                lambda t: model.encode(t, batch_size=128, convert_to_tensor=True), test)  # fmt: skip
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {"pairs_per_s": pairs_per_s, "pairs_per_cpu_s": cpu_rate, "precision": dtype, **q}


CHILDREN = {"contrastkit": child_contrastkit, "sentence-transformers": child_sentence_transformers}


def _child(side: str, files: tuple[Path, Path], steps: int, warmup: int, score: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", side, str(files[0]), str(files[1]),
               str(steps), str(warmup), tmp, str(int(score))]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{side} run failed:\n{out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{side}: {got}", file=sys.stderr, flush=True)  # partial results of a long bench
    return got


def text_speed(
    steps: int = STEPS, warmup: int = WARMUP, repeats: int = REPEATS, score: bool = True
) -> dict:
    """Alternating runs of both trainers; pairs/s of each, their ratio, quality after ``steps``
    (``score=False``: throughput only)."""
    load = [os.getloadavg()[0]]
    runs: dict[str, list[dict]] = {side: [] for side in CHILDREN}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_foldoc(Path(tmp))
        for r in range(repeats):  # quality from the first repeat's models only
            for side in CHILDREN:
                runs[side].append(_child(side, files, steps, warmup, score=score and r == 0))
                load.append(os.getloadavg()[0])
    ck = [r["pairs_per_s"] for r in runs["contrastkit"]]
    st = [r["pairs_per_s"] for r in runs["sentence-transformers"]]
    ratios = [a / b for a, b in zip(ck, st)]
    ck_cpu = [r.get("pairs_per_cpu_s", float("nan")) for r in runs["contrastkit"]]
    st_cpu = [r.get("pairs_per_cpu_s", float("nan")) for r in runs["sentence-transformers"]]
    cpu_ratios = [a / b for a, b in zip(ck_cpu, st_cpu)]
    rows = []
    sides = (("contrastkit", ck, ck_cpu), ("sentence-transformers", st, st_cpu))
    for side, rates, cpu_rates in sides:
        first = runs[side][0]
        ours = side == "contrastkit"
        rows.append({
            "trainer": side,
            "precision": first["precision"],
            "pairs/s (median)": round(statistics.median(rates), 2),
            "pairs/s (each run)": " / ".join(f"{r:.2f}" for r in rates),
            "ratio (median of pairs)": round(statistics.median(ratios), 3) if ours else 1.0,
            "pairs per CPU-s (median)": round(statistics.median(cpu_rates), 2),
            "CPU ratio (median)": round(statistics.median(cpu_ratios), 3) if ours else 1.0,
            f"nDCG@10 after {steps} steps": round(first.get("nDCG@10", float("nan")), 4),
            f"R@1 after {steps} steps": round(first.get("R@1", float("nan")), 4),
        })  # fmt: skip
    return {
        "title": f"Text fine-tuning throughput: MiniLM, FOLDOC pairs, batch {BATCH}, "
        f"{MAX_LENGTH} tokens, contrastkit vs SentenceTransformerTrainer",
        "rows": rows,
        "notes": f"{repeats} alternating runs each (fresh process, 1 torch thread), {steps} steps, "
        f"pairs/s over steps {warmup + 1}-{steps}; ratio = median of the per-repeat ratios "
        f"({', '.join(f'{r:.3f}' for r in ratios)}); per CPU-second of the process (less "
        f"sensitive to load): {', '.join(f'{r:.3f}' for r in cpu_ratios)}; quality of the first repeat's models on the "
        "FOLDOC test split (1,488 headwords -> definitions). 1-minute load average before and "
        f"after each run: {', '.join(f'{x:.1f}' for x in load)}.",
    }


def run() -> dict:
    return text_speed()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        side, train_file, test, steps, warmup, out, score = sys.argv[2:9]
        import torch

        torch.set_num_threads(1)
        got = CHILDREN[side](
            Path(train_file), Path(test), int(steps), int(warmup), Path(out), score == "1"
        )
        print(json.dumps(got))
        raise SystemExit(0)
    opts = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    section = text_speed(int(opts.get("--steps", STEPS)), int(opts.get("--warmup", WARMUP)),
                         int(opts.get("--repeats", REPEATS)), opts.get("--quality", "1") == "1")  # fmt: skip
    print(json.dumps(section, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "text_speed.json").write_text(json.dumps(section, indent=1))
