"""The Python entry point: ``contrastkit train`` from a notebook.

:func:`fit` takes what the command takes -- a recipe name, a YAML path, a dict or a
:class:`~contrastkit.train.config.RunConfig`, plus overrides -- runs the same training and returns
a :class:`Run`: its folder, its evaluation, its history and the trained encoder. Keyword
arguments name config sections (``train={"max_steps": 50}``); they are applied exactly as
``--set train.max_steps=50`` is on the command line, so the checks and messages are the same.

Example (a few seconds on two cores)::

    from contrastkit.train import fit

    run = fit(
        "minilm_wordnet",                       # or "my_config.yaml", or a dict
        data={"dataset": "pairs_file", "root": "pairs.jsonl"},
        train={"max_steps": 50, "time_budget_s": 120},
    )
    run.metrics["R@1"], run.baseline["R@1"]     # after / before training
    encoder = run.encoder                       # the trained nn.Module, in eval mode
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from torch import nn

from contrastkit.train.config import RunConfig, load_config, load_config_dict
from contrastkit.train.loop import train
from contrastkit.train.run import load_run

__all__ = ["Run", "fit", "section_overrides"]


def section_overrides(sections: Mapping[str, Any]) -> list[str]:
    """Keyword sections as ``--set`` overrides: nested keys joined by dots, values in YAML.

    >>> section_overrides({"train": {"max_steps": 50, "precision": "bf16"}, "seed": 3})
    ['train.max_steps=50', 'train.precision=bf16', 'seed=3']
    >>> section_overrides({"views": {"crop_scale": [0.3, 1.0]}})
    ['views.crop_scale=[0.3, 1.0]']
    """
    out: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):  # an empty section changes nothing
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
            return
        text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        out.append(f"{prefix}={text}")

    walk("", dict(sections))
    return out


@dataclass
class Run:
    """A finished (or interrupted) run: where it is and what it learnt.

    Attributes:
        path: the run folder (``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ...).
        config: the resolved config the run trained with.
    """

    path: Path
    config: RunConfig
    _loaded: tuple[Any, Any, nn.Module] | None = field(default=None, repr=False)

    def _eval(self) -> dict[str, Any]:
        from contrastkit.report import read_eval

        return read_eval(self.path / "eval.json") or {}

    @property
    def metrics(self) -> dict[str, float]:
        """The final evaluation (``eval.json``): e.g. ``R@1``, ``MRR``, ``knn_accuracy``."""
        return dict(self._eval().get("metrics", {}))

    @property
    def baseline(self) -> dict[str, float]:
        """The same metrics before training (or of the baseline the task names)."""
        return dict(self._eval().get("baseline", {}))

    def history(self) -> list[dict[str, Any]]:
        """Every record of ``metrics.jsonl``: losses, fits, monitor readings, evaluations."""
        lines = (self.path / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    @property
    def task(self) -> Any:
        """The run's task rebuilt with its latest weights (:func:`contrastkit.train.load_run`)."""
        if self._loaded is None:
            self._loaded = load_run(self.path)
        return self._loaded[1]

    @property
    def encoder(self) -> nn.Module:
        """The trained encoder, in eval mode."""
        return self.task.model["encoder"]


def fit(
    config: str | os.PathLike | RunConfig | Mapping[str, Any],
    *,
    overrides: Sequence[str] = (),
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    **sections: Any,
) -> Run:
    """Train as ``contrastkit train`` does and return the :class:`Run`.

    Args:
        config: a packaged recipe name (``contrastkit.train.list_recipes()``), a YAML path, a
            dict with the YAML's structure, or a :class:`RunConfig`. With ``resume=True``: the
            run folder to continue.
        overrides: ``--set`` style strings, e.g. ``["optim.lr=3e-5"]``, applied after
            ``sections``.
        run_dir: the run folder (default: a fresh ``<train.output_dir>/<name>[-N]``).
        resume: continue the latest checkpoint of the run folder ``config``.
        **sections: config sections or top-level keys, e.g. ``train={"max_steps": 50}``,
            ``seed=1``.

    Raises:
        ConfigError: a config that does not validate (the same one line as the CLI's).
        TrainingDiverged, TrainingInterrupted: as :func:`contrastkit.train.train`.
    """
    sets = [*section_overrides(sections), *overrides]
    if resume:
        folder = Path(os.fspath(config))  # type: ignore[arg-type]
        if not (folder / "config.yaml").exists():
            raise FileNotFoundError(f"resume: {folder} is not a run folder (no config.yaml).")
        cfg = load_config(folder / "config.yaml", sets)
        return Run(train(cfg, folder, resume=True), cfg)
    if isinstance(config, BaseModel):  # a RunConfig (a union of the task's config models)
        cfg = load_config_dict(config.model_dump(mode="json"), sets) if sets else config
    elif isinstance(config, Mapping):
        cfg = load_config_dict(dict(config), sets)
    else:
        cfg = load_config(config, sets)
    path = train(cfg, run_dir)
    saved = path / "config.yaml"  # resolved values (e.g. the automatic learning rate)
    return Run(path, load_config(saved) if saved.exists() else cfg)
