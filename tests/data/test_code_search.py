"""The standard-library code search source: docstring -> body pairs, split by module, and
`contrastkit data export-beir code DIR`."""

from __future__ import annotations

import ast
from pathlib import Path

from contrastkit.cli import main
from contrastkit.data.beir import load_beir
from contrastkit.data.code_search import load_code_search


def test_pairs_are_docstrings_and_bodies_split_by_module(tmp_path: Path) -> None:
    pkg = tmp_path / "lib"
    (pkg / "test").mkdir(parents=True)
    (pkg / "alpha.py").write_text(
        'def f(x):\n    """Add one to a number.\n\n    More text."""\n    return x + 1\n'
        'class C:\n    def m(self):\n        """Return the answer to everything."""\n'
        "        return 42\n"
        'def g():\n    """Short."""\n    return 0\n'
    )
    (pkg / "test" / "test_x.py").write_text('def t():\n    """A test that is skipped."""\n')
    (pkg / "broken.py").write_text("def (:\n")
    pairs = load_code_search("all", root=pkg)
    assert pairs.ids == ["alpha.C.m", "alpha.f"]  # "Short." has < 3 words; tests, bad files out
    assert pairs.query[1] == "Add one to a number."
    assert '"""' not in pairs.positive[1] and "return x + 1" in pairs.positive[1]
    ast.parse(pairs.positive[1])  # the document is valid code
    import sysconfig

    from contrastkit.data.code_search import _stdlib_rows

    module = {r[1]: r[0] for r in _stdlib_rows(sysconfig.get_paths()["stdlib"], 1500)}
    train, test = load_code_search("train"), load_code_search("test")
    assert len(test) > 100
    assert not {module[i] for i in train.ids} & {module[i] for i in test.ids}


def test_export_beir_code(tmp_path: Path) -> None:
    assert main(["data", "export-beir", "code", str(tmp_path / "code")]) == 0
    data = load_beir(tmp_path / "code", "test")
    assert len(data.qrels) > 100 and len(data.corpus) >= len(data.qrels)
