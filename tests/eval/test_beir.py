"""BEIR / trec_eval retrieval evaluation: parity with pytrec_eval, the streamed search, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from contrastkit.cli import main
from contrastkit.eval import evaluate_retrieval, score_run, search_corpus

pytrec_eval = pytest.importorskip("pytrec_eval")

K_VALUES = (1, 3, 5, 10, 100)
# our key -> pytrec_eval measure family (MRR@k is recip_rank of the run cut to its top k)
FAMILIES = {"nDCG": "ndcg_cut", "MAP": "map_cut", "Recall": "recall", "P": "P"}


def _trec(run: dict, qrels: dict, ks: tuple[int, ...] = K_VALUES) -> dict[str, float]:
    """Every metric from pytrec_eval, averaged over the queries it evaluates (as BEIR does)."""
    cut = ",".join(map(str, ks))
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"{m}.{cut}" for m in FAMILIES.values()})
    per_query = evaluator.evaluate(run)
    out: dict[str, float] = {}
    n = len(per_query)
    for ours, theirs in FAMILIES.items():
        for k in ks:
            out[f"{ours}@{k}"] = sum(v[f"{theirs}_{k}"] for v in per_query.values()) / n
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    for k in ks:
        top = {q: dict(_trec_order(scores)[:k]) for q, scores in run.items()}
        res = rr.evaluate(top)
        out[f"MRR@{k}"] = sum(v["recip_rank"] for v in res.values()) / len(res)
    return out


def _trec_order(scores: dict[str, float]) -> list[tuple[str, float]]:
    """trec_eval's ranking: score descending, ties by document id descending."""
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def _random_case(seed: int) -> tuple[dict, dict]:
    """A run and qrels with every trec_eval corner: graded judgements (0-3), tied scores,
    judged-0 documents, queries of the run without judgements, judged queries missing from the
    run, relevant documents that no run retrieves (absent from the corpus), ids of mixed
    lengths (string order != numeric order)."""
    g = torch.Generator().manual_seed(seed)
    docs = [f"d{i}" for i in range(60)]
    run, qrels = {}, {}
    for q in range(25):
        qid = f"q{q}"
        n = int(torch.randint(1, 40, (1,), generator=g))
        picked = torch.randperm(len(docs), generator=g)[:n].tolist()
        levels = torch.randint(0, 6, (n,), generator=g).float() / 5  # few levels: many ties
        if q != 7:  # q7 is judged but has no ranking
            run[qid] = {docs[j]: float(s) for j, s in zip(picked, levels)}
        if q % 6 == 5:
            continue  # retrieved but never judged: not evaluated
        judged = torch.randperm(len(docs), generator=g)[:12].tolist()
        grades = torch.randint(0, 4, (12,), generator=g).tolist()
        qrels[qid] = {docs[j]: int(r) for j, r in zip(judged, grades)}
        qrels[qid][f"missing{q}"] = 1  # relevant but in no corpus
        if q % 6 == 4:
            qrels[qid] = {d: 0 for d in qrels[qid]}  # judged, none relevant
    return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_run_equals_pytrec_eval(seed: int) -> None:
    run, qrels = _random_case(seed)
    ours, theirs = score_run(run, qrels, K_VALUES), _trec(run, qrels)
    assert set(ours) == set(theirs)
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), name
    assert ours["nDCG@10"] > 0 and ours["MAP@100"] > 0  # the case is not degenerate


def test_ties_are_broken_by_document_id_descending() -> None:
    qrels = {"q": {"d1": 1}}
    tied = {"q": {"d1": 0.5, "d2": 0.5, "d10": 0.5}}  # trec_eval order: d2, d10, d1
    ours = score_run(tied, qrels, (1, 2, 3))
    assert ours["MRR@3"] == pytest.approx(1 / 3) == _trec(tied, qrels, (1, 2, 3))["MRR@3"]
    assert ours["P@2"] == 0.0


def test_judged_zero_and_unjudged_queries() -> None:
    qrels = {"a": {"d1": 0}, "b": {"d1": 2, "d2": 1}}
    run = {"a": {"d1": 1.0}, "b": {"d2": 0.9, "d1": 0.1}, "c": {"d1": 1.0}}
    m = score_run(run, qrels, (2,))
    # "a" counts with zeros, "c" (no judgements) does not: the mean is over a and b.
    idcg = 2 + 1 / math.log2(3)
    assert m["nDCG@2"] == pytest.approx((1 + 2 / math.log2(3)) / idcg / 2)
    assert m["Recall@2"] == pytest.approx(0.5)
    assert m == pytest.approx(_trec(run, qrels, (2,)), abs=1e-9)


