"""BEIR-format collections: read one, train on one, and write the packaged WordNet one.

A BEIR folder (Thakur et al. 2021, https://arxiv.org/abs/2104.08663) holds

* ``corpus.jsonl``: one document per line, ``{"_id": ..., "title": ..., "text": ...}``;
* ``queries.jsonl``: one query per line, ``{"_id": ..., "text": ...}``;
* ``qrels/<split>.tsv``: a header line ``query-id<TAB>corpus-id<TAB>score``, then one integer
  graded judgement per line (>= 1 relevant, 0 judged non-relevant).

:func:`load_beir` returns the three as BEIR's dictionaries (what
:func:`contrastkit.eval.evaluate_retrieval` takes); :func:`load_beir_pairs` turns a split into
:class:`~contrastkit.data._common.TextPairs` for training; :func:`export_beir` writes the
packaged set built from WordNet (installed data, no download).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contrastkit.data._common import (
    TextPairs,
    atomic_write_bytes,
    check_fraction,
    group_ids,
    held_out_mask,
    missing,
)

__all__ = [
    "EXPORTS",
    "BeirData",
    "document_text",
    "export_beir",
    "load_beir",
    "load_beir_pairs",
    "pairs_as_beir",
    "pairs_to_beir",
]

log = logging.getLogger(__name__)
EXPORTS = ("wordnet",)
Document = Mapping[str, str] | str


def document_text(doc: Document) -> str:
    """The text embedded for a document: ``(title + " " + text).strip()`` (BEIR's convention).

    >>> document_text({"title": "Dog", "text": "a domestic canine"}), document_text("plain")
    ('Dog a domestic canine', 'plain')
    """
    if isinstance(doc, str):
        return doc.strip()
    return f"{doc.get('title', '') or ''} {doc.get('text', '') or ''}".strip()


class BeirFormatError(ValueError):
    """A malformed line in a BEIR folder; the message starts with ``file:line:``."""


@dataclass
class BeirData:
    """One split of a BEIR collection, as BEIR's plain dictionaries.

    Attributes:
        corpus: document id -> ``{"title": str, "text": str}`` (file order).
        queries: query id -> text (every query of ``queries.jsonl``).
        qrels: query id -> {document id: grade}; queries unknown to ``queries.jsonl`` are
            dropped, documents unknown to the corpus are kept (trec_eval counts them as
            relevant documents that were not retrieved).
    """

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _utf8(read: Callable[[Path], Any]) -> Callable[[Path], Any]:
    """``read(path, ...)`` with a file that is not UTF-8 as one BeirFormatError naming it."""

    @functools.wraps(read)
    def wrapped(path: Path, *args: Any) -> Any:
        try:
            return read(path, *args)
        except UnicodeDecodeError as err:
            raise BeirFormatError(
                f"{path}: not UTF-8 text (bad byte at offset {err.start}); save it as UTF-8."
            ) from None

    return wrapped


@_utf8
def _read_jsonl(path: Path, fields: tuple[str, ...]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise BeirFormatError(f"{path}:{line_no}: invalid JSON ({err.msg}).") from None
            except RecursionError:
                raise BeirFormatError(f"{path}:{line_no}: JSON nested too deeply.") from None
            if not isinstance(row, dict) or row.get("_id") in (None, ""):
                raise BeirFormatError(
                    f"{path}:{line_no}: expected a JSON object with a non-empty '_id', got "
                    f"{line.strip()[:80]!r}."
                )
            key = str(row["_id"])
            if key in out:
                raise BeirFormatError(
                    f"{path}:{line_no}: duplicate _id {key!r} (first on line {first_line[key]}); "
                    "give every entry its own id."
                )
            values = {}
            for name in fields:
                value = row.get(name, "")
                if value is None:
                    value = ""
                if not isinstance(value, str):
                    raise BeirFormatError(
                        f"{path}:{line_no}: {name!r} must be a string, got {value!r}."
                    )
                values[name] = value
            out[key] = values
            first_line[key] = line_no
    return out


@_utf8
def _read_qrels(path: Path) -> list[tuple[int, str, str, int]]:
    rows: list[tuple[int, str, str, int]] = []
    seen: dict[tuple[str, str], int] = {}
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise BeirFormatError(
                    f"{path}:{line_no}: expected 3 tab-separated fields (query-id, corpus-id, "
                    f"score), got {len(fields)}: {line[:80]!r}."
                )
            qid, did, score = (f.strip() for f in fields)
            if line_no == 1 and not _is_int(score):
                continue  # the header line
            if not _is_int(score):
                raise BeirFormatError(
                    f"{path}:{line_no}: score must be an integer grade (0 = not relevant, >= 1 "
                    f"relevant), got {score!r}."
                )
            if (qid, did) in seen:
                raise BeirFormatError(
                    f"{path}:{line_no}: duplicate judgement of ({qid!r}, {did!r}) (first on line "
                    f"{seen[qid, did]}); keep one line per query-document pair."
                )
            seen[qid, did] = line_no
            rows.append((line_no, qid, did, int(score)))
    return rows


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?[0-9]+", text) is not None  # ASCII digits: int() accepts them


def load_beir(root: str | Path, split: str = "test") -> BeirData:
    """Read a BEIR folder's corpus, queries and the judgements of one split.

    Args:
        root: the folder with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.
        split: the qrels file to read (``"test"``, ``"train"``, ``"dev"``, ...).

    Returns:
        :class:`BeirData`. Judgements naming unknown query or document ids are counted and
        reported with ``logging.warning`` (not an error).

    Raises:
        FileNotFoundError: a file is missing (the message lists the splits present).
        ValueError: a malformed line (``file:line:`` first), a duplicate id or judgement, an
            empty corpus or no judgements.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "a dog"}\\n')
    >>> _ = (d / "queries.jsonl").write_text('{"_id": "q1", "text": "dog"}\\n')
    >>> (d / "qrels").mkdir(); _ = (d / "qrels/test.tsv").write_text("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t1\\n")
    >>> load_beir(d).qrels
    {'q1': {'d1': 1}}
    """
    root = Path(root)
    if not root.is_dir():
        raise missing("BEIR folder", root, None, "root")
    if not isinstance(split, str) or not split or "/" in split:
        raise ValueError(f"split must be a qrels file name such as 'test', got {split!r}.")
    corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for path in (corpus_path, queries_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a BEIR folder needs corpus.jsonl, queries.jsonl and "
                "qrels/<split>.tsv (write one with `contrastkit data export-beir wordnet DIR`)."
            )
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        raise FileNotFoundError(
            f"{qrels_path} not found (split={split!r}); splits present: {have or 'none'}; pass "
            "one of them as split."
        )
    corpus = _read_jsonl(corpus_path, ("title", "text"))
    if not corpus:
        raise ValueError(f"{corpus_path} has no documents; a BEIR corpus needs at least one line.")
    queries = {k: v["text"] for k, v in _read_jsonl(queries_path, ("text",)).items()}
    qrels: dict[str, dict[str, int]] = {}
    unknown_q: list[str] = []
    unknown_d: list[str] = []
    for _, qid, did, score in _read_qrels(qrels_path):
        if qid not in queries:
            unknown_q.append(qid)
            continue
        if did not in corpus:
            unknown_d.append(did)
        qrels.setdefault(qid, {})[did] = score
    if unknown_q or unknown_d:
        log.warning(
            "%s: %d judgements name query ids missing from queries.jsonl (dropped, e.g. %r), "
            "%d name document ids missing from corpus.jsonl (kept as unretrievable relevant "
            "documents, e.g. %r).",
            qrels_path,
            len(unknown_q),
            unknown_q[0] if unknown_q else None,
            len(unknown_d),
            unknown_d[0] if unknown_d else None,
        )
    if not qrels:
        raise ValueError(
            f"{qrels_path} has no judgements of known queries; check that its query-id column "
            f"uses the _id values of {queries_path.name}."
        )
    return BeirData(corpus, queries, qrels)


def load_beir_pairs(
    root: str | Path,
    split: str = "train",
    min_score: int = 1,
    negatives: bool = True,
    mined: str | Path | None = None,
) -> TextPairs:
    """A BEIR split as training pairs: one row per judged-relevant (query, document).

    Args:
        root: the BEIR folder.
        split: the qrels file (``"train"`` by default).
        min_score: grades >= this are positives (e.g. 2 keeps only the best matches).
        negatives: give each row its query's documents judged 0 as ``negatives``.
        mined: a pairs file written by ``contrastkit mine`` (``query``, ``positive``,
            ``negatives``): each row of the split also gets the negatives mined for its
            (query, document), after its judged-0 documents; when the file carries a
            teacher's ``scores`` (``contrastkit mine --scorer``) the mined negatives come first
            and ``scores`` holds the teacher's score of the positive and of each of them.

    Returns:
        :class:`TextPairs` in qrels order: ``query`` the query text, ``positive`` the document
        text (title + text), ``ids`` the query id and ``groups`` the query (rows of one query
        are masked as each other's false negatives), ``negatives`` the judged-0 documents (or
        ``None`` when no query has any). Documents missing from the corpus are skipped.
    """
    if not isinstance(min_score, int) or isinstance(min_score, bool) or min_score < 1:
        raise ValueError(
            f"min_score must be an int >= 1 (the lowest positive grade), got {min_score!r}."
        )
    data = load_beir(root, split)
    query, positive, ids, negs = [], [], [], []
    scores: list[list[float] | None] | None = None
    for qid, judged in data.qrels.items():
        zero = [
            document_text(data.corpus[d]) for d, g in judged.items() if g <= 0 and d in data.corpus
        ]
        for did, grade in judged.items():
            if grade >= min_score and did in data.corpus:
                query.append(data.queries[qid])
                positive.append(document_text(data.corpus[did]))
                ids.append(qid)
                negs.append(zero)
    if not query:
        raise ValueError(
            f"{Path(root) / 'qrels' / (split + '.tsv')} has no judgement >= min_score={min_score} "
            "of a corpus document; lower min_score or check the split."
        )
    if mined is not None:
        from contrastkit.data.files import load_pairs

        found = load_pairs(mined)
        table = {
            (q, p): list(n)
            for q, p, n in zip(found.query, found.positive, found.negatives or [[]] * len(found))
        }
        if found.scores is not None:  # a teacher's scores: the scored negatives come first
            teacher = dict(zip(zip(found.query, found.positive), found.scores))
            scores = [teacher.get((q, p)) for q, p in zip(query, positive)]
            negs = [table.get((q, p), []) + zero for q, p, zero in zip(query, positive, negs)]
        else:
            negs = [zero + table.get((q, p), []) for q, p, zero in zip(query, positive, negs)]
    complete = scores is not None and all(s is not None for s in scores)
    return TextPairs(
        query,
        positive,
        groups=group_ids(ids),
        ids=ids,
        negatives=negs if negatives and any(negs) else None,
        scores=scores if complete and negatives else None,  # type: ignore[arg-type]
    )


def _rank_key(seed: int, key: str) -> int:
    return zlib.crc32(f"{seed}:{key}".encode())


def export_beir(
    name: str,
    root: str | Path,
    *,
    test_queries: int = 500,
    train_queries: int = 2000,
    corpus_size: int = 5000,
    test_fraction: float = 0.1,
    seed: int = 0,
    wordnet_root: str | Path | None = None,
) -> Path:
    """Write the packaged BEIR set ``name`` into the folder ``root``.

    ``"wordnet"``: queries are WordNet noun lemmas, documents are noun synset definitions
    (``_id`` the synset, ``"n:02084071"``). For a query lemma every synset holding it is judged
    2 and the hypernyms and hyponyms of those synsets are judged 1. A lemma is a test query when
    all its synsets are in :func:`~contrastkit.data.wordnet.load_wordnet`'s held-out split (same
    ``test_fraction`` and ``seed``), a train query when none is, and left out otherwise, so no
    test query's own (lemma, gloss) pair is in the loader's training split. Queries are picked
    in a seeded hash order, up to ``test_queries`` / ``train_queries``; the corpus holds every
    judged document plus other noun glosses (the same order) up to ``corpus_size``.

    Args:
        name: one of :data:`EXPORTS`.
        root: the folder to write (created; existing files are replaced atomically).
        test_queries, train_queries: caps on the queries of each split.
        corpus_size: corpus size (at least the judged documents).
        test_fraction, seed: the WordNet loader's split.
        wordnet_root: the WordNet ``data.*`` folder (default ``/usr/share/wordnet``).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    if name not in EXPORTS:
        raise ValueError(f"name must be one of {list(EXPORTS)} (packaged BEIR sets), got {name!r}.")
    for arg, value in (
        ("test_queries", test_queries),
        ("train_queries", train_queries),
        ("corpus_size", corpus_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}.")
    check_fraction(test_fraction)
    from contrastkit.data.wordnet import DEFAULT_ROOT, _read_hypernyms, _read_synsets

    wn = str(Path(wordnet_root) if wordnet_root is not None else DEFAULT_ROOT)
    if not Path(wn).is_dir():
        raise missing("WordNet directory", wn, "wordnet-base", "wordnet_root")
    synsets = _read_synsets(wn, "n")
    definition = {sid: d for sid, _, _, d, _ in synsets if d}
    hypernyms = _read_hypernyms(wn, "n")
    hyponyms: dict[str, list[str]] = {}
    for sid, parents in hypernyms.items():
        for parent in parents:
            hyponyms.setdefault(parent, []).append(sid)
    sids = [sid for sid, *_ in synsets]
    held_out = dict(zip(sids, held_out_mask(sids, test_fraction, seed).tolist()))
    senses: dict[str, list[str]] = {}
    for sid, _, lemmas, _, _ in synsets:
        if sid in definition:
            for lemma in dict.fromkeys(lemmas):
                senses.setdefault(lemma, []).append(sid)
    sides: dict[str, list[str]] = {"test": [], "train": []}
    for lemma, own in senses.items():
        flags = {held_out[s] for s in own}
        if flags == {True}:
            sides["test"].append(lemma)
        elif flags == {False}:
            sides["train"].append(lemma)
    caps = {"test": test_queries, "train": train_queries}
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    queries: dict[str, str] = {}
    for split, lemmas in sides.items():
        picked = sorted(lemmas, key=lambda lemma: (_rank_key(seed, lemma), lemma))[: caps[split]]
        qrels[split] = {}
        for lemma in sorted(picked):
            qid = "q:" + lemma.replace(" ", "_")
            judged: dict[str, int] = {}
            for sid in senses[lemma]:
                for other in (*hypernyms.get(sid, ()), *hyponyms.get(sid, ())):
                    if other in definition:
                        judged.setdefault(other, 1)
            for sid in senses[lemma]:
                judged[sid] = 2
            queries[qid] = lemma
            qrels[split][qid] = judged
    docs = {d for split in qrels.values() for judged in split.values() for d in judged}
    for sid in sorted(definition, key=lambda s: (_rank_key(seed, s), s)):
        if len(docs) >= corpus_size:
            break
        docs.add(sid)
    root = Path(root)
    corpus_lines = [
        json.dumps({"_id": sid, "title": "", "text": definition[sid]}) for sid in sorted(docs)
    ]
    query_lines = [json.dumps({"_id": q, "text": t}) for q, t in queries.items()]
    atomic_write_bytes(root / "corpus.jsonl", ("\n".join(corpus_lines) + "\n").encode())
    atomic_write_bytes(root / "queries.jsonl", ("\n".join(query_lines) + "\n").encode())
    for split, judged_by_query in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"]
        lines += [
            f"{qid}\t{did}\t{grade}"
            for qid, judged in judged_by_query.items()
            for did, grade in sorted(judged.items())
        ]
        atomic_write_bytes(root / "qrels" / f"{split}.tsv", ("\n".join(lines) + "\n").encode())
    return root


def pairs_as_beir(pairs: TextPairs) -> BeirData:
    """Aligned pairs as one BEIR split in memory (what :func:`pairs_to_beir` writes).

    Queries are the distinct query texts (``q<i>`` in first-seen order); documents are the
    distinct positive texts, then the distinct negatives that are no positive (``d<i>``,
    unjudged distractors). A query is judged relevant (1) to the positive of every row it
    appears in, so a query repeated with two answers has two relevant documents.

    >>> from contrastkit.data._common import TextPairs
    >>> data = pairs_as_beir(TextPairs(["hi", "bye", "hi"], ["hello", "goodbye", "hey"]))
    >>> len(data.queries), len(data.corpus), data.qrels["q0"]
    (2, 3, {'d0': 1, 'd2': 1})
    """
    if len(pairs) == 0:
        raise ValueError("pairs is empty: nothing to evaluate; pass a file with at least one row.")
    queries: dict[str, str] = {}
    docs: dict[str, str] = {}
    judged: dict[str, dict[str, int]] = {}
    for query, positive in zip(pairs.query, pairs.positive):
        qid = queries.setdefault(query, f"q{len(queries)}")
        did = docs.setdefault(positive, f"d{len(docs)}")
        judged.setdefault(qid, {})[did] = 1
    for row in pairs.negatives or []:
        for negative in row:
            docs.setdefault(negative, f"d{len(docs)}")
    corpus = {did: {"title": "", "text": text} for text, did in docs.items()}
    return BeirData(corpus, {qid: t for t, qid in queries.items()}, judged)


def pairs_to_beir(pairs: TextPairs, root: str | Path, split: str = "test") -> Path:
    """Write aligned pairs as a BEIR folder (:func:`pairs_as_beir`): your own held-out pairs,
    evaluated with the same trec_eval conventions as any BEIR set (``contrastkit
    eval-retrieval``, ``eval.heldout``).

    Args:
        pairs: :class:`~contrastkit.data._common.TextPairs` (e.g. from
            :func:`contrastkit.data.files.load_pairs` or
            :func:`contrastkit.data.hf.load_hf_pairs`).
        root: the folder to write (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).
        split: the qrels file name.

    >>> import tempfile
    >>> from contrastkit.data._common import TextPairs
    >>> root = pairs_to_beir(TextPairs(["hi", "bye", "hi"], ["hello", "goodbye", "hey"]),
    ...                      tempfile.mkdtemp())
    >>> load_beir(root).qrels == pairs_as_beir(TextPairs(["hi", "bye", "hi"],
    ...                                                  ["hello", "goodbye", "hey"])).qrels
    True
    """
    if not isinstance(split, str) or not split.isidentifier():
        raise ValueError(f"split must be a plain name like 'test', got {split!r}.")
    data = pairs_as_beir(pairs)
    root = Path(root)
    corpus = [json.dumps({"_id": did, **doc}) for did, doc in data.corpus.items()]
    query_lines = [json.dumps({"_id": qid, "text": t}) for qid, t in data.queries.items()]
    qrels = ["query-id\tcorpus-id\tscore"] + [
        f"{qid}\t{did}\t{grade}" for qid, row in data.qrels.items() for did, grade in row.items()
    ]
    atomic_write_bytes(root / "corpus.jsonl", ("\n".join(corpus) + "\n").encode())
    atomic_write_bytes(root / "queries.jsonl", ("\n".join(query_lines) + "\n").encode())
    atomic_write_bytes(root / "qrels" / f"{split}.tsv", ("\n".join(qrels) + "\n").encode())
    return root
