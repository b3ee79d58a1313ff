"""Run configuration: YAML files validated into typed pydantic models.

A config names its components by registry name and groups settings by stage of the data path:
``data`` -> ``views`` -> ``model`` -> ``loss`` -> ``negatives`` -> ``optim`` -> ``train`` (loop,
checkpoints, logs) -> ``eval``. Which sections and keys exist depends on ``task`` (a pydantic
discriminated union: a text-pairs run has no ``views`` and no CNN keys), so a combination the
task cannot run cannot be written. Unknown keys are errors; every error names the key by its
dotted path, the value received and what is allowed. ``--set key.sub=value`` overrides are applied to the raw YAML before
validation, so they are validated like the file.

>>> cfg = load_config_dict({"name": "t", "data": {"dataset": "digits"}}, ["optim.lr=0.01"])
>>> cfg.optim.lr
0.01
>>> try:
...     load_config_dict({"optim": {"lr": -1}})
... except ConfigError as err:
...     print(err)
invalid config:
  optim.lr: got -1; must be > 0
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

PACKAGE_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A config file or override that does not validate; the message lists every bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MixtureSource(_Strict):
    """One source of ``data.mixture``: a pairs dataset, its share, a prompt for its queries."""

    dataset: str
    weight: float = Field(default=1.0, description="share of the batches (proportional)")
    prompt: str = Field(default="", description="prepended to this source's queries")
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("weight")
    @classmethod
    def _weight(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError("needs a finite weight > 0 (a share of the batches), e.g. 1.0")
        return v


class DataConfig(_Strict):
    """What to train on.

    ``dataset`` names a source the task knows (image tasks: ``fashion_mnist``, ``digits``,
    ``image_folder`` (``root``: class folders, a flat folder or a CSV/Parquet manifest, streamed
    from disk by ``workers`` processes at ``image_size``);
    pairs: ``wordnet``, ``bible``, ``pairs_file``; image_text: ``emoji``; preference:
    ``wordnet_preference``, ``pairs_file``); ``root`` overrides where its files are.
    ``sampler`` composes the batches: ``random`` (a permutation per epoch), ``m_per_class``
    (``sampler_m`` items of each of batch / m classes: every anchor has positives) or
    ``no_duplicates`` (no two rows of a batch share a group id).
    """

    dataset: str = "fashion_mnist"
    root: str | None = None
    subset: int | None = Field(default=None, gt=0, description="use only the first N train items")
    test_subset: int | None = Field(default=None, gt=0)
    image_size: int | None = Field(
        default=None,
        ge=2,
        description="image_folder: side images are resized/cropped to "
        "(default: the first image's shorter side, at most 224)",
    )
    workers: int = Field(default=0, ge=0, description="image_folder: decoding processes")
    columns: dict[str, Any] | None = Field(
        default=None,
        description="pairs_file / hf: {query, positive, negatives: [...], id, label} column "
        "names of your data",
    )
    sampler: Literal["random", "m_per_class", "no_duplicates"] = "random"
    sampler_m: int = Field(default=4, ge=2, description="m_per_class: items per class in a batch")
    options: dict[str, Any] = Field(default_factory=dict, description="loader keyword arguments")
    mixture: list[MixtureSource] | None = Field(
        default=None,
        description="pairs: several sources in one run, [{dataset, weight, prompt, root, "
        "options}]; every batch from one source; evaluated per source (metrics "
        "'<dataset>/<metric>')",
    )
    mixture_sampling: Literal["proportional", "round_robin"] = "proportional"


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


class KeyEncoderConfig(_Strict):
    """MoCo: keys from an EMA copy of the encoder (He et al. 2020)."""

    momentum: float = Field(description="EMA momentum in [0, 1), e.g. 0.99")

    @field_validator("momentum")
    @classmethod
    def _momentum(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("needs a momentum in [0, 1), e.g. 0.99 (MoCo uses 0.99-0.999)")
        return v


class LoraConfig(_Strict):
    """LoRA adapters through ``peft`` (Hu et al. 2021): rank ``r``, scale ``alpha / r``, dropout,
    and the linear layers they go into (names ending with one of ``target_modules``: BERT's
    ``query`` / ``value``, CLIP's and SigLIP's ``q_proj`` / ``v_proj``). Every other weight of the
    model is frozen; export merges the adapters."""

    r: int = Field(default=8, gt=0)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "value", "q_proj", "v_proj"], min_length=1
    )


class FineTuneKeys(_Strict):
    """What every model section takes for fine-tuning: parameters frozen by shell-style name
    pattern (``freeze``; a pattern matching nothing, or freezing everything, stops the run) and
    LoRA adapters (``lora``)."""

    freeze: list[str] = Field(
        default_factory=list,
        description="shell-style patterns of parameter names to keep fixed, e.g. "
        "'towers.model.vision_model.*'",
    )
    lora: LoraConfig | None = None


class ImageModelConfig(FineTuneKeys):
    """An image encoder from the encoder registry (``small_cnn``, ``small_resnet``, ...) with a
    projection head (``projection_dim`` 0: none); ``options`` go to the encoder."""

    name: str = "small_cnn"
    width: int = Field(default=32, gt=0)
    out_dim: int = Field(default=128, gt=0, description="hidden width of the projection head")
    projection_dim: int = Field(default=64, ge=0)
    pool: int = Field(default=3, gt=0, description="small_cnn: side of the final pooling grid")
    key_encoder: KeyEncoderConfig | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class TextModelConfig(FineTuneKeys):
    """A text tower: ``minilm`` (the packaged pretrained MiniLM), ``tiny_text`` (a small BERT
    from scratch) or any registered text encoder; ``options`` go to it."""

    name: str = "minilm"
    options: dict[str, Any] = Field(default_factory=dict)


class CrossEncoderModelConfig(_Strict):
    """A cross-encoder (reranker): ``minilm`` (the packaged MiniLM's encoder with a fresh
    one-label head) or the path of a local Hugging Face folder; ``negatives`` scored with each
    positive per step; ``eval_candidates`` documents each held-out query ranks."""

    name: str = "minilm"
    max_length: int = Field(default=128, ge=8, description="tokens per (query, document) pair")
    negatives: int = Field(default=4, ge=1, description="negatives per query per step")
    eval_candidates: int = Field(default=16, ge=2)


class ImageTextModelConfig(FineTuneKeys):
    """Two towers (CLIP layout): ``emoji_towers``, a ``small_cnn`` image tower of ``width`` and
    a text tower (``options.text``: ``minilm`` or ``tiny_text``), both projected to ``out_dim``;
    or ``hf_clip``, a local CLIP / SigLIP folder (``options.path``) with its own towers and
    projections (``options.lock_image: true``: LiT, the image tower stays fixed)."""

    name: Literal["emoji_towers", "hf_clip"] = "emoji_towers"
    width: int = Field(default=32, gt=0)
    out_dim: int = Field(default=128, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class LossTerm(_Strict):
    """One more weighted loss term of the run (``loss.terms``): a registered loss, its weight
    and parameters; e.g. ``{name: margin_mse, weight: 0.5}`` beside ``info_nce``."""

    name: str
    weight: float = Field(default=1.0, gt=0)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from contrastkit.losses import list_losses

        if v not in list_losses():
            raise ValueError(f"unknown loss {v!r}; allowed: {', '.join(list_losses())}")
        return v

    @model_validator(mode="after")
    def _params_of_the_loss(self) -> LossTerm:
        from contrastkit.losses import check_loss_params

        try:
            check_loss_params(self.name, self.params)
        except ValueError as err:
            raise ValueError(f"loss.terms: {err}") from None
        return self


class AudioModelConfig(_Strict):
    """An audio tower from the encoder registry: ``audio_cnn`` (a small CNN over log-mel, from
    scratch; ``width``) or ``hf_audio`` (a local Hugging Face audio model folder:
    ``options.path``), ending in a projection to ``out_dim`` (L2-normalised); ``options`` go to
    the encoder (``audio_cnn``: n_mels, n_fft, hop_length, stages, sample_rate; ``hf_audio``:
    path, freeze)."""

    name: str = "audio_cnn"
    width: int = Field(default=16, gt=0, description="audio_cnn: channels of the first stage")
    out_dim: int = Field(default=128, gt=0, description="D: the projection the loss sees")
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _audio_encoder(self) -> AudioModelConfig:
        from contrastkit.encoders.registry import encoder_spec, list_encoders

        audio = [n for n in list_encoders() if encoder_spec(n).inputs == "audio"]
        if self.name not in audio:
            raise ValueError(
                f"model.name: got {self.name!r}; an audio task needs an audio encoder: "
                f"{', '.join(audio)}"
            )
        if self.name == "hf_audio" and not self.options.get("path"):
            raise ValueError(
                "model.options.path: got None; model.name: hf_audio loads a local Hugging Face "
                "audio model folder (Wav2Vec2, HuBERT, Whisper, AST): set it to that folder"
            )
        return self


class AudioTextModelConfig(AudioModelConfig):
    """Two towers (CLAP layout): the audio tower of :class:`AudioModelConfig` and a text tower
    (``text``: ``minilm``, ``tiny_text``, ``hf``), both projected to ``out_dim``;
    ``freeze_text`` keeps the text tower fixed (LiT: only its projection trains)."""

    text: TextModelConfig = Field(default_factory=lambda: TextModelConfig())
    freeze_text: bool = True


class AudioConfig(_Strict):
    """Clips and their random views (:mod:`contrastkit.data.audio_views`): every clip is
    resampled to the audio tower's rate and cropped (training: at random) or padded to
    ``clip_seconds`` with a mask; training views add noise at an SNR drawn from
    ``noise_snr_db`` (null: none), a gain in +-``gain_db`` and a circular shift of up to
    ``time_shift`` of the clip."""

    clip_seconds: float = Field(default=3.0, gt=0, le=60)
    noise_snr_db: tuple[float, float] | None = (10.0, 40.0)
    gain_db: float = Field(default=6.0, ge=0)
    time_shift: float = Field(default=0.0, ge=0, le=1)
    crop_seconds: float | None = Field(
        default=None,
        gt=0,
        description="task: audio: each view is a random crop this long of the clip (COLA); "
        "null: the whole clip",
    )

    @field_validator("noise_snr_db")
    @classmethod
    def _snr(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] <= v[1]:
            raise ValueError("needs [low, high] dB with low <= high, e.g. [10, 40], or null")
        return v


class LossConfig(_Strict):
    """Any registered loss (``contrastkit.list_losses()``) and its keyword arguments.

    ``gather_distributed`` is not a parameter here: the trainer sets it under ``torchrun``.
    """

    name: str = "nt_xent"
    params: dict[str, Any] = Field(default_factory=dict)
    learnable_temperature: bool = False
    weight: float = Field(default=1.0, gt=0, description="the weight of this term in the sum")
    terms: list[LossTerm] = Field(
        default_factory=list,
        description="pairs: more weighted terms summed with loss.name, each logged as "
        "loss/<name> (e.g. [{name: margin_mse, weight: 1.0}]); `loss:` may also be written as "
        "the list of all terms, the first being loss.name",
    )
    matryoshka_dims: list[int] | None = Field(
        default=None,
        description="Matryoshka (Kusupati et al. 2022): also train the loss on these prefix "
        "widths of the embedding (e.g. [32, 64, 128]); evaluation reports each",
    )

    @field_validator("matryoshka_dims")
    @classmethod
    def _dims(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(d <= 0 for d in v) or len(set(v)) != len(v)):
            raise ValueError("needs distinct positive widths, e.g. [32, 64, 128], or null")
        return None if v is None else sorted(v)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key, new in MOVED_LOSS_KEYS.items():
            if key in data:
                raise ValueError(f"loss.{key}: got {data[key]!r}; moved to {new}")
        params = data.get("params") or {}
        if isinstance(params, dict) and "gather_distributed" in params:
            raise ValueError(
                f"loss.params.gather_distributed: got {params['gather_distributed']!r}; the "
                "trainer sets it under torchrun (every process: local rows against the gathered "
                "columns); remove it"
            )
        return data

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        from contrastkit.losses import list_losses

        if v not in list_losses():
            raise ValueError(f"unknown loss {v!r}; allowed: {', '.join(list_losses())}")
        return v

    @model_validator(mode="after")
    def _params_of_the_loss(self) -> LossConfig:
        """``loss.params`` against the loss's own signature, when the config loads (before any
        data is read), and a learnable temperature only for a loss that has one."""
        from contrastkit.losses import check_loss_params, loss_defaults

        try:
            check_loss_params(self.name, self.params)
        except ValueError as err:
            raise ValueError(f"loss.params: {err}") from None
        if self.learnable_temperature and "temperature" not in loss_defaults(self.name):
            raise ValueError(
                f"loss.learnable_temperature: {self.name} has no temperature to learn; remove "
                "it or pick a loss with one (e.g. info_nce, nt_xent, supcon)"
            )
        return self


MOVED_LOSS_KEYS = {
    "queue_size": "negatives.queue (e.g. negatives: {queue: 4096})",
    "hard_negatives": "negatives.mining (e.g. negatives: {mining: 16})",
    "false_negative_threshold": "negatives.false_negatives: {threshold: 0.9}",
    "false_negative_mask": "negatives.false_negatives: {ids: true}",
    "key_momentum": "model.key_encoder.momentum (e.g. model: {key_encoder: {momentum: 0.99}})",
}


class FalseNegativesConfig(_Strict):
    """In-batch candidates not to push away: ``ids`` masks rows sharing a group id (a WordNet
    synset) or a duplicate text; ``threshold`` masks candidates more similar than it."""

    ids: bool = False
    threshold: float | None = None

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("needs a finite similarity, e.g. 0.9 for cosine")
        return v


class NegativesConfig(_Strict):
    """Where negatives come from besides the batch (:mod:`contrastkit.negatives`):
    ``queue`` keys of previous batches (MoCo; 0: off), ``mining`` keep each query's K hardest
    candidates (None: all), ``false_negatives`` candidates to ignore."""

    queue: int = Field(default=0, ge=0, description="past keys kept as extra negatives (0: off)")
    mining: int | None = Field(default=None, ge=1, description="hard negatives kept per query")
    false_negatives: FalseNegativesConfig = Field(default_factory=FalseNegativesConfig)


LR_FROM_SCRATCH = 1e-3
"""optim.lr when unset and the model starts from a random initialisation."""
LR_FINE_TUNE = 1e-4
"""optim.lr when unset and the model loads pretrained weights: 1e-3 degrades a pretrained
MiniLM (measured on WordNet pairs, docs/results.md)."""


class OptimConfig(_Strict):
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``. The warm-up is
    capped at ``max_warmup_fraction`` of the schedule (a short run still reaches its peak)."""

    lr: float | None = Field(
        default=None,
        gt=0,
        description="peak learning rate; unset: 1e-4 (LR_FINE_TUNE) for a model that loads "
        "pretrained weights (model.name minilm, hf, hf_text, hf_vision, hf_clip), 1e-3 (LR_FROM_SCRATCH) otherwise",
    )
    weight_decay: float = Field(default=1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=50, ge=0)
    max_warmup_fraction: float = Field(default=0.1, ge=0, le=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    batch_size: int = Field(default=256, gt=1)
    layer_decay: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="layer-wise learning-rate decay: layer l of L (embeddings 0, heads L + 1) "
        "trains at lr * layer_decay ** (L + 1 - l); unset: one rate",
    )
    centre_optimizer: Literal["sgd", "adamw"] = Field(
        default="sgd",
        description="the class centres of the identity losses (arcface, cosface, "
        "subcenter_arcface, proxy_nca, proxy_anchor): sgd (momentum 0.9, no weight decay, "
        "rate centre_lr; AdamW's per-coordinate steps make a centre whose class is rarely in "
        "the batch drift away from it: contrastkit.train.optimizer) or adamw (as the encoder)",
    )
    centre_lr: float = Field(
        default=1.0,
        gt=0,
        description="peak SGD learning rate of the class centres (centre_optimizer: sgd), on "
        "the same warm-up and schedule as lr",
    )


