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
            "precision": "fp32",
        },
        "eval": {"knn_k": 5},
    }
    return _merge(raw, sections)


def tiny_pairs_config(tmp_path: Path, **sections: object) -> dict:
    """A seconds-long WordNet adverb lemma -> gloss run with a tiny from-scratch BERT (no
    dropout), in-batch negatives and synset false-negative masking."""
    raw = {
        "name": "pairs",
        "task": "pairs",
        "data": {
            "dataset": "wordnet",
            "subset": 96,
            "test_subset": 64,
            "options": {"kind": "lemma_gloss", "pos": "r"},
        },
        "model": {
            "name": "tiny_text",
            "options": {
                "hidden_size": 16,
                "num_layers": 1,
                "num_heads": 2,
                "max_length": 16,
                "dropout": 0.0,
                "bucket_size": 4,
            },
        },
        "loss": {"name": "info_nce", "params": {"temperature": 0.1, "symmetric": True}},
        "negatives": {"false_negatives": {"ids": True}},
        "optim": {"lr": 0.001, "batch_size": 16, "warmup_steps": 1},
        "train": {
            "max_steps": 3,
            "log_every": 1,
            "monitor_every": 1,
            "checkpoint_every": 3,
            "progress": False,
            "threads": 1,
            "precision": "fp32",
            "output_dir": str(tmp_path),
        },
        "eval": {"corpus_size": 32, "queries": "first"},
    }
    return _merge(raw, sections)


def _merge(raw: dict, sections: dict) -> dict:
    """Override sections of a raw config: dicts update the section, other values replace it."""
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
