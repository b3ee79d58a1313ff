"""Audio tasks: clips <-> transcripts through two towers (``audio_text``, CLAP), and two random
views of each clip (``audio``, COLA / BYOL-A).

``audio_text`` (Elizalde et al. 2023, https://arxiv.org/abs/2206.04769): an audio tower from the
encoder registry (``audio_cnn`` from scratch or a local ``hf_audio`` folder) ending in a
projection to D, and any text tower (the packaged MiniLM by default, frozen: LiT, Zhai et al.
2022, https://arxiv.org/abs/2111.07991) with a trained projection; any ``pair`` loss (symmetric
InfoNCE, SigLIP's sigmoid loss, ...). The baseline is the untrained model, evaluated by the
loop at step 0.

``audio`` (COLA, Saeed et al. 2021, https://arxiv.org/abs/2010.10915; BYOL-A, Niizumi et al.
2021, https://arxiv.org/abs/2103.06695): two random crops of each clip with gain, noise and
shift, through any ``pair`` loss (nt_xent, info_nce, vicreg, barlow_twins).

Evaluation on the held-out split (texts never heard in training): audio -> text and text ->
audio ``R@k`` and ``MRR`` (one clip per distinct text), zero-shot classification where the
clips have labels (class names through :data:`TEMPLATES`), and speaker verification (EER, TAR
at FAR, :mod:`contrastkit.eval.verification`) where they have speakers.

Shapes: B batch, S samples per clip, D embedding dim, N corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from contrastkit.encoders import create_encoder
from contrastkit.encoders.audio import AudioTextModel, clip_frames
from contrastkit.eval.pairs import heldout_rows, recall_summary
from contrastkit.eval.verification import indexed_pair_scores, verification_metrics
from contrastkit.losses import loss_spec
from contrastkit.monitor.functional import positive_negative_similarities
from contrastkit.train.tasks.base import (
    BackwardAfterLossTerms,
    Corpus,
    EvalResult,
    ExportTowers,
    Step,
    check_loss_inputs,
    eval_mode,
    text_encoder_spec,
)

TEMPLATES = ("{}", "the sound of {}", "a recording of {}")
"""Zero-shot classification: each class name through these, the text embeddings averaged."""
SPEAKER_CLIPS = 400  # clips whose all-pairs scores the speaker verification reads
CHUNK = 64  # clips per forward pass when embedding


def audio_encoder_spec(model: Any) -> tuple[str, dict[str, Any]]:
    """(registry name, options) of the audio tower of ``model`` (an ``AudioModelConfig``):
    ``audio_cnn`` gets ``width``; both end in a projection to ``out_dim``. Export writes the
    same pair, so ``load_encoder`` rebuilds the tower."""
    options: dict[str, Any] = {"projection_dim": model.out_dim}
    if model.name == "audio_cnn":
        options["width"] = model.width
    options.update(model.options)
    return model.name, options


def build_audio_encoder(spec: tuple[str, dict[str, Any]]) -> nn.Module:
    name, options = spec
    try:
        return create_encoder(name, **options)
    except TypeError as err:
        raise ValueError(f"model.options for {name!r}: {err}") from None


def open_audio_split(cfg: Any, split: str, sample_rate: int) -> Any:
    """The ``split`` of ``cfg.data`` as an audio source at ``sample_rate``, clips of
    ``audio.clip_seconds`` (see :mod:`contrastkit.data.audio_source`)."""
    from contrastkit.data.audio_source import open_audio

    d = cfg.data
    return open_audio(
        d.dataset,
        split,
        root=d.root,
        options=d.options,
        sample_rate=sample_rate,
        clip_seconds=cfg.audio.clip_seconds,
        limit=d.subset if split == "train" else d.test_subset,
        workers=d.workers,
        seed=cfg.seed,
    )


def training_views(waves: Tensor, mask: Tensor, audio: Any, generator: torch.Generator) -> Tensor:
    """Random gain, noise at an SNR and circular shift of a batch (``audio``: the config's
    ``audio`` section), through :mod:`contrastkit.data.audio_views`; ``waves``, ``mask``: (B, S)."""
    from contrastkit.data import audio_views as av

    if audio.gain_db:
        waves = av.gain(waves, (-audio.gain_db, audio.gain_db), generator=generator)
    if audio.time_shift:
        shift = int(audio.time_shift * waves.shape[1])
        waves = av.time_shift(waves, shift, wrap=True, generator=generator)
    if audio.noise_snr_db is not None:
        low, high = audio.noise_snr_db
        waves = av.add_noise(waves, (low, high), mask=mask, generator=generator)
    return waves * mask


class _AudioTask(BackwardAfterLossTerms):
    """What the two audio tasks share: the audio tower, the clips, audio queries."""

    cfg: Any
    audio_encoder: nn.Module
    train_set: Any
    test_set: Any

    def _open(self, cfg: Any, encoder: nn.Module) -> None:
        self.sample_rate = int(encoder.sample_rate)
        self.clip_samples = clip_frames(cfg.audio.clip_seconds, self.sample_rate)
        self.train_set = open_audio_split(cfg, "train", self.sample_rate)
        self.test_set = open_audio_split(cfg, "test", self.sample_rate)
        self.num_train = len(self.train_set)
        self.train_labels: Tensor | None = None
        self.train_groups: Tensor | None = None
        self.class_names = list(getattr(self.test_set, "classes", None) or [])

    image_shape: ClassVar[None] = None

    def embed_images(self, images: Tensor) -> Tensor:
        raise ValueError(
            f"images: this run (task: {self.cfg.task}) embeds audio; pass waveforms to embed_audio."
        )

    def _audio(self, waveform: Tensor, mask: Tensor | None) -> Tensor:
        """The audio side of the task, training mode or not (the task's own)."""
        raise NotImplementedError  # pragma: no cover

    @torch.no_grad()
    def embed_audio(self, waveform: Tensor, mask: Tensor | None = None) -> Tensor:
        """waveform: (N, S) mono at :attr:`sample_rate`, mask (N, S) -> (N, D) float32 (eval
        mode), ``CHUNK`` clips at a time."""
        if mask is None:
            mask = torch.ones(waveform.shape, dtype=torch.bool)
        with eval_mode(self.model):
            out = [
                self._audio(waveform[i : i + CHUNK], mask[i : i + CHUNK]).float()
                for i in range(0, len(waveform), CHUNK)
            ]
        return torch.cat(out) if out else torch.empty(0, self.embedding_dim)

    def embed_rows(self, source: Any, rows: list[int]) -> Tensor:
        """(N, D) embeddings of ``rows`` of a source (deterministic crops)."""
        parts = []
        for i in range(0, len(rows), CHUNK):
            waves, mask, _, _ = source.read(torch.tensor(rows[i : i + CHUNK]), None)
            parts.append(self.embed_audio(waves, mask))
        return torch.cat(parts) if parts else torch.empty(0, self.embedding_dim)

    def load_clip(self, path: str | Path) -> tuple[Tensor, Tensor]:
        """An audio file -> (waveform (1, S), mask (1, S)) at the tower's rate and clip length
        (its start; a shorter clip padded)."""
        from contrastkit.data.audio import crop_or_pad, load_audio

        wave, _ = load_audio(path, sample_rate=self.sample_rate)  # (T,) numpy
        clip, mask = crop_or_pad(torch.from_numpy(wave), self.clip_samples)  # (S,) each
        return clip[None].float(), mask[None].bool()

    def speaker_metrics(self, embeddings: Tensor, speakers: list[str]) -> dict[str, float]:
        """Speaker verification over every pair of the first :data:`SPEAKER_CLIPS` clips (same
        speaker or not): ``speaker eer``, ``speaker tar@far=...``, ``speaker auc``."""
        n = min(len(speakers), SPEAKER_CLIPS)
        if n < 3 or len(set(speakers[:n])) < 2:
            return {}
        a, b = torch.triu_indices(n, n, offset=1)  # (P,) each
        names = {s: i for i, s in enumerate(dict.fromkeys(speakers[:n]))}
        ids = torch.tensor([names[s] for s in speakers[:n]])
        same = ids[a] == ids[b]
        if bool(same.all()) or not bool(same.any()):
            return {}
        scores = indexed_pair_scores(embeddings[:n], a, b)
        m = verification_metrics(scores, same)
        keep = ("auc", "eer", *[k for k in m if k.startswith("tar@")])
        return {f"speaker {k}": float(m[k]) for k in keep}

    # -- index and search: the held-out clips --------------------------------------------------
    def corpus_size(self) -> int:
        return len(self.test_set)

    def embed_corpus_chunk(self, start: int, stop: int) -> Corpus:
        ds = self.test_set
        rows = list(range(start, stop))
        texts = [ds.texts[i] if ds.texts is not None else "" for i in rows]
        return Corpus(self.embed_rows(ds, rows), texts, [str(ds.path(i)) for i in rows])

    def embed_corpus(self) -> Corpus:
        return self.embed_corpus_chunk(0, self.corpus_size())

    def corpus_items(self) -> Any:
        """None: the items are the clips' file paths (the index metadata)."""
        return None

    def corpus_clip_path(self, position: int) -> Path:
        """The file of the corpus clip at index ``position`` (``0 <= position < corpus_size()``;
        the service plays it at ``/audio/{position}``)."""
        return Path(self.test_set.path(position))

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        """An audio file -> its (1, D) embedding (text queries: the audio_text task)."""
        waves, mask = self.load_clip(query)
        return self.embed_audio(waves, mask), query


class AudioTextTask(_AudioTask):
    """``audio_text``: clips and their texts through two towers."""

    name: ClassVar[str] = "audio_text"
    query_kinds: ClassVar[tuple[str, ...]] = ("text", "audio")

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        check_loss_inputs(cfg.task, cfg.loss.name, loss_spec(cfg.loss.name).inputs, ("pair",))
        self.encoder_spec = audio_encoder_spec(cfg.model)
        audio = build_audio_encoder(self.encoder_spec)
        self._open(cfg, audio)
        for split, source in (("train", self.train_set), ("test", self.test_set)):
            if source.texts is None:
                raise ValueError(
                    f"task: audio_text needs a text per clip; the {split} clips of "
                    f"data.dataset={cfg.data.dataset!r} have none (a manifest with a text column)."
                )
        m = cfg.model
        text_name, text_options = text_encoder_spec(m.text.name, m.text.options, cfg.seed)
        text = create_encoder(text_name, **text_options)
        if m.freeze_text:
            for p in text.parameters():
                p.requires_grad_(False)
        self.model = nn.ModuleDict({"towers": AudioTextModel(audio, text, m.out_dim)})
        self.embedding_dim = m.out_dim
        self._text_cache: dict[str, Tensor] = {}  # frozen text tower: its features per text

    def _text_features(self, texts: list[str]) -> Tensor:
        """(B, F) text-tower features of a batch. A frozen tower (``model.freeze_text``, LiT)
        gives each text's features once, in eval mode, and they are reused on every step; a
        tower that trains runs on every batch."""
        encoder = self.model["towers"].text_encoder
        if not self.cfg.model.freeze_text:
            return encoder(texts)
        new = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if new:
            with torch.no_grad(), eval_mode(encoder):
                for i in range(0, len(new), 256):
                    feats = encoder(new[i : i + 256]).float()
                    self._text_cache.update(zip(new[i : i + 256], feats, strict=True))
        return torch.stack([self._text_cache[t] for t in texts])

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]:
        waves, mask, rows, skipped = self.train_set.read(indices, generator)  # (B, S) each
        waves = training_views(waves, mask, self.cfg.audio, generator)
        texts = [self.train_set.texts[i] for i in rows.tolist()]
        return {"waves": waves, "mask": mask, "texts": texts, "skipped_files": skipped}

    def loss_terms(self, batch: dict[str, Any], loss: nn.Module) -> Step:
        towers = self.model["towers"]
        audio = towers.encode_audio(batch["waves"], batch["mask"])  # (B, D)
        features = self._text_features(batch["texts"])  # (B, F)
        text = torch.nn.functional.normalize(towers.text_projection(features), dim=-1)  # (B, D)
        counts = {"skipped_files": batch["skipped_files"]} if batch["skipped_files"] else {}
        return Step({self.cfg.loss.name: loss(audio.float(), text.float())}, (audio, text), counts)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing moves besides the optimizer's step."""

    def _audio(self, waveform: Tensor, mask: Tensor | None) -> Tensor:
        return self.model["towers"].encode_audio(waveform, mask)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], side: str = "query") -> Tensor:
        """N texts -> (N, D) float32 from the text tower and its projection."""
        texts = list(texts)
        with eval_mode(self.model["towers"]) as towers:
            out = [towers.encode_text(texts[i : i + 256]) for i in range(0, len(texts), 256)]
        return torch.cat(out).float() if out else torch.empty(0, self.embedding_dim)

    def baseline(self) -> EvalResult | None:
        """The model before training."""
        if not self.cfg.eval.raw_baseline:
            return None
        return EvalResult(self.evaluate(quick=True).metrics, "before training")

    @torch.no_grad()
    def evaluate(self, *, quick: bool = False) -> EvalResult:
        ds, e = self.test_set, self.cfg.eval
        queries, _, _ = heldout_rows(list(ds.texts), e.corpus_size, "first")  # a clip per text
        audio = self.embed_rows(ds, queries)  # (N, D)
        text = self.embed_texts([ds.texts[i] for i in queries])  # (N, D)
        rel = torch.arange(len(queries))
        metrics = {
            f"audio->text {k}": v for k, v in recall_summary(audio, text, rel, e.recall_at).items()
        }
        metrics.update(
            {
                f"text->audio {k}": v
                for k, v in recall_summary(text, audio, rel, e.recall_at).items()
            }
        )
        metrics.update(self.zero_shot(queries, audio))
        speakers = getattr(ds, "speakers", None)
        if speakers is not None:  # every held-out clip (several per speaker), not one per text
            rows = list(range(min(len(ds), SPEAKER_CLIPS)))
            metrics.update(self.speaker_metrics(self.embed_rows(ds, rows), speakers[: len(rows)]))
        if quick:
            return EvalResult(metrics)
        pos, neg = positive_negative_similarities(audio, text)
        counts = {"held-out clips": len(queries)}
        return EvalResult(
            metrics, "model", {"positive_similarity": pos, "negative_similarity": neg}, counts
        )

    def zero_shot(self, rows: list[int], audio: Tensor) -> dict[str, float]:
        """``zero-shot accuracy``: each clip's nearest class name (through :data:`TEMPLATES`,
        embeddings averaged), where the held-out clips have labels of two or more classes."""
        ds = self.test_set
        labels, classes = getattr(ds, "labels", None), list(getattr(ds, "classes", None) or [])
        if labels is None or len(classes) < 2:
            return {}
        y = torch.as_tensor(labels)[torch.tensor(rows)]
        known = y >= 0
        if not bool(known.any()):
            return {}
        prompts = [t.format(c) for c in classes for t in TEMPLATES]
        names = self.embed_texts(prompts).view(len(classes), len(TEMPLATES), -1).mean(1)
        names = torch.nn.functional.normalize(names, dim=-1)  # (C, D)
        pred = (audio[known] @ names.T).argmax(1)
        return {"zero-shot accuracy": float((pred == y[known]).float().mean())}

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        """An audio file path -> its audio embedding; any other string -> its text embedding."""
        if Path(query).exists():
            return super().embed_query(query)
        return self.embed_texts([query]), query

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        ds = self.test_set
        return [(ds.texts[i], ds.texts[i]) for i in range(min(n, len(ds)))]

    def export_towers(self) -> ExportTowers:
        """The text tower with its projection, the audio tower (``(waveform, mask) -> (B, D)``)
        and the registered audio encoder (the same module)."""
        towers = self.model["towers"]
        return ExportTowers(
            text={"": (towers.text_encoder, towers.text_projection)},
            audio=towers.audio_encoder,
            encoder=towers.audio_encoder,
        )


