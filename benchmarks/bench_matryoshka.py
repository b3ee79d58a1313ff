"""Matryoshka embeddings: retrieval at each prefix width of one Matryoshka model vs a model
trained at that width alone and vs truncating a model trained without Matryoshka.

Every model fine-tunes the packaged all-MiniLM-L6-v2 (384-d) on WordNet noun lemma -> gloss
pairs with the ``minilm_wordnet`` recipe (symmetric InfoNCE, synset ids masked) for the same
number of steps (``CK_BENCH_MRL_STEPS``, default 120, batch 64, lr 1e-4), through
``contrastkit train``:

* ``matryoshka``: ``loss.matryoshka_dims: [32, 64, 128, 384]`` (the loss on every prefix);
* ``plain``: the loss on the full 384-d embedding only, evaluated truncated to each width;
* ``only-d``: ``loss.matryoshka_dims: [d]``, the loss on the d-d prefix alone (the model a user
  would train for width d: same network, same budget, its embedding cut to d);
* ``pretrained``: the packaged model before fine-tuning, truncated.

Evaluation is the recipe's: 1,000 held-out noun synsets, one query each (its head lemma) against
their 1,000 glosses, cosine on the truncated and renormalised embeddings (R@1, R@10, MRR).
Run: ``.venv/bin/python benchmarks/run.py matryoshka`` (about 10 minutes on 2 cores; lower
``CK_BENCH_MRL_STEPS`` for a smoke run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STEPS = int(os.environ.get("CK_BENCH_MRL_STEPS", "120"))
DIMS = (32, 64, 128, 384)
KS = (1, 10)


def _train(out: Path, name: str, dims: list[int] | None) -> tuple[Path, float]:
    """``contrastkit train minilm_wordnet`` for STEPS steps; return the run folder, seconds."""
    overrides = [
        f"train.max_steps={STEPS}",
        "train.time_budget_s=null",
        "train.checkpoint_every=0",
        "train.precision=auto",
        "optim.batch_size=64",
        "eval.raw_baseline=false",
        f"loss.matryoshka_dims={dims if dims else 'null'}",
    ]
    args = [sys.executable, "-m", "contrastkit.cli", "train", "minilm_wordnet"]
    for o in overrides:
        args += ["--set", o]
    run = out / name
    start = time.perf_counter()
    subprocess.run([*args, "--run-dir", str(run)], check=True, capture_output=True, text=True)
    return run, time.perf_counter() - start


def _metrics_by_width(task: object, cfg: object) -> dict[int, dict[str, float]]:
    """R@k / MRR of the task's held-out evaluation at each width of DIMS."""
    from contrastkit.eval.pairs import heldout_rows, recall_summary
    from contrastkit.losses.matryoshka import truncate_embeddings

    pairs = task.test_pairs  # type: ignore[attr-defined]
    e = cfg.eval  # type: ignore[attr-defined]
    q_rows, c_rows, relevant = heldout_rows(pairs.ids, e.corpus_size, e.queries)
    query = task.embed_texts([pairs.query[r] for r in q_rows])  # type: ignore[attr-defined]
    corpus = task.embed_texts([pairs.positive[r] for r in c_rows], "document")  # type: ignore[attr-defined]
    return {
        d: recall_summary(
            truncate_embeddings(query, d), truncate_embeddings(corpus, d), relevant, KS
        )
        for d in DIMS
    }


def run() -> dict:
    from contrastkit.train.config import load_config
    from contrastkit.train.run import load_run
    from contrastkit.train.tasks import build_task

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 2))))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        runs = {"matryoshka": _train(out, "matryoshka", list(DIMS))}
        runs["plain"] = _train(out, "plain", None)
        for d in DIMS[:-1]:
            runs[f"only-{d}"] = _train(out, f"only-{d}", [d])
        results: dict[str, dict[int, dict[str, float]]] = {}
        seconds: dict[str, float] = {}
        for name, (folder, secs) in runs.items():
            cfg, task, _ = load_run(folder)
            results[name], seconds[name] = _metrics_by_width(task, cfg), secs
            if name == "plain":  # the same config, untrained: the packaged model
                base_cfg = load_config(folder / "config.yaml")
                torch.manual_seed(base_cfg.seed)
                base = build_task(base_cfg)
                base.model.eval()
                results["pretrained"] = _metrics_by_width(base, base_cfg)
    for d in DIMS:
        row: dict[str, object] = {"dim": d}
        for name in ("matryoshka", "plain", "pretrained"):
            row[f"{name} R@1"] = round(results[name][d]["R@1"], 4)
        alone = results.get(f"only-{d}")
        row["trained at d alone R@1"] = round(alone[d]["R@1"], 4) if alone else "= plain"
        row["matryoshka R@10"] = round(results["matryoshka"][d]["R@10"], 4)
        row["plain R@10"] = round(results["plain"][d]["R@10"], 4)
        row["matryoshka MRR"] = round(results["matryoshka"][d]["MRR"], 4)
        rows.append(row)
    times = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    notes = (
        f"All-MiniLM-L6-v2 fine-tuned {STEPS} steps (batch 64, lr 1e-4, minilm_wordnet recipe) "
        "per model; R@k on 1,000 held-out WordNet noun synsets (lemma -> gloss), embeddings "
        "truncated to `dim` and renormalised. matryoshka: loss on the 32/64/128/384 prefixes; "
        "plain: loss on 384 only, truncated; trained at d alone: loss on the d prefix only "
        "(384: that is the plain model); pretrained: no fine-tuning. Training wall time "
        f"(train + final eval): {times}."
    )
    return {"title": "Matryoshka: retrieval at each width", "rows": rows, "notes": notes}


if __name__ == "__main__":
    for r in run()["rows"]:
        print(r)
