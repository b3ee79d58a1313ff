"""docs/reference/ is generated from the code: the committed files must equal what
scripts/gen_reference.py writes now (a new config key or CLI flag shows up there, or this fails)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_reference", ROOT / "scripts" / "gen_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["config.md", "cli.md"])
def test_reference_is_what_the_code_generates(name: str) -> None:
    gen = _generator()
    path = ROOT / "docs" / "reference" / name
    expected = gen.generated()[path]
    committed = path.read_text(encoding="utf-8") if path.exists() else ""
    assert committed == expected, (
        f"docs/reference/{name} is stale: the config models or the CLI parser changed. "
        "Run `python scripts/gen_reference.py` and commit the result."
    )


def test_reference_covers_every_key_and_flag() -> None:
    """Every config key (dotted) and every CLI flag appears in the generated text."""
    from contrastkit.cli import _parser
    from contrastkit.train.config import RUN_TYPES, DataConfig, EvalConfig, TrainConfig

    gen = _generator()
    config, cli = gen.config_reference(), gen.cli_reference()
    for section, model in (("data", DataConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        for key in model.model_fields:
            assert f"`{section}.{key}`" in config
    assert all(f"`{task}`" in config for task in RUN_TYPES)
    flags = {"--set", "--resume", "--backend", "--api-key", "--columns", "--keep-identical-ids"}
    assert all(f"`{flag}" in cli for flag in flags)
    assert "contrastkit data export-beir" in cli
    assert "eval-retrieval" in cli and _parser().prog == "contrastkit"
