"""Evaluate on your own held-out file (issue 35, point 3): eval.heldout, before and after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contrastkit.data.beir import pairs_to_beir
from contrastkit.data.sources import TEXT_PAIR_SOURCES, load_source
from contrastkit.train import ConfigError, load_config_dict, train

from .conftest import tiny_pairs_config


def _write(rows: list[tuple[str, str]], path: Path) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    return path


@pytest.fixture(scope="module")
def adverbs() -> list[tuple[str, str]]:
    pairs = load_source(TEXT_PAIR_SOURCES, "wordnet", "all", kind="lemma_gloss", pos="r")
    return list(zip(pairs.query, pairs.positive))[:160]


@pytest.mark.parametrize("form", ["file", "beir"])
def test_a_run_is_evaluated_on_your_held_out_pairs(
    tmp_path: Path, adverbs: list[tuple[str, str]], form: str
) -> None:
    train_file = _write(adverbs[:120], tmp_path / "train.jsonl")
    held = _write(adverbs[120:], tmp_path / "held.jsonl")
    if form == "beir":
        from contrastkit.data.files import load_pairs

        columns = {"query": "question", "positive": "answer"}
        held = pairs_to_beir(load_pairs(held, columns=columns), tmp_path / "held_beir")
    raw = tiny_pairs_config(
        tmp_path,
        data={"dataset": "pairs_file", "root": str(train_file), "options": {}, "subset": None,
              "test_subset": None, "columns": {"query": "question", "positive": "answer"}},
        eval={"heldout": str(held)},
    )  # fmt: skip
    raw["negatives"] = {}
    run = train(load_config_dict(raw), tmp_path / form)
    ev = json.loads((run / "eval.json").read_text())
    for metrics in (ev["metrics"], ev["baseline"]):  # after and before training
        assert {"nDCG@10", "Recall@10", "MRR@10"} <= set(metrics)
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert ev["counts"]["queries"] == len({q for q, _ in adverbs[120:]})


def test_heldout_is_checked_when_the_config_loads(tmp_path: Path) -> None:
    raw = tiny_pairs_config(tmp_path, eval={"heldout": str(tmp_path / "missing.jsonl")})
    with pytest.raises(ConfigError, match=r"eval\.heldout: got .*missing\.jsonl.*export-beir"):
        load_config_dict(raw)
    from .conftest import tiny_config

    views = tiny_config(tmp_path, eval={"heldout": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"eval\.heldout: .*only task: pairs"):
        load_config_dict(views)
