"""Parallel paraphrases: King James Version (1611/1769) vs World English Bible verse pairs.

Both translations are public domain and come as SWORD modules from Debian
(``sword-text-kjv``, ``sword-text-web``); ``mod2imp`` (``libsword-utils``) exports one verse
per ``$$$Book C:V`` entry in OSIS markup. Verses are aligned by reference, ``<note>`` footnotes
and non-canonical headings are dropped and the remaining tags stripped (``mod2imp -s`` is not
used: it glues words together). The parsed export is cached as JSON under
:func:`contrastkit.data.cache_dir` (written atomically), so only the first call runs
``mod2imp``.

Archaic and modern English of one verse make a paraphrase pair (query = KJV, positive = WEB).
Neighbouring verses repeat each other, so the split is by ``"chapter"`` (default) or by
``"book"``: no chapter (book) has verses on both sides.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import torch

from contrastkit._checks import check_choice
from contrastkit.data._common import (
    TextPairs,
    cache_dir,
    check_split,
    group_ids,
    missing,
    select_split,
    write_cache,
)

KJV_MODULE = "engKJV2006eb"
WEB_MODULE = "engWEB2015eb"
_DEBIAN = {KJV_MODULE: "sword-text-kjv", WEB_MODULE: "sword-text-web"}
_REF = re.compile(r"^(.+) (\d+):(\d+)$")
_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.S)
_HEADING = re.compile(r'<title\b(?![^>]*canonical="true")[^>]*>.*?</title>', re.S)
# Inline tags wrap parts of words and vanish; every other tag (line, paragraph, milestone)
# separates words and becomes a space.
_INLINE = re.compile(r"</?(?:w|transChange|divineName|hi|foreign|seg|rdg|name|catchWord)\b[^>]*>")
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
_SPACE_PUNCT = re.compile(r" ([,.;:!?])")
GROUPINGS = ("chapter", "book")
SYSTEM_SWORD = Path("/usr/share/sword")
_PARSER_VERSION = 1  # bump when clean_osis / parse_imp change what they return


def clean_osis(markup: str) -> str:
    """Verse text without footnotes, headings or tags.

    >>> clean_osis('In the <w lemma="H1">beginning</w>,<note placement="foot">x</note> God.')
    'In the beginning, God.'
    """
    text = _NOTE.sub(" ", markup)
    text = _HEADING.sub(" ", text)
    text = _INLINE.sub("", text)
    text = _TAG.sub(" ", text).replace("¶", " ")
    text = _SPACE.sub(" ", text).strip()
    return _SPACE_PUNCT.sub(r"\1", text)


def parse_imp(text: str) -> dict[str, str]:
    """``{"Genesis 1:1": verse text}`` from a ``mod2imp`` export (chapter/book intros skipped).

    >>> parse_imp("$$$Genesis 1:0\\nintro\\n$$$Genesis 1:1\\nIn the <w>beginning</w>.\\n")
    {'Genesis 1:1': 'In the beginning.'}
    """
    verses: dict[str, str] = {}
    ref, lines = None, []

    def flush() -> None:
        if ref is None:
            return
        m = _REF.match(ref)
        if m and int(m.group(2)) > 0 and int(m.group(3)) > 0:
            body = clean_osis("\n".join(lines))
            if body:
                verses[ref] = body

    for line in text.splitlines():
        if line.startswith("$$$"):
            flush()
            ref, lines = line[3:].strip(), []
        else:
            lines.append(line)
    flush()
    return verses


def cache_file(module: str) -> Path:
    """Where the parsed export of ``module`` is cached: named by the installed module version
    (``Version=`` in ``/usr/share/sword/mods.d/<module>.conf``) and the parser version, so an
    upgraded package or a changed parser never reads a stale cache."""
    version = "unknown"
    conf = SYSTEM_SWORD / "mods.d" / f"{module}.conf"
    if conf.is_file():
        for line in conf.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Version="):
                version = line.split("=", 1)[1].strip()
                break
    return cache_dir() / "bible" / f"{module}-v{version}-p{_PARSER_VERSION}.json"


def export_module(
    module: str, sword_path: str | Path | None = None, cache: bool = True
) -> dict[str, str]:
    """Verses of one SWORD ``module`` by reference, via ``mod2imp`` (cached as JSON)."""
    path = cache_file(module)
    if cache and sword_path is None and path.exists():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # a corrupt cache is rebuilt below
    exe = shutil.which("mod2imp")
    if exe is None:
        raise missing("the SWORD exporter mod2imp", "PATH", "libsword-utils", "sword_path")
    env = dict(os.environ)
    if sword_path is not None:
        env["SWORD_PATH"] = str(sword_path)
    proc = subprocess.run([exe, module], capture_output=True, env=env, check=False)
    text = proc.stdout.decode("utf-8", errors="replace")
    if proc.returncode != 0 or "$$$" not in text:
        where = sword_path or "/usr/share/sword (or $SWORD_PATH)"
        raise missing(f"SWORD module {module}", where, _DEBIAN.get(module), "sword_path")
    verses = parse_imp(text)
    if cache and sword_path is None:
        write_cache(path, json.dumps(verses, ensure_ascii=False).encode("utf-8"))
    return verses


def load_bible_pairs(
    split: str = "train",
    group_by: str = "chapter",
    test_fraction: float = 0.1,
    seed: int = 0,
    sword_path: str | Path | None = None,
    cache: bool = True,
) -> TextPairs:
    """KJV -> WEB verse pairs aligned by reference, split by chapter or book.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        group_by: ``"chapter"`` or ``"book"``; the unit kept on one side of the split.
        test_fraction: share of chapters (books) held out.
        seed: changes which chapters (books) are held out.
        sword_path: an extra SWORD data directory to search (``$SWORD_PATH``) besides the
            system one, for modules installed elsewhere.
        cache: read/write the parsed export under :func:`cache_dir` (only for the system path).

    Returns:
        :class:`TextPairs` with ``query`` the KJV verse, ``positive`` the WEB verse, ``ids`` the
        reference (``"Genesis 1:1"``), ``groups: (N,)`` the chapter (or book) and
        ``labels: (N,)`` the book index into ``classes`` (book names in canonical order).

    >>> pairs = load_bible_pairs("all")  # doctest: +SKIP
    >>> pairs.ids[0], pairs.query[0]  # doctest: +SKIP
    ('Genesis 1:1', 'In the beginning God created the heaven and the earth.')
    """
    check_split(split)
    check_choice("group_by", group_by, GROUPINGS)
    kjv = export_module(KJV_MODULE, sword_path, cache)
    web = export_module(WEB_MODULE, sword_path, cache)
    refs = [r for r in kjv if r in web]
    books: dict[str, int] = {}
    labels, keys = [], []
    for r in refs:
        book, chapter, _ = _REF.match(r).groups()  # type: ignore[union-attr]
        labels.append(books.setdefault(book, len(books)))
        keys.append(book if group_by == "book" else f"{book} {chapter}")
    pairs = TextPairs(
        [kjv[r] for r in refs],
        [web[r] for r in refs],
        torch.tensor(labels, dtype=torch.long),
        list(books),
        group_ids(keys),
        refs,
    )
    return select_split(pairs, keys, split, test_fraction, seed)
