"""Cross-encoders (rerankers): one transformer reads a (query, document) pair together and
gives it one score.

A bi-encoder embeds the query and the document apart and compares the two vectors; a
cross-encoder attends across both texts, which is slower (one forward per pair, nothing to
index) and more accurate, so it reranks a bi-encoder's top candidates, filters mined false
negatives and teaches the bi-encoder (distillation). The model is a transformers
``AutoModelForSequenceClassification`` with one label: the packaged MiniLM's encoder with a
fresh head (``"minilm"``), or any local Hugging Face folder. :meth:`CrossEncoder.save` writes a
folder that ``sentence_transformers.CrossEncoder`` loads and scores the same (the raw logit: the
folder declares an identity activation).

>>> import tempfile, transformers
>>> folder = tempfile.mkdtemp()
>>> cfg = transformers.BertConfig(vocab_size=60, hidden_size=8, num_hidden_layers=1,
...                               num_attention_heads=2, intermediate_size=16)
>>> _ = transformers.BertModel(cfg).save_pretrained(folder)
>>> vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
>>> _ = open(f"{folder}/vocab.txt", "w").write("\\n".join(vocab))
>>> model = load_cross_encoder(folder)
>>> len(score_pairs(model, "a cat", ["a dog", "the sea"]))
2
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.encoders.text import (
    SAFE_LOADING,
    _transformers,
    check_safetensors_folder,
    default_model_path,
    quiet_transformers,
)

__all__ = ["CrossEncoder", "load_cross_encoder", "score_pairs"]

IDENTITY = "torch.nn.modules.linear.Identity"  # sentence-transformers' activation: the raw logit


class CrossEncoder(nn.Module):
    """``forward(queries, documents) -> (N,)`` logits of N (query, document) pairs.

    Args:
        model: a transformers sequence-classification model with one label.
        tokenizer: its tokenizer (pairs are encoded as ``[CLS] q [SEP] d [SEP]``).
        max_length: tokens per pair (longer pairs are truncated, the document first).
        bucket_size: score the pairs in length-sorted groups of this many, each padded to its
            own longest pair (None: one group padded to the longest of all). The scores do not
            change; the padded compute shrinks (BEIR WordNet pairs: mean 20 tokens, the longest
            of 64 near 50, so one group is about 2.5 times the real tokens).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, max_length: int = 256, bucket_size: int | None = 16
    ) -> None:
        super().__init__()
        if bucket_size is not None and (
            not isinstance(bucket_size, int) or isinstance(bucket_size, bool) or bucket_size < 1
        ):
            raise ValueError(
                f"bucket_size must be an int >= 1 (pairs per padding group, e.g. 16) or None, "
                f"got {bucket_size!r}."
            )
        self.model, self.tokenizer, self.max_length = model, tokenizer, int(max_length)
        self.bucket_size = bucket_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, queries: list[str], documents: list[str]) -> dict[str, Tensor]:
        if len(queries) != len(documents):
            raise ValueError(
                f"queries and documents pair row by row: got {len(queries)} and {len(documents)}."
            )
        tokens = self.tokenizer(
            list(queries),
            list(documents),
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in tokens.items()}

    def forward(self, queries: list[str], documents: list[str]) -> Tensor:
        """(N,) raw scores (logits) of the N pairs (in ``bucket_size`` length-sorted groups)."""
        tokens = self.tokenize(queries, documents)  # (N, T) each, padded on the right
        lengths = tokens["attention_mask"].sum(1)  # (N,)
        n = len(lengths)
        right = getattr(self.tokenizer, "padding_side", "right") == "right"  # trimmable
        if self.bucket_size is None or n <= self.bucket_size or not right:
            return self.model(**tokens).logits[:, 0]
        order = torch.argsort(lengths, stable=True)  # (N,) shortest first
        parts = []
        for rows in order.split(self.bucket_size):
            width = int(lengths[rows].max())
            group = {k: v[rows, :width] for k, v in tokens.items()}  # (G, width) each
            parts.append(self.model(**group).logits[:, 0])  # (G,)
        return torch.cat(parts)[torch.argsort(order)]  # (N,), pairs in input order

    def save(self, path: str | Path) -> Path:
        """A folder that ``sentence_transformers.CrossEncoder(path)`` loads: the model and
        tokenizer (safetensors), ``max_length``, and the identity activation (it scores the
        logit, as :func:`score_pairs`)."""
        from contrastkit.atomic import write_text

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.config.sentence_transformers = {"activation_fn": IDENTITY}
        with quiet_transformers(_transformers()):
            self.model.save_pretrained(str(path), safe_serialization=True)
            self.tokenizer.model_max_length = self.max_length
            self.tokenizer.save_pretrained(str(path))
        config = json.loads((path / "config.json").read_text())
        config["sentence_transformers"] = {"activation_fn": IDENTITY}
        write_text(path / "config.json", json.dumps(config, indent=2))
        return path


