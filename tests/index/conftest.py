"""Real embeddings for the index tests, computed once per session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def minilm_glosses() -> tuple[torch.Tensor, torch.Tensor]:
    """MiniLM (the packaged all-MiniLM-L6-v2) embeddings of 2,200 WordNet verb glosses, drawn
    with a seeded permutation: ``corpus: (2000, 384)``, ``queries: (200, 384)`` (other glosses).
    About 10 s on one core; skipped when the WordNet Debian package or MiniLM is missing."""
    pytest.importorskip("transformers")
    try:
        from contrastkit.data.wordnet import load_wordnet
        from contrastkit.encoders.text import TextEncoder, default_model_path

        glosses = sorted(set(load_wordnet("lemma_gloss", split="all", pos="v").positive))
        path = default_model_path()
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"real embeddings need WordNet and MiniLM: {err}")
    order = torch.randperm(len(glosses), generator=torch.Generator().manual_seed(0))[:2200]
    encoder = TextEncoder(path).eval()
    with torch.no_grad():
        embeddings = encoder.encode([glosses[i] for i in order.tolist()], batch_size=128)
    return embeddings[:2000].float().contiguous(), embeddings[2000:].float().contiguous()
