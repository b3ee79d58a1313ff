from __future__ import annotations

from pathlib import Path

import pytest
import yaml


def tiny_config(tmp_path: Path, **sections: object) -> dict:
    """A seconds-long SimCLR run on scikit-learn digits (real data, 8x8 images)."""
    raw = {
        "name": "tiny",
        "seed": 0,
        "task": "views",
        "data": {"dataset": "digits"},
        "model": {"width": 4, "out_dim": 16, "projection_dim": 8},
        "loss": {"name": "nt_xent", "params": {"temperature": 0.3}},
        "optim": {"lr": 0.003, "batch_size": 32, "warmup_steps": 2},
        "train": {
            "max_steps": 12,
            "log_every": 2,
            "monitor_every": 4,
            "checkpoint_every": 4,
            "output_dir": str(tmp_path / "runs"),
            "progress": False,
            "threads": 1,
        },
        "eval": {"knn_k": 5},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    return raw


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    return path
