"""Graded WordNet pairs: two synsets' definitions and their Wu-Palmer similarity (an STS-style
set on real data).

Wu & Palmer (1994, "Verb semantics and lexical selection", ACL,
https://aclanthology.org/P94-1019) grade two concepts by where their lowest common subsumer
(LCS) sits in the hypernym hierarchy::

    wup(a, b) = 2 * depth(lcs) / (dist(a, lcs) + dist(b, lcs) + 2 * depth(lcs))

with ``dist`` the number of hypernym links from a synset up to the LCS and ``depth(lcs)`` the
number of nodes on the shortest path from the root down to the LCS (the root has depth 1).
Among the common hypernyms (a synset counts as its own), the one giving the largest value is
the LCS; synsets without a common hypernym score 0. The hypernym graph is WordNet's own
``@``/``@i`` pointers (:func:`contrastkit.data.wordnet._read_hypernyms`). The value is 1 for
a synset with itself and in (0, 1) otherwise. NLTK's ``wup_similarity`` counts depths along
the longest path instead, so its values differ slightly on synsets with several hypernyms.

Each synset of a split is paired with one partner of the same split side, drawn in equal
shares among its hypernyms/hyponyms, its co-hyponyms, its lexicographer file and every synset
(a spread of grades, from siblings near 0.9 to unrelated pairs near 0.1). The pair's texts are
the two definitions; ``scores[i] = [wup]``. Splits are by synset (as :mod:`~contrastkit.data.
wordnet`), so no definition is on both sides.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from contrastkit.data._common import TextPairs, check_split, held_out_mask
from contrastkit.data.wordnet import DEFAULT_ROOT, _read_hypernyms, _read_synsets

__all__ = ["load_wordnet_graded", "wu_palmer"]


def _distances_up(sid: str, hypernyms: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Every hypernym of ``sid`` (and itself) -> the fewest links up to it (breadth first)."""
    dist = {sid: 0}
    frontier = [sid]
    while frontier:
        nxt = []
        for s in frontier:
            for h in hypernyms.get(s, ()):
                if h not in dist:
                    dist[h] = dist[s] + 1
                    nxt.append(h)
        frontier = nxt
    return dist


class _Hierarchy:
    """Depths and hypernym distances of one POS, computed on demand and cached."""

    def __init__(self, hypernyms: dict[str, tuple[str, ...]]) -> None:
        self.hypernyms = hypernyms
        self._up: dict[str, dict[str, int]] = {}
        self._depth: dict[str, int] = {}

    def up(self, sid: str) -> dict[str, int]:
        if sid not in self._up:
            self._up[sid] = _distances_up(sid, self.hypernyms)
        return self._up[sid]

    def depth(self, sid: str) -> int:
        """Nodes on the shortest path from a root (a synset without hypernyms) to ``sid``."""
        if sid not in self._depth:
            up = self.up(sid)
            self._depth[sid] = 1 + min(d for s, d in up.items() if not self.hypernyms.get(s))
        return self._depth[sid]


def wu_palmer(a: str, b: str, hypernyms: dict[str, tuple[str, ...]] | _Hierarchy) -> float:
    """Wu-Palmer similarity of synsets ``a`` and ``b`` (module docstring).

    Args:
        a, b: synset ids (``"n:02084071"``).
        hypernyms: synset id -> its hypernyms' ids.

    Returns:
        A value in [0, 1]: 1 for ``a == b``, 0 without a common hypernym.

    >>> h = {"dog": ("canine",), "wolf": ("canine",), "canine": ("animal",), "cat": ("animal",),
    ...      "animal": ()}
    >>> wu_palmer("dog", "wolf", h)  # lcs canine, depth 2: 2*2 / (1 + 1 + 2*2)
    0.6666666666666666
    >>> wu_palmer("dog", "cat", h), wu_palmer("dog", "dog", h)
    (0.4, 1.0)
    """
    tree = hypernyms if isinstance(hypernyms, _Hierarchy) else _Hierarchy(hypernyms)
    up_a, up_b = tree.up(a), tree.up(b)
    best = 0.0
    for lcs in up_a.keys() & up_b.keys():
        depth = tree.depth(lcs)
        best = max(best, 2 * depth / (up_a[lcs] + up_b[lcs] + 2 * depth))
    return best


