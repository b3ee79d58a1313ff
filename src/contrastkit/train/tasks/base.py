"""The task protocol: what the training loop, evaluation, index and report ask of a task.

A task turns a config's data into batches, embeddings and loss terms, and says how its model
is evaluated and searched. The loop calls only the methods of :class:`Task`; a task file imports
this module and the library, never another task: what two tasks share (loading the config's
pairs or images, the from-scratch text tower's seed, eval mode) lives here or in the library.

Training::

    task.model                      nn.ModuleDict of the trainable (and EMA) modules
    task.num_train                  training items (what the sampler draws from)
    task.train_labels / train_groups  (N,) class labels / duplicate groups for the samplers, or None
    task.batch(indices, generator)  the batch of these items (views drawn from generator)
    task.loss_terms(batch, loss)    -> Step: named loss terms (summed) + embeddings to monitor
    task.after_step(step, total)    EMA updates (BYOL teacher, MoCo key encoder)
    task.distribute(wrap)           under torchrun: True when loss_terms runs its own backward
                                    (gradient caching) through modules it wrapped with wrap (DDP)

Evaluation, search, serving and the report::

    task.baseline()                 -> EvalResult | None, before training (raw input or initial model)
    task.evaluate(quick=False)      -> EvalResult of the current model
    task.query_kinds                ("image",), ("text",) or ("text", "image")
    task.embed_texts(texts, side)   N texts -> (N, D) (a ValueError without "text" in query_kinds)
    task.embed_images(images)       (N, C, H, W) -> (N, D) (a ValueError without "image")
    task.image_shape                (C, H, W) the image side takes, or None without one
    task.class_names                label names (the report's projection), [] without labels
    task.corpus_size(); task.embed_corpus_chunk(start, stop) -> Corpus (index streaming);
    task.embed_corpus() -> Corpus; task.examples(n); task.embed_query(q)
    task.corpus_items()             the corpus images (C, H, W) by index position, or None (text)

Export::

    task.encoder_spec               (registry name, options) of export_towers().encoder, or None
    task.export_towers()            -> ExportTowers: the text towers, the image tower and the
                                    registered encoder, each embedding as the task does

Serving (:mod:`contrastkit.serve.embedder`), export (:mod:`contrastkit.export`) and the report
call these members only; a task gives its own answers, never its model's keys.

Shapes: B batch, D embedding dim, N corpus, C x H x W images.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from contrastkit.data import TextPairs
from contrastkit.data._common import drop_texts
from contrastkit.data.image_source import FolderImages, MemoryImages, open_images
from contrastkit.data.sources import TEXT_PAIR_SOURCES, load_source
from contrastkit.data.views import SimCLRViews
from contrastkit.encoders import ENCODERS, create_encoder, list_encoders

USER_PAIR_SOURCES = ("pairs_file", "hf")  # the sources whose columns data.columns names


@dataclass
class EvalResult:
    """Metrics of one evaluation, and arrays the report plots.

    ``metrics`` are the quality figures (compared with the baseline in the report); ``counts``
    are sizes such as the corpus size, shown apart from them.
    """

    metrics: dict[str, float]
    name: str = "model"
    arrays: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Corpus:
    """What an index holds: embeddings (N, D) and, per item, a label/text for display."""

    embeddings: Tensor
    labels: list[str]
    items: list[Any]  # image tensors (C, H, W) or strings


@dataclass
class Step:
    """The result of one forward pass: named loss terms (their sum is minimised), the two
    embedding batches ((B, D) each, or None) that the collapse monitor reads, and counts the
    loop logs with the step (e.g. ``skipped_files`` of an image folder)."""

    terms: dict[str, Tensor]
    embeddings: tuple[Tensor, Tensor] | None = None
    counts: dict[str, int] = field(default_factory=dict)  # logged per step (skipped files)

    @property
    def loss(self) -> Tensor:
        return sum(self.terms.values())  # type: ignore[return-value]


@dataclass
class ExportTowers:
    """What export writes of a task, each module embedding as the task itself does.

    Attributes:
        text: tower name (``""`` for one shared tower; ``"query"`` / ``"document"`` for separate
            ones) -> (text encoder, projection or None). The embedding of ``texts`` is the
            encoder's, followed by ``projection`` and L2 normalisation when there is one:
            :meth:`Task.embed_texts`.
        image: ``images (B, C, H, W)`` in [0, 1] -> (B, D), as :meth:`Task.embed_images`; None
            without an image side.
        encoder: the registered encoder that ``task.encoder_spec`` rebuilds (safetensors
            export, :func:`contrastkit.load_encoder`), or None.
        cross_encoder: a :class:`~contrastkit.encoders.cross_encoder.CrossEncoder` (a reranker
            run), written as a ``sentence_transformers.CrossEncoder`` folder, or None.
        pretrained: a model whose ``save_pretrained(folder)`` writes a transformers folder
            (a CLIP / SigLIP checkpoint: ``export --format hf``), or None.
        audio: ``(waveform (B, T), mask (B, T))`` at the task's ``sample_rate`` -> (B, D), as
            ``task.embed_audio``; None without an audio side.
    """

    text: dict[str, tuple[nn.Module, nn.Linear | None]] = field(default_factory=dict)
    image: nn.Module | None = None
    encoder: nn.Module | None = None
    cross_encoder: nn.Module | None = None
    pretrained: nn.Module | None = None  # a checkpoint with save_pretrained (export --format hf)
    audio: nn.Module | None = None  # (waveform (B, T), mask (B, T)) -> (B, D), as embed_audio


class CallMethod(nn.Module):
    """``forward(x) = getattr(module, method)(x)``: a module's named embedding (e.g. a projected
    encoder's ``embed``, the image-text towers' ``encode_image``) as a module of its own, for
    export."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module, self.method = module, method

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self.module, self.method)(x)


