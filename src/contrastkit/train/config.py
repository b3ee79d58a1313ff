"""Run configuration: YAML files validated into typed pydantic models.

A config names its components by registry name and groups settings by stage of the data path:
``data`` -> ``views`` -> ``model`` -> ``loss`` -> ``optim`` -> ``train`` (loop, checkpoints, logs)
-> ``eval``. Unknown keys are errors; every error names the key by its dotted path, the value
received and what is allowed. ``--set key.sub=value`` overrides are applied to the raw YAML before
validation, so they are validated like the file.

>>> cfg = load_config_dict({"name": "t", "data": {"dataset": "digits"}}, ["optim.lr=0.01"])
>>> cfg.optim.lr
0.01
>>> try:
...     load_config_dict({"optim": {"lr": -1}})
... except ConfigError as err:
...     print(err)
invalid config:
  optim.lr: got -1; Input should be greater than 0
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PACKAGE_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config file or override that does not validate; the message lists every bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """What to train on.

    ``dataset`` is an image set (``fashion_mnist``, ``digits``) or a pair source (``wordnet``,
    ``bible``, ``emoji``, ``preference_wordnet``); ``root`` overrides where its files are.
    """

    dataset: str = "fashion_mnist"
    root: str | None = None
    subset: int | None = Field(default=None, gt=0, description="use only the first N train items")
    test_subset: int | None = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict, description="loader keyword arguments")


class ViewsConfig(_Strict):
    """Random views of images: the arguments of kornia's :class:`contrastkit.data.SimCLRViews`
    (random resized crop, horizontal flip, brightness/contrast jitter, Gaussian blur and noise).

    ``strength`` scales the jitter (brightness and contrast factors ``0.4 * strength``), the blur
    sigma and the noise std (``0.05 * strength``). The defaults are SimCLRViews' defaults; small
    grayscale images usually want ``blur: false`` and ``noise: false``.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    strength: float = 1.0
    jitter_p: float = 0.8
    blur: bool = True
    noise: bool = True

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: Any) -> Any:
        old = [k for k in ("brightness", "contrast") if isinstance(data, dict) and k in data]
        if old:
            raise ValueError(
                f"views.{old[0]}: got {data[old[0]]!r}; replaced by views.strength (the kornia "
                "SimCLRViews jitter is 0.4 * strength for brightness and contrast): "
                "brightness/contrast 0.4 -> strength: 1.0, 0.3 -> strength: 0.75"
            )
        return data

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("needs 0 < min <= max <= 1 (area fractions), e.g. [0.2, 1.0]")
        return v

    @field_validator("crop_ratio")
    @classmethod
    def _ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("needs 0 < min <= max (aspect ratios), e.g. [0.75, 1.333]")
        return v

    @field_validator("flip", "jitter_p")
    @classmethod
    def _probability(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError("needs a probability in [0, 1], e.g. 0.5 (0 turns the step off)")
        return v

    @field_validator("strength")
    @classmethod
    def _strength(cls, v: float) -> float:
        if not 0 <= v < float("inf"):
            raise ValueError("needs a number >= 0: 1.0 is SimCLR's strength, 0.5 milder")
        return v

    @field_validator("blur", "noise", mode="before")
    @classmethod
    def _flag(cls, v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError("needs true or false (applied with probability 0.5 when true)")
        return v


class ModelConfig(_Strict):
    """The encoder(s). ``name``: ``small_cnn`` (images), ``minilm`` (the packaged pretrained
    MiniLM), ``tiny_text`` (a small BERT from scratch), ``emoji_towers`` (image CNN + text tower);
    extra keyword arguments go in ``options``."""

    name: str = "small_cnn"
    width: int = Field(default=32, gt=0)
    out_dim: int = Field(default=128, gt=0)
    projection_dim: int = Field(default=64, ge=0)
    pool: int = Field(default=3, gt=0, description="small_cnn: side of the final pooling grid")
    options: dict[str, Any] = Field(default_factory=dict)


class LossConfig(_Strict):
    """Any registered loss (``contrastkit.list_losses()``) and its keyword arguments, plus where
    its negatives come from (:mod:`contrastkit.train.extra_negatives`).

    ``queue_size``, ``key_momentum``, ``hard_negatives`` and ``false_negative_threshold`` need a
    loss called as ``loss(query, key, negatives, ignore_mask=...)`` (``info_nce``) and a task that
    calls it that way (``views`` or ``pairs``; ``key_momentum``: ``views`` only).
    """

    name: str = "nt_xent"
    params: dict[str, Any] = Field(default_factory=dict)
    learnable_temperature: bool = False
    false_negative_mask: bool = Field(
        default=False, description="mask in-batch items sharing a group id (e.g. a synset)"
    )
    queue_size: int = Field(
        default=0, description="MoCo: keys of previous batches kept as extra negatives (0: off)"
    )
    key_momentum: float | None = Field(
        default=None,
        description="MoCo: keys from an EMA copy of the encoder with this momentum (views task)",
    )
    hard_negatives: int | None = Field(
        default=None, description="keep only each query's K most similar negatives (None: all)"
    )
    false_negative_threshold: float | None = Field(
        default=None, description="ignore candidates more similar to the query than this"
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from contrastkit.losses import list_losses

        if v not in list_losses():
            raise ValueError(f"unknown loss {v!r}; allowed: {', '.join(list_losses())}")
        return v

    @field_validator("queue_size", mode="before")
    @classmethod
    def _queue_size(cls, v: Any) -> Any:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(
                "needs an int >= 0: how many past keys to keep as extra negatives, e.g. 4096 "
                "(0 turns the queue off)"
            )
        return v

    @field_validator("key_momentum")
    @classmethod
    def _momentum(cls, v: float | None) -> float | None:
        if v is not None and not 0 <= v < 1:
            raise ValueError("needs a momentum in [0, 1), e.g. 0.99 (MoCo uses 0.99-0.999)")
        return v

    @field_validator("hard_negatives", mode="before")
    @classmethod
    def _hard_negatives(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(
                "needs an int >= 1 (negatives kept per query, e.g. 16) or null to keep all"
            )
        return v

    @field_validator("false_negative_threshold")
    @classmethod
    def _threshold(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("needs a finite similarity, e.g. 0.9 for cosine")
        return v


class OptimConfig(_Strict):
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=50, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    batch_size: int = Field(default=256, gt=1)


class TrainConfig(_Strict):
    """The loop: length, precision, logging, evaluation and checkpoint cadence."""

    max_steps: int = Field(default=1000, gt=0)
    time_budget_s: float | None = Field(
        default=None, gt=0, description="stop training after this many seconds"
    )
    fit_schedule_to_budget: bool = Field(
        default=False,
        description="after calibration_steps (and again after 5x as many and at 50 % and 80 % "
        "of the budget), set the schedule length to what fits the time budget (at most "
        "max_steps)",
    )
    calibration_steps: int = Field(default=20, gt=0)
    grad_cache_chunk: int | None = Field(
        default=None,
        gt=0,
        description="pair tasks: encode the batch in chunks of this many rows with gradient "
        "caching (exact full-batch gradients at one chunk's activation memory)",
    )
    bf16: bool | Literal["auto"] = Field(
        default=False, description='bfloat16 autocast; "auto": on when the CPU/GPU has native bf16'
    )
    threads: int | None = Field(default=None, gt=0)
    log_every: int = Field(default=10, gt=0)
    eval_every: int = Field(default=0, ge=0, description="0: evaluate only at the end")
    monitor_every: int = Field(default=50, ge=0)
    checkpoint_every: int = Field(default=200, ge=0)
    output_dir: str = "runs"
    tensorboard: bool = False
    progress: bool = True


class EvalConfig(_Strict):
    """Frozen-embedding evaluation at the end (and every ``train.eval_every`` steps)."""

    knn_k: int = Field(default=20, gt=0)
    probe: bool = True
    raw_baseline: bool = True
    features: Literal["backbone", "projection"] = "backbone"
    periodic_subset: int = Field(default=5000, gt=0, description="train items for periodic kNN")
    recall_at: list[int] = Field(default_factory=lambda: [1, 5, 10])
    corpus_size: int | None = Field(default=1000, gt=1, description="N-way retrieval for pairs")
    queries: Literal["first", "all"] = Field(
        default="all",
        description="pairs: 'first' asks one query per held-out id (its first row, e.g. a "
        "WordNet synset's head lemma), 'all' asks every held-out row of the corpus ids",
    )


class RunConfig(_Strict):
    """A whole run. ``task`` says how batches become loss inputs:

    * ``views``: two random views of each image; ``loss(z1, z2)``.
    * ``supervised``: two views plus labels; ``loss(z (B, 2, D), labels)``.
    * ``pairs``: (query, key) pairs through one or two encoders; ``loss(query, key)``.
    * ``preference``: (prompt, chosen, rejected) scored by a scorer; ``loss(chosen, rejected)``.
    """

    name: str = "run"
    seed: int = 0
    task: Literal["views", "supervised", "pairs", "preference"] = "views"
    data: DataConfig = Field(default_factory=DataConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _negatives_fit_loss_and_task(self) -> RunConfig:
        problems = negatives_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _forward_params(loss_name: str) -> set[str]:
    import inspect

    from contrastkit.losses import LOSSES

    return set(inspect.signature(LOSSES.get(loss_name).forward).parameters)


def negatives_problems(cfg: RunConfig) -> list[str]:
    """What is wrong with the ``loss`` negatives options of ``cfg``, one line per key (the line
    starts with the key's dotted path, then the value and the fix)."""
    loss = cfg.loss
    options = {
        "queue_size": loss.queue_size or None,
        "key_momentum": loss.key_momentum,
        "hard_negatives": loss.hard_negatives,
        "false_negative_threshold": loss.false_negative_threshold,
    }
    used = {k: v for k, v in options.items() if v is not None}
    if not used:
        return []
    params = _forward_params(loss.name)
    takes = {"negatives", "ignore_mask"} <= params
    problems = []
    for key, value in used.items():
        head = f"loss.{key}: got {value!r}; "
        if not takes:
            problems.append(
                head + f"loss {loss.name!r} takes no extra negatives or ignore mask; use a loss "
                f"called as loss(query, key, negatives, ignore_mask=...) (loss.name: info_nce) "
                f"or remove loss.{key}"
            )
        elif key == "key_momentum" and cfg.task != "views":
            problems.append(
                head + f"the momentum key encoder is built by task: views (images), not task: "
                f"{cfg.task}; remove loss.key_momentum"
            )
        elif cfg.task not in ("views", "pairs"):
            problems.append(
                head + f"task: {cfg.task} does not call loss(query, key); use task: views or "
                f"pairs, or remove loss.{key}"
            )
    if takes and loss.hard_negatives is not None:
        candidates = cfg.optim.batch_size - 1 + loss.queue_size
        if loss.hard_negatives > candidates:
            problems.append(
                f"loss.hard_negatives: got {loss.hard_negatives}; a query has at most "
                f"optim.batch_size - 1 + loss.queue_size = {candidates} negatives; keep fewer "
                f"(e.g. {max(1, candidates // 4)})"
            )
    threshold = loss.false_negative_threshold
    cosine = loss.params.get("metric", "cosine") == "cosine"
    if takes and threshold is not None and cosine and not -1 < threshold <= 1:
        problems.append(
            f"loss.false_negative_threshold: got {threshold!r}; a cosine similarity in "
            "(-1, 1], e.g. 0.9 (candidates above it are ignored)"
        )
    return problems


def _format_errors(err: ValidationError, raw: dict[str, Any]) -> str:
    lines = ["invalid config:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(f"{path}." if path else ""):  # a cross-key check names its own keys
            lines.extend(f"  {line}" for line in msg.split("\n"))
            continue
        if e["type"] == "extra_forbidden":
            parent = RunConfig
            for p in e["loc"][:-1]:
                field = parent.model_fields.get(str(p)) if isinstance(parent, type) else None
                parent = field.annotation if field is not None else None
            allowed = sorted(parent.model_fields) if isinstance(parent, type) else []
            msg = f"unknown key; allowed keys here: {', '.join(allowed)}"
        lines.append(f"  {path}: got {e.get('input')!r}; {msg}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.01"`` -> (["optim", "lr"], 0.01); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value (e.g. optim.lr=0.01).")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key; use key.sub=value.")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key.sub=value`` in a copy of the raw config mapping."""
    out = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section.")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def load_config_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """Validate a raw mapping (after ``overrides``) into a :class:`RunConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"a config must be a YAML mapping at the top level, got {type(raw).__name__}."
        )
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, raw)) from None


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A YAML path, or the name of a packaged recipe (``simclr_fashion_mnist``)."""
    p = Path(path)
    if p.exists():
        return p
    packaged = PACKAGE_CONFIGS / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
    if packaged.exists():
        return packaged
    raise ConfigError(
        f"config {str(path)!r} not found; pass a YAML path or a packaged recipe name: "
        f"{', '.join(list_recipes())}."
    )


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``contrastkit/configs``."""
    return sorted(p.stem for p in PACKAGE_CONFIGS.glob("*.yaml"))


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or packaged recipe name), apply overrides, validate."""
    p = resolve_config_path(path)
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    return load_config_dict(raw, overrides)


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config (every default filled in) as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
