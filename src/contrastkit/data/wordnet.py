"""WordNet 3.0 text pairs: lemma <-> gloss, usage example <-> gloss, synonym pairs.

WordNet (Miller 1995, https://doi.org/10.1145/219717.219748; Fellbaum 1998) groups words into
synsets. The Debian package ``wordnet-base`` installs ``/usr/share/wordnet/data.{noun,verb,adj,
adv}``: one synset per line, ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``, where
the gloss is a definition followed by ``"quoted usage examples"``.

Every pair carries its synset as the group (``groups``, ``ids`` like ``"n:02084071"``): several
lemmas share one synset, so two rows of one batch can be the same concept (false negatives -
mask them with ``groups``). ``labels`` are the 45 lexicographer files (``noun.animal``, ...).
Splits are by synset, so no synset is on both sides.

``hard_negatives=K`` adds, per row, the definitions of up to K *related* synsets of the same
split (``negatives``): co-hyponyms first (other children of the synset's hypernyms: "dog" ->
the glosses of wolf, jackal, ...), then hypernyms and hyponyms, then synsets of the same
lexicographer file. These are the near misses a retriever must learn to rank below the right
gloss; they are mined from WordNet's own pointers, not from a model.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import torch

from contrastkit._checks import check_choice
from contrastkit.data._common import (
    TextPairs,
    check_split,
    group_ids,
    held_out_mask,
    missing,
    select_split,
)

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


@lru_cache(maxsize=4)
def _read_hypernyms(root: str, pos: str) -> dict[str, tuple[str, ...]]:
    """Synset id -> ids of its hypernyms (``@`` and instance ``@i`` pointers) in the same file."""
    path = Path(root) / f"data.{POS_FILES[pos]}"
    out: dict[str, tuple[str, ...]] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  "):
                continue
            fields = line.partition(" | ")[0].split()
            at = 4 + 2 * int(fields[3], 16)  # after the (word, lex_id) pairs: the pointer count
            pointers = [fields[at + 1 + 4 * j : at + 5 + 4 * j] for j in range(int(fields[at]))]
            out[f"{pos}:{fields[0]}"] = tuple(
                f"{pos}:{offset}"
                for symbol, offset, ptr_pos, _ in pointers
                if symbol in ("@", "@i") and ptr_pos.replace("s", "a") == pos
            )
    return out


def _related_definitions(
    root: str, pos: str, keep: dict[str, bool], k: int, seed: int
) -> dict[str, list[str]]:
    """Synset id -> up to ``k`` definitions of related synsets on the same side of the split
    (``keep[id]`` is the side): co-hyponyms, then hypernyms and hyponyms, then the same
    lexicographer file; each tier in a seeded order, so the choice is reproducible."""
    synsets = _read_synsets(root, pos)
    definition = {sid: d for sid, _, _, d, _ in synsets}
    hypernyms = _read_hypernyms(root, pos)
    children: dict[str, list[str]] = {}
    for sid, parents in hypernyms.items():
        for parent in parents:
            children.setdefault(parent, []).append(sid)
    by_lexname: dict[int, list[str]] = {}
    for sid, lexnum, *_ in synsets:
        by_lexname.setdefault(lexnum, []).append(sid)
    g = torch.Generator()
    out: dict[str, list[str]] = {}
    for sid, lexnum, *_ in synsets:
        g.manual_seed(seed * 1_000_003 + int(sid.split(":")[1]))
        parents = hypernyms.get(sid, ())
        tiers = [
            [c for parent in parents for c in children.get(parent, [])],
            [*parents, *children.get(sid, [])],
        ]
        picked: list[str] = []
        seen = {definition[sid]}
        for tier in tiers:
            for i in torch.randperm(len(tier), generator=g).tolist():
                other = tier[i]
                text = definition.get(other, "")
                if len(picked) < k and keep.get(other) == keep[sid] and text and text not in seen:
                    picked.append(text)
                    seen.add(text)
        pool = by_lexname[lexnum]
        for _ in range(20 * k):  # rarely needed: synsets without related ones on their side
            if len(picked) >= k:
                break
            other = pool[int(torch.randint(len(pool), (1,), generator=g))]
            text = definition[other]
            if keep[other] == keep[sid] and text and text not in seen:
                picked.append(text)
                seen.add(text)
        out[sid] = picked
    return out


def load_wordnet(
    kind: str = "lemma_gloss",
    split: str = "train",
    pos: str = "nvar",
    root: str | Path | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    hard_negatives: int = 0,
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
        hard_negatives: per row, up to this many definitions of related synsets of the same
            split as ``negatives`` (co-hyponyms, then hypernyms/hyponyms, then the same
            lexicographer file); ``kind`` ``"lemma_gloss"`` or ``"example_gloss"`` only. A
            held-out synset's gloss is never a training row's negative.

    Returns:
        :class:`TextPairs` with ``groups: (N,)`` the synset, ``ids`` the synset id
        (``"n:02084071"``), ``labels: (N,)`` the lexicographer file (``classes`` = the 45 names)
        and, with ``hard_negatives``, ``negatives`` (N lists of definitions).

    >>> pairs = load_wordnet("lemma_gloss", split="all", pos="r")
    >>> pairs.query[0], pairs.positive[0], pairs.classes[pairs.labels[0]]
    ('a cappella', 'without musical accompaniment', 'adv.all')
    """
    check_choice("kind", kind, KINDS)
    check_split(split)
    if not pos or any(p not in POS_FILES for p in pos):
        raise ValueError(f"pos must be letters from 'nvar' (noun, verb, adj, adv), got {pos!r}.")
    if (
        not isinstance(hard_negatives, int)
        or isinstance(hard_negatives, bool)
        or hard_negatives < 0
    ):
        raise ValueError(
            f"hard_negatives must be an int >= 0 (related glosses per row, e.g. 4), got "
            f"{hard_negatives!r}."
        )
    if hard_negatives and kind == "synonyms":
        raise ValueError(
            "hard_negatives are related synsets' definitions, so kind must be 'lemma_gloss' or "
            "'example_gloss', got kind='synonyms'."
        )
    root = Path(root) if root is not None else DEFAULT_ROOT
    if not root.is_dir():
        raise missing("WordNet directory", root, "wordnet-base", "root")
    query, positive, labels, ids, negatives = [], [], [], [], []
    for p in dict.fromkeys(pos):
        related: dict[str, list[str]] = {}
        if hard_negatives:
            sids = [sid for sid, *_ in _read_synsets(str(root), p)]
            side = held_out_mask(sids, test_fraction, seed).tolist()
            keep = dict(zip(sids, side))
            related = _related_definitions(str(root), p, keep, hard_negatives, seed)
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
                    negatives.append(related.get(sid, []))
    pairs = TextPairs(
        query,
        positive,
        torch.tensor(labels, dtype=torch.long),
        list(LEXNAMES),
        group_ids(ids),
        ids,
        negatives if hard_negatives else None,
    )
    return select_split(pairs, ids, split, test_fraction, seed)


def count_synsets(pos: str = "nvar", root: str | Path | None = None) -> int:
    """Number of synsets in the ``pos`` files (117,659 for all of WordNet 3.0)."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    return sum(len(_read_synsets(str(root), p)) for p in dict.fromkeys(pos))
