"""Hugging Face datasets input: save_to_disk folders and local data files of real WordNet pairs,
with a column mapping shared with the pair files, any number of hard-negative columns, bad input."""

from __future__ import annotations

import pytest
import torch

from contrastkit.data import load_pairs
from contrastkit.data.hf import load_hf_pairs
from contrastkit.data.wordnet import load_wordnet

COLUMNS = {
    "query": "lemma",
    "positive": "gloss",
    "negatives": ["hard_1", "hard_2"],
    "id": "synset",
    "label": "lexname",
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """load_dataset's Arrow cache goes under contrastkit's cache dir: keep it in tmp."""
    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def wordnet():
    """Real adverb lemma -> gloss pairs with two hard negatives each (where WordNet has them)."""
    pairs = load_wordnet("lemma_gloss", split="all", pos="r", hard_negatives=2)
    keep = [i for i, negs in enumerate(pairs.negatives) if len(negs) == 2][:60]
    return pairs.subset(torch.tensor(keep))


def as_columns(pairs) -> dict[str, list]:
    return {
        "lemma": pairs.query,
        "gloss": pairs.positive,
        "hard_1": [n[0] for n in pairs.negatives],
        "hard_2": [n[1] for n in pairs.negatives],
        "synset": pairs.ids,
        "lexname": [pairs.classes[i] for i in pairs.labels.tolist()],
        "extra": ["ignored"] * len(pairs),
    }


@pytest.fixture(scope="module")
def saved(wordnet, tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("hf") / "wordnet_pairs"
    datasets.Dataset.from_dict(as_columns(wordnet)).save_to_disk(str(root))
    return root


def check_same(loaded, wordnet) -> None:
    assert loaded.query == wordnet.query and loaded.positive == wordnet.positive
    assert loaded.negatives == wordnet.negatives and loaded.ids == wordnet.ids
    assert [loaded.classes[i] for i in loaded.labels.tolist()] == [
        wordnet.classes[i] for i in wordnet.labels.tolist()
    ]


def test_save_to_disk_folder_with_a_column_mapping(saved, wordnet):
    loaded = load_hf_pairs(saved, columns=COLUMNS)
    check_same(loaded, wordnet)
    # rows sharing a synset share a group, and contrastkit's split keeps groups on one side
    train = load_hf_pairs(saved, columns=COLUMNS, split="train", test_fraction=0.3)
    test = load_hf_pairs(saved, columns=COLUMNS, split="test", test_fraction=0.3)
    assert len(train) + len(test) == len(wordnet) and len(test) > 0
    assert not set(train.ids) & set(test.ids)


def test_dataset_dict_and_parquet_files_agree_with_load_pairs(saved, wordnet, tmp_path):
    import datasets

    ds = datasets.load_from_disk(str(saved))
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(5))}).save_to_disk(
        str(tmp_path / "dict")
    )
    check_same(load_hf_pairs(tmp_path / "dict", columns=COLUMNS), wordnet)  # "train" by default
    assert len(load_hf_pairs(tmp_path / "dict", columns=COLUMNS, hf_split="validation")) == 5

    parquet = tmp_path / "pairs.parquet"
    ds.to_parquet(str(parquet))
    check_same(load_hf_pairs(parquet, columns=COLUMNS), wordnet)
    check_same(load_pairs(parquet, columns=COLUMNS), wordnet)  # the same mapping, pair files
    jsonl = tmp_path / "pairs.jsonl"
    ds.to_json(str(jsonl))
    check_same(load_pairs(jsonl, columns=COLUMNS), wordnet)
    check_same(load_hf_pairs(jsonl, columns=COLUMNS), wordnet)


def test_class_label_column_gives_names_and_standard_names_need_no_mapping(tmp_path):
    import datasets

    features = datasets.Features(
        {
            "query": datasets.Value("string"),
            "positive": datasets.Value("string"),
            "negatives": datasets.Sequence(datasets.Value("string")),
            "label": datasets.ClassLabel(names=["adverb", "noun"]),
        }
    )
    data = {
        "query": ["quickly", "dog"],
        "positive": ["with speed", "a domestic canine"],
        "negatives": [["slowly", "late"], []],
        "label": [0, 1],
    }
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(tmp_path / "d"))
    pairs = load_hf_pairs(tmp_path / "d")
    assert pairs.classes == ["adverb", "noun"] and pairs.labels.tolist() == [0, 1]
    assert pairs.negatives == [["slowly", "late"], []]


def test_bad_input_names_the_column_and_lists_the_dataset_columns(saved, tmp_path):
    with pytest.raises(
        ValueError, match=r"columns\['positive'\]='definition'.*its columns: lemma, gloss"
    ):
        load_hf_pairs(saved, columns={**COLUMNS, "positive": "definition"})
    with pytest.raises(ValueError, match=r"no 'query' column.*columns=\{'query'"):
        load_hf_pairs(saved)
    with pytest.raises(ValueError, match=r"unknown key 'anchor'"):
        load_hf_pairs(saved, columns={"anchor": "lemma"})
    with pytest.raises(FileNotFoundError, match=r"not found at .*absent"):
        load_hf_pairs(tmp_path / "absent")
    with pytest.raises(ValueError, match=r"hf_split='test' was given"):
        load_hf_pairs(saved, columns=COLUMNS, hf_split="test")
    (tmp_path / "notes.txt").write_text("not data")
    with pytest.raises(ValueError, match=r"neither a save_to_disk folder nor data files"):
        load_hf_pairs(tmp_path / "notes.txt")