class TrainConfig(_Strict):
    """The loop: length, precision, logging, evaluation and checkpoint cadence."""

    max_steps: int = Field(default=1000, gt=0)
    time_budget_s: float | None = Field(
        default=None, gt=0, description="stop training after this many seconds"
    )
    fit_schedule_to_budget: bool = Field(
        default=True,
        description="with a time budget: after calibration_steps, and whenever the median "
        "recent step time predicts missing the budget by over 5 % (ahead or behind), set the "
        "schedule length to what fits it (at most max_steps)",
    )
    calibration_steps: int = Field(default=20, gt=0)
    grad_cache_chunk: int | None = Field(
        default=None,
        gt=0,
        description="pair tasks: encode the batch in chunks of this many rows with gradient "
        "caching (exact full-batch gradients at one chunk's activation memory; also under "
        "torchrun)",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="autocast dtype; auto: bf16 where the CPU/GPU runs it natively, else fp32",
    )
    threads: int | None = Field(default=None, gt=0)
    log_every: int = Field(default=10, gt=0)
    eval_every: int = Field(default=0, ge=0, description="0: evaluate only at the end")
    monitor_every: int = Field(default=50, ge=0)
    checkpoint_every: int = Field(default=200, ge=0)
    output_dir: str = "runs"
    gradient_checkpointing: bool = Field(
        default=False,
        description="recompute the transformers towers' activations in the backward pass "
        "(less memory, about a third more compute)",
    )
    tensorboard: bool = False
    progress: bool = True

    @model_validator(mode="before")
    @classmethod
    def _replaced_bf16(cls, data: Any) -> Any:
        if isinstance(data, dict) and "bf16" in data:
            old = data["bf16"]
            new = {True: "bf16", False: "fp32", "auto": "auto"}.get(old, "auto")
            raise ValueError(
                f"train.bf16: got {old!r}; replaced by train.precision (auto | bf16 | fp16 | "
                f"fp32), e.g. precision: {new}"
            )
        return data


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
    heldout: str | None = Field(
        default=None,
        description="pairs: your held-out pairs (a .jsonl/.csv/.parquet file, columns as "
        "data.columns, or a BEIR folder), evaluated before training and at the end with "
        "trec_eval's measures (nDCG@10, Recall@k, MRR@10); the training data is then used whole",
    )


