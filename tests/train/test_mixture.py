"""data.mixture: several pair sources in one run, a batch from one source at a time, a prompt
per source, per-source evaluation, exact resume; bad weights / unknown sources are one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from contrastkit.cli import main
from contrastkit.train import train
from contrastkit.train.batches import MixtureOrder
from contrastkit.train.config import ConfigError, load_config_dict, save_config

from .conftest import tiny_pairs_config as pairs_config

MIXTURE = [
    {"dataset": "wordnet", "weight": 2.0, "prompt": "word: ", "options": {"pos": "r"}},
    {"dataset": "bible", "weight": 1.0, "prompt": "verse: "},
]


def _raw(tmp_path: Path) -> dict:
    raw = pairs_config(tmp_path)
    raw["data"].update(mixture=MIXTURE, subset=120, test_subset=30)
    raw["data"].pop("sampler", None)
    raw["negatives"] = {}
    raw["train"].update(max_steps=4, checkpoint_every=2, log_every=1)
    raw["eval"] = {"corpus_size": 10}
    return raw


def test_every_batch_from_one_source_and_the_same_on_every_rank() -> None:
    sizes = [30, 50]
    ranks = [MixtureOrder(sizes, [2.0, 1.0], 4, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(40):
        a, b = (o.next() for o in ranks)
        assert {int(a.max()) < 30, int(a.min()) < 30} in ({True}, {False})  # one source
        assert (int(a.max()) < 30) == (int(b.max()) < 30)  # both ranks drew the same source
        assert not set(a.tolist()) & set(b.tolist())  # their shares of one global batch
    drawn = [MixtureOrder(sizes, [3.0, 1.0], 4, seed=0).source_of(t) for t in range(400)]
    assert 0.65 < drawn.count(0) / 400 < 0.85  # proportional to the weights
    robin = MixtureOrder(sizes, [3.0, 1.0], 4, seed=0, sampling="round_robin")
    assert [robin.source_of(t) for t in range(4)] == [0, 1, 0, 1]


def test_order_resumes_exactly() -> None:
    full = MixtureOrder([30, 50], [1.0, 1.0], 4, seed=1)
    want = [full.next().tolist() for _ in range(30)]
    first = MixtureOrder([30, 50], [1.0, 1.0], 4, seed=1)
    got = [first.next().tolist() for _ in range(11)]
    again = MixtureOrder([30, 50], [1.0, 1.0], 4, seed=1)
    again.load_state_dict(first.state_dict())
    assert got + [again.next().tolist() for _ in range(19)] == want


def test_mixture_run_evaluates_each_source_and_resumes_bitwise(tmp_path: Path) -> None:
    run = Path(train(load_config_dict(_raw(tmp_path)), tmp_path / "full"))
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert {"wordnet/R@1", "bible/R@1", "wordnet/MRR", "bible/MRR"} <= set(metrics)
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000004", ignore_errors=True)
    for ckpt in (resumed / "checkpoints").glob("step_*4"):
        shutil.rmtree(ckpt)
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir())[-1].endswith("2")
    assert main(["train", "--resume", str(resumed)]) == 0
    last = lambda r: sorted((r / "checkpoints").iterdir())[-1] / "model.safetensors"  # noqa: E731
    assert last(resumed).parent.name == last(run).parent.name  # the resumed run reached step 4
    a, b = load_file(last(run)), load_file(last(resumed))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_bad_mixtures_are_one_line(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["data"]["mixture"] = [{"dataset": "wordnet", "weight": 0}]
    with pytest.raises(ConfigError, match=r"data\.mixture\.0\.weight: got 0; needs a finite"):
        load_config_dict(raw)
    raw["data"]["mixture"] = [{"dataset": "wordnet"}, {"dataset": "wikipedia"}]
    with pytest.raises(ConfigError, match=r"data\.mixture\.1\.dataset: got 'wikipedia'"):
        load_config_dict(raw)
    save_config(load_config_dict(_raw(tmp_path)), tmp_path / "ok.yaml")  # round-trips
