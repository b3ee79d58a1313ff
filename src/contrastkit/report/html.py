"""Assemble a run's report: evaluation table, curves, monitors, similarities, projection,
nearest neighbours. Every ``<img>`` points at a PNG written into the same folder."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import torch

from contrastkit.atomic import write_text
from contrastkit.eval.evaluate import current_metric_names
from contrastkit.report import plots


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a torn last line (a crash mid-append) is dropped, any
    other unreadable line is a ValueError naming the file and line. Evaluation records come
    back in today's metric names (:func:`contrastkit.eval.evaluate.current_metric_names`), so
    a run logged with the old ``knn`` / ``probe`` reads like a new one."""
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err}); restore it or delete it") from None
    out = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break
            raise ValueError(
                f"{path}: line {number} is not JSON; restore the file or delete that line"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), (int, float)):
            raise ValueError(f"{path}: line {number} is not a metrics record; delete that line")
        if isinstance(record.get("eval"), dict):
            record["eval"] = current_metric_names(record["eval"])
        out.append(record)
    return out


def read_eval(path: str | os.PathLike) -> dict[str, Any] | None:
    """``eval.json`` as a dict (None if absent); a ValueError naming the file if unreadable.

    ``metrics`` and ``baseline`` come back in today's metric names
    (:func:`contrastkit.eval.evaluate.current_metric_names`): an old run's ``knn`` / ``probe``
    (also in a ``baseline.json`` that a new ``contrastkit eval`` copied) read as
    ``knn_accuracy`` / ``linear_probe_accuracy``."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err}); rerun `contrastkit eval RUN` to rewrite it"
        ) from None
    numbers = (int, float)
    ok = isinstance(data, dict) and all(
        isinstance(data.get(key, {}), dict)
        and all(isinstance(v, numbers) or v is None for v in data.get(key, {}).values())
        for key in ("metrics", "baseline")
    )
    if not ok:
        raise ValueError(f"{path}: not an evaluation file; rerun `contrastkit eval RUN`")
    for key in ("metrics", "baseline"):
        if key in data:
            data[key] = current_metric_names(data[key])
    return data


def _eval_table(ev: dict[str, Any]) -> str:
    base = ev.get("baseline", {})
    bname = html.escape(str(ev.get("baseline_name", "baseline")))
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td>"
        f"<td>{'' if base.get(k) is None else f'{base[k]:.4f}'}</td>"
        f"<td>{'' if base.get(k) is None else f'{v - base[k]:+.4f}'}</td></tr>"
        for k, v in ev.get("metrics", {}).items()
    )
    counts = ", ".join(f"{html.escape(k)} {v}" for k, v in ev.get("counts", {}).items())
    return (
        f"<table><tr><th>metric</th><th>model</th><th>{bname}</th><th>difference</th></tr>"
        f"{rows}</table><p>after step {ev.get('step')}, {ev.get('train_seconds')} s of training"
        f"{'; ' + counts if counts else ''}.</p>"
    )


def _neighbours(run: Path, out: Path) -> str:
    """Neighbour thumbnails (image runs) or a text table (text runs), from the run's index."""
    from contrastkit.train.search import INDEX_FILE, search_neighbours_of_test

    if not (run / INDEX_FILE).exists():
        return f"<p>No index yet: run <code>contrastkit index {html.escape(str(run))}</code>.</p>"
    from contrastkit.train.run import load_run

    _, task, _ = load_run(run)
    results = search_neighbours_of_test(run, n_queries=8, k=6)
    examples = task.examples(8)
    if examples and not isinstance(examples[0][0], str):
        corpus_items = task.corpus_items()
        rows = []
        for (img, label), (_, hits) in zip(examples, results):
            cells = [(corpus_items[h["position"]], f"{h['label']} {h['score']:.2f}") for h in hits]
            rows.append((img, label, cells))
        path = plots.plot_neighbour_grid(rows, out)
        return f'<img src="{path.name}" alt="nearest neighbours">'
    body = []
    for (query, label), (_, hits) in zip(examples, results):
        items = "".join(
            f"<li>{h['score']:.3f} {html.escape(h.get('text') or h['label'])}</li>" for h in hits
        )
        body.append(
            f"<tr><td>{html.escape(query)}<br><small>{html.escape(label)}</small></td>"
            f"<td><ol>{items}</ol></td></tr>"
        )
    return f"<table><tr><th>query</th><th>nearest corpus items</th></tr>{''.join(body)}</table>"