IMAGE_DATASETS = ("fashion_mnist", "digits", "image_folder")
TEXT_PAIR_DATASETS = (
    "wordnet",
    "bible",
    "pairs_file",
    "beir",
    "hf",
    "wordnet_graded",
    "code_search",
)
IMAGE_TEXT_DATASETS = ("emoji", "image_folder")
PREFERENCE_DATASETS = ("wordnet_preference", "pairs_file")
IDENTITY_DATASETS = ("glyphs", "identity_folder")


class _RunBase(_Strict):
    name: str = "run"
    seed: int = 0
    loss: LossConfig = Field(default_factory=LossConfig)
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    # what the task can run: dataset names and loss inputs
    DATASETS: ClassVar[tuple[str, ...]] = ()
    INPUTS: ClassVar[tuple[str, ...]] = ()

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_as_terms(cls, v: Any) -> Any:
        """``loss: [{name, weight, params}, ...]``: the first term is loss.name, the others
        loss.terms."""
        if isinstance(v, list):
            if not v or not all(isinstance(t, dict) for t in v):
                raise ValueError(
                    "a list of loss terms needs >= 1 mapping, e.g. [{name: info_nce}, "
                    "{name: margin_mse, weight: 0.5}]"
                )
            return {**v[0], "terms": list(v[1:])}
        return v

    @model_validator(mode="after")
    def _fits_task(self) -> _RunBase:
        problems = task_problems(self)
        if problems:
            raise ValueError("\n".join(problems))
        if self.optim.lr is None:  # the saved config.yaml records the rate the run used
            self.optim.lr = LR_FINE_TUNE if self.pretrained_model() else LR_FROM_SCRATCH
        return self

    def pretrained_model(self) -> bool:
        """Whether the trained model starts from pretrained weights (sets the default lr)."""
        from contrastkit.encoders.registry import is_pretrained

        return is_pretrained(self.model.name)  # type: ignore[attr-defined]  # each run type has one


