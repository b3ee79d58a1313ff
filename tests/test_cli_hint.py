"""The hints the CLI prints are commands that work from the user's shell (issue 35, point 7)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from contrastkit.cli import self_command

SCRIPT = Path(sys.executable).parent / "contrastkit"


@pytest.mark.skipif(not SCRIPT.exists(), reason="contrastkit is not installed as a script")
@pytest.mark.parametrize("on_path", [True, False], ids=["venv-activated", "after-make-demo"])
def test_the_printed_command_runs(monkeypatch: pytest.MonkeyPatch, on_path: bool) -> None:
    path = os.environ.get("PATH", "")
    path = (
        f"{SCRIPT.parent}{os.pathsep}{path}"
        if on_path
        else os.pathsep.join(
            p for p in path.split(os.pathsep) if Path(p).resolve() != SCRIPT.parent.resolve()
        )
    )
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "demo"])
    command = self_command()
    assert (command == "contrastkit") is on_path, command
    done = subprocess.run(
        [*shlex.split(command), "--help"], capture_output=True, text=True, env={**os.environ},
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and "usage" in done.stdout, done.stderr


def test_python_dash_m_is_printed_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(Path("src/contrastkit/cli.py").resolve())])
    assert self_command().endswith("-m contrastkit.cli")
