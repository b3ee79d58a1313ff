"""Rerank: a cross-encoder scoring (query, document) pairs jointly (:mod:`contrastkit.encoders.
cross_encoder`), trained on the config's pairs with their hard negatives.

Each step, every row of the batch draws ``model.negatives`` of its negatives (a BEIR folder's
mined file, ``data.options.mined``; a row with fewer is filled with other rows' keys) and the
cross-encoder scores its positive and them: ``logits (B, 1 + M)``, the positive in column 0.
The loss is registered and called by what it takes: ``listwise`` losses (``listwise_ce``) get
the logits, ``pointwise`` losses (``pointwise_bce``) every pair with its label (1 positive, 0
negative).

Evaluation reranks, for up to ``eval.corpus_size`` held-out queries (one per id), the query's
positive among ``model.eval_candidates - 1`` other held-out documents drawn with a fixed seed:
``R@1`` and ``MRR``. The retrieval figures of the full pipeline come from ``contrastkit
eval-retrieval MODEL DIR --rerank EXPORTED``. Export writes a folder that
``sentence_transformers.CrossEncoder`` loads.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from contrastkit.encoders.cross_encoder import CrossEncoder, load_cross_encoder, score_pairs
from contrastkit.eval.pairs import heldout_rows
from contrastkit.losses import loss_spec
from contrastkit.train.tasks.base import (
    BackwardAfterLossTerms,
    Corpus,
    EvalResult,
    ExportTowers,
    Step,
    TextQueries,
    check_loss_inputs,
    eval_mode,
    load_text_pairs,
)


class RerankTask(BackwardAfterLossTerms, TextQueries):
    """``rerank``: a cross-encoder over (query, document) pairs."""

    name: ClassVar[str] = "rerank"
    query_kinds: ClassVar[tuple[str, ...]] = ()  # it embeds nothing: no index, no search
    EVAL_SEED: ClassVar[int] = 0

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.kind = loss_spec(cfg.loss.name).inputs
        check_loss_inputs(cfg.task, cfg.loss.name, self.kind, ("listwise", "pointwise"))
        self.train_pairs, self.test_pairs = load_text_pairs(cfg, drop_heldout_keys=True)
        if not any(self.train_pairs.negatives or []):
            raise ValueError(
                f"data: task: rerank trains on each query's positive against its negatives, and "
                f"data.dataset {cfg.data.dataset!r} gives none; mine some (`contrastkit mine`) "
                "and set data.options.mined, or give your pairs file a 'negatives' column."
            )
        m = cfg.model
        self.model = nn.ModuleDict(
            {"cross_encoder": load_cross_encoder(m.name, max_length=m.max_length)}
        )
        self.num_train = len(self.train_pairs)
        self.train_labels = None
        self.train_groups = None
        self.class_names: list[str] = []
        self.encoder_spec = None

    @property
    def cross_encoder(self) -> CrossEncoder:
        return self.model["cross_encoder"]  # type: ignore[return-value]

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]:
        rows, m = indices.tolist(), self.cfg.model.negatives
        p = self.train_pairs
        candidates = []
        for i in rows:
            negs = list(p.negatives[i]) if p.negatives is not None else []
            order = torch.randperm(len(negs), generator=generator).tolist()
            drawn = [negs[j] for j in order[:m]]
            while len(drawn) < m:  # too few: other training keys
                other = int(torch.randint(self.num_train, (1,), generator=generator))
                if p.positive[other] != p.positive[i]:
                    drawn.append(p.positive[other])
            candidates.append([p.positive[i], *drawn])
        return {"query": [p.query[i] for i in rows], "candidates": candidates}

    def loss_terms(self, batch: dict[str, Any], loss: nn.Module) -> Step:
        queries, candidates = batch["query"], batch["candidates"]
        c = len(candidates[0])
        flat_q = [q for q in queries for _ in range(c)]
        flat_d = [d for row in candidates for d in row]
        logits = self.cross_encoder(flat_q, flat_d).float().view(len(queries), c)  # (B, 1 + M)
        if self.kind == "listwise":
            value = loss(logits)
        else:
            labels = torch.zeros_like(logits)
            labels[:, 0] = 1.0
            value = loss(logits.flatten(), labels.flatten())
        return Step({self.cfg.loss.name: value})

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing moves besides the optimizer's step."""

    def baseline(self) -> EvalResult | None:
        if not self.cfg.eval.raw_baseline:
            return None
        result = self.evaluate()
        return EvalResult(result.metrics, "before training", counts=result.counts)

    @torch.no_grad()
    def evaluate(self, *, quick: bool = False) -> EvalResult:
        p, e = self.test_pairs, self.cfg.eval
        size = min(e.corpus_size or 10**9, 50 if quick else 10**9)
        q_rows, c_rows, _ = heldout_rows(p.ids, size, "first")
        g = torch.Generator().manual_seed(self.EVAL_SEED)
        k = min(self.cfg.model.eval_candidates, len(c_rows))
        ranks = []
        with eval_mode(self.model):
            for pos, row in enumerate(q_rows):
                others = [r for r in torch.randperm(len(c_rows), generator=g).tolist() if r != pos]
                docs = [p.positive[row]] + [p.positive[c_rows[r]] for r in others[: k - 1]]
                scores = self.cross_encoder([p.query[row]] * len(docs), docs).float()
                ranks.append(1 + int((scores[1:] > scores[0]).sum()))
        r = torch.tensor(ranks, dtype=torch.float64)
        metrics = {"R@1": float((r == 1).double().mean()), "MRR": float((1 / r).mean())}
        return EvalResult(metrics, "model", counts={"queries": len(q_rows), "candidates": k})

    # -- a reranker embeds nothing: no index, no search ------------------------------------
    def _no_embeddings(self) -> ValueError:
        return ValueError(
            "texts: this run is a reranker (task: rerank): it scores (query, document) pairs and "
            "embeds no texts; use it with `contrastkit eval-retrieval MODEL DIR --rerank "
            "EXPORTED` or score_pairs."
        )

    def embed_texts(self, texts: list[str], side: str = "query") -> Tensor:
        raise self._no_embeddings()

    def corpus_size(self) -> int:
        raise self._no_embeddings()

    def embed_corpus_chunk(self, start: int, stop: int) -> Corpus:
        raise self._no_embeddings()

    def embed_corpus(self) -> Corpus:
        raise self._no_embeddings()

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        raise self._no_embeddings()

    @torch.no_grad()
    def rerank_scores(self, query: str, texts: list[str]) -> Tensor:
        """The cross-encoder's score (logit) of ``query`` with each of ``texts``: (N,) float32,
        larger = more relevant (:func:`~contrastkit.encoders.cross_encoder.score_pairs`; what
        ``contrastkit serve``'s ``POST /rerank`` answers with)."""
        scores = score_pairs(self.cross_encoder, query, list(texts))
        return torch.tensor(scores, dtype=torch.float32)  # (N,)

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        p = self.test_pairs
        return [(p.query[i], p.ids[i]) for i in range(min(n, len(p)))]

    def export_towers(self) -> ExportTowers:
        """No tower: the cross-encoder, written as a sentence-transformers CrossEncoder folder."""
        return ExportTowers(cross_encoder=self.cross_encoder)
