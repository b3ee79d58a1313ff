"""Text pairs: query -> key retrieval with one shared text tower and in-batch negatives.

Data come from :mod:`contrastkit.data.sources` (WordNet, Bible paraphrases, your pair file),
the tower from the encoder registry (``minilm``, ``tiny_text``, ...). The baseline is the model
before training (pretrained or random), evaluated by the loop at step 0.

Evaluation is N-way retrieval over held-out pairs (:func:`contrastkit.eval.pairs.heldout_rows`).
Training never sees a held-out key: train rows whose key text is also a held-out key are
dropped, and so are such texts among hard negatives.

False negatives (``negatives.false_negatives.ids``): keys of the batch that share the query's
group id, the query's text or the key's text are ignored, not pushed away. Under ``torchrun``
the loss compares this process's queries with the keys of every process, so the mask is built
against the gathered ids (:func:`contrastkit.negatives.duplicate_mask`); every process gathers
whatever its batch holds, so no process waits in a collective another one skipped.

Gradient caching (``train.grad_cache_chunk``) runs the chunked backward inside
:meth:`TextPairsTask.loss_terms`; under ``torchrun`` the chunks go through the loop's
``DistributedDataParallel`` around :class:`~contrastkit.encoders.EmbedTokens` (see
:meth:`TextPairsTask.distribute`), and the masks' gather runs before the chunks on every process.

Hard negatives: when the loader gives per-row ``negatives``, each row draws one per step; the B
drawn texts join every query's candidates (logits (B, W*B + W*B)); a drawn text equal to a
query's own key is ignored.

Loss terms (``loss.name`` and ``loss.terms``, each weighted and logged as ``loss/<name>``) are
called by what they take (:func:`contrastkit.losses.loss_spec`): ``pair`` losses
``(query, key[, negatives])``; ``graded`` losses (CoSENT, AnglE) ``(query, key, scores)`` with
each row's gold score (``score`` of a pairs file, ``wordnet_graded``); ``teacher_scores``
losses (MarginMSE, listwise KL) ``(query, key, negatives (B, M, D), teacher (B, 1 + M),
mask=...)`` over each row's scored negatives (``scores`` written by ``contrastkit mine
--scorer``; M the most any row has, shorter rows padded with their own key and masked). With
teacher scores the B*M scored negatives are also the ``pair`` losses' extra negatives.
When the held-out pairs carry gold scores, evaluation is the Spearman / Pearson correlation of
cosine with them (:func:`contrastkit.eval.sts.sts_correlations`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from contrastkit.data import TextPairs
from contrastkit.data.beir import BeirData
from contrastkit.data.mixture import concat_pairs, load_mixture
from contrastkit.distributed import all_gather, get_rank, get_world_size
from contrastkit.encoders import EmbedTokens
from contrastkit.eval.beir import evaluate_retrieval
from contrastkit.eval.pairs import heldout_rows, recall_summary
from contrastkit.losses import create_loss, loss_spec
from contrastkit.losses.matryoshka import truncate_embeddings
from contrastkit.monitor.functional import positive_negative_similarities
from contrastkit.negatives import ExtraNegatives
from contrastkit.negatives.false_negatives import duplicate_mask, stable_text_ids
from contrastkit.train.tasks.base import (
    Corpus,
    EvalResult,
    ExportTowers,
    Step,
    TextQueries,
    build_text_encoder,
    check_loss_inputs,
    drop_texts,
    load_text_pairs,
    text_encoder_spec,
)

SIDES = ("query", "document", "document")  # queries, keys, drawn negatives


def ids_to_int(ids: list[str]) -> Tensor:
    """(N,) long: equal strings get equal integers (first-seen order)."""
    table: dict[str, int] = {}
    return torch.tensor([table.setdefault(i, len(table)) for i in ids], dtype=torch.long)


class TextPairsTask(TextQueries):
    """``pairs``: query -> key retrieval with one shared text tower."""

    name: ClassVar[str] = "pairs"
    query_kinds: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.heldout: BeirData | None = None
        self.sources: list[tuple[str, TextPairs, TextPairs]] = []
        if cfg.eval.heldout is not None:  # your held-out file: train on all of data.root
            self.heldout, self.test_pairs = load_heldout(cfg.eval.heldout, cfg.data.columns)
            self.train_pairs, _ = load_text_pairs(cfg, split="all")
            self.train_pairs = drop_texts(self.train_pairs, set(self.test_pairs.positive))
        elif cfg.data.mixture:
            self.sources = load_mixture(cfg.data.mixture, cfg.data.subset, cfg.data.test_subset)
            self.train_pairs = concat_pairs([train for _, train, _ in self.sources])
            self.test_pairs = self.sources[0][2]
            self.source_sizes = [len(train) for _, train, _ in self.sources]
        else:
            self.train_pairs, self.test_pairs = load_text_pairs(cfg, drop_heldout_keys=True)
        kinds = ("pair", "graded", "teacher_scores")
        check_loss_inputs(cfg.task, cfg.loss.name, loss_spec(cfg.loss.name).inputs, kinds)
        # (name, weight, module or None for the loop's loss, what it takes)
        self.terms: list[tuple[str, float, nn.Module | None, str]] = [
            (cfg.loss.name, cfg.loss.weight, None, loss_spec(cfg.loss.name).inputs)
        ] + [
            (t.name, t.weight, create_loss(t.name, **t.params), loss_spec(t.name).inputs)
            for t in cfg.loss.terms
        ]
        self.uses = {kind for *_, kind in self.terms}
        self.teacher_m = _check_scores(self.train_pairs, self.terms, cfg)
        self.train_ids = ids_to_int(self.train_pairs.ids)
        self.encoder_spec = text_encoder_spec(cfg.model.name, cfg.model.options, cfg.seed)
        self.model = nn.ModuleDict({"encoder": build_text_encoder(self.encoder_spec)})
        self.num_train = len(self.train_pairs)
        self.train_labels: Tensor | None = None
        self.train_groups: Tensor | None = self.train_ids
        self.class_names = list(self.test_pairs.classes)
        negatives = self.train_pairs.negatives
        self.hard_negatives = negatives is not None and any(negatives)
        if self.hard_negatives and self.terms[0][3] == "pair":
            _check_hard_negatives_fit(cfg)
        self.mask_ids = cfg.negatives.false_negatives.ids
        self._rows: list[int] | None = None
        # what gradient caching runs its chunks through (under torchrun: DDP, see distribute)
        self._embed_tokens: Callable[..., Tensor] = self.model["encoder"].embed_tokens

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]:
        rows = indices.tolist()
        out: dict[str, Any] = {
            "query": [self.train_pairs.query[i] for i in rows],
            "key": [self.train_pairs.positive[i] for i in rows],
            "ids": self.train_ids[indices],
        }
        if "graded" in self.uses:
            out["scores"] = torch.tensor([self.train_pairs.scores[i][0] for i in rows])
        if self.teacher_m:  # every scored negative of each row, padded to M with its own key
            m, negs, teacher, mask = self.teacher_m, [], [], []
            for i in rows:
                s = self.train_pairs.scores[i]
                mine = self.train_pairs.negatives[i][: len(s) - 1]
                negs += mine + [self.train_pairs.positive[i]] * (m - len(mine))
                teacher.append(s + [0.0] * (m - len(mine)))
                mask.append([True] * len(mine) + [False] * (m - len(mine)))
            out.update(negatives=negs, teacher=torch.tensor(teacher), mask=torch.tensor(mask))
        elif self.hard_negatives:
            out["negatives"] = [self._draw_negative(i, generator) for i in rows]
        return out

    def _draw_negative(self, row: int, generator: torch.Generator) -> str:
        """One of ``row``'s hard negatives, or a random training key if it has none."""
        negs = self.train_pairs.negatives[row]
        if negs:
            return negs[int(torch.randint(len(negs), (1,), generator=generator))]
        other = int(torch.randint(self.num_train, (1,), generator=generator))
        return self.train_pairs.positive[other]

    def _ignore_mask(self, batch: dict[str, Any]) -> Tensor | None:
        """(B, W*B [+ W*B]) bool over the candidates of all processes, or None when nothing can
        ever be ignored. Built from gathered ids on every process, whatever its batch holds."""
        negs = batch.get("negatives")
        if not (self.mask_ids or negs is not None):
            return None
        world = get_world_size()
        gather = all_gather if world > 1 else (lambda x: x)
        offset = get_rank() * len(batch["key"]) if world > 1 else 0
        key_text = stable_text_ids(batch["key"])
        parts = []
        if self.mask_ids:  # same group, same query text, same key text
            query_text = stable_text_ids(batch["query"])
            columns = [batch["ids"], query_text, key_text]
            parts.append(
                duplicate_mask(columns, [gather(c) for c in columns], positive_offset=offset)
            )
        else:
            parts.append(torch.zeros(len(key_text), world * len(key_text), dtype=torch.bool))
        if negs is not None:  # a drawn negative equal to a query's own key is no negative
            all_negs = gather(stable_text_ids(negs))
            parts.append(key_text[:, None] == all_negs[None, :])
        return torch.cat(parts, dim=1)

    def loss_terms(self, batch: dict[str, Any], loss: nn.Module) -> Step:
        enc = self.model["encoder"]
        queries, keys = batch["query"], batch["key"]
        b = len(keys)
        ignore = self._ignore_mask(batch)
        kwargs: dict[str, Any] = {} if ignore is None else {"ignore_mask": ignore}
        if isinstance(loss, ExtraNegatives):
            kwargs["ids"] = batch["ids"]
        negs = batch.get("negatives")
        chunk = self.cfg.train.grad_cache_chunk
        name = self.cfg.loss.name
        if chunk:  # GradCache: gradients land in .grad now; the returned loss is detached
            from contrastkit.gradcache import grad_cache_step

            device = "cuda" if torch.cuda.is_available() else "cpu"
            if torch.is_autocast_enabled(device) and (
                torch.get_autocast_dtype(device) == torch.float16
            ):  # the loop's GradScaler would unscale gradients that were never scaled
                raise ValueError(
                    "train.grad_cache_chunk: gradient caching runs in bf16 or fp32, not fp16 "
                    "(train.precision resolved to fp16); set train.precision: bf16 or fp32."
                )

            texts = [queries, keys] if negs is None else [queries, keys, negs]
            value = grad_cache_step(
                self._embed_tokens,
                [enc.tokenize(t, side=side) for t, side in zip(texts, SIDES)],
                lambda *z: loss(*(x.float() for x in z), **kwargs),
                chunk_size=chunk,
            )
            return Step({name: value}, None)
        query = enc(queries).float()  # (B, D)
        negatives = None
        if negs is None:
            key = enc(keys, side="document").float()  # (B, D)
        else:  # keys and negatives in one call: their length buckets pack better
            both = enc(keys + negs, side="document").float()  # (B + B*M, D)
            key, negatives = both[:b], both[b:]  # (B, D), (B*M, D)
        terms = {}
        for term, weight, module, kind in self.terms:
            fn = loss if module is None else module
            if kind == "graded":
                value = fn(query, key, batch["scores"].to(query))
            elif kind == "teacher_scores":
                m = self.teacher_m
                assert negatives is not None
                value = fn(
                    query,
                    key,
                    negatives.view(b, m, -1),  # (B, M, D)
                    batch["teacher"].to(query),
                    mask=batch["mask"].to(query.device),
                )
            elif negatives is None:
                value = fn(query, key, **kwargs)
            else:
                value = fn(query, key, negatives, **kwargs)
            terms[term] = value if weight == 1.0 else weight * value
        return Step(terms, (query, key))

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing moves besides the optimizer's step."""

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> bool:
        """With ``train.grad_cache_chunk`` the chunks run through ``wrap(EmbedTokens(encoder))``
        (DDP over the one text tower, every parameter of the task): ``grad_cache_step`` keeps
        every chunk but the last in ``no_sync()``, so the gradients are averaged once per step.
        Without it the loop wraps the whole step."""
        if not self.cfg.train.grad_cache_chunk:
            return False
        self._embed_tokens = wrap(EmbedTokens(self.model["encoder"]))
        return True

    @torch.no_grad()
    def embed_texts(self, texts: list[str], side: str = "query") -> Tensor:
        """N texts -> (N, D) float32 (eval mode); ``side``: ``"query"`` or ``"document"`` (one
        shared tower; a sentence-transformers model with prompts gives each side its own)."""
        return self.model["encoder"].encode(list(texts), batch_size=128, side=side).float()

    def baseline(self) -> EvalResult | None:
        """The model before training (pretrained or random initialisation)."""
        if not self.cfg.eval.raw_baseline:
            return None
        result = self.evaluate()
        return EvalResult(result.metrics, "before training", counts=result.counts)

    @torch.no_grad()
    def evaluate(self, *, quick: bool = False) -> EvalResult:
        if self.heldout is not None:
            return self._evaluate_heldout()
        if self.sources:  # a mixture: each source's held-out pairs, metrics "<source>/<name>"
            metrics: dict[str, float] = {}
            counts: dict[str, int] = {}
            for name, _, test in self.sources:
                self.test_pairs, self._rows = test, None
                result = self._evaluate_pairs(quick)
                metrics.update({f"{name}/{k}": v for k, v in result.metrics.items()})
                counts.update({f"{name}/{k}": v for k, v in result.counts.items()})
            self.test_pairs, self._rows = self.sources[0][2], None
            return EvalResult(metrics, "model", counts=counts)
        return self._evaluate_pairs(quick)

    def _evaluate_pairs(self, quick: bool) -> EvalResult:
        if self.test_pairs.scores is not None and self.test_pairs.negatives is None:
            return self._evaluate_graded(quick)
        e = self.cfg.eval
        size = min(e.corpus_size or 10**9, 300) if quick else e.corpus_size
        q_rows, c_rows, relevant = heldout_rows(self.test_pairs.ids, size, e.queries)
        query = self.embed_texts([self.test_pairs.query[r] for r in q_rows])
        corpus = self.embed_texts([self.test_pairs.positive[r] for r in c_rows], "document")
        metrics = recall_summary(query, corpus, relevant, e.recall_at)
        for d in self.cfg.loss.matryoshka_dims or ():  # each trained prefix width
            if d < query.shape[1]:
                q, c = truncate_embeddings(query, d), truncate_embeddings(corpus, d)
                at_d = recall_summary(q, c, relevant, e.recall_at)
                metrics.update({f"{k} @{d}d": v for k, v in at_d.items()})
        counts = {"corpus_size": len(c_rows), "queries": len(q_rows)}
        if quick:
            return EvalResult(metrics, counts=counts)
        pos, neg = positive_negative_similarities(query, corpus[relevant])
        labels = self.test_pairs.labels[q_rows]
        arrays = {"positive_similarity": pos, "negative_similarity": neg}
        if bool((labels >= 0).all()):
            arrays.update({"test_embeddings": query, "test_labels": labels})
        return EvalResult(metrics, "model", arrays, counts)

    def _evaluate_graded(self, quick: bool) -> EvalResult:
        """Held-out pairs with gold scores: Spearman and Pearson correlation of cosine with them
        over the first ``eval.corpus_size`` pairs (300 when quick)."""
        from contrastkit.eval.sts import sts_correlations

        p = self.test_pairs
        n = min(len(p), 300 if quick else self.cfg.eval.corpus_size or len(p))
        a = self.embed_texts(p.query[:n])
        b = self.embed_texts(p.positive[:n], "document")
        gold = torch.tensor([s[0] for s in p.scores[:n]])
        return EvalResult(sts_correlations(a, b, gold), "model", counts={"pairs": n})

    def _evaluate_heldout(self) -> EvalResult:
        """``eval.heldout``: trec_eval's measures on your held-out queries, documents and
        judgements (:func:`contrastkit.eval.beir.evaluate_retrieval`)."""
        data = self.heldout
        assert data is not None
        ks = [k for k in (1, 3, 5, 10, 100) if k <= len(data.corpus)] or [len(data.corpus)]
        metrics = evaluate_retrieval(
            lambda texts: self.embed_texts(texts, "query"),
            lambda texts: self.embed_texts(texts, "document"),
            data.corpus,
            data.queries,
            data.qrels,
            k_values=ks,
        )
        counts = {"corpus_size": len(data.corpus), "queries": len(data.qrels)}
        return EvalResult(metrics, "model", counts=counts)

    def _corpus_rows(self) -> list[int]:
        """The corpus: one held-out key per id (its first row)."""
        if self._rows is None:
            self._rows = heldout_rows(self.test_pairs.ids, None, "first")[1]
        return self._rows

    def corpus_size(self) -> int:
        return len(self._corpus_rows())

    def embed_corpus_chunk(self, start: int, stop: int) -> Corpus:
        rows = self._corpus_rows()[start:stop]
        texts = [self.test_pairs.positive[r] for r in rows]
        labels = [self.test_pairs.ids[r] for r in rows]
        return Corpus(self.embed_texts(texts, "document"), labels, texts)

    def embed_corpus(self) -> Corpus:
        return self.embed_corpus_chunk(0, self.corpus_size())

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        return self.embed_texts([query]), query

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        p = self.test_pairs
        return [(p.query[i], p.ids[i]) for i in range(min(n, len(p)))]

    def export_towers(self) -> ExportTowers:
        """One shared text tower, the registered encoder of ``encoder_spec``."""
        encoder = self.model["encoder"]
        return ExportTowers(text={"": (encoder, None)}, encoder=encoder)


