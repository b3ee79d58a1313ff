"""The ``contrastkit`` command: train, evaluate, index, search, serve, report, demo, export,
BEIR-format retrieval (eval-retrieval, mine, data export-beir) and identity verification
(eval-verify, data export-identity).

Every subcommand has ``--help``; errors print one clear line ``contrastkit <cmd>: <message>``
and exit with a non-zero code (2: bad usage, config or file, 3: training diverged, 4: missing
file/run, 5: a disk error (a write failed: disk full, I/O error), 1: an unexpected error,
130: Ctrl-C, 143: SIGTERM, after saving a checkpoint); ``contrastkit --debug <cmd>`` prints the traceback as well. See
docs/faults.md.

>>> main(["--version"])
contrastkit 0.1.0
0
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE, EXIT_DIVERGED, EXIT_MISSING, EXIT_INTERRUPTED = 2, 3, 4, 130
EXIT_WRITE, EXIT_BUG = 5, 1

ARGUMENT_NAMES = {
    "dataset": "data.dataset",
    "root": "data.root",
    "hf_split": "data.options.hf_split",
    "path": "model.options.path",
    "trained_dims": "loss.matryoshka_dims",
    "dim": "--dim",
    "dtype": "--dtype",
}
"""The library's argument names -> the config keys and flags a user of the command sets: a
library error or warning about ``root`` (:class:`contrastkit.errors.ArgumentError`) is printed
about ``data.root``."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="contrastkit",
        description="Train and use contrastive embedding models: "
        "contrastkit train simclr_fashion_mnist, then eval/index/search/report the run.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument(
        "--debug", action="store_true", help="on an error, print the traceback too (for reports)"
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show the libraries' own messages too (transformers' weight-loading report, "
        "download and loading progress bars)",
    )
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
    i.add_argument(
        "--to",
        nargs=2,
        metavar=("ENGINE", "URI"),
        help="write into a vector database instead of the index file: `--to milvus URI` (a "
        "server's http://HOST:19530, or a milvus-lite file PATH.db)",
    )
    i.add_argument(
        "--collection", default="corpus", help="with --to milvus: the collection (corpus)"
    )

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
    s.add_argument(
        "--index",
        help="another index file, or a Milvus collection: milvus://PATH.db[#COLLECTION] "
        "(milvus-lite) or milvus://HOST:PORT[#COLLECTION]",
    )
    s.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only items whose metadata KEY equals VALUE (a string; repeatable; id=... for the "
        "item id); pushed down to Milvus",
    )

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
    v.add_argument(
        "--index",
        help="index file (default RUN/index/corpus.ckindex), or a Milvus collection "
        "milvus://PATH.db[#COLLECTION] / milvus://HOST:PORT[#COLLECTION]",
    )
    v.add_argument(
        "--api-key", help="require this key (Authorization: Bearer KEY); needed off loopback"
    )
    v.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="read the key from this file (mode 600, one line); or set CONTRASTKIT_API_KEY",
    )
    v.add_argument("--max-batch", type=int, default=32, help="items per model call (default 32)")
    v.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="wait for a batch to fill (default 5)"
    )
    v.add_argument("--queue", type=int, default=256, help="requests waiting, then 503 (256)")
    v.add_argument("--max-body-mb", type=float, default=8.0, help="largest body, MiB (8)")
    v.add_argument("--max-k", type=int, default=100, help="largest k a search may ask (100)")
    v.add_argument("--threads", type=int, default=1, help="torch threads of the model (1)")
    v.add_argument("--max-concurrency", type=int, default=512,
                   help="API requests in progress at once, then 429 + Retry-After (512)")  # fmt: skip
    v.add_argument("--max-tokens", type=int, default=16384,
                   help="tokens of all texts in one request, then 413 (16384)")  # fmt: skip
    v.add_argument("--max-pixels", type=int, default=64_000_000,
                   help="pixels of all images in one request, then 413 (64000000)")  # fmt: skip
    v.add_argument("--decode-threads", type=int, default=2,
                   help="images decoded at once; others wait (2)")  # fmt: skip

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

    x = sub.add_parser(
        "export",
        help="export a run's encoder: sentence-transformers folder, ONNX or safetensors",
        description="Export RUN's latest weights to OUT (new or empty): sentence-transformers "
        "(text runs; SentenceTransformer(OUT) loads it), onnx (every tower, dynamic batch and "
        "sequence axes) or safetensors (weights + config; contrastkit.load_encoder(OUT)).",
    )
    x.add_argument("run")
    x.add_argument("out")
    x.add_argument(
        "--format",
        required=True,
        metavar="FORMAT",
        help="sentence-transformers, onnx, safetensors or hf (a fine-tuned CLIP / SigLIP "
        "folder: CLIPModel.from_pretrained(OUT))",
    )
    x.add_argument(
        "--interpolate",
        type=float,
        default=None,
        metavar="ALPHA",
        help="WiSE-FT: export (1 - ALPHA) * starting + ALPHA * fine-tuned weights (ALPHA in "
        "[0, 1])",
    )

    sub.add_parser(
        "recipes", help="list the packaged recipes", description="List the packaged recipe configs."
    )
    _add_retrieval_commands(sub)
    from contrastkit.cli_zero_shot import add_parser as add_zero_shot

    add_zero_shot(sub)
    return p