@runtime_checkable
class Task(Protocol):
    """The protocol every task implements (see the module docstring)."""

    name: ClassVar[str]
    query_kinds: ClassVar[tuple[str, ...]]
    model: nn.ModuleDict
    num_train: int
    train_labels: Tensor | None
    train_groups: Tensor | None

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]: ...

    def loss_terms(self, batch: dict[str, Any], loss: nn.Module) -> Step: ...

    def after_step(self, step: int, total_steps: int) -> None: ...

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> bool:
        """Under ``torchrun``, before the first step. ``False``: the loop wraps the whole step
        (task modules + loss) in one ``DistributedDataParallel``. ``True``: ``loss_terms`` runs
        the backward itself (gradient caching, whose chunked backward DDP cannot run inside its
        forward) through the modules it passed to ``wrap`` (the loop's DDP factory); the loop
        then averages the gradients of every other trainable parameter (the loss's
        temperature) across the processes itself."""
        ...

    def baseline(self) -> EvalResult | None: ...

    def evaluate(self, *, quick: bool = False) -> EvalResult: ...

    def corpus_size(self) -> int: ...

    def embed_corpus_chunk(self, start: int, stop: int) -> Corpus: ...

    def embed_corpus(self) -> Corpus: ...

    def embed_query(self, query: str) -> tuple[Tensor, Any]: ...

    def examples(self, n: int = 8) -> list[tuple[Any, str]]: ...

    # -- what serve, export and the report ask ---------------------------------------------
    class_names: list[str]
    encoder_spec: tuple[str, dict[str, Any]] | None

    @property
    def image_shape(self) -> tuple[int, int, int] | None: ...

    def embed_texts(self, texts: list[str], side: str = "query") -> Tensor: ...

    def embed_images(self, images: Tensor) -> Tensor: ...

    def corpus_items(self) -> Sequence[Tensor] | None: ...

    def export_towers(self) -> ExportTowers: ...


class BackwardAfterLossTerms:
    """:meth:`Task.distribute` of a task whose backward runs after ``loss_terms`` (every task
    without gradient caching): the loop wraps the whole step in one ``DistributedDataParallel``."""

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> bool:
        return False


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(module):`` runs the block with ``module`` in eval mode (dropout off,
    BatchNorm on its running statistics) and restores its training flag afterwards, also when
    the block raises."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


class TextQueries:
    """The protocol's image members for a task without an image side."""

    image_shape: ClassVar[None] = None

    def embed_images(self, images: Tensor) -> Tensor:
        raise ValueError(
            f"images: this run ({type(self).__name__}) embeds text only; pass texts to embed_texts."
        )

    def corpus_items(self) -> Sequence[Tensor] | None:
        """None: the corpus is text (its items are the index metadata's snippets)."""
        return None


