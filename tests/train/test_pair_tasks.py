"""Text pair task: the evaluation protocol, false-negative masks, held-out keys kept out of
training and hard negatives from the loader (WordNet adverbs, a tiny from-scratch BERT)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from contrastkit.eval.pairs import heldout_rows as _eval_rows
from contrastkit.negatives.false_negatives import duplicate_mask, stable_text_ids
from contrastkit.train import train
from contrastkit.train.config import load_config_dict
from contrastkit.train.tasks.text_pairs import TextPairsTask

from .conftest import tiny_pairs_config as pairs_config


def test_eval_rows_one_query_per_id_from_a_seeded_random_corpus() -> None:
    ids = [f"s{i // 3}" for i in range(300)]  # 100 ids, 3 rows each
    q, c, rel = _eval_rows(ids, 10, "first")
    assert q == c and len(c) == 10 and rel.tolist() == list(range(10))
    assert all(ids[r] != ids[r - 1] for r in c if r > 0)  # first row of its id
    assert c != [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]  # drawn, not the first ten ids
    assert _eval_rows(ids, 10, "first")[1] == c  # the same corpus in every run
    qa, ca, rela = _eval_rows(ids, 10, "all")
    assert ca == c and len(qa) == 30 and sorted(set(rela.tolist())) == list(range(10))
    assert all(ids[r] == ids[c[p]] for r, p in zip(qa, rela.tolist()))
    with pytest.raises(ValueError, match="'first' or 'all'"):
        _eval_rows(ids, 10, "head")


def test_false_negatives_mask_ids_and_repeated_texts() -> None:
    ids = torch.tensor([0, 0, 1, 2, 3])
    columns = [ids, stable_text_ids(["a", "b", "c", "c", "d"]), stable_text_ids(list("xxyzy"))]
    mask = duplicate_mask(columns, columns)
    expected = {(0, 1), (1, 0), (2, 3), (3, 2), (2, 4), (4, 2)}
    assert {tuple(ij) for ij in mask.nonzero().tolist()} == expected


def test_held_out_keys_never_train_and_hard_negatives_stay_on_their_side(tmp_path: Path) -> None:
    raw = pairs_config(tmp_path, data={"options": {"kind": "lemma_gloss", "pos": "n"}})
    raw["data"].update(subset=None, test_subset=None)
    raw["data"]["options"]["hard_negatives"] = 2
    task = TextPairsTask(load_config_dict(raw))
    held_out = set(task.test_pairs.positive)
    assert not held_out & set(task.train_pairs.positive)
    assert not held_out & {n for negs in task.train_pairs.negatives for n in negs}
    assert not set(task.train_pairs.ids) & set(task.test_pairs.ids)
    g = torch.Generator().manual_seed(0)
    batch = task.batch(torch.arange(8), g)
    assert len(batch["negatives"]) == 8
    assert all(n in task.train_pairs.negatives[i] for i, n in enumerate(batch["negatives"]))


def test_pairs_run_with_hard_negatives_and_first_query_protocol(tmp_path: Path) -> None:
    raw = pairs_config(tmp_path)
    raw["data"]["options"]["hard_negatives"] = 2
    run = train(load_config_dict(raw), tmp_path / "hard")
    ev = json.loads((run / "eval.json").read_text())
    assert ev["counts"]["corpus_size"] == 32 and ev["baseline_name"] == "before training"
    assert "corpus_size" not in ev["metrics"]  # a count, not a quality figure
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logged if "loss" in r)
    # gradient caching gives the same weights with the hard negatives as a third input
    cached = train(load_config_dict(raw, ["train.grad_cache_chunk=4"]), tmp_path / "cached")
    from safetensors.torch import load_file

    from contrastkit.train.checkpoint import latest_checkpoint

    a = load_file(str(latest_checkpoint(run) / "model.safetensors"))
    b = load_file(str(latest_checkpoint(cached) / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_hard_negatives_need_a_loss_that_takes_them(tmp_path: Path) -> None:
    raw = pairs_config(tmp_path, loss={"name": "sigmoid_contrastive", "params": {}})
    raw["negatives"] = {}
    raw["data"]["options"]["hard_negatives"] = 1
    with pytest.raises(ValueError, match=r"data\.options\.hard_negatives: loss .sigmoid"):
        TextPairsTask(load_config_dict(raw))
    raw = pairs_config(tmp_path, negatives={"queue": 8})
    raw["data"]["options"]["hard_negatives"] = 1
    with pytest.raises(ValueError, match=r"cannot be combined with negatives\.queue"):
        TextPairsTask(load_config_dict(raw))


def test_gathered_duplicate_mask_equals_the_global_mask_rows() -> None:
    """Each process's (B, W*B) mask from gathered ids is its rows of the single-process
    (W*B, W*B) mask: the distributed path masks the same false negatives as one process."""
    world, b = 3, 4
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5, (world * b,), generator=g)
    texts = stable_text_ids([f"t{int(i)}" for i in torch.randint(0, 4, (world * b,), generator=g)])
    full = duplicate_mask([ids, texts], [ids, texts])
    for r in range(world):
        rows = slice(r * b, (r + 1) * b)
        local = duplicate_mask([ids[rows], texts[rows]], [ids, texts], positive_offset=r * b)
        assert torch.equal(local, full[rows])


def test_pairs_task_trains_on_a_beir_folder(tmp_path: Path) -> None:
    """data.dataset: beir reads qrels/train.tsv for training and qrels/test.tsv for the in-run
    evaluation; judged-0 documents become hard negatives, query ids the false-negative ids."""
    from contrastkit.data.beir import export_beir

    export_beir("wordnet", tmp_path / "beir", test_queries=64, train_queries=128)
    raw = pairs_config(tmp_path)
    raw["data"] = {"dataset": "beir", "root": str(tmp_path / "beir"), "subset": 64}
    task = TextPairsTask(load_config_dict(raw))
    assert len(task.train_pairs) == 64 and not set(task.train_pairs.query) & set(
        task.test_pairs.query
    )
    run = train(load_config_dict(raw), tmp_path / "beir-run")
    assert json.loads((run / "eval.json").read_text())["metrics"]["R@1"] >= 0
    # negatives mined offline (a `contrastkit mine` pairs file) join the BEIR rows
    mined = tmp_path / "mined.jsonl"
    rows = [
        {"query": q, "positive": p, "negatives": [f"mined for row {i}"], "id": i}
        for i, (q, p) in enumerate(zip(task.train_pairs.query[:5], task.train_pairs.positive[:5]))
    ]
    mined.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw["data"]["options"] = {"mined": str(mined)}
    with_mined = TextPairsTask(load_config_dict(raw))
    assert with_mined.hard_negatives
    assert with_mined.train_pairs.negatives[0][-1] == "mined for row 0"
    raw["data"]["root"] = None
    with pytest.raises(ValueError, match=r"data\.dataset='beir' needs data\.root"):
        TextPairsTask(load_config_dict(raw))


def test_pairs_task_on_a_saved_hugging_face_dataset_with_a_column_mapping(
    tmp_path: Path,
) -> None:
    """data.dataset: hf reads a datasets.save_to_disk folder; data.columns names its columns."""
    import datasets

    from contrastkit.data.wordnet import load_wordnet

    source = load_wordnet(split="all", kind="lemma_gloss", pos="r")
    rows = {
        "question": source.query[:300],
        "answer": source.positive[:300],
        "group": source.ids[:300],
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "hf"))
    raw = pairs_config(tmp_path)
    raw["data"] = {
        "dataset": "hf",
        "root": str(tmp_path / "hf"),
        "columns": {"query": "question", "positive": "answer", "id": "group"},
        "subset": 64,
        "test_subset": 32,
    }
    run = train(load_config_dict(raw), tmp_path / "hf-run")
    ev = json.loads((run / "eval.json").read_text())
    assert ev["counts"]["corpus_size"] > 1 and 0 <= ev["metrics"]["R@1"] <= 1
    raw["data"]["columns"] = {"query": "prompt", "positive": "answer"}
    with pytest.raises(ValueError, match="prompt"):
        TextPairsTask(load_config_dict(raw))


def test_matryoshka_pairs_report_recall_at_each_width(tmp_path: Path) -> None:
    raw = pairs_config(tmp_path, loss={"matryoshka_dims": [4, 8]})
    run = train(load_config_dict(raw), tmp_path / "mrl")
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert {"R@1", "R@1 @4d", "R@1 @8d", "MRR @4d"} <= set(metrics)


def test_preference_task_reads_your_column_names(tmp_path: Path) -> None:
    """data.columns maps a preference file's renamed columns (prompt, chosen, rejected) onto
    (query, positive, negatives), as for the pairs task; a name that is not a column is an
    error naming it."""
    from contrastkit.data.wordnet import load_wordnet
    from contrastkit.train.tasks.preference import PreferenceTask

    source = load_wordnet(split="all", kind="lemma_gloss", pos="r")
    path = tmp_path / "prefs.jsonl"
    first = list({q: r for r, q in reversed(list(enumerate(source.query)))}.values())[:120]
    rows = [  # one row per prompt; the rejected answer is another row's gloss
        {"prompt": source.query[r], "chosen": source.positive[r], "worse": source.positive[o]}
        for r, o in zip(first, first[7:] + first[:7])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = pairs_config(tmp_path, task="preference", negatives={})
    raw["loss"] = {"name": "preference", "params": {"kind": "logistic"}}
    raw["data"] = {
        "dataset": "pairs_file",
        "root": str(path),
        "columns": {"query": "prompt", "positive": "chosen", "negatives": ["worse"]},
    }
    task = PreferenceTask(load_config_dict(raw))
    by_prompt = {r["prompt"]: r for r in rows}
    assert len(task.train_pairs) + len(task.test_pairs) == 120
    for pairs, rejected in ((task.train_pairs, task.train_rejected),
                            (task.test_pairs, task.test_rejected)):  # fmt: skip
        for prompt, chosen, worse in zip(pairs.query, pairs.positive, rejected):
            assert (chosen, worse) == (by_prompt[prompt]["chosen"], by_prompt[prompt]["worse"])
    run = train(load_config_dict(raw), tmp_path / "pref-run")
    ev = json.loads((run / "eval.json").read_text())
    assert 0 <= ev["metrics"]["pairwise_accuracy"] <= 1
    raw["data"]["columns"] = {"query": "question", "positive": "chosen"}
    with pytest.raises(ValueError, match="question"):
        PreferenceTask(load_config_dict(raw))
