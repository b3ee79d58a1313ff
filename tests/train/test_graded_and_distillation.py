"""Graded pairs (WordNet Wu-Palmer, CoSENT, the STS evaluator) and distillation terms in the
pairs task: trained for a few steps on real data with a tiny from-scratch BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from contrastkit.data.wordnet_graded import load_wordnet_graded, wu_palmer
from contrastkit.eval.sts import sts_correlations
from contrastkit.train import train
from contrastkit.train.config import ConfigError, load_config_dict

from .conftest import tiny_pairs_config as pairs_config


def test_sts_correlations_equal_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    gold = torch.randint(0, 5, (40,), generator=g).float()  # ties, as real STS grades have
    got = sts_correlations(a, b, gold)
    cos = torch.nn.functional.cosine_similarity(a, b).double().numpy()
    assert got["spearman"] == pytest.approx(stats.spearmanr(cos, gold.numpy())[0], abs=1e-9)
    assert got["pearson"] == pytest.approx(stats.pearsonr(cos, gold.numpy())[0], abs=1e-6)


def test_wu_palmer_on_wordnet_nouns() -> None:
    from contrastkit.data.wordnet import DEFAULT_ROOT, _read_hypernyms

    h = _read_hypernyms(str(DEFAULT_ROOT), "n")
    dog, cat, car = "n:02084071", "n:02121620", "n:02958343"  # dog.n.01, cat.n.01, car.n.01
    assert wu_palmer(dog, dog, h) == 1.0
    assert wu_palmer(dog, cat, h) > wu_palmer(dog, car, h) > 0.0
    assert wu_palmer(dog, cat, h) == wu_palmer(cat, dog, h)
    pairs = load_wordnet_graded("test", max_pairs=300)
    train_ids = {x for i in load_wordnet_graded("train", max_pairs=3000).ids for x in i.split("|")}
    assert not train_ids & {x for i in pairs.ids for x in i.split("|")}  # split by synset
    grades = [s[0] for s in pairs.scores]
    assert min(grades) < 0.3 and max(grades) > 0.8  # a spread, not one level


def test_cosent_on_wordnet_graded_reports_spearman(tmp_path: Path) -> None:
    raw = pairs_config(tmp_path, data={"dataset": "wordnet_graded", "options": {"max_pairs": 600}})
    raw["data"].pop("sampler", None)
    raw["loss"] = [{"name": "cosent", "params": {"temperature": 0.05}}]
    raw["negatives"] = {}
    run = train(load_config_dict(raw), tmp_path / "graded")
    result = json.loads((run / "eval.json").read_text())
    assert set(result["metrics"]) == {"spearman", "pearson"}
    assert set(result["baseline"]) == {"spearman", "pearson"}


def _scored_file(path: Path, with_scores: bool = True) -> Path:
    rows = []
    for i in range(48):
        negs = [f"unrelated text {i} {j}" for j in range(1 + i % 3)]
        row = {"query": f"question {i}", "positive": f"answer {i}", "negatives": negs, "id": i}
        if with_scores:
            row["scores"] = [4.0] + [1.0 - j / 4 for j in range(len(negs))]
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_distillation_terms_train_and_are_logged(tmp_path: Path) -> None:
    raw = pairs_config(tmp_path, data={"dataset": "pairs_file", "options": {}})
    raw["data"].update(root=str(_scored_file(tmp_path / "s.jsonl")), subset=None, test_subset=None)
    raw["data"].pop("sampler", None)
    raw["loss"] = [
        {"name": "info_nce", "params": {"temperature": 0.05}},
        {"name": "margin_mse", "weight": 0.5},
        {"name": "listwise_kl", "params": {"temperature": 0.1, "metric": "cosine"}},
    ]
    raw["negatives"] = {}
    raw["eval"] = {"corpus_size": 4}
    run = train(load_config_dict(raw), tmp_path / "distill")
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in logged if "loss/margin_mse" in r)
    parts = step["loss/info_nce"] + step["loss/margin_mse"] + step["loss/listwise_kl"]
    assert step["loss"] == pytest.approx(parts, rel=1e-5)


def test_distillation_without_scores_is_one_line(tmp_path: Path) -> None:
    raw = pairs_config(tmp_path, data={"dataset": "pairs_file", "options": {}})
    raw["data"].update(root=str(_scored_file(tmp_path / "u.jsonl", False)), subset=None)
    raw["data"].pop("sampler", None)
    raw["loss"] = {"name": "info_nce", "terms": [{"name": "margin_mse"}]}
    raw["negatives"] = {}
    with pytest.raises(ValueError, match=r"margin_mse.*no 'scores' key") as err:
        train(load_config_dict(raw), tmp_path / "bad")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"loss\.terms\.0\.weight: got -1"):
        load_config_dict(
            {**raw, "loss": [{"name": "info_nce"}, {"name": "margin_mse", "weight": -1}]}
        )