def chunked(fn: Any, x: Tensor, chunk: int = 2048) -> Tensor:
    """``fn`` over ``x`` in row chunks (channels-last for images), float32, concatenated."""
    parts = []
    for i in range(0, x.shape[0], chunk):
        part = x[i : i + chunk]
        if part.ndim == 4:
            part = part.contiguous(memory_format=torch.channels_last)
        parts.append(fn(part).float())
    return torch.cat(parts)


def check_loss_inputs(task: str, loss_name: str, inputs: str, allowed: tuple[str, ...]) -> None:
    """Raise when the loss takes inputs the task does not produce (the config checks it too)."""
    if inputs not in allowed:
        raise ValueError(
            f"loss.name={loss_name!r} takes {inputs} inputs; task: {task} calls its loss with "
            f"{' or '.join(allowed)}."
        )


# -- what tasks share: loading the config's data, building its encoders ---------------------
def load_text_pairs(
    cfg: Any, *, drop_heldout_keys: bool = False, split: str = "train"
) -> tuple[TextPairs, TextPairs]:
    """(train, test) :class:`~contrastkit.data.TextPairs` of ``cfg.data``: the source
    ``data.dataset`` with ``data.options``, your column names (``data.columns``, for
    ``pairs_file`` / ``hf``), then ``data.subset`` / ``data.test_subset``. ``split="all"``
    trains on every row (your own held-out file evaluates: ``eval.heldout``).

    ``drop_heldout_keys``: drop the training rows whose key is also a held-out key (and such texts
    among their hard negatives), before the subset: retrieval evaluation then never asks for a
    key the model was trained on."""
    d = cfg.data
    kw: dict[str, Any] = {"root": d.root, **d.options}
    if d.columns is not None:
        if d.dataset not in USER_PAIR_SOURCES:
            raise ValueError(
                f"data.columns: got {d.columns!r}; it maps the columns of your own data "
                f"(data.dataset: pairs_file or hf), not of {d.dataset!r}; remove it."
            )
        kw["columns"] = d.columns
    train = load_source(TEXT_PAIR_SOURCES, d.dataset, split, **kw)
    test = load_source(TEXT_PAIR_SOURCES, d.dataset, "test", **kw)
    if drop_heldout_keys:
        train = drop_texts(train, set(test.positive))
    if d.subset:
        train = train.subset(torch.arange(min(d.subset, len(train))))
    if d.test_subset:
        test = test.subset(torch.arange(min(d.test_subset, len(test))))
    return train, test


def text_encoder_spec(name: str, options: dict[str, Any], seed: int) -> tuple[str, dict[str, Any]]:
    """(registry name, options) of a text tower: a from-scratch tower (``tiny_text``) gets the
    run's ``seed`` unless its options set one, so a run and its reload build the same weights;
    export writes the same pair, so ``load_encoder`` rebuilds it."""
    opts = dict(options)
    if name == "tiny_text":
        opts.setdefault("seed", seed)
    return name, opts


def build_text_encoder(spec: tuple[str, dict[str, Any]]) -> nn.Module:
    """The text encoder of :func:`text_encoder_spec`, from the encoder registry."""
    name, opts = spec
    try:
        return create_encoder(name, **opts)
    except TypeError as err:
        raise ValueError(f"model.options for {name!r}: {err}") from None


def load_images(cfg: Any, split: str) -> MemoryImages | FolderImages:
    """The ``split`` of ``cfg.data`` as an image source: a packaged set in memory (the first
    ``data.subset`` / ``data.test_subset`` items), or an image folder streamed from disk."""
    d = cfg.data
    return open_images(
        d.dataset,
        split,
        root=d.root,
        options=d.options,
        limit=d.subset if split == "train" else d.test_subset,
        image_size=d.image_size,
        workers=d.workers,
        seed=cfg.seed,
    )


