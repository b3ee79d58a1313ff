"""Configs, the training loop, checkpoints and evaluation of runs.

>>> from contrastkit.train import list_recipes
>>> "simclr_fashion_mnist" in list_recipes()
True
"""

from contrastkit.train.api import Run, fit
from contrastkit.train.config import (
    ConfigError,
    RunConfig,
    list_recipes,
    load_config,
    load_config_dict,
    save_config,
)
from contrastkit.train.loop import TrainingDiverged, TrainingInterrupted, train
from contrastkit.train.run import load_run

__all__ = [
    "ConfigError",
    "Run",
    "RunConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "fit",
    "list_recipes",
    "load_config",
    "load_config_dict",
    "load_run",
    "save_config",
    "train",
]
