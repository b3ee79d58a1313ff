"""The trainer's logged loss in a bf16 run is computed by the loss, not rounded by autocast."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from contrastkit.train import train
from contrastkit.train.config import load_config_dict

from .conftest import tiny_pairs_config


def test_bf16_text_run_logs_a_loss_that_is_not_bf16_quantised(tmp_path: Path) -> None:
    raw = tiny_pairs_config(tmp_path, train={"precision": "bf16", "max_steps": 6})
    run = train(load_config_dict(raw), tmp_path / "bf16")
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert records[0]["precision"] == "bf16" and len(losses) >= 5
    # Before: every logged value sat on the bf16 grid (3.4375, 3.421875, ...).
    off_grid = [v for v in losses if float(torch.tensor(v).bfloat16()) != v]
    assert len(off_grid) >= len(losses) - 1, losses
