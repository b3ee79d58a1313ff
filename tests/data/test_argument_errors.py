"""The library speaks its own terms: data errors name the loaders' arguments (``root``,
``dataset``, ``hf_split``); the CLI restates them as config keys (``data.root``)."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import yaml

from contrastkit.data.image_source import open_images
from contrastkit.data.sources import TEXT_PAIR_SOURCES, load_source
from contrastkit.errors import ArgumentError, ArgumentWarning, restate
from contrastkit.index.streaming import warn_dim_not_trained


@pytest.mark.parametrize("dataset", ["pairs_file", "beir", "hf"])
def test_a_source_without_root_names_the_argument(dataset: str) -> None:
    with pytest.raises(ArgumentError, match=rf"^dataset='{dataset}' needs root: ") as info:
        load_source(TEXT_PAIR_SOURCES, dataset, "train")
    assert "data." not in str(info.value) and info.value.argument == "root"
    assert restate(info.value, {"root": "data.root", "dataset": "data.dataset"}).startswith(
        f"data.dataset='{dataset}' needs data.root: "
    )


def test_unknown_source_and_image_folder_without_root_name_the_argument() -> None:
    with pytest.raises(ArgumentError, match=r"^dataset='nope' is not available here; allowed: "):
        load_source(TEXT_PAIR_SOURCES, "nope", "train")
    with pytest.raises(ArgumentError, match=r"^dataset='image_folder' needs root: a folder"):
        open_images("image_folder", "train")


def test_hf_split_error_names_the_argument(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = {"query": ["a", "b"], "positive": ["c", "d"]}
    splits = {
        "validation": datasets.Dataset.from_dict(rows),
        "test": datasets.Dataset.from_dict(rows),
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dict"))
    from contrastkit.data.hf import load_hf_pairs

    with pytest.raises(
        ArgumentError, match=r"holds the splits validation, test; pick one with hf_split\.$"
    ):
        load_hf_pairs(tmp_path / "dict")


def test_argument_errors_pickle_and_warnings_restate() -> None:
    err = ArgumentError("{dim}=3 is too wide; pass {dim} <= 2.", "dim")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == "dim=3 is too wide; pass dim <= 2." and again.arguments == ("dim",)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_dim_not_trained(12, None)
    (warning,) = caught
    assert issubclass(warning.category, ArgumentWarning)
    assert str(warning.message).startswith(
        "dim 12: the run was not trained with Matryoshka dims (trained_dims)"
    )
    assert restate(
        warning.message, {"dim": "--dim", "trained_dims": "loss.matryoshka_dims"}
    ).startswith("--dim 12: the run was not trained with Matryoshka dims (loss.matryoshka_dims)")
    with pytest.raises(TypeError, match="name at least one argument"):
        ArgumentError("no argument named")


def test_the_cli_names_the_config_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The config checks data.root before any data is read, naming the keys (the CLI restating
    a library error mid-run: tests/index/test_streaming.py, --dim)."""
    from tests.train.conftest import tiny_pairs_config

    from contrastkit.cli import main

    cfg = tiny_pairs_config(tmp_path)
    cfg["data"] = {"dataset": "pairs_file"}
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "data.dataset='pairs_file' needs data.root: the .jsonl/.csv/.parquet file." in err, err
