"""A sentence-transformers model folder, read module by module (no sentence-transformers import).

A folder written by ``SentenceTransformer.save`` lists its pipeline in ``modules.json``:
``Transformer`` (the Hugging Face model; ``sentence_bert_config.json`` may set
``max_seq_length`` and ``do_lower_case``) -> ``Pooling`` (``1_Pooling/config.json``) ->
any number of ``Dense`` layers (``2_Dense/config.json`` + ``model.safetensors``; a pickled
``pytorch_model.bin`` is refused with the command that converts it) and ``Normalize`` modules. ``config_sentence_transformers.json`` holds
the ``prompts`` and ``default_prompt_name``. :func:`read_st_folder` turns these files into a
:class:`FolderSpec`; :func:`pool_tokens` and :class:`Dense` compute what the Pooling and Dense
modules compute, so :class:`contrastkit.encoders.TextEncoder` reproduces
``SentenceTransformer(folder).encode``.

Nothing here imports a dotted path from a config file: module types and activation functions
are matched against allow-lists by their class name.

Shapes: B batch, T tokens, H the transformer's hidden size, D the embedding dim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# sentence-transformers < 5 wrote one boolean per mode; the order is its concatenation order
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
MODULE_TYPES = ("Transformer", "Pooling", "Dense", "Normalize")
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "Tanh": nn.Tanh,
    "Identity": nn.Identity,
    "ReLU": nn.ReLU,
    "GELU": nn.GELU,
    "Sigmoid": nn.Sigmoid,
    "SiLU": nn.SiLU,
    "LeakyReLU": nn.LeakyReLU,
    "Softplus": nn.Softplus,
}
# the prompt names sentence-transformers' encode_query / encode_document look for, in order
QUERY_PROMPTS = ("query",)
DOCUMENT_PROMPTS = ("document", "passage", "corpus")


def check_pooling(mode: object, where: str = "pooling") -> tuple[str, ...]:
    """``mode`` (one name or a list of names) as a tuple of known pooling modes.

    >>> check_pooling("cls"), check_pooling(["mean", "max"])
    (('cls',), ('mean', 'max'))
    """
    modes = (
        (mode,) if isinstance(mode, str) else tuple(mode) if isinstance(mode, list | tuple) else ()
    )
    if not modes or not all(isinstance(m, str) and m in POOLING_MODES for m in modes):
        raise ValueError(
            f"{where}: unknown pooling mode {mode!r}; use one of {', '.join(POOLING_MODES)}."
        )
    return modes


def pool_tokens(
    token_embeddings: Tensor,
    attention_mask: Tensor,
    modes: tuple[str, ...] = ("mean",),
    prompt_length: int = 0,
) -> Tensor:
    """Pool token embeddings into one vector per text, as sentence-transformers' ``Pooling``.

    Args:
        token_embeddings: (B, T, H).
        attention_mask: (B, T), 1 for real tokens, 0 for (right) padding.
        modes: pooling modes, concatenated in this order (see :data:`POOLING_MODES`).
        prompt_length: leading tokens (a prompt) left out of the pooling (``include_prompt:
            false``); weighted mean keeps the other tokens' position weights.

    Returns:
        (B, H * len(modes)).

    >>> tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    >>> mask = torch.tensor([[1, 1, 0]])
    >>> pool_tokens(tokens, mask, ("cls", "lasttoken", "max"))
    tensor([[1., 2., 3., 4., 3., 4.]])
    >>> pool_tokens(tokens, mask, ("weightedmean",))  # positions weigh 1 and 2
    tensor([[2.3333, 3.3333]])
    """
    if prompt_length:
        attention_mask = attention_mask.clone()
        attention_mask[:, :prompt_length] = 0
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)  # (B, T, 1)
    out = []
    for mode in modes:
        if mode == "cls":
            first = attention_mask.to(torch.int).argmax(dim=1)  # (B,) first counted token
            rows = torch.arange(len(first), device=token_embeddings.device)
            out.append(token_embeddings[rows, first])  # (B, H)
        elif mode == "max":
            out.append(token_embeddings.masked_fill(mask == 0, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (token_embeddings * mask).sum(1)  # (B, H)
            count = mask.sum(1).clamp_min(1e-9)  # (B, 1)
            out.append(total / (count if mode == "mean" else count.sqrt()))
        elif mode == "weightedmean":
            positions = torch.arange(
                1, token_embeddings.shape[1] + 1, dtype=token_embeddings.dtype
            ).view(1, -1, 1)  # (1, T, 1)
            weights = mask * positions.to(token_embeddings.device)  # (B, T, 1)
            out.append((token_embeddings * weights).sum(1) / weights.sum(1).clamp_min(1e-9))
        elif mode == "lasttoken":
            seq_len = attention_mask.shape[1]
            values, from_end = attention_mask.flip(1).max(1)  # (B,) each
            from_end = torch.where(values == 0, seq_len - 1, from_end)
            last = seq_len - from_end - 1  # (B,) last counted token
            rows = torch.arange(len(last), device=token_embeddings.device)
            out.append((token_embeddings * mask)[rows, last])  # (B, H)
        else:
            check_pooling(mode)
    return torch.cat(out, dim=-1)


class Dense(nn.Module):
    """sentence-transformers' ``Dense``: ``activation(linear(x))`` (+ ``x`` with
    ``use_residual``); ``x: (B, D_in) -> (B, D_out)``. Weights are named like theirs
    (``linear.weight``, ``linear.bias``, ``residual.weight``).

    >>> layer = Dense(4, 2, activation="Identity")
    >>> layer(torch.zeros(3, 4)).shape
    torch.Size([3, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "Tanh",
        use_residual: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation {activation!r} is not supported; use one of {', '.join(ACTIVATIONS)}."
            )
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bias, self.activation_name, self.use_residual = bool(bias), activation, use_residual
        self.linear = nn.Linear(self.in_features, self.out_features, bias=self.bias)
        self.activation = ACTIVATIONS[activation]()
        if use_residual and self.in_features != self.out_features:
            self.residual = nn.Linear(self.in_features, self.out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.activation(self.linear(x))  # (B, D_out)
        if self.use_residual:
            out = out + (x if self.in_features == self.out_features else self.residual(x))
        return out

    def st_config(self) -> dict[str, Any]:
        """The ``config.json`` sentence-transformers writes for this layer."""
        config: dict[str, Any] = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "activation_function": f"torch.nn.modules.{_activation_module(self.activation_name)}"
            f".{self.activation_name}",
        }
        if self.use_residual:
            config["use_residual"] = True
        return config


def _activation_module(name: str) -> str:
    return "linear" if name == "Identity" else "activation"


class Normalize(nn.Module):
    """L2 normalisation of each row: ``(B, D) -> (B, D)`` (sentence-transformers' ``Normalize``)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, p=2, dim=-1)


@dataclass
class FolderSpec:
    """What a sentence-transformers folder asks for.

    Attributes:
        transformer: the folder of the Hugging Face model (``config.json``, tokenizer).
        pooling: pooling modes (concatenated in order).
        include_prompt: whether prompt tokens are pooled.
        head: the modules after pooling, in order (:class:`Dense`, :class:`Normalize`), with
            their weights loaded.
        max_length: ``max_seq_length`` or ``None``.
        do_lower_case: lower-case texts before tokenizing.
        prompts: prompt name -> prompt text.
        default_prompt_name: the prompt ``encode`` uses when none is named.
    """

    transformer: Path
    pooling: tuple[str, ...] = ("mean",)
    include_prompt: bool = True
    head: list[nn.Module] = field(default_factory=list)
    max_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing; the folder's modules.json names it - restore it or "
            "re-save the model with SentenceTransformer.save."
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err.msg}); re-save the model.") from None
    except (UnicodeDecodeError, RecursionError) as err:
        what = "not UTF-8" if isinstance(err, UnicodeDecodeError) else "JSON nested too deeply"
        raise ValueError(f"{path}: unreadable ({what}); re-save the model.") from None
    if not isinstance(data, dict | list):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    return data  # type: ignore[return-value]


def _pooling_modes(config: dict[str, Any], path: Path) -> tuple[str, ...]:
    if "pooling_mode" in config:
        return check_pooling(config["pooling_mode"], f"{path}: pooling_mode")
    modes = tuple(mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key))
    return modes or ("mean",)


def _load_dense(folder: Path) -> Dense:
    path = folder / "config.json"
    config = _read_json(path)
    name = str(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
    short = name.rsplit(".", 1)[-1]
    if not name.startswith("torch.nn.") or short not in ACTIVATIONS:
        raise ValueError(
            f"{path}: activation_function {name!r} is not one of the supported torch.nn "
            f"activations ({', '.join(ACTIVATIONS)}); replace it or drop the Dense module."
        )
    if config.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise ValueError(
            f"{path}: module_input_name {config['module_input_name']!r} is not supported; only "
            "Dense layers over the sentence embedding are."
        )
    layer = Dense(
        config["in_features"],
        config["out_features"],
        bias=config.get("bias", True),
        activation=short,
        use_residual=bool(config.get("use_residual", False)),
    )
    weights = folder / "model.safetensors"
    if not weights.is_file() and (folder / "pytorch_model.bin").is_file():
        # a pickle: never unpickled here (torch.load's weights_only is not a sandbox)
        bin_file = folder / "pytorch_model.bin"
        raise ValueError(
            f"{bin_file}: contrastkit reads weights only from safetensors files, never a pickled "
            'pytorch_model.bin; if you trust the file, convert it once: python -c "import torch; '
            "from safetensors.torch import save_file; save_file(torch.load('"
            f"{bin_file}', weights_only=True), '{weights}')\""
        )
    if not weights.is_file():
        raise FileNotFoundError(
            f"{folder} has no model.safetensors for its Dense layer; re-save the model with "
            "SentenceTransformer.save (safe_serialization=True)."
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
        layer.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{weights}: not the weights of this Dense layer ({reason}); re-save the model."
        ) from None
    return layer


def read_st_folder(folder: str | Path) -> FolderSpec | None:
    """The :class:`FolderSpec` of a sentence-transformers folder, or ``None`` for a folder
    without ``modules.json`` (a plain Hugging Face model).

    >>> import tempfile
    >>> read_st_folder(tempfile.mkdtemp()) is None
    True
    """
    folder = Path(folder)
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        return _read_modules(folder, modules_file)
    except (KeyError, TypeError, AttributeError, OverflowError) as err:
        # a value of the wrong type somewhere in the folder's JSON files
        raise ValueError(
            f"{folder}: malformed sentence-transformers configuration ({type(err).__name__}: "
            f"{err}); re-save the model with SentenceTransformer.save."
        ) from None


def _module_folder(folder: Path, entry: dict[str, Any], modules_file: Path) -> Path:
    """The module's sub-folder: a relative path inside ``folder`` (no ``..``, not absolute)."""
    rel = Path(str(entry.get("path", "")))
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(
            f"{modules_file}: module path {str(rel)!r} points outside the model folder; "
            "module paths are sub-folders of it."
        )
    return folder / rel


def _read_modules(folder: Path, modules_file: Path) -> FolderSpec:
    modules = _read_json(modules_file)
    if not isinstance(modules, list):
        raise ValueError(f"{modules_file}: expected a list of modules, got an object.")
    spec: FolderSpec | None = None
    for entry in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        sub = _module_folder(folder, entry, modules_file)
        if kind not in MODULE_TYPES:
            raise ValueError(
                f"{modules_file}: module type {entry.get('type')!r} is not supported; "
                f"supported: {', '.join(MODULE_TYPES)} (remove it or use a folder without it)."
            )
        if kind == "Transformer":
            if spec is not None:
                raise ValueError(f"{modules_file}: more than one Transformer module.")
            spec = FolderSpec(sub)
            bert_config = sub / "sentence_bert_config.json"
            if bert_config.is_file():
                config = _read_json(bert_config)
                spec.max_length = config.get("max_seq_length")
                spec.do_lower_case = bool(config.get("do_lower_case", False))
            continue
        if spec is None:
            raise ValueError(
                f"{modules_file}: {kind} comes before any Transformer module; the first module "
                "must be the Transformer."
            )
        if kind == "Pooling":
            config = _read_json(sub / "config.json")
            spec.pooling = _pooling_modes(config, sub / "config.json")
            spec.include_prompt = bool(config.get("include_prompt", True))
        elif kind == "Dense":
            spec.head.append(_load_dense(sub))
        else:
            spec.head.append(Normalize())
    if spec is None:
        raise ValueError(f"{modules_file}: no Transformer module; re-save the model.")
    st_config = folder / "config_sentence_transformers.json"
    if st_config.is_file():
        config = _read_json(st_config)
        spec.prompts = {str(k): str(v or "") for k, v in (config.get("prompts") or {}).items()}
        spec.default_prompt_name = config.get("default_prompt_name")
    return spec


def side_prompt(prompts: dict[str, str], default_prompt_name: str | None, side: str) -> str:
    """The prompt sentence-transformers' ``encode_query`` (``side="query"``) or
    ``encode_document`` (``side="document"``) prepends: the side's named prompt, else the
    default prompt, else none.

    >>> side_prompt({"query": "q: ", "passage": "p: "}, None, "document")
    'p: '
    """
    if side not in ("query", "document"):
        raise ValueError(f"side must be 'query' or 'document', got {side!r}.")
    for name in QUERY_PROMPTS if side == "query" else DOCUMENT_PROMPTS:
        if name in prompts:
            return prompts[name]
    if default_prompt_name is not None:
        return prompts.get(default_prompt_name, "")
    return ""
