"""Export end to end: a tiny WordNet pairs run and a tiny digits views run, trained for real,
exported in every format that applies through the CLI and loaded back by sentence-transformers,
onnxruntime and contrastkit.load_encoder, compared with the run's own embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit import load_encoder
from contrastkit.cli import main
from contrastkit.export import export_run
from contrastkit.train import load_config_dict, train
from contrastkit.train.run import load_run

from .train.conftest import tiny_config, tiny_pairs_config

TEXTS = ["quickly", "in a slow manner", "at the present time; now", "x"]


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pairs")
    return Path(train(load_config_dict(tiny_pairs_config(tmp)), tmp / "run"))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("digits")
    return Path(train(load_config_dict(tiny_config(tmp)), tmp / "run"))


def export(run: Path, out: Path, fmt: str, capsys) -> Path:
    assert main(["export", str(run), str(out), "--format", fmt]) == 0
    assert f"as {fmt} to {out}" in capsys.readouterr().out
    return out


def ort_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_pairs_run_to_sentence_transformers(pairs_run, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    out = export(pairs_run, tmp_path / "st", "sentence-transformers", capsys)
    _, task, _ = load_run(pairs_run)
    ours = task.embed_texts(TEXTS)
    model = SentenceTransformer(str(out), device="cpu")
    theirs = model.encode(TEXTS, normalize_embeddings=True, convert_to_tensor=True).cpu()
    print(f"export parity ST vs run: max abs diff {max_diff(ours, theirs):.2e}")
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert not list(tmp_path.glob(".st.*"))  # the temporary folder was renamed into place


def test_pairs_run_to_onnx_with_dynamic_axes(pairs_run, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = export(pairs_run, tmp_path / "onnx", "onnx", capsys)
    meta = json.loads((out / "export.json").read_text())["graphs"]["text"]
    tokenizer = AutoTokenizer.from_pretrained(str(out / meta["tokenizer"]))
    session = ort_session(out / meta["file"])
    _, task, _ = load_run(pairs_run)
    worst = 0.0
    for texts in (TEXTS, TEXTS[:1], TEXTS * 2):  # batch 4, 1, 8; sequence lengths differ
        tokens = tokenizer(
            texts, padding=True, truncation=True, max_length=meta["max_length"], return_tensors="np"
        )
        feeds = {k: tokens[k].astype(np.int64) for k in meta["inputs"]}
        (got,) = session.run(["embeddings"], feeds)
        worst = max(worst, max_diff(got, task.embed_texts(texts)))
    print(f"export parity ORT vs torch (text): max abs diff {worst:.2e}")
    assert worst < 1e-4


def test_pairs_run_to_safetensors_and_load_encoder(pairs_run, tmp_path, capsys):
    out = export(pairs_run, tmp_path / "weights", "safetensors", capsys)
    config = json.loads((out / "encoder.json").read_text())
    assert config["encoder"] == "tiny_text" and config["task"] == "pairs"
    encoder = load_encoder(out)  # no run folder involved
    _, task, _ = load_run(pairs_run)
    rebuilt = encoder.encode(TEXTS)
    print(
        f"export parity load_encoder vs run: max abs diff {max_diff(rebuilt, task.embed_texts(TEXTS)):.2e}"
    )
    torch.testing.assert_close(rebuilt, task.embed_texts(TEXTS), atol=1e-6, rtol=0)


def test_digits_run_to_onnx(digits_run, tmp_path, capsys):
    out = export(digits_run, tmp_path / "onnx", "onnx", capsys)
    meta = json.loads((out / "export.json").read_text())["graphs"]
    assert set(meta) == {"image"}
    c, h, w = meta["image"]["image_shape"]
    session = ort_session(out / "image.onnx")
    _, task, _ = load_run(digits_run)
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in (1, 5):  # dynamic batch
        images = torch.rand(n, c, h, w, generator=g)
        (got,) = session.run(["embeddings"], {"images": images.numpy()})
        worst = max(worst, max_diff(got, task.embed_images(images)))
    print(f"export parity ORT vs torch (image): max abs diff {worst:.2e}")
    assert worst < 1e-4


def test_bad_input_is_one_line_with_an_exit_code(digits_run, pairs_run, tmp_path, capsys):
    cases = [
        (
            [str(pairs_run), str(tmp_path / "a"), "--format", "pdf"],
            2,
            "format 'pdf' is not an export format",
        ),
        (
            [str(digits_run), str(tmp_path / "b"), "--format", "sentence-transformers"],
            2,
            "has no text tower",
        ),
        ([str(tmp_path), str(tmp_path / "d"), "--format", "onnx"], 4, "is not a run folder"),
    ]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    cases.append(
        ([str(pairs_run), str(taken), "--format", "onnx"], 2, "already exists and is not empty")
    )
    for argv, code, message in cases:
        assert main(["export", *argv]) == code
        err = capsys.readouterr().err
        assert err.startswith("contrastkit export: ") and message in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # failed exports leave nothing behind


def test_export_run_checks_format_before_reading_the_run(tmp_path):
    with pytest.raises(ValueError, match="use one of sentence-transformers, onnx, safetensors"):
        export_run(tmp_path / "missing", tmp_path / "out", "torchscript")


def emoji_towers_config(tmp: Path) -> dict:
    """A seconds-long CLIP-style run: rendered emoji (16 px) <-> names, small CNN + tiny BERT."""
    raw = tiny_pairs_config(tmp)
    raw.update(
        name="towers",
        task="image_text",
        negatives={},
        data={"dataset": "emoji", "options": {"size": 16}},
        model={
            "name": "emoji_towers",
            "width": 4,
            "out_dim": 8,
            "options": {
                "text": "tiny_text",
                "freeze_text": False,
                "text_options": {
                    "hidden_size": 16,
                    "num_layers": 1,
                    "num_heads": 2,
                    "max_length": 16,
                },
            },
        },
        loss={"name": "info_nce", "params": {"temperature": 0.1, "symmetric": True}},
        eval={"recall_at": [1, 5]},
    )
    raw["train"]["max_steps"] = 2
    raw["train"]["checkpoint_every"] = 2
    return raw


def test_image_text_run_exports_both_towers(tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    run = Path(train(load_config_dict(emoji_towers_config(tmp_path)), tmp_path / "run"))
    _, task, _ = load_run(run)
    # text side -> sentence-transformers: Transformer, Pooling, Normalize, Dense (projection), Normalize
    st = export(run, tmp_path / "st", "sentence-transformers", capsys)
    kinds = [m["type"].rsplit(".", 1)[-1] for m in json.loads((st / "modules.json").read_text())]
    assert kinds == ["Transformer", "Pooling", "Normalize", "Dense", "Normalize"]
    theirs = SentenceTransformer(str(st), device="cpu").encode(
        TEXTS, normalize_embeddings=True, convert_to_tensor=True
    )
    st_diff = max_diff(theirs.cpu(), task.embed_texts(TEXTS))
    torch.testing.assert_close(theirs.cpu(), task.embed_texts(TEXTS), atol=1e-5, rtol=0)
    # both towers -> ONNX
    out = export(run, tmp_path / "onnx", "onnx", capsys)
    meta = json.loads((out / "export.json").read_text())["graphs"]
    assert set(meta) == {"text", "image"}
    images = torch.rand(
        3, *meta["image"]["image_shape"], generator=torch.Generator().manual_seed(1)
    )
    (got,) = ort_session(out / "image.onnx").run(["embeddings"], {"images": images.numpy()})
    image_diff = max_diff(got, task.embed_images(images))
    assert image_diff < 1e-4
    enc = task.model["towers"].text_encoder
    tokens = enc.tokenize(TEXTS)
    feeds = {k: tokens[k].numpy() for k in ("input_ids", "attention_mask")}
    (got,) = ort_session(out / "text.onnx").run(["embeddings"], feeds)
    text_diff = max_diff(got, task.embed_texts(TEXTS))
    assert text_diff < 1e-4
    print(
        f"export parity image-text: ST vs run {st_diff:.2e}, ORT vs torch image {image_diff:.2e}, "
        f"text {text_diff:.2e}"
    )


def test_two_tower_text_model_writes_query_and_document_folders(tmp_path):
    """A task whose export_towers() names separate query and document towers (the layout
    two-tower runs will have) gets OUT/query and OUT/document, each loading back in
    sentence-transformers."""
    from types import SimpleNamespace

    from sentence_transformers import SentenceTransformer

    from contrastkit.encoders import TextEncoder
    from contrastkit.export import _write_sentence_transformers, atomic_folder
    from contrastkit.train.tasks.base import ExportTowers

    towers = {
        side: TextEncoder.from_scratch(hidden_size=16, num_layers=1, num_heads=2, seed=seed).eval()
        for seed, side in enumerate(("query", "document"))
    }
    text = {side: (enc, None) for side, enc in towers.items()}
    task = SimpleNamespace(query_kinds=("text",), export_towers=lambda: ExportTowers(text=text))
    out = tmp_path / "two"
    with atomic_folder(out) as tmp:
        _write_sentence_transformers(task, tmp, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.json", "document", "query"]
    for side, enc in towers.items():
        theirs = SentenceTransformer(str(out / side), device="cpu").encode(
            TEXTS, normalize_embeddings=True, convert_to_tensor=True
        )
        torch.testing.assert_close(theirs.cpu(), enc.encode(TEXTS), atol=1e-5, rtol=0)


def test_image_run_to_safetensors_and_load_encoder(digits_run, tmp_path, capsys):
    """An image run's encoder is the registry's ``projected`` (backbone + head): load_encoder
    rebuilds it without the run and gives the run's own features."""
    from contrastkit import load_encoder
    from contrastkit.train.run import load_run

    out = export(digits_run, tmp_path / "weights", "safetensors", capsys)
    encoder = load_encoder(out)
    _, task, _ = load_run(digits_run)
    images = task.test_set.head(6)
    with torch.no_grad():
        got = encoder.embed(images)
    worst = max_diff(got, task.embed_images(images))
    print(f"export parity load_encoder vs run (image): max abs diff {worst:.2e}")
    assert worst < 1e-5
