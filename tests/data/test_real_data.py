"""Loaders against the installed real data: counts, shapes, label sets, group-disjoint splits."""

from __future__ import annotations

import json

import pytest
import torch

from contrastkit.data import (
    LEXNAMES,
    DataNotFoundError,
    cache_dir,
    load_bible_pairs,
    load_digits,
    load_emoji,
    load_fashion_mnist,
    load_wordnet,
)
from contrastkit.data import bible as bible_module
from contrastkit.data.emoji import DEFAULT_FONT
from contrastkit.data.fashion_mnist import DEFAULT_ROOT as FMNIST_ROOT
from contrastkit.data.foldoc import load_foldoc
from contrastkit.data.wordnet import count_synsets


def assert_disjoint(train_ids, test_ids):
    assert set(train_ids).isdisjoint(test_ids)


# ---------------------------------------------------------------- Fashion-MNIST, digits
def test_fashion_mnist_counts_shapes_labels():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    assert train.classes[0] == "T-shirt/top" and len(train.classes) == 10
    # real images, not zeros: the mean pixel of Fashion-MNIST train is about 72.9 / 255
    assert 70 < float(train.images.float().mean()) < 76
    as_float = test.float()  # the same dataset with float images
    x = as_float.images
    assert as_float.float() is as_float and torch.equal(as_float.labels, test.labels)
    assert torch.equal(as_float.subset(torch.arange(3)).images, x[:3])
    assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_fashion_mnist_from_raw_root_and_missing(tmp_path):
    import gzip
    import shutil

    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(FMNIST_ROOT / f"{stem}.gz") as src, open(tmp_path / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)  # uncompressed copies are accepted too
    test = load_fashion_mnist("test", root=tmp_path)
    assert torch.equal(test.labels, load_fashion_mnist("test").labels)
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(DataNotFoundError, match="root="):
        load_fashion_mnist("test", root=tmp_path / "nope")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x27\x10abc")
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val")


def test_digits_split_disjoint_and_deterministic():
    train, test = load_digits("train"), load_digits("test")
    assert len(train) + len(test) == 1797
    assert_disjoint(train.groups.tolist(), test.groups.tolist())
    assert torch.equal(load_digits("test").groups, test.groups)
    assert not torch.equal(load_digits("test", seed=1).groups, test.groups)
    assert train.images.shape[1:] == (1, 8, 8) and set(train.labels.tolist()) == set(range(10))


# ---------------------------------------------------------------- WordNet
@pytest.fixture(scope="module")
def wordnet_all():
    return {
        kind: load_wordnet(kind, "all") for kind in ("lemma_gloss", "example_gloss", "synonyms")
    }


def test_wordnet_counts_and_labels(wordnet_all):
    assert count_synsets() == 117659
    assert count_synsets("n") == 82115
    lemma = wordnet_all["lemma_gloss"]
    assert len(set(lemma.ids)) == 117659  # every synset has at least one lemma and a gloss
    assert len(wordnet_all["example_gloss"]) == 48339
    assert len(lemma.classes) == 45 and lemma.classes == LEXNAMES
    assert set(lemma.labels.tolist()) == set(range(45))
    # groups are the synset: rows with one id share one group and vice versa
    pairs = set(zip(lemma.ids, lemma.groups.tolist()))
    assert len(pairs) == len(set(lemma.ids)) == len(set(lemma.groups.tolist()))
    # several lemmas share a synset, so in-batch duplicates really occur
    assert lemma.groups.bincount().max() > 1
    i = lemma.query.index("dog")
    assert lemma.positive[i].startswith("a member of the genus Canis")
    assert lemma.classes[lemma.labels[i]] == "noun.animal" and lemma.ids[i] == "n:02084071"
    syn = wordnet_all["synonyms"]
    j = syn.query.index("domestic dog")
    assert syn.ids[j] == "n:02084071"
    for p in wordnet_all.values():  # no markup leaks into the text
        assert not any('"' in t or "_" in t for t in p.query[:5000] + p.positive[:5000])


def test_wordnet_split_by_synset():
    train, test = load_wordnet("example_gloss", "train"), load_wordnet("example_gloss", "test")
    assert len(train) + len(test) == 48339
    assert 0.05 < len(test) / 48339 < 0.15
    assert_disjoint(train.ids, test.ids)
    # deterministic and seed-dependent
    assert load_wordnet("example_gloss", "test").ids == test.ids
    assert load_wordnet("example_gloss", "test", seed=3).ids != test.ids
    # the same synsets are held out whatever the kind, so kinds can be mixed without leakage
    lemma_test = load_wordnet("lemma_gloss", "test", pos="n")
    assert set(lemma_test.ids) <= set(load_wordnet("synonyms", "test", pos="n").ids) | set(
        lemma_test.ids
    )
    assert_disjoint(lemma_test.ids, load_wordnet("synonyms", "train", pos="n").ids)


def test_wordnet_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="wordnet-base"):
        load_wordnet(root=tmp_path / "missing")
    with pytest.raises(ValueError, match="kind"):
        load_wordnet("gloss_gloss")
    with pytest.raises(ValueError, match="pos"):
        load_wordnet(pos="x")


# ---------------------------------------------------------------- Bible
def test_bible_pairs_aligned_and_clean():
    pairs = load_bible_pairs("all")
    assert len(pairs) == 31095
    assert len(pairs.classes) == 66 and pairs.classes[0] == "Genesis"
    assert pairs.ids[0] == "Genesis 1:1"
    assert pairs.query[0] == "In the beginning God created the heaven and the earth."
    assert pairs.positive[0] == "In the beginning, God created the heavens and the earth."
    i = pairs.ids.index("Matthew 1:1")  # the WEB footnote on this verse is dropped
    assert "Anointed" not in pairs.positive[i] and "Christ, the son of David" in pairs.positive[i]
    assert not any("<" in t or ">" in t for t in pairs.query + pairs.positive)
    assert len(set(pairs.ids)) == len(pairs)


