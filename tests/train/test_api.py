"""The Python entry point behaves as ``contrastkit train`` and returns the run (issue 35)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from contrastkit.train import ConfigError, fit, load_config_dict

from .conftest import tiny_config


def test_fit_equals_the_cli_and_returns_path_metrics_history_and_encoder(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path)
    run = fit(raw, run_dir=tmp_path / "api", train={"max_steps": 4}, seed=1)
    assert run.path == tmp_path / "api" and run.config.train.max_steps == 4
    assert run.config.seed == 1
    assert set(run.metrics) and set(run.baseline)  # the final evaluation and its baseline
    assert [r["step"] for r in run.history() if "loss" in r][-1] == 4
    digits = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        api_embeddings = run.encoder(digits)
    # The same config through the command line gives the same weights and evaluation.
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump(raw))
    cli = subprocess.run(
        [sys.executable, "-m", "contrastkit.cli", "train", str(config), "--run-dir",
         str(tmp_path / "cli"), "--set", "train.max_steps=4", "--set", "seed=1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-2000:]
    cli_eval = json.loads((tmp_path / "cli" / "eval.json").read_text())
    assert cli_eval["metrics"] == pytest.approx(run.metrics)
    from contrastkit.train.api import Run

    cli_run = Run(tmp_path / "cli", run.config)
    with torch.no_grad():
        torch.testing.assert_close(cli_run.encoder(digits), api_embeddings)


def test_fit_reports_a_bad_section_in_the_configs_words(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optim\.batch_size"):
        fit(tiny_config(tmp_path), optim={"batch_size": -1})


def test_fit_accepts_a_run_config_and_resumes(tmp_path: Path) -> None:
    cfg = load_config_dict(tiny_config(tmp_path, train={"max_steps": 2}))
    first = fit(cfg, run_dir=tmp_path / "r")
    again = fit(first.path, resume=True)  # a finished run: as `--resume`, nothing left to train
    assert again.path == first.path and again.metrics == pytest.approx(first.metrics)
    assert [r["step"] for r in again.history() if "loss" in r][-1] == 2
