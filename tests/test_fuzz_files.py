"""Every command meets every bad file with one line and the documented exit code, never a
traceback.

One tiny real run (digits, seconds) and one pairs-file config are built per module. For each kind
of file a command reads, hypothesis writes garbage, truncated and bit-flipped versions of the good
file, runs the command in-process (``contrastkit.cli.main``) and checks: exit 0 only where the
damage is harmless by design (a still-valid config or image, a torn last metrics line, a pointer
the fallback ignores) and never where a checksum guards the file; otherwise exit 2 or 4 with one
line ``contrastkit <cmd>: ...`` naming the file; no "Traceback" ever. The good file is restored
after each example. The examples are derandomized (the same cases every run, so `make test` is
reproducible); ``CONTRASTKIT_FUZZ_EXAMPLES=N`` explores more, ``CONTRASTKIT_FUZZ_TABLE=path``
writes the tally (the table in docs/faults.md) as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.train.conftest import tiny_config, tiny_pairs_config

import contrastkit.train.checkpoint as checkpoint
import contrastkit.train.run as run_module
from contrastkit.cli import main
from contrastkit.index import load_index
from contrastkit.train import load_config_dict, train
from contrastkit.train.search import INDEX_FILE, build_index

EXAMPLES = int(os.environ.get("CONTRASTKIT_FUZZ_EXAMPLES", "5"))
TALLY: Counter = Counter()


class World:
    """The run's paths and the good bytes of its files (a short repr for hypothesis)."""

    def __init__(self, **items: Any) -> None:
        self.items = items

    def __getitem__(self, key: str) -> Any:
        return self.items[key]

    def __repr__(self) -> str:
        return f"World({self['run']})"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fuzz")
    raw = tiny_config(tmp)
    raw["eval"].update({"probe": False, "raw_baseline": False})
    run = train(load_config_dict(raw))
    assert main(["index", str(run)]) == 0
    query = next((run / "queries").glob("*.png"))
    pairs = tmp / "pairs.jsonl"
    rows = [{"query": f"word {i}", "positive": f"a gloss of word {i}", "id": i} for i in range(24)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    praw = tiny_pairs_config(tmp)
    praw["data"] = {"dataset": "pairs_file", "root": str(pairs)}
    praw["train"].update({"max_steps": 1, "checkpoint_every": 1})
    praw["eval"] = {"corpus_size": 8, "queries": "first"}
    pconfig = tmp / "pairs.yaml"
    pconfig.write_text(yaml.safe_dump(praw))
    snapshot = {p: p.read_bytes() for p in [*run.rglob("*"), pairs, pconfig] if p.is_file()}
    yield World(run=run, query=query, pairs=pairs, pconfig=pconfig, tmp=tmp, snapshot=snapshot)
    write_tally()


def write_tally() -> None:
    """Write the tally for docs/faults.md when asked (CONTRASTKIT_FUZZ_TABLE=path)."""
    target = os.environ.get("CONTRASTKIT_FUZZ_TABLE")
    if target:
        rows: dict[str, dict[str, int]] = {}
        for (kind, cmd, mode, what), count in TALLY.items():
            rows.setdefault(f"{cmd} | {kind} | {mode}", {})[what] = count
        Path(target).write_text(json.dumps(rows, indent=1, sort_keys=True))


def restore(world: World) -> None:
    """Put every file of the run back as it was; drop what a command added beside it."""
    snapshot = world["snapshot"]
    for path in sorted(world["run"].rglob("*"), reverse=True):
        if path.is_file() and path not in snapshot and "report" not in path.parts:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    for path, data in snapshot.items():
        if not path.is_file() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    shutil.rmtree(world["tmp"] / "pairs_run", ignore_errors=True)
    run_module._LOADED.clear()  # a long-lived process would see a changed file by its mtime
    checkpoint._VERIFIED.clear()
    checkpoint._WARNED.clear()


def _ckpts(w: World) -> list[Path]:
    return sorted((w["run"] / "checkpoints").glob("step_*"))


# kind -> (files to damage, argv, harmless damage may exit 0, checksum-guarded)
KINDS: dict[str, tuple[Callable[[World], list[Path]], Callable[[World], list[str]], bool, bool]] = {
    "config.yaml": (
        lambda w: [w["run"] / "config.yaml"],
        lambda w: ["search", str(w["run"]), str(w["query"])],
        True,
        False,
    ),
    "model.safetensors": (
        lambda w: [c / "model.safetensors" for c in _ckpts(w)],
        lambda w: ["search", str(w["run"]), str(w["query"])],
        False,
        True,
    ),
    "state.json+state.safetensors": (
        lambda w: [c / n for c in _ckpts(w) for n in ("state.json", "state.safetensors")],
        lambda w: ["train", "--resume", str(w["run"])],
        False,
        True,
    ),
    "MANIFEST.json": (
        lambda w: [c / "MANIFEST.json" for c in _ckpts(w)],
        lambda w: ["eval", str(w["run"])],
        False,
        True,
    ),
    "checkpoints/latest": (
        lambda w: [w["run"] / "checkpoints" / "latest"],
        lambda w: ["search", str(w["run"]), str(w["query"])],
        True,
        False,
    ),
    "index file": (
        lambda w: [w["run"] / INDEX_FILE],
        lambda w: ["search", str(w["run"]), str(w["query"])],
        False,
        True,
    ),
    "eval.json": (
        lambda w: [w["run"] / "eval.json"],
        lambda w: ["report", str(w["run"])],
        True,
        False,
    ),
    "metrics.jsonl": (
        lambda w: [w["run"] / "metrics.jsonl"],
        lambda w: ["report", str(w["run"])],
        True,
        False,
    ),
    "query image": (
        lambda w: [w["query"]],
        lambda w: ["search", str(w["run"]), str(w["query"])],
        True,
        False,
    ),
    "pairs file": (
        lambda w: [w["pairs"]],
        lambda w: ["train", str(w["pconfig"]), "--run-dir", str(w["tmp"] / "pairs_run")],
        True,
        False,
    ),
}

# a damage: ("garbage", bytes) | ("truncate", fraction) | ("flip", [(position fraction, bit)])
DAMAGE = st.one_of(
    st.tuples(st.just("garbage"), st.binary(min_size=0, max_size=300)),
    st.tuples(st.just("truncate"), st.floats(0.0, 0.999)),
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.floats(0.0, 0.999), st.integers(0, 7)), min_size=1, max_size=4),
    ),
)


