"""``torchrun`` training end to end: two gloo processes on CPU through the ``contrastkit train``
command, as a user launches it (``python -m torch.distributed.run ... -m contrastkit.cli``).

Checked: exit code 0, one run folder written by rank 0 only (one metrics record per step, one
"run folder" line), and a loss over the gathered global batch: the first step's NT-Xent matches a
single-process run with the global batch size (64), not the per-process one (32). The match is
close, not exact: each process draws its own views and normalises with its own BatchNorm
statistics, while the gap to the per-process batch is ~log(127 / 63) = 0.7 nats.

On the text-pairs task (no random views, no BatchNorm, no dropout) two processes of 16 end with
the weights of one process of 32 (DistributedDataParallel + ``gather_distributed``), also when
only one process's batch holds a false negative to mask (the hang of issue 16), and with
gradient caching (``train.grad_cache_chunk``: DDP around the text tower, ``no_sync`` for every
chunk but the last, a learnable temperature averaged by the loop) against the plain step.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from contrastkit.train import load_config_dict, train

from .conftest import tiny_config, tiny_pairs_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

PER_PROCESS_BATCH = 32
WORLD = 2


def digits_config(tmp_path: Path, output_dir: Path, batch_size: int, max_steps: int) -> dict:
    raw = tiny_config(
        tmp_path,
        views={"blur": False, "noise": False},
        optim={"batch_size": batch_size},
        train={"max_steps": max_steps, "log_every": 1, "monitor_every": 0, "checkpoint_every": 2},
        eval={"probe": False, "raw_baseline": False},
    )
    raw["train"]["output_dir"] = str(output_dir)
    return raw


def first_loss(run: Path) -> float:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in records if "loss" in r)


def torchrun(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2 --standalone -m contrastkit.cli
    train CONFIG``, one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(WORLD),
        "--standalone",
        "-m",
        "contrastkit.cli",
        "train",
        str(config),
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_two_process_torchrun_trains_on_the_global_batch(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(digits_config(tmp_path, runs, PER_PROCESS_BATCH, 4)))
    done = torchrun(config, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # only rank 0 reports

    # rank 0 alone chose and wrote the run folder (another rank writing would add "tiny-2" or
    # duplicate records)
    assert [p.name for p in runs.iterdir()] == ["tiny"]
    run = runs / "tiny"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        "step_0000002",
        "step_0000004",
    ]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    start = next(r for r in records if r.get("event") == "start")
    assert start["world_size"] == WORLD and start["batch"] == WORLD * PER_PROCESS_BATCH
    assert json.loads((run / "eval.json").read_text())["step"] == 4

    # the loss saw the gathered global batch: compare with single-process first steps
    torch.manual_seed(0)
    single = {
        b: first_loss(train(load_config_dict(digits_config(tmp_path, tmp_path / f"b{b}", b, 1))))
        for b in (WORLD * PER_PROCESS_BATCH, PER_PROCESS_BATCH)
    }
    distributed = first_loss(run)
    near_global = abs(distributed - single[WORLD * PER_PROCESS_BATCH])
    near_local = abs(distributed - single[PER_PROCESS_BATCH])
    assert near_global < 0.2 and near_global < near_local / 3, (distributed, single)


def test_torchrun_pair_task_with_false_negative_mask(tmp_path: Path) -> None:
    """The pair task's per-process false-negative mask is placed into the global batch."""
    raw = tiny_pairs_config(tmp_path)
    config = tmp_path / "pairs.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = torchrun(config, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [
        json.loads(x) for x in (tmp_path / "pairs" / "metrics.jsonl").read_text().splitlines()
    ]
    start = records[0]
    assert (start["event"], start["world_size"], start["batch"]) == ("start", 2, 32)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(map(math.isfinite, losses))


def test_torchrun_time_budget_decisions_agree_across_ranks(tmp_path: Path) -> None:
    """Each process measures its own clock; the schedule fits and the budget stop use the
    slowest one, so both ranks stop at the same step (a disagreement would leave one rank
    waiting in a collective until the timeout)."""
    runs = tmp_path / "runs"
    raw = digits_config(tmp_path, runs, PER_PROCESS_BATCH, 10_000)
    raw["train"].update(
        time_budget_s=3.0, fit_schedule_to_budget=True, calibration_steps=2, checkpoint_every=0
    )
    config = tmp_path / "budget.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = torchrun(config, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(x) for x in (runs / "tiny" / "metrics.jsonl").read_text().splitlines()]
    fits = [r["total_steps"] for r in records if r.get("event") == "schedule_fitted"]
    assert fits and fits[-1] < 10_000  # fitted after calibration, then whenever off the budget
    last = max(r["step"] for r in records if "loss" in r)
    assert json.loads((runs / "tiny" / "eval.json").read_text())["step"] == last


