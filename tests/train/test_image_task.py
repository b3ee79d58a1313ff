"""The image task's evaluation speaks the library's metric vocabulary (one kNN and probe, from
:func:`contrastkit.eval.evaluate_embeddings`), runs logged in the old vocabulary still read and
report, and indexing an image folder decodes each file key once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contrastkit.cli import main
from contrastkit.data import load_digits
from contrastkit.eval import evaluate_embeddings
from contrastkit.report import read_eval, write_report
from contrastkit.train import train
from contrastkit.train.config import load_config_dict
from contrastkit.train.run import load_run

from .conftest import tiny_config

NEW = ("knn_accuracy", "linear_probe_accuracy")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("vocabulary")
    raw = tiny_config(tmp, train={"max_steps": 4}, eval={"probe": True, "raw_baseline": True})
    return Path(train(load_config_dict(raw), tmp / "run"))


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_one_vocabulary_from_the_library_to_metrics_eval_and_report(digits_run: Path) -> None:
    """metrics.jsonl, eval.json (model and raw-pixel baseline) and the report name kNN and the
    probe as evaluate_embeddings does, with its values on the run's own features."""
    evals = [r["eval"] for r in _records(digits_run) if "eval" in r]
    assert evals and all("knn_accuracy" in e and "knn" not in e for e in evals)
    ev = json.loads((digits_run / "eval.json").read_text())
    assert set(NEW) <= set(ev["metrics"]) and set(NEW) <= set(ev["baseline"])
    cfg, task, _ = load_run(digits_run)
    tr, tr_y = task.features_of(task.train_set)
    te, te_y = task.features_of(task.test_set)
    want = evaluate_embeddings(tr, tr_y, te, te_y, knn_k=cfg.eval.knn_k, ks=())
    assert task.evaluate().metrics == pytest.approx(want, abs=1e-6)
    page = write_report(digits_run).read_text()
    assert all(f"<td>{name}</td>" in page for name in NEW)


def _old_vocabulary(run: Path, out: Path) -> Path:
    """A copy of ``run`` as a run of 2b7de80 wrote it: ``knn`` / ``probe`` in metrics.jsonl,
    eval.json and baseline.json (checkpoints and config are unchanged by the vocabulary)."""
    import shutil

    old = {"knn_accuracy": "knn", "linear_probe_accuracy": "probe"}

    def rename(metrics: dict) -> dict:
        return {old.get(k, k): v for k, v in metrics.items()}

    shutil.copytree(run, out)
    lines = []
    for record in _records(run):
        if "eval" in record:
            record["eval"] = rename(record["eval"])
        lines.append(json.dumps(record))
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    ev = json.loads((run / "eval.json").read_text())
    ev["metrics"], ev["baseline"] = rename(ev["metrics"]), rename(ev["baseline"])
    (out / "eval.json").write_text(json.dumps(ev))
    base = json.loads((run / "baseline.json").read_text())
    base["metrics"] = rename(base["metrics"])
    (out / "baseline.json").write_text(json.dumps(base))
    return out


def test_a_run_in_the_old_vocabulary_reads_and_reports(
    digits_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _old_vocabulary(digits_run, tmp_path / "old")
    assert "knn" in json.loads((old / "eval.json").read_text())["metrics"]
    ev = read_eval(old / "eval.json")
    assert ev is not None and set(NEW) <= set(ev["metrics"]) and set(NEW) <= set(ev["baseline"])
    page = write_report(old).read_text()
    assert "<td>knn_accuracy</td>" in page and "<td>knn</td>" not in page
    # a new evaluation of the old run: new names, compared with the old baseline.json
    capsys.readouterr()
    assert main(["eval", str(old)]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert len(rows["knn_accuracy"]) == 2 and len(rows["linear_probe_accuracy"]) == 2


def test_indexing_an_image_folder_decodes_each_key_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedding the corpus chunk by chunk (as ``contrastkit index`` does) decodes each file's
    key a bounded number of times, not all N keys per chunk (quadratic in N on 2b7de80).

    Measured 2026-12-07 on the 2-core shared machine (load 7-10), a 2-step
    simclr_fashion_mnist_demo run over the 60,000 Fashion-MNIST train PNGs (54,003 in the
    train split), ``contrastkit index RUN --no-progress``, once each: 2b7de80 377.3 s, this
    branch 339.4 s wall, byte-identical index files; the corpus keys alone: 0.91 s -> 0.04 s
    CPU at --chunk 4096 and 12.04 s -> 0.04 s at --chunk 256."""
    from PIL import Image

    from contrastkit.data.image_folder import ImageFiles
    from contrastkit.train.tasks.image import ImageTask

    digits = load_digits("train")
    for c in range(4):
        (tmp_path / "folder" / f"c{c}").mkdir(parents=True)
    for i in range(160):
        image = digits.images[i, 0].numpy()
        Image.fromarray(image).save(tmp_path / "folder" / f"c{i % 4}" / f"{i:03d}.png")
    raw = tiny_config(tmp_path, data={"dataset": "image_folder", "root": str(tmp_path / "folder")})
    task = ImageTask(load_config_dict(raw))
    n = task.corpus_size()
    decoded = []
    key = ImageFiles.key

    def counted(files: ImageFiles, i: int) -> str:
        decoded.append(i)
        return key(files, i)

    monkeypatch.setattr(ImageFiles, "key", counted)
    items = []
    for start in range(0, n, 8):
        items += task.embed_corpus_chunk(start, min(start + 8, n)).items
    assert items == [key(task.train_set.files, i) for i in range(n)]
    # reading a file decodes its key, the corpus item once more: 2 per file, not n / 8
    assert len(decoded) <= 2 * n, f"{len(decoded)} key decodes for {n} files"