# -- what the image tasks share: views and the projected encoder ---------------------------
def build_views(views: Any, images: Tensor | tuple[int, int, int]) -> SimCLRViews:
    """The kornia :class:`~contrastkit.data.SimCLRViews` of the ``views:`` config section for
    square images shaped like ``images`` (B, C, H, H), or of that (C, H, W) shape."""
    shape = tuple(images) if isinstance(images, tuple) else tuple(images.shape[1:])
    channels, height, size = shape
    if height != size:
        raise ValueError(
            f"image tasks need square images for their views, got {(height, size)}; "
            "resize the dataset to H x H."
        )
    return SimCLRViews(
        size=size,
        channels=channels,
        strength=views.strength,
        crop_scale=views.crop_scale,
        crop_ratio=views.crop_ratio,
        flip=views.flip,
        jitter_p=views.jitter_p,
        blur=views.blur,
        noise=views.noise,
    )


def image_encoder_spec(model: Any, channels: int, size: int) -> dict[str, Any]:
    """The encoder registry's ``projected`` options for ``model.name`` on ``channels``-channel
    ``size`` x ``size`` images, with a 3-layer BatchNorm projection head to
    ``model.projection_dim`` (0: none). Export writes the same options, so ``load_encoder``
    rebuilds the encoder without the run."""
    names = list_encoders()  # imports (registers) every encoder
    if model.name not in names:
        raise ValueError(
            f"model.name={model.name!r} is not a registered encoder; allowed: {', '.join(names)}."
        )
    accepted = inspect.signature(ENCODERS.get(model.name)).parameters
    options: dict[str, Any] = {"in_channels": channels, "width": model.width, "image_size": size}
    if "pool" in accepted:
        options["pool"] = min(model.pool, max(1, size // 4))
    options = {k: v for k, v in options.items() if k in accepted}
    options.update(model.options)
    head = None
    if model.projection_dim:
        head = {
            "hidden_features": model.out_dim,
            "out_features": model.projection_dim,
            "num_layers": 3,
        }
    return {"backbone": model.name, "backbone_options": options, "head": head}


def build_image_encoder(spec: dict[str, Any]) -> nn.Module:
    """The ``projected`` encoder of :func:`image_encoder_spec`, channels-last (oneDNN's fast
    convolution path on CPU)."""
    try:
        encoder = create_encoder("projected", **spec)
    except TypeError as err:
        raise ValueError(f"model.options for {spec['backbone']!r}: {err}") from None
    return encoder.to(memory_format=torch.channels_last)


class ImageCorpus:
    """Index and search over a task's training images, shared by the image tasks: the corpus
    is ``self.train_set`` (positions = rows), embedded by ``self.features``, labelled by
    ``self._label_name``; queries are image files resized to ``self.image_shape``."""

    train_set: Any
    image_shape: tuple[int, int, int]

    def features(self, images: Tensor) -> Tensor:  # pragma: no cover - the task's own
        raise NotImplementedError

    def _label_name(self, label: int) -> str:  # pragma: no cover - the task's own
        raise NotImplementedError

    def corpus_size(self) -> int:
        """The corpus is the training images (positions = rows)."""
        return len(self.train_set)

    def embed_corpus_chunk(self, start: int, stop: int) -> Corpus:
        """Rows ``start:stop`` of the corpus; folder runs carry each file's path as text."""
        emb = self.features(self.train_set.rows(start, stop))
        labels = self.train_set.labels[start:stop]
        items: list[Any] = [""] * len(emb)
        if isinstance(self.train_set, FolderImages):  # decode this chunk's keys only
            items = [self.train_set.files.key(i) for i in range(start, start + len(emb))]
        return Corpus(emb, [self._label_name(int(y)) for y in labels], items)

    def embed_corpus(self) -> Corpus:
        return self.embed_corpus_chunk(0, self.corpus_size())

    def corpus_items(self) -> Any:
        """The corpus images, indexed like the index's positions ((C, H, W) each)."""
        from contrastkit.data.image_source import Items

        return Items(self.train_set)

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        """An image file -> (its (1, D) embedding, the (C, H, W) image)."""
        from pathlib import Path

        from contrastkit.data.images import load_image

        if not Path(query).exists():
            raise ValueError(
                f"query {query!r}: this run embeds images; pass the path of an image file "
                "(PNG/JPEG), it is converted and resized to the training size."
            )
        c, h, w = self.image_shape
        x = load_image(query, channels=c, size=(h, w))
        return self.features(x[None]), x
