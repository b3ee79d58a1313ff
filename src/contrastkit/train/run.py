"""A run folder: where a run lives on disk and how it is read back.

``<train.output_dir>/<name>`` holds ``config.yaml`` (the resolved config), ``metrics.jsonl``,
``checkpoints/``, ``eval.json`` / ``eval_arrays.safetensors`` and, after ``contrastkit index``,
``index/``. :func:`load_run` rebuilds a run's task with its latest weights from the registries
(it never imports the training loop).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastkit.losses import LearnableTemperature, create_loss
from contrastkit.train.checkpoint import latest_checkpoint
from contrastkit.train.config import RunConfig, load_config
from contrastkit.train.tasks import EvalResult, build_task


def build_loss(cfg: RunConfig, world: int = 1, task: Any = None) -> nn.Module:
    """The registered loss ``cfg.loss.name`` with its params (temperature learnable if asked),
    set up for ``world`` processes as the loss declares (:func:`contrastkit.losses.loss_spec`):
    ``gather_distributed=True`` for the softmax losses, :class:`GlobalBatchLoss` for losses that
    need every row; then the ``negatives:`` section's queue / mining / threshold around it.

    What the data decides is injected when the loss's signature asks for it and the config
    does not set it (never by the loss's name): ``dim`` (SwAV's prototypes) and
    ``embedding_dim`` (class centres) = the embedding the task gives the loss (``task.
    embedding_dim``, else ``model.projection_dim``); ``num_classes`` = the task's training
    classes (``len(task.class_names)``). A ``loss.params.num_classes`` smaller than that is an
    error: a label would have no centre."""
    import inspect

    from contrastkit.distributed import GlobalBatchLoss
    from contrastkit.losses import LOSSES, loss_defaults, loss_spec
    from contrastkit.negatives import ExtraNegatives

    params = dict(cfg.loss.params)
    accepted = inspect.signature(LOSSES.get(cfg.loss.name)).parameters
    projection = getattr(cfg.model, "projection_dim", None)
    if "dim" in accepted and "dim" not in params and projection:
        params["dim"] = projection  # e.g. SwAV's prototypes live in that space
    params.update(_data_params(cfg, accepted, params, task))
    params.update(_checkpoint_params(accepted, params, task))
    if cfg.loss.learnable_temperature:
        start = params.get("temperature", loss_defaults(cfg.loss.name)["temperature"])
        params["temperature"] = LearnableTemperature(float(start))
    spec = loss_spec(cfg.loss.name)
    if world > 1 and spec.distributed == "gather":
        params["gather_distributed"] = True
    try:
        loss = create_loss(cfg.loss.name, **params)
    except TypeError as err:
        raise ValueError(f"loss.params for {cfg.loss.name!r}: {err}") from None
    if cfg.loss.matryoshka_dims:  # the prefix problems share one gather of the full batch
        from contrastkit.losses.matryoshka import wrap_matryoshka

        loss = wrap_matryoshka(loss, cfg.loss.matryoshka_dims)
    if world > 1 and spec.distributed == "global_batch":
        loss = GlobalBatchLoss(loss)
    n = cfg.negatives
    if n.queue or n.mining is not None or n.false_negatives.threshold is not None:
        loss = ExtraNegatives(
            loss,
            queue_size=n.queue,
            hard_negatives=n.mining,
            false_negative_threshold=n.false_negatives.threshold,
        )
    return loss


def _data_params(
    cfg: RunConfig, accepted: Any, params: dict[str, Any], task: Any
) -> dict[str, Any]:
    """``embedding_dim`` and ``num_classes`` for a loss whose signature takes them (class
    centres), from the task (see :func:`build_loss`)."""
    out: dict[str, Any] = {}
    dim = getattr(task, "embedding_dim", None) or getattr(cfg.model, "projection_dim", None)
    if "embedding_dim" in accepted and "embedding_dim" not in params and dim:
        out["embedding_dim"] = int(dim)
    classes = len(getattr(task, "class_names", None) or [])
    if "num_classes" in accepted and classes:
        given = params.get("num_classes")
        if given is None:
            out["num_classes"] = classes
        elif not isinstance(given, int) or isinstance(given, bool) or given < classes:
            raise ValueError(
                f"loss.params.num_classes: got {given!r}; the training data has {classes} "
                f"classes (labels 0..{classes - 1}), so a label >= {given!r} would have no "
                f"class centre; remove loss.params.num_classes (the trainer sets it) or set it "
                f">= {classes}."
            )
    return out


def _checkpoint_params(accepted: Any, params: dict[str, Any], task: Any) -> dict[str, Any]:
    """A pretrained two-tower checkpoint's temperature (CLIP's logit scale) and bias (SigLIP's)
    as where the loss starts, when ``loss.params`` does not set them."""
    out: dict[str, Any] = {}
    temperature = getattr(task, "initial_temperature", None)
    if temperature is not None and "temperature" in accepted and "temperature" not in params:
        out["temperature"] = float(temperature)
    bias = getattr(task, "initial_bias", None)
    if bias is not None and "bias" in accepted and "bias" not in params:
        out["bias"] = float(bias)
    return out


def base_loss(loss: nn.Module) -> nn.Module:
    """The registered loss inside the wrappers of :func:`build_loss`."""
    while hasattr(loss, "loss") and isinstance(loss.loss, nn.Module):
        loss = loss.loss
    return loss


def claim_run_dir(run: Path, explicit: bool) -> Path:
    """Create the run folder ``run`` named by :func:`make_run_dir`, atomically: a name another
    training took since it was chosen is not shared, the next free ``<name>-N`` is taken
    (``mkdir`` fails for all but one process). An ``explicit`` folder (``--run-dir``, a resume)
    is used as it is; the run lock then keeps a second writer out.

    >>> import tempfile
    >>> base = Path(tempfile.mkdtemp()) / "tiny"
    >>> claim_run_dir(base, False).name, claim_run_dir(base, False).name
    ('tiny', 'tiny-2')
    """
    if explicit:
        run.mkdir(parents=True, exist_ok=True)
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"-\d+$", "", run.name) or run.name
    candidate, i = run, 2
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate, i = run.with_name(f"{stem}-{i}"), i + 1


def make_run_dir(cfg: RunConfig, run_dir: str | os.PathLike | None) -> Path:
    """``run_dir`` or a fresh ``<output_dir>/<name>[-N]`` that does not exist yet."""
    if run_dir is not None:
        return Path(run_dir)
    base = Path(cfg.train.output_dir) / cfg.name
    path, i = base, 2
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def write_eval(run: Path, step: int, elapsed: float, result: EvalResult) -> None:
    """``eval.json`` (metrics, counts, the baseline of ``baseline.json``, step, training
    seconds) and the report's arrays, each written atomically (a crash or a full disk leaves
    the previous files)."""
    from safetensors.torch import save

    from contrastkit.atomic import write_bytes, write_json

    saved = run / "baseline.json"
    baseline: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    payload = {
        "step": step,
        "train_seconds": round(elapsed, 1),
        "metrics": result.metrics,
        "counts": result.counts,
        "baseline": baseline.get("metrics", {}),
        "baseline_name": baseline.get("name", "baseline"),
    }
    write_json(run / "eval.json", payload)
    if result.arrays:
        arrays = {k: v.detach().cpu().contiguous() for k, v in result.arrays.items()}
        write_bytes(run / "eval_arrays.safetensors", save(arrays))


def write_baseline(run: Path, result: EvalResult) -> None:
    """``baseline.json``: what the model is compared with (raw input or the initial model)."""
    from contrastkit.atomic import write_json

    payload = {"metrics": result.metrics, "name": result.name, "counts": result.counts}
    write_json(run / "baseline.json", payload)


_LOADED: dict[tuple[str, str, float], tuple[RunConfig, Any, nn.Module]] = {}


def load_run(run: str | os.PathLike) -> tuple[RunConfig, Any, nn.Module]:
    """Rebuild a run's task (with its latest weights, in eval mode) and loss from its folder.

    The result is cached per (folder, checkpoint) in this process, so ``demo`` / ``report`` do not
    reload the data and weights for every step.
    """
    run = Path(run)
    ckpt = latest_checkpoint(run)
    if ckpt is not None:
        key = (str(run.resolve()), ckpt.name, (ckpt / "model.safetensors").stat().st_mtime)
        if key in _LOADED:
            return _LOADED[key]
    loaded = _load_run(run)
    if ckpt is not None:
        _LOADED.clear()  # keep one run in memory
        _LOADED[key] = loaded
    return loaded


def forget_loaded_runs() -> None:
    """Drop the cached run of :func:`load_run` (after changing its task in place)."""
    _LOADED.clear()


def _load_run(run: Path) -> tuple[RunConfig, Any, nn.Module]:
    if not (run / "config.yaml").exists():
        raise FileNotFoundError(
            f"{run} is not a run folder (no config.yaml); pass the folder "
            "`contrastkit train` printed."
        )
    cfg = load_config(run / "config.yaml")
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    loss_fn = build_loss(cfg, task=task)
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise FileNotFoundError(f"{run} has no checkpoint yet; train it first.")
    from contrastkit.train.checkpoint import load_weights

    load_weights(ckpt, nn.ModuleDict({"model": task.model, "loss": base_loss(loss_fn)}))
    task.model.eval()
    return cfg, task, loss_fn
