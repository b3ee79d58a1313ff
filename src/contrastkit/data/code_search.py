"""Code search on the installed Python standard library: a function's docstring <-> its body.

Every ``.py`` module of the standard library this interpreter runs
(``sysconfig.get_paths()["stdlib"]``, without ``test/``, ``idlelib/``, ``site-packages/`` and
the tests of other packages) is parsed with :mod:`ast`. Each function or method with a
docstring gives one pair: the query is the docstring's first paragraph (whitespace collapsed),
the document the function's source without its docstring (``ast.unparse``; at most
``max_chars`` characters). This is the CodeSearchNet setup (Husain et al. 2019,
https://arxiv.org/abs/1909.09436) on code every Python installation ships, so nothing is
downloaded.

Splits are by module: no module has functions on both sides. Row ids are the function's
qualified name (``json.decoder.JSONDecoder.decode``); the pairs' texts are the same on every
machine with the same Python version.
"""

from __future__ import annotations

import ast
import re
import sysconfig
from functools import lru_cache
from pathlib import Path

from contrastkit.data._common import TextPairs, check_split, held_out_mask

__all__ = ["load_code_search"]

SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"}


def _first_paragraph(doc: str) -> str:
    return re.sub(r"\s+", " ", doc.strip().split("\n\n")[0]).strip()


def _without_docstring(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    body = fn.body[1:] or [ast.Pass()]
    clone = type(fn)(**{**{f: getattr(fn, f) for f in fn._fields}, "body": body})
    clone.lineno, clone.col_offset = fn.lineno, fn.col_offset  # type: ignore[attr-defined]
    return ast.unparse(ast.fix_missing_locations(clone))


def _functions(tree: ast.AST, prefix: str) -> list[tuple[str, str, str]]:
    """(qualified name, docstring's first paragraph, source without docstring)."""
    out = []
    todo: list[tuple[ast.AST, str]] = [(tree, prefix)]
    while todo:
        node, name = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{name}.{child.name}"
                if not isinstance(child, ast.ClassDef):
                    doc = ast.get_docstring(child)
                    if doc and len(_first_paragraph(doc).split()) >= 3:
                        out.append((qual, _first_paragraph(doc), _without_docstring(child)))
                todo.append((child, qual))
    return sorted(out)


@lru_cache(maxsize=2)
def _stdlib_rows(root: str, max_chars: int) -> tuple[tuple[str, str, str, str], ...]:
    """(module, qualified name, query, document) of every documented stdlib function."""
    rows = []
    base = Path(root)
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if SKIP_PARTS & set(rel.parts) or rel.name.startswith("test_"):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for qual, query, code in _functions(tree, module):
            rows.append((module, qual, query, code[:max_chars]))
    return tuple(rows)


def load_code_search(
    split: str = "train",
    root: str | Path | None = None,
    max_chars: int = 1500,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> TextPairs:
    """Docstring -> function pairs of the standard library (module docstring).

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        root: a folder of Python sources (default: this interpreter's standard library).
        max_chars: documents longer than this are cut.
        test_fraction: share of modules held out.
        seed: which modules.

    Returns:
        :class:`TextPairs`: ``query`` the docstring paragraph, ``positive`` the code, ``ids``
        the qualified names, ``labels`` -1.

    >>> pairs = load_code_search("test")
    >>> len(pairs) > 100, pairs.ids[0].count(".") >= 1
    (True, True)
    """
    check_split(split)
    folder = str(root or sysconfig.get_paths()["stdlib"])
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"root {folder!r}: no such folder of Python sources.")
    rows = _stdlib_rows(folder, int(max_chars))
    if not rows:
        raise ValueError(f"root {folder!r}: no documented functions found in its .py files.")
    modules = [r[0] for r in rows]
    pairs = TextPairs([r[2] for r in rows], [r[3] for r in rows], ids=[r[1] for r in rows])
    if split == "all":
        return pairs
    test = held_out_mask(modules, test_fraction, seed)
    return pairs.subset(test if split == "test" else ~test)
