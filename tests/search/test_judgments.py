"""Complete judgments (TREC-qrels style) for whole-catalogue search evaluation (#31)."""

from __future__ import annotations

import csv

import pytest

from esr_tf.data import CatalogueError
from esr_tf.search.judgments import judged_pairs, judgments, read_qrels


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_demo_shops_qrels_agree_with_its_judged_pairs_and_cover_more(tiny_catalogue):
    root = tiny_catalogue.root
    listed = {(r["query_id"], r["product_id"]): r["label"] for r in _rows(root / "qrels.csv")}
    for row in _rows(root / "examples.csv"):  # unlisted = irrelevant
        assert listed.get((row["query_id"], row["product_id"]), "I") == row["label"]
    pairs = judged_pairs(tiny_catalogue, "test")
    complete, kind = judgments(tiny_catalogue, "test", root / "qrels.csv")
    assert kind.startswith("complete") and set(complete) == set(pairs)
    for query_id, (text, gains) in pairs.items():
        assert complete[query_id][0] == text
        exact = {p for p, g in gains.items() if g == 1.0}
        assert exact <= {p for p, g in complete[query_id][1].items() if g == 1.0}
    assert sum(len(g) for _, g in complete.values()) > sum(len(g) for _, g in pairs.values())


@pytest.mark.parametrize("text, where", [
    ("query_id,product_id\nq1,p1\n", "missing column(s) 'label'"),
    ("query_id,product_id,label\nnope,{pid},E\n", "row 1, column 'query_id'"),
    ("query_id,product_id,label\n{qid},nope,E\n", "row 1, column 'product_id'"),
    ("query_id,product_id,label\n{qid},{pid},perfect\n", "row 1, column 'label': unknown label 'perfect'"),
    ("query_id,product_id,label\n{qid},{pid},E\n{qid},{pid},S\n", "row 2: ({qid}, {pid}) is listed twice"),
])
def test_bad_qrels_rows_are_named(tiny_catalogue, tmp_path, text, where):
    example = tiny_catalogue.select("test")[0]
    fill = {"qid": example.query_id, "pid": example.product_id}
    path = tmp_path / "qrels.csv"
    path.write_text(text.format(**fill))
    with pytest.raises(CatalogueError, match="qrels.csv") as error:
        read_qrels(path, tiny_catalogue, "test")
    assert where.format(**fill) in str(error.value)


def _shared_and_tool(name: str, needed: str, tool_name: str):
    """(the shared development set `name`, the repository tool `tool_name` loaded), or a skip."""
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    source = repo.parent / "shared" / "data" / name
    if not (source / needed).is_file():
        pytest.skip(f"the shared {name} catalogue is not at {source}")
    spec = importlib.util.spec_from_file_location(tool_name, repo / "tools" / f"{tool_name}.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return source, tool


def test_dev_variants_qrels_from_its_attributes(tmp_path):
    """tools/qrels_dev_variants.py on the shared development set, when it is there."""
    source, tool = _shared_and_tool("dev_variants", "attributes.csv", "qrels_dev_variants")
    assert tool.main(str(source), str(tmp_path / "qrels.csv")) == 0  # it checks every judged pair
    rows = _rows(tmp_path / "qrels.csv")
    exact = {r["query_id"] for r in rows if r["label"] == "E"}
    assert len(exact) == len(_rows(source / "queries.csv"))  # every query has its exact products


def test_dev_colour_view_is_judged_completely(tmp_path):
    """tools/qrels_dev_colour.py on the shared development set, when it is there: a catalogue
    that loads, whose qrels read, and whose queries' exact products are the ones they were judged with."""
    from esr_tf.data import load_catalogue

    source, tool = _shared_and_tool("dev_colour", "queries.csv", "qrels_dev_colour")
    view = tmp_path / "view"
    assert tool.main(str(source), str(view)) == 0  # it checks every judged pair it keeps
    catalogue = load_catalogue(view)
    assert 1000 < len(catalogue.products) < 6404
    judged_exact = {(e.query_id, e.product_id) for e in catalogue.examples if catalogue.label_set.codes[e.label] == "E"}
    listed_exact = {(r["query_id"], r["product_id"]) for r in _rows(view / "qrels.csv") if r["label"] == "E"}
    assert listed_exact == judged_exact
    assert read_qrels(view / "qrels.csv", catalogue, "test")
