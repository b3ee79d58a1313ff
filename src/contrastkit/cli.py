"""The ``contrastkit`` command: train, evaluate, index, search, report, demo.

Every subcommand has ``--help``; errors print one clear line and exit with a non-zero code
(2: bad usage or config, 3: training diverged, 4: missing file/run, 130: interrupted).

>>> main(["--version"])
contrastkit 0.1.0
0
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE, EXIT_DIVERGED, EXIT_MISSING, EXIT_INTERRUPTED = 2, 3, 4, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contrastkit",
        description="Train and use contrastive embedding models: "
        "contrastkit train simclr_fashion_mnist, then eval/index/search/report the run.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train from a YAML config or packaged recipe",
        description="Train from CONFIG (a YAML path or a packaged recipe name, see `contrastkit "
        "recipes`). The run folder gets config.yaml, metrics.jsonl, checkpoints/, eval.json.",
    )
    t.add_argument("config", nargs="?", help="YAML file or recipe name (omit with --resume RUN)")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.001 (repeatable)",
    )
    t.add_argument("--run-dir", help="run folder (default: <train.output_dir>/<name>[-N])")
    t.add_argument("--resume", metavar="RUN", help="continue RUN from its latest checkpoint")
    t.add_argument("--report", action="store_true", help="write the HTML report at the end")

    e = sub.add_parser(
        "eval",
        help="evaluate a run (kNN/probe or retrieval vs baseline)",
        description="Evaluate RUN's latest checkpoint; writes RUN/eval.json.",
    )
    e.add_argument("run")

    i = sub.add_parser(
        "index",
        help="embed the run's corpus and build its search index",
        description="Embed RUN's corpus (train images, or keys) chunk by chunk into a "
        "memory-mapped file RUN/index/embeddings.f32 (or .f16) and build RUN/index/corpus.ckindex "
        "from it; an interrupted run resumes from its last complete chunk.",
        epilog="Recall-oriented settings (recall@10 vs exact on 2k MiniLM embeddings, see "
        "docs/eval.md): faiss_flat / exact: exact, 4*D bytes/vector; faiss_fp16: ~1.0, 2*D; "
        "faiss_sq8: ~0.99, D; faiss_binary: ~0.99 with its default rescore=10, D/8 in RAM (+4*D "
        "on disk); faiss_hnsw: raise --ef at search time (ef >= k; 64-256); faiss_ivf / "
        "faiss_ivfpq: raise --nprobe at search time (nprobe = nlist is exhaustive); faiss_ivfpq "
        "keeps m*nbits/8 + 8 bytes/vector, raise --param m=... (a divisor of D) for recall. "
        "--dim D truncates to a Matryoshka prefix (warns when D is not a trained dim).",
    )
    i.add_argument("run")
    i.add_argument(
        "--backend",
        default="faiss_flat",
        help="index backend: exact, faiss_flat (default), faiss_hnsw, faiss_ivf, faiss_fp16, "
        "faiss_sq8, faiss_binary, faiss_ivfpq",
    )
    i.add_argument(
        "--dim", type=int, help="keep the first D coordinates, renormalised (Matryoshka prefix)"
    )
    i.add_argument(
        "--chunk", type=int, default=4096, help="documents embedded at once (default 4096)"
    )
    i.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="storage of the memory-mapped embeddings file (default float32)",
    )
    i.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=INT",
        help="backend parameter, e.g. --param nlist=1024 --param m=48 (repeatable)",
    )
    i.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser(
        "search",
        help="nearest neighbours of a text or image query",
        description="Search RUN's index (build it first with `contrastkit index`).",
    )
    s.add_argument("run")
    s.add_argument("query", help="a text, or the path of an image file")
    s.add_argument("-k", type=int, default=5, help="neighbours to show (default 5)")
    s.add_argument(
        "--nprobe", type=int, help="IVF indexes: cells visited (higher: better recall, slower)"
    )
    s.add_argument(
        "--ef", type=int, help="HNSW index: candidate list (>= k; higher: better recall, slower)"
    )

    r = sub.add_parser(
        "report",
        help="write the run's self-contained HTML report",
        description="Write RUN/report/index.html with PNG plots.",
    )
    r.add_argument("run")

    d = sub.add_parser(
        "demo",
        help="SimCLR on Fashion-MNIST in a few CPU minutes, with evaluation and report",
        description="Train the simclr_fashion_mnist_demo recipe (bounded by a time budget AND a "
        "step count), evaluate kNN and a linear probe against raw pixels, build the index, show "
        "nearest neighbours and write the report.",
    )
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--run-dir")

    sub.add_parser(
        "recipes", help="list the packaged recipes", description="List the packaged recipe configs."
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from contrastkit import __version__

        print(f"contrastkit {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from contrastkit.train.config import ConfigError
    from contrastkit.train.loop import TrainingDiverged

    # first match wins: ConfigError is a ValueError
    exits = (
        (ConfigError, EXIT_USAGE),
        (TrainingDiverged, EXIT_DIVERGED),
        (FileNotFoundError, EXIT_MISSING),
        (ValueError, EXIT_USAGE),
    )
    try:
        return int(COMMANDS[args.command](args) or 0)
    except tuple(kind for kind, _ in exits) as err:
        print(f"contrastkit {args.command}: {err}", file=sys.stderr)
        return next(code for kind, code in exits if isinstance(err, kind))
    except KeyboardInterrupt:
        print(f"contrastkit {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def cmd_train(args: argparse.Namespace) -> int:
    from contrastkit.train import load_config, train

    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").exists():
            raise FileNotFoundError(f"--resume {run}: not a run folder (no config.yaml).")
        cfg = load_config(run / "config.yaml", args.overrides)
        run = train(cfg, run, resume=True)
    else:
        if not args.config:
            raise ValueError("train needs CONFIG (a YAML path or recipe name) or --resume RUN.")
        cfg = load_config(args.config, args.overrides)
        run = train(cfg, args.run_dir)
    if _finish_distributed() != 0:  # torchrun: only rank 0 reports
        return 0
    _print_eval(run)
    if args.report:
        cmd_report(argparse.Namespace(run=str(run)))
    print(f"run folder: {run}")
    return 0


def _finish_distributed() -> int:
    """Tear down a torchrun process group; return this process's rank (0 when single)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return 0
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    return rank


