"""Pair tasks: text <-> text retrieval, image <-> text alignment and preference scoring.

They use the loaders of :mod:`contrastkit.data` and the towers of :mod:`contrastkit.encoders`.
Their baseline is the model before training (pretrained MiniLM, or a random initialisation),
evaluated by the loop at step 0 and written to ``baseline.json``.

Evaluation is N-way retrieval over held-out pairs: the corpus is one key per distinct id for
``eval.corpus_size`` held-out ids drawn at random (a fixed seed, so every run and the baseline
search the same corpus; the first N would be biased: WordNet's data files are ordered by
lexicographer file, so the first 1,000 held-out noun synsets are 65 % acts and 34 % animals).
``eval.queries: first`` asks one query per id, its first row (a WordNet synset's head lemma, as
in the project's issue 8 protocol); ``all`` asks every held-out query of those ids. A key with
the query's id is relevant (WordNet lemmas of one synset share its gloss).

Training never sees a held-out key: train rows whose key text is also a held-out key (WordNet:
82 noun glosses shared by a train and a held-out synset) are dropped, and so are such texts among
hard negatives.

Hard negatives: when the loader gives per-row ``negatives`` (``load_wordnet(hard_negatives=K)``:
glosses of related synsets), each training row draws one of them per step and the B drawn texts
are encoded with the keys and join every query's candidates (logits (B, 2B)); a drawn text equal
to a query's own key is ignored.
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


EVAL_SEED = 0  # which held-out ids form the evaluation corpus: the same in every run


def _eval_rows(
    ids: list[str], corpus_size: int | None, queries: str = "first"
) -> tuple[list[int], list[int], Tensor]:
    """The evaluation's rows of a held-out split whose row ``r`` has id ``ids[r]``.

    The corpus is one row per distinct id (its first) for ``corpus_size`` ids drawn with
    ``EVAL_SEED`` (all ids when None or not fewer), kept in order of first appearance.
    ``queries="first"``: one query per corpus id, that same first row; ``"all"``: every row of
    a corpus id.

    Returns:
        query rows (Q,), corpus rows (N,) and ``relevant: (Q,)``, the corpus position of each
        query's id.

    >>> _eval_rows(["a", "a", "b", "c"], None, "all")
    ([0, 1, 2, 3], [0, 2, 3], tensor([0, 0, 1, 2]))
    >>> _eval_rows(["a", "a", "b", "c"], None, "first")
    ([0, 2, 3], [0, 2, 3], tensor([0, 1, 2]))
    """
    if queries not in ("first", "all"):
        raise ValueError(f"queries must be 'first' or 'all', got {queries!r}.")
    first: dict[str, int] = {}
    for row, i in enumerate(ids):
        first.setdefault(i, row)
    chosen = list(first)
    if corpus_size is not None and corpus_size < len(chosen):
        g = torch.Generator().manual_seed(EVAL_SEED)
        picked = torch.randperm(len(chosen), generator=g)[:corpus_size].sort().values
        chosen = [chosen[p] for p in picked.tolist()]
    corpus_rows = [first[i] for i in chosen]
    position = {i: p for p, i in enumerate(chosen)}
    if queries == "first":
        query_rows = corpus_rows
    else:
        query_rows = [row for row, i in enumerate(ids) if i in position]
    relevant = torch.tensor([position[ids[r]] for r in query_rows], dtype=torch.long)
    return query_rows, corpus_rows, relevant


def _drop_texts(pairs: Any, banned: set[str]) -> Any:
    """``pairs`` without the rows whose key (``positive``) is in ``banned``, and without
    ``banned`` texts among their ``negatives``."""
    keep = [r for r, text in enumerate(pairs.positive) if text not in banned]
    if len(keep) < len(pairs):
        pairs = pairs.subset(torch.tensor(keep, dtype=torch.long))
    if pairs.negatives is not None:
        pairs.negatives = [[n for n in negs if n not in banned] for negs in pairs.negatives]
    return pairs


def _same_text(a: list[str], b: list[str]) -> Tensor:
    """(len(a), len(b)) bool: ``a[i] == b[j]``."""
    table: dict[str, int] = {}
    ia = torch.tensor([table.setdefault(t, len(table)) for t in a])
    ib = torch.tensor([table.setdefault(t, len(table)) for t in b])
    return ia[:, None] == ib[None, :]


def false_negatives(ids: Tensor, query: list[str], key: list[str]) -> Tensor:
    """(B, B) bool in-batch false negatives of B pairs: off-diagonal entries whose rows share an
    id (a synset), the same query text (a polysemous lemma twice: the key -> query direction
    cannot tell them apart) or the same key text.

    >>> false_negatives(torch.tensor([0, 0, 1, 2]), ["a", "b", "c", "c"], ["x", "x", "y", "z"])
    tensor([[False,  True, False, False],
            [ True, False, False, False],
            [False, False, False,  True],
            [False, False,  True, False]])
    """
    same = ids[:, None] == ids[None, :]  # (B, B)
    same |= _same_text(query, query) | _same_text(key, key)
    return same & ~torch.eye(len(ids), dtype=torch.bool)


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
        self.train_pairs = _drop_texts(self.train_pairs, set(self.test_pairs.positive))
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
        negatives = self.train_pairs.negatives
        self.hard_negatives = negatives is not None and any(negatives)
        if self.hard_negatives and type(self) is TextPairsTask:
            _check_hard_negatives_fit(cfg)

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]:
        rows = indices.tolist()
        out: dict[str, Any] = {
            "query": [self.train_pairs.query[i] for i in rows],
            "key": [self.train_pairs.positive[i] for i in rows],
            "ids": self.train_ids[indices],
        }
        if self.hard_negatives and type(self) is TextPairsTask:
            out["negatives"] = [self._draw_negative(i, generator) for i in rows]
        return out

    def _draw_negative(self, row: int, generator: torch.Generator) -> str:
        """One of ``row``'s hard negatives, or a random training key if it has none."""
        negs = self.train_pairs.negatives[row]
        if negs:
            return negs[int(torch.randint(len(negs), (1,), generator=generator))]
        other = int(torch.randint(self.num_train, (1,), generator=generator))
        return self.train_pairs.positive[other]

    def loss_terms(
        self, batch: dict[str, Any], loss_fn: nn.Module
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor]]:
        enc = self.model["encoder"]
        queries, keys = batch["query"], batch["key"]
        b = len(keys)
        ignore = torch.zeros(b, b, dtype=torch.bool)  # (B, B)
        if self.cfg.loss.false_negative_mask:
            ignore = false_negatives(batch["ids"], queries, keys)
        negs = batch.get("negatives")
        if negs is not None:  # a drawn negative equal to a query's own key is no negative
            ignore = torch.cat([ignore, _same_text(keys, negs)], dim=1)  # (B, 2B)
        kwargs: dict[str, Any] = {"ignore_mask": ignore} if bool(ignore.any()) else {}
        chunk = self.cfg.train.grad_cache_chunk
        if chunk:  # GradCache: gradients land in .grad now; the returned loss is detached
            from contrastkit.gradcache import grad_cache_step

            texts = [queries, keys] if negs is None else [queries, keys, negs]
            loss = grad_cache_step(
                enc.embed_tokens,
                [enc.tokenize(t) for t in texts],
                lambda *z: loss_fn(*(x.float() for x in z), **kwargs),
                chunk_size=chunk,
            )
            return {self.cfg.loss.name: loss}, (None, None)
        query = enc(queries).float()  # (B, D)
        if negs is None:
            key = enc(keys).float()  # (B, D)
            loss = loss_fn(query, key, **kwargs)
        else:  # keys and negatives in one call: their length buckets pack better
            key, negatives = enc(keys + negs).float().split(b)  # (B, D) each
            loss = loss_fn(query, key, negatives, **kwargs)
        return {self.cfg.loss.name: loss}, (query, key)

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> Tensor:
        return self.model["encoder"].encode(texts, batch_size=128).float()

    @torch.no_grad()
    def evaluate(self, *, baseline: bool = True, quick: bool = False) -> EvalResult:
        e = self.cfg.eval
        size = min(e.corpus_size or 10**9, 300) if quick else e.corpus_size
        q_rows, c_rows, relevant = _eval_rows(self.test_pairs.ids, size, e.queries)
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
        _, rows, _ = _eval_rows(self.test_pairs.ids, None, "first")
        texts = [self.test_pairs.positive[r] for r in rows]
        labels = [self.test_pairs.ids[r] for r in rows]
        return Corpus(self._encode(texts), labels, texts)

    query_kinds = ("text",)

    def embed_texts(self, texts: list[str], side: str = "query") -> Tensor:
        """N texts -> (N, D) float32 (eval mode); ``side``: ``"query"`` or ``"document"`` (one
        shared tower here: both sides embed alike)."""
        return self._encode(list(texts))

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        return self._encode([query]), query

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        p = self.test_pairs
        return [(p.query[i], p.ids[i]) for i in range(min(n, len(p)))]