def pair_file_with_one_duplicate(tmp_path: Path, per_process: int) -> Path:
    """A pairs file whose first global batch has a duplicate key text in rank 0's half only.

    Every row has its own id (so the split and the order do not depend on the texts); the train
    split's first global batch is found with the trainer's own order, then the key of the
    second row of rank 0's half is set to the key of its first row.
    """
    from contrastkit.data.files import load_pairs
    from contrastkit.data.wordnet import load_wordnet
    from contrastkit.train.batches import DataOrder

    source = load_wordnet(split="all", kind="lemma_gloss", pos="r")
    rows, seen = [], set()
    for q, k in zip(source.query, source.positive):
        if k not in seen and len(rows) < 200:
            seen.add(k)
            rows.append({"query": q, "positive": k, "id": f"row{len(rows)}"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_rows = load_pairs(path, split="train")
    first = DataOrder(len(train_rows), 2 * per_process, seed=0).next()  # the global batch
    a, b = (train_rows.ids[int(i)] for i in first[:2])  # rank 0's first two rows
    by_id = {r["id"]: r for r in rows}
    by_id[b]["positive"] = by_id[a]["positive"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pairs_raw(tmp_path: Path, data: Path, batch: int, out: Path) -> dict:
    raw = tiny_pairs_config(tmp_path)
    raw["data"] = {"dataset": "pairs_file", "root": str(data), "test_subset": 32}
    raw["optim"]["batch_size"] = batch
    raw["train"].update(output_dir=str(out), monitor_every=1, checkpoint_every=3)
    raw["eval"]["raw_baseline"] = False
    return raw


def assert_same_final_weights(two: Path, one: Path, what: str) -> None:
    """The last checkpoints of runs ``two`` and ``one`` hold the same weights (rtol 1e-4,
    atol 1e-5: float32 round-off of a different summation order)."""
    from safetensors.torch import load_file

    from contrastkit.train.checkpoint import latest_checkpoint

    a = load_file(str(latest_checkpoint(two) / "model.safetensors"))
    b = load_file(str(latest_checkpoint(one) / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    print(f"{what} after 3 steps: max abs weight difference {worst:.2e}")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_processes_end_with_the_weights_of_one_global_batch(tmp_path: Path) -> None:
    """DDP + gather_distributed through the CLI: 2 x 16 == 1 x 32 after 3 AdamW steps, with
    false-negative masking on and a duplicate in one process's batch only (no hang)."""
    data = pair_file_with_one_duplicate(tmp_path, PER_PROCESS_BATCH // 2)
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(pairs_raw(tmp_path, data, 16, tmp_path / "two")))
    done = torchrun(config, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    single = train(load_config_dict(pairs_raw(tmp_path, data, 32, tmp_path / "one")))
    assert_same_final_weights(tmp_path / "two" / "pairs", single, "2 x 16 vs 1 x 32")
    records = [
        json.loads(x)
        for x in (tmp_path / "two" / "pairs" / "metrics.jsonl").read_text().splitlines()
    ]
    one = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    # rank 0 logs its local loss; the global mean is what one process logs: compare the sums
    assert len(losses) == 3 and all(map(math.isfinite, losses))
    assert [r["step"] for r in one if "loss" in r] == [1, 2, 3]


# (two-process settings, single-process settings): a queue of M per process holds the keys of
# the last M / 16 steps of both processes, what a queue of W * M holds on one process
CACHED_VARIANTS = {
    "fixed temperature": ({}, {}),
    "learnable temperature": (
        {"loss": {"learnable_temperature": True}},
        {"loss": {"learnable_temperature": True}},
    ),
    "queue": ({"negatives": {"queue": 32}}, {"negatives": {"queue": WORLD * 32}}),
}


def with_settings(raw: dict, settings: dict) -> dict:
    for section, values in settings.items():
        raw[section].update(values)
    return raw


@pytest.mark.parametrize("variant", list(CACHED_VARIANTS))
def test_gradient_caching_under_torchrun_ends_with_the_weights_of_one_global_batch(
    tmp_path: Path, variant: str
) -> None:
    """``train.grad_cache_chunk=4`` on 2 x 16 (DDP around the text tower, no_sync for every
    chunk but the last; the masks' gather before the chunks; a learnable temperature outside
    DDP averaged by the loop; the queue filled once per step) == the plain step on 1 x 32
    after 3 AdamW steps, with false-negative masking and a duplicate in one process's half."""
    two_settings, one_settings = CACHED_VARIANTS[variant]
    data = pair_file_with_one_duplicate(tmp_path, PER_PROCESS_BATCH // 2)
    raw = with_settings(pairs_raw(tmp_path, data, 16, tmp_path / "two"), two_settings)
    raw["train"]["grad_cache_chunk"] = 4
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = torchrun(config, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plain = with_settings(pairs_raw(tmp_path, data, 32, tmp_path / "one"), one_settings)
    single = train(load_config_dict(plain))
    what = f"2 x 16 cached (chunks of 4) vs 1 x 32 plain, {variant}"
    assert_same_final_weights(tmp_path / "two" / "pairs", single, what)
    records = [
        json.loads(x)
        for x in (tmp_path / "two" / "pairs" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in steps)
    if variant == "learnable temperature":  # it was learned: it moved, and both runs alike
        one = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
        moved = [r["temperature"] for r in steps]
        assert moved[-1] != pytest.approx(0.1, abs=1e-6)
        assert moved == pytest.approx([r["temperature"] for r in one if "loss" in r], rel=1e-4)
