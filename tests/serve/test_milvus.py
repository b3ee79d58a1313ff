"""The Milvus backend against milvus-lite (an embedded ``.db`` file; the same code talks to a
server by ``http://``): ``contrastkit index RUN --to milvus``, ``search --index milvus://`` and
``serve --index milvus://`` answer the FAISS flat file index's top-k, filters pushed down to
Milvus equal the file index's filtered ranking, and a collection of another width or metric, or
an unreachable URI, is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pymilvus", reason="the milvus extra (pymilvus + milvus-lite) is missing")
pytest.importorskip("milvus_lite", reason="the milvus extra (pymilvus + milvus-lite) is missing")
from fastapi.testclient import TestClient

from contrastkit.cli import main
from contrastkit.index.milvus import MilvusIndex
from contrastkit.serve import create_app_from_run
from contrastkit.train.search import example_queries, search

from .conftest import LOCAL, b64


@pytest.fixture(scope="module")
def milvus_spec(image_run: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    db = tmp_path_factory.mktemp("milvus") / "corpus.db"
    code = main(["index", str(image_run), "--to", "milvus", str(db), "--collection", "digits",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    return f"milvus://{db}#digits"


def _ids(hits: list[dict]) -> list[str]:
    return [h["id"] for h in hits]


def test_topk_equals_the_flat_file_index(image_run: Path, milvus_spec: str) -> None:
    for query in example_queries(image_run, n=3):
        ours = search(image_run, query, k=10, index=milvus_spec)
        flat = search(image_run, query, k=10)  # the run's faiss_flat file
        assert _ids(ours) == _ids(flat)
        assert [h["label"] for h in ours] == [h["label"] for h in flat]
        for a, b in zip(ours, flat):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_filters_are_pushed_down_and_equal(image_run: Path, milvus_spec: str) -> None:
    query = example_queries(image_run, n=1)[0]
    label = search(image_run, query, k=1)[0]["label"]
    ours = search(image_run, query, k=5, index=milvus_spec, filter={"label": label})
    flat = search(image_run, query, k=5, filter={"label": label})
    assert _ids(ours) == _ids(flat) and {h["label"] for h in ours} == {label}
    assert search(image_run, query, k=5, index=milvus_spec, filter={"label": "no such"}) == []
    one = search(image_run, query, k=5, index=milvus_spec, filter={"id": "3"})
    assert _ids(one) == ["3"]


def test_serve_answers_from_milvus(image_run: Path, milvus_spec: str) -> None:
    png = b64(Path(example_queries(image_run, n=1)[0]).read_bytes())
    with (
        TestClient(create_app_from_run(image_run), base_url=LOCAL) as flat,
        TestClient(create_app_from_run(image_run, milvus_spec), base_url=LOCAL) as milvus,
    ):
        health = milvus.get("/health").json()
        assert health["index_backend"] == "milvus" and health["index_size"] > 0
        assert "label" in health["filter_fields"]
        a = milvus.post("/search", json={"image": png, "k": 5}).json()["results"]
        b = flat.post("/search", json={"image": png, "k": 5}).json()["results"]
        assert [h["id"] for h in a] == [h["id"] for h in b]
        label = b[0]["metadata"]["label"]
        body = {"image": png, "k": 5, "filter": {"label": label}}
        a = milvus.post("/search", json=body).json()["results"]
        b = flat.post("/search", json=body).json()["results"]
        assert [h["id"] for h in a] == [h["id"] for h in b]
        bad = milvus.post("/search", json={"image": png, "filter": {"colour": "red"}})
        assert bad.status_code == 400 and bad.json()["field"] == "filter.colour"


def test_another_dim_or_metric_is_refused_in_one_line(
    image_run: Path, milvus_spec: str, capsys
) -> None:
    db = milvus_spec.removeprefix("milvus://").split("#")[0]
    MilvusIndex.create(db, "narrow", 3, "cosine")
    MilvusIndex.create(db, "dotted", MilvusIndex.open(milvus_spec).dim, "dot")
    query = example_queries(image_run, n=1)[0]
    for collection, says in (("narrow", "3-d cosine"), ("dotted", "dot")):
        capsys.readouterr()
        code = main(["search", str(image_run), query, "--index", f"milvus://{db}#{collection}"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and says in err, err
    with pytest.raises(ValueError, match="3-d cosine"):  # index --to refuses to overwrite it
        MilvusIndex.create(db, "narrow", 8, "cosine")


def test_an_unreachable_uri_is_one_line_exit_4(image_run: Path, capsys) -> None:
    query = example_queries(image_run, n=1)[0]
    for argv in (
        ["search", str(image_run), query, "--index", "milvus://127.0.0.1:1"],
        ["index", str(image_run), "--to", "milvus", "http://127.0.0.1:1", "--no-progress"],
    ):
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 4 and len(err.splitlines()) == 1 and "unreachable" in err, err


def test_string_columns_filter_as_the_json_does(tmp_path: Path) -> None:
    """A filter on a ``meta_KEY`` VARCHAR column (fast) answers as the same filter on the JSON
    metadata, including rows whose value is missing, not a string, or the empty string."""
    import torch

    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(60, 8, generator=g)
    labels: list = ["a", "b", "", None, 3, "a" * 5000]
    meta = [{"label": labels[i % 6]} if labels[i % 6] is not None else {} for i in range(60)]
    ids = [str(i) for i in range(60)]
    db = str(tmp_path / "s.db")
    fast = MilvusIndex.create(db, "fast", 8, "cosine", ["label"], scalars=["label"])
    slow = MilvusIndex.create(db, "slow", 8, "cosine", ["label"])
    for index in (fast, slow):
        index.add(vectors, ids, meta, 0)
        index.flush()
    assert MilvusIndex.open(f"milvus://{db}#fast").scalars == ("label",)
    query = torch.randn(1, 8, generator=g)
    for value in ("a", "b", "", 3, "a" * 5000, "none"):
        got = fast.search(query, 60, filter={"label": value}).ids[0]
        want = slow.search(query, 60, filter={"label": value}).ids[0]
        expected = sorted(str(i) for i in range(60) if meta[i].get("label") == value)
        assert sorted(got) == sorted(want) == expected, value