class ViewsRun(_RunBase):
    """``task: views``: two random views of each image; ``loss(z1, z2)`` (or BYOL/SimSiam with a
    predictor)."""

    task: Literal["views"] = "views"
    data: DataConfig = Field(default_factory=DataConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    model: ImageModelConfig = Field(default_factory=ImageModelConfig)
    DATASETS = IMAGE_DATASETS
    INPUTS = ("pair", "prediction")


class SupervisedRun(_RunBase):
    """``task: supervised``: two views plus labels; ``loss(embeddings (2B, D), labels (2B,))``."""

    task: Literal["supervised"]
    data: DataConfig = Field(default_factory=DataConfig)
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    model: ImageModelConfig = Field(default_factory=ImageModelConfig)
    loss: LossConfig = Field(default_factory=lambda: LossConfig(name="supcon"))
    DATASETS = IMAGE_DATASETS
    INPUTS = ("labelled",)


class PairsRun(_RunBase):
    """``task: pairs``: (query, key) text pairs through a text tower; ``loss(query, key)``."""

    task: Literal["pairs"]
    data: DataConfig = Field(default_factory=lambda: DataConfig(dataset="wordnet"))
    model: TextModelConfig = Field(default_factory=TextModelConfig)
    loss: LossConfig = Field(default_factory=lambda: LossConfig(name="info_nce"))
    DATASETS = TEXT_PAIR_DATASETS
    INPUTS = ("pair", "graded", "teacher_scores")


class ImageTextRun(_RunBase):
    """``task: image_text``: images and captions through two towers (CLIP); ``loss(image,
    text)``."""

    task: Literal["image_text"]
    data: DataConfig = Field(default_factory=lambda: DataConfig(dataset="emoji"))
    model: ImageTextModelConfig = Field(default_factory=ImageTextModelConfig)
    loss: LossConfig = Field(default_factory=lambda: LossConfig(name="info_nce"))
    DATASETS = IMAGE_TEXT_DATASETS
    INPUTS = ("pair",)

    def pretrained_model(self) -> bool:
        return self.model.name == "hf_clip" or super().pretrained_model()


class PreferenceRun(_RunBase):
    """``task: preference``: (prompt, chosen, rejected) scored by a text tower;
    ``loss(chosen_scores, rejected_scores)``."""

    task: Literal["preference"]
    data: DataConfig = Field(default_factory=lambda: DataConfig(dataset="wordnet_preference"))
    model: TextModelConfig = Field(default_factory=TextModelConfig)
    loss: LossConfig = Field(default_factory=lambda: LossConfig(name="preference"))
    DATASETS = PREFERENCE_DATASETS
    INPUTS = ("scores",)


class IdentityRun(_RunBase):
    """``task: identity``: one view of each image with its identity; ``loss(embeddings (B, D),
    labels (B,))`` (margin-softmax, proxy or pair losses: the trainer gives proxy losses
    ``num_classes`` and ``embedding_dim``); evaluated by the verification protocol on held-out
    pairs. ``data.dataset``: ``glyphs`` (the packaged glyph set) or ``identity_folder``
    (``data.root``: an LFW-layout folder of training identities, ``data.options.pairs``: a
    ``pairs.txt`` or CSV of held-out pairs)."""

    task: Literal["identity"]
    data: DataConfig = Field(default_factory=lambda: DataConfig(dataset="glyphs"))
    views: ViewsConfig = Field(default_factory=lambda: ViewsConfig(flip=0.0))
    model: ImageModelConfig = Field(default_factory=ImageModelConfig)
    loss: LossConfig = Field(default_factory=lambda: LossConfig(name="arcface"))
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig(features="projection"))
    DATASETS = IDENTITY_DATASETS
    INPUTS = ("labelled",)

    @model_validator(mode="after")
    def _identity_data(self) -> IdentityRun:
        d = self.data
        if d.dataset == "identity_folder":
            if not d.root:
                raise ValueError(
                    "data.root: got None; data.dataset: identity_folder trains on an LFW-layout "
                    "folder (root/<identity>/<images>): set data.root to it."
                )
            if not d.options.get("pairs"):
                raise ValueError(
                    f"data.options.pairs: got {d.options.get('pairs')!r}; identity_folder "
                    "evaluates on held-out pairs: set it to a pairs.txt (LFW) or CSV "
                    "(path_a, path_b, same) file."
                )
        return self