def _print_eval(run: Path) -> None:
    path = Path(run) / "eval.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    print(format_eval_table(data))


def format_eval_table(data: dict) -> str:
    """The evaluation as a small text table: metric | model | baseline."""
    base = data.get("baseline", {})
    lines = [f"{'metric':<20} {'model':>8} {data.get('baseline_name', 'baseline'):>16}"]
    for k, v in data["metrics"].items():
        b = base.get(k)
        lines.append(f"{k:<20} {v:>8.4f} {'' if b is None else f'{b:.4f}':>16}")
    lines.append(f"(step {data.get('step')}, {data.get('train_seconds')} s of training)")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from contrastkit.train.run import load_run, write_eval

    _, task, _ = load_run(args.run)
    old = Path(args.run) / "eval.json"
    prev = json.loads(old.read_text()) if old.exists() else {}
    result = task.evaluate(baseline=True)
    write_eval(Path(args.run), prev.get("step", -1), prev.get("train_seconds", 0.0), result)
    _print_eval(Path(args.run))
    return 0


def _int_params(pairs: Sequence[str]) -> dict[str, int]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value.lstrip("-").isdigit():
            raise ValueError(f"--param {pair!r}: expected KEY=INT, e.g. --param nlist=1024.")
        params[key] = int(value)
    return params


def cmd_index(args: argparse.Namespace) -> int:
    import warnings

    from contrastkit.train.search import build_index

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        path, n = build_index(
            args.run,
            args.backend,
            dim=args.dim,
            chunk=args.chunk,
            dtype=args.dtype,
            progress=not args.no_progress,
            **_int_params(args.params),
        )
    if _finish_distributed() != 0:  # torchrun: every rank embedded its share; rank 0 reports
        return 0
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f"contrastkit index: warning: {warning.message}", file=sys.stderr)
    print(f"indexed {n} items into {path}")
    _print_search_hint(args.run)
    return 0


def _print_search_hint(run: str | Path) -> None:
    from contrastkit.train.search import example_queries

    query = example_queries(run, n=1)[0]
    print(f"search it: contrastkit search {shlex.quote(str(run))} {shlex.quote(query)}")


def cmd_search(args: argparse.Namespace) -> int:
    from contrastkit.train.search import search

    hits = search(args.run, args.query, k=args.k, nprobe=args.nprobe, ef=args.ef)
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>2}. {hit['score']:.4f}  [{hit['id']}] {hit['label']}  {hit.get('text', '')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from contrastkit.report import write_report

    path = write_report(args.run)
    print(f"report: {path}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from contrastkit.train.config import list_recipes

    for name in list_recipes():
        print(name)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from contrastkit.train import load_config, train
    from contrastkit.train.search import build_index, search_neighbours_of_test

    cfg = load_config("simclr_fashion_mnist_demo", args.overrides)
    print(
        f"demo: SimCLR on Fashion-MNIST, at most {cfg.train.max_steps} steps and "
        f"{cfg.train.time_budget_s:.0f} s of training on {cfg.train.threads or 'all'} thread(s)"
    )
    t0 = time.perf_counter()
    run = train(cfg, args.run_dir)
    t_train = time.perf_counter() - t0
    _print_eval(run)
    path, n = build_index(run)
    print(f"index: {n} train embeddings in {path}")
    print("nearest neighbours of the first test images (query label -> neighbour labels):")
    for query_label, hits in search_neighbours_of_test(run, n_queries=5, k=5):
        print(f"  {query_label:<12} -> {', '.join(h['label'] for h in hits)}")
    _print_search_hint(run)
    report = cmd_report(argparse.Namespace(run=str(run)))
    del report
    print(f"demo done in {time.perf_counter() - t0:.0f} s (train + eval {t_train:.0f} s)")
    print(f"open {Path(run).resolve() / 'report' / 'index.html'}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "index": cmd_index,
    "search": cmd_search,
    "report": cmd_report,
    "demo": cmd_demo,
    "recipes": cmd_recipes,
}

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
