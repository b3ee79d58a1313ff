"""A user's audio folder or manifest (CSV, JSONL, Parquet) streamed through AudioFiles.

Small WAV/FLAC files are written by soundfile into tmp_path, with a few bad ones (empty, a text
file named .wav); every check reads them back through the dataset and its DataLoader.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch

from contrastkit.data import DataNotFoundError, SkippedFile
from contrastkit.data._common import held_out_mask
from contrastkit.data.audio_folder import (
    AudioFiles,
    AudioReader,
    audio_batches,
    audio_folder_loader,
    read_audio_manifest,
)
from contrastkit.data.sources import AUDIO_SOURCES, load_source
from contrastkit.errors import ArgumentError

TEXTS = ["red apple", "blue sky", "green tree", "yellow sun", "black cat", "white snow"]
SPEAKERS = ["ann", "bob"]


def _tone(i: int, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """root/clips/*.wav|flac (12 clips at 22050 or 8000 Hz, 2 speakers x 6 texts) + 2 bad files,
    and rows for manifests."""
    root = tmp_path_factory.mktemp("audio")
    (root / "clips").mkdir()
    rows = []
    for s, speaker in enumerate(SPEAKERS):
        for i, text in enumerate(TEXTS):
            rate = 22050 if s == 0 else 8000
            name = f"clips/{speaker}_{i}.{'wav' if s == 0 else 'flac'}"
            soundfile.write(root / name, _tone(i, rate, 0.2 + 0.1 * i), rate)
            rows.append({"path": name, "text": text, "label": text.split()[0], "speaker": speaker})
    (root / "clips" / "empty.wav").write_bytes(b"")
    (root / "clips" / "notes.wav").write_text("not a recording")
    rows.append({"path": "clips/empty.wav", "text": "nothing", "label": "none", "speaker": "ann"})
    rows.append({"path": "clips/notes.wav", "text": "notes", "label": "none", "speaker": "bob"})
    return root, rows


def _write(root, rows, fmt: str, columns=("path", "text", "label", "speaker")):
    path = root / f"manifest.{fmt}"
    if fmt == "csv":
        lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({c: r[c] for c in columns}) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({c: [r[c] for r in rows] for c in columns}), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_formats_read_the_same(corpus, fmt):
    root, rows = corpus
    files = AudioFiles(_write(root, rows, fmt), sample_rate=16000, clip_seconds=0.5)
    assert len(files) == 14 and files.texts[:2] == ["red apple", "blue sky"]
    assert files.speaker_names == ["ann", "bob"] and files.speakers.tolist()[:7] == [0] * 6 + [1]
    assert "red" in files.classes and files.clip_samples == 8000
    item = files[1]
    assert item["audio"].shape == (8000,) and item["audio"].dtype == torch.float32
    assert item["mask"].sum().item() == 4800  # 0.3 s at 16 kHz (resampled from 22050 Hz)
    assert item["text"] == "blue sky" and item["speaker"] == 0
    flac = files[7]  # an 8 kHz FLAC, resampled
    assert flac["mask"].sum().item() == 4800
    assert isinstance(files[12], SkippedFile) and "empty" in files[12].reason
    assert isinstance(files[13], SkippedFile) and "not a readable audio file" in files[13].reason


def test_loader_skips_and_counts_bad_files_with_workers(corpus):
    root, rows = corpus
    files = AudioFiles(_write(root, rows, "csv"), sample_rate=8000, clip_seconds=1.0)
    batches = [list(range(0, 7)), list(range(7, 14))]
    seen = list(audio_folder_loader(files, batches, workers=2))
    assert [b["skipped_files"] for b in seen] == [0, 2]
    assert seen[1]["audio"].shape == (5, 8000) and seen[1]["index"].tolist() == [7, 8, 9, 10, 11]
    assert seen[1]["texts"] == TEXTS[1:] and seen[1]["speakers"].tolist() == [1] * 5
    in_process = list(audio_folder_loader(files, batches, workers=0))
    assert torch.equal(in_process[0]["audio"], seen[0]["audio"])  # workers change nothing
    every = list(audio_batches(files, batch_size=5))
    assert sum(len(b["index"]) for b in every) == 12 and sum(b["skipped_files"] for b in every) == 2
    reader = AudioReader(files, workers=0)
    got = reader.read([13, 3, 1])
    assert got["index"].tolist() == [3, 1] and got["skipped_files"] == 1


def test_split_is_by_text_and_disjoint(corpus):
    root, rows = corpus
    # three speakers say every text: a held-out text must never be heard in training
    many = [dict(r, speaker=f"{r['speaker']}{k}") for r in rows[:12] for k in range(2)]
    path = _write(root, many, "csv")
    train = AudioFiles(path, split="train", test_fraction=0.4, seed=3)
    test = AudioFiles(path, split="test", test_fraction=0.4, seed=3)
    assert train.split_by == "text" and len(train) + len(test) == 24
    assert not set(train.texts) & set(test.texts)
    want = held_out_mask([r["text"] for r in many], 0.4, 3)
    assert len(test) == int(want.sum())
    by_speaker = AudioFiles(path, split="test", test_fraction=0.5, split_by="speaker", seed=1)
    assert by_speaker.split_by == "speaker"


def test_folder_sources(corpus, tmp_path):
    root, _ = corpus
    for cls in ("dog", "cat"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            soundfile.write(tmp_path / cls / f"{i}.wav", _tone(i, 16000, 0.1), 16000)
    files = AudioFiles(tmp_path, sample_rate=16000, clip_seconds=0.1)
    assert files.classes == ["cat", "dog"] and files.labels.tolist() == [0, 0, 1, 1]
    assert files.texts is None and files.split_by == "path"
    flat = AudioFiles(root / "clips", sample_rate=8000, clip_seconds=0.1)
    assert len(flat) == 14 and flat.classes == []


def test_data_source_registry(corpus):
    root, rows = corpus
    path = _write(root, rows, "csv")
    files = load_source(AUDIO_SOURCES, "audio_folder", "all", root=path, sample_rate=8000)
    assert isinstance(files, AudioFiles) and len(files) == 14
    with pytest.raises(ArgumentError, match="needs root"):
        load_source(AUDIO_SOURCES, "audio_folder", "train")


# -- bad manifests: one line naming the manifest and the row ------------------------------------


def test_manifest_row_naming_a_missing_file(corpus):
    root, rows = corpus
    bad = [*rows[:3], {"path": "clips/gone.wav", "text": "x", "label": "x", "speaker": "ann"}]
    path = _write(root, bad, "csv")
    with pytest.raises(FileNotFoundError) as err:
        AudioFiles(path)
    text = str(err.value)
    assert "\n" not in text and f"{path}:5" in text and "clips/gone.wav" in text
    path = _write(root, bad, "jsonl")
    with pytest.raises(FileNotFoundError, match=r"manifest\.jsonl:4"):
        AudioFiles(path)
    path = _write(root, bad, "parquet")
    with pytest.raises(FileNotFoundError, match="row 4"):
        AudioFiles(path)


def test_manifest_column_errors(corpus, tmp_path):
    root, rows = corpus
    path = _write(root, rows, "csv", columns=("path", "text"))
    with pytest.raises(ValueError, match=r"no column 'speaker_id'.*'path', 'text'"):
        AudioFiles(path, speaker_column="speaker_id")
    files = AudioFiles(path, label_column=None)
    assert files.speaker_names == [] and files.speakers.tolist() == [-1] * 14
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"path": "a.wav"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2: not a JSON object"):
        read_audio_manifest(bad)
    with pytest.raises(DataNotFoundError):
        AudioFiles(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="manifest must be"):
        read_audio_manifest(tmp_path / "m.txt")


# -- open_audio: the tasks' entry point ---------------------------------------------------------


def test_open_audio_reads_refills_and_crops_reproducibly(corpus):
    from contrastkit.data.audio_source import open_audio

    root, rows = corpus
    path = _write(root, rows, "csv")
    src = open_audio("audio_folder", "all", root=path, sample_rate=8000, clip_seconds=0.1)
    assert len(src) == 14 and src.speakers[:7] == ["ann"] * 6 + ["bob"]
    assert src.texts[0] == "red apple" and src.key(0) == "clips/ann_0.wav"
    waves, mask, got, skipped = src.read(torch.tensor([12, 1, 13, 2]))
    assert waves.shape == mask.shape == (4, 800) and skipped == 2
    assert got.tolist() == [1, 2, 1, 2]  # the places of the 2 bad files refilled from the batch
    centre, _, _, _ = src.read(torch.tensor([5]))
    again, _, _, _ = src.read(torch.tensor([5]))
    assert torch.equal(centre, again)  # no generator: the centre window
    a = src.read(torch.tensor([5, 4]), torch.Generator().manual_seed(1))[0]
    b = src.read(torch.tensor([5, 4]), torch.Generator().manual_seed(1))[0]
    c = src.read(torch.tensor([5, 4]), torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    two = open_audio(
        "audio_folder", "all", root=path, sample_rate=8000, clip_seconds=0.1, workers=2
    )
    d = two.read(torch.tensor([5, 4]), torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, d)  # the crops do not depend on the workers
    walked = list(src.batches(5))
    assert torch.cat([r for _, _, r in walked]).tolist() == list(range(12))
    limited = open_audio("audio_folder", "all", root=path, sample_rate=8000, limit=3)
    assert len(limited) == 3 and len(limited.texts) == 3
    with pytest.raises(ArgumentError, match="no file of this batch decodes"):
        src.read(torch.tensor([12, 13]))