def _add_retrieval_commands(sub: argparse._SubParsersAction) -> None:
    """eval-retrieval, mine and data export-beir (BEIR-format collections)."""
    er = sub.add_parser(
        "eval-retrieval",
        help="nDCG/MAP/Recall/P/MRR of a model on a BEIR-format folder (trec_eval conventions)",
        description="Embed DIR's corpus and judged queries with MODEL (a run folder, a local "
        "sentence-transformers / Hugging Face folder, or minilm) and print nDCG@k, MAP@k, "
        "Recall@k, P@k, MRR@k as trec_eval computes them.",
    )
    er.add_argument("model", help="run folder, model folder, or minilm")
    er.add_argument("dir", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    er.add_argument("--split", default="test", help="qrels file to evaluate (default test)")
    er.add_argument("--json", dest="json_out", metavar="OUT", help="also write the metrics here")
    er.add_argument(
        "--k",
        type=int,
        nargs="+",
        default=None,
        help="cut-offs (default 1 3 5 10 100, those no larger than the corpus)",
    )
    er.add_argument(
        "--keep-identical-ids",
        action="store_true",
        help="allow retrieving the document whose id equals the query's (BEIR ignores it)",
    )
    er.add_argument("--batch-size", type=int, default=4096, help="documents per chunk")
    er.add_argument(
        "--rerank",
        metavar="CROSS_ENCODER",
        help="also rerank each query's top candidates with this cross-encoder (a folder "
        "`contrastkit export` wrote of a task: rerank run, or any sequence-classification "
        "folder) and print the reranked figures beside the first-stage ones",
    )
    er.add_argument(
        "--rerank-top", type=int, default=100, help="candidates reranked per query (default 100)"
    )

    mi = sub.add_parser(
        "mine",
        help="mine hard negatives with MODEL into a pairs JSONL file",
        description="Embed DATA's queries and corpus with MODEL and write OUT.jsonl (query, "
        "positive, negatives, id) for training. DATA is a BEIR folder (its --split qrels) or a "
        "pairs file. Judged-relevant documents are never mined.",
    )
    mi.add_argument("model", help="run folder, model folder, or minilm")
    mi.add_argument("data", help="BEIR folder or pairs file (.jsonl/.csv/.parquet)")
    mi.add_argument("out", help="output pairs file (.jsonl)")
    mi.add_argument("--split", default="train", help="BEIR qrels file to mine (default train)")
    mi.add_argument("--min-score", type=int, default=1, help="lowest grade used as a positive")
    mi.add_argument(
        "--num-negatives",
        type=int,
        default=5,
        help="negatives per row (default 5; 0 writes the pairs without mining)",
    )
    mi.add_argument("--skip-top", type=int, default=0, help="skip this many top candidates")
    mi.add_argument("--max-rank", type=int, help="never take candidates ranked this low or lower")
    mi.add_argument("--margin", type=float, help="keep scores < positive score - MARGIN")
    mi.add_argument(
        "--max-score-ratio", type=float, help="keep scores < RATIO * positive score (e.g. 0.95)"
    )
    mi.add_argument("--no-dedup", action="store_true", help="allow negatives with equal texts")
    mi.add_argument("--batch-size", type=int, default=1024, help="texts per encoder call")
    mi.add_argument(
        "--scorer",
        metavar="CROSS_ENCODER",
        help="rescore the mined candidates with this cross-encoder: drop likely false negatives "
        "and write its score of the positive and of each negative (`scores`) for distillation",
    )
    mi.add_argument(
        "--scorer-ratio",
        type=float,
        default=0.95,
        help="with --scorer: drop a candidate whose sigmoid(score) exceeds RATIO times the "
        "positive's (default 0.95)",
    )
    mi.add_argument(
        "--scorer-candidates",
        type=int,
        help="with --scorer: candidates mined per row before the teacher filters them "
        "(default 2 x --num-negatives)",
    )

    da = sub.add_parser(
        "data", help="write packaged datasets", description="Write packaged datasets to disk."
    )
    dsub = da.add_subparsers(dest="data_command", metavar="ACTION")
    ex = dsub.add_parser(
        "export-beir",
        help="write a BEIR-format folder: the packaged wordnet set, or your own pairs",
        description="contrastkit data export-beir wordnet DIR: noun lemmas -> glosses, own "
        "synset judged 2, hypernyms/hyponyms judged 1; train/test qrels follow the WordNet "
        "loader's split. contrastkit data export-beir pairs FILE DIR: your pairs file (.jsonl, "
        ".csv, .parquet) as queries, documents and qrels/test.tsv (each query relevant to its "
        "own positives; negatives become distractors), to evaluate on with eval-retrieval or "
        "eval.heldout. contrastkit data export-beir hf FOLDER DIR: the same from a Hugging Face "
        "datasets folder (save_to_disk). contrastkit data export-beir code DIR: the held-out "
        "modules of the standard-library code search set (docstring -> function body).",
    )
    ex.add_argument("name", help="wordnet, code, pairs or hf")
    ex.add_argument("paths", nargs="+", metavar="[SOURCE] DIR", help="SOURCE (pairs, hf), DIR")
    ex.add_argument(
        "--columns",
        metavar="JSON",
        help='pairs/hf: your column names, e.g. \'{"query": "question", "positive": "answer"}\'',
    )
    ex.add_argument("--test-queries", type=int, default=500, help="test queries (default 500)")
    ex.add_argument("--train-queries", type=int, default=2000, help="train queries (default 2000)")
    ex.add_argument("--corpus-size", type=int, default=5000, help="corpus size (at least judged)")
    ex.add_argument("--seed", type=int, default=0, help="the WordNet loader's split seed")
    ei = dsub.add_parser(
        "export-identity",
        help="write a packaged identity set as LFW-layout folders with pairs.txt",
        description="contrastkit data export-identity glyphs DIR: the glyph identity set (Han "
        "characters = identities, their 12 typefaces = images) as DIR/train/<identity>/..., "
        "DIR/test/<identity>/... and DIR/test/pairs.txt (LFW format, held-out identities only), "
        "for data.dataset: identity_folder or contrastkit eval-verify.",
    )
    ei.add_argument("name", help="glyphs")
    ei.add_argument("dir", help="folder to write (new, empty, or an earlier export)")
    ei.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    ei.add_argument("--limit", type=int, help="only the first N identities (default all)")
    ei.add_argument("--test-fraction", type=float, default=0.2, help="held-out share (0.2)")
    ei.add_argument("--seed", type=int, default=0, help="the split and pairs seed")
    ei.add_argument("--folds", type=int, default=10, help="pairs.txt folds (default 10)")
    ei.add_argument(
        "--pairs-per-fold", type=int, default=300, help="same (and different) pairs per fold"
    )
    ea = dsub.add_parser(
        "export-audio",
        help="write the packaged speech corpus as WAV files + manifest.csv",
        description="contrastkit data export-audio speech DIR: the espeak-ng speech corpus "
        "(WordNet / FOLDOC phrases, many voices) as DIR/clips/*.wav and DIR/manifest.csv "
        "(path,text,label,speaker,kind,split), for data.dataset: audio_folder with "
        "data.root: DIR/manifest.csv.",
    )
    ea.add_argument("name", help="speech")
    ea.add_argument("dir", help="folder to write (new, empty, or an earlier export)")
    ea.add_argument("--phrases", type=int, default=1000, help="texts to speak (default 1000)")
    ea.add_argument("--voices-per-text", type=int, default=3, help="voices per text (3)")
    ea.add_argument("--test-fraction", type=float, default=0.1, help="held-out texts (0.1)")
    ea.add_argument("--seed", type=int, default=0, help="phrase, voice and split seed")
    vf = sub.add_parser(
        "eval-verify",
        help="verification figures (TAR at FAR, EER, AUC, 10-fold accuracy) on a pairs file",
        description="Embed the images of PAIRS (LFW pairs.txt or a CSV path_a,path_b,same"
        "[,fold]) with MODEL (a run folder, or an export: --format safetensors or onnx) and "
        "print the verification protocol: AUC, EER, TAR at FAR 1e-1 .. 1e-4 (thresholds "
        "included), the 10-fold accuracy and open-set rank-1 (gallery: the first image of each "
        "identity folder). Images are resolved relative to the pairs file's folder or --root.",
    )
    vf.add_argument("model", metavar="MODEL_OR_RUN", help="run folder or exported model folder")
    vf.add_argument("pairs", metavar="PAIRS", help="pairs.txt (LFW) or .csv")
    vf.add_argument("--root", help="the identity folder (default: the pairs file's folder)")
    vf.add_argument("--json", dest="as_json", action="store_true", help="print JSON instead")
    vf.add_argument("--batch-size", type=int, default=512, help="images embedded at once")
    vf.add_argument(
        "--image-size",
        type=int,
        help="side the images are resized to (default: the run's; an export that does not "
        "record it: the first image's shorter side)",
    )


def _exit_codes() -> tuple[tuple[type[BaseException], int], ...]:
    """The exception -> exit code table; the first match wins (ConfigError is a ValueError,
    DiskFullError an OSError, DataNotFoundError a FileNotFoundError)."""
    from contrastkit.atomic import WriteFailedError
    from contrastkit.data.audio import AudioError
    from contrastkit.train.config import ConfigError
    from contrastkit.train.loop import TrainingDiverged

    return (
        (ConfigError, EXIT_USAGE),
        (AudioError, EXIT_MISSING),  # an audio file that does not decode: a data error
        (TrainingDiverged, EXIT_DIVERGED),
        (FileNotFoundError, EXIT_MISSING),
        (NotADirectoryError, EXIT_MISSING),
        (WriteFailedError, EXIT_WRITE),
        (ValueError, EXIT_USAGE),  # bad input: ImageDecodeError, CheckpointError, corrupt index
        (TypeError, EXIT_USAGE),
        (PermissionError, EXIT_USAGE),
        (IsADirectoryError, EXIT_USAGE),
        (OSError, EXIT_WRITE),
    )


def _one_line(err: BaseException) -> str:
    """The error as one line (multi-line messages, e.g. pydantic's, are joined), naming the
    library's arguments by their config keys and flags (:data:`ARGUMENT_NAMES`)."""
    from contrastkit.errors import restate

    message = restate(err, ARGUMENT_NAMES)
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return text or type(err).__name__


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
    from contrastkit.train.loop import TrainingInterrupted

    quiet_libraries(args.verbose)
    configure_logging()
    exits = _exit_codes()
    try:
        return int(COMMANDS[args.command](args) or 0)
    except KeyboardInterrupt:
        print(f"contrastkit {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrainingInterrupted as err:
        print(f"contrastkit {args.command}: {err}", file=sys.stderr)
        return 128 + err.signum  # 130 for Ctrl-C, 143 for SIGTERM
    except Exception as err:
        code = next((code for kind, code in exits if isinstance(err, kind)), EXIT_BUG)
        message = _one_line(err)
        if code == EXIT_BUG:
            message = (
                f"unexpected {type(err).__name__}: {message} (rerun with --debug for the "
                "traceback and report it)"
            )
        if args.debug:
            import traceback

            traceback.print_exc(file=sys.stderr)
        print(f"contrastkit {args.command}: {message}", file=sys.stderr)
        return code


def quiet_libraries(verbose: bool) -> None:
    """Quiet by default: the Hugging Face libraries' progress bars and reports are noise in a
    command's output (and a log file); ``--verbose`` shows them. Set before they are imported."""
    if verbose:
        os.environ["TRANSFORMERS_VERBOSITY"] = "info"
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def configure_logging() -> None:
    """Library messages (``logging``) to stderr, one plain line each; the CLI's own output is
    ``print`` to stdout. Only rank 0 of a torchrun launch speaks at INFO."""
    import os

    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    root = logging.getLogger("contrastkit")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests capture and restore it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def cmd_train(args: argparse.Namespace) -> int:
    from contrastkit.train import fit  # the Python entry point: one path for both

    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").exists():
            raise FileNotFoundError(f"--resume {run}: not a run folder (no config.yaml).")
        run = fit(run, resume=True, overrides=args.overrides).path
    else:
        if not args.config:
            raise ValueError("train needs CONFIG (a YAML path or recipe name) or --resume RUN.")
        run = fit(args.config, overrides=args.overrides, run_dir=args.run_dir).path
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
    from contrastkit.report import read_eval  # a ValueError naming the file if it is corrupt

    data = read_eval(Path(run) / "eval.json")
    if data is not None:
        print(format_eval_table(data))


def format_eval_table(data: dict) -> str:
    """The evaluation as a small text table: metric | model | baseline."""
    base = data.get("baseline", {})
    lines = [f"{'metric':<20} {'model':>8} {data.get('baseline_name', 'baseline'):>16}"]
    for k, v in data["metrics"].items():
        b = base.get(k)
        lines.append(f"{k:<20} {v:>8.4f} {'' if b is None else f'{b:.4f}':>16}")
    counts = ", ".join(f"{k} {v}" for k, v in data.get("counts", {}).items())
    lines.append(
        f"(step {data.get('step')}, {data.get('train_seconds')} s of training"
        + (f"; {counts})" if counts else ")")
    )
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from contrastkit.report import read_eval
    from contrastkit.train.run import load_run, write_eval

    _, task, _ = load_run(args.run)
    try:  # the step and training time of the last evaluation; a corrupt file is rewritten
        prev = read_eval(Path(args.run) / "eval.json") or {}
    except ValueError:
        prev = {}
    result = task.evaluate()
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

    if args.to is not None:
        return _index_to(args)

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
    from contrastkit.errors import restate

    for warning in caught:
        if issubclass(warning.category, UserWarning):
            message = restate(warning.message, ARGUMENT_NAMES)
            print(f"contrastkit index: warning: {message}", file=sys.stderr)
    print(f"indexed {n} items into {path}")
    _print_search_hint(args.run)
    return 0


def _index_to(args: argparse.Namespace) -> int:
    """``contrastkit index RUN --to milvus URI [--collection NAME]``."""
    from contrastkit.train.search import index_to_milvus

    engine, uri = args.to
    if engine != "milvus":
        raise ValueError(f"--to {engine!r}: the engine written to is 'milvus' (--to milvus URI).")
    if args.backend != "faiss_flat" or args.dim is not None or args.params:
        raise ValueError("--to milvus writes an exact (FLAT) collection at the model's width; "
                         "drop --backend, --dim and --param.")  # fmt: skip
    spec, n = index_to_milvus(
        args.run, uri, args.collection, chunk=args.chunk, progress=not args.no_progress
    )
    print(f"indexed {n} items into {spec}")
    run = shlex.quote(str(args.run))
    print(f"search it: {self_command()} search {run} QUERY --index {shlex.quote(spec)}; serve "
          f"it: {self_command()} serve {run} --index {shlex.quote(spec)}")  # fmt: skip
    return 0


def self_command() -> str:
    """How to call this contrastkit from the user's shell: ``contrastkit`` when that name on
    the PATH is this program, else its path (``.venv/bin/contrastkit`` after ``make demo``,
    which does not activate the venv), else ``python -m contrastkit.cli``."""
    import shutil

    here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if here is not None and here.name == "contrastkit" and here.is_file():
        found = shutil.which("contrastkit")
        if found is not None and Path(found).resolve() == here:
            return "contrastkit"
        try:
            return shlex.quote(os.path.relpath(here))
        except ValueError:  # another drive (Windows)
            return shlex.quote(str(here))
    return f"{shlex.quote(sys.executable)} -m contrastkit.cli"


def _print_search_hint(run: str | Path) -> None:
    from contrastkit.train.search import example_queries

    query = example_queries(run, n=1)[0]
    print(f"search it: {self_command()} search {shlex.quote(str(run))} {shlex.quote(query)}")


def cmd_search(args: argparse.Namespace) -> int:
    from contrastkit.train.search import search

    flt: dict[str, object] = {}
    for pair in args.filters:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--filter {pair!r}: expected KEY=VALUE, e.g. --filter label=Bag.")
        flt[key] = value
    hits = search(args.run, args.query, k=args.k, nprobe=args.nprobe, ef=args.ef,
                  index=args.index, filter=flt or None)  # fmt: skip
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>2}. {hit['score']:.4f}  [{hit['id']}] {hit['label']}  {hit.get('text', '')}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from contrastkit.serve import (
            ServeSettings,
            check_bind,
            create_app_from_run,
            resolve_api_key,
        )
    except ImportError as err:
        raise ValueError(f"{err} (e.g. `pip install 'contrastkit[serve]'`)") from None

    api_key = resolve_api_key(args.api_key, args.api_key_file)  # option, file or environment
    check_bind(args.host, api_key)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}.")
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue=args.queue,
        max_body_mb=args.max_body_mb,
        max_k=args.max_k,
        threads=args.threads,
        api_key=api_key,
        max_concurrency=args.max_concurrency,
        max_tokens=args.max_tokens,
        max_pixels=args.max_pixels,
        decode_threads=args.decode_threads,
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
    print("embedding the 60,000 train images and building the index ...", flush=True)
    path, n = build_index(run)
    print(f"index: {n} train embeddings in {path}")
    print("nearest neighbours of the first test images (query label -> neighbour labels):")
    for query_label, hits in search_neighbours_of_test(run, n_queries=5, k=5):
        print(f"  {query_label:<12} -> {', '.join(h['label'] for h in hits)}")
    _print_search_hint(run)
    print("writing the report (plots, neighbours) ...", flush=True)
    cmd_report(argparse.Namespace(run=str(run)))
    print(f"demo done in {time.perf_counter() - t0:.0f} s (train + eval {t_train:.0f} s)")
    print(f"open {Path(run).resolve() / 'report' / 'index.html'}")
    return 0


