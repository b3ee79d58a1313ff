"""Config errors speak the user's terms: the override that set a bad value, the project's words
(issue 35, point 4)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from contrastkit.train import ConfigError, load_config


def test_a_bad_override_is_named_and_not_blamed_on_the_file() -> None:
    with pytest.raises(ConfigError) as err:
        load_config("minilm_wordnet", ["optim.batch_size=-1"])
    message = str(err.value)
    assert "optim.batch_size: got -1 (from --set optim.batch_size=-1); must be > 1" in message
    assert "minilm_wordnet.yaml" not in message and "Input should" not in message


def test_a_bad_value_in_the_file_still_names_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "mine.yaml"
    config.write_text("task: views\noptim: {lr: abc}\n")
    with pytest.raises(
        ConfigError, match=r"(?s)mine\.yaml: invalid config:.*optim\.lr: got 'abc'; "
    ):
        load_config(config, ["train.max_steps=5"])


def test_the_cli_prints_one_line_with_the_override_and_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "contrastkit.cli", "train", "minilm_wordnet",
         "--set", "optim.lr=abc"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "(from --set optim.lr=abc); must be a number" in lines[0]
