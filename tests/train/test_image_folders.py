"""A user's own image folder through the trainer and the CLI: the packaged demo recipe pointed at
a folder of Fashion-MNIST PNGs (class folders, two corrupt files) trains, evaluates, indexes,
searches and reports with no other change; a flat folder of emoji renders (RGB, unlabelled)
trains a views run with ResNet-18."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from contrastkit.cli import main
from contrastkit.data import load_emoji, load_fashion_mnist

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


def _save(array: torch.Tensor, path: Path) -> None:
    from PIL import Image

    a = array.numpy()
    Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path)


@pytest.fixture(scope="module")
def fmnist_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = load_fashion_mnist("test")
    root = tmp_path_factory.mktemp("fmnist_png")
    for label, name in enumerate(data.classes):
        folder = root / name.replace("/", "-").replace(" ", "_")
        folder.mkdir()
        for j, row in enumerate((data.labels == label).nonzero().flatten()[:40].tolist()):
            _save(data.images[row], folder / f"{j:03d}.png")
    good = (root / "Dress" / "000.png").read_bytes()
    (root / "Dress" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "Sneaker" / "notes.png").write_text("a text file named .png")
    return root


def quick(run_dir: Path) -> list[str]:
    overrides = {
        "train.max_steps": 4,
        "train.time_budget_s": "null",
        "train.log_every": 1,
        "train.monitor_every": 2,
        "train.checkpoint_every": 2,
        "train.threads": 1,
        "train.progress": "false",
        "optim.batch_size": 64,
        "eval.probe": "false",
        "data.workers": 2,
    }
    return [x for k, v in overrides.items() for x in ("--set", f"{k}={v}")] + [
        "--run-dir",
        str(run_dir),
    ]


def test_demo_recipe_on_an_image_folder_end_to_end(
    fmnist_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "folder"
    argv = [
        "train",
        "simclr_fashion_mnist_demo",
        "--set",
        "data.dataset=image_folder",
        "--set",
        f"data.root={fmnist_folder}",
        *quick(run),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 4
    ev = json.loads((run / "eval.json").read_text())
    assert ev["metrics"]["knn_accuracy"] > 0.3 and ev["baseline_name"] == "raw pixels"  # 10 classes
    # the encoder follows the data: 1 channel, 28 px (the first image's size)
    _, task, _ = __import__("contrastkit.train.run", fromlist=["load_run"]).load_run(run)
    assert task.image_shape == (1, 28, 28)
    # a corrupt file of the train split is skipped and counted, never a crash
    train_keys = set(task.train_set.files.keys)
    corrupt = {"Dress/truncated.png", "Sneaker/notes.png"} & train_keys
    if corrupt:
        assert sum(r.get("skipped_files", 0) for r in steps) >= 1
    assert main(["index", str(run)]) == 0
    assert main(["search", str(run), str(fmnist_folder / "Bag" / "001.png"), "-k", "3"]) == 0
    out = capsys.readouterr().out
    hits = [line for line in out.splitlines() if line.strip().startswith(("1.", "2.", "3."))]
    assert len(hits) == 3 and all(".png" in h for h in hits)  # the hits name their files
    assert main(["report", str(run)]) == 0


def test_flat_rgb_folder_trains_views_with_resnet18(tmp_path: Path) -> None:
    data = load_emoji(size=32)
    root = tmp_path / "emoji"
    root.mkdir()
    for i in range(96):
        _save(data.images[i], root / f"emoji_{i:04d}.png")
    run = tmp_path / "emoji-run"
    argv = [
        "train",
        "simclr_fashion_mnist_demo",
        "--set",
        "data.dataset=image_folder",
        "--set",
        f"data.root={root}",
        "--set",
        "model.name=resnet18",
        "--set",
        "model.width=8",
        *quick(run),
    ]
    argv[argv.index("optim.batch_size=64")] = "optim.batch_size=16"
    assert main(argv) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert "knn_accuracy" not in ev["metrics"]  # no labels in a flat folder: nothing to classify
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "start" and len([r for r in records if "loss" in r]) == 4


def test_image_folder_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    base = ["train", "simclr_fashion_mnist_demo", "--set", "data.dataset=image_folder"]
    base += ["--set", f"train.output_dir={out}"]
    assert main(base) == 2
    assert "data.root" in capsys.readouterr().err
    assert main([*base, "--set", f"data.root={tmp_path / 'missing'}"]) == 4
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main([*base, "--set", f"data.root={tmp_path / 'empty'}"]) == 2
    assert "empty" in capsys.readouterr().err
    # data that does not load leaves no run folder behind (the fixed rerun keeps its name)
    assert not out.exists() or not any(out.iterdir())


def test_image_text_task_on_a_captioned_manifest(tmp_path: Path) -> None:
    """task: image_text on a user's CSV manifest (path, caption): CLIP-style training and
    both retrieval directions, from files streamed from disk."""
    import csv

    from tests.train.conftest import tiny_pairs_config

    from contrastkit.train import load_config_dict, train

    data = load_emoji(size=32)
    root = tmp_path / "captioned"
    root.mkdir()
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "caption"])
        for i in range(120):
            _save(data.images[i], root / f"e{i:03d}.png")
            writer.writerow([f"e{i:03d}.png", data.texts[i].lower()])
    raw = tiny_pairs_config(tmp_path)
    raw.update(
        task="image_text",
        negatives={},
        data={
            "dataset": "image_folder",
            "root": str(root / "manifest.csv"),
            "options": {"caption_column": "caption"},
            "workers": 2,
        },
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
        eval={"recall_at": [1, 5]},
    )
    run = train(load_config_dict(raw), tmp_path / "clip")
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert {"image->text R@1", "text->image R@5"} <= set(metrics)
    raw["data"]["options"] = {}
    with pytest.raises(ValueError, match="needs a caption per image"):
        train(load_config_dict(raw), tmp_path / "no-captions")
