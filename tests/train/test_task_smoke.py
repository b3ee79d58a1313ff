"""Every registered task, generated from :data:`contrastkit.train.tasks.TASKS`: its packaged
recipe trains two steps at tiny size, evaluates, writes its report, and the run answers the
task protocol's serving and export members (what serve, export and the report call).

A new task is tested by registering it and shipping a recipe; a recipe with a model this file
has no tiny sizes for fails with the model's name (add its overrides to ``TINY_MODEL``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from contrastkit.report import write_report
from contrastkit.serve.embedder import Embedder
from contrastkit.train import load_config, train
from contrastkit.train.config import list_recipes
from contrastkit.train.run import load_run
from contrastkit.train.tasks import TASKS, Task

TINY = [  # two steps on a few dozen items, one thread, no time budget
    "train.max_steps=2",
    "train.time_budget_s=null",
    "train.fit_schedule_to_budget=false",
    "train.log_every=1",
    "train.monitor_every=1",
    "train.eval_every=0",
    "train.checkpoint_every=2",
    "train.progress=false",
    "train.threads=1",
    "train.precision=fp32",
    "optim.batch_size=16",
    "optim.warmup_steps=1",
    "data.subset=64",
    "data.test_subset=32",
    "eval.knn_k=5",
    "eval.corpus_size=32",
]
TINY_TEXT = "{hidden_size: 16, num_layers: 1, num_heads: 2, max_length: 16}"
TINY_MODEL = {  # model.name of a recipe -> the overrides that shrink it
    "tiny_text": [f"model.options={TINY_TEXT}"],
    "small_cnn": ["model.width=4", "model.out_dim=16", "model.projection_dim=8"],
    "emoji_towers": [
        "model.width=4",
        "model.out_dim=8",
        "model.options.text=tiny_text",
        "model.options.freeze_text=false",
        f"model.options.text_options={TINY_TEXT}",
        "data.options.size=16",
    ],
}

TINY_AUDIO = [  # the speech corpus at 40 phrases x 2 voices (espeak-ng, cached), a small CNN
    "data.options={phrases: 40, voices_per_text: 2}",
    "model.width=4",
    "model.out_dim=8",
    "model.options={n_mels: 16, stages: 2}",
]
TINY_TASK = {  # task -> the overrides that shrink its recipe (its model is no encoder name)
    "audio": TINY_AUDIO,
    "audio_text": [*TINY_AUDIO, f"model.text={{name: tiny_text, options: {TINY_TEXT}}}"],
    "rerank": [
        "model.name=tiny",
        "model.max_length=16",
        "model.negatives=2",
        "model.eval_candidates=4",
    ],
}


def recipes_by_task() -> dict[str, list[str]]:
    """Task name -> the packaged recipes that train it."""
    out: dict[str, list[str]] = {}
    for name in list_recipes():
        out.setdefault(load_config(name).task, []).append(name)
    return out


RECIPES = recipes_by_task()


def test_every_recipe_trains_a_registered_task_and_every_task_has_a_recipe() -> None:
    assert set(RECIPES) == set(TASKS), f"recipes by task: {RECIPES}; tasks: {sorted(TASKS)}"


def recipe_of(task: str) -> str:
    """The task's recipe this test shrinks: its first one (by name) with a tiny-size entry."""
    for name in RECIPES.get(task, []):
        cfg = load_config(name)
        if cfg.model.name in TINY_MODEL or (task in TINY_TASK and cfg.data.root is None):
            return name
    models = {n: load_config(n).model.name for n in RECIPES.get(task, [])}
    raise AssertionError(f"task {task!r}: no recipe with tiny sizes in TINY_MODEL ({models})")


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_task_trains_evaluates_reports_and_serves_its_recipe(
    task_name: str, tmp_path: Path
) -> None:
    recipe = recipe_of(task_name)
    base = load_config(recipe)
    shrink = TINY_TASK[task_name] if task_name in TINY_TASK else TINY_MODEL[base.model.name]
    overrides = [*TINY, *shrink, f"train.output_dir={tmp_path}"]
    run = Path(train(load_config(recipe, overrides), tmp_path / "run"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    ev = json.loads((run / "eval.json").read_text())
    assert ev["step"] == 2 and ev["metrics"]
    assert all(isinstance(v, float) for v in ev["metrics"].values()), ev["metrics"]
    assert (write_report(run)).read_text().count("<td>") > 0

    _, task, _ = load_run(run)
    assert isinstance(task, Task) and task.name == task_name
    embedder = Embedder.from_run(run)  # serve: protocol members only
    towers = task.export_towers()  # export: each tower embeds as the task does
    texts = ["a small example", "another one"]
    if "text" in task.query_kinds:
        want = task.embed_texts(texts)  # (2, D)
        torch.testing.assert_close(embedder.embed("text", texts), want)
        assert towers.text
    else:
        with pytest.raises(ValueError, match="texts"):
            task.embed_texts(texts)
    if "image" in task.query_kinds:
        images = torch.rand(3, *task.image_shape, generator=torch.Generator().manual_seed(0))
        want = task.embed_images(images)  # (3, D)
        torch.testing.assert_close(embedder.embed("image", images), want)
        assert towers.image is not None
        with torch.no_grad():
            torch.testing.assert_close(towers.image.eval()(images).float(), want)
        assert len(task.corpus_items()) == task.corpus_size()
    else:
        assert task.image_shape is None and task.corpus_items() is None
        with pytest.raises(ValueError, match="images"):
            task.embed_images(torch.zeros(1, 1, 8, 8))
    assert (towers.encoder is None) == (task.encoder_spec is None)