def format_retrieval_table(metrics: dict[str, float]) -> str:
    """BEIR metrics as a table: one row per cut-off k, one column per metric family."""
    from contrastkit.eval.beir import METRIC_FAMILIES

    ks = sorted({int(name.split("@")[1]) for name in metrics})
    lines = [f"{'k':>5} " + " ".join(f"{f:>8}" for f in METRIC_FAMILIES)]
    for k in ks:
        cells = [f"{metrics[f'{f}@{k}']:>8.4f}" for f in METRIC_FAMILIES]
        lines.append(f"{k:>5} " + " ".join(cells))
    return "\n".join(lines)


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from contrastkit.cli_models import load_text_model
    from contrastkit.data._common import atomic_write_bytes
    from contrastkit.data.beir import load_beir
    from contrastkit.eval.beir import evaluate_retrieval

    data = load_beir(args.dir, args.split)
    if args.k is None:  # the default cut-offs that a small corpus allows
        args.k = [k for k in (1, 3, 5, 10, 100) if k <= len(data.corpus)] or [len(data.corpus)]
    if max(args.k) > len(data.corpus):  # before loading the model: fail fast
        raise ValueError(
            f"--k {max(args.k)} is larger than the corpus ({len(data.corpus)} documents); pass "
            f"--k values no larger than {len(data.corpus)}."
        )
    model = load_text_model(args.model)
    t0 = time.perf_counter()
    if args.rerank:
        return _eval_with_rerank(args, data, model, t0)
    metrics = evaluate_retrieval(
        model.query,
        model.document,
        data.corpus,
        data.queries,
        data.qrels,
        k_values=args.k,
        ignore_identical_ids=not args.keep_identical_ids,
        batch_size=args.batch_size,
    )
    seconds = time.perf_counter() - t0
    n_queries = sum(1 for q in data.qrels if q in data.queries)
    print(
        f"{model.name} on {args.dir} ({args.split}): {n_queries} queries, {len(data.corpus)} "
        f"documents, {seconds:.1f} s"
    )
    print(format_retrieval_table(metrics))
    if args.json_out:
        out = {
            "model": str(args.model),
            "data": str(args.dir),
            "split": args.split,
            "queries": n_queries,
            "documents": len(data.corpus),
            "seconds": round(seconds, 3),
            "metrics": metrics,
        }
        atomic_write_bytes(Path(args.json_out), (json.dumps(out, indent=2) + "\n").encode())
        print(f"wrote {args.json_out}")
    return 0


