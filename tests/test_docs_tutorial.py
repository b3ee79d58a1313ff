"""docs/tutorial.md works as written: its ```bash and ```python blocks run, in order, in a fresh
temporary folder, and the test fails when one of them fails.

How the page is run (everything else is the page's own text):

- ``contrastkit`` and ``python`` are the venv's: its ``bin`` folder goes first on ``PATH``
  (the page says to activate the venv);
- sizes come from the three variables the page itself exports in step 0, set to the small values
  the page names (``PAIRS=200 HELDOUT=60 STEPS=2``): every block reads them from the environment;
- the one block marked ``<!-- tutorial-test: skip ... -->`` (activate the venv, make a folder)
  is not run;
- ``contrastkit serve`` starts in the background on a free loopback port (the page's ``8000``
  is rewritten to it in that block and the ones after it); the test waits for ``/health`` and
  stops the server at the end, whatever happened;
- each block has a time limit, the whole page about two minutes on two idle cores.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
SKIP_MARK = "<!-- tutorial-test: skip"
SMALL = {"PAIRS": "200", "HELDOUT": "60", "STEPS": "2"}
"""The small sizes the tutorial names in step 0 ("PAIRS=200 HELDOUT=60 STEPS=2 runs the whole
page in a minute or two")."""
BLOCK_TIMEOUT_S = 300
PAGE_PORT = "8000"

_BLOCK = re.compile(
    r"(?P<mark><!-- tutorial-test: skip[^>]*-->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```", re.S
)


def tutorial_blocks(text: str) -> list[tuple[str, str, bool]]:
    """(language, code, skipped) of every ```bash / ```python block, in page order.

    >>> tutorial_blocks("a\\n```bash\\necho 1\\n```\\n```text\\nno\\n```\\n```python\\nx = 1\\n```\\n")
    [('bash', 'echo 1\\n', False), ('python', 'x = 1\\n', False)]
    >>> tutorial_blocks("<!-- tutorial-test: skip (why) -->\\n```bash\\ncd x\\n```\\n")
    [('bash', 'cd x\\n', True)]
    """
    return [(m["lang"], m["code"], m["mark"] is not None) for m in _BLOCK.finditer(text)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"`contrastkit serve` exited with {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"`contrastkit serve` did not answer {url}/health in {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_tutorial_blocks_are_found() -> None:
    """The page has the blocks this test runs: a failing parse must not pass silently."""
    blocks = tutorial_blocks(TUTORIAL.read_text(encoding="utf-8"))
    code = "".join(c for _, c, _ in blocks)
    assert sum(skipped for *_, skipped in blocks) == 1
    assert sum(lang == "python" for lang, *_ in blocks) >= 2
    for needed in ("contrastkit train", "contrastkit serve", "curl", "fit(", "eval-retrieval"):
        assert needed in code, f"docs/tutorial.md no longer shows {needed!r}"
    step0 = next(c for _, c, s in blocks if not s and "export PAIRS" in c)
    assert all(name in step0 for name in SMALL), "step 0 must export the sizes this test sets"
    assert " ".join(f"{k}={v}" for k, v in SMALL.items()) in TUTORIAL.read_text(), (
        "the page must name the small sizes this test runs it with"
    )


@pytest.mark.slow
def test_tutorial_runs_as_written(tmp_path: Path) -> None:
    blocks = tutorial_blocks(TUTORIAL.read_text(encoding="utf-8"))
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **SMALL,
    }
    port = str(_free_port())
    server: subprocess.Popen | None = None
    timings: list[str] = []
    t_page = time.perf_counter()
    try:
        for n, (lang, code, skipped) in enumerate(blocks, start=1):
            if skipped:
                continue
            if server is not None or "contrastkit serve" in code:
                code = code.replace(PAGE_PORT, port)
            if lang == "bash" and "export " in code:  # step 0: keep the test's small sizes
                code = re.sub(r"\bexport\s+((?:[A-Z_]+=\S+\s*)+)", "", code)
            t0 = time.perf_counter()
            if lang == "bash" and "contrastkit serve" in code:
                assert port in code, "the serve block must name the page's port (--port 8000)"
                server = subprocess.Popen(
                    ["bash", "-c", f"exec {code.split('#')[0].strip()}"],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
                _wait_healthy(f"http://127.0.0.1:{port}", server, BLOCK_TIMEOUT_S)
                timings.append(
                    f"block {n} (serve, until healthy): {time.perf_counter() - t0:.1f} s"
                )
                continue
            if lang == "bash":
                cmd = ["bash", "-euo", "pipefail", "-c", code]
            else:
                script = tmp_path / f"_block_{n}.py"
                script.write_text(code, encoding="utf-8")
                cmd = [sys.executable, str(script)]
            done = subprocess.run(
                cmd,
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
            )
            timings.append(f"block {n} ({lang}): {time.perf_counter() - t0:.1f} s")
            assert done.returncode == 0, (
                f"docs/tutorial.md block {n} ({lang}) failed with exit {done.returncode}:\n"
                f"{code}\n--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n"
                f"{done.stderr[-4000:]}"
            )
            if "curl" in code:
                assert '"results"' in done.stdout and '"embeddings"' in done.stdout, done.stdout
    finally:
        if server is not None:
            _stop(server)
    print(f"tutorial: {time.perf_counter() - t_page:.1f} s\n" + "\n".join(timings))
    assert server is not None, "the page never started `contrastkit serve`"
    assert (tmp_path / "foldoc-model" / "modules.json").exists()
    assert (tmp_path / "runs" / "foldoc" / "index" / "corpus.ckindex").exists()
