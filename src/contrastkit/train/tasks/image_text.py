"""Image <-> text alignment (CLIP layout): an image tower and a text tower projected to one
space, trained with a symmetric loss; emoji renders <-> their Unicode names.

The baseline is the model before training, evaluated by the loop at step 0. Evaluation is
image -> text and text -> image retrieval over the held-out emoji.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from contrastkit.data.image_source import Items
from contrastkit.encoders import ImageTextModel, create_encoder
from contrastkit.encoders.hf_clip import HFCLIPModel
from contrastkit.encoders.vision import SmallCNN
from contrastkit.errors import ArgumentError, restate
from contrastkit.eval.pairs import recall_summary
from contrastkit.eval.zero_shot import class_embeddings, zero_shot_accuracy
from contrastkit.losses import loss_spec
from contrastkit.monitor.functional import positive_negative_similarities
from contrastkit.train.tasks.base import (
    BackwardAfterLossTerms,
    CallMethod,
    Corpus,
    EvalResult,
    ExportTowers,
    Step,
    check_loss_inputs,
    eval_mode,
    load_images,
    text_encoder_spec,
)


class ImageTextTask(BackwardAfterLossTerms):
    """``image_text``: images and captions through two towers."""

    name: ClassVar[str] = "image_text"
    query_kinds: ClassVar[tuple[str, ...]] = ("text", "image")
    encoder_spec: ClassVar[None] = None  # two towers, not one registered encoder

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        check_loss_inputs(cfg.task, cfg.loss.name, loss_spec(cfg.loss.name).inputs, ("pair",))
        d = cfg.data
        self.train_set, self.test_set = load_images(cfg, "train"), load_images(cfg, "test")
        for split, source in (("train", self.train_set), ("test", self.test_set)):
            if source.texts is None:
                raise ValueError(
                    f"task: image_text needs a caption per image; the {split} images of "
                    f"data.dataset={d.dataset!r} have none (an image folder: a CSV/Parquet "
                    "manifest with data.options.caption_column)."
                )
        self.num_train = len(self.train_set)
        self.train_labels: Tensor | None = self.train_set.labels if self.train_set.classes else None
        self.train_groups: Tensor | None = None
        self.class_names = list(self.test_set.classes)
        if cfg.model.name == "hf_clip":
            self.model = nn.ModuleDict({"towers": pretrained_towers(cfg.model.options)})
            return
        mopts = dict(cfg.model.options)
        text_name, text_options = text_encoder_spec(
            mopts.pop("text", "minilm"), mopts.pop("text_options", {}), cfg.seed
        )
        text = create_encoder(text_name, **text_options)
        if mopts.pop("freeze_text", True):
            for p in text.parameters():
                p.requires_grad_(False)
        channels, size, _ = self.train_set.image_shape
        image = SmallCNN(channels, width=cfg.model.width, stem_stride=2 if size > 32 else 1)
        towers = ImageTextModel(image, text, cfg.model.out_dim)
        if mopts.pop("lock_image", False):  # LiT: only the text side trains
            lock(towers.image_encoder, towers.image_projection)
        self.model = nn.ModuleDict({"towers": towers})

    @property
    def initial_temperature(self) -> float | None:
        """The checkpoint's temperature (1 / exp(logit_scale)) of a CLIP / SigLIP folder:
        where the loss's temperature starts unless ``loss.params`` sets one."""
        return getattr(self.model["towers"], "initial_temperature", None)

    @property
    def initial_bias(self) -> float | None:
        """SigLIP's logit bias: where the sigmoid loss's bias starts."""
        return getattr(self.model["towers"], "initial_bias", None)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the image tower takes."""
        return self.train_set.image_shape

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]:
        images, rows, skipped = self.train_set.read(indices)
        flip = torch.rand(len(rows), generator=generator) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)  # mirrored glyphs
        texts = [self.train_set.texts[i] for i in rows.tolist()]
        return {"images": images, "texts": texts, "skipped_files": skipped}

    def loss_terms(self, batch: dict[str, Any], loss: nn.Module) -> Step:
        image, text = self.model["towers"](batch["images"], batch["texts"])
        counts = {"skipped_files": batch["skipped_files"]} if batch["skipped_files"] else {}
        return Step({self.cfg.loss.name: loss(image.float(), text.float())}, (image, text), counts)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing moves besides the optimizer's step."""

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        """images: (N, C, H, W) float in [0, 1] -> (N, D) float32 from the image tower."""
        with eval_mode(self.model["towers"]) as towers:
            out = [towers.encode_image(images[i : i + 256]) for i in range(0, len(images), 256)]
        return torch.cat(out).float()

    @torch.no_grad()
    def embed_texts(self, texts: list[str], side: str = "query") -> Tensor:
        """N captions -> (N, D) float32 from the text tower (``side`` is accepted for the
        common signature; captions have one tower)."""
        texts = list(texts)
        with eval_mode(self.model["towers"]) as towers:
            out = [towers.encode_text(texts[i : i + 256]) for i in range(0, len(texts), 256)]
        return torch.cat(out).float()

    def baseline(self) -> EvalResult | None:
        """The model before training."""
        if not self.cfg.eval.raw_baseline:
            return None
        return EvalResult(self.evaluate(quick=True).metrics, "before training")

    @torch.no_grad()
    def evaluate(self, *, quick: bool = False) -> EvalResult:
        ds = self.test_set
        image = torch.cat([self.embed_images(x) for x, _ in ds.batches()])
        text = self.embed_texts(list(ds.texts))
        rel = torch.arange(len(ds))
        ks = self.cfg.eval.recall_at
        metrics = {f"image->text {k}": v for k, v in recall_summary(image, text, rel, ks).items()}
        metrics.update(
            {f"text->image {k}": v for k, v in recall_summary(text, image, rel, ks).items()}
        )
        if ds.classes:  # class names as captions: forgetting shows from step 0 to the end
            classes = class_embeddings(self.embed_texts, ds.classes)  # (C, D)
            metrics.update(zero_shot_accuracy(image, classes, ds.labels))
        if quick:
            return EvalResult(metrics)
        pos, neg = positive_negative_similarities(image, text)
        arrays = {"positive_similarity": pos, "negative_similarity": neg}
        if ds.classes:
            arrays.update({"test_embeddings": image, "test_labels": ds.labels})
        return EvalResult(metrics, "model", arrays)

    def corpus_size(self) -> int:
        """The corpus is the held-out images, captioned."""
        return len(self.test_set)

    def embed_corpus_chunk(self, start: int, stop: int) -> Corpus:
        ds = self.test_set
        texts = list(ds.texts[start:stop])
        return Corpus(self.embed_images(ds.rows(start, stop)), texts, [""] * len(texts))

    def embed_corpus(self) -> Corpus:
        return self.embed_corpus_chunk(0, self.corpus_size())

    def corpus_items(self) -> Any:
        return Items(self.test_set)

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        if Path(query).exists():
            from contrastkit.data.images import load_image

            c, h, w = self.image_shape
            x = load_image(query, channels=c, size=(h, w))
            return self.embed_images(x[None]), x
        return self.embed_texts([query]), query

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        ds = self.test_set
        return [(ds.texts[i], ds.texts[i]) for i in range(min(n, len(ds)))]

    def export_towers(self) -> ExportTowers:
        """The text tower with its projection, and the image side (``encode_image``: image
        tower, projection, L2 normalisation); no single registered encoder."""
        towers = self.model["towers"]
        if isinstance(towers, HFCLIPModel):  # the whole checkpoint: export --format hf
            return ExportTowers(image=CallMethod(towers, "encode_image"), pretrained=towers)
        return ExportTowers(
            text={"": (towers.text_encoder, towers.text_projection)},
            image=CallMethod(towers, "encode_image"),
        )


def pretrained_towers(options: dict[str, Any]) -> HFCLIPModel:
    """``model.name: hf_clip``: the CLIP / SigLIP folder ``options.path`` (``max_length``
    optional; ``lock_image: true`` is LiT: the vision tower and its projection stay fixed)."""
    opts = dict(options)
    lit = opts.pop("lock_image", False)
    unknown = sorted(set(opts) - {"path", "max_length"})
    if unknown:
        raise ValueError(
            f"model.options: {', '.join(unknown)} not taken by hf_clip; it takes path, "
            "max_length and lock_image."
        )
    try:
        towers = HFCLIPModel(opts.get("path"), max_length=opts.get("max_length"))
    except ArgumentError as err:
        raise ValueError(restate(err, {"path": "model.options.path"})) from None
    if lit:
        lock(towers.model.vision_model, getattr(towers.model, "visual_projection", None))
    return towers


def lock(*modules: nn.Module | None) -> None:
    """No gradient for these modules' parameters (LiT's locked image tower)."""
    for module in modules:
        for p in module.parameters() if module is not None else ():
            p.requires_grad_(False)
