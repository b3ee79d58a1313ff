"""The tasks: a registry from ``task`` names to classes implementing
:class:`~contrastkit.train.tasks.base.Task`.

>>> sorted(TASKS)
['audio', 'audio_text', 'identity', 'image_text', 'pairs', 'preference', 'rerank', 'supervised', 'views']
"""

from __future__ import annotations

from typing import Any

from contrastkit.train.tasks.audio_text import AudioTextTask, AudioViewsTask
from contrastkit.train.tasks.base import Corpus, EvalResult, ExportTowers, Step, Task
from contrastkit.train.tasks.identity import IdentityTask
from contrastkit.train.tasks.image import ImageTask, SupervisedTask
from contrastkit.train.tasks.image_text import ImageTextTask
from contrastkit.train.tasks.preference import PreferenceTask
from contrastkit.train.tasks.rerank import RerankTask
from contrastkit.train.tasks.text_pairs import TextPairsTask

TASKS: dict[str, type[Any]] = {
    cls.name: cls
    for cls in (
        ImageTask,
        SupervisedTask,
        TextPairsTask,
        ImageTextTask,
        PreferenceTask,
        IdentityTask,
        RerankTask,
        AudioTextTask,
        AudioViewsTask,
    )
}


def build_task(cfg: Any) -> Task:
    """The task object for ``cfg.task``, with the model's fine-tuning keys applied
    (:func:`contrastkit.train.finetune.apply_fine_tuning`)."""
    from contrastkit.train.finetune import apply_fine_tuning

    task = TASKS[cfg.task](cfg)
    apply_fine_tuning(task.model, cfg)
    return task


__all__ = ["TASKS", "Corpus", "EvalResult", "ExportTowers", "Step", "Task", "build_task"]
