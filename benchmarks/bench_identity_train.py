"""Identity verification on the glyph set: which loss trains the best verifier in the same CPU
budget (issue 28, the measure).

Every method trains the ``arcface_glyphs`` recipe's encoder (small_cnn, here at width 16 and
batch 128 to get steps in a short CPU budget, a 64-d projection), views, sampler (m_per_class, 4 per character), optimizer and batch on the 2,089
training characters for the same wall-clock budget (``train.time_budget_s``, the cosine
schedule fitted to it), then is evaluated on the 6,000 pairs of the 479 held-out characters
(LFW format, 10 folds): TAR at FAR = 1e-3, EER, AUC, the 10-fold accuracy and open-set rank-1.
Only the loss changes: arcface, cosface, subcenter_arcface, proxy_anchor, multi_similarity,
supcon and softmax cross-entropy (cosface with margin 0: normalised softmax at the same scale).
Two baselines without training: raw pixels (cosine of the 1,024 grey levels) and the untrained
encoder (the runs' own baseline, identical for all: same seed).

``python benchmarks/bench_identity_train.py --budget 60`` (default 60 s a method;
``CK_BENCH_BUDGET_S`` sets it under ``make bench``; ``--methods arcface,supcon`` selects);
``--steps 600`` trains every method exactly 600 steps instead (the same compute whatever the
machine's load); ``--set optim.centre_optimizer=adamw`` (any config override, repeatable) trains
the class centres as the encoder instead of with SGD (docs/identity.md: why that fails).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

METHODS: dict[str, dict] = {
    "arcface": {"name": "arcface", "params": {"scale": 32.0, "margin": 0.3}},
    "cosface": {"name": "cosface", "params": {"scale": 32.0, "margin": 0.2}},
    "subcenter_arcface": {
        "name": "subcenter_arcface",
        "params": {"scale": 32.0, "margin": 0.3, "num_subcenters": 3},
    },
    "proxy_anchor": {"name": "proxy_anchor", "params": {}},
    "multi_similarity": {"name": "multi_similarity", "params": {}},
    "supcon": {"name": "supcon", "params": {"temperature": 0.1}},
    "softmax": {"name": "cosface", "params": {"scale": 32.0, "margin": 0.0}},
}
COLUMNS = ("tar@far=0.001", "eer", "auc", "accuracy", "accuracy_std", "rank1")


def _row(method: str, metrics: dict, **extra: object) -> dict:
    row: dict = {"method": method, **extra}
    for key in COLUMNS:
        row[key] = round(float(metrics[key]), 4) if key in metrics else ""
    return row


def raw_pixels(limit: int | None = None) -> dict:
    """The held-out pairs scored by the cosine of their pixels."""
    from contrastkit.train import load_config
    from contrastkit.train.tasks.identity import glyph_data, pair_metrics

    cfg = load_config("arcface_glyphs", [f"data.options.limit={limit}"] if limit else [])
    _, pairs = glyph_data(cfg)
    figures, _ = pair_metrics(pairs.images.flatten(1).float() / 255.0, pairs)
    return figures


def train_method(
    method: str,
    budget: float,
    threads: int,
    out: Path,
    baseline: bool,
    scale: list[str],
    steps: int | None = None,
) -> tuple[dict, dict | None]:
    """(eval.json, baseline.json or None) of one method's run: ``budget`` seconds of training,
    or exactly ``steps`` steps (the same compute for every loss on a machine whose load varies)."""
    length = (
        [f"train.max_steps={steps}", "train.time_budget_s=null"]
        if steps
        else [f"train.time_budget_s={budget}", "train.max_steps=100000"]
    )
    from contrastkit.train import load_config, train

    loss = METHODS[method]
    cfg = load_config(
        "arcface_glyphs",
        [
            f"name=bench_{method}",
            f"loss.name={loss['name']}",
            f"loss.params={json.dumps(loss['params'])}",
            *length,
            "train.eval_every=0",
            "train.checkpoint_every=100000",
            "train.progress=false",
            f"train.threads={threads}",
            "train.precision=fp32",
            f"train.output_dir={out}",
            f"eval.raw_baseline={str(baseline).lower()}",
            *scale,
        ],
    )
    run = Path(train(cfg, out / method))
    ev = json.loads((run / "eval.json").read_text())
    base = json.loads((run / "baseline.json").read_text()) if baseline else None
    return ev, base


def run(
    budget: float | None = None,
    methods: list[str] | None = None,
    threads: int = 1,
    width: int = 16,
    batch_size: int = 128,
    limit: int | None = None,
    steps: int | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """The table (``benchmarks/run.py`` calls this with the defaults)."""
    budget = budget or float(os.environ.get("CK_BENCH_BUDGET_S", "60"))
    scale = [f"model.width={width}", f"optim.batch_size={batch_size}", "optim.warmup_steps=10"]
    scale += overrides or []  # e.g. optim.centre_optimizer=adamw (the centres as the encoder)
    if limit:  # the first N characters of the set (both splits)
        scale.append(f"data.options.limit={limit}")
    methods = methods or list(METHODS)
    torch.set_num_threads(threads)
    rows = [_row("raw pixels", raw_pixels(limit), steps=0, train_s=0.0)]
    untrained = None
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            t0 = time.perf_counter()
            ev, base = train_method(
                method, budget, threads, Path(tmp), untrained is None, scale, steps
            )
            if base is not None:
                untrained = _row("untrained encoder", base["metrics"], steps=0, train_s=0.0)
                rows.append(untrained)
            row = _row(method, ev["metrics"], steps=ev["step"], train_s=ev["train_seconds"])
            rows.append(row)
            print(json.dumps({**row, "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)
    length = f"{steps} steps" if steps else f"{budget:.0f} s"
    chars = f"the first {limit} characters" if limit else "2,089 training / 479 held-out characters"
    notes = (
        f"Glyph set, 32 px, {chars} x 12 typefaces, split by character; the held-out "
        f"characters' pairs (10 folds). Same encoder (small_cnn width {width}, 64-d projection), "
        f"views, sampler, optimizer, batch {batch_size} and {length} of training on "
        f"{threads} thread(s) for each loss; TAR at FAR = 1e-3 "
        "with 3,000 different pairs allows 3 false accepts. softmax = cosface with margin 0. "
        "untrained encoder: the runs' baseline (same seed, same initial weights)."
    )
    return {"title": "Identity verification on held-out glyphs", "rows": rows, "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, help="seconds of training a method (90)")
    parser.add_argument("--methods", help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--width", type=int, default=16, help="small_cnn width (16)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch (128)")
    parser.add_argument("--limit", type=int, help="the first N characters only (default all)")
    parser.add_argument("--steps", type=int, help="train exactly N steps instead of --budget")
    parser.add_argument(
        "--set", action="append", default=[], help="a config override for every method (KEY=VALUE)"
    )
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    methods = args.methods.split(",") if args.methods else None
    result = run(
        args.budget,
        methods,
        args.threads,
        args.width,
        args.batch_size,
        args.limit,
        args.steps,
        args.set,
    )
    keys = list(result["rows"][0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in result["rows"]:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    print(result["notes"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
