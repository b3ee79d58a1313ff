"""Preference scoring: ``score(prompt, response) = cos(f(prompt), f(response)) * 20`` trained
with a preference loss (logistic: Bradley-Terry) on (prompt, chosen, rejected) triples.

``wordnet_preference``: prompt = a lemma, chosen = its gloss, rejected = the gloss of another
synset with the same lexicographer label (a hard, on-topic wrong answer), fixed by the seed. A
pair file with a ``negatives`` column takes its first negative as the rejected response; your
column names map through ``data.columns`` as in the pairs task (:func:`load_text_pairs`). The
metric is pairwise accuracy (chosen scored above rejected) on held-out triples; the baseline is
the model before training.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from contrastkit.functional.similarity import paired_similarity
from contrastkit.losses import loss_spec
from contrastkit.train.tasks.base import (
    BackwardAfterLossTerms,
    Corpus,
    EvalResult,
    ExportTowers,
    Step,
    TextQueries,
    build_text_encoder,
    check_loss_inputs,
    load_text_pairs,
    text_encoder_spec,
)

SCALE = 20.0  # cosine -> score (inverse temperature of the Bradley-Terry logits)


def rejected_responses(pairs: Any, seed: int) -> list[str]:
    """One rejected response per row: the row's first negative, else another row's key with the
    same label and another id (drawn with ``seed``)."""
    if pairs.negatives is not None and all(pairs.negatives):
        return [negs[0] for negs in pairs.negatives]
    g = torch.Generator().manual_seed(seed)
    n, ids = len(pairs), pairs.ids
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


class PreferenceTask(TextQueries, BackwardAfterLossTerms):
    """``preference``: a text tower scoring (prompt, response) pairs."""

    name: ClassVar[str] = "preference"
    query_kinds: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        check_loss_inputs(cfg.task, cfg.loss.name, loss_spec(cfg.loss.name).inputs, ("scores",))
        self.train_pairs, self.test_pairs = load_text_pairs(cfg)
        self.encoder_spec = text_encoder_spec(cfg.model.name, cfg.model.options, cfg.seed)
        self.model = nn.ModuleDict({"encoder": build_text_encoder(self.encoder_spec)})
        self.train_rejected = rejected_responses(self.train_pairs, cfg.seed)
        self.test_rejected = rejected_responses(self.test_pairs, cfg.seed + 1)
        self.num_train = len(self.train_pairs)
        self.train_labels: Tensor | None = None
        self.train_groups: Tensor | None = None
        self.class_names = list(self.test_pairs.classes)

    def batch(self, indices: Tensor, generator: torch.Generator) -> dict[str, Any]:
        rows = indices.tolist()
        return {
            "query": [self.train_pairs.query[i] for i in rows],
            "key": [self.train_pairs.positive[i] for i in rows],
            "rejected": [self.train_rejected[i] for i in rows],
        }

    @staticmethod
    def scores(prompt: Tensor, response: Tensor) -> Tensor:
        """(B,) scores of row-aligned ``prompt: (B, D)`` and ``response: (B, D)``."""
        return paired_similarity(prompt, response, metric="cosine") * SCALE

    def loss_terms(self, batch: dict[str, Any], loss: nn.Module) -> Step:
        enc = self.model["encoder"]
        prompt = enc(batch["query"]).float()
        chosen, rejected = enc(batch["key"]).float(), enc(batch["rejected"]).float()
        value = loss(self.scores(prompt, chosen), self.scores(prompt, rejected))
        return Step({self.cfg.loss.name: value}, (prompt, chosen))

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing moves besides the optimizer's step."""

    @torch.no_grad()
    def embed_texts(self, texts: list[str], side: str = "query") -> Tensor:
        """N texts -> (N, D) float32 (one tower for prompts and responses)."""
        return self.model["encoder"].encode(list(texts), batch_size=128).float()

    def baseline(self) -> EvalResult | None:
        """The model before training."""
        if not self.cfg.eval.raw_baseline:
            return None
        result = self.evaluate(quick=False)
        return EvalResult(result.metrics, "before training", counts=result.counts)

    @torch.no_grad()
    def evaluate(self, *, quick: bool = False) -> EvalResult:
        n = min(len(self.test_pairs), 300 if quick else (self.cfg.eval.corpus_size or 2000))
        prompt = self.embed_texts(self.test_pairs.query[:n])
        chosen = self.embed_texts(self.test_pairs.positive[:n])
        rejected = self.embed_texts(self.test_rejected[:n])
        sc, sr = self.scores(prompt, chosen), self.scores(prompt, rejected)
        metrics = {"pairwise_accuracy": float((sc > sr).float().mean())}
        if quick:
            return EvalResult(metrics, counts={"pairs": n})
        arrays = {"positive_similarity": sc / SCALE, "negative_similarity": sr / SCALE}
        return EvalResult(metrics, "model", arrays, {"pairs": n})

    def corpus_size(self) -> int:
        """The corpus is the held-out responses."""
        return len(self.test_pairs)

    def embed_corpus_chunk(self, start: int, stop: int) -> Corpus:
        texts = list(self.test_pairs.positive[start:stop])
        return Corpus(self.embed_texts(texts), list(self.test_pairs.ids[start:stop]), texts)

    def embed_corpus(self) -> Corpus:
        return self.embed_corpus_chunk(0, self.corpus_size())

    def embed_query(self, query: str) -> tuple[Tensor, Any]:
        return self.embed_texts([query]), query

    def examples(self, n: int = 8) -> list[tuple[Any, str]]:
        p = self.test_pairs
        return [(p.query[i], p.ids[i]) for i in range(min(n, len(p)))]

    def export_towers(self) -> ExportTowers:
        """One text tower for prompts and responses, the registered encoder of ``encoder_spec``."""
        encoder = self.model["encoder"]
        return ExportTowers(text={"": (encoder, None)}, encoder=encoder)
