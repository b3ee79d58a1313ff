"""Tasks: how a config's data becomes batches, embeddings and loss terms.

A task owns the trainable modules (``task.model``, an ``nn.ModuleDict``) and answers four
questions the loop and the evaluation ask:

* ``batch(indices, generator)``: the training batch for these item indices (views are drawn from
  ``generator`` so a resumed run draws the same views);
* ``loss_terms(batch, loss_fn)``: the named loss terms (summed for the backward pass) and the two
  embedding batches (B, D) that the monitors look at;
* ``evaluate()``: frozen-embedding metrics plus the raw/untrained baseline;
* ``embed_corpus()`` / ``embed_query(text_or_path)``: what the index holds and how a query is
  embedded for search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.train import components
from contrastkit.train.config import RunConfig
from contrastkit.train.monitor import pos_neg_similarities


@dataclass
class EvalResult:
    """Metrics of one evaluation, the baseline's, and arrays the report plots."""

    metrics: dict[str, float]
    baseline: dict[str, float] = field(default_factory=dict)
    baseline_name: str = "raw input"
    arrays: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Corpus:
    """What an index holds: embeddings (N, D) and, per item, a label/text for display."""

    embeddings: Tensor
    labels: list[str]
    items: list[Any]  # image tensors (C, H, W) or strings


def knn_accuracy(
    train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, *, k: int
) -> float:
    """Weighted 20-NN accuracy of ``test`` over ``train`` (:func:`contrastkit.eval.knn_accuracy`:
    each neighbour votes ``exp(cosine / 0.07)``)."""
    from contrastkit.eval import knn_accuracy as knn

    return knn(test, test_labels, train, train_labels, k=k, temperature=0.07, metric="cosine")


def linear_probe_accuracy(
    train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor
) -> float:
    """Logistic-regression probe on frozen features (:func:`contrastkit.eval.linear_probe`)."""
    from contrastkit.eval import linear_probe

    result = linear_probe(
        train.float(), train_labels, test.float(), test_labels, weight_decays=(1e-4,), max_iter=100
    )
    return float(result.accuracy)


def _chunked(fn: Any, x: Tensor, chunk: int = 2048) -> Tensor:
    parts = []
    for i in range(0, x.shape[0], chunk):
        part = x[i : i + chunk]
        if part.ndim == 4:
            part = part.contiguous(memory_format=torch.channels_last)
        parts.append(fn(part).float())
    return torch.cat(parts)


