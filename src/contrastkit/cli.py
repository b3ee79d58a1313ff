"""The ``contrastkit`` command: train, evaluate, index, search, serve, report, demo.

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
        description="Embed RUN's corpus (train images, or keys) into RUN/index/.",
    )
    i.add_argument("run")

    s = sub.add_parser(
        "search",
        help="nearest neighbours of a text or image query",
        description="Search RUN's index (build it first with `contrastkit index`).",
    )
    s.add_argument("run")
    s.add_argument("query", help="a text, or the path of an image file")
    s.add_argument("-k", type=int, default=5, help="neighbours to show (default 5)")

    v = sub.add_parser(
        "serve",
        help="serve a run and its index as a web API with a search page",
        description="Serve RUN's model and index over HTTP: POST /embed, /search, /search/upload, "
        "GET /health, /metrics, the search page at / and the API docs at /docs. Needs the "
        "`serve` extra (FastAPI + uvicorn).",
    )
    v.add_argument("run")
    v.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    v.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    v.add_argument("--index", help="index file (default RUN/index/corpus.ckindex)")
    v.add_argument(
        "--api-key", help="require this key (Authorization: Bearer KEY); needed off loopback"
    )
    v.add_argument("--max-batch", type=int, default=32, help="items per model call (default 32)")
    v.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="wait for a batch to fill (default 5)"
    )
    v.add_argument("--queue", type=int, default=256, help="requests waiting, then 503 (256)")
    v.add_argument("--max-body-mb", type=float, default=8.0, help="largest body, MiB (8)")
    v.add_argument("--max-k", type=int, default=100, help="largest k a search may ask (100)")
    v.add_argument("--threads", type=int, default=1, help="torch threads of the model (1)")

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


def cmd_index(args: argparse.Namespace) -> int:
    from contrastkit.train.search import build_index

    path, n = build_index(args.run)
    print(f"indexed {n} items into {path}")
    _print_search_hint(args.run)
    return 0


def _print_search_hint(run: str | Path) -> None:
    from contrastkit.train.search import example_queries

    query = example_queries(run, n=1)[0]
    print(f"search it: contrastkit search {shlex.quote(str(run))} {shlex.quote(query)}")


def cmd_search(args: argparse.Namespace) -> int:
    from contrastkit.train.search import search

    for rank, hit in enumerate(search(args.run, args.query, k=args.k), 1):
        print(f"{rank:>2}. {hit['score']:.4f}  [{hit['id']}] {hit['label']}  {hit.get('text', '')}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from contrastkit.serve import ServeSettings, check_bind, create_app_from_run
    except ImportError as err:
        raise ValueError(f"{err} (e.g. `pip install 'contrastkit[serve]'`)") from None

    check_bind(args.host, args.api_key)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}.")
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue=args.queue,
        max_body_mb=args.max_body_mb,
        max_k=args.max_k,
        threads=args.threads,
        api_key=args.api_key,
    )
    import torch

    torch.set_num_threads(args.threads)
    app = create_app_from_run(args.run, args.index, settings)
    print(f"serving {args.run} on http://{args.host}:{args.port}/ (API docs at /docs)", flush=True)
    # uvicorn handles SIGTERM: it stops accepting, finishes the requests in flight, then
    # re-raises the signal to the handler it found; a no-op one here makes that a clean exit 0.
    import signal

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            timeout_graceful_shutdown=30,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
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
    "serve": cmd_serve,
    "report": cmd_report,
    "demo": cmd_demo,
    "recipes": cmd_recipes,
}

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
