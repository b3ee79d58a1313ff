"""The loss negatives options of the trainer: queue (MoCo), momentum keys, hard-negative mining,
threshold false-negative masking. Each one trains a tiny run on digits and rejects bad values
with an error that names the key, the value and the fix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contrastkit.functional import KeyRoles, info_nce
from contrastkit.losses import create_loss
from contrastkit.negatives import ExtraNegatives, mask_from_threshold
from contrastkit.train import ConfigError, load_config_dict, train
from contrastkit.train.checkpoint import latest_checkpoint, load_state

from .conftest import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

INFO_NCE = {"name": "info_nce", "params": {"temperature": 0.2}}


def moco_config(tmp_path: Path, key_momentum: float | None = None, **negatives: object):
    cfg = tiny_config(tmp_path, loss=dict(INFO_NCE), negatives=negatives)
    if key_momentum is not None:
        cfg["model"]["key_encoder"] = {"momentum": key_momentum}
    cfg["eval"].update({"probe": False, "raw_baseline": False})
    return load_config_dict(cfg)


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def saved_state(run: Path) -> dict:
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    return load_state(ckpt)


# -- the wrapper against the plain loss -------------------------------------------------------


def test_queue_negatives_and_masks_equal_the_plain_info_nce_call() -> None:
    """Step 2 of the wrapper is info_nce with the step-1 keys as (M, D) negatives, queue entries
    of the same id ignored, and the threshold mask: the same value and gradient."""
    g = torch.Generator().manual_seed(0)
    base = create_loss("info_nce", temperature=0.1)
    wrapped = ExtraNegatives(base, queue_size=8, false_negative_threshold=0.5)
    k1 = torch.randn(4, 6, generator=g)
    wrapped(torch.randn(4, 6, generator=g), k1, ids=torch.tensor([0, 1, 2, 3]))
    q = torch.randn(4, 6, generator=g, requires_grad=True)
    k2 = torch.randn(4, 6, generator=g)
    value = wrapped(q, k2, ids=torch.tensor([2, 7, 8, 9]))  # item 2 again: its key is ignored
    (grad,) = torch.autograd.grad(value, q)

    ignore = torch.zeros(4, 8, dtype=torch.bool)
    ignore[0, 4 + 2] = True  # query 0 (id 2) vs the queued key of id 2
    ignore |= mask_from_threshold(q.detach(), k2, k1, threshold=0.5)
    expected = info_nce(q, k2, k1, temperature=0.1, roles=KeyRoles(ignore_mask=ignore))
    (expected_grad,) = torch.autograd.grad(expected, q)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert len(wrapped.queue) == 8
    assert wrapped.queue.ids_in_order().tolist() == [0, 1, 2, 3, 2, 7, 8, 9]


def test_hard_negative_mining_keeps_the_k_most_similar_candidates() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    wrapped = ExtraNegatives(create_loss("info_nce", temperature=0.1), hard_negatives=2)
    sims = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(k, dim=1).T
    sims.fill_diagonal_(-math.inf)
    keep = torch.zeros(6, 6, dtype=torch.bool)
    keep.scatter_(1, sims.topk(2, dim=1).indices, True)
    keep.fill_diagonal_(True)
    expected = info_nce(q, k, temperature=0.1, roles=KeyRoles(ignore_mask=~keep))
    torch.testing.assert_close(wrapped(q, k), expected)


# -- each option trains a tiny run -----------------------------------------------------------

OPTIONS = {
    "queue": {"queue": 96},
    "key_momentum": {"queue": 96, "key_momentum": 0.9},
    "mining": {"mining": 8},
    "false_negatives": {"false_negatives": {"threshold": 0.95}},
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_option_trains_on_digits(tmp_path: Path, option: str) -> None:
    run = train(moco_config(tmp_path, **OPTIONS[option]), tmp_path / option)
    logged = [r for r in records(run) if "loss" in r]
    assert len(logged) == 6 and all(math.isfinite(r["loss"]) for r in logged)
    assert (run / "eval.json").exists()
    if "queue" in OPTIONS[option]:  # 32 keys per step: 64 after step 2, full from step 3
        assert [r["queue"] for r in logged] == [64, 96, 96, 96, 96, 96]
        queue = saved_state(run)["queue"]
        assert int(queue["filled"]) == 96 and queue["embeddings"].shape == (96, 8)
        assert bool((queue["ids"] >= 0).all())  # every key came with its train-set row
    if option == "key_momentum":  # an EMA copy of the encoder, saved with the weights
        weights = load_file(str(latest_checkpoint(run) / "model.safetensors"))
        online = "model.encoder.head.net.6.weight"
        ema = "model.key_encoder.module.head.net.6.weight"
        assert ema in weights and not torch.equal(weights[online], weights[ema])


def test_queue_and_momentum_resume_exactly(tmp_path: Path) -> None:
    """The queue is checkpointed with the training state: interrupted + resumed == straight."""
    cfg = moco_config(tmp_path, queue=80, key_momentum=0.9, mining=40)
    full = train(cfg, tmp_path / "full")
    part = train(cfg, tmp_path / "part", stop_after=5)
    train(cfg, part, resume=True)
    a = load_file(str(latest_checkpoint(full) / "model.safetensors"))
    b = load_file(str(latest_checkpoint(part) / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    qa, qb = saved_state(full)["queue"], saved_state(part)["queue"]
    assert all(torch.equal(qa[k], qb[k]) for k in qa)


def test_pairs_task_queue_with_in_batch_false_negative_mask(tmp_path: Path) -> None:
    """Text pairs: the queue keeps keys with their synset ids next to the task's (B, B) mask."""
    raw = {
        "name": "pairs",
        "task": "pairs",
        "data": {
            "dataset": "wordnet",
            "subset": 64,
            "test_subset": 32,
            "options": {"kind": "lemma_gloss", "pos": "r"},
        },
        "model": {
            "name": "tiny_text",
            "options": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_length": 16},
        },
        "loss": INFO_NCE,
        "negatives": {"queue": 24, "false_negatives": {"ids": True}},
        "optim": {"lr": 0.001, "batch_size": 16, "warmup_steps": 1},
        "train": {
            "max_steps": 3,
            "log_every": 1,
            "monitor_every": 0,
            "checkpoint_every": 3,
            "progress": False,
            "threads": 1,
            "output_dir": str(tmp_path),
        },
        "eval": {"corpus_size": 16, "raw_baseline": False},
    }
    run = train(load_config_dict(raw), tmp_path / "pairs")
    logged = [r for r in records(run) if "loss" in r]
    assert [r["queue"] for r in logged] == [16, 24, 24]
    assert all(math.isfinite(r["loss"]) for r in logged)


