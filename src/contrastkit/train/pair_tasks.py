"""Pair tasks: text <-> text retrieval, image <-> text alignment and preference scoring.

They use the loaders of :mod:`contrastkit.data` and the towers of :mod:`contrastkit.encoders`.
Their baseline is the model before training (pretrained MiniLM, or a random initialisation),
evaluated by the loop at step 0 and written to ``baseline.json``.

Evaluation is N-way retrieval over held-out pairs: the corpus is one key per distinct id among
the first ``eval.corpus_size`` held-out ids, every held-out query of those ids searches it; a key
with the query's id is relevant (WordNet lemmas of one synset share its gloss).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.train.config import RunConfig
from contrastkit.train.monitor import pos_neg_similarities
from contrastkit.train.tasks import Corpus, EvalResult

TEXT_DATASETS = ("wordnet", "bible", "pairs_file", "wordnet_preference")


def load_text_pairs(cfg: RunConfig, split: str) -> Any:
    """The :class:`contrastkit.data.TextPairs` of ``split`` for ``cfg.data``."""
    opts = dict(cfg.data.options)
    name = cfg.data.dataset
    if name in ("wordnet", "wordnet_preference"):
        from contrastkit.data.wordnet import load_wordnet

        return load_wordnet(split=split, root=cfg.data.root, **opts)
    if name == "bible":
        from contrastkit.data.bible import load_bible_pairs

        return load_bible_pairs(split=split, **opts)
    if name == "pairs_file":
        from contrastkit.data.files import load_pairs

        if not cfg.data.root:
            raise ValueError(
                "data.dataset='pairs_file' needs data.root: the .jsonl/.csv/.parquet file."
            )
        return load_pairs(cfg.data.root, split=split, **opts)
    raise ValueError(
        f"data.dataset={name!r} is not a text pair source; allowed: {', '.join(TEXT_DATASETS)}."
    )


def build_text_encoder(cfg: RunConfig) -> nn.Module:
    """``model.name``: ``minilm`` (the packaged all-MiniLM-L6-v2) or ``tiny_text`` (a small BERT
    trained from scratch; ``model.options`` go to ``TextEncoder.from_scratch``)."""
    from contrastkit.encoders.text import TextEncoder

    opts = dict(cfg.model.options)
    if cfg.model.name == "minilm":
        return TextEncoder(**opts)
    if cfg.model.name == "tiny_text":
        opts.setdefault("seed", cfg.seed)
        return TextEncoder.from_scratch(**opts)
    raise ValueError(
        f"model.name={cfg.model.name!r} is not a text encoder; allowed: 'minilm', 'tiny_text'."
    )


def _ids_to_int(ids: list[str]) -> Tensor:
    table: dict[str, int] = {}
    return torch.tensor([table.setdefault(i, len(table)) for i in ids], dtype=torch.long)


def _eval_rows(ids: list[str], corpus_size: int | None) -> tuple[list[int], list[int], Tensor]:
    """Query rows, one corpus row per distinct id (first ``corpus_size`` ids), query -> corpus."""
    first: dict[str, int] = {}
    for row, i in enumerate(ids):
        if i not in first:
            if corpus_size is not None and len(first) >= corpus_size:
                continue
            first[i] = row
    corpus_rows = list(first.values())
    position = {i: p for p, i in enumerate(first)}
    query_rows = [row for row, i in enumerate(ids) if i in position]
    relevant = torch.tensor([position[ids[r]] for r in query_rows], dtype=torch.long)
    return query_rows, corpus_rows, relevant


def _retrieval(query: Tensor, corpus: Tensor, relevant: Tensor, ks: list[int]) -> dict[str, float]:
    from contrastkit.eval import retrieval_metrics

    ks = sorted({k for k in ks if k <= corpus.shape[0]} | {1})
    m = retrieval_metrics(query, corpus, relevant=relevant, ks=tuple(ks), metric="cosine")
    out = {f"R@{k}": m[f"recall@{k}"] for k in ks}
    out["MRR"] = m[f"mrr@{max(ks)}"]
    return out


class TextPairsTask:
    """Query -> key text retrieval with one shared text tower and in-batch negatives.

    With ``loss.false_negative_mask`` in-batch keys that share the query's id (WordNet: the same
    synset) are dropped from the softmax instead of being pushed away.
    """

    baseline_is_initial_model = True

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.train_pairs = load_text_pairs(cfg, "train")
        self.test_pairs = load_text_pairs(cfg, "test")
        if cfg.data.subset:
            self.train_pairs = self.train_pairs.subset(
                torch.arange(min(cfg.data.subset, len(self.train_pairs)))
            )
        if cfg.data.test_subset:
            self.test_pairs = self.test_pairs.subset(
                torch.arange(min(cfg.data.test_subset, len(self.test_pairs)))
            )
        self.train_ids = _ids_to_int(self.train_pairs.ids)
        self.model = nn.ModuleDict({"encoder": build_text_encoder(cfg)})
        self.num_train = len(self.train_pairs)
        self.class_names = list(self.test_pairs.classes)

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]:
        rows = indices.tolist()
        return {
            "query": [self.train_pairs.query[i] for i in rows],
            "key": [self.train_pairs.positive[i] for i in rows],
            "ids": self.train_ids[indices],
        }

    def loss_terms(
        self, batch: dict[str, Any], loss_fn: nn.Module
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor]]:
        enc = self.model["encoder"]
        kwargs: dict[str, Any] = {}
        if self.cfg.loss.false_negative_mask:
            ids = batch["ids"]
            same = ids[:, None] == ids[None, :]  # (B, B)
            kwargs["ignore_mask"] = same & ~torch.eye(len(ids), dtype=torch.bool)
        chunk = self.cfg.train.grad_cache_chunk
        if chunk:  # GradCache: gradients land in .grad now; the returned loss is detached
            from contrastkit.gradcache import grad_cache_step

            tokens = (enc.tokenize(batch["query"]), enc.tokenize(batch["key"]))
            loss = grad_cache_step(
                enc.embed_tokens,
                tokens,
                lambda q, k: loss_fn(q.float(), k.float(), **kwargs),
                chunk_size=chunk,
            )
            return {self.cfg.loss.name: loss}, (None, None)
        query, key = enc(batch["query"]).float(), enc(batch["key"]).float()  # (B, D) each
        loss = loss_fn(query, key, **kwargs)
        return {self.cfg.loss.name: loss}, (query, key)

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> Tensor:
        return self.model["encoder"].encode(texts, batch_size=128).float()

    @torch.no_grad()
    def evaluate(self, *, baseline: bool = True, quick: bool = False) -> EvalResult:
        e = self.cfg.eval
        size = min(e.corpus_size or 10**9, 300) if quick else e.corpus_size
        q_rows, c_rows, relevant = _eval_rows(self.test_pairs.ids, size)
        query = self._encode([self.test_pairs.query[r] for r in q_rows])
        corpus = self._encode([self.test_pairs.positive[r] for r in c_rows])
        metrics = _retrieval(query, corpus, relevant, e.recall_at)
        metrics["corpus_size"] = float(len(c_rows))
        if quick:
            return EvalResult(metrics)
        pos, neg = pos_neg_similarities(query, corpus[relevant])
        labels = self.test_pairs.labels[q_rows]
        arrays = {"pos_sim": pos, "neg_sim": neg}
        if bool((labels >= 0).all()):
            arrays.update({"test_embeddings": query, "test_labels": labels})
        return EvalResult(metrics, {}, "before training", arrays)

    def embed_corpus(self) -> Corpus:
        _, rows, _ = _eval_rows(self.test_pairs.ids, None)
        texts = [self.test_pairs.positive[r] for r in rows]
        labels = [self.test_pairs.ids[r] for r in rows]
        return Corpus(self._encode(texts), labels, texts)

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        return self._encode([query]), query

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        p = self.test_pairs
        return [(p.query[i], p.ids[i]) for i in range(min(n, len(p)))]


class PreferenceTask(TextPairsTask):
    """A preference scorer: ``score(prompt, response) = cos(f(prompt), f(response)) / 0.05``
    trained with the logistic (Bradley-Terry) preference loss on (prompt, chosen, rejected).

    ``wordnet_preference``: prompt = a lemma, chosen = its gloss, rejected = the gloss of another
    synset with the same lexicographer label (a hard, on-topic wrong answer), fixed by the seed.
    """

    scale = 20.0

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__(cfg)
        self.train_rejected = self._rejected(self.train_pairs, cfg.seed)
        self.test_rejected = self._rejected(self.test_pairs, cfg.seed + 1)

    @staticmethod
    def _rejected(pairs: Any, seed: int) -> list[str]:
        if pairs.negatives is not None and all(pairs.negatives):
            return [negs[0] for negs in pairs.negatives]
        g = torch.Generator().manual_seed(seed)
        n = len(pairs)
        ids = pairs.ids
        by_label: dict[int, list[int]] = {}
        for row, label in enumerate(pairs.labels.tolist()):
            by_label.setdefault(label, []).append(row)
        out = []
        for row in range(n):
            pool = by_label[int(pairs.labels[row])]
            for _ in range(10):
                other = pool[int(torch.randint(len(pool), (1,), generator=g))]
                if ids[other] != ids[row]:
                    break
            else:
                other = int(torch.randint(n, (1,), generator=g))
            out.append(pairs.positive[other])
        return out

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]:
        out = super().batch(indices, generator)
        out["rejected"] = [self.train_rejected[i] for i in indices.tolist()]
        return out

    def _scores(self, prompt: Tensor, response: Tensor) -> Tensor:
        from contrastkit.functional.similarity import paired_similarity

        return paired_similarity(prompt, response, metric="cosine") * self.scale  # (B,)

    def loss_terms(
        self, batch: dict[str, Any], loss_fn: nn.Module
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor]]:
        enc = self.model["encoder"]
        prompt = enc(batch["query"]).float()
        chosen, rejected = enc(batch["key"]).float(), enc(batch["rejected"]).float()
        loss = loss_fn(self._scores(prompt, chosen), self._scores(prompt, rejected))
        return {self.cfg.loss.name: loss}, (prompt, chosen)

    @torch.no_grad()
    def evaluate(self, *, baseline: bool = True, quick: bool = False) -> EvalResult:
        n = min(len(self.test_pairs), 300 if quick else (self.cfg.eval.corpus_size or 2000))
        prompt = self._encode(self.test_pairs.query[:n])
        chosen = self._encode(self.test_pairs.positive[:n])
        rejected = self._encode(self.test_rejected[:n])
        sc, sr = self._scores(prompt, chosen), self._scores(prompt, rejected)
        metrics = {"pairwise_accuracy": float((sc > sr).float().mean()), "pairs": float(n)}
        if quick:
            return EvalResult(metrics)
        arrays = {"pos_sim": sc / self.scale, "neg_sim": sr / self.scale}
        return EvalResult(metrics, {}, "before training", arrays)


class ImageTextTask:
    """Image <-> text alignment (CLIP layout) with the symmetric InfoNCE loss; emoji <-> name."""

    baseline_is_initial_model = True

    def __init__(self, cfg: RunConfig) -> None:
        from contrastkit.data.emoji import load_emoji
        from contrastkit.encoders.text import TextEncoder
        from contrastkit.encoders.towers import ImageTextModel
        from contrastkit.encoders.vision import SmallCNN

        self.cfg = cfg
        opts = dict(cfg.data.options)
        self.train_set = load_emoji(split="train", **opts).float()
        self.test_set = load_emoji(split="test", **opts).float()
        mopts = dict(cfg.model.options)
        text_name = mopts.pop("text", "minilm")
        if text_name == "minilm":
            text = TextEncoder()
        else:
            text = TextEncoder.from_scratch(seed=cfg.seed, **mopts.pop("text_options", {}))
        if mopts.pop("freeze_text", True):
            for p in text.parameters():
                p.requires_grad_(False)
        size = self.train_set.images.shape[-1]
        image = SmallCNN(in_channels=3, width=cfg.model.width, stem_stride=2 if size > 32 else 1)
        self.model = nn.ModuleDict({"towers": ImageTextModel(image, text, cfg.model.out_dim)})
        self.num_train = len(self.train_set)
        self.class_names = list(self.test_set.classes)
        self._text_cache: dict[str, Tensor] = {}

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]:
        images = self.train_set.images[indices]
        flip = torch.rand(len(indices), generator=generator) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)  # mirrored glyphs
        return {"images": images, "texts": [self.train_set.texts[i] for i in indices.tolist()]}

    def loss_terms(
        self, batch: dict[str, Any], loss_fn: nn.Module
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor]]:
        image, text = self.model["towers"](batch["images"], batch["texts"])
        loss = loss_fn(image.float(), text.float())
        return {self.cfg.loss.name: loss}, (image, text)

    @torch.no_grad()
    def _images(self, images: Tensor) -> Tensor:
        towers = self.model["towers"]
        was = towers.training
        towers.eval()
        out = torch.cat(
            [towers.encode_image(images[i : i + 256]) for i in range(0, len(images), 256)]
        )
        towers.train(was)
        return out.float()

    @torch.no_grad()
    def _texts(self, texts: list[str]) -> Tensor:
        towers = self.model["towers"]
        was = towers.training
        towers.eval()
        out = torch.cat([towers.encode_text(texts[i : i + 256]) for i in range(0, len(texts), 256)])
        towers.train(was)
        return out.float()

    @torch.no_grad()
    def evaluate(self, *, baseline: bool = True, quick: bool = False) -> EvalResult:
        ds = self.test_set
        image, text = self._images(ds.images), self._texts(list(ds.texts))
        rel = torch.arange(len(ds))
        ks = self.cfg.eval.recall_at
        metrics = {f"image->text {k}": v for k, v in _retrieval(image, text, rel, ks).items()}
        metrics.update({f"text->image {k}": v for k, v in _retrieval(text, image, rel, ks).items()})
        if quick:
            return EvalResult(metrics)
        pos, neg = pos_neg_similarities(image, text)
        arrays = {
            "pos_sim": pos,
            "neg_sim": neg,
            "test_embeddings": image,
            "test_labels": ds.labels,
        }
        return EvalResult(metrics, {}, "before training", arrays)

    def embed_corpus(self) -> Corpus:
        ds = self.test_set
        return Corpus(self._images(ds.images), list(ds.texts), [""] * len(ds))

    def corpus_items(self) -> Tensor:
        return self.test_set.images

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        path = Path(query)
        if path.exists():
            from PIL import Image

            size = self.train_set.images.shape[-1]
            img = Image.open(path).convert("RGB").resize((size, size))
            x = torch.tensor(list(img.getdata()), dtype=torch.float32).T.reshape(1, 3, size, size)
            return self._images(x / 255.0), x[0] / 255.0
        return self._texts([query]), query

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        ds = self.test_set
        return [(ds.texts[i], ds.texts[i]) for i in range(min(n, len(ds)))]