def _table_encoder(table: dict[str, torch.Tensor], calls: list[int] | None = None):
    def encode(texts: list[str]) -> torch.Tensor:
        if calls is not None:
            calls.append(len(texts))
        return torch.stack([table[t] for t in texts])

    return encode


def _embedded_case(seed: int, n_docs: int = 37, n_queries: int = 9):
    g = torch.Generator().manual_seed(seed)
    # 3-level integer coordinates: many exactly tied scores.
    vectors = torch.randint(0, 3, (n_docs + n_queries, 4), generator=g).float()
    texts = [f"t{i}" for i in range(n_docs + n_queries)]
    table = dict(zip(texts, vectors))
    corpus = {f"doc{j:02d}": {"title": "", "text": texts[j]} for j in range(n_docs)}
    queries = {f"query{i}": texts[n_docs + i] for i in range(n_queries)}
    qrels = {}
    for i, qid in enumerate(queries):
        judged = torch.randperm(n_docs, generator=g)[:6].tolist()
        qrels[qid] = {f"doc{j:02d}": int(r) for j, r in zip(judged, [2, 1, 1, 0, 0, 3])}
        if i == 0:
            del qrels[qid]  # a query without judgements
    return table, corpus, queries, qrels


def _full_run(table, corpus, queries) -> dict:
    """Every document scored (the dense reference): dot products of small integer vectors, so
    every score is exact in float32 whatever the summation order and ties are exact ties."""
    docs = torch.stack([table[corpus[d]["text"]] for d in corpus])  # (N, D)
    out = {}
    for qid, text in queries.items():
        s = docs @ table[text]  # (N,)
        out[qid] = {d: float(v) for d, v in zip(corpus, s.tolist())}
    return out


@pytest.mark.parametrize("batch_size", [1, 4, 16, 1000])
def test_streamed_search_equals_the_dense_ranking(batch_size: int) -> None:
    table, corpus, queries, _ = _embedded_case(0)
    calls: list[int] = []
    enc = _table_encoder(table, calls)
    run = search_corpus(enc, enc, corpus, queries, k=10, batch_size=batch_size, metric="dot")
    full = _full_run(table, corpus, queries)
    for qid in queries:
        expected = [d for d, _ in _trec_order(full[qid])[:10]]
        assert list(run[qid]) == expected  # same documents, same order, ties by id descending
        for d in expected:
            assert run[qid][d] == full[qid][d]
    assert max(calls[1:]) <= batch_size  # documents are embedded chunk by chunk


def test_evaluate_retrieval_equals_pytrec_eval_on_the_dense_run() -> None:
    table, corpus, queries, qrels = _embedded_case(1, n_docs=120)
    enc = _table_encoder(table)
    ours = evaluate_retrieval(
        enc, enc, corpus, queries, qrels, K_VALUES, batch_size=25, metric="dot"
    )
    theirs = _trec(_full_run(table, corpus, queries), qrels)
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), name
    required = {"nDCG@1", "nDCG@3", "nDCG@5", "nDCG@10", "nDCG@100", "MAP@10", "MAP@100"}
    assert required | {"Recall@10", "Recall@100", "P@1", "P@10", "MRR@10"} <= set(ours)


def test_identical_ids_are_never_retrieved_unless_asked() -> None:
    table = {
        "x": torch.tensor([1.0, 0.0]),
        "y": torch.tensor([0.8, 0.2]),
        "z": torch.tensor([0.0, 1.0]),
    }
    enc = _table_encoder(table)
    corpus = {"a": "x", "b": "y", "c": "z"}
    queries = {"a": "x"}  # the query is also document "a"
    assert list(search_corpus(enc, enc, corpus, queries, k=2)["a"]) == ["b", "c"]
    kept = search_corpus(enc, enc, corpus, queries, k=2, ignore_identical_ids=False)
    assert list(kept["a"]) == ["a", "b"]
    full = search_corpus(enc, enc, corpus, queries, k=3, batch_size=1)
    assert list(full["a"]) == ["b", "c"]  # k = N: one slot is left empty, not filled


