from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contrastkit.train.config import (
    ConfigError,
    list_recipes,
    load_config,
    load_config_dict,
    save_config,
)


def error_of(raw: dict, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_dict(raw, overrides)
    return str(info.value)


def test_unknown_key_names_dotted_path_and_allowed_keys() -> None:
    msg = error_of({"optim": {"learning_rate": 0.1}})
    assert "optim.learning_rate" in msg
    assert "0.1" in msg
    assert "allowed keys here" in msg and "lr" in msg


def test_bad_value_names_path_value_and_constraint() -> None:
    msg = error_of({"optim": {"lr": -3}})
    assert "optim.lr: got -3" in msg and "greater than 0" in msg
    msg = error_of({"task": "regression"})
    assert "task: got 'regression'" in msg and "'views'" in msg


def test_unknown_loss_lists_registered_losses() -> None:
    msg = error_of({"loss": {"name": "info_ncee"}})
    assert "loss.name" in msg and "info_ncee" in msg and "info_nce" in msg and "supcon" in msg


def test_every_bad_key_is_reported_at_once() -> None:
    msg = error_of({"optim": {"lr": 0}, "train": {"max_steps": -1}})
    assert "optim.lr" in msg and "train.max_steps" in msg


def test_crop_scale_validator() -> None:
    assert "views.crop_scale" in error_of({"views": {"crop_scale": [0.9, 0.1]}})


def test_overrides_are_parsed_as_yaml_and_validated() -> None:
    cfg = load_config_dict({}, ["optim.lr=0.05", "views.crop_scale=[0.3, 1.0]", "train.bf16=auto"])
    assert cfg.optim.lr == 0.05
    assert cfg.views.crop_scale == (0.3, 1.0)
    assert cfg.train.bf16 == "auto"
    assert "optim.lr" in error_of({}, ["optim.lr=fast"])
    assert "key.sub=value" in error_of({}, ["optim.lr"])
    assert "not a section" in error_of({}, ["optim.lr=0.1", "optim.lr.x=1"])


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config_dict({"name": "x", "loss": {"name": "supcon"}}, ["seed=7"])
    save_config(cfg, tmp_path / "c.yaml")
    raw = yaml.safe_load((tmp_path / "c.yaml").read_text())
    assert raw["optim"]["lr"] == cfg.optim.lr  # defaults are written out
    assert load_config(tmp_path / "c.yaml") == cfg


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("name", list_recipes())
def test_every_packaged_recipe_validates(name: str) -> None:
    cfg = load_config(name)
    assert cfg.name
