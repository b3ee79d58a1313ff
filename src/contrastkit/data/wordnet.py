"""WordNet 3.0 text pairs: lemma <-> gloss, usage example <-> gloss, synonym pairs.

WordNet (Miller 1995, https://doi.org/10.1145/219717.219748; Fellbaum 1998) groups words into
synsets. The Debian package ``wordnet-base`` installs ``/usr/share/wordnet/data.{noun,verb,adj,
adv}``: one synset per line, ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``, where
the gloss is a definition followed by ``"quoted usage examples"``.

Every pair carries its synset as the group (``groups``, ``ids`` like ``"n:02084071"``): several
lemmas share one synset, so two rows of one batch can be the same concept (false negatives -
mask them with ``groups``). ``labels`` are the 45 lexicographer files (``noun.animal``, ...).
Splits are by synset, so no synset is on both sides.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import torch

from contrastkit._checks import check_choice
from contrastkit.data._common import TextPairs, check_split, group_ids, missing, select_split

DEFAULT_ROOT = Path("/usr/share/wordnet")
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
KINDS = ("lemma_gloss", "example_gloss", "synonyms")
# The 45 lexicographer files, in lex_filenum order (WordNet's lexnames(5WN)).
LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
]  # fmt: skip
_QUOTED = re.compile(r'"([^"]+)"')
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@lru_cache(maxsize=4)
def _read_synsets(
    root: str, pos: str
) -> tuple[tuple[str, int, tuple[str, ...], str, tuple[str, ...]], ...]:
    """(synset id, lex_filenum, lemmas, definition, examples) for every synset of one POS."""
    path = Path(root) / f"data.{POS_FILES[pos]}"
    if not path.exists():
        raise missing(f"WordNet file data.{POS_FILES[pos]}", Path(root), "wordnet-base", "root")
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  "):  # licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            offset, lexnum, count = fields[0], int(fields[1]), int(fields[3], 16)
            lemmas = tuple(
                _ADJ_MARKER.sub("", fields[4 + 2 * i]).replace("_", " ") for i in range(count)
            )
            gloss = gloss.strip()
            examples = tuple(e.strip() for e in _QUOTED.findall(gloss) if e.strip())
            first_quote = gloss.find('"')
            definition = (
                (gloss if first_quote < 0 else gloss[:first_quote]).strip().rstrip(";").strip()
            )
            out.append((f"{pos}:{offset}", lexnum, lemmas, definition, examples))
    return tuple(out)


def load_wordnet(
    kind: str = "lemma_gloss",
    split: str = "train",
    pos: str = "nvar",
    root: str | Path | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> TextPairs:
    """WordNet pairs of one ``kind``, split by synset.

    Args:
        kind: ``"lemma_gloss"`` (query = a lemma such as ``"dog"``, positive = its synset's
            definition; one row per lemma), ``"example_gloss"`` (query = a usage example,
            positive = the definition; one row per example) or ``"synonyms"`` (query, positive =
            two lemmas of one synset; one row per unordered pair).
        split: ``"train"``, ``"test"`` or ``"all"``.
        pos: which parts of speech, any of ``"n"`` noun, ``"v"`` verb, ``"a"`` adjective,
            ``"r"`` adverb (e.g. ``"n"`` or ``"nvar"``).
        root: directory with the ``data.*`` files (default ``/usr/share/wordnet``).
        test_fraction: share of synsets in the test split.
        seed: changes which synsets are held out.

    Returns:
        :class:`TextPairs` with ``groups: (N,)`` the synset, ``ids`` the synset id
        (``"n:02084071"``), ``labels: (N,)`` the lexicographer file (``classes`` = the 45 names).

    >>> pairs = load_wordnet("lemma_gloss", split="all", pos="r")
    >>> pairs.query[0], pairs.positive[0], pairs.classes[pairs.labels[0]]
    ('a cappella', 'without musical accompaniment', 'adv.all')
    """
    check_choice("kind", kind, KINDS)
    check_split(split)
    if not pos or any(p not in POS_FILES for p in pos):
        raise ValueError(f"pos must be letters from 'nvar' (noun, verb, adj, adv), got {pos!r}.")
    root = Path(root) if root is not None else DEFAULT_ROOT
    if not root.is_dir():
        raise missing("WordNet directory", root, "wordnet-base", "root")
    query, positive, labels, ids = [], [], [], []
    for p in dict.fromkeys(pos):
        for sid, lexnum, lemmas, definition, examples in _read_synsets(str(root), p):
            if kind == "lemma_gloss":
                rows = [(lemma, definition) for lemma in dict.fromkeys(lemmas)]
            elif kind == "example_gloss":
                rows = [(example, definition) for example in examples]
            else:
                uniq = list(dict.fromkeys(lemmas))
                rows = [(a, b) for i, a in enumerate(uniq) for b in uniq[i + 1 :]]
            for q, d in rows:
                if q and d:
                    query.append(q)
                    positive.append(d)
                    labels.append(lexnum)
                    ids.append(sid)
    pairs = TextPairs(
        query,
        positive,
        torch.tensor(labels, dtype=torch.long),
        list(LEXNAMES),
        group_ids(ids),
        ids,
    )
    return select_split(pairs, ids, split, test_fraction, seed)


def count_synsets(pos: str = "nvar", root: str | Path | None = None) -> int:
    """Number of synsets in the ``pos`` files (117,659 for all of WordNet 3.0)."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    return sum(len(_read_synsets(str(root), p)) for p in dict.fromkeys(pos))
