"""``contrastkit eval-zero-shot MODEL_OR_RUN DATA --classes FILE [--templates FILE]``.

MODEL_OR_RUN: a run folder whose task embeds texts and images (``task: image_text``), or a
local CLIP / SigLIP folder (``CLIPModel`` / ``SiglipModel``, e.g. an ``export --format hf``).
DATA: ``emoji`` (the packaged emoji, held-out split, Unicode blocks as classes) or an image
folder with one sub-folder per class. ``--classes``: one line per class, ``FOLDER`` or
``FOLDER<TAB>name in the prompts``; every class of DATA must be listed. ``--templates``: one
template per line with ``{}`` where the class name goes (default:
:data:`contrastkit.eval.zero_shot.DEFAULT_TEMPLATES`).

Prints one JSON object: ``zero-shot top-1`` / ``top-5`` and the counts. ``--interpolate
0,0.25,0.5,0.75,1`` (a run only) is WiSE-FT's evaluation sweep: the run's weights become
``(1 - alpha) * start + alpha * fine-tuned`` for each alpha in turn (as ``export
--interpolate`` writes them) and the JSON holds one row per alpha under ``"sweep"``; the sweep
is also kept in ``RUN/wiseft.json`` (one entry per DATA and classes file), which the run's
report shows as a table. Application code (it reads runs); the library never imports it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor


def add_parser(sub: Any) -> None:
    z = sub.add_parser(
        "eval-zero-shot",
        help="zero-shot classification: class names through prompt templates -> top-1/top-5",
        description="Classify DATA's images by the nearest class-name embedding (CLIP's "
        "zero-shot protocol) with MODEL_OR_RUN: a run folder (task: image_text) or a local "
        "CLIP / SigLIP folder. DATA: emoji (held-out split) or an image folder with a "
        "sub-folder per class.",
    )
    z.add_argument("model", metavar="MODEL_OR_RUN")
    z.add_argument("data", metavar="DATA")
    z.add_argument(
        "--classes",
        required=True,
        metavar="FILE",
        help="one class per line: FOLDER, or FOLDER<TAB>name used in the prompts",
    )
    z.add_argument("--templates", metavar="FILE", help="one prompt template per line, with {}")
    z.add_argument(
        "--interpolate",
        metavar="ALPHAS",
        help="a run only: WiSE-FT sweep, comma-separated alphas in [0, 1] (0 = the start, "
        "1 = fine-tuned), e.g. 0,0.25,0.5,0.75,1; kept in RUN/wiseft.json for the report",
    )
    z.add_argument("--image-size", type=int, default=None, help="image folder: side to load")
    z.add_argument("--batch-size", type=int, default=128)


def _read_lines(path: str, flag: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{flag} {path!r} is not a file; pass a text file, one per line.")
    lines = [x.rstrip("\n") for x in file.read_text(encoding="utf-8").splitlines()]
    lines = [x for x in lines if x.strip() and not x.startswith("#")]
    if not lines:
        raise ValueError(f"{flag} {path!r} has no lines; write one per line.")
    return lines


def class_names(lines: list[str], data_classes: list[str], path: str) -> list[str]:
    """The prompt name of each of ``data_classes`` (in their order) from ``--classes`` lines.

    >>> class_names(["b\\tbee", "a"], ["a", "b"], "c.txt")
    ['a', 'bee']
    """
    names: dict[str, str] = {}
    for line in lines:
        key, _, name = line.partition("\t")
        names[key.strip()] = (name or key).strip()
    missing = [c for c in data_classes if c not in names]
    if missing:
        raise ValueError(
            f"--classes {path!r} lacks {len(missing)} of the data's classes (e.g. "
            f"{missing[0]!r}); list every class folder, one per line."
        )
    return [names[c] for c in data_classes]


def _model(model: str) -> tuple[Callable[[list[str]], Tensor], Callable[[Tensor], Tensor], int]:
    """(embed_texts, embed_images, image side or 0) of MODEL_OR_RUN."""
    import torch

    path = Path(model)
    if (path / "config.yaml").is_file():
        from contrastkit.train.run import load_run

        _, task, _ = load_run(path)
        if not {"text", "image"} <= set(task.query_kinds):
            raise ValueError(
                f"MODEL_OR_RUN {model!r} is a run that embeds {', '.join(task.query_kinds)}; "
                "zero-shot classification needs a text and an image tower (task: image_text)."
            )
        return task.embed_texts, task.embed_images, task.image_shape[1]
    if (path / "config.json").is_file():
        from contrastkit.encoders.hf_clip import HFCLIPModel

        towers = HFCLIPModel(path).eval()

        def texts(t: list[str]) -> Tensor:
            with torch.no_grad():
                return torch.cat(
                    [towers.encode_text(t[i : i + 256]) for i in range(0, len(t), 256)]
                )

        def images(x: Tensor) -> Tensor:
            with torch.no_grad():
                return towers.encode_image(x)

        size = towers.preprocess.out_size
        return texts, images, size[0] if size else 0
    raise FileNotFoundError(
        f"MODEL_OR_RUN {model!r} is neither a run folder (config.yaml) nor a CLIP / SigLIP "
        "folder (config.json); pass one."
    )


def parse_alphas(text: str) -> list[float]:
    """``--interpolate`` as a list of alphas in [0, 1].

    >>> parse_alphas("0, 0.5,1")
    [0.0, 0.5, 1.0]
    """
    from contrastkit.encoders.adapters import check_alpha
    from contrastkit.errors import ArgumentError, restate

    alphas = []
    for cell in text.split(","):
        try:
            alphas.append(check_alpha(float(cell)))
        except ValueError as err:
            if isinstance(err, ArgumentError):
                raise ValueError(restate(err, {"alpha": "--interpolate"})) from None
            raise ValueError(
                f"--interpolate {text!r}: {cell.strip()!r} is not a number; give alphas in "
                "[0, 1] separated by commas, e.g. 0,0.25,0.5,0.75,1."
            ) from None
    return alphas


def _source(args: argparse.Namespace, side: int) -> Any:
    from contrastkit.data.image_source import open_images

    if args.data == "emoji":
        return open_images("emoji", "test", options={"size": side or 64})
    if not Path(args.data).is_dir():
        raise FileNotFoundError(
            f"DATA {args.data!r} is not a folder; pass an image folder with one sub-folder "
            "per class, or emoji."
        )
    size = args.image_size or side or None
    return open_images("image_folder", "all", root=args.data, image_size=size)


def _classify(
    embed_texts: Callable[[list[str]], Tensor],
    embed_images: Callable[[Tensor], Tensor],
    source: Any,
    names: list[str],
    templates: Sequence[str],
    batch_size: int,
) -> dict[str, float]:
    import torch

    from contrastkit.eval.zero_shot import ZeroShotClassifier

    clf = ZeroShotClassifier(embed_texts, names, templates)
    for images, rows in source.batches(batch_size):
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        clf.update(embed_images(images), source.labels[rows])
    return clf.compute()


def sweep_alphas(run: Path, alphas: list[float], evaluate: Callable[[Any], dict]) -> list[dict]:
    """WiSE-FT sweep: for each alpha, the loaded run's weights become ``(1 - alpha) * start +
    alpha * fine-tuned`` (:func:`contrastkit.export.start_state`, LoRA merged) and
    ``evaluate(task)`` gives its row."""
    import torch

    from contrastkit.encoders.adapters import interpolate_state, merge_lora
    from contrastkit.export import start_state
    from contrastkit.train.run import forget_loaded_runs, load_run

    cfg, task, _ = load_run(run)
    rows = []
    try:
        with torch.no_grad():
            merge_lora(task.model)
            end = {k: v.clone() for k, v in task.model.state_dict().items()}
            start = start_state(cfg)
            for alpha in alphas:
                task.model.load_state_dict(interpolate_state(start, end, alpha))
                rows.append({"alpha": alpha, **evaluate(task)})
    finally:
        forget_loaded_runs()  # the task was changed in place
    return rows


def keep_sweep(run: Path, entry: dict[str, Any]) -> None:
    """Add ``entry`` to ``run/wiseft.json``, replacing one for the same data and classes."""
    from contrastkit.atomic import write_json

    path = run / "wiseft.json"
    sweeps = json.loads(path.read_text())["sweeps"] if path.is_file() else []
    same = (entry["data"], entry["classes_file"])
    sweeps = [x for x in sweeps if (x.get("data"), x.get("classes_file")) != same] + [entry]
    write_json(path, {"sweeps": sweeps})


def cmd_eval_zero_shot(args: argparse.Namespace) -> int:
    from contrastkit.eval.zero_shot import DEFAULT_TEMPLATES

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}.")
    alphas = parse_alphas(args.interpolate) if args.interpolate is not None else None
    run = Path(args.model)
    if alphas is not None and not (run / "config.yaml").is_file():
        raise ValueError(
            f"--interpolate needs a run folder (config.yaml) as MODEL_OR_RUN, got "
            f"{args.model!r}: the sweep mixes the run's start and fine-tuned weights."
        )
    lines = _read_lines(args.classes, "--classes")
    templates = _read_lines(args.templates, "--templates") if args.templates else DEFAULT_TEMPLATES
    embed_texts, embed_images, side = _model(args.model)
    source = _source(args, side)
    if not source.classes:
        raise ValueError(f"DATA {args.data!r} has no classes; use one sub-folder per class.")
    names = class_names(lines, list(source.classes), args.classes)
    counts = {"items": len(source.labels), "classes": len(names), "templates": len(templates)}
    if alphas is None:
        acc = _classify(embed_texts, embed_images, source, names, templates, args.batch_size)
        print(json.dumps({**acc, **counts}, indent=2))
        return 0
    rows = sweep_alphas(
        run,
        alphas,
        lambda task: _classify(
            task.embed_texts, task.embed_images, source, names, templates, args.batch_size
        ),
    )
    entry = {"data": str(args.data), "classes_file": str(args.classes), "sweep": rows, **counts}
    keep_sweep(run, entry)
    print(json.dumps(entry, indent=2))
    return 0
