"""The model section's fine-tuning keys applied to a task's model (``model.lora``,
``model.freeze``, ``train.gradient_checkpointing``) and the optimizer's layer-wise
learning-rate decay (``optim.layer_decay``).

:func:`apply_fine_tuning` runs in :func:`contrastkit.train.tasks.build_task`, so a run and its
reload (``load_run``: export, serve, resume) build the same modules and the checkpoint's LoRA
tensors load into them.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from contrastkit.encoders.adapters import (
    add_lora,
    enable_gradient_checkpointing,
    freeze_parameters,
)
from contrastkit.errors import ArgumentError, restate


def apply_fine_tuning(model: nn.Module, cfg: Any) -> None:
    """LoRA adapters, then freezing, then gradient checkpointing on ``model`` (the task's
    ``nn.ModuleDict``), as ``cfg`` asks; a key that matches nothing is one ``ValueError``
    naming it."""
    m = cfg.model
    lora = getattr(m, "lora", None)
    if lora is not None:
        try:
            add_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
        except ArgumentError as err:
            raise ValueError(
                restate(err, {"target_modules": "model.lora.target_modules"})
            ) from None
    freeze = getattr(m, "freeze", None) or []
    if freeze:
        try:
            freeze_parameters(model, freeze)
        except ArgumentError as err:
            raise ValueError(restate(err, {"patterns": "model.freeze"})) from None
    checkpointing = getattr(cfg.train, "gradient_checkpointing", False)
    if checkpointing and not enable_gradient_checkpointing(model):
        raise ValueError(
            "train.gradient_checkpointing: true, but the model has no transformers tower "
            "to checkpoint (the ResNets are not checkpointed); remove the key."
        )


_LAYER = re.compile(r"(?:^|\.)(?:layers?|blocks?|stages?)\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens|patch_embed|stem|conv1|bn1)\b")


def layer_id(name: str, num_layers: int) -> int:
    """0 for embeddings, l + 1 for transformer / stage block l, ``num_layers + 1`` for the rest
    (pooling heads, projections, the loss's temperature).

    >>> layer_id("model.embeddings.word_embeddings.weight", 6)
    0
    >>> layer_id("model.encoder.layer.3.attention.self.query.weight", 6)
    4
    >>> layer_id("projection.weight", 6)
    7
    """
    hit = _LAYER.search(name)
    if hit:
        return int(hit.group(1)) + 1
    if _EMBEDDINGS.search(name):
        return 0
    return num_layers + 1


def layer_decay_groups(
    named: list[tuple[str, nn.Parameter]], lr: float, decay: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups with ``lr * decay ** (L + 1 - layer_id)`` (ELECTRA / BEiT's
    layer-wise decay, Clark et al. 2020, https://arxiv.org/abs/2003.10555): layers near the
    input move least. Matrices decay by ``weight_decay``, biases / norms do not."""
    ids = [_LAYER.search(n) for n, _ in named]
    num_layers = max((int(h.group(1)) + 1 for h in ids if h), default=0)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in named:
        lid = layer_id(name, num_layers)
        matrix = p.ndim >= 2
        key = (lid, matrix)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": lr * decay ** (num_layers + 1 - lid),
                "weight_decay": weight_decay if matrix else 0.0,
            }
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


ADAPTERS = "adapters"


def save_adapters(run: Any, model: nn.Module, cfg: Any, step: int) -> None:
    """``run/adapters/``: the LoRA adapters as a PEFT adapter folder
    (``adapter_config.json`` + ``adapter_model.safetensors``, a few hundred KB) that
    ``peft.PeftModel.from_pretrained(base, run / "adapters")`` loads onto the base transformers
    model (the folder its config names as ``base_model_name_or_path``); rewritten at each
    checkpoint of a LoRA run, nothing without LoRA. A model with several transformers towers
    holding adapters writes one folder per tower, ``adapters/<tower's module path>``. The
    checkpoints hold the adapters too (resume reads those; adapters on a layer outside every
    transformers model, e.g. a head a target happens to name, are kept there only);
    ``export`` merges them."""
    from pathlib import Path

    from safetensors.torch import save

    from contrastkit.atomic import write_bytes, write_json
    from contrastkit.encoders.adapters import peft_adapters

    lora = getattr(cfg.model, "lora", None)
    if lora is None:
        return
    towers = peft_adapters(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    for name, (config, state) in towers.items():
        folder = Path(run) / ADAPTERS / (name if len(towers) > 1 else "")
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes(folder / "adapter_model.safetensors", save(state, {"format": "pt"}))
        write_json(folder / "adapter_config.json", config)
    if towers:
        write_json(Path(run) / ADAPTERS / "step.json", {"step": int(step)})
