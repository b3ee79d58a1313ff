"""Mixtures of pair sources (``data.mixture``): each source loaded with its own prompt, and
the rows of several sources as one :class:`~contrastkit.data.TextPairs`. Which source each batch
comes from is the trainer's order (:class:`contrastkit.train.batches.MixtureOrder`)."""

from __future__ import annotations

from typing import Any

import torch

from contrastkit.data._common import TextPairs, drop_texts

__all__ = ["concat_pairs", "load_mixture"]


def load_mixture(
    sources: list[Any], subset: int | None = None, test_subset: int | None = None
) -> list[tuple[str, TextPairs, TextPairs]]:
    """(name, train, test) of each source (objects with ``dataset``, ``prompt``, ``root``,
    ``options``: a config's ``data.mixture``): its prompt before its queries, held-out keys out
    of its training rows, ids prefixed by the name (no clash across sources), the first
    ``subset`` / ``test_subset`` rows. A dataset named twice is ``name``, ``name2``, ...

    >>> from types import SimpleNamespace as S
    >>> src = [S(dataset="wordnet", prompt="word: ", root=None, options={"pos": "r"})]
    >>> name, train, test = load_mixture(src, subset=5)[0]
    >>> name, len(train), train.query[0].startswith("word: "), train.ids[0].startswith("wordnet:")
    ('wordnet', 5, True, True)
    """
    from contrastkit.data.sources import TEXT_PAIR_SOURCES, load_source

    out = []
    names: dict[str, int] = {}
    for source in sources:
        n = names[source.dataset] = names.get(source.dataset, 0) + 1
        name = source.dataset if n == 1 else f"{source.dataset}{n}"
        kw = {"root": source.root, **source.options}
        sides = [load_source(TEXT_PAIR_SOURCES, source.dataset, s, **kw) for s in ("train", "test")]
        sides[0] = drop_texts(sides[0], set(sides[1].positive))
        for pairs in sides:
            pairs.query = [source.prompt + q for q in pairs.query]
            pairs.ids = [f"{name}:{i}" for i in pairs.ids]
        if subset:
            sides[0] = sides[0].subset(torch.arange(min(subset, len(sides[0]))))
        if test_subset:
            sides[1] = sides[1].subset(torch.arange(min(test_subset, len(sides[1]))))
        out.append((name, sides[0], sides[1]))
    return out


def concat_pairs(parts: list[TextPairs]) -> TextPairs:
    """The rows of ``parts`` one after the other: groups kept apart, negatives and scores kept
    (a part without negatives gives empty lists; scores only when every part has them),
    labels dropped.

    >>> both = concat_pairs([TextPairs(["a"], ["b"]), TextPairs(["c", "d"], ["e", "f"])])
    >>> both.query, both.groups.tolist()
    (['a', 'c', 'd'], [0, 1, 2])
    """
    offsets = [0]
    for p in parts:
        offsets.append(offsets[-1] + int(p.groups.max()) + 1 if len(p) else offsets[-1])
    negatives = None
    if any(p.negatives is not None for p in parts):
        negatives = [n for p in parts for n in (p.negatives or [[] for _ in range(len(p))])]
    scores = None
    if all(p.scores is not None for p in parts):
        scores = [s for p in parts for s in p.scores]  # type: ignore[union-attr]
    return TextPairs(
        [q for p in parts for q in p.query],
        [k for p in parts for k in p.positive],
        groups=torch.cat([p.groups + o for p, o in zip(parts, offsets)]),
        ids=[i for p in parts for i in p.ids],
        negatives=negatives,
        scores=scores,
    )