class ImageTask:
    """Two random views per image: SimCLR-style (``views``) or with labels (``supervised``)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        loader = components.IMAGE_DATASETS.get(cfg.data.dataset)
        if loader is None:
            raise ValueError(
                f"data.dataset={cfg.data.dataset!r} is not an image dataset for task "
                f"{cfg.task!r}; allowed: {', '.join(components.IMAGE_DATASETS)}."
            )
        kwargs = {"root": cfg.data.root} if cfg.data.root else {}
        self.train_set = loader("train", **kwargs)
        self.test_set = loader("test", **kwargs)
        if cfg.data.subset:
            self.train_set = _subset(self.train_set, cfg.data.subset)
        if cfg.data.test_subset:
            self.test_set = _subset(self.test_set, cfg.data.test_subset)
        self.views = components.build_views(cfg.views, self.train_set.images)
        if cfg.model.name != "small_cnn":
            raise ValueError(
                f"model.name={cfg.model.name!r} is not an image encoder; allowed: 'small_cnn'."
            )
        encoder = components.SmallCNN(
            in_channels=self.train_set.images.shape[1],
            width=cfg.model.width,
            out_dim=cfg.model.out_dim,
            projection_dim=cfg.model.projection_dim,
            pool=min(cfg.model.pool, self.train_set.images.shape[-1] // 4),
        )
        # channels-last memory layout: oneDNN's fast convolution path on CPU
        encoder = encoder.to(memory_format=torch.channels_last)
        self.model = nn.ModuleDict({"encoder": encoder})
        # BYOL / SimSiam: a predictor on the online branch; BYOL's targets come from an EMA teacher
        if cfg.loss.name in PREDICTOR_LOSSES:
            from contrastkit.encoders.heads import PredictionHead
            from contrastkit.encoders.momentum import MomentumEncoder

            dim = cfg.model.projection_dim or encoder.out_features
            self.model["predictor"] = PredictionHead(dim, max(dim // 4, 16))
            if cfg.loss.name == "byol":
                self.model["teacher"] = MomentumEncoder(encoder, momentum=self.momentum)
        # MoCo: keys from an EMA copy of the encoder (loss.key_momentum; the config allows it
        # only with a loss(query, key) such as info_nce)
        if cfg.loss.key_momentum is not None:
            from contrastkit.encoders.momentum import MomentumEncoder

            self.model["key_encoder"] = MomentumEncoder(encoder, momentum=cfg.loss.key_momentum)
        self.num_train = len(self.train_set)
        self.class_names = list(self.train_set.classes)

    # -- training ---------------------------------------------------------------------------
    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``views`` (2B, C, H, W), view-major (all first views, then all second views), drawn
        from ``generator``; ``labels`` (B,); ``ids`` (B,) the items' rows in the train set."""
        images = self.train_set.images[indices]  # (B, C, H, W)
        views = self.views(images, n_views=2, generator=generator)  # (2, B, C, H, W)
        views = views.flatten(0, 1).contiguous(memory_format=torch.channels_last)  # (2B, C, H, W)
        return {"views": views, "labels": self.train_set.labels[indices], "ids": indices}

    def loss_terms(
        self, batch: dict[str, Tensor], loss_fn: nn.Module
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor]]:
        if "key_encoder" in self.model:  # MoCo: query = online(view 1), key = EMA copy(view 2)
            b = batch["views"].shape[0] // 2
            query = self.model["encoder"](batch["views"][:b]).float()  # (B, D)
            with torch.no_grad():
                key = self.model["key_encoder"](batch["views"][b:]).float()  # (B, D)
            return {self.cfg.loss.name: loss_fn(query, key)}, (query, key)
        z = self.model["encoder"](batch["views"])  # (2B, D)
        z1, z2 = z.float().chunk(2)  # (B, D) each
        if "predictor" in self.model:  # BYOL / SimSiam: predict the other view's target
            p1, p2 = self.model["predictor"](z).float().chunk(2)
            if "teacher" in self.model:
                with torch.no_grad():
                    t1, t2 = self.model["teacher"](batch["views"]).float().chunk(2)
            else:
                t1, t2 = z1, z2  # the loss applies the stop-gradient
            return {self.cfg.loss.name: loss_fn(p1, p2, t1, t2)}, (z1, z2)
        if self.cfg.task == "supervised":
            labels = batch["labels"]
            if self.cfg.loss.name == "supcon":
                loss = loss_fn(torch.stack([z1, z2], dim=1), labels)  # (B, 2, D)
            else:  # label-based metric losses: both views as (2B, D) items
                loss = loss_fn(torch.cat([z1, z2]), torch.cat([labels, labels]))
        elif _takes_labels(loss_fn):
            raise ValueError(
                f"loss.name={self.cfg.loss.name!r} needs labels; use task: supervised."
            )
        else:
            loss = loss_fn(z1, z2)
        return {self.cfg.loss.name: loss}, (z1, z2)

    momentum = 0.99

    def after_step(self, step: int, total_steps: int) -> None:
        """BYOL: move the teacher towards the online encoder (momentum 0.99 -> 1, cosine).
        MoCo: move the key encoder towards it with the constant ``loss.key_momentum``."""
        if "key_encoder" in self.model:
            self.model["key_encoder"].update(self.model["encoder"])
        if "teacher" in self.model:
            from contrastkit.encoders.momentum import cosine_momentum

            m = cosine_momentum(step, total_steps, base=self.momentum)
            self.model["teacher"].update(self.model["encoder"], min(m, 0.999999))

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        enc = self.model["encoder"]
        was_training = enc.training
        enc.eval()
        fn = enc.embed if self.cfg.eval.features == "backbone" else enc
        out = _chunked(fn, images)
        enc.train(was_training)
        return out

    @torch.no_grad()
    def evaluate(self, *, baseline: bool = True, quick: bool = False) -> EvalResult:
        e = self.cfg.eval
        train, test = self.train_set, self.test_set
        if quick:  # periodic evaluation: kNN on a fixed train subset only
            n = min(e.periodic_subset, len(train))
            tr = self.features(train.images[:n])
            te = self.features(test.images)
            k = min(e.knn_k, n)
            return EvalResult({"knn": knn_accuracy(tr, train.labels[:n], te, test.labels, k=k)})
        tr, te = self.features(train.images), self.features(test.images)
        k = min(e.knn_k, len(train))
        metrics = {"knn": knn_accuracy(tr, train.labels, te, test.labels, k=k)}
        if e.probe:
            metrics["probe"] = linear_probe_accuracy(tr, train.labels, te, test.labels)
        base: dict[str, float] = {}
        if baseline and e.raw_baseline:
            rtr, rte = train.images.flatten(1), test.images.flatten(1)
            base["knn"] = knn_accuracy(rtr, train.labels, rte, test.labels, k=k)
            if e.probe:
                base["probe"] = linear_probe_accuracy(rtr, train.labels, rte, test.labels)
        # positive (two views of one test image) vs negative (different images) similarities
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        sample = test.images[:1000]
        enc = self.model["encoder"]
        was_training = enc.training
        enc.eval()
        views = self.views(sample, n_views=2, generator=g)  # (2, N, C, H, W)
        v1, v2 = enc(views[0]), enc(views[1])
        enc.train(was_training)
        pos, neg = pos_neg_similarities(v1, v2)
        arrays = {"test_embeddings": te, "test_labels": test.labels, "pos_sim": pos, "neg_sim": neg}
        return EvalResult(metrics, base, "raw pixels", arrays)

    # -- index and search -------------------------------------------------------------------
    def embed_corpus(self) -> Corpus:
        ds = self.train_set
        emb = self.features(ds.images)
        return Corpus(emb, [ds.classes[int(y)] for y in ds.labels], [""] * len(ds))

    def corpus_items(self) -> Tensor:
        """The corpus images (N, C, H, W), indexed like the index's positions."""
        return self.train_set.images

    query_kinds = ("image",)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the encoder takes."""
        c, h, w = self.train_set.images.shape[1:]
        return int(c), int(h), int(w)

    def embed_images(self, images: Tensor) -> Tensor:
        """images: (N, C, H, W) float in [0, 1] -> (N, D) float32 (eval mode)."""
        return self.features(images)

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        from contrastkit.data.images import load_image

        if not Path(query).exists():
            raise ValueError(
                f"query {query!r}: this run embeds images; pass the path of an image file "
                "(PNG/JPEG), it is converted and resized to the training size."
            )
        c, h, w = self.image_shape
        x = load_image(query, channels=c, size=(h, w))
        return self.features(x[None]), x

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        ds = self.test_set
        return [(ds.images[i], ds.classes[int(ds.labels[i])]) for i in range(n)]


PREDICTOR_LOSSES = ("byol", "simsiam")


def _takes_labels(loss: Any) -> bool:
    """Whether a loss module (or class) is called as ``loss(embeddings, labels)``."""
    import inspect

    params = [p for p in inspect.signature(loss.forward).parameters if p != "self"]
    return len(params) > 1 and params[1] == "labels"


def _subset(ds: components.ImageDataset, n: int) -> components.ImageDataset:
    return ds.subset(torch.arange(min(n, len(ds))))


def build_task(cfg: RunConfig) -> Any:
    """The task object for ``cfg.task`` and ``cfg.data.dataset``."""
    if cfg.task in ("views", "supervised"):
        return ImageTask(cfg)
    from contrastkit.train import pair_tasks

    if cfg.task == "preference":
        return pair_tasks.PreferenceTask(cfg)
    if cfg.data.dataset == "emoji":
        return pair_tasks.ImageTextTask(cfg)
    return pair_tasks.TextPairsTask(cfg)
