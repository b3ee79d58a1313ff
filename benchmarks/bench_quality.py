"""Quality of the recipes on real data under their time budgets (long: only `make bench`).

Each recipe trains with its own budget (``train.time_budget_s``; the cosine schedule is fitted to
it) and reports its metrics beside the baseline measured in the same run (raw pixels for images,
the model before training for pair tasks). For SupCon a cross-entropy classifier with the same
encoder, views, optimizer and budget is trained in the same benchmark run.

``CK_BENCH_QUICK=1`` caps every budget at 60 s (a smoke run; numbers are not meaningful).
``CK_BENCH_RECIPES=simclr_fashion_mnist,supcon_fashion_mnist`` selects recipes;
``CK_BENCH_BUDGET_S=300`` gives every recipe (and the cross-entropy baseline) that budget.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RECIPES = [
    "simclr_fashion_mnist_demo",
    "simclr_fashion_mnist",
    "supcon_fashion_mnist",
    "vicreg_fashion_mnist",
    "minilm_wordnet",
    "bible_paraphrase",
    "emoji_clip",
    "preference_wordnet",
]
QUICK = os.environ.get("CK_BENCH_QUICK") == "1"


def _budget(cfg_budget: float | None) -> float:
    budget = cfg_budget or 600.0
    if os.environ.get("CK_BENCH_BUDGET_S"):
        budget = float(os.environ["CK_BENCH_BUDGET_S"])
    return min(budget, 60.0) if QUICK else budget


def run_recipe(name: str, out: Path) -> dict:
    from contrastkit.train import load_config, train

    cfg = load_config(name)
    budget = _budget(cfg.train.time_budget_s)
    cfg = load_config(
        name,
        [
            f"train.time_budget_s={budget}",
            f"train.output_dir={out}",
            "train.progress=false",
            "train.eval_every=0",
        ],
    )
    start = time.perf_counter()
    run = train(cfg)
    wall = time.perf_counter() - start
    ev = json.loads((run / "eval.json").read_text())
    row = {"recipe": name, "budget_s": budget, "steps": ev["step"], "train_s": ev["train_seconds"]}
    for k, v in ev["metrics"].items():
        if k not in ("corpus_size", "pairs"):
            row[k] = round(v, 4)
            if k in ev["baseline"]:
                row[f"{k} ({ev['baseline_name']})"] = round(ev["baseline"][k], 4)
    row["wall_s"] = round(wall, 1)
    return row


def cross_entropy_baseline(budget: float) -> dict:
    """The SupCon recipe's encoder, views and optimizer trained with cross-entropy instead."""
    from contrastkit.train import load_config
    from contrastkit.train.loop import Precision
    from contrastkit.train.schedule import warmup_cosine
    from contrastkit.train.tasks.image import SupervisedTask

    cfg = load_config("supcon_fashion_mnist", ["model.projection_dim=10"])
    torch.manual_seed(cfg.seed)
    task = SupervisedTask(cfg)  # forward = backbone -> head ending in 10 logits
    precision = Precision(cfg.train.precision)
    model = task.model["encoder"]
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    g = torch.Generator().manual_seed(cfg.seed)
    n, b = task.num_train, cfg.optim.batch_size
    step, elapsed, total = 0, 0.0, cfg.train.max_steps
    while step < total and elapsed < budget:
        t0 = time.perf_counter()
        idx = torch.randint(0, n, (b,), generator=g)
        batch = task.batch(idx, g)
        views = batch["views"][:b]  # one view per image
        factor = warmup_cosine(total, cfg.optim.warmup_steps)(step)
        for group in opt.param_groups:
            group["lr"] = cfg.optim.lr * factor
        with precision.autocast():
            logits = model(views)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        elapsed += time.perf_counter() - t0
        if step == 20:  # fit the schedule to the budget, like the recipes
            total = max(step, min(total, int(budget / (elapsed / step))))
    train_f, train_y = task.features_of(task.train_set)
    test_f, test_y = task.features_of(task.test_set)
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x in task.test_set.ds.images.split(2048)])
    acc = float((logits.argmax(1) == test_y).float().mean())
    return {
        "recipe": "cross-entropy (SupCon's encoder and budget)",
        "budget_s": budget,
        "steps": step,
        "train_s": round(elapsed, 1),
        **{
            k: round(v, 4)
            for k, v in task.classification(train_f, train_y, test_f, test_y, True).items()
        },
        "test_accuracy": round(acc, 4),
    }


def run() -> dict:
    selected = os.environ.get("CK_BENCH_RECIPES")
    names = selected.split(",") if selected else RECIPES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"-- {name}", flush=True)
            try:
                rows.append(run_recipe(name, Path(tmp)))
            except Exception as err:  # a missing optional dataset must not hide the others
                rows.append({"recipe": name, "error": f"{type(err).__name__}: {err}"[:200]})
            if name == "supcon_fashion_mnist":
                rows.append(cross_entropy_baseline(_budget(900.0)))
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    rows = [{k: r.get(k, "") for k in keys} for r in rows]
    return {
        "title": "Recipe quality under time budgets" + (" (QUICK smoke run)" if QUICK else ""),
        "rows": rows,
        "notes": (
            "Fashion-MNIST: kNN = weighted 20-NN over the 60k train embeddings, probe = "
            "logistic regression, both on backbone features, 10k test images; baseline = raw "
            "pixels in the same run. Pair tasks: N-way retrieval over held-out pairs vs the "
            "model before training. Budgets are training seconds; the schedule is fitted to them."
        ),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
    del math
