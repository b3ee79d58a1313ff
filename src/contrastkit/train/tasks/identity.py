"""The identity task (``task: identity``): train an image encoder on identities, evaluate it by
the verification protocol on held-out pairs.

Training: one random view of each image with its identity label; the loss is any ``labelled``
loss (``loss(embeddings (B, D), labels (B,))``): margin softmax (``arcface``, ``cosface``,
``subcenter_arcface``), proxies (``proxy_anchor``, ``proxy_nca``) or pair weighting
(``multi_similarity``, ``circle``, ``supcon``). Losses with class centres get ``num_classes``
(the training identities, :attr:`class_names`) and ``embedding_dim`` (:attr:`embedding_dim`)
from the trainer (:func:`contrastkit.train.run.build_loss`); the centres live in the loss
module, so the checkpoint saves and resumes them with the model, and export (which writes
:meth:`export_towers`) leaves them out. Pair losses want positives in the batch: use
``data.sampler: m_per_class``.

Data (``data.dataset``):

* ``glyphs``: the packaged glyph identity set (:func:`contrastkit.data.glyphs.load_glyphs`):
  the training characters are the classes; the held-out characters' LFW pairs
  (:func:`contrastkit.data.glyphs.glyph_pairs`: 10 folds, 300 same + 300 different each)
  evaluate. ``data.options``: ``limit`` (first N characters), ``test_fraction``, ``seed``
  (the split), ``folds``, ``pairs_per_fold``; ``data.image_size`` (default 32);
  ``data.subset`` / ``data.test_subset`` keep the first images, in whole characters.
* ``identity_folder``: ``data.root`` an LFW-layout folder (``root/<identity>/<images>``, one
  class per identity, streamed from disk), ``data.options.pairs`` a ``pairs.txt`` or CSV of
  held-out pairs (:func:`contrastkit.data.identity.read_pairs`; images relative to the pairs
  file's folder, or ``data.options.pairs_root``).

Evaluation (:meth:`evaluate`): the cosine of the two embeddings of each pair ->
:func:`contrastkit.eval.verification.verification_metrics` (AUC, EER, TAR at FAR 1e-1 ..
1e-4, the 10-fold ``accuracy``), plus open-set ``rank1`` (gallery: the first image of each
held-out identity, probes: the others). The baseline is the untrained encoder. The
embedding is the encoder's output, the space the loss trains (``eval.features: projection``,
the identity default; ``backbone`` reads the backbone features instead).

Shapes: B batch, D embedding dim, N pairs, U distinct pair images, C x H x W images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from contrastkit.data.image_source import FolderImages, MemoryImages
from contrastkit.eval.verification import (
    indexed_pair_scores,
    open_set_identification,
    verification_metrics,
)
from contrastkit.losses import loss_spec
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
)

GLYPH_OPTIONS = ("limit", "test_fraction", "seed", "folds", "pairs_per_fold")
FOLDER_OPTIONS = ("pairs", "pairs_root")
WORST_PAIRS = 8  # false accepts / rejects kept for the report
THRESHOLD_KEYS = ("eer_threshold", "threshold@")  # operating points, not quality figures
COUNT_KEYS = ("pairs_same", "pairs_different", "probes_mated", "probes_nonmated")


@dataclass
class HeldOutPairs:
    """Verification pairs over U distinct held-out images.

    Attributes:
        images: uint8 (U, C, H, W) the distinct images.
        names: U display names (``identity/file``).
        identities: (U,) long identity id of each image (open-set identification).
        index_a, index_b: (N,) long rows of ``images`` of each pair's two sides.
        same: (N,) bool, same identity.
        folds: (N,) long fold id of each pair.
    """

    images: Tensor
    names: list[str]
    identities: Tensor
    index_a: Tensor
    index_b: Tensor
    same: Tensor
    folds: Tensor


def _check_options(options: dict[str, Any], allowed: tuple[str, ...], dataset: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"data.options.{unknown[0]}: got {options[unknown[0]]!r}; data.dataset: {dataset} "
            f"takes {', '.join(allowed)}; remove it."
        )


def glyph_data(cfg: Any) -> tuple[MemoryImages, HeldOutPairs]:
    """The glyph set: training characters (classes) in memory, the held-out characters'
    pairs (:func:`contrastkit.data.glyphs.glyph_pairs`, read back in memory)."""
    from contrastkit.data.glyphs import FACES, glyph_name, glyph_pairs, load_glyphs

    d, opts = cfg.data, dict(cfg.data.options)
    _check_options(opts, GLYPH_OPTIONS, "glyphs")
    size = d.image_size or 32
    split = {k: opts[k] for k in ("limit", "test_fraction", "seed") if k in opts}
    faces = len(FACES)
    train = load_glyphs("train", size, **split)
    if d.subset:  # whole characters
        keep = min(math.ceil(d.subset / faces), len(train.classes))
        train = train.subset(torch.arange(keep * faces))
        train.classes = train.classes[:keep]
    test = load_glyphs("test", size, **split)
    chars = len(test.classes)
    if d.test_subset:  # whole characters, at least two folds of two
        chars = min(max(math.ceil(d.test_subset / faces), 4), chars)
    codes = [int(c) for c in test.groups[::faces][:chars]]
    folds = min(int(opts.get("folds", 10)), chars // 2)
    if folds < 2:
        raise ValueError(
            f"data.options: the held-out split has {chars} character(s); the protocol needs at "
            "least 4 (two folds of two): raise data.options.limit or test_fraction."
        )
    smallest = chars // folds
    most = min(smallest * faces * (faces - 1) // 2, smallest * (smallest - 1) // 2 * faces**2)
    per_fold = min(int(opts.get("pairs_per_fold", 300)), most)
    text = glyph_pairs(
        codes, faces, folds=folds, pairs_per_fold=per_fold, seed=int(opts.get("seed", 0))
    )
    row_of = {glyph_name(c): k for k, c in enumerate(codes)}
    a, b, same, fold = [], [], [], []
    for n, line in enumerate(text.splitlines()[1:]):
        t = line.split("\t")
        if len(t) == 3:
            a.append(row_of[t[0]] * faces + int(t[1]) - 1)
            b.append(row_of[t[0]] * faces + int(t[2]) - 1)
        else:
            a.append(row_of[t[0]] * faces + int(t[1]) - 1)
            b.append(row_of[t[2]] * faces + int(t[3]) - 1)
        same.append(len(t) == 3)
        fold.append(n // (2 * per_fold))
    images = test.images[: chars * faces]  # uint8 (U, 1, S, S)
    names = [f"{test.classes[k]}/{f + 1}" for k in range(chars) for f in range(faces)]
    pairs = HeldOutPairs(
        images,
        names,
        torch.arange(chars).repeat_interleave(faces),
        torch.tensor(a),
        torch.tensor(b),
        torch.tensor(same),
        torch.tensor(fold),
    )
    return MemoryImages(train.float()), pairs


def folder_data(cfg: Any) -> tuple[FolderImages, HeldOutPairs]:
    """An LFW-layout folder (classes = identities, streamed from disk) and the pairs file of
    ``data.options.pairs``, decoded once at the training size and channels."""
    from contrastkit.data.identity import load_identity_folder, read_pairs
    from contrastkit.data.image_folder import decode_image, first_image_size

    d, opts = cfg.data, dict(cfg.data.options)
    _check_options(opts, FOLDER_OPTIONS, "identity_folder")
    if d.subset or d.test_subset:
        raise ValueError(
            "data.subset / data.test_subset: identity_folder trains on the whole folder and "
            "evaluates every pair; remove them (write a smaller pairs file instead)."
        )
    folder = load_identity_folder(d.root)  # at least two identities, else one clear error
    size = d.image_size or first_image_size(d.root)
    files = folder.image_files(size, seed=cfg.seed)
    train = FolderImages(files, d.workers)
    pairs = read_pairs(opts["pairs"], opts.get("pairs_root"), seed=cfg.seed)
    channels = train.image_shape[0]
    images = torch.stack(
        [
            decode_image(pairs.path(i), channels=channels, image_size=size)
            for i in range(len(pairs.paths))
        ]
    )
    who = [Path(p).parent.name or Path(p).stem for p in pairs.paths]
    ids = {name: k for k, name in enumerate(dict.fromkeys(who))}
    held = HeldOutPairs(
        images,
        list(pairs.paths),
        torch.tensor([ids[w] for w in who]),
        pairs.index_a,
        pairs.index_b,
        pairs.same,
        pairs.folds,
    )
    return train, held


def pair_metrics(embeddings: Tensor, pairs: Any) -> tuple[dict[str, float], Tensor]:
    """(verification figures + open-set ``rank1``, the (N,) pair scores) of ``embeddings``
    (U, D), one row per distinct image of ``pairs`` (a :class:`HeldOutPairs`, or anything with
    its ``identities``, ``index_a``, ``index_b``, ``same`` and ``folds``)."""
    scores = indexed_pair_scores(embeddings, pairs.index_a, pairs.index_b)  # (N,)
    folds = pairs.folds if int(pairs.folds.unique().numel()) >= 2 else None
    metrics = verification_metrics(scores, pairs.same, folds=folds)
    first = torch.zeros(len(pairs.identities), dtype=torch.bool)  # gallery: identity's first
    seen: set[int] = set()
    for i, who in enumerate(pairs.identities.tolist()):
        if who not in seen:
            seen.add(who)
            first[i] = True
    if len(seen) >= 2 and bool((~first).any()):
        open_set = open_set_identification(
            embeddings[first], pairs.identities[first], embeddings[~first], pairs.identities[~first]
        )
        metrics["rank1"] = open_set["rank1"]
    return metrics, scores


def split_figures(figures: dict[str, float]) -> tuple[dict[str, float], dict[str, int]]:
    """(quality metrics, counts) of :func:`pair_metrics`' figures; thresholds left out."""
    metrics = {
        k: float(v)
        for k, v in figures.items()
        if not k.startswith(THRESHOLD_KEYS) and k not in COUNT_KEYS
    }
    counts = {k: int(v) for k, v in figures.items() if k in COUNT_KEYS}
    return metrics, counts


