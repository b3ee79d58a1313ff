"""FOLDOC computing dictionary: term <-> definition pairs with subject-domain labels.

The Free On-line Dictionary of Computing (Howe, https://foldoc.org, GFDL) ships in Debian as
dictd files (``dict-foldoc``): ``/usr/share/dictd/foldoc.index`` (one ``headword <TAB> offset
<TAB> length`` line per headword, numbers in dictd's base-64) and ``foldoc.dict.dz`` (gzip
readable). An entry opens with ``<domain, domain>`` tags (``<programming>``, ``<hardware>``,
...), uses ``{braces}`` for cross-references and ends with a ``(date)`` line.

Pairs: query = a headword, positive = the first paragraph of its entry with tags and braces
removed. Synonymous headwords point at one entry; that entry is the group (kept on one side of a
split; mask duplicates with ``groups``). Labels are the entry's first domain tag.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import torch

from contrastkit.data._common import (
    TextPairs,
    check_split,
    group_ids,
    missing,
    select_split,
)

DEFAULT_ROOT = Path("/usr/share/dictd")
_B64 = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
}
_TAGS = re.compile(r"^<([^>]*)>\s*")
_BRACES = re.compile(r"\{([^{}]*)\}")
_URL = re.compile(r"\s*\(https?://[^)]*\)")
_SPACE = re.compile(r"\s+")


def dictd_number(text: str) -> int:
    """A dictd base-64 number (``"BCy"`` -> 4274).

    >>> dictd_number("BCy")
    4274
    """
    value = 0
    for ch in text:
        value = value * 64 + _B64[ch]
    return value


def parse_entry(body: str) -> tuple[list[str], list[str], str]:
    """(headwords, domain tags, first paragraph as plain text) of one entry.

    >>> parse_entry("UART\\nU.A.R.T.\\n\\n   <hardware> A {serial} {port} chip.\\n\\n   More.\\n\\n   (2003-07-05)\\n")
    (['UART', 'U.A.R.T.'], ['hardware'], 'A serial port chip.')
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
    if not paragraphs:
        return [], [], ""
    headwords = [h.strip() for h in paragraphs[0].splitlines() if h.strip()]
    indented = [p for p in paragraphs[1:] if not re.fullmatch(r"\(\d{4}-\d{2}-\d{2}\)", p)]
    if not indented:
        return headwords, [], ""
    first = _SPACE.sub(" ", indented[0])
    tags: list[str] = []
    while m := _TAGS.match(first):  # "<standard> <body> ..." has two tag groups
        tags += [t.strip() for t in m.group(1).split(",") if t.strip()]
        first = first[m.end() :]
    first = _URL.sub("", first)
    for _ in range(3):  # nested braces are rare; three passes clear them
        first = _BRACES.sub(r"\1", first)
    return headwords, tags, first.strip()


def load_foldoc(
    split: str = "train",
    root: str | Path | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    min_words: int = 4,
) -> TextPairs:
    """FOLDOC headword -> definition pairs, split by entry.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        root: folder with ``foldoc.index`` and ``foldoc.dict.dz`` (default ``/usr/share/dictd``).
        test_fraction: share of entries held out.
        seed: changes which entries are held out.
        min_words: drop definitions shorter than this (bare cross-references such as
            ``"{Unix}"`` carry no meaning of their own).

    Returns:
        :class:`TextPairs` with ``ids`` the headword, ``groups: (N,)`` the entry (synonymous
        headwords share it), ``labels: (N,)`` the first domain tag's index into ``classes``
        (sorted tags), -1 for untagged entries.

    >>> pairs = load_foldoc("all")  # doctest: +SKIP
    >>> i = pairs.ids.index("16550A")  # doctest: +SKIP
    >>> pairs.positive[i], pairs.classes[pairs.labels[i]]  # doctest: +SKIP
    ('A version of the 16550 UART. Superseded by the 16650.', 'hardware')
    """
    check_split(split)
    root = Path(root) if root is not None else DEFAULT_ROOT
    index_file, dict_file = root / "foldoc.index", root / "foldoc.dict.dz"
    if not index_file.is_file() or not dict_file.is_file():
        raise missing(
            "FOLDOC dictd files (foldoc.index, foldoc.dict.dz)", root, "dict-foldoc", "root"
        )
    with gzip.open(dict_file) as fh:
        raw = fh.read()
    spans: dict[tuple[int, int], None] = {}
    for line in index_file.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and not parts[0].startswith(("00-database", "00database")):
            spans.setdefault((dictd_number(parts[1]), dictd_number(parts[2])))
    # The index holds lower-cased headwords; the entry's own first lines keep their case.
    query, positive, keys, tags_per_row = [], [], [], []
    for start, length in spans:
        body = raw[start : start + length].decode("utf-8", errors="replace")
        headwords, tags, definition = parse_entry(body)
        if len(definition.split()) < min_words:
            continue
        for headword in dict.fromkeys(headwords):
            query.append(headword)
            positive.append(definition)
            keys.append(str(start))
            tags_per_row.append(tags[0] if tags else None)
    classes = sorted({t for t in tags_per_row if t is not None})
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([-1 if t is None else index[t] for t in tags_per_row], dtype=torch.long)
    pairs = TextPairs(query, positive, labels, classes, group_ids(keys), list(query))
    return select_split(pairs, keys, split, test_fraction, seed)
