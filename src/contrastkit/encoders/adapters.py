"""Fine-tuning controls on any module: freezing by name pattern, LoRA adapters (``peft``),
merging them back, gradient checkpointing, weight-space interpolation (WiSE-FT).

LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) adds a trainable low-rank update
``W + (alpha / r) * B A`` to the chosen linear layers and freezes everything else; merged, the
model is the plain architecture again (a sentence-transformers / transformers folder that loads
with no peft). WiSE-FT (Wortsman et al. 2022, https://arxiv.org/abs/2109.01903) mixes the
starting and the fine-tuned weights, ``(1 - alpha) * start + alpha * fine_tuned``, to keep the
starting model's zero-shot ability.

>>> from torch import nn
>>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
>>> freeze_parameters(m, ["0.*"])
2
>>> [p.requires_grad for p in m.parameters()]
[False, False, True, True]
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.errors import ArgumentError

LORA_INSTALL_HINT = "LoRA adapters need peft: pip install 'contrastkit[adapters]' (or peft)."


def freeze_parameters(module: nn.Module, patterns: Sequence[str]) -> int:
    """Set ``requires_grad=False`` on the parameters whose name matches any shell-style
    pattern (``fnmatch``: ``towers.image_encoder.*``, ``*.embeddings.*``); returns how many.

    A pattern matching no parameter, or patterns that freeze every trainable parameter, is one
    ``ArgumentError`` naming ``patterns`` and the pattern.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    frozen = 0
    for pattern in patterns:
        hits = [p for n, p in named if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            sample = ", ".join(n for n, _ in named[:3])
            raise ArgumentError(
                f"{{patterns}}: {pattern!r} matches no trainable parameter; names look like "
                f"{sample} (shell-style patterns, e.g. 'towers.image_encoder.*').",
                "patterns",
            )
        for p in hits:
            if p.requires_grad:
                p.requires_grad_(False)
                frozen += 1
    if named and frozen == len(named):
        raise ArgumentError(
            f"{{patterns}} = {list(patterns)!r} freezes every parameter of the model; nothing "
            "would train. Leave out the tower you want to train.",
            "patterns",
        )
    return frozen


def add_lora(
    module: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("query", "value"),
) -> int:
    """Inject LoRA adapters (``peft.inject_adapter_in_model``) into the linear layers of
    ``module`` whose name ends with one of ``target_modules``; every other parameter of
    ``module`` is frozen. Returns the number of trainable parameters.

    Target modules that match nothing are one ``ArgumentError`` naming ``target_modules``.
    """
    try:
        import peft
    except ImportError as err:  # pragma: no cover - peft is in the adapters extra
        raise ImportError(LORA_INSTALL_HINT) from err
    config = peft.LoraConfig(
        r=int(r),
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        target_modules=list(target_modules),
    )
    try:
        peft.inject_adapter_in_model(config, module)
    except ValueError as err:  # NoMatchingPeftModuleError is a ValueError
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ArgumentError(
            f"{{target_modules}} = {list(target_modules)!r} matches no layer of the model "
            f"({str(err).splitlines()[0][:120]}); its linear layers are named "
            f"{', '.join(linear[:12])}.",
            "target_modules",
        ) from None
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def has_lora(module: nn.Module) -> bool:
    """Whether ``module`` holds LoRA layers."""
    return any("lora_A" in n for n, _ in module.named_parameters())


def peft_adapters(
    module: nn.Module,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
) -> dict[str, tuple[dict[str, Any], dict[str, Tensor]]]:
    """PEFT's saved form of the adapters of each ``transformers`` model inside ``module`` that
    holds LoRA layers: module path -> (``adapter_config.json`` content, the
    ``adapter_model.safetensors`` tensors keyed as ``PeftModel.save_pretrained`` keys them,
    ``base_model.model.<name>.lora_A.weight``), so ``peft.PeftModel.from_pretrained(base,
    folder)`` loads them onto the base model (``base_model_name_or_path``)."""
    import peft
    from transformers import PreTrainedModel

    out: dict[str, tuple[dict[str, Any], dict[str, Tensor]]] = {}
    taken: list[str] = []
    for path, child in module.named_modules():
        if not isinstance(child, PreTrainedModel) or any(path.startswith(t + ".") for t in taken):
            continue  # the outermost transformers model only (CLIPModel, not its towers)
        state = {
            "base_model.model." + name.replace(".default.", "."): p.detach().cpu().contiguous()
            for name, p in child.named_parameters()
            if ".lora_A.default." in name or ".lora_B.default." in name
        }
        if not state:
            continue
        taken.append(path)
        config = peft.LoraConfig(
            r=int(r),
            lora_alpha=float(alpha),
            lora_dropout=float(dropout),
            target_modules=sorted(target_modules),
            base_model_name_or_path=str(getattr(child, "name_or_path", "") or ""),
        ).to_dict()
        config = {
            k: sorted(v) if isinstance(v, set) else (v.value if hasattr(v, "value") else v)
            for k, v in config.items()
        }
        out[path] = (config, state)
    return out


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRA layer into its base layer (``W + (alpha / r) B A``) and put the base
    layer back in its place: the plain architecture again. Returns how many were merged."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - no peft: nothing to merge
        return 0
    merged = 0
    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer) and name:
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, child.get_base_layer())
            merged += 1
    for p in module.parameters():
        p.requires_grad_(True)
    return merged


def enable_gradient_checkpointing(module: nn.Module) -> int:
    """Recompute activations in the backward pass instead of keeping them, in every
    ``transformers`` model inside ``module`` (``gradient_checkpointing_enable``, non-reentrant,
    so frozen embeddings and LoRA need no input-gradient hook). Returns how many models were
    switched (0: nothing to checkpoint).

    The ResNets are not checkpointed: recomputing a BatchNorm block in training mode updates
    its running statistics twice."""
    done = 0
    for child in module.modules():
        if getattr(child, "supports_gradient_checkpointing", False) and hasattr(
            child, "gradient_checkpointing_enable"
        ):
            new = hasattr(child, "activation_checkpointing_enable")  # transformers >= 5.x
            if getattr(
                child, "is_activation_checkpointing" if new else "is_gradient_checkpointing", False
            ):
                continue  # a sub-model already switched by its parent
            if new:
                child.activation_checkpointing_enable({"use_reentrant": False})
            else:  # pragma: no cover - older transformers
                child.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            done += 1
    return done


def interpolate_state(
    start: dict[str, Tensor], end: dict[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """WiSE-FT: ``(1 - alpha) * start + alpha * end`` for floating tensors present in both
    (others are taken from ``end``).

    >>> interpolate_state({"w": torch.zeros(2)}, {"w": torch.ones(2)}, 0.25)
    {'w': tensor([0.2500, 0.2500])}
    """
    check_alpha(alpha)
    out = {}
    for key, value in end.items():
        first = start.get(key)
        if first is not None and value.is_floating_point() and first.shape == value.shape:
            out[key] = torch.lerp(first.to(value.dtype), value, float(alpha))
        else:
            out[key] = value
    return out


def check_alpha(alpha: Any) -> float:
    """An interpolation weight in [0, 1] (0: the starting weights, 1: the fine-tuned ones)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ArgumentError(
            f"{{alpha}} = {alpha!r} is outside [0, 1]; 0 keeps the starting weights, 1 the "
            "fine-tuned ones (e.g. 0.5).",
            "alpha",
        )
    return float(alpha)
