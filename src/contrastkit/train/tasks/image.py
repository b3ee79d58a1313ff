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

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from contrastkit.encoders import MomentumEncoder, PredictionHead, cosine_momentum
from contrastkit.eval.evaluate import KNN_ACCURACY, evaluate_embeddings
from contrastkit.losses import loss_spec
from contrastkit.losses.matryoshka import truncate_embeddings
from contrastkit.monitor.functional import positive_negative_similarities
from contrastkit.train.tasks.base import (
    BackwardAfterLossTerms,
    CallMethod,
    EvalResult,
    ExportTowers,
    ImageCorpus,
    Step,
    build_image_encoder,
    build_views,
    check_loss_inputs,
    chunked,
    eval_mode,
    image_encoder_spec,
    load_images,
)

BYOL_MOMENTUM = 0.99  # the teacher's starting momentum, raised to 1 on a cosine


class ImageTask(ImageCorpus, BackwardAfterLossTerms):
    """``views`` and ``supervised``: two random views per image."""

    name: ClassVar[str] = "views"
    query_kinds: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.train_set = load_images(cfg, "train")
        self.test_set = load_images(cfg, "test")
        self.views = build_views(cfg.views, self.train_set.image_shape)
        self.spec = loss_spec(cfg.loss.name)
        allowed = ("labelled",) if cfg.task == "supervised" else ("pair", "prediction")
        check_loss_inputs(cfg.task, cfg.loss.name, self.spec.inputs, allowed)
        c, h, _ = self.image_shape
        self.encoder_spec = ("projected", image_encoder_spec(cfg.model, c, h))
        encoder = build_image_encoder(self.encoder_spec[1])
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
        return self.train_set.image_shape

    # -- training ---------------------------------------------------------------------------
    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``views`` (2B, C, H, W), view-major, drawn from ``generator``; ``labels`` (B,);
        ``ids`` (B,) the items' rows in the train set."""
        images, rows, skipped = self.train_set.read(indices)  # (B, C, H, W)
        views = self.views(images, n_views=2, generator=generator)  # (2, B, C, H, W)
        views = views.flatten(0, 1).contiguous(memory_format=torch.channels_last)  # (2B, C, H, W)
        labels = self.train_set.labels[rows]
        return {"views": views, "labels": labels, "ids": rows, "skipped_files": skipped}

    def loss_terms(self, batch: dict[str, Tensor], loss: nn.Module) -> Step:
        name, views = self.cfg.loss.name, batch["views"]
        b = views.shape[0] // 2
        if "key_encoder" in self.model:  # MoCo: query = online(view 1), key = EMA copy(view 2)
            query = self.model["encoder"](views[:b]).float()  # (B, D)
            with torch.no_grad():
                key = self.model["key_encoder"](views[b:]).float()  # (B, D)
            value = _call(loss, query, key, ids=batch["ids"])
            return Step({name: value}, (query, key), self._counts(batch))
        z = self.model["encoder"](views)  # (2B, D)
        z1, z2 = z.float().chunk(2)  # (B, D) each
        if self.spec.inputs == "prediction":
            p1, p2 = self.model["predictor"](z).float().chunk(2)
            if "teacher" in self.model:
                with torch.no_grad():
                    t1, t2 = self.model["teacher"](views).float().chunk(2)
            else:
                t1, t2 = z1, z2  # the loss applies the stop-gradient
            return Step({name: loss(p1, p2, t1, t2)}, (z1, z2), self._counts(batch))
        if self.spec.inputs == "labelled":  # both views as (2B, D) items with their labels
            labels = batch["labels"]
            value = loss(torch.cat([z1, z2]), torch.cat([labels, labels]))
            return Step({name: value}, (z1, z2), self._counts(batch))
        return Step({name: _call(loss, z1, z2, ids=batch["ids"])}, (z1, z2), self._counts(batch))

    @staticmethod
    def _counts(batch: dict[str, Any]) -> dict[str, int]:
        """Per-step counts the loop logs: unreadable files skipped (image folders)."""
        return {"skipped_files": int(batch["skipped_files"])} if batch["skipped_files"] else {}

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
        with eval_mode(self.model["encoder"]) as enc:
            return chunked(enc.embed if self.cfg.eval.features == "backbone" else enc, images)

    def features_of(self, source: Any, limit: int | None = None) -> tuple[Tensor, Tensor]:
        """(features (N, F), labels (N,)) of a whole image source (its first ``limit`` rows)."""
        parts, rows = [], []
        for images, chunk in source.batches():
            if limit is not None and int(chunk[0]) >= limit:
                break
            parts.append(self.features(images))
            rows.append(chunk)
        feats, index = torch.cat(parts), torch.cat(rows)
        if limit is not None:
            feats, index = feats[index < limit], index[index < limit]
        return feats, source.labels[index]

    def embed_images(self, images: Tensor) -> Tensor:
        """images: (N, C, H, W) float in [0, 1] -> (N, D) float32 (eval mode)."""
        return self.features(images)

    def embed_texts(self, texts: list[str], side: str = "query") -> Tensor:
        raise ValueError(
            f"texts: this run (task: {self.cfg.task}) embeds images only; pass images "
            "(N, C, H, W) to embed_images."
        )

    def export_towers(self) -> ExportTowers:
        """The image side as :meth:`features` reads it (the backbone's ``embed`` with
        ``eval.features: backbone``, else the projection), and the registered encoder."""
        encoder = self.model["encoder"]
        backbone = self.cfg.eval.features == "backbone"
        return ExportTowers(
            image=CallMethod(encoder, "embed") if backbone else encoder, encoder=encoder
        )

    def classification(
        self, train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor, probe: bool
    ) -> dict[str, float]:
        """``knn_accuracy`` (and ``linear_probe_accuracy`` when ``probe``) of the test features
        ``(Q, F)`` against the train features ``(N, F)``: :func:`contrastkit.eval.evaluate_embeddings`
        with ``eval.knn_k`` neighbours (at most N) and the library's kNN temperature and probe."""
        k = min(self.cfg.eval.knn_k, len(train))
        return evaluate_embeddings(
            train, train_labels, test, test_labels, knn_k=k, with_linear_probe=probe, ks=()
        )

    def _labelled(self) -> bool:
        return bool((self.train_set.labels >= 0).all()) and len(self.train_set.classes) > 1

    @torch.no_grad()
    def baseline(self) -> EvalResult | None:
        """kNN (and probe) on raw pixels, the number an image encoder has to beat."""
        e = self.cfg.eval
        if not e.raw_baseline or not self._labelled():
            return None
        train, test = self.train_set.pixels(), self.test_set.pixels()
        if train is None or test is None:
            return None  # too many pixels to hold
        (tr, tr_rows), (te, te_rows) = train, test
        tr_y, te_y = self.train_set.labels[tr_rows], self.test_set.labels[te_rows]
        return EvalResult(self.classification(tr, tr_y, te, te_y, e.probe), "raw pixels")

    @torch.no_grad()
    def evaluate(self, *, quick: bool = False) -> EvalResult:
        e = self.cfg.eval
        limit = e.periodic_subset if quick else None  # periodic: kNN on a fixed train subset
        tr, tr_y = self.features_of(self.train_set, limit)
        te, te_y = self.features_of(self.test_set)
        metrics: dict[str, float] = {}
        if self._labelled():
            metrics.update(self.classification(tr, tr_y, te, te_y, e.probe and not quick))
            if self.cfg.loss.matryoshka_dims and not quick:
                metrics.update(self._knn_per_width(tr_y, te_y))
        if quick:
            return EvalResult(metrics)
        # positive (two views of one test image) vs negative (different images) similarities
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        sample = self.test_set.head(1000)
        views = self.views(sample, n_views=2, generator=g)  # (2, N, C, H, W)
        with eval_mode(self.model["encoder"]) as enc:
            v1, v2 = enc(views[0]), enc(views[1])
        pos, neg = positive_negative_similarities(v1, v2)
        arrays = {"positive_similarity": pos, "negative_similarity": neg}
        if self._labelled():
            arrays.update({"test_embeddings": te, "test_labels": te_y})
        return EvalResult(metrics, "model", arrays)

    def _knn_per_width(self, tr_y: Tensor, te_y: Tensor) -> dict[str, float]:
        """kNN on the projection (the space Matryoshka trains) truncated to each width."""
        out: dict[str, float] = {}
        with torch.no_grad(), eval_mode(self.model["encoder"]) as enc:
            tr = torch.cat([chunked(enc, x) for x, _ in self.train_set.batches()])
            te = torch.cat([chunked(enc, x) for x, _ in self.test_set.batches()])
        for d in self.cfg.loss.matryoshka_dims or ():
            if d <= tr.shape[1]:
                a, b = truncate_embeddings(tr, d), truncate_embeddings(te, d)
                knn = self.classification(a, tr_y, b, te_y, probe=False)[KNN_ACCURACY]
                out[f"{KNN_ACCURACY} @{d}d"] = knn
        return out

    # -- index and search -------------------------------------------------------------------
    def _label_name(self, label: int) -> str:
        classes = self.train_set.classes
        return classes[label] if 0 <= label < len(classes) else ""

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        test = self.test_set
        n = min(n, len(test))
        return [(test.item(i), self._label_name(int(test.labels[i]))) for i in range(n)]


class SupervisedTask(ImageTask):
    """``supervised``: the same views with labels; the loss takes (embeddings, labels)."""

    name: ClassVar[str] = "supervised"


def _call(loss: nn.Module, query: Tensor, key: Tensor, *, ids: Tensor) -> Tensor:
    """``loss(query, key)``, with the items' ids when the negatives wrapper keeps a queue."""
    from contrastkit.negatives import ExtraNegatives

    if isinstance(loss, ExtraNegatives):
        return loss(query, key, ids=ids)
    return loss(query, key)