def _check_scores(pairs: TextPairs, terms: list[tuple[str, float, Any, str]], cfg: Any) -> int:
    """What the loss terms need of the data's scores; returns M, the most scored negatives of a
    row (0 without a teacher_scores term). One line naming the loss and the key otherwise."""
    for name, _, _, kind in terms:
        if kind == "graded" and pairs.scores is None:
            raise ValueError(
                f"loss {name!r} takes graded pairs: data.dataset {cfg.data.dataset!r} gives no "
                "'score' per pair; add a score column (a number per row) or use "
                "data.dataset: wordnet_graded."
            )
        if kind == "teacher_scores":
            m = max((len(s) - 1 for s in pairs.scores or []), default=0)
            if m == 0:
                raise ValueError(
                    f"loss {name!r} distils a teacher's scores: the training data has no "
                    "'scores' key (the score of the positive, then of each negative); write "
                    "them with `contrastkit mine ... --scorer CROSS_ENCODER` and train on that "
                    "file (data.options.mined)."
                )
            return m
    return 0


def _check_hard_negatives_fit(cfg: Any) -> None:
    """Hard negatives enter as ``loss(query, key, negatives, ignore_mask=...)``: the loss must
    take them and no queue/mining wrapper may stand in between."""
    if not loss_spec(cfg.loss.name).takes_negatives:
        raise ValueError(
            f"data.options.hard_negatives: loss {cfg.loss.name!r} takes no extra negatives; use "
            "loss.name: info_nce or remove data.options.hard_negatives."
        )
    n = cfg.negatives
    if n.queue or n.mining is not None or n.false_negatives.threshold is not None:
        raise ValueError(
            "data.options.hard_negatives cannot be combined with negatives.queue, "
            "negatives.mining or negatives.false_negatives.threshold yet; remove one of them."
        )


def load_heldout(path: str, columns: dict[str, Any] | None) -> tuple[BeirData, TextPairs]:
    """``eval.heldout``: a BEIR folder (its ``test`` qrels) or a pairs file read with your
    ``data.columns``; as a BEIR split and as pairs (the corpus the index and report show)."""
    from pathlib import Path

    from contrastkit.data.beir import load_beir, load_beir_pairs, pairs_as_beir
    from contrastkit.data.files import load_pairs

    if Path(path).is_dir():
        return load_beir(path, "test"), load_beir_pairs(path, "test", negatives=False)
    pairs = load_pairs(path, columns=columns)
    return pairs_as_beir(pairs), pairs