class RerankRun(_RunBase):
    """``task: rerank``: a cross-encoder scores each query's positive and its negatives;
    ``loss(logits (B, 1 + M))`` (listwise) or ``loss(logits (N,), labels (N,))`` (pointwise)."""

    task: Literal["rerank"]
    data: DataConfig = Field(default_factory=lambda: DataConfig(dataset="beir"))
    model: CrossEncoderModelConfig = Field(default_factory=CrossEncoderModelConfig)
    loss: LossConfig = Field(default_factory=lambda: LossConfig(name="listwise_ce"))
    DATASETS = TEXT_PAIR_DATASETS
    INPUTS = ("listwise", "pointwise")

    def pretrained_model(self) -> bool:
        """A cross-encoder starts from a pretrained encoder (minilm or your folder)."""
        return True


AUDIO_DATASETS = ("speech", "audio_folder")


class AudioTextRun(_RunBase):
    """``task: audio_text``: clips and their transcripts / captions through two towers (CLAP);
    ``loss(audio, text)``. ``data.dataset``: ``speech`` (the packaged espeak-ng corpus) or
    ``audio_folder`` (``data.root``: your folder or manifest)."""

    task: Literal["audio_text"]
    data: DataConfig = Field(default_factory=lambda: DataConfig(dataset="speech"))
    audio: AudioConfig = Field(default_factory=AudioConfig)
    model: AudioTextModelConfig = Field(default_factory=AudioTextModelConfig)
    loss: LossConfig = Field(default_factory=lambda: LossConfig(name="info_nce"))
    DATASETS = AUDIO_DATASETS
    INPUTS = ("pair",)


