"""Atomic checkpoints: model weights in safetensors, everything else in a small torch file.

A checkpoint is a folder ``checkpoints/step_XXXXXXX`` holding ``model.safetensors`` (the weights:
encoders, heads and learnable loss parameters) and ``state.pt`` (optimizer, scheduler, RNG and
data-order state, step). It is written into a temporary folder and renamed into place, then the
``checkpoints/latest`` pointer is replaced atomically, so a crash or Ctrl-C mid-write never leaves
a half-written checkpoint behind the pointer.

>>> import tempfile, torch
>>> from torch import nn
>>> d = tempfile.mkdtemp()
>>> m = nn.Linear(2, 2)
>>> path = save_checkpoint(d, 5, m, {"step": 5})
>>> latest_checkpoint(d).name
'step_0000005'
>>> m2 = nn.Linear(2, 2); state = load_checkpoint(latest_checkpoint(d), m2)
>>> state["step"], bool(torch.equal(m.weight, m2.weight))
(5, True)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"
STATE = "state.pt"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | os.PathLike, step: int, model: nn.Module, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write ``model`` weights + ``state`` for ``step`` atomically; keep the newest ``keep``."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / WEIGHTS))
    torch.save(state, tmp / STATE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer_tmp = root / f".latest_{os.getpid()}"
    pointer_tmp.write_text(final.name)
    os.replace(pointer_tmp, root / "latest")
    old = sorted(p for p in root.glob("step_*") if p.is_dir() and p != final)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint the ``latest`` pointer names, or None if the run has none."""
    root = checkpoint_dir(run_dir)
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / WEIGHTS).exists() else None


def load_weights(path: str | os.PathLike, model: nn.Module, strict: bool = True) -> None:
    """Load ``model.safetensors`` of checkpoint folder ``path`` into ``model``."""
    weights = load_file(str(Path(path) / WEIGHTS))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint {path} does not match the model built from the run's config: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}; was the config changed after training?"
        )


def load_checkpoint(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` and return the saved training state."""
    load_weights(path, model)
    return torch.load(Path(path) / STATE, weights_only=False)
