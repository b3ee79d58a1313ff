"""A run folder someone sent may hold a malicious pickle: no command ever unpickles it.

A real tiny run (digits) gets a ``state.pt`` whose unpickling would create a marker file, and the
same payload under the other names a PyTorch tool might read (``pytorch_model.bin``,
``optimizer.pt``, ``training_args.bin``, ``model.pt``, a newer legacy checkpoint folder); then
eval, index, search, report and ``train --resume`` run on it and the marker never appears.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
from tests.train.conftest import tiny_config

from contrastkit.cli import main
from contrastkit.train import load_config_dict, train


class Payload:
    """Unpickling calls ``open(marker, "w")``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


NAMES = ("state.pt", "pytorch_model.bin", "optimizer.pt", "training_args.bin", "model.pt")


def test_no_command_executes_a_planted_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Payload(marker))
    pickle.loads(payload)  # the payload works: it does create the marker
    assert marker.exists()
    marker.unlink()

    raw = tiny_config(tmp_path)
    raw["eval"].update({"probe": False, "raw_baseline": False})
    run = train(load_config_dict(raw))
    ckpts = sorted((run / "checkpoints").glob("step_*"))
    legacy = run / "checkpoints" / "step_9999999"  # newest: an old-style folder with a pickle
    legacy.mkdir()
    (legacy / "model.safetensors").write_bytes((ckpts[-1] / "model.safetensors").read_bytes())
    for folder in (run, run / "checkpoints", *ckpts, legacy):
        for name in NAMES:
            (folder / name).write_bytes(payload)
    (run / "checkpoints" / "latest").write_text(legacy.name)  # the pointer names the legacy one

    assert main(["index", str(run)]) == 0
    query = next((run / "queries").glob("*.png"))
    with caplog.at_level(logging.WARNING):
        for argv in (
            ["eval", str(run)],
            ["search", str(run), str(query)],
            ["report", str(run)],
            ["train", "--resume", str(run)],
        ):
            assert main(argv) == 0, (argv, capsys.readouterr().err)
            assert not marker.exists(), argv
    assert "skipping checkpoint step_9999999" in caplog.text
    assert "never unpickles" in caplog.text
    assert not marker.exists()