def write_report(run: str | os.PathLike) -> Path:
    """Write ``<run>/report/index.html`` and its PNGs; return the HTML path."""
    run = Path(run)
    if not (run / "config.yaml").exists():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml).")
    out = run / "report"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    records = _read_jsonl(run / "metrics.jsonl")
    ev_path = run / "eval.json"
    ev = read_eval(ev_path)
    config_text = (run / "config.yaml").read_text(encoding="utf-8", errors="replace")
    sections: list[str] = []

    if ev:
        sections.append(f"<h2>Evaluation</h2>{_eval_table(ev)}")
    else:
        sections.append("<h2>Evaluation</h2><p>No evaluation yet (the run did not finish).</p>")
    curves = plots.plot_curves(records, out)
    if curves:
        imgs = "".join(f'<img src="{p.name}" alt="{k}">' for k, p in curves.items())
        sections.append(f"<h2>Training curves</h2>{imgs}")
    mon = plots.plot_monitors(records, out)
    if mon:
        sections.append(
            "<h2>Collapse monitors</h2><p>The statistics of "
            "<code>contrastkit.monitor.CollapseMonitor</code>: std_ratio near 1 and a high "
            "effective rank mean spread-out embeddings; both falling towards 0 mean collapse, "
            "and similarity_gap near 0 means positives are no closer than negatives.</p>"
            f'<img src="{mon.name}" alt="monitors">'
        )
    arrays_path = run / "eval_arrays.safetensors"
    if arrays_path.exists():
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            arrays = load(arrays_path.read_bytes())
        except SafetensorError as err:
            raise ValueError(
                f"{arrays_path}: unreadable ({err}); rerun `contrastkit eval RUN` to rewrite it"
            ) from None
        if "positive_similarity" in arrays:
            pos, neg = arrays["positive_similarity"], arrays["negative_similarity"]
            p = plots.plot_similarity_hist(pos, neg, out)
            sections.append(f'<h2>Similarities</h2><img src="{p.name}" alt="similarities">')
        if "verification_scores" in arrays:
            sections.append(_verification(arrays, ev, out))
        if "test_embeddings" in arrays:
            names = ev.get("class_names") if ev else None
            if names is None:
                names = _class_names(run)
            p = plots.plot_projection(arrays["test_embeddings"], arrays["test_labels"], names, out)
            sections.append(f'<h2>Test embeddings</h2><img src="{p.name}" alt="projection">')
    wiseft = _wiseft(run)
    if wiseft:
        sections.append(wiseft)
    sections.append(f"<h2>Nearest neighbours</h2>{_neighbours(run, out)}")
    sections.append(f"<h2>Resolved config</h2><pre>{html.escape(config_text)}</pre>")

    title = html.escape(f"contrastkit report: {run.name}")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top}img{max-width:100%;margin:4px}"
        "pre{background:#f6f6f6;padding:8px;font-size:12px}</style></head><body>"
        f"<h1>{title}</h1>{''.join(sections)}</body></html>"
    )
    path = out / "index.html"
    write_text(path, page)
    return path


def _wiseft(run: Path) -> str:
    """The WiSE-FT sweeps of ``contrastkit eval-zero-shot RUN DATA --interpolate ALPHAS``
    (``run/wiseft.json``): one table per data / classes file, a row per alpha."""
    path = run / "wiseft.json"
    if not path.is_file():
        return ""
    try:
        sweeps = json.loads(path.read_text(encoding="utf-8"))["sweeps"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: unreadable ({err}); rerun `contrastkit eval-zero-shot RUN DATA --classes "
            "FILE --interpolate ALPHAS` to rewrite it"
        ) from None
    parts = [
        "<h2>WiSE-FT: zero-shot accuracy between the start and the fine-tuned weights</h2>"
        "<p>Weights (1 - alpha) * start + alpha * fine-tuned (Wortsman et al. 2022); alpha 0 "
        "is the model the run began from, 1 the fine-tuned one "
        "(<code>contrastkit export RUN OUT --interpolate ALPHA</code> writes any of them).</p>"
    ]
    for sweep in sweeps:
        rows = sweep.get("sweep", [])
        keys = [k for k in (rows[0] if rows else {}) if k != "alpha"]
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ["alpha", *keys])
        body = "".join(
            "<tr>" + "".join(f"<td>{r.get(k, '')}</td>" if k == "alpha" else
                             f"<td>{r.get(k, float('nan')):.4f}</td>" for k in ["alpha", *keys])
            + "</tr>"
            for r in rows
        )  # fmt: skip
        what = html.escape(
            f"{sweep.get('data')} ({sweep.get('items')} items, {sweep.get('classes')} classes "
            f"from {sweep.get('classes_file')})"
        )
        parts.append(f"<h3>{what}</h3><table><tr>{head}</tr>{body}</table>")
    return "".join(parts)


def _verification(arrays: dict[str, torch.Tensor], ev: dict[str, Any] | None, out: Path) -> str:
    """An identity run's verification section: the ROC on a log FAR axis (and the untrained
    encoder's, when the run saved it) and the worst false accepts and false rejects."""
    same = arrays["verification_same"].bool()
    curves = {"model": (arrays["verification_scores"], same)}
    if "baseline_verification_scores" in arrays:
        name = str((ev or {}).get("baseline_name", "baseline"))
        curves[name] = (arrays["baseline_verification_scores"], same)
    roc = plots.plot_roc(curves, out)
    parts = [
        "<h2>Verification</h2><p>Held-out pairs scored by the cosine of their embeddings; a "
        "threshold accepts a pair when its score is at least the threshold.</p>"
        f'<img src="{roc.name}" alt="ROC">'
    ]
    worst = (
        ("false_accept", "Worst false accepts: different identities, highest scores"),
        ("false_reject", "Worst false rejects: same identity, lowest scores"),
    )
    for key, title in worst:
        if f"{key}_images" in arrays:
            path = plots.plot_pair_grid(
                arrays[f"{key}_images"], arrays[f"{key}_scores"], title, out / f"{key}s.png"
            )
            parts.append(f'<h3>{html.escape(title)}</h3><img src="{path.name}" alt="{key}">')
    return "".join(parts)


def _class_names(run: Path) -> list[str] | None:
    try:
        from contrastkit.train.run import load_run

        _, task, _ = load_run(run)
        return list(task.class_names) or None
    except Exception:  # the projection still works with numeric labels
        return None


__all__ = ["read_eval", "torch", "write_report"]