@pytest.mark.parametrize("group_by", ["chapter", "book"])
def test_bible_split_by_group(group_by):
    train = load_bible_pairs("train", group_by=group_by)
    test = load_bible_pairs("test", group_by=group_by)
    assert len(train) + len(test) == 31095 and len(test) > 0
    unit = (
        (lambda r: r.rsplit(":", 1)[0])
        if group_by == "chapter"
        else (lambda r: r.rsplit(" ", 1)[0])
    )
    assert_disjoint({unit(r) for r in train.ids}, {unit(r) for r in test.ids})


def test_bible_cache_is_written_atomically_and_reused(monkeypatch):
    verses = bible_module.export_module(bible_module.KJV_MODULE)  # writes the cache if absent
    cache = bible_module.cache_file(bible_module.KJV_MODULE)
    assert cache.parent == cache_dir() / "bible" and "-vunknown-" not in cache.name
    assert cache.is_file() and not list(cache.parent.glob(f"{cache.name}.*.tmp"))
    assert json.loads(cache.read_text(encoding="utf-8")) == verses
    monkeypatch.setenv("PATH", "/nonexistent")  # mod2imp is unreachable now: the cache serves
    assert bible_module.export_module(bible_module.KJV_MODULE) == verses
    with pytest.raises(DataNotFoundError, match="libsword-utils"):
        bible_module.export_module(bible_module.KJV_MODULE, cache=False)


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path / "ck"))
    assert cache_dir() == tmp_path / "ck"
    monkeypatch.delenv("CONTRASTKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "contrastkit"


def test_bible_missing_module(tmp_path, monkeypatch):
    monkeypatch.setitem(bible_module._DEBIAN, "engNoSuchModule", "sword-text-kjv")
    with pytest.raises(DataNotFoundError, match=r"engNoSuchModule.*sword-text-kjv.*sword_path="):
        bible_module.export_module("engNoSuchModule", sword_path=tmp_path)


# ---------------------------------------------------------------- Emoji
@pytest.fixture(scope="module")
def emoji():
    return load_emoji(size=32)  # rendered once per machine, then read from the cache


def test_emoji_images_and_captions(emoji):
    n = len(emoji)
    assert 1100 <= n <= 1500
    assert emoji.images.shape == (n, 3, 32, 32) and emoji.images.dtype == torch.uint8
    assert len(emoji.texts) == n and len(set(emoji.texts)) == n
    i = emoji.groups.tolist().index(0x1F600)
    assert emoji.texts[i] == "grinning face"
    assert emoji.classes[emoji.labels[i]] == "Emoticons"
    assert len(emoji.classes) >= 8 and set(emoji.labels.tolist()) == set(range(len(emoji.classes)))
    # colour glyphs on white: every image has non-white pixels and real colour
    flat = emoji.images.float().flatten(2)  # (N, 3, S*S)
    assert bool(((flat < 250).any(dim=1)).any(dim=1).all())
    assert float((flat.max(dim=1).values - flat.min(dim=1).values).mean()) > 10


def test_emoji_cache_and_split(emoji):
    cached = load_emoji(size=32)  # same CONTRASTKIT_CACHE as the fixture: read from disk
    assert torch.equal(cached.images, emoji.images) and cached.texts == emoji.texts
    train, test = load_emoji("train", size=32), load_emoji("test", size=32)
    assert len(train) + len(test) == len(emoji)
    assert_disjoint(train.groups.tolist(), test.groups.tolist())


def test_emoji_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="fonts-noto-color-emoji"):
        load_emoji(font_path=tmp_path / "NotoColorEmoji.ttf")
    with pytest.raises(ValueError, match="size"):
        load_emoji(size=0)


def test_unwritable_cache_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CONTRASTKIT_CACHE", str(blocker / "cache"))  # cannot be created
    with pytest.warns(UserWarning, match="CONTRASTKIT_CACHE"):
        data = load_emoji("test", size=8)
    assert data.images.shape[1:] == (3, 8, 8)


def test_emoji_without_fonttools_finds_the_same_glyphs(emoji, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_fonttools(name, *args, **kwargs):
        if name.startswith("fontTools"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fonttools)
    from contrastkit.data.emoji import _render, emoji_codepoints

    codepoints = emoji_codepoints()
    assert len(codepoints) > len(emoji)  # candidates; the missing ones render blank
    _, kept = _render(codepoints[:300], DEFAULT_FONT, 8)
    assert kept == [c for c in emoji.groups.tolist() if c in set(codepoints[:300])]


# ---------------------------------------------------------------- FOLDOC
def test_foldoc_pairs_labels_and_split(tmp_path):
    pairs = load_foldoc("all")
    assert 14000 <= len(pairs) <= 15500
    assert 100 <= len(pairs.classes) <= 140 and "programming" in pairs.classes
    i = pairs.ids.index("16550A")  # the entry's own case, not the index's lower case
    assert pairs.positive[i] == "A version of the 16550 UART. Superseded by the 16650."
    assert pairs.classes[pairs.labels[i]] == "hardware"
    j, k = pairs.ids.index("16750C"), pairs.ids.index("16C750")  # synonyms share an entry
    assert pairs.groups[j] == pairs.groups[k] and pairs.positive[j] == pairs.positive[k]
    train, test = load_foldoc("train"), load_foldoc("test")
    assert len(train) + len(test) == len(pairs)
    assert_disjoint(train.groups.tolist(), test.groups.tolist())
    with pytest.raises(DataNotFoundError, match="dict-foldoc"):
        load_foldoc(root=tmp_path)
