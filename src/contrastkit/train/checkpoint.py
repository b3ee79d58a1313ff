"""Checkpoints you can trust: atomic folders, verified on load, no pickle.

A checkpoint is a folder ``checkpoints/step_XXXXXXX`` holding

* ``model.safetensors``: the weights (encoders, heads, learnable loss parameters);
* ``state.safetensors`` + ``state.json``: the training state (optimizer, scheduler, RNG and
  data-order state, queues, step). Every tensor goes to safetensors; the rest is a JSON skeleton
  with type tags, so ints, floats, bools, None, strings, lists, tuples and dicts with int keys
  (torch optimizer state) come back exactly;
* ``MANIFEST.json``: sha256 and size of every file, written last.

It is built by :func:`contrastkit.atomic.atomic_folder` (temp folder, fsync, rename, fsync of the
parent), then the ``checkpoints/latest`` pointer is replaced atomically. :func:`latest_checkpoint`
returns the newest checkpoint that verifies against its manifest and logs a warning for each one
it skips. Nothing here unpickles: a ``state.pt`` (older contrastkit, or planted) is never read.

>>> import tempfile, torch
>>> from torch import nn
>>> d = tempfile.mkdtemp()
>>> m = nn.Linear(2, 2)
>>> path = save_checkpoint(d, 5, m, {"step": 5, "rng": torch.get_rng_state(), "per": {0: 1.5}})
>>> latest_checkpoint(d).name
'step_0000005'
>>> m2 = nn.Linear(2, 2); state = load_checkpoint(latest_checkpoint(d), m2)
>>> state["step"], state["per"], bool(torch.equal(m.weight, m2.weight))
(5, {0: 1.5}, True)
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from contrastkit.atomic import CorruptFolderError, atomic_folder, verify_manifest, write_text

WEIGHTS = "model.safetensors"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
LEGACY_STATE = "state.pt"
STATE_FORMAT = 1

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, foreign, legacy pickle); the message says why."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """``<run_dir>/checkpoints``."""
    return Path(run_dir) / "checkpoints"


# -- the training state without pickle ---------------------------------------------------------
def encode_state(state: Any) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Split ``state`` into a JSON skeleton with type tags and the tensors it refers to.

    >>> import torch
    >>> skeleton, tensors = encode_state({"step": 3, "m": torch.zeros(2), 1: (None, True)})
    >>> sorted(tensors), decode_state(skeleton, tensors)[1]
    (['t0'], (None, True))
    """
    tensors: dict[str, Tensor] = {}

    def enc(obj: Any, where: str) -> dict[str, Any]:
        if obj is None:
            return {"t": "none"}
        if isinstance(obj, bool):
            return {"t": "bool", "v": obj}
        if isinstance(obj, int):
            return {"t": "int", "v": obj}
        if isinstance(obj, float):
            return {"t": "float", "v": obj if math.isfinite(obj) else repr(obj)}
        if isinstance(obj, str):
            return {"t": "str", "v": obj}
        if isinstance(obj, Tensor):
            key = f"t{len(tensors)}"
            # clone: safetensors refuses tensors that share storage (views of one buffer)
            tensors[key] = obj.detach().cpu().contiguous().clone()
            return {"t": "tensor", "k": key}
        if isinstance(obj, (list, tuple)):
            kind = "list" if isinstance(obj, list) else "tuple"
            return {"t": kind, "v": [enc(x, f"{where}[{i}]") for i, x in enumerate(obj)]}
        if isinstance(obj, dict):
            items = []
            for k, v in obj.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise TypeError(
                        f"checkpoint state{where}: dict key {k!r} ({type(k).__name__}) is not a str "
                        "or int; use str or int keys."
                    )
                items.append([enc(k, where), enc(v, f"{where}[{k!r}]")])
            return {"t": "dict", "v": items}
        raise TypeError(
            f"checkpoint state{where}: {type(obj).__name__} cannot be stored without pickle; use "
            "tensors, numbers, str, bool, None, lists, tuples and dicts."
        )

    return {"format": STATE_FORMAT, "state": enc(state, "")}, tensors


