"""Image tasks: two random views of each image, SimCLR-style (``views``) or with labels
(``supervised``).

The encoder comes from the encoder registry (``model.name``) with a projection head
(:class:`contrastkit.encoders.ProjectedEncoder`); evaluation reads the backbone features
(``eval.features: backbone``). Views are kornia's :class:`contrastkit.data.SimCLRViews`, drawn
from the loop's generator so a resumed run draws the same views. BYOL / SimSiam losses (inputs
``prediction``) get a predictor head, BYOL an EMA teacher; ``model.key_encoder`` builds MoCo's
momentum key encoder.

Shapes: B batch, V views, C x H x W images, D embedding dim.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from contrastkit.data.sources import IMAGE_SOURCES, load_source
from contrastkit.data.views import SimCLRViews
from contrastkit.encoders import (
    ENCODERS,
    MomentumEncoder,
    PredictionHead,
    ProjectedEncoder,
    ProjectionHead,
    cosine_momentum,
    list_encoders,
)
from contrastkit.eval import knn_accuracy, linear_probe
from contrastkit.losses import loss_spec
from contrastkit.monitor.functional import positive_negative_similarities
from contrastkit.train.tasks.base import Corpus, EvalResult, Step, check_loss_inputs, chunked

BYOL_MOMENTUM = 0.99  # the teacher's starting momentum, raised to 1 on a cosine


def build_views(views: Any, images: Tensor) -> SimCLRViews:
    """The kornia :class:`~contrastkit.data.SimCLRViews` of the ``views:`` config section for
    square images shaped like ``images`` (B, C, H, H)."""
    size, channels = images.shape[-1], images.shape[1]
    if images.shape[-2] != size:
        raise ValueError(
            f"image tasks need square images for their views, got {tuple(images.shape[-2:])}; "
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


def build_image_encoder(model: Any, channels: int, size: int) -> ProjectedEncoder:
    """``model.name`` from the encoder registry for ``channels``-channel ``size`` x ``size``
    images, with a 3-layer BatchNorm projection head to ``model.projection_dim`` (0: none)."""
    names = list_encoders()  # imports (registers) every encoder
    if model.name not in names:
        raise ValueError(
            f"model.name={model.name!r} is not a registered encoder; allowed: {', '.join(names)}."
        )
    factory = ENCODERS.get(model.name)
    accepted = inspect.signature(factory).parameters
    kwargs: dict[str, Any] = {"in_channels": channels, "width": model.width}
    if "pool" in accepted:
        kwargs["pool"] = min(model.pool, max(1, size // 4))
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    kwargs.update(model.options)
    try:
        backbone = factory(**kwargs)
    except TypeError as err:
        raise ValueError(f"model.options for {model.name!r}: {err}") from None
    head = None
    if model.projection_dim:
        head = ProjectionHead(
            backbone.out_features, model.out_dim, model.projection_dim, num_layers=3
        )
    # channels-last memory layout: oneDNN's fast convolution path on CPU
    return ProjectedEncoder(backbone, head).to(memory_format=torch.channels_last)


class ImageTask:
    """``views`` and ``supervised``: two random views per image."""

    name: ClassVar[str] = "views"
    config_sections: ClassVar[tuple[str, ...]] = (
        "data",
        "views",
        "model",
        "loss",
        "negatives",
        "optim",
        "train",
        "eval",
    )
    query_kinds: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        d = cfg.data
        kw = {"root": d.root, **d.options}
        self.train_set = load_source(IMAGE_SOURCES, d.dataset, "train", **kw)
        self.test_set = load_source(IMAGE_SOURCES, d.dataset, "test", **kw)
        if d.subset:
            self.train_set = self.train_set.subset(torch.arange(min(d.subset, len(self.train_set))))
        if d.test_subset:
            n = min(d.test_subset, len(self.test_set))
            self.test_set = self.test_set.subset(torch.arange(n))
        self.views = build_views(cfg.views, self.train_set.images)
        self.spec = loss_spec(cfg.loss.name)
        allowed = ("labelled",) if cfg.task == "supervised" else ("pair", "prediction")
        check_loss_inputs(cfg.task, cfg.loss.name, self.spec.inputs, allowed)
        c, h, _ = self.image_shape
        encoder = build_image_encoder(cfg.model, c, h)
        self.model = nn.ModuleDict({"encoder": encoder})
        if self.spec.inputs == "prediction":  # BYOL / SimSiam: predict the other view's target
            dim = encoder.out_features
            self.model["predictor"] = PredictionHead(dim, max(dim // 4, 16))
            if self.spec.momentum_teacher:
                self.model["teacher"] = MomentumEncoder(encoder, momentum=BYOL_MOMENTUM)
        if cfg.model.key_encoder is not None:  # MoCo: keys from an EMA copy of the encoder
            m = cfg.model.key_encoder.momentum
            self.model["key_encoder"] = MomentumEncoder(encoder, momentum=m)
        self.num_train = len(self.train_set)
        self.train_labels: Tensor | None = self.train_set.labels
        self.train_groups: Tensor | None = None
        self.class_names = list(self.train_set.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the encoder takes."""
        c, h, w = self.train_set.images.shape[1:]
        return int(c), int(h), int(w)

    # -- training ---------------------------------------------------------------------------
    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``views`` (2B, C, H, W), view-major, drawn from ``generator``; ``labels`` (B,);
        ``ids`` (B,) the items' rows in the train set."""
        images = self.train_set.images[indices]  # (B, C, H, W)
        views = self.views(images, n_views=2, generator=generator)  # (2, B, C, H, W)
        views = views.flatten(0, 1).contiguous(memory_format=torch.channels_last)  # (2B, C, H, W)
        return {"views": views, "labels": self.train_set.labels[indices], "ids": indices}

    def loss_terms(self, batch: dict[str, Tensor], loss: nn.Module) -> Step:
        name, views = self.cfg.loss.name, batch["views"]
        b = views.shape[0] // 2
        if "key_encoder" in self.model:  # MoCo: query = online(view 1), key = EMA copy(view 2)
            query = self.model["encoder"](views[:b]).float()  # (B, D)
            with torch.no_grad():
                key = self.model["key_encoder"](views[b:]).float()  # (B, D)
            return Step({name: _call(loss, query, key, ids=batch["ids"])}, (query, key))
        z = self.model["encoder"](views)  # (2B, D)
        z1, z2 = z.float().chunk(2)  # (B, D) each
        if self.spec.inputs == "prediction":
            p1, p2 = self.model["predictor"](z).float().chunk(2)
            if "teacher" in self.model:
                with torch.no_grad():
                    t1, t2 = self.model["teacher"](views).float().chunk(2)
            else:
                t1, t2 = z1, z2  # the loss applies the stop-gradient
            return Step({name: loss(p1, p2, t1, t2)}, (z1, z2))
        if self.spec.inputs == "labelled":  # both views as (2B, D) items with their labels
            labels = batch["labels"]
            return Step({name: loss(torch.cat([z1, z2]), torch.cat([labels, labels]))}, (z1, z2))
        return Step({name: _call(loss, z1, z2, ids=batch["ids"])}, (z1, z2))

    def after_step(self, step: int, total_steps: int) -> None:
        """BYOL: move the teacher towards the online encoder (momentum 0.99 -> 1, cosine).
        MoCo: move the key encoder towards it with ``model.key_encoder.momentum``."""
        if "key_encoder" in self.model:
            self.model["key_encoder"].update(self.model["encoder"])
        if "teacher" in self.model:
            m = cosine_momentum(step, total_steps, base=BYOL_MOMENTUM)
            self.model["teacher"].update(self.model["encoder"], min(m, 0.999999))

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, F) backbone features (or the projection), eval mode."""
        enc = self.model["encoder"]
        was = enc.training
        enc.eval()
        out = chunked(enc.embed if self.cfg.eval.features == "backbone" else enc, images)
        enc.train(was)
        return out

    def embed_images(self, images: Tensor) -> Tensor:
        """images: (N, C, H, W) float in [0, 1] -> (N, D) float32 (eval mode)."""
        return self.features(images)

    def knn(self, train: Tensor, train_labels: Tensor, test: Tensor, k: int) -> float:
        """Weighted k-NN accuracy of the test features over ``train`` (each neighbour votes
        ``exp(cosine / 0.07)``, :func:`contrastkit.eval.knn_accuracy`)."""
        return knn_accuracy(
            test,
            self.test_set.labels,
            train,
            train_labels,
            k=k,
            temperature=0.07,
            metric="cosine",
        )

    def probe(self, train: Tensor, test: Tensor) -> float:
        """Test accuracy of a logistic-regression probe fitted on the frozen train features
        (:func:`contrastkit.eval.linear_probe`)."""
        result = linear_probe(
            train.float(),
            self.train_set.labels,
            test.float(),
            self.test_set.labels,
            weight_decays=(1e-4,),
            max_iter=100,
        )
        return float(result.accuracy)

    @torch.no_grad()
    def baseline(self) -> EvalResult | None:
        """kNN (and probe) on raw pixels, the number an image encoder has to beat."""
        e = self.cfg.eval
        if not e.raw_baseline:
            return None
        tr, te = self.train_set.images.flatten(1), self.test_set.images.flatten(1)
        metrics = {"knn": self.knn(tr, self.train_set.labels, te, min(e.knn_k, len(tr)))}
        if e.probe:
            metrics["probe"] = self.probe(tr, te)
        return EvalResult(metrics, "raw pixels")

    @torch.no_grad()
    def evaluate(self, *, quick: bool = False) -> EvalResult:
        e = self.cfg.eval
        train, test = self.train_set, self.test_set
        if quick:  # periodic evaluation: kNN on a fixed train subset only
            n = min(e.periodic_subset, len(train))
            tr, te = self.features(train.images[:n]), self.features(test.images)
            return EvalResult({"knn": self.knn(tr, train.labels[:n], te, min(e.knn_k, n))})
        tr, te = self.features(train.images), self.features(test.images)
        metrics = {"knn": self.knn(tr, train.labels, te, min(e.knn_k, len(train)))}
        if e.probe:
            metrics["probe"] = self.probe(tr, te)
        # positive (two views of one test image) vs negative (different images) similarities
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        sample = test.images[:1000]
        enc = self.model["encoder"]
        was = enc.training
        enc.eval()
        views = self.views(sample, n_views=2, generator=g)  # (2, N, C, H, W)
        v1, v2 = enc(views[0]), enc(views[1])
        enc.train(was)
        pos, neg = positive_negative_similarities(v1, v2)
        arrays = {
            "test_embeddings": te,
            "test_labels": test.labels,
            "positive_similarity": pos,
            "negative_similarity": neg,
        }
        return EvalResult(metrics, "model", arrays)

    # -- index and search -------------------------------------------------------------------
    def embed_corpus(self) -> Corpus:
        ds = self.train_set
        emb = self.features(ds.images)
        return Corpus(emb, [ds.classes[int(y)] for y in ds.labels], [""] * len(ds))

    def corpus_items(self) -> Tensor:
        """The corpus images (N, C, H, W), indexed like the index's positions."""
        return self.train_set.images

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


class SupervisedTask(ImageTask):
    """``supervised``: the same views with labels; the loss takes (embeddings, labels)."""

    name: ClassVar[str] = "supervised"


def _call(loss: nn.Module, query: Tensor, key: Tensor, *, ids: Tensor) -> Tensor:
    """``loss(query, key)``, with the items' ids when the negatives wrapper keeps a queue."""
    from contrastkit.negatives import ExtraNegatives

    if isinstance(loss, ExtraNegatives):
        return loss(query, key, ids=ids)
    return loss(query, key)
