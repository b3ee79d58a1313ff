"""The packaged espeak-ng speech corpus (a small size), its split by text, and export-audio."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import soundfile

from contrastkit.cli import main
from contrastkit.data.sources import AUDIO_SOURCES, load_source
from contrastkit.data.speech import VARIANTS, load_speech, speech_folder, speech_phrases

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
SIZE = {"phrases": 30, "voices_per_text": 2, "speakers": 12}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("CONTRASTKIT_CACHE", str(path))
        yield path


def test_phrases_are_short_plain_and_deterministic():
    phrases = speech_phrases(60, seed=0)
    assert phrases == speech_phrases(60, seed=0) and phrases != speech_phrases(60, seed=1)
    texts = [t for t, _ in phrases]
    assert len(set(t.lower() for t in texts)) == 60
    assert {k for _, k in phrases} == {"wordnet lemma", "wordnet gloss", "foldoc term"}
    assert all(1 <= len(t.split()) <= 6 and len(t) <= 48 for t in texts)
    assert speech_phrases(30)[:9] == phrases[:9]  # a larger size extends a smaller one


def test_corpus_is_spoken_split_by_text_and_cached(cache):
    folder = speech_folder(**SIZE)
    with open(folder / "manifest.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60
    wave, rate = soundfile.read(folder / rows[0]["path"])
    assert rate == 22050 and 0.2 < len(wave) / rate < 5 and np.abs(wave).max() > 0.05
    variants = {r["speaker"].split("_")[0] for r in rows}
    assert variants <= set(VARIANTS) and len({r["speaker"] for r in rows}) > 6
    assert speech_folder(**SIZE) == folder  # the cache is reused, not regenerated
    mtime = (folder / "manifest.csv").stat().st_mtime
    assert speech_folder(**SIZE) == folder and (folder / "manifest.csv").stat().st_mtime == mtime
    train = load_speech("train", test_fraction=0.3, **SIZE)
    test = load_speech("test", test_fraction=0.3, **SIZE)
    assert len(train) + len(test) == 60 and len(test) > 0
    assert not set(train.texts) & set(test.texts)  # no held-out text is spoken in training
    item = test[0]
    assert item["audio"].shape == (48000,) and item["mask"].any() and item["text"] == test.texts[0]
    assert test.speaker_names[item["speaker"]].count("_") == 2
    via_registry = load_source(AUDIO_SOURCES, "speech", "test", test_fraction=0.3, **SIZE)
    assert via_registry.keys == test.keys


def test_export_audio_through_the_cli(cache, tmp_path, capsys):
    out = tmp_path / "speech"
    argv = ["data", "export-audio", "speech", str(out), "--phrases", "30", "--voices-per-text", "2"]
    assert main(argv) == 0
    assert "train:" in capsys.readouterr().out
    with open(out / "manifest.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60 and set(rows[0]) == {"path", "text", "label", "speaker", "kind", "split"}
    assert all((out / r["path"]).is_file() for r in rows)
    train = {r["text"] for r in rows if r["split"] == "train"}
    test = {r["text"] for r in rows if r["split"] == "test"}
    assert train and test and not train & test
    assert main(argv) == 0  # an earlier export is replaced
    assert main(["data", "export-audio", "songs", str(tmp_path / "x")]) == 2
    assert "NAME must be speech" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    assert main(["data", "export-audio", "speech", str(tmp_path / "busy"), "--phrases", "30"]) == 2


def test_two_processes_at_once_get_one_complete_corpus(tmp_path):
    import os
    import subprocess
    import sys

    from contrastkit.atomic import verify_manifest

    code = (
        "from contrastkit.data.speech import speech_folder;"
        "print(speech_folder(phrases=8, voices_per_text=2, speakers=4))"
    )
    env = dict(os.environ, CONTRASTKIT_CACHE=str(tmp_path))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1]
    folder = tmp_path / "speech" / os.path.basename(outs[0])
    verify_manifest(folder)  # complete: every file the generator wrote, checksummed
    assert len(list((folder / "clips").iterdir())) == 16
    assert not [p for p in (tmp_path / "speech").iterdir() if p.name.startswith((".tmp", ".old"))]


def test_export_audio_under_a_file_is_one_line_exit_4(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["data", "export-audio", "speech", str(blocker / "out")]) == 4
    err = capsys.readouterr().err.strip()
    assert f"{blocker} is not a folder" in err and "\n" not in err