class IdentityTask(ImageCorpus, BackwardAfterLossTerms):
    """``identity``: one view per image, identity labels; verification on held-out pairs."""

    name: ClassVar[str] = "identity"
    query_kinds: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.spec = loss_spec(cfg.loss.name)
        check_loss_inputs(cfg.task, cfg.loss.name, self.spec.inputs, ("labelled",))
        if cfg.data.dataset == "glyphs":
            self.train_set, self.pairs = glyph_data(cfg)
        else:
            self.train_set, self.pairs = folder_data(cfg)
        self.views = build_views(cfg.views, self.train_set.image_shape)
        c, h, _ = self.image_shape
        self.encoder_spec = ("projected", image_encoder_spec(cfg.model, c, h))
        encoder = build_image_encoder(self.encoder_spec[1])
        self.model = nn.ModuleDict({"encoder": encoder})
        self.embedding_dim = int(encoder.out_features)  # what the loss's centres are sized to
        self.num_train = len(self.train_set)
        self.train_labels: Tensor | None = self.train_set.labels
        self.train_groups: Tensor | None = None
        self.class_names = list(self.train_set.classes)
        if len(self.class_names) < 2:
            raise ValueError(
                f"data: {len(self.class_names)} training identit(y/ies); training needs at least "
                "two: add identities (data.root) or raise data.subset / data.options.limit."
            )
        self._baseline_scores: Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the encoder takes."""
        return self.train_set.image_shape

    # -- training ---------------------------------------------------------------------------
    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]:
        """``images`` (B, C, H, W): one view of each item, drawn from ``generator``;
        ``labels`` (B,) identities."""
        images, rows, skipped = self.train_set.read(indices)
        view = self.views(images, n_views=1, generator=generator)[0]  # (B, C, H, W)
        view = view.contiguous(memory_format=torch.channels_last)
        return {"images": view, "labels": self.train_set.labels[rows], "skipped_files": skipped}

    def loss_terms(self, batch: dict[str, Any], loss: nn.Module) -> Step:
        z = self.model["encoder"](batch["images"]).float()  # (B, D)
        counts = {"skipped_files": int(batch["skipped_files"])} if batch["skipped_files"] else {}
        return Step({self.cfg.loss.name: loss(z, batch["labels"])}, None, counts)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update between steps."""

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(N, C, H, W) float in [0, 1] -> (N, D) float32 embeddings, eval mode."""
        with eval_mode(self.model["encoder"]) as enc:
            fn = enc.embed if self.cfg.eval.features == "backbone" else enc
            return chunked(fn, images)

    def embed_images(self, images: Tensor) -> Tensor:
        """images: (N, C, H, W) float in [0, 1] -> (N, D) float32 (eval mode)."""
        return self.features(images)

    def embed_texts(self, texts: list[str], side: str = "query") -> Tensor:
        raise ValueError(
            "texts: this run (task: identity) embeds images only; pass images (N, C, H, W) "
            "to embed_images."
        )

    def export_towers(self) -> ExportTowers:
        """The image side as :meth:`features` reads it and the registered encoder; the class
        centres belong to the loss and are not exported."""
        encoder = self.model["encoder"]
        backbone = self.cfg.eval.features == "backbone"
        return ExportTowers(
            image=CallMethod(encoder, "embed") if backbone else encoder, encoder=encoder
        )

    def pair_embeddings(self) -> Tensor:
        """(U, D) embeddings of the held-out pair images."""
        return self.features(self.pairs.images.float() / 255.0)

    @torch.no_grad()
    def baseline(self) -> EvalResult | None:
        """The verification figures of the untrained encoder."""
        figures, scores = pair_metrics(self.pair_embeddings(), self.pairs)
        self._baseline_scores = scores
        metrics, counts = split_figures(figures)
        return EvalResult(metrics, "untrained encoder", counts=counts)

    @torch.no_grad()
    def evaluate(self, *, quick: bool = False) -> EvalResult:
        """Verification on the held-out pairs; the full evaluation adds the report's arrays:
        the pair scores and labels (ROC) and the worst false accepts and rejects."""
        figures, scores = pair_metrics(self.pair_embeddings(), self.pairs)
        metrics, counts = split_figures(figures)
        counts["identities_train"] = len(self.class_names)
        if quick:
            return EvalResult(metrics, counts=counts)
        arrays = {"verification_scores": scores.float(), "verification_same": self.pairs.same}
        if self._baseline_scores is not None:
            arrays["baseline_verification_scores"] = self._baseline_scores.float()
        arrays.update(self.worst_pairs(scores))
        return EvalResult(metrics, "model", arrays, counts)

    def worst_pairs(self, scores: Tensor, k: int = WORST_PAIRS) -> dict[str, Tensor]:
        """The ``k`` different-identity pairs scored highest (false accepts) and the ``k``
        same-identity pairs scored lowest (false rejects): ``false_accept_images`` (k, 2, C,
        H, W) uint8, ``false_accept_scores`` (k,), and the same for ``false_reject``."""
        out: dict[str, Tensor] = {}
        p = self.pairs
        for name, mask, descending in (("false_accept", ~p.same, True),
                                       ("false_reject", p.same, False)):  # fmt: skip
            rows = torch.nonzero(mask).flatten()
            if not len(rows):
                continue
            order = torch.argsort(scores[rows], descending=descending)[:k]
            pick = rows[order]
            images = torch.stack([p.images[p.index_a[pick]], p.images[p.index_b[pick]]], 1)
            out[f"{name}_images"] = images.contiguous()
            out[f"{name}_scores"] = scores[pick].float()
        return out

    # -- index and search -------------------------------------------------------------------
    def _label_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else ""

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        """The first ``n`` held-out pair images and their names."""
        n = min(n, len(self.pairs.names))
        return [(self.pairs.images[i].float() / 255.0, self.pairs.names[i]) for i in range(n)]
