"""Run every benchmark in this folder in one process and write JSON + a markdown table.

Each ``benchmarks/bench_*.py`` module defines ``run() -> dict`` (or a list of them) returning
``{"title": str, "rows": [dict, ...], "notes": str}`` (rows share their keys). Select modules
with ``python benchmarks/run.py losses index`` (names without the ``bench_`` prefix).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def to_markdown(section: dict) -> str:
    rows = section["rows"]
    lines = [f"### {section['title']}", ""]
    if rows:
        keys = list(rows[0])
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---|" * len(keys))
        for r in rows:
            cells = [
                f"{v:.4g}" if isinstance(v, float) else str(v) for v in (r.get(k, "") for k in keys)
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if section.get("notes"):
        lines += ["", section["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    names = argv or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    info = machine()
    sections = []
    for name in names:
        print(f"== bench_{name}", flush=True)
        start = time.perf_counter()
        result = importlib.import_module(f"bench_{name}").run()
        for section in result if isinstance(result, list) else [result]:  # one or more sections
            section["wall_s"] = round(time.perf_counter() - start, 1)
            sections.append(section)
            print(to_markdown(section), flush=True)
    RESULTS.mkdir(exist_ok=True)
    stem = "latest" if not argv else "latest_" + "_".join(names)
    payload = {"machine": info, "sections": sections}
    tmp = RESULTS / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(RESULTS / f"{stem}.json")
    header = (
        f"Machine: {info['cores']} cores ({info['cpu']}), torch {info['torch']}, {info['date']}\n\n"
    )
    (RESULTS / f"{stem}.md").write_text(header + "\n".join(to_markdown(s) for s in sections))
    print(f"wrote {RESULTS / (stem + '.json')} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
