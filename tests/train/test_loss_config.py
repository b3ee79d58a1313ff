"""A loss's defaults are declared once (its signature); the config is checked against it."""

from __future__ import annotations

from pathlib import Path

import pytest

from contrastkit.losses import LearnableTemperature, list_losses, loss_defaults
from contrastkit.train.config import load_config_dict
from contrastkit.train.run import build_loss

from .conftest import tiny_config

WITH_TEMPERATURE = [n for n in list_losses() if "temperature" in loss_defaults(n)]


def _temperature(loss: object) -> LearnableTemperature:
    found = [m for m in loss.modules() if isinstance(m, LearnableTemperature)]  # type: ignore[attr-defined]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("name", ["nt_xent", "supcon", "sigmoid_contrastive", "info_nce"])
def test_learnable_temperature_starts_at_the_loss_default(tmp_path: Path, name: str) -> None:
    task = "supervised" if name == "supcon" else "views"
    loss = {"name": name, "params": {}, "learnable_temperature": True}
    raw = tiny_config(tmp_path, task=task, loss=loss)
    cfg = load_config_dict(raw)
    start = float(_temperature(build_loss(cfg))().detach())
    assert start == pytest.approx(loss_defaults(name)["temperature"], rel=1e-6)
    # ... and at the configured value when one is given.
    raw["loss"]["params"] = {"temperature": 0.2}
    assert float(_temperature(build_loss(load_config_dict(raw)))().detach()) == pytest.approx(0.2)


def test_defaults_come_from_the_signature() -> None:
    assert loss_defaults("nt_xent")["temperature"] == 0.5
    assert loss_defaults("supcon")["temperature"] == 0.1
    assert "gather_distributed" not in loss_defaults("info_nce")  # set by the trainer only
    assert {"info_nce", "nt_xent", "supcon", "sigmoid_contrastive"} <= set(WITH_TEMPERATURE)


def test_a_typo_in_loss_params_fails_when_the_config_loads(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path, loss={"name": "nt_xent", "params": {"temprature": 0.2}})
    # A data path that does not exist: the error must come before any data is read.
    raw["data"] = {"dataset": "image_folder", "root": str(tmp_path / "missing")}
    with pytest.raises(ValueError) as err:
        load_config_dict(raw)
    message = str(err.value)
    assert "loss.params" in message and "'temprature'" in message
    assert "Did you mean 'temperature'?" in message and "missing" not in message


def test_learnable_temperature_needs_a_loss_with_one(tmp_path: Path) -> None:
    raw = tiny_config(
        tmp_path, loss={"name": "vicreg", "params": {}, "learnable_temperature": True}
    )
    with pytest.raises(ValueError, match=r"loss\.learnable_temperature: vicreg has no temperature"):
        load_config_dict(raw)
