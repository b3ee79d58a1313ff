"""Quiet by default, shown with --verbose (issue 35, point 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

LOAD = "from contrastkit.encoders import create_encoder; create_encoder('minilm'); print('ok')"


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSFORMERS_", "HF_"))}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env},
        timeout=300,
    )  # fmt: skip


def test_loading_a_text_model_prints_nothing_unless_asked() -> None:
    quiet = _run(LOAD)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ok"
    assert quiet.stderr.strip() == "", quiet.stderr[-500:]
    loud = _run(LOAD, TRANSFORMERS_VERBOSITY="info")  # what `contrastkit --verbose` sets
    assert "Loading weights" in loud.stderr or "loading" in loud.stderr.lower()


def test_training_into_a_pipe_writes_no_progress_bar(tmp_path: Path) -> None:
    from tests.train.conftest import tiny_config

    raw = tiny_config(tmp_path, train={"progress": True, "max_steps": 6})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = subprocess.run(
        [sys.executable, "-m", "contrastkit.cli", "train", str(config)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\r" not in done.stderr and "step/s" not in done.stderr and "it/s" not in done.stderr