def load_cross_encoder(path: str | Path = "minilm", max_length: int | None = None) -> CrossEncoder:
    """A :class:`CrossEncoder` from ``"minilm"`` (the packaged all-MiniLM-L6-v2 encoder with a
    fresh one-label head), ``"tiny"`` (a one-layer BERT from scratch with MiniLM's tokenizer,
    seeded: tests and smoke runs) or a local Hugging Face folder (a sequence-classification model, or
    an encoder that gets a fresh head). A folder whose architecture has no sequence-
    classification form (or no model at all) is one ``ValueError`` naming it.

    ``max_length`` (tokens per pair) defaults to 256 for ``"minilm"`` and ``"tiny"``, and for a
    folder to what its tokenizer declares (``model_max_length``, which :meth:`CrossEncoder.save`
    writes and ``sentence_transformers.CrossEncoder`` truncates at), so a reranker trained at 64
    tokens scores at 64 tokens here as there; 256 when the tokenizer declares none."""
    tf = _transformers()
    if str(path) == "tiny":
        return _tiny(tf, max_length or 256)
    folder = default_model_path() if str(path) == "minilm" else Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"cross-encoder {str(path)!r}: no such folder; pass 'minilm' or a Hugging Face "
            "model folder (a trained reranker: the folder `contrastkit export` wrote)."
        )
    check_safetensors_folder(folder)
    try:
        config = tf.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        config.num_labels = 1
        with quiet_transformers(tf):  # "newly initialized: classifier" is expected for a fresh head
            model = tf.AutoModelForSequenceClassification.from_pretrained(
                str(folder), config=config, **SAFE_LOADING
            )
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as err:  # transformers raises ValueError, OSError, KeyError...
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cross-encoder {str(folder)!r}: not a sequence-classification model folder "
            f"({reason}); pass a BERT-like encoder or reranker folder, or 'minilm'."
        ) from None
    if max_length is None:
        declared = getattr(tokenizer, "model_max_length", None)
        limit = getattr(model.config, "max_position_embeddings", None) or 512
        ok = str(path) != "minilm" and isinstance(declared, int) and 0 < declared <= limit
        max_length = declared if ok else 256
    return CrossEncoder(model, tokenizer, max_length)


def _tiny(tf: Any, max_length: int) -> CrossEncoder:
    """A one-layer, 16-wide BERT cross-encoder from scratch (seed 0), MiniLM's tokenizer."""
    tokenizer = tf.AutoTokenizer.from_pretrained(str(default_model_path()))
    cfg = tf.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, num_labels=1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = tf.BertForSequenceClassification(cfg)
    return CrossEncoder(model, tokenizer, max_length)


@torch.no_grad()
def score_pairs(
    model: CrossEncoder, query: str, texts: list[str], batch_size: int = 64
) -> list[float]:
    """The cross-encoder's score (logit) of ``query`` with each of ``texts``, in eval mode.

    Args:
        model: a :class:`CrossEncoder`. query: one query. texts: N documents.
        batch_size: pairs per forward pass.

    Returns:
        N floats, larger = more relevant (the serve ``/rerank`` route sorts by them).
    """
    was = model.training
    model.eval()
    try:
        out: list[float] = []
        for i in range(0, len(texts), batch_size):
            chunk = list(texts[i : i + batch_size])
            out += model([query] * len(chunk), chunk).float().tolist()
        return out
    finally:
        model.train(was)
