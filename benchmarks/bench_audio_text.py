"""Audio <-> transcript retrieval after the ``clap_speech`` recipe (issue 29, the measure).

Trains the recipe as shipped (its 480 s budget, the espeak-ng speech corpus, generated once into
the cache) and reads the run's own evaluation: audio->text and text->audio R@1 / R@5 / R@10 and
MRR on the held-out phrases (never spoken in training) before training (``baseline.json``) and
after (``eval.json``), and the ratio of R@10 to the untrained model's.

``python benchmarks/bench_audio_text.py`` (``CK_BENCH_BUDGET_S`` shortens the budget).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def run() -> dict:
    """The table (``benchmarks/run.py`` calls this)."""
    from contrastkit.train import load_config, train

    overrides = ["train.progress=false"]
    if os.environ.get("CK_BENCH_BUDGET_S"):
        overrides.append(f"train.time_budget_s={float(os.environ['CK_BENCH_BUDGET_S'])}")
    cfg = load_config("clap_speech", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(train(cfg, Path(tmp) / "clap_speech"))
        after = json.loads((out / "eval.json").read_text())
        before = json.loads((out / "baseline.json").read_text())
    rows = []
    for direction in ("audio->text", "text->audio"):
        row: dict = {"direction": direction}
        for k in ("R@1", "R@10", "MRR"):
            key = f"{direction} {k}"
            row[f"untrained {k}"] = round(float(before["metrics"][key]), 4)
            row[f"trained {k}"] = round(float(after["metrics"][key]), 4)
        row["R@10 ratio"] = round(row["trained R@10"] / max(row["untrained R@10"], 1e-9), 2)
        rows.append(row)
    return {
        "title": "clap_speech: audio <-> transcript retrieval on held-out phrases",
        "rows": rows,
        "notes": f"{after['step']} steps in {after.get('train_seconds', 0):.0f} s of training.",
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
