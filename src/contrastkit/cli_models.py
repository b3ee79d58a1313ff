"""MODEL arguments of the command line: a run folder or a local text model folder -> encoders.

One place resolves what a user passes as MODEL (``eval-retrieval``, ``mine``, and any later
command that embeds texts):

* a run folder (has ``config.yaml``): the run's task through
  :func:`contrastkit.train.run.load_run`, embedding with ``task.embed_texts(texts, side=...)``;
* a local sentence-transformers / Hugging Face folder (has ``config.json``):
  :class:`contrastkit.encoders.text.TextEncoder` and its ``encode``;
* ``minilm``: the packaged all-MiniLM-L6-v2 (when no folder of that name exists).

This is application code (it reads runs); the library never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

__all__ = ["TextModel", "load_text_model"]

PACKAGED = {"minilm": "the packaged all-MiniLM-L6-v2"}


@dataclass
class TextModel:
    """Two ``list[str] -> (N, D) float32`` encoders (one per side) and a name for tables."""

    query: Callable[[list[str]], Tensor]
    document: Callable[[list[str]], Tensor]
    name: str


def load_text_model(model: str | Path, batch_size: int = 64) -> TextModel:
    """Resolve MODEL (a run folder, a local model folder, or ``minilm``) into text encoders.

    Raises:
        FileNotFoundError: MODEL is none of these.
        ValueError: MODEL is a run whose task does not embed texts (an image-only run).
    """
    path = Path(model)
    if (path / "config.yaml").is_file():
        from contrastkit.train.run import load_run

        _, task, _ = load_run(path)
        kinds = tuple(getattr(task, "query_kinds", ()))
        if "text" not in kinds:
            raise ValueError(
                f"MODEL {str(model)!r} is a run whose queries are {kinds or 'not texts'}; pass a "
                "text run (pairs or image-text) or a sentence-transformers folder."
            )
        return TextModel(
            lambda texts: task.embed_texts(list(texts), side="query"),
            lambda texts: task.embed_texts(list(texts), side="document"),
            path.name,
        )
    if (path / "config.json").is_file() or (not path.exists() and str(model) in PACKAGED):
        from contrastkit.encoders.text import TextEncoder

        encoder = TextEncoder(None if not path.exists() else path)
        encoder.eval()

        def encode(texts: list[str]) -> Tensor:
            return encoder.encode(list(texts), batch_size=batch_size)

        return TextModel(encode, encode, path.name)
    raise FileNotFoundError(
        f"MODEL {str(model)!r} is neither a run folder (no config.yaml) nor a local "
        "sentence-transformers / Hugging Face folder (no config.json); pass one of those, or "
        f"{' / '.join(PACKAGED)} for {', '.join(PACKAGED.values())}."
    )