@lru_cache(maxsize=2)
def _hierarchy(root: str, pos: str) -> _Hierarchy:
    return _Hierarchy(_read_hypernyms(root, pos))


def load_wordnet_graded(
    split: str = "train",
    root: str | Path | None = None,
    pos: str = "n",
    max_pairs: int | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> TextPairs:
    """Graded pairs of WordNet definitions (module docstring).

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        root: the WordNet dict folder (default ``/usr/share/wordnet``, Debian's ``wordnet-base``).
        pos: ``"n"`` (nouns: one hierarchy under ``entity``) or ``"v"`` (verbs: several roots).
        max_pairs: keep the first N pairs of the split (synsets in a seeded order).
        test_fraction: share of synsets held out.
        seed: the partners and the order.

    Returns:
        :class:`TextPairs`: ``query`` / ``positive`` the two definitions, ``scores`` ``[[wup]]``,
        ``ids`` ``"a|b"``, ``groups`` by the first synset.

    >>> pairs = load_wordnet_graded("test", max_pairs=50)
    >>> len(pairs), all(0.0 <= s[0] <= 1.0 for s in pairs.scores)
    (50, True)
    """
    check_split(split)
    if pos not in ("n", "v"):
        raise ValueError(
            f"pos must be 'n' or 'v' (the POS with a hypernym hierarchy), got {pos!r}."
        )
    root_s = str(root or DEFAULT_ROOT)
    synsets = _read_synsets(root_s, pos)
    tree = _hierarchy(root_s, pos)
    sids = [s[0] for s in synsets]
    definition = {s[0]: s[3] for s in synsets}
    lexname = {s[0]: s[1] for s in synsets}
    test = dict(zip(sids, held_out_mask(sids, test_fraction, seed).tolist()))
    children: dict[str, list[str]] = {}
    for sid, parents in tree.hypernyms.items():
        for p in parents:
            children.setdefault(p, []).append(sid)
    by_lex: dict[int, list[str]] = {}
    for sid in sids:
        by_lex.setdefault(lexname[sid], []).append(sid)
    side: dict[tuple[int, bool], list[str]] = {}
    for sid in sids:  # (lexicographer file, or -1 for any, test side) -> synsets
        side.setdefault((lexname[sid], test[sid]), []).append(sid)
        side.setdefault((-1, test[sid]), []).append(sid)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(sids), generator=g).tolist()
    query, positive, ids, scores = [], [], [], []
    for i in order:
        a = sids[i]
        if split != "all" and test[a] != (split == "test"):
            continue
        tier = int(torch.randint(4, (1,), generator=g))
        if tier == 0:
            pool = list(tree.hypernyms.get(a, ())) + children.get(a, [])
        elif tier == 1:
            pool = [s for p in tree.hypernyms.get(a, ()) for s in children.get(p, []) if s != a]
        else:  # the same lexicographer file, or any synset: of this split side
            lex = lexname[a] if tier == 2 else -1
            pool = side[(lex, test[a])] if split != "all" else by_lex.get(lex, sids)
        if tier < 2:
            pool = [s for s in pool if split == "all" or test[s] == test[a]]
        if not pool or pool == [a]:
            continue
        b = pool[int(torch.randint(len(pool), (1,), generator=g))]
        if b == a:
            continue
        query.append(definition[a])
        positive.append(definition[b])
        ids.append(f"{a}|{b}")
        scores.append([wu_palmer(a, b, tree)])
        if max_pairs is not None and len(query) >= max_pairs:
            break
    position = {sid: i for i, sid in enumerate(sids)}
    groups = torch.tensor([position[x.split("|")[0]] for x in ids], dtype=torch.long)
    return TextPairs(query, positive, groups=groups, ids=ids, scores=scores)