def _check_hard_negatives_fit(cfg: RunConfig) -> None:
    """Hard negatives enter as ``loss(query, key, negatives, ignore_mask=...)``: the loss must
    take them and no queue/mining wrapper may stand in between."""
    from contrastkit.train.config import _forward_params

    if "negatives" not in _forward_params(cfg.loss.name):
        raise ValueError(
            f"data.options.hard_negatives: loss {cfg.loss.name!r} takes no extra negatives; use "
            "loss.name: info_nce or remove data.options.hard_negatives."
        )
    c = cfg.loss
    if c.queue_size or c.hard_negatives is not None or c.false_negative_threshold is not None:
        raise ValueError(
            "data.options.hard_negatives cannot be combined with loss.queue_size, "
            "loss.hard_negatives or loss.false_negative_threshold yet; remove one of them."
        )


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

    query_kinds = ("text", "image")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the image tower takes."""
        c, h, w = self.train_set.images.shape[1:]
        return int(c), int(h), int(w)

    def embed_texts(self, texts: list[str], side: str = "query") -> Tensor:
        """N captions -> (N, D) float32 from the text tower (``side`` is accepted for the
        common signature; captions have one tower)."""
        return self._texts(list(texts))

    def embed_images(self, images: Tensor) -> Tensor:
        """images: (N, C, H, W) float in [0, 1] -> (N, D) float32 from the image tower."""
        return self._images(images)

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        if Path(query).exists():
            from contrastkit.data.images import load_image

            c, h, w = self.image_shape
            x = load_image(query, channels=c, size=(h, w))
            return self._images(x[None]), x
        return self._texts([query]), query

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        ds = self.test_set
        return [(ds.texts[i], ds.texts[i]) for i in range(min(n, len(ds)))]
