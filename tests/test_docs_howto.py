"""The how-to pages' commands and configs are valid: every ``contrastkit train`` line of
docs/howto/*.md loads (recipe + its ``--set`` overrides) and every YAML block validates, the way
``contrastkit train`` checks them before reading any data. Training them is what the recipes'
own tests and benchmarks do; docs/tutorial.md is run end to end by test_docs_tutorial.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from contrastkit.train.config import load_config, load_config_dict

HOWTO = Path(__file__).resolve().parent.parent / "docs" / "howto"
PAGES = sorted(p for p in HOWTO.glob("*.md") if p.name != "README.md")
_BLOCK = re.compile(r"```(bash|yaml)\n(.*?)```", re.S)


def _train_commands(text: str) -> list[tuple[str, list[str]]]:
    """(config, overrides) of every ``contrastkit train CONFIG [--set K=V ...]`` line."""
    out = []
    for lang, code in _BLOCK.findall(text):
        if lang != "bash":
            continue
        for line in code.splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] != ["contrastkit", "train"]:
                continue
            config, sets = words[2], []
            for flag, value in zip(words[3::2], words[4::2], strict=True):
                assert flag == "--set", line
                sets.append(value)
            out.append((config, sets))
    return out


def test_every_task_has_a_page() -> None:
    from contrastkit.train.config import RUN_TYPES

    assert {p.stem for p in PAGES} == set(RUN_TYPES)


def _your_files(raw: dict) -> list[str]:
    """The files a config names that a user brings (data.root, eval.heldout)."""
    names = [(raw.get("data") or {}).get("root"), (raw.get("eval") or {}).get("heldout")]
    return [n for n in names if n]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_howto_commands_and_configs_validate(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the user's files, stand-ins here, are checked when a config loads
    text = page.read_text(encoding="utf-8")
    commands = _train_commands(text)
    yamls = [code for lang, code in _BLOCK.findall(text) if lang == "yaml"]
    assert commands, f"{page.name} shows no `contrastkit train` command"
    for code in yamls:
        name = next(iter(re.findall(r"^# (\S+\.yaml)", code, re.M)), "config.yaml")
        raw = yaml.safe_load(code)
        for yours in _your_files(raw):
            (tmp_path / yours).write_text('{"query": "q", "positive": "p"}\n', encoding="utf-8")
        cfg = load_config_dict(raw)
        (tmp_path / name).write_text(code, encoding="utf-8")
        assert cfg.task == page.stem
    for config, sets in commands:
        cfg = load_config(tmp_path / config if (tmp_path / config).exists() else config, sets)
        assert cfg.task == page.stem, f"{page.name}: {config} trains task {cfg.task}"