def decode_state(skeleton: dict[str, Any], tensors: dict[str, Tensor]) -> Any:
    """Invert :func:`encode_state` (raises ValueError on a skeleton it did not write)."""

    def dec(node: Any) -> Any:
        kind = node["t"]
        if kind == "none":
            return None
        if kind in ("bool", "int", "str"):
            value = node["v"]
            if type(value) is not {"bool": bool, "int": int, "str": str}[kind]:
                raise ValueError(f"a {kind} node holds {value!r}")
            return value
        if kind == "float":
            return float(node["v"])
        if kind == "tensor":
            return tensors[node["k"]]
        if kind == "list":
            return [dec(x) for x in node["v"]]
        if kind == "tuple":
            return tuple(dec(x) for x in node["v"])
        if kind == "dict":
            return {dec(k): dec(v) for k, v in node["v"]}
        raise ValueError(f"unknown node type {kind!r}")

    if not isinstance(skeleton, dict) or skeleton.get("format") != STATE_FORMAT:
        raise ValueError(f"not a state skeleton of format {STATE_FORMAT}")
    try:
        return dec(skeleton["state"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed state skeleton ({type(err).__name__}: {err})") from None


# -- writing -----------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: str | os.PathLike, step: int, model: nn.Module, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write ``model`` weights + ``state`` for ``step`` atomically; keep the newest ``keep``.

    Raises:
        TypeError: ``state`` holds something that cannot be stored without pickle.
        contrastkit.atomic.WriteFailedError: the disk is full or failed; the previous
            checkpoints and the ``latest`` pointer are untouched.
    """
    root = checkpoint_dir(run_dir)
    final = root / f"step_{step:07d}"
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    skeleton, tensors = encode_state(state)  # before any write: a TypeError leaves nothing
    _sweep(root)
    with atomic_folder(final) as folder:
        folder.write_bytes(WEIGHTS, save_safetensors(weights))
        folder.write_bytes(STATE_TENSORS, save_safetensors(tensors))
        folder.write_json(STATE_JSON, skeleton)
    write_text(root / "latest", final.name)
    old = sorted((p for p in root.glob("step_*") if p.is_dir() and p != final), key=_step_of)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _sweep(root: Path) -> None:
    """Tidy what a process killed mid-write left: temp folders and pointer files go; a copy moved
    aside for a same-step rewrite goes once its replacement is in place, else comes back."""
    for stale in [*root.glob(".tmp_step_*"), *root.glob(".latest.*.tmp")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    for aside in root.glob(".old_step_*"):
        final = root / aside.name[len(".old_") :].split(".")[0]
        if final.is_dir():
            shutil.rmtree(aside, ignore_errors=True)
        else:  # killed between the two renames: the old copy goes back
            os.replace(aside, final)


# -- finding and verifying -------------------------------------------------------------------
def _step_of(path: Path) -> int:
    """The step of ``step_N`` or of its set-aside copy ``.old_step_N.<pid>``; -1 otherwise."""
    match = re.fullmatch(r"(?:\.old_)?step_(\d+)(?:\.\d+)?", path.name)
    return int(match.group(1)) if match else -1


_VERIFIED: dict[str, tuple[Any, ...]] = {}  # folder -> file stats when it last verified
_WARNED: set[tuple[str, str]] = set()  # (checkpoint, reason) already logged


def _stats(path: Path) -> tuple[Any, ...]:
    try:
        return tuple(
            (p.name, s.st_size, s.st_mtime_ns, s.st_ino)
            for p in sorted(path.iterdir())
            if (s := p.stat())
        )
    except OSError:
        return ()


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Check a checkpoint folder against its manifest; raise :class:`CheckpointError` if not.

    A folder that verified is not hashed again in this process until one of its files changes
    (size, mtime or inode), so ``load_run`` -> ``load_weights`` reads each file's hash once.
    """
    path = Path(path)
    stats = _stats(path)
    if stats and _VERIFIED.get(str(path.resolve())) == stats:
        return
    if not (path / "MANIFEST.json").exists() and (path / LEGACY_STATE).exists():
        raise CheckpointError(
            f"{path}: written by an older contrastkit (state in the pickle {LEGACY_STATE}, no "
            "MANIFEST.json); contrastkit never unpickles, so retrain the run with this version"
        )
    try:
        verify_manifest(path)
    except CorruptFolderError as err:
        raise CheckpointError(str(err)) from None
    for name in (WEIGHTS, STATE_TENSORS, STATE_JSON):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: not a contrastkit checkpoint (no {name})")
    _VERIFIED[str(path.resolve())] = stats


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of the run that verifies, or None if the run has none.

    The ``latest`` pointer's target is tried first, then the other ``step_*`` folders from the
    newest; each one skipped is logged (``logging.warning``) with the reason.

    Raises:
        CheckpointError: the run has checkpoints but none verifies (each reason is listed).
    """
    root = checkpoint_dir(run_dir)
    candidates = sorted((p for p in root.glob("step_*") if p.is_dir()), key=_step_of, reverse=True)
    # A process killed between the two renames of a same-step rewrite left its old copy aside
    # (``.old_step_N.<pid>``) and no ``step_N``: that copy is a whole checkpoint; use it (the
    # next save puts it back in place). Read-only here: loading never moves files.
    present = {p.name for p in candidates}
    aside = [
        p
        for p in root.glob(".old_step_*")
        if p.is_dir() and p.name[len(".old_") :].split(".")[0] not in present
    ]
    candidates = sorted([*candidates, *aside], key=_step_of, reverse=True)
    pointer = root / "latest"
    if pointer.is_file():
        try:
            named = root / pointer.read_text(encoding="utf-8").strip()
        except (OSError, ValueError):
            named = None
        if named in candidates:
            candidates.remove(named)
            candidates.insert(0, named)
    skipped = []
    for path in candidates:
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            skipped.append((path.name, str(err)))
            continue
        for name, reason in skipped:  # only when one verifies: else the error below says it all
            if (name, reason) not in _WARNED:  # once per process (load_run looks twice)
                _WARNED.add((name, reason))
                log.warning("skipping checkpoint %s: %s", name, reason)
        return path
    if skipped:
        raise CheckpointError(
            f"no checkpoint in {root} verifies ({'; '.join(r for _, r in skipped)}); restore the "
            "run folder from a backup or train it again"
        )
    return None


# -- reading -----------------------------------------------------------------------------------
def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_safetensors(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from None


def load_weights(path: str | os.PathLike, model: nn.Module, strict: bool = True) -> None:
    """Load ``model.safetensors`` of checkpoint folder ``path`` into ``model``.

    Raises:
        CheckpointError: the file does not verify, or does not match ``model`` (another config).
    """
    path = Path(path)
    verify_checkpoint(path)
    weights = _read_safetensors(path / WEIGHTS)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        first = str(err).strip().splitlines()[1:2] or [str(err)[:200]]
        raise CheckpointError(
            f"{path / WEIGHTS} does not match the model built from the run's config "
            f"({first[0].strip()}); was config.yaml changed after training? restore it or "
            "train again"
        ) from None
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint {path} does not match the model built from the run's config: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}; was the config changed after training?"
        )


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """The training state saved in checkpoint folder ``path`` (verified; never unpickles)."""
    path = Path(path)
    verify_checkpoint(path)
    tensors = _read_safetensors(path / STATE_TENSORS)
    try:
        skeleton = json.loads((path / STATE_JSON).read_bytes().decode("utf-8"))
        state = decode_state(skeleton, tensors)
    except ValueError as err:
        raise CheckpointError(f"{path / STATE_JSON}: {err}; train the run again") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / STATE_JSON}: the state is not a dict; train the run again")
    return state


def load_checkpoint(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` and return the saved training state (never unpickles)."""
    load_weights(path, model)
    return load_state(path)
