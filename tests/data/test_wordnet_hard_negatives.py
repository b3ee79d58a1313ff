"""WordNet hard negatives: related synsets' glosses, from the same side of the split."""

from __future__ import annotations

import pytest

from contrastkit.data import load_wordnet


def test_related_glosses_same_split_and_reproducible() -> None:
    train = load_wordnet("lemma_gloss", "train", pos="n", hard_negatives=3)
    test = load_wordnet("lemma_gloss", "test", pos="n", hard_negatives=3)
    assert all(len(negs) == 3 for negs in train.negatives)
    own = {sid: gloss for sid, gloss in zip(train.ids, train.positive)}
    train_glosses = set(train.positive)
    # every negative is the gloss of some synset of the same split, never the row's own
    assert all(n in train_glosses for negs in train.negatives for n in negs)
    assert all(own[sid] not in negs for sid, negs in zip(train.ids, train.negatives))
    test_glosses = set(test.positive)
    assert all(n in test_glosses for negs in test.negatives for n in negs)
    dog = train.query.index("dog")  # n:02084071: co-hyponyms under canine / domestic animal
    assert any("genus Felis" in n or "dog family" in n for n in train.negatives[dog])
    again = load_wordnet("lemma_gloss", "train", pos="n", hard_negatives=3)
    assert again.negatives[:100] == train.negatives[:100]


def test_hard_negatives_errors() -> None:
    with pytest.raises(ValueError, match="kind must be 'lemma_gloss' or 'example_gloss'"):
        load_wordnet("synonyms", pos="r", hard_negatives=1)
    with pytest.raises(ValueError, match="hard_negatives must be an int >= 0"):
        load_wordnet("lemma_gloss", pos="r", hard_negatives=-1)
    assert load_wordnet("lemma_gloss", "all", pos="r").negatives is None
