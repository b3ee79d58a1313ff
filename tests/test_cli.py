from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml

from contrastkit.cli import main
from contrastkit.train import TrainingDiverged, TrainingInterrupted
from contrastkit.train.config import list_recipes


def _subcommands() -> list[str]:
    from contrastkit.cli import COMMANDS

    return sorted(COMMANDS)


SUBCOMMANDS = _subcommands()  # every registered command has --help


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in SUBCOMMANDS])
def test_help_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage: contrastkit" in capsys.readouterr().out


def test_error_exits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2  # no command: help, non-zero
    assert main(["train"]) == 2
    assert "needs CONFIG" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "simclr_fashion_mnist", "--set", "optim.lr=fast"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: got 'fast'" in err
    assert main(["eval", str(tmp_path)]) == 4
    assert "not a run folder" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 4
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_recipes_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    assert capsys.readouterr().out.split() == list_recipes()
    assert {"simclr_fashion_mnist", "supcon_fashion_mnist", "minilm_wordnet"} <= set(list_recipes())


def test_console_script_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "contrastkit.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("contrastkit ")


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append(value)


def test_train_eval_index_search_report_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tiny real-data run through every subcommand (scikit-learn digits, seconds)."""
    from tests.train.conftest import tiny_config

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run), "--set", "train.max_steps=8"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"knn_accuracy\s+\d\.\d+\s+\d\.\d+", out) and "linear_probe_accuracy" in out
    assert (run / "config.yaml").exists() and (run / "eval.json").exists()
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 8  # the override is in the saved config

    assert main(["eval", str(run)]) == 0
    assert "raw pixels" in capsys.readouterr().out

    assert main(["search", str(run), "x.png"]) == 4  # no index yet
    assert "contrastkit index" in capsys.readouterr().err
    assert main(["index", str(run)]) == 0
    out = capsys.readouterr().out
    assert "indexed 1422 items" in out
    hint = re.search(r"search it: .*?\bsearch (\S+) (\S+)$", out, re.M)  # a test image as PNG
    assert hint is not None and hint.group(1) == str(run)
    assert main(["search", str(run), hint.group(2)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5

    from PIL import Image

    from contrastkit.data.sources import IMAGE_SOURCES

    written = torch.tensor(list(Image.open(hint.group(2)).getdata()), dtype=torch.float32)
    test_image = IMAGE_SOURCES["digits"]("test").images[0, 0].flatten()
    assert torch.allclose(written / 255, test_image, atol=0.5 / 255)

    first = IMAGE_SOURCES["digits"]("train").images[0, 0]  # corpus item 0, as a PNG file
    image = tmp_path / "query.png"
    Image.fromarray((first * 255).round().byte().numpy()).save(image)
    assert main(["search", str(run), str(image), "-k", "3"]) == 0
    hits = capsys.readouterr().out.rstrip().splitlines()
    assert len(hits) == 3 and hits[0].startswith(" 1.")
    assert any("[0]" in h for h in hits)  # the image itself is among its nearest neighbours
    assert main(["search", str(run), "a text query"]) == 2  # an image run needs an image
    capsys.readouterr()

    assert main(["report", str(run)]) == 0
    html = run / "report" / "index.html"
    assert str(html) in capsys.readouterr().out
    parser = _Refs()
    parser.feed(html.read_text())
    pngs = [r for r in parser.refs if r.endswith(".png")]
    assert {
        "loss.png",
        "monitors.png",
        "projection.png",
        "similarity_hist.png",
        "neighbours.png",
    } <= set(pngs)
    for ref in parser.refs:  # every reference is a file next to the page (no network, no abs path)
        assert not ref.startswith(("http:", "https:", "/")), ref
        assert (html.parent / ref).is_file(), ref


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (TrainingDiverged("loss is not finite"), 3),
        (FileNotFoundError("no such run"), 4),
        (ValueError("bad value"), 2),
        (KeyboardInterrupt(), 130),
        (TrainingInterrupted(15, 3, Path("runs/x")), 143),
        (TrainingInterrupted(2, 3, Path("runs/x")), 130),
    ],
)
def test_errors_map_to_exit_codes(
    error: BaseException,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each failure kind leaves with its own exit code and a one-line message on stderr."""
    from contrastkit import cli

    def fail(args: object) -> int:
        raise error

    monkeypatch.setitem(cli.COMMANDS, "recipes", fail)
    assert main(["recipes"]) == code
    assert capsys.readouterr().err.startswith("contrastkit recipes: ")