class AudioViewsTask(_AudioTask):
    """``audio``: two random crops (with gain, noise and shift) of each clip."""

    name: ClassVar[str] = "audio"
    query_kinds: ClassVar[tuple[str, ...]] = ("audio",)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        check_loss_inputs(cfg.task, cfg.loss.name, loss_spec(cfg.loss.name).inputs, ("pair",))
        self.encoder_spec = audio_encoder_spec(cfg.model)
        encoder = build_audio_encoder(self.encoder_spec)
        self._open(cfg, encoder)
        self.model = nn.ModuleDict({"encoder": encoder})
        self.embedding_dim = int(encoder.out_features)
        crop = cfg.audio.crop_seconds
        self.crop_samples = min(
            clip_frames(crop, self.sample_rate) if crop else self.clip_samples, self.clip_samples
        )

    def _crop(
        self, waves: Tensor, mask: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """A random ``crop_samples`` window of each clip, inside its real samples where it fits."""
        from contrastkit.data import audio_views as av

        return av.random_crop(waves, self.crop_samples, lengths=mask.sum(1), generator=generator)

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]:
        waves, mask, rows, skipped = self.train_set.read(indices, generator)  # (B, S)
        views = []
        for _ in range(2):
            w, m = self._crop(waves, mask, generator)  # (B, S') each
            views.append((training_views(w, m, self.cfg.audio, generator), m))
        return {"views": views, "ids": rows, "skipped_files": skipped}

    def loss_terms(self, batch: dict[str, Any], loss: nn.Module) -> Step:
        (w1, m1), (w2, m2) = batch["views"]
        z1 = self.model["encoder"](w1, m1).float()  # (B, D)
        z2 = self.model["encoder"](w2, m2).float()  # (B, D)
        counts = {"skipped_files": batch["skipped_files"]} if batch["skipped_files"] else {}
        return Step({self.cfg.loss.name: loss(z1, z2)}, (z1, z2), counts)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing moves besides the optimizer's step."""

    def _audio(self, waveform: Tensor, mask: Tensor | None) -> Tensor:
        return torch.nn.functional.normalize(self.model["encoder"](waveform, mask), dim=-1)

    def embed_texts(self, texts: list[str], side: str = "query") -> Tensor:
        raise ValueError(
            "texts: this run (task: audio) embeds audio only; pass waveforms to embed_audio "
            "(task: audio_text embeds texts too)."
        )

    def baseline(self) -> EvalResult | None:
        if not self.cfg.eval.raw_baseline:
            return None
        return EvalResult(self.evaluate(quick=True).metrics, "before training")

    @torch.no_grad()
    def evaluate(self, *, quick: bool = False) -> EvalResult:
        """Clip -> same-text clip retrieval (``R@k``, ``MRR``: another clip of the same text
        is relevant) and speaker verification, over the held-out clips."""
        ds, e = self.test_set, self.cfg.eval
        n = min(len(ds), e.corpus_size or len(ds))
        rows = list(range(n))
        emb = self.embed_rows(ds, rows)
        metrics: dict[str, float] = {}
        if ds.texts is not None:
            metrics.update(self._same_text_retrieval(emb, [ds.texts[i] for i in rows]))
        speakers = getattr(ds, "speakers", None)
        if speakers is not None:
            metrics.update(self.speaker_metrics(emb, [speakers[i] for i in rows]))
        return EvalResult(metrics, "before training" if quick else "model")

    def _same_text_retrieval(self, emb: Tensor, texts: list[str]) -> dict[str, float]:
        from contrastkit.eval.retrieval import Relevance, retrieval_metrics

        ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        labels = torch.tensor([ids[t] for t in texts])
        has_other = torch.bincount(labels)[labels] > 1
        if not bool(has_other.any()):
            return {}
        q = has_other.nonzero().squeeze(1)
        ks = tuple(k for k in self.cfg.eval.recall_at if k < len(texts))
        m = retrieval_metrics(
            emb[q],
            emb,
            Relevance(query_labels=labels[q], corpus_labels=labels, exclude=q),
            ks=ks or (1,),
            metric="cosine",
        )
        out = {f"clip->clip R@{k}": m[f"recall@{k}"] for k in ks or (1,)}
        out["clip->clip MRR"] = m[f"mrr@{max(ks or (1,))}"]
        return out

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        ds = self.test_set
        return [(ds.key(i), ds.key(i)) for i in range(min(n, len(ds)))]

    def export_towers(self) -> ExportTowers:
        encoder = self.model["encoder"]
        return ExportTowers(audio=encoder, encoder=encoder)