# -- bad values: the key, the value and the fix ------------------------------------------------


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"negatives": {"queue": -1}}, ["negatives.queue: got -1", "must be >= 0"]),
        (
            {"negatives": {"queue": 64}, "loss": {"name": "nt_xent"}},
            ["negatives.queue: got 64", "'nt_xent'", "info_nce"],
        ),
        ({"model": {"key_encoder": {"momentum": 1.0}}}, ["momentum: got 1.0", "[0, 1)", "0.99"]),
        ({"negatives": {"mining": 0}}, ["negatives.mining: got 0", "must be >= 1"]),
        (
            {"negatives": {"mining": 200}},
            ["negatives.mining: got 200", "optim.batch_size - 1 + negatives.queue = 31"],
        ),
        (
            {"negatives": {"false_negatives": {"threshold": 1.5}}},
            ["threshold: got 1.5", "cosine similarity in (-1, 1]", "0.9"],
        ),
        ({"loss": {"queue_size": 8}}, ["loss.queue_size: got 8; moved to negatives.queue"]),
        (
            {"loss": {"key_momentum": 0.9}},
            ["loss.key_momentum: got 0.9; moved to model.key_encoder.momentum"],
        ),
    ],
)
def test_bad_value_names_key_value_and_fix(
    tmp_path: Path, section: dict, expected: list[str]
) -> None:
    raw = tiny_config(tmp_path, loss=dict(INFO_NCE))
    for key, value in section.items():
        raw.setdefault(key, {}).update(value)
    with pytest.raises(ConfigError) as info:
        load_config_dict(raw)
    for text in expected:
        assert text in str(info.value), (text, str(info.value))


def test_momentum_keys_need_an_image_model(tmp_path: Path) -> None:
    raw = tiny_config(tmp_path, task="pairs", loss=dict(INFO_NCE))
    raw["data"] = {"dataset": "wordnet"}
    raw["model"] = {"name": "tiny_text", "key_encoder": {"momentum": 0.99}}
    with pytest.raises(ConfigError, match=r"model.key_encoder: got .*unknown key"):
        load_config_dict(raw)