def damaged(good: bytes, damage: tuple) -> bytes:
    mode, arg = damage
    if mode == "garbage":
        return arg
    if mode == "truncate":
        return good[: int(len(good) * arg)]
    data = bytearray(good)
    for where, bit in arg:
        data[int(len(data) * where)] ^= 1 << bit
    return bytes(data)


REPORT_KINDS = ("eval.json", "metrics.jsonl")  # a surviving report renders every plot: slower
SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in REPORT_KINDS])
@settings(max_examples=EXAMPLES, **SETTINGS)
@given(damage=DAMAGE)
def test_bad_file_gives_one_line_and_documented_exit(
    world: World, capsys: pytest.CaptureFixture, kind: str, damage: tuple
) -> None:
    check_damage(world, capsys, kind, damage)


@pytest.mark.parametrize("kind", REPORT_KINDS)
@settings(max_examples=max(2, EXAMPLES // 2 + 1), **SETTINGS)
@given(damage=DAMAGE)
def test_bad_report_input_gives_one_line_and_documented_exit(
    world: World, capsys: pytest.CaptureFixture, kind: str, damage: tuple
) -> None:
    check_damage(world, capsys, kind, damage)


def check_damage(world: World, capsys: pytest.CaptureFixture, kind: str, damage: tuple) -> None:
    """Damage the kind's files, run its command, check exit code and message, restore."""
    files, argv, may_survive, guarded = KINDS[kind]
    targets = files(world)
    restore(world)  # also empties the in-process caches: each example reads the files afresh
    try:
        for path in targets:
            new = damaged(world["snapshot"][path], damage)
            if new == world["snapshot"][path]:
                return  # an empty flip list cannot happen, but a garbage draw may equal the file
            path.write_bytes(new)
        capsys.readouterr()
        args = argv(world)
        code = main(args)
        err = capsys.readouterr().err
    finally:
        restore(world)
    lines = [line for line in err.splitlines() if line.strip()]
    named = any(p.name in err for p in targets)
    TALLY[(kind, args[0], damage[0], "cases")] += 1
    TALLY[(kind, args[0], damage[0], f"exit {code}")] += 1
    TALLY[(kind, args[0], damage[0], "names the file")] += int(code != 0 and named)
    assert "Traceback" not in err, err
    if code == 0:
        assert may_survive and not guarded, f"{kind} {damage[0]}: damage went unnoticed"
        # a pointer the fallback ignores, or metrics whose only (unterminated) line is dropped
        lenient = kind == "checkpoints/latest" or kind == "metrics.jsonl"
        assert damage[0] != "garbage" or lenient, f"{kind}: garbage accepted"
        return
    assert code in (2, 4), (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"contrastkit {args[0]}: "), err
    if kind not in ("config.yaml", "pairs file", "query image"):
        assert named, err


def test_concurrent_index_builds_while_reading(world: World) -> None:
    """Two build_index(run) at once while a reader loads the index in a loop: the reader always
    gets a whole index (the corpus of the run), never an error or a mix."""
    run = world["run"]
    path = run / INDEX_FILE
    n = len(load_index(path))
    stop, errors, loads = threading.Event(), [], []

    def build() -> None:
        try:
            for _ in range(2):
                build_index(run)
        except Exception as err:
            errors.append(err)

    def read() -> None:
        while not stop.is_set():
            try:
                assert len(load_index(path)) == n
                loads.append(1)
            except Exception as err:
                errors.append(err)
                return

    reader = threading.Thread(target=read)
    reader.start()
    builders = [threading.Thread(target=build) for _ in range(2)]
    for t in builders:
        t.start()
    for t in builders:
        t.join()
    stop.set()
    reader.join()
    restore(world)
    assert errors == [] and loads
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_the_issues_cases_end_to_end(
    world: World, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """The reports of issue 22, as a user met them."""
    run = world["run"]
    restore(world)
    # a text file named .png, through the real command line: one line, exit 2, no traceback
    fake = world["tmp"] / "not_an_image.png"
    fake.write_text("hello, I am not a picture\n")
    proc = subprocess.run(
        [sys.executable, "-m", "contrastkit.cli", "search", str(run), str(fake)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"contrastkit search: {fake}: not a readable image (PNG, JPEG, BMP, GIF, WebP or TIFF); "
        "pass an image file."
    ]
    # --debug shows the traceback as well, then the same line
    assert main(["--debug", "search", str(run), str(fake)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("pass an image file.")
    # the index truncated to 1,000 bytes: names the file and the fix
    index = run / INDEX_FILE
    index.write_bytes(world["snapshot"][index][:1000])
    assert main(["search", str(run), str(world["query"])]) == 2
    err = capsys.readouterr().err
    assert f"{index}: truncated index file" in err and "rebuild it with `contrastkit index" in err
    restore(world)
    # the latest checkpoint's weights truncated: --resume continues from the previous one
    latest = _ckpts(world)[-1] / "model.safetensors"
    latest.write_bytes(world["snapshot"][latest][:100])
    with caplog.at_level("WARNING"):
        assert main(["train", "--resume", str(run)]) == 0, capsys.readouterr().err
    assert "skipping checkpoint step_0000012" in caplog.text
    assert json.loads((run / "eval.json").read_text())["step"] == 12  # trained 8 -> 12 again
    restore(world)


@pytest.mark.parametrize(
    "missing, command, code, says",
    [
        ("config.yaml", "eval", 4, "no config.yaml"),
        ("config.yaml", "report", 4, "no config.yaml"),
        ("config.yaml", "train --resume", 4, "no config.yaml"),
        ("checkpoints", "search", 4, "has no checkpoint yet"),
        ("checkpoints", "index", 4, "has no checkpoint yet"),
        (INDEX_FILE, "search", 4, "run `contrastkit index"),
        ("checkpoints/step_0000012/model.safetensors", "eval", 0, ""),  # falls back to step 8
        ("queries/test_0_6.png", "search", 2, "pass the path of an image file"),  # may be text
    ],
)
def test_run_folder_with_files_missing(
    world: World, capsys: pytest.CaptureFixture, missing: str, command: str, code: int, says: str
) -> None:
    run = world["run"]
    restore(world)
    target = run / missing
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    argv = [*command.split(), str(run)] + ([str(world["query"])] if command == "search" else [])
    try:
        assert main(argv) == code
        err = capsys.readouterr().err
    finally:
        restore(world)
    assert "Traceback" not in err
    if code:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"contrastkit {argv[0]}: ") and says in err


@pytest.mark.slow
def test_two_index_processes_while_search_reads(world: World) -> None:
    """Two `python -m contrastkit.cli index RUN` processes at once while this process loads the
    index in a loop: every load is a whole index, both processes succeed, no temp file is left."""
    run = world["run"]
    restore(world)
    path = run / INDEX_FILE
    n = len(load_index(path))
    command = [sys.executable, "-m", "contrastkit.cli", "index", str(run)]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ)
        for _ in range(2)
    ]
    loads = 0
    while any(p.poll() is None for p in procs):
        assert len(load_index(path)) == n  # raises on a partial file
        loads += 1
        time.sleep(0.01)  # leave the cores to the writers
    outputs = [p.communicate() for p in procs]
    restore(world)
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert loads > 0 and len(load_index(path)) == n
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


# -- the files the commands above do not reach (issue 33) ------------------------------------
#
# Each kind below is a file a library reader meets: hypothesis damages it (garbage, truncated,
# bit flips) and the reader must either accept it (where the damage is harmless by design) or
# raise one ValueError whose message is one line; never another exception, never a crash.
# "guarded" kinds are checksummed: damage must never go unnoticed. The streaming build's files
# are held to more: the resumed build must equal a clean one (a damaged chunk is embedded again).

FILE_EXAMPLES = int(os.environ.get("CONTRASTKIT_FUZZ_FILE_EXAMPLES", "25"))
VICTIM = b"precious: never written through a link\n"


class Files:
    """Good files of every kind, built once per module, and how each is read."""

    def __init__(self, tmp: Path) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq
        import torch

        from contrastkit.encoders import TextEncoder
        from contrastkit.encoders.registry import create_encoder
        from contrastkit.encoders.saved import save_encoder
        from contrastkit.index import create_index

        self.tmp = tmp
        rows = [
            {"query": f"word {i}", "positive": f"a gloss of word {i}", "id": str(i)}
            for i in range(12)
        ]
        (tmp / "pairs.csv").write_text(
            "query,positive,id\n"
            + "".join(f"{r['query']},{r['positive']},{r['id']}\n" for r in rows)
        )
        pq.write_table(pa.Table.from_pylist(rows), tmp / "pairs.parquet")
        beir = tmp / "beir"
        (beir / "qrels").mkdir(parents=True)
        (beir / "corpus.jsonl").write_text(
            "".join(
                json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) + "\n"
                for i in range(6)
            )
        )
        (beir / "queries.jsonl").write_text(
            "".join(json.dumps({"_id": f"q{i}", "text": f"query {i}"}) + "\n" for i in range(3))
        )
        (beir / "qrels" / "test.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(3))
        )
        self.model = tmp / "model"
        TextEncoder.from_scratch(hidden_size=16, num_layers=1, num_heads=2).save(self.model)
        opts = {"in_features": 4, "hidden_features": 8, "embedding_dim": 2}
        self.encoder = save_encoder(create_encoder("mlp", **opts), tmp / "encoder", "mlp", **opts)
        g = torch.Generator().manual_seed(0)
        self.vectors = torch.randn(64, 8, generator=g)
        self.query = torch.randn(3, 8, generator=g)
        binary = create_index("faiss_binary", dim=8)
        binary.add(self.vectors)
        binary.save(tmp / "binary" / "b.ckindex") if (tmp / "binary").mkdir() is None else None
        for backend, params in (
            ("faiss_hnsw", {"m": 4}),
            ("faiss_ivfpq", {"nlist": 2, "m": 2, "nbits": 2}),
        ):
            index = create_index(backend, dim=8, **params)
            index.add(self.vectors)
            index.save(tmp / f"{backend}.ckindex")
        self.stream = tmp / "stream"
        self.stream_reference = self._stream(self.stream, interrupt=None)
        shutil.rmtree(self.stream)
        self._stream(self.stream, interrupt=40)  # an interrupted build: progress.json stays
        self.snapshot = {
            p: p.read_bytes() for p in tmp.rglob("*") if p.is_file() and not p.is_symlink()
        }
        self.np = np

    def _stream(self, folder: Path, interrupt: int | None) -> Any:
        from contrastkit.index.streaming import EmbeddingSpec, IndexSpec, TensorSource, stream_index

        def stop(done: int) -> None:
            if interrupt is not None and done >= interrupt:
                raise KeyboardInterrupt

        source = TensorSource(self.vectors, [{"n": i} for i in range(64)])
        try:
            built = stream_index(
                source,
                folder,
                IndexSpec("exact"),
                EmbeddingSpec(chunk=16),
                progress=False,
                on_chunk=stop,
            )
        except KeyboardInterrupt:
            return None
        return built.index.search(self.query, 5)

    def restore(self) -> None:
        for path in sorted(self.tmp.rglob("*"), reverse=True):
            if path.is_symlink() or (path.is_file() and path not in self.snapshot):
                path.unlink()
        for path, data in self.snapshot.items():
            if not path.is_file() or path.read_bytes() != data:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

    # -- readers: return normally, or raise ---------------------------------------------------
    def load_pairs(self, name: str) -> None:
        from contrastkit.data.files import load_pairs

        load_pairs(self.tmp / name)

    def load_beir(self) -> None:
        from contrastkit.data.beir import load_beir

        load_beir(self.tmp / "beir")

    def load_model(self) -> None:
        from contrastkit.encoders import TextEncoder

        TextEncoder(self.model).encode(["a dog"])

    def load_encoder(self) -> None:
        import torch

        from contrastkit.encoders.saved import load_encoder

        load_encoder(self.encoder)(torch.rand(2, 4))

    def load_index(self, name: str) -> None:
        from contrastkit.index import load_index

        load_index(self.tmp / name).search(self.query, 5)

    def resume_stream(self) -> None:
        result = self._stream(self.stream, interrupt=None)
        ref = self.stream_reference
        assert result.ids == ref.ids and result.metadata == ref.metadata, (
            "a damaged chunk was indexed"
        )
        assert bool((result.scores == ref.scores).all()), "a damaged chunk was indexed"


def _reforge(path: Path, damage: tuple) -> bytes:
    """Damage the FAISS payload of an index file and recompute its sha256: a crafted file."""
    import hashlib
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[8:16])
    head, payload = data[: 16 + n], data[16 + n : -32]
    body = head + damaged(payload, damage)
    return body + hashlib.sha256(body).digest()


# kind -> (file under the module's folder, reader, damage may be harmless)
FILE_KINDS: dict[str, tuple[str, Callable[[Files], None], bool]] = {
    "pairs.csv": ("pairs.csv", lambda f: f.load_pairs("pairs.csv"), True),
    "pairs.parquet": ("pairs.parquet", lambda f: f.load_pairs("pairs.parquet"), True),
    "BEIR corpus.jsonl": ("beir/corpus.jsonl", Files.load_beir, True),
    "BEIR queries.jsonl": ("beir/queries.jsonl", Files.load_beir, True),
    "BEIR qrels/test.tsv": ("beir/qrels/test.tsv", Files.load_beir, True),
    "model config.json": ("model/config.json", Files.load_model, True),
    "model modules.json": ("model/modules.json", Files.load_model, True),
    "model 1_Pooling/config.json": ("model/1_Pooling/config.json", Files.load_model, True),
    "encoder.json": ("encoder/encoder.json", Files.load_encoder, True),
    "binary index sidecar (.f32)": (
        "binary/*.f32",
        lambda f: f.load_index("binary/b.ckindex"),
        False,
    ),
    "hnsw index, valid checksum": (
        "faiss_hnsw.ckindex",
        lambda f: f.load_index("faiss_hnsw.ckindex"),
        True,
    ),
    "ivfpq index, valid checksum": (
        "faiss_ivfpq.ckindex",
        lambda f: f.load_index("faiss_ivfpq.ckindex"),
        True,
    ),
    "streaming embeddings.f32": ("stream/embeddings.f32", Files.resume_stream, True),
    "streaming metadata.jsonl": ("stream/metadata.jsonl", Files.resume_stream, True),
    "streaming progress.json": ("stream/progress.json", Files.resume_stream, True),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    yield Files(tmp_path_factory.mktemp("fuzz_files"))
    write_tally()


def _one_line_value_error(err: BaseException) -> None:
    assert isinstance(err, ValueError), f"{type(err).__name__} escaped: {err!r}"
    assert str(err).strip() and "\n" not in str(err).strip(), f"not one line: {err}"


@pytest.mark.parametrize("kind", list(FILE_KINDS))
@settings(max_examples=FILE_EXAMPLES, **SETTINGS)
@given(damage=DAMAGE)
def test_bad_library_file_gives_one_value_error(files: Files, kind: str, damage: tuple) -> None:
    pattern, read, may_survive = FILE_KINDS[kind]
    files.restore()
    (target,) = files.tmp.glob(pattern)
    good = files.snapshot[target]
    new = _reforge(target, damage) if "valid checksum" in kind else damaged(good, damage)
    if new == good:
        return
    target.write_bytes(new)
    try:
        read(files)
        outcome = "accepted"
    except Exception as err:  # the assertion below is the test
        _one_line_value_error(err)
        outcome = "ValueError"
    finally:
        files.restore()
    TALLY[(kind, "library", damage[0], "cases")] += 1
    TALLY[(kind, "library", damage[0], outcome)] += 1
    if outcome == "accepted":
        assert may_survive, f"{kind} {damage[0]}: damage went unnoticed"


@pytest.mark.parametrize(
    "link", ["embeddings.f32", "metadata.jsonl", "progress.json", "corpus.ckindex"]
)
def test_a_link_planted_in_a_streaming_folder_is_never_written_through(
    files: Files, link: str
) -> None:
    files.restore()
    victim = files.tmp / "victim"
    victim.write_bytes(VICTIM)
    (files.stream / link).unlink(missing_ok=True)
    (files.stream / link).symlink_to(victim)
    try:
        files.resume_stream()
        outcome = "accepted"
    except Exception as err:
        _one_line_value_error(err)
        assert "symbolic link" in str(err)
        outcome = "ValueError"
    finally:
        assert victim.read_bytes() == VICTIM
        files.restore()
    TALLY[("symlink " + link, "library", "link", outcome)] += 1
    # progress.json and the index file are replaced by the atomic writer (the link goes, the
    # victim stays); the files opened for writing refuse the link
    assert outcome == ("accepted" if link in ("progress.json", "corpus.ckindex") else "ValueError")


DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion limit


@pytest.mark.parametrize(
    "where, content",
    [
        ("pairs.csv", "query,positive\n" + "a," + "x" * 1_000_000 + "\n"),  # a 1 MB cell
        ("beir/corpus.jsonl", DEEP + "\n"),
        ("beir/queries.jsonl", '{"_id": "q0", "text": ' + DEEP + "}\n"),
        ("beir/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq0\td0\t\u00b2\n"),
        ("model/modules.json", DEEP),
        ("model/modules.json", '[{"idx": 0, "path": "/etc", "type": "x.Transformer"}]'),
        ("model/config.json", DEEP),
        ("model/1_Pooling/config.json", DEEP),
        ("encoder/encoder.json", DEEP),
        ("stream/progress.json", DEEP),
    ],
    ids=[
        "csv 1 MB cell",
        "beir deep JSON line",
        "beir deep JSON value",
        "qrels unicode digit",
        "modules.json deep",
        "modules.json absolute path",
        "config.json deep",
        "pooling config deep",
        "encoder.json deep",
        "progress.json deep",
    ],
)
def test_very_large_or_deep_inputs_give_one_value_error(files: Files, where: str, content: str):
    readers = {
        "pairs.csv": lambda: files.load_pairs("pairs.csv"),
        "beir": files.load_beir,
        "model": files.load_model,
        "encoder": files.load_encoder,
        "stream": files.resume_stream,
    }
    files.restore()
    (files.tmp / where).write_text(content)
    try:
        readers[where.split("/")[0]]()
        outcome = None
    except Exception as err:
        _one_line_value_error(err)
        outcome = err
    finally:
        files.restore()
    if where != "stream/progress.json":  # an unreadable progress file: the build starts over
        assert outcome is not None, f"{where}: accepted"


def test_very_large_inputs_through_the_command_line(world: World, capsys) -> None:
    """A deeply nested pairs line: exit 2 with one line, not exit 1 (RecursionError)."""
    restore(world)
    world["pairs"].write_text(DEEP + "\n")
    try:
        code = main(["train", str(world["pconfig"]), "--run-dir", str(world["tmp"] / "pairs_run")])
        err = capsys.readouterr().err
    finally:
        restore(world)
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pairs.jsonl:1" in lines[0], err
