"""Negatives: where they come from (queues, miners), which to drop (false-negative masks), and how
batches are composed (samplers).

>>> from contrastkit.negatives import EmbeddingQueue, mask_from_ids
>>> EmbeddingQueue(size=8, dim=4)
EmbeddingQueue(size=8, dim=4, filled=0)
"""

from contrastkit.negatives.extra import ExtraNegatives
from contrastkit.negatives.false_negatives import (
    mask_from_guide,
    mask_from_ids,
    mask_from_labels,
    mask_from_texts,
    mask_from_threshold,
)
from contrastkit.negatives.miners import (
    MinedNegatives,
    exact_search,
    hard_negatives_in_batch,
    mine_hard_negatives,
)
from contrastkit.negatives.offline import (
    MiningRows,
    mine_text_negatives,
    rows_from_beir,
    rows_from_pairs,
    write_pairs,
)
from contrastkit.negatives.queue import EmbeddingQueue
from contrastkit.negatives.samplers import MPerClassSampler, NoDuplicatesSampler

__all__ = [
    "EmbeddingQueue",
    "ExtraNegatives",
    "MPerClassSampler",
    "MinedNegatives",
    "MiningRows",
    "NoDuplicatesSampler",
    "exact_search",
    "hard_negatives_in_batch",
    "mask_from_guide",
    "mask_from_ids",
    "mask_from_labels",
    "mask_from_texts",
    "mask_from_threshold",
    "mine_hard_negatives",
    "mine_text_negatives",
    "rows_from_beir",
    "rows_from_pairs",
    "write_pairs",
]
