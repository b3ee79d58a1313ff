"""The audio tasks end to end through the CLI on a small folder of WAV files written here:
``audio_text`` (CLAP) and ``audio`` (two views) train a few steps, evaluate before and after,
and the run is searched with a WAV or a text query and exported (ONNX parity, safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from audio_tones import RATE, write_tones
from contrastkit.cli import main

soundfile = pytest.importorskip("soundfile")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 clips (6 tones x 3 speakers) and a manifest (path, text, label, speaker)."""
    return write_tones(tmp_path_factory.mktemp("tones"))


def _config(tmp_path: Path, folder: Path, task: str, **extra: object) -> Path:
    cfg = {
        "name": task,
        "task": task,
        "data": {
            "dataset": "audio_folder",
            "root": str(folder / "manifest.csv"),
            "options": {"test_fraction": 0.34},
        },
        "audio": {"clip_seconds": 0.6},
        "model": {
            "name": "audio_cnn",
            "width": 4,
            "out_dim": 16,
            "options": {"sample_rate": RATE, "n_mels": 16, "n_fft": 256, "hop_length": 80},
        },
        "optim": {"batch_size": 4, "warmup_steps": 0},
        "train": {
            "max_steps": 2,
            "output_dir": str(tmp_path / "runs"),
            "progress": False,
            "checkpoint_every": 0,
            "monitor_every": 0,
            "precision": "fp32",
        },
        "eval": {"recall_at": [1, 5]},
    }
    if task == "audio_text":
        cfg["model"]["text"] = {
            "name": "tiny_text",
            "options": {"hidden_size": 16, "num_layers": 1, "num_heads": 2},
        }  # type: ignore[index]
    for key, value in extra.items():
        cfg[key] = value
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _eval(run: Path) -> dict:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x["eval"] for x in lines if "eval" in x][-1]


def test_audio_text_trains_evaluates_searches_and_exports(tmp_path, folder, capsys) -> None:
    assert main(["train", str(_config(tmp_path, folder, "audio_text"))]) == 0
    run = tmp_path / "runs" / "audio_text"
    metrics = _eval(run)
    for key in ("audio->text R@1", "text->audio R@1", "audio->text MRR", "text->audio MRR"):
        assert 0.0 <= metrics[key] <= 1.0
    assert "speaker eer" in metrics and "zero-shot accuracy" in metrics
    # search the held-out clips with a WAV file and with a text
    assert main(["index", str(run)]) == 0
    capsys.readouterr()
    assert main(["search", str(run), str(folder / "low_ann.wav")]) == 0
    assert ".wav" in capsys.readouterr().out
    assert main(["search", str(run), "a low sound"]) == 0
    assert ".wav" in capsys.readouterr().out
    # a bad audio query: one line, exit 4
    assert main(["search", str(run), str(folder / "notes.wav")]) == 4
    err = capsys.readouterr().err.strip()
    assert "notes.wav" in err and len(err.splitlines()) == 1
    # ONNX: the audio tower with dynamic batch and length, equal to the run's embeddings
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    assert main(["export", str(run), str(out), "--format", "onnx"]) == 0
    graphs = json.loads((out / "export.json").read_text())["graphs"]
    assert graphs["audio"]["sample_rate"] == RATE
    from contrastkit.train.run import load_run

    _, task, _ = load_run(run)
    session = ort.InferenceSession(str(out / "audio.onnx"))
    for b, t in ((1, 4000), (3, 6100)):
        waves = torch.randn(b, t, generator=torch.Generator().manual_seed(t)) * 0.1
        mask = torch.ones(b, t, dtype=torch.bool)
        mask[-1, t // 2 :] = False
        got = session.run(None, {"waveform": waves.numpy(), "mask": mask.numpy()})[0]
        want = task.embed_audio(waves, mask).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
    # safetensors: the audio tower rebuilt from the registry
    st = tmp_path / "st"
    assert main(["export", str(run), str(st), "--format", "safetensors"]) == 0
    from contrastkit.encoders import load_encoder

    enc = load_encoder(st)
    waves = torch.randn(2, 4000, generator=torch.Generator().manual_seed(1)) * 0.1
    torch.testing.assert_close(enc(waves, None), task.embed_audio(waves), atol=1e-5, rtol=0)


def test_audio_views_task_trains(tmp_path, folder) -> None:
    path = _config(tmp_path, folder, "audio", audio={"clip_seconds": 0.6, "crop_seconds": 0.3})
    assert main(["train", str(path)]) == 0
    metrics = _eval(tmp_path / "runs" / "audio")
    assert "speaker eer" in metrics


def test_audio_config_errors_name_the_key(tmp_path, folder, capsys) -> None:
    path = _config(tmp_path, folder, "audio_text")
    assert main(["train", str(path), "--set", "model.name=small_cnn"]) == 2
    assert "model.name" in capsys.readouterr().err
    assert main(["train", str(path), "--set", "model.name=hf_audio"]) == 2
    assert "model.options.path" in capsys.readouterr().err


def test_audio_text_with_a_hugging_face_audio_folder(tmp_path, folder) -> None:
    """``hf_audio``: a tiny random Wav2Vec2 folder (16 kHz: the 8 kHz clips are resampled)."""
    transformers = pytest.importorskip("transformers")
    hf = tmp_path / "w2v"
    cfg = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
    )  # fmt: skip
    transformers.Wav2Vec2Model(cfg).save_pretrained(hf)
    transformers.Wav2Vec2FeatureExtractor(
        sampling_rate=16000, do_normalize=True, return_attention_mask=True
    ).save_pretrained(hf)
    path = _config(tmp_path, folder, "audio_text")
    model = yaml.safe_load(path.read_text())["model"]
    model.update({"name": "hf_audio", "options": {"path": str(hf)}})
    assert main(["train", str(path), "--set", f"model={json.dumps(model)}"]) == 0
    from contrastkit.train.run import load_run

    _, task, _ = load_run(tmp_path / "runs" / "audio_text")
    assert task.sample_rate == 16000 and task.train_set.sample_rate == 16000
    assert "text->audio R@1" in _eval(tmp_path / "runs" / "audio_text")