def _eval_with_rerank(args: argparse.Namespace, data: Any, model: Any, t0: float) -> int:
    """eval-retrieval --rerank: the first-stage run (top max(k, --rerank-top)), then the same
    run with each query's top --rerank-top rescored by the cross-encoder; both scored alike."""
    from contrastkit.data._common import atomic_write_bytes
    from contrastkit.encoders.cross_encoder import load_cross_encoder, score_pairs
    from contrastkit.eval.beir import score_run, search_corpus
    from contrastkit.eval.rerank import rerank_run

    if args.rerank_top < 1:
        raise ValueError(f"--rerank-top must be >= 1, got {args.rerank_top}.")
    cross = load_cross_encoder(args.rerank)
    ks = sorted(set(args.k))
    judged = {q: data.queries[q] for q in data.qrels if q in data.queries}
    depth = min(len(data.corpus), max(ks[-1], args.rerank_top))
    run = search_corpus(
        model.query,
        model.document,
        data.corpus,
        judged,
        depth,
        ignore_identical_ids=not args.keep_identical_ids,
        batch_size=args.batch_size,
    )
    first = score_run(run, data.qrels, ks)
    t1 = time.perf_counter()
    reranked_run = rerank_run(
        run, lambda q, texts: score_pairs(cross, q, texts), data.corpus, judged, args.rerank_top
    )
    reranked = score_run(reranked_run, data.qrels, ks)
    t2 = time.perf_counter()
    print(
        f"{model.name} on {args.dir} ({args.split}): {len(judged)} queries, {len(data.corpus)} "
        f"documents, first stage {t1 - t0:.1f} s; {args.rerank} reranking the top "
        f"{args.rerank_top}: {t2 - t1:.1f} s"
    )
    print("metric        first stage   reranked")
    for name in first:
        print(f"{name:<13} {first[name]:>11.4f} {reranked[name]:>10.4f}")
    if args.json_out:
        out = {
            "model": str(args.model),
            "data": str(args.dir),
            "split": args.split,
            "queries": len(judged),
            "documents": len(data.corpus),
            "seconds": round(t1 - t0, 3),
            "metrics": first,
            "rerank": {"model": str(args.rerank), "top": args.rerank_top},
            "rerank_seconds": round(t2 - t1, 3),
            "reranked_metrics": reranked,
        }
        atomic_write_bytes(Path(args.json_out), (json.dumps(out, indent=2) + "\n").encode())
        print(f"wrote {args.json_out}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from contrastkit.cli_models import TextModel, load_text_model
    from contrastkit.data.beir import load_beir
    from contrastkit.data.files import load_pairs
    from contrastkit.negatives.offline import (
        mine_text_negatives,
        rows_from_beir,
        rows_from_pairs,
        write_pairs,
    )

    if not str(args.out).lower().endswith(".jsonl"):
        raise ValueError(f"OUT must be a .jsonl pairs file, got {args.out!r}.")
    data = Path(args.data)
    if data.is_dir():
        rows = rows_from_beir(load_beir(data, args.split), args.min_score)
    elif data.is_file():
        rows = rows_from_pairs(load_pairs(data))
    else:
        raise FileNotFoundError(
            f"DATA {args.data!r} not found; pass a BEIR folder or a pairs file (.jsonl/.csv)."
        )
    if args.num_negatives == 0:  # plain pairs, nothing to embed: no model needed

        def unused(texts: list[str]) -> Any:
            raise AssertionError("not called with --num-negatives 0")

        model = TextModel(unused, unused, str(args.model))
    else:
        model = load_text_model(args.model)
    scorer = None
    if args.scorer:  # before the long search: a bad folder fails now
        from contrastkit.encoders.cross_encoder import load_cross_encoder

        if not 0 < args.scorer_ratio <= 1:
            raise ValueError(f"--scorer-ratio must be in (0, 1], got {args.scorer_ratio}.")
        scorer = load_cross_encoder(args.scorer)
    candidates = args.num_negatives
    if scorer is not None and args.num_negatives:
        candidates = args.scorer_candidates or 2 * args.num_negatives
    t0 = time.perf_counter()
    mined = mine_text_negatives(
        model.query,
        model.document,
        rows,
        num_negatives=candidates,
        skip_top=args.skip_top,
        max_rank=args.max_rank,
        margin=args.margin,
        max_score_ratio=args.max_score_ratio,
        dedup=not args.no_dedup,
        batch_size=args.batch_size,
    )
    if scorer is not None:
        from contrastkit.encoders.cross_encoder import score_pairs
        from contrastkit.negatives.offline import rescore_with_teacher

        mined = rescore_with_teacher(
            mined,
            lambda q, texts: score_pairs(scorer, q, texts),
            num_negatives=args.num_negatives,
            max_ratio=args.scorer_ratio,
        )
    write_pairs(mined, args.out)
    kept = sum(len(r["negatives"]) for r in mined)
    print(
        f"mined {kept} negatives for {len(mined)} rows over {len(rows.corpus)} documents in "
        f"{time.perf_counter() - t0:.1f} s -> {args.out}"
    )
    return 0


def _export_code_search(args: argparse.Namespace) -> int:
    """data export-beir code DIR: the held-out modules of the standard-library code search set
    (docstring -> function) as a BEIR folder (qrels/test.tsv)."""
    from contrastkit.data.beir import load_beir, pairs_to_beir
    from contrastkit.data.code_search import load_code_search

    if len(args.paths) != 1:
        raise ValueError(f"data export-beir code DIR: got {len(args.paths)} paths {args.paths}.")
    root = pairs_to_beir(load_code_search("test", seed=args.seed), args.paths[0])
    data = load_beir(root, "test")
    print(f"test: {len(data.qrels)} queries, {sum(len(v) for v in data.qrels.values())} judged")
    print(f"wrote {root} ({len(data.corpus)} documents)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from contrastkit.data.beir import export_beir, load_beir, pairs_to_beir

    if args.data_command == "export-identity":
        return _export_identity(args)
    if args.data_command == "export-audio":
        return _export_audio(args)
    if args.data_command != "export-beir":
        raise ValueError(
            "data needs an action: contrastkit data export-beir wordnet DIR, "
            "contrastkit data export-identity glyphs DIR or contrastkit data export-audio speech DIR."
        )
    if args.name == "code":
        return _export_code_search(args)
    if args.name not in ("wordnet", "pairs", "hf"):
        raise ValueError(
            f"name must be one of wordnet (the packaged set), code (standard-library code "
            f"search), pairs (your .jsonl/.csv/.parquet file) or hf (a datasets save_to_disk "
            f"folder), got {args.name!r}."
        )
    wanted = 1 if args.name == "wordnet" else 2
    if len(args.paths) != wanted:
        usage = "wordnet DIR" if args.name == "wordnet" else f"{args.name} SOURCE DIR"
        raise ValueError(f"data export-beir {usage}: got {len(args.paths)} paths {args.paths}.")
    if args.name != "wordnet":
        columns = None
        if args.columns:
            try:
                columns = json.loads(args.columns)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"--columns: not valid JSON ({err.msg}): {args.columns!r}"
                ) from None
        if args.name == "pairs":
            from contrastkit.data.files import load_pairs

            pairs = load_pairs(args.paths[0], columns=columns)
        else:
            from contrastkit.data.hf import load_hf_pairs

            pairs = load_hf_pairs(args.paths[0], columns=columns)
        root = pairs_to_beir(pairs, args.paths[1])
        data = load_beir(root, "test")
        print(f"test: {len(data.qrels)} queries, {sum(len(v) for v in data.qrels.values())} judged")
        print(f"wrote {root} ({len(data.corpus)} documents)")
        return 0
    root = export_beir(
        args.name,
        args.paths[0],
        test_queries=args.test_queries,
        train_queries=args.train_queries,
        corpus_size=args.corpus_size,
        seed=args.seed,
    )
    for split in ("train", "test"):
        data = load_beir(root, split)
        judged = sum(len(v) for v in data.qrels.values())
        print(f"{split}: {len(data.qrels)} queries, {judged} judgements")
    print(f"wrote {root} ({len(data.corpus)} documents)")


def _export_identity(args: argparse.Namespace) -> int:
    """``data export-identity NAME DIR``: :func:`contrastkit.data.identity.export_identity`."""
    from contrastkit.data.identity import EXPORTS, export_identity, load_identity_folder

    if args.name not in EXPORTS:
        raise ValueError(
            f"NAME must be one of {', '.join(EXPORTS)} (packaged identity sets), got "
            f"{args.name!r}; e.g. contrastkit data export-identity glyphs DIR."
        )
    t0 = time.perf_counter()
    root = export_identity(
        args.name,
        args.dir,
        size=args.size,
        limit=args.limit,
        test_fraction=args.test_fraction,
        seed=args.seed,
        pairs_per_fold=args.pairs_per_fold,
        folds=args.folds,
    )
    for split in ("train", "test"):
        folder = load_identity_folder(root / split)
        print(f"{split}: {len(folder)} identities, {folder.num_images} images")
    print(f"pairs: {root / 'test' / 'pairs.txt'}")
    print(f"wrote {root} in {time.perf_counter() - t0:.1f} s")
    return 0


def _export_audio(args: argparse.Namespace) -> int:
    """``data export-audio speech DIR``: :func:`contrastkit.data.speech.export_speech`."""
    from contrastkit.data.speech import export_speech

    if args.name != "speech":
        raise ValueError(
            f"NAME must be speech (the packaged espeak-ng corpus), got {args.name!r}; e.g. "
            "contrastkit data export-audio speech DIR."
        )
    t0 = time.perf_counter()
    root = export_speech(
        args.dir, phrases=args.phrases, voices_per_text=args.voices_per_text,
        test_fraction=args.test_fraction, seed=args.seed,
    )  # fmt: skip
    with open(root / "manifest.csv", encoding="utf-8") as fh:
        splits = [line.rsplit(",", 1)[-1] for line in fh.read().splitlines()[1:]]
    print(f"train: {splits.count('train')} clips, test: {splits.count('test')} clips")
    print(f"wrote {root} (manifest: {root / 'manifest.csv'}) in {time.perf_counter() - t0:.1f} s")
    return 0


class _VerifyModel:
    """MODEL of ``eval-verify``: ``embed(images (B, C, S, S) float in [0, 1]) -> (B, D)`` and
    the (C, S) images it takes."""

    def __init__(self, embed: Any, channels: int, size: int | None, name: str) -> None:
        self.embed, self.channels, self.size, self.name = embed, channels, size, name


def _verify_model(model: str) -> _VerifyModel:
    """A run folder (its task's ``embed_images``), a ``--format safetensors`` export (the
    encoder's output) or a ``--format onnx`` export (its image graph)."""
    import torch

    path = Path(model)
    if (path / "config.yaml").is_file():
        from contrastkit.train.run import load_run

        _, task, _ = load_run(path)
        if "image" not in tuple(task.query_kinds):
            raise ValueError(
                f"MODEL_OR_RUN {model!r} is a run that embeds {', '.join(task.query_kinds)}, not "
                "images; pass an image run (task: identity or supervised) or its export."
            )
        c, h, _ = task.image_shape
        return _VerifyModel(task.embed_images, c, h, path.name)
    if (path / "encoder.json").is_file():
        from contrastkit.encoders.saved import load_encoder

        encoder = load_encoder(path)
        config = json.loads((path / "encoder.json").read_text(encoding="utf-8"))
        opts = config.get("options", {})
        inner = opts.get("backbone_options", opts)
        c, s = inner.get("in_channels"), inner.get("image_size")  # s: None for small_cnn
        if not isinstance(c, int):
            raise ValueError(
                f"{path / 'encoder.json'}: no in_channels of an image encoder; pass an image "
                "run's export."
            )

        encoder.to(memory_format=torch.channels_last)  # as the run embeds (oneDNN's path)

        def embed(x: Any) -> Any:
            with torch.no_grad():
                return encoder(x.contiguous(memory_format=torch.channels_last)).float()

        return _VerifyModel(embed, c, s, path.name)
    if (path / "export.json").is_file():
        spec = json.loads((path / "export.json").read_text(encoding="utf-8"))
        graph = spec.get("graphs", {}).get("image")
        if graph is None:
            raise ValueError(f"{path / 'export.json'}: no image graph; export an image run.")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ValueError(
                f"MODEL_OR_RUN {model!r} is an ONNX export, and onnxruntime is not installed: "
                "pip install onnxruntime, or export the run with --format safetensors."
            ) from None

        session = ort.InferenceSession(str(path / graph["file"]))
        c, s, _ = graph["image_shape"]

        def embed_onnx(x: Any) -> Any:
            out = session.run(None, {"images": x.numpy().astype("float32")})[0]
            return torch.from_numpy(out).float()

        return _VerifyModel(embed_onnx, c, s, path.name)
    raise FileNotFoundError(
        f"MODEL_OR_RUN {model!r} is neither a run folder (config.yaml) nor an exported model "
        "(encoder.json from --format safetensors, export.json from --format onnx); pass one."
    )


def verify_figures(model: _VerifyModel, pairs: Any, batch_size: int = 512) -> dict[str, float]:
    """The verification figures of ``model`` on ``pairs`` (:class:`IdentityPairs`): each
    distinct image decoded and embedded once, in chunks of ``batch_size``."""
    import torch

    from contrastkit.data.image_folder import decode_image
    from contrastkit.train.tasks.identity import HeldOutPairs, pair_metrics

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}.")
    parts = []
    for start in range(0, len(pairs.paths), batch_size):
        stop = min(start + batch_size, len(pairs.paths))
        images = torch.stack(
            [
                decode_image(pairs.path(i), channels=model.channels, image_size=model.size)
                for i in range(start, stop)
            ]
        )
        parts.append(model.embed(images.float() / 255.0))
    who = [Path(p).parent.name or Path(p).stem for p in pairs.paths]  # identity = folder
    ids = {name: k for k, name in enumerate(dict.fromkeys(who))}
    held = HeldOutPairs(
        torch.empty(0, dtype=torch.uint8),
        list(pairs.paths),
        torch.tensor([ids[w] for w in who]),
        pairs.index_a,
        pairs.index_b,
        pairs.same,
        pairs.folds,
    )
    figures, _ = pair_metrics(torch.cat(parts), held)
    return figures