def test_bad_input_is_named() -> None:
    table = {"x": torch.tensor([1.0, 0.0])}
    enc = _table_encoder(table)
    with pytest.raises(ValueError, match=r"k_values has k=10 but the corpus holds 1 documents"):
        evaluate_retrieval(enc, enc, {"d": "x"}, {"q": "x"}, {"q": {"d": 1}}, k_values=(1, 10))
    with pytest.raises(ValueError, match="corpus is empty"):
        evaluate_retrieval(enc, enc, {}, {"q": "x"}, {"q": {"d": 1}}, k_values=(1,))
    with pytest.raises(ValueError, match="k_values must be"):
        evaluate_retrieval(enc, enc, {"d": "x"}, {"q": "x"}, {"q": {"d": 1}}, k_values=(0,))
    bad = lambda texts: torch.zeros(len(texts))  # noqa: E731 - (N,) instead of (N, D)
    with pytest.raises(ValueError, match=r"query_encoder must map a list of 1 strings"):
        evaluate_retrieval(bad, enc, {"d": "x"}, {"q": "x"}, {"q": {"d": 1}}, k_values=(1,))


def _tiny_model(path: Path) -> Path:
    from contrastkit.encoders.text import TextEncoder

    enc = TextEncoder.from_scratch(hidden_size=16, num_layers=1, num_heads=2, max_length=16)
    return enc.save(path)


def _small_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    docs = ["a domestic dog", "a large cat", "a wild wolf", "a fast car", "a red apple", "rain"]
    (root / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(docs)
        )
    )
    queries = ["dog", "cat", "car", "fruit"]
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(queries))
    )
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\td0\t2\nq0\td2\t1\nq1\td1\t1\nq2\td3\t1\nq2\td5\t0\n"
        "q3\td4\t1\n"
    )
    return root


def test_cli_eval_retrieval_with_a_model_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _tiny_model(tmp_path / "model")
    data = _small_beir(tmp_path / "beir")
    out = tmp_path / "m.json"
    assert main(["eval-retrieval", str(model), str(data), "--k", "1", "5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 queries, 6 documents" in printed and "nDCG" in printed
    saved = json.loads(out.read_text())
    assert saved["queries"] == 4 and set(saved["metrics"]) == {
        f"{f}@{k}" for f in ("nDCG", "MAP", "Recall", "P", "MRR") for k in (1, 5)
    }
    # the same numbers as the Python call with the same encoder
    from contrastkit.data.beir import load_beir
    from contrastkit.encoders.text import TextEncoder

    enc = TextEncoder(model)
    d = load_beir(data)
    direct = evaluate_retrieval(enc.encode, enc.encode, d.corpus, d.queries, d.qrels, (1, 5))
    assert saved["metrics"] == pytest.approx(direct, abs=1e-6)


def test_cli_eval_retrieval_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _small_beir(tmp_path / "beir")
    model = _tiny_model(tmp_path / "model")
    assert main(["eval-retrieval", str(model), str(tmp_path / "nowhere")]) == 4
    assert "BEIR folder not found" in capsys.readouterr().err
    assert main(["eval-retrieval", str(tmp_path / "nomodel"), str(data), "--k", "1"]) == 4
    assert "neither a run folder" in capsys.readouterr().err
    # An explicit k beyond the corpus is refused (the default keeps the cut-offs that fit).
    assert main(["eval-retrieval", str(model), str(data), "--k", "1", "100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("contrastkit eval-retrieval: --k 100 is larger") and err.count("\n") == 1
    assert main(["eval-retrieval", str(model), str(data), "--split", "dev"]) == 4
    assert "splits present: ['test']" in capsys.readouterr().err


def test_cli_eval_retrieval_with_a_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from contrastkit.train import load_config_dict, train

    raw = {
        "name": "pairs",
        "task": "pairs",
        "data": {"dataset": "wordnet", "subset": 48, "test_subset": 32,
                 "options": {"kind": "lemma_gloss", "pos": "r"}},
        "model": {"name": "tiny_text", "options": {"hidden_size": 16, "num_layers": 1,
                  "num_heads": 2, "max_length": 16, "dropout": 0.0}},
        "loss": {"name": "info_nce", "params": {"temperature": 0.1}},
        "optim": {"lr": 0.001, "batch_size": 16, "warmup_steps": 1},
        "train": {"max_steps": 2, "log_every": 1, "monitor_every": 1, "checkpoint_every": 2,
                  "progress": False, "threads": 1, "output_dir": str(tmp_path)},
        "eval": {"corpus_size": 16, "queries": "first"},
    }  # fmt: skip
    run = train(load_config_dict(raw))
    data = _small_beir(tmp_path / "beir")
    capsys.readouterr()
    assert main(["eval-retrieval", str(run), str(data), "--k", "1", "3"]) == 0
    assert "4 queries, 6 documents" in capsys.readouterr().out