class AudioViewsRun(_RunBase):
    """``task: audio``: two random views (crops, noise, gain) of each clip (COLA, BYOL-A);
    ``loss(z1, z2)``."""

    task: Literal["audio"]
    data: DataConfig = Field(default_factory=lambda: DataConfig(dataset="speech"))
    audio: AudioConfig = Field(default_factory=lambda: AudioConfig(crop_seconds=1.0))
    model: AudioModelConfig = Field(default_factory=AudioModelConfig)
    loss: LossConfig = Field(default_factory=lambda: LossConfig(name="nt_xent"))
    DATASETS = AUDIO_DATASETS
    INPUTS = ("pair",)


RUN_TYPES: dict[str, type[_RunBase]] = {
    "views": ViewsRun,
    "supervised": SupervisedRun,
    "pairs": PairsRun,
    "image_text": ImageTextRun,
    "preference": PreferenceRun,
    "identity": IdentityRun,
    "rerank": RerankRun,
    "audio_text": AudioTextRun,
    "audio": AudioViewsRun,
}
RunConfig = Annotated[
    Union[  # noqa: UP007
        ViewsRun,
        SupervisedRun,
        PairsRun,
        ImageTextRun,
        PreferenceRun,
        IdentityRun,
        RerankRun,
        AudioTextRun,
        AudioViewsRun,
    ],
    Field(discriminator="task"),
]
"""A whole run: one of the task's config classes, chosen by ``task`` (default ``views``)."""
_RUN_ADAPTER: TypeAdapter[Any] = TypeAdapter(RunConfig)


