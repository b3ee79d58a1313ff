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
    assert "optim.lr: got -3" in msg and "must be > 0" in msg
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


@pytest.mark.parametrize(
    ("views", "expected"),
    [
        ({"crop_ratio": [2, 1]}, "views.crop_ratio: got [2, 1]; needs 0 < min <= max"),
        ({"flip": 1.5}, "views.flip: got 1.5; needs a probability in [0, 1]"),
        ({"jitter_p": -1}, "views.jitter_p: got -1; needs a probability in [0, 1]"),
        ({"strength": -0.5}, "views.strength: got -0.5; needs a number >= 0"),
        ({"noise": 0.05}, "views.noise: got 0.05; needs true or false"),
        ({"brightness": 0.3}, "views.brightness: got 0.3; replaced by views.strength"),
    ],
)
def test_views_errors_name_key_value_and_fix(views: dict, expected: str) -> None:
    assert expected in error_of({"views": views})


def test_views_section_maps_onto_simclr_views() -> None:
    """Every ``views:`` key reaches kornia's SimCLRViews (the trainer's only view pipeline)."""
    import kornia.augmentation as K
    import torch

    from contrastkit.train.tasks.image import build_views

    cfg = load_config_dict(
        {
            "views": {
                "crop_scale": [0.3, 0.9],
                "crop_ratio": [0.8, 1.25],
                "flip": 0.25,
                "strength": 0.5,
                "jitter_p": 0.6,
                "blur": False,
                "noise": True,
            }
        }
    )
    views = build_views(cfg.views, torch.zeros(2, 1, 28, 28))
    assert (views.size, views.channels, views.strength) == (28, 1, 0.5)
    assert (views.crop_scale, views.crop_ratio) == ((0.3, 0.9), (0.8, 1.25))
    assert (views.flip, views.jitter_p, views.blur, views.noise) == (0.25, 0.6, False, True)
    steps = {type(m): m for m in views.pipeline}  # the kornia steps those settings built
    assert steps[K.RandomHorizontalFlip].p == 0.25 and steps[K.ColorJiggle].p == 0.6
    assert K.RandomGaussianNoise in steps and K.RandomGaussianBlur not in steps


def test_overrides_are_parsed_as_yaml_and_validated() -> None:
    overrides = ["optim.lr=0.05", "views.crop_scale=[0.3, 1.0]", "train.precision=fp16"]
    cfg = load_config_dict({}, overrides)
    assert cfg.optim.lr == 0.05
    assert cfg.views.crop_scale == (0.3, 1.0)
    assert cfg.train.precision == "fp16"
    assert "train.bf16: got True; replaced by train.precision" in error_of({}, ["train.bf16=true"])
    assert "optim.lr" in error_of({}, ["optim.lr=fast"])
    assert "key.sub=value" in error_of({}, ["optim.lr"])
    assert "not a section" in error_of({}, ["optim.lr=0.1", "optim.lr.x=1"])


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config_dict(
        {"name": "x", "task": "supervised", "loss": {"name": "supcon"}}, ["seed=7"]
    )
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


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"task": "pairs", "data": {"dataset": "wordnet"}, "views": {"flip": 0.5}},
            "views: got {'flip': 0.5}; unknown key",
        ),
        (
            {"task": "pairs", "data": {"dataset": "wordnet"}, "model": {"width": 8}},
            "model.width: got 8; unknown key; allowed keys here: freeze, lora, name, options",
        ),
        ({"task": "pairs", "data": {"dataset": "digits"}}, "data.dataset: got 'digits'"),
        ({"loss": {"name": "supcon"}}, "use task: supervised"),
        ({"task": "supervised", "loss": {"name": "nt_xent"}}, "use task: views"),
        (
            {"loss": {"params": {"gather_distributed": True}}},
            "loss.params.gather_distributed: got True; the trainer sets it",
        ),
        (
            {"loss": {"false_negative_mask": True}},
            "loss.false_negative_mask: got True; moved to negatives.false_negatives",
        ),
        ({"data": {"sampler": "balanced"}}, "data.sampler: got 'balanced'"),
        ({"data": {"sampler": "m_per_class", "sampler_m": 3}}, "data.sampler_m: got 3"),
        ({"train": {"precision": "fp8"}}, "train.precision: got 'fp8'"),
    ],
)
def test_task_sections_and_moved_keys(raw: dict, expected: str) -> None:
    """A key the task does not use, a loss the task cannot call, a moved key: one line each."""
    assert expected in error_of(raw)


@pytest.mark.parametrize(
    ("raw", "lr"),
    [
        ({"task": "pairs", "data": {"dataset": "wordnet"}, "model": {"name": "minilm"}}, 1e-4),
        ({"task": "pairs", "model": {"name": "hf", "options": {"path": "/m"}}}, 1e-4),
        ({"task": "pairs", "model": {"name": "tiny_text"}}, 1e-3),
        ({"data": {"dataset": "digits"}}, 1e-3),
        ({"task": "image_text"}, 1e-3),
        ({"task": "pairs", "model": {"name": "minilm"}, "optim": {"lr": 3e-5}}, 3e-5),
    ],
)
def test_default_learning_rate_follows_the_model(raw: dict, lr: float, tmp_path: Path) -> None:
    """Unset optim.lr: the fine-tuning rate for a pretrained tower, the from-scratch rate else;
    the saved config records the rate the run used."""
    cfg = load_config_dict(raw)
    assert cfg.optim.lr == lr
    save_config(cfg, tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["optim"]["lr"] == lr
