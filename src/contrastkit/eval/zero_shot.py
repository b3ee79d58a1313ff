"""Zero-shot classification: class names through prompt templates -> text embeddings ->
the nearest class of each item.

CLIP's protocol (Radford et al. 2021, https://arxiv.org/abs/2103.00020, section 3.1.4): each
class name is written into every template (``"a photo of a {}."``), the text tower embeds them,
the template embeddings of a class are L2-normalised, averaged and normalised again (the class
embedding); an item's predicted class is the one of highest cosine similarity. Works for any
item a tower embeds into the text space (images, texts, audio).

Shape notation: N items, C classes, T templates, D embedding dim.

>>> classes = torch.eye(3)
>>> items = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])
>>> zero_shot_accuracy(items, classes, torch.tensor([0, 2]), ks=(1,))
{'zero-shot top-1': 1.0}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch  # noqa: F401  (used by the doctests)
import torch.nn.functional as F
from torch import Tensor

DEFAULT_TEMPLATES = ("{}.", "a picture of {}.", "an image of {}.")
"""Used when no templates are given: neutral phrasings that suit images and short texts."""


def check_templates(templates: Sequence[str]) -> list[str]:
    """Templates as a list; each must contain ``{}`` once (where the class name goes)."""
    out = list(templates)
    if not out:
        raise ValueError("templates is empty; give at least one, e.g. 'a photo of a {}.'.")
    for t in out:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(
                f"template {t!r} must contain '{{}}' exactly once (where the class name goes), "
                "e.g. 'a photo of a {}.'."
            )
    return out


def class_embeddings(
    embed_texts: Callable[[list[str]], Tensor],
    classes: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> Tensor:
    """(C, D) normalised class embeddings: the mean over templates of the normalised text
    embeddings of ``template.format(name)``.

    Args:
        embed_texts: ``list of M str -> (M, D)``, e.g. a task's ``embed_texts``.
        classes: C class names.
        templates: T templates with one ``{}``.

    >>> fake = lambda texts: torch.tensor([[float(len(t)), 1.0] for t in texts])
    >>> class_embeddings(fake, ["a", "bb"], ["{}"]).shape
    torch.Size([2, 2])
    """
    names, templates = list(classes), check_templates(templates)
    if not names:
        raise ValueError("classes is empty; give the class names (one per line in --classes).")
    prompts = [t.format(name) for name in names for t in templates]  # (C * T) texts
    emb = F.normalize(embed_texts(prompts).float(), dim=-1)  # (C * T, D)
    emb = emb.view(len(names), len(templates), -1).mean(1)  # (C, D)
    return F.normalize(emb, dim=-1)


def zero_shot_logits(items: Tensor, classes: Tensor) -> Tensor:
    """(N, C) cosine similarities of ``items: (N, D)`` to ``classes: (C, D)``."""
    if items.ndim != 2 or classes.ndim != 2 or items.shape[1] != classes.shape[1]:
        raise ValueError(
            f"items (N, D) and classes (C, D) must share D, got {tuple(items.shape)} and "
            f"{tuple(classes.shape)}."
        )
    return F.normalize(items.float(), dim=-1) @ F.normalize(classes.float(), dim=-1).T


def zero_shot_accuracy(
    items: Tensor, classes: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy (``"zero-shot top-k"``) of ``items: (N, D)`` labelled ``labels: (N,)``
    (class indices) against ``classes: (C, D)``; cut-offs above C are left out.

    >>> zero_shot_accuracy(torch.eye(2), torch.eye(2), torch.tensor([1, 1]))
    {'zero-shot top-1': 0.5}
    """
    logits = zero_shot_logits(items, classes)  # (N, C)
    if labels.shape != (items.shape[0],):
        raise ValueError(f"labels must be (N,) = ({items.shape[0]},), got {tuple(labels.shape)}.")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes.shape[0]):
        raise ValueError(f"labels must be class indices in [0, {classes.shape[0]}).")
    out = {}
    for k in sorted({k for k in ks if k <= classes.shape[0]} | {1}):
        top = logits.topk(k, dim=1).indices  # (N, k)
        hit = (top == labels.view(-1, 1).to(top.device)).any(1).float()
        out[f"zero-shot top-{k}"] = float(hit.mean()) if len(hit) else 0.0
    return out


class ZeroShotClassifier:
    """Class embeddings built once from a text tower, then :meth:`predict` / :meth:`accuracy`
    over batches of item embeddings (streaming: :meth:`update` / :meth:`compute` /
    :meth:`reset`).

    >>> clf = ZeroShotClassifier(lambda t: torch.eye(2)[[0 if "cat" in s else 1 for s in t]], ["cat", "dog"])
    >>> clf.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    >>> clf.compute()
    {'zero-shot top-1': 1.0}
    """

    def __init__(
        self,
        embed_texts: Callable[[list[str]], Tensor],
        classes: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        ks: Sequence[int] = (1, 5),
    ) -> None:
        self.classes = list(classes)
        self.embeddings = class_embeddings(embed_texts, self.classes, templates)  # (C, D)
        self.ks = tuple(ks)
        self.reset()

    def reset(self) -> None:
        self.hits: dict[str, float] = {}
        self.n = 0

    def predict(self, items: Tensor) -> Tensor:
        """(N,) class index of each of ``items: (N, D)``."""
        return zero_shot_logits(items, self.embeddings.to(items.device)).argmax(1)

    def update(self, items: Tensor, labels: Tensor) -> None:
        acc = zero_shot_accuracy(items, self.embeddings.to(items.device), labels, self.ks)
        for key, value in acc.items():
            self.hits[key] = self.hits.get(key, 0.0) + value * len(labels)
        self.n += len(labels)

    def compute(self) -> dict[str, float]:
        return {key: value / max(self.n, 1) for key, value in self.hits.items()}