def task_problems(cfg: _RunBase) -> list[str]:
    """What the task of ``cfg`` cannot run, one line per key (dotted path, value, fix)."""
    from contrastkit.data.sources import ROOT_REQUIRED
    from contrastkit.losses import loss_spec

    problems = []
    for i, source in enumerate(getattr(cfg.data, "mixture", None) or []):
        if cfg.task != "pairs":
            problems.append("data.mixture: only task: pairs trains on a mixture; remove it")
            break
        if source.dataset not in cfg.DATASETS:
            problems.append(
                f"data.mixture.{i}.dataset: got {source.dataset!r}; unknown source, allowed: "
                f"{', '.join(cfg.DATASETS)}"
            )
        elif not source.root and source.dataset in ROOT_REQUIRED:
            problems.append(
                f"data.mixture.{i}.root: {source.dataset!r} needs it: "
                f"{ROOT_REQUIRED[source.dataset]}."
            )
    if not cfg.data.root and cfg.data.dataset in ROOT_REQUIRED:  # before any data is read
        problems.append(
            f"data.dataset={cfg.data.dataset!r} needs data.root: {ROOT_REQUIRED[cfg.data.dataset]}."
        )
    if cfg.data.dataset not in cfg.DATASETS:
        hint = next(
            (
                f"; {cfg.data.dataset!r} belongs to task: {t}"
                for t, c in RUN_TYPES.items()
                if cfg.data.dataset in c.DATASETS
            ),
            "",
        )
        problems.append(
            f"data.dataset: got {cfg.data.dataset!r}; task: {cfg.task} trains on "
            f"{', '.join(cfg.DATASETS)}{hint}"
        )
    heldout = cfg.eval.heldout
    if heldout is not None:  # only the pairs task reads it; the file must be there now
        if cfg.task != "pairs":
            problems.append(
                f"eval.heldout: got {heldout!r}; only task: pairs evaluates a held-out pairs "
                "file; remove it"
            )
        elif not Path(heldout).exists():
            problems.append(
                f"eval.heldout: got {heldout!r}; no such file or folder; pass your held-out "
                "pairs file (.jsonl, .csv, .parquet) or a BEIR folder (contrastkit data "
                "export-beir pairs FILE DIR writes one)"
            )
    spec = loss_spec(cfg.loss.name)
    if spec.inputs not in cfg.INPUTS:
        fit = [t for t, c in RUN_TYPES.items() if spec.inputs in c.INPUTS]
        problems.append(
            f"loss.name: got {cfg.loss.name!r}; it takes {spec.inputs} inputs, task: {cfg.task} "
            f"calls its loss with {' or '.join(cfg.INPUTS)}; use task: "
            f"{' or '.join(fit) or '(none)'} or another loss"
        )
    for term in cfg.loss.terms:
        term_inputs = loss_spec(term.name).inputs
        if cfg.task != "pairs" or term_inputs not in cfg.INPUTS:
            problems.append(
                f"loss.terms: got {term.name!r}; more loss terms run with task: pairs and "
                f"losses taking {' or '.join(RUN_TYPES['pairs'].INPUTS)} inputs; remove it"
            )
    if cfg.loss.terms and cfg.train.grad_cache_chunk:
        problems.append(
            "train.grad_cache_chunk: gradient caching runs one loss; remove loss.terms or "
            "train.grad_cache_chunk"
        )
    neg = cfg.negatives
    used = {
        "negatives.queue": neg.queue or None,
        "negatives.mining": neg.mining,
        "negatives.false_negatives.threshold": neg.false_negatives.threshold,
    }
    key_encoder = getattr(cfg.model, "key_encoder", None)
    if key_encoder is not None:
        used["model.key_encoder"] = key_encoder.model_dump()
    for key, value in used.items():
        if value is not None and not spec.takes_negatives:
            problems.append(
                f"{key}: got {value!r}; loss {cfg.loss.name!r} takes no extra negatives or "
                f"ignore mask; use loss.name: info_nce or remove {key}"
            )
    if neg.false_negatives.ids and not spec.takes_negatives and cfg.task == "pairs":
        problems.append(
            f"negatives.false_negatives.ids: got True; loss {cfg.loss.name!r} takes no ignore "
            "mask; use loss.name: info_nce or remove it"
        )
    if spec.takes_negatives and neg.mining is not None:
        candidates = cfg.optim.batch_size - 1 + neg.queue
        if neg.mining > candidates:
            problems.append(
                f"negatives.mining: got {neg.mining}; a query has at most optim.batch_size - 1 "
                f"+ negatives.queue = {candidates} negatives; keep fewer "
                f"(e.g. {max(1, candidates // 4)})"
            )
    threshold = neg.false_negatives.threshold
    cosine = cfg.loss.params.get("metric", "cosine") == "cosine"
    if threshold is not None and cosine and not -1 < threshold <= 1:
        problems.append(
            f"negatives.false_negatives.threshold: got {threshold!r}; a cosine similarity in "
            "(-1, 1], e.g. 0.9 (candidates above it are ignored)"
        )
    if cfg.data.sampler == "m_per_class" and cfg.optim.batch_size % cfg.data.sampler_m:
        problems.append(
            f"data.sampler_m: got {cfg.data.sampler_m}; m_per_class needs optim.batch_size "
            f"({cfg.optim.batch_size}) divisible by it, e.g. {_divisor(cfg.optim.batch_size)}"
        )
    return problems