def cmd_eval_verify(args: argparse.Namespace) -> int:
    from contrastkit.data.identity import read_pairs

    pairs = read_pairs(args.pairs, args.root)  # bad lines fail before the model loads
    model = _verify_model(args.model)
    if args.image_size is not None:
        if args.image_size < 2:
            raise ValueError(f"--image-size must be >= 2 pixels, got {args.image_size}.")
        model.size = args.image_size
    if model.size is None:  # an export of a size-agnostic CNN: the images' own size
        from contrastkit.data.images import open_image

        with open_image(pairs.path(0)) as first:
            model.size = min(first.size)
    t0 = time.perf_counter()
    figures = verify_figures(model, pairs, args.batch_size)
    seconds = time.perf_counter() - t0
    if args.as_json:
        out = {
            "model": str(args.model),
            "pairs": str(args.pairs),
            "images": len(pairs.paths),
            "seconds": round(seconds, 3),
            "metrics": figures,
        }
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"{model.name} on {args.pairs}: {len(pairs)} pairs ({int(pairs.same.sum())} same), "
        f"{len(pairs.paths)} images, {int(pairs.folds.unique().numel())} folds, {seconds:.1f} s"
    )
    for k, v in figures.items():
        print(
            f"{k:<24} {int(v):>10d}"
            if k.startswith(("pairs_", "probes_"))
            else f"{k:<24} {v:>10.6f}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from contrastkit.export import export_run

    try:
        out = export_run(args.run, args.out, args.format, interpolate=args.interpolate)
    except ImportError as err:  # an optional extra is missing: one line, exit 2
        raise ValueError(str(err)) from None
    print(f"exported {args.run} as {args.format} to {out}")
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
    "eval-retrieval": cmd_eval_retrieval,
    "mine": cmd_mine,
    "data": cmd_data,
    "export": cmd_export,
    "eval-verify": cmd_eval_verify,
    "eval-zero-shot": lambda args: _zero_shot(args),
}


def _zero_shot(args: argparse.Namespace) -> int:
    from contrastkit.cli_zero_shot import cmd_eval_zero_shot

    return cmd_eval_zero_shot(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
