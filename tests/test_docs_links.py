"""Every relative link of the newcomer's docs (README, tutorial, how-to pages, reference,
results, training guide) points at a file that exists and, with ``#anchor``, at a heading in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    ROOT / "docs" / "tutorial.md",
    ROOT / "docs" / "results.md",
    ROOT / "docs" / "training.md",
    *sorted((ROOT / "docs" / "howto").glob("*.md")),
    *sorted((ROOT / "docs" / "reference").glob("*.md")),
]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading.

    >>> slug("## 3. Before and after, on your held-out file")
    '3-before-and-after-on-your-held-out-file'
    >>> slug("## `contrastkit eval-retrieval`")
    'contrastkit-eval-retrieval'
    """
    text = heading.lstrip("#").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.relative_to(ROOT)}: link {target!r}: no such file"
        if anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+ .*$", dest.read_text(encoding="utf-8"), re.M)
            assert anchor in {slug(h) for h in headings}, (
                f"{page.relative_to(ROOT)}: link {target!r}: no heading with that anchor"
            )