def _divisor(n: int) -> int:
    return next(m for m in (4, 2, 8, 3, 5, 6, 7) if n % m == 0) if n > 1 else 2


_PYDANTIC_WORDS = (
    (r"^Input should be greater than or equal to (.+)$", r"must be >= \1"),
    (r"^Input should be greater than (.+)$", r"must be > \1"),
    (r"^Input should be less than or equal to (.+)$", r"must be <= \1"),
    (r"^Input should be less than (.+)$", r"must be < \1"),
    (r"^Input should be a valid number.*$", "must be a number"),
    (r"^Input should be a valid integer.*$", "must be a whole number"),
    (r"^Input should be a valid boolean.*$", "must be true or false"),
    (r"^Input should be a valid string.*$", "must be a string (quote it)"),
    (r"^Input should be a valid list.*$", "must be a list, e.g. [1, 2]"),
    (r"^Input should be a valid dictionary.*$", "must be a mapping, e.g. {key: value}"),
    (r"^Input should be (.+)$", r"must be \1"),
    (r"^Field required$", "missing: add it"),
)


def _in_our_words(msg: str) -> str:
    """pydantic's phrasing of a failed check in the project's words.

    >>> _in_our_words("Input should be greater than 1")
    'must be > 1'
    >>> _in_our_words("Input should be a valid number, unable to parse string as a number")
    'must be a number'
    """
    import re

    for pattern, words in _PYDANTIC_WORDS:
        if re.match(pattern, msg):
            return re.sub(pattern, words, msg)
    return msg


def _format_errors(
    err: ValidationError, raw: dict[str, Any], overridden: dict[str, str] | None = None
) -> str:
    """One line per failed key; a key set by ``--set`` names that override, not the file."""
    overridden = overridden or {}
    lines = ["invalid config:"]
    for e in err.errors():
        loc = list(e["loc"])
        run_type = RUN_TYPES.get(str(loc[0])) if loc else None
        if run_type is not None:  # the union's tag comes first
            loc = loc[1:]
        path = ".".join(str(p) for p in loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            tags = ", ".join(repr(t) for t in RUN_TYPES)
            lines.append(f"  task: got {raw.get('task')!r}; allowed: {tags}")
            continue
        if msg.startswith(f"{path}." if path else ""):  # a cross-key check names its own keys
            lines.extend(f"  {line}" for line in msg.split("\n"))
            continue
        if e["type"] == "extra_forbidden":
            parent: Any = run_type
            for p in loc[:-1]:
                field = parent.model_fields.get(str(p)) if isinstance(parent, type) else None
                parent = _model_of(field.annotation) if field is not None else None
            allowed = sorted(parent.model_fields) if isinstance(parent, type) else []
            msg = f"unknown key; allowed keys here: {', '.join(allowed)}"
            if not loc[:-1] and loc and loc[-1] in ("views", "model", "data"):
                msg += f" (task: {raw.get('task', 'views')} has no such section)"
        source = f" (from --set {overridden[path]})" if path in overridden else ""
        lines.append(f"  {path}: got {e.get('input')!r}{source}; {_in_our_words(msg)}")
    return "\n".join(lines)


def _model_of(annotation: Any) -> Any:
    """The pydantic model class inside ``X`` or ``X | None``."""
    if isinstance(annotation, type):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


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
    raw.setdefault("task", "views")
    overridden = {".".join(parse_override(o)[0]): o for o in overrides or []}
    try:
        return _RUN_ADAPTER.validate_python(raw)
    except ValidationError as err:
        error = ConfigError(_format_errors(err, raw, overridden))
        error.only_overrides = (
            bool(overridden)
            and all(  # type: ignore[attr-defined]
                ".".join(str(p) for p in e["loc"][1:]) in overridden for e in err.errors()
            )
        )
        raise error from None


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
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file; pass a YAML config.") from None
    if raw is None:
        raise ConfigError(
            f"{p}: the file is empty; write a YAML mapping (e.g. `task: views`) or pass a "
            "packaged recipe name (contrastkit recipes)."
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{p}: a config is a YAML mapping (key: value) at the top level, got a "
            f"{type(raw).__name__}; e.g. `task: views`."
        )
    try:
        return load_config_dict(raw, overrides)
    except ConfigError as err:  # name the file the bad keys are in (not when --set set them)
        if getattr(err, "only_overrides", False):
            raise
        raise ConfigError(f"{p}: {err}") from None


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write the resolved config (every default filled in) as YAML, atomically."""
    from contrastkit.atomic import write_text

    write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
