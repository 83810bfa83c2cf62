"""`esr-tf index` / `esr-tf search` (#16): exit 0 on success, 2 with a one-line message on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from esr_tf import cli


def _run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_search_prints_a_ranked_table(tiny_index, capsys):
    code, out, _ = _run(["search", "--model", str(tiny_index.parent), "red sneakers", "--k", "3"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["#", "product_id", "label", "score"] and len(lines) == 4
    code, out, _ = _run(["search", "--model", str(tiny_index), "red sneakers", "--json"], capsys)
    assert code == 0 and len(json.loads(out)) == 10


@pytest.mark.parametrize("argv, message", [
    (["red", "--k", "0"], "k must be an integer >= 1"),
    (["red", "--k", "100000"], "k must be in 1.."),
    (["--similar", "no-such-id"], "unknown product_id: no-such-id"),
    (["  "], "non-empty string"),
    ([], "pass a QUERY"),
    (["red", "--k", "3000000000"], "got 3000000000"),  # #33: was "got -1294967296" (int32 wrap)
])
def test_bad_search_requests_exit_2(tiny_index, capsys, argv, message):
    code, _, err = _run(["search", "--model", str(tiny_index), *argv], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_rerank_beyond_int32_and_the_default_k_on_a_small_index(tiny_index, capsys):
    """#33: `--rerank 3000000000` wrapped to a negative int32 and re-ranked 2 products; a rerank
    with no --k asked for 10 products of a smaller index."""
    import tensorflow as tf

    size = int(tf.saved_model.load(str(tiny_index)).index.product_ids.shape[0])
    code, out, err = _run(["search", "--model", str(tiny_index), "red", "--rerank", "3000000000", "--json"], capsys)
    assert code == 0, err
    assert len(json.loads(out)) == min(10, size)
    from esr_tf.search.client import SearchClient

    class SevenProducts(SearchClient):  # as an index of 7 products would answer
        size = 7

    assert len(SevenProducts(tiny_index).search(["shoe"], rerank=5)[0]) == 7, "default k capped at the catalogue"


def test_rerank_0_is_retrieval_alone(tiny_index, capsys):
    """#34: `--rerank 0` runs `retrieve_top` (no model): retrieval's order, no labels."""
    code, out, err = _run(["search", "--model", str(tiny_index), "red sneakers", "--rerank", "0", "--k", "4",
                           "--json"], capsys)
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 4 and {h["label"] for h in hits} == {""}
    scores = [h["retrieval_score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and [h["score"] for h in hits] == scores


def test_evaluate_takes_k_and_refuses_bad_flags(tiny_index, tiny_catalogue, tmp_path, capsys):
    base = ["search", "--model", str(tiny_index), "--evaluate", "--data", str(tiny_catalogue.root)]
    code, out, _ = _run([*base, "--k", "3", "--no-upper-bound"], capsys)
    assert code == 0 and "recall@3" in json.loads(out)["reranked"] and json.loads(out)["k"] == 3
    code, _, err = _run([*base, "--rerank", "-5"], capsys)
    assert code == 2 and "--rerank must be an integer >= 1" in err
    empty = tmp_path / "nothing_judged"
    empty.mkdir()
    (empty / "products.csv").write_text("product_id,title,image\np1,Red shoe,\n")
    (empty / "examples.csv").write_text("query,product_id,label,split\nshoe,p1,irrelevant,test\n")
    code, _, err = _run(["search", "--model", str(tiny_index), "--evaluate", "--data", str(empty)], capsys)
    assert code == 2 and "no query of split 'test' has a judged exact product" in err and "Traceback" not in err
    other = tmp_path / "other_shop"  # its exact product is not in the index (#33: recall 0.0 without a word)
    other.mkdir()
    (other / "products.csv").write_text("product_id,title,image\nzz-not-indexed,Red shoe,\n")
    (other / "examples.csv").write_text("query,product_id,label,split\nred shoe,zz-not-indexed,exact,test\n")
    code, _, err = _run(["search", "--model", str(tiny_index), "--evaluate", "--data", str(other)], capsys)
    assert code == 2 and "the index holds none of the 1 exact products" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--similar", "a", "--complements", "b"], "not both"),
    (["red", "--similar", "a"], "a QUERY or --similar"),
    (["--similar", "a", "--k", "3"], "--k / --rerank apply to a QUERY"),
])
def test_flags_that_would_be_ignored_exit_2(tmp_path, capsys, argv, message):
    """#33: these ran only one of the flags (or ignored the query / k) silently."""
    code, _, err = _run(["search", "--model", str(tmp_path), *argv], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_similar_strips_the_id_and_index_flag_conflicts(tiny_index, tiny_trained, tmp_path, capsys):
    import tensorflow as tf

    pid = tf.saved_model.load(str(tiny_index)).index.product_ids.numpy()[0].decode()
    code, out, err = _run(["search", "--model", str(tiny_index), "--similar", f" {pid} ", "--json"], capsys)
    assert code == 0, err  # #33: said "unknown product_id" naming an id that exists
    model = str(tiny_trained.model_path)
    code, _, err = _run(["index", "--model", model, "--base", str(tmp_path), "--add", "x.csv", "--version", "7"],
                        capsys)
    assert code == 2 and "--version / --overwrite / --judgments are for --data" in err
    (tmp_path / "none.csv").write_text("product_id,title,image\n")
    code, _, err = _run(["index", "--model", model, "--base", str(tmp_path), "--add", str(tmp_path / "none.csv")],
                        capsys)
    assert code == 2 and "no products to add" in err


def test_remove_file_that_is_not_utf8_or_has_a_capitalised_header(tmp_path):
    from esr_tf.data import CatalogueError, read_product_ids

    (tmp_path / "bad.txt").write_bytes(b"p1\n\xff\xfe\n")
    with pytest.raises(CatalogueError, match=r"bad\.txt: not UTF-8 text \(byte 3\)"):
        read_product_ids(tmp_path / "bad.txt")
    (tmp_path / "ids.csv").write_text("Product_ID,title\np1,Red shoe\np2,Blue mug\n")
    assert read_product_ids(tmp_path / "ids.csv") == ["p1", "p2"]  # #33: the header was read as an id


def test_search_on_a_folder_without_an_index_exits_2(tmp_path, capsys):
    code, _, err = _run(["search", "--model", str(tmp_path), "red"], capsys)
    assert code == 2 and "no saved_model.pb" in err


def test_evaluate_over_the_whole_catalogue(tiny_index, tiny_catalogue, tmp_path, capsys):
    code, out, _ = _run(["search", "--model", str(tiny_index), "--evaluate", "--data", str(tiny_catalogue.root),
                         "--out", str(tmp_path)], capsys)
    assert code == 0
    report = json.loads((tmp_path / "search_metrics.json").read_text())
    assert report["catalogue_products"] == len(tiny_catalogue.products)
    for part in ("retrieval", "reranked", "whole_catalogue_reranked"):
        assert all(v is None or 0 <= v <= 1 for k, v in report[part].items() if not k.startswith("ms"))
    assert report["judgments"].startswith("judged pairs") and "count as irrelevant" in report["judgments"]
    assert {"recall@10", "ndcg@10"} <= set(report["retrieval"])  # retrieval alone, the bar for re-ranking (#31)
    # #31: complete judgments (the demo shop's qrels.csv): every relevant product counts
    qrels = tiny_catalogue.root / "qrels.csv"
    code, out, _ = _run(["search", "--model", str(tiny_index), "--evaluate", "--data", str(tiny_catalogue.root),
                         "--judgments", str(qrels), "--no-upper-bound"], capsys)
    complete = json.loads(out)
    assert code == 0 and complete["judgments"].startswith(f"complete ({qrels})")
    assert complete["queries"] == report["queries"]  # every judged test query has an exact product
    bad = tmp_path / "bad_qrels.csv"
    bad.write_text("query_id,product_id,label\nq00001,no-such-product,E\n")
    code, _, err = _run(["search", "--model", str(tiny_index), "--evaluate", "--data", str(tiny_catalogue.root),
                         "--judgments", str(bad)], capsys)
    assert code == 2 and "bad_qrels.csv, row 1, column 'product_id'" in err and "Traceback" not in err


def test_index_flags_and_missing_retrieval_model(tiny_trained, tmp_path, capsys):
    model = str(tiny_trained.model_path)
    code, _, err = _run(["index", "--model", model, "--base", str(tmp_path), "--data", "x", "--add", "y"], capsys)
    assert code == 2 and "--data" in err
    code, _, err = _run(["index", "--model", model, "--base", str(tmp_path), "--data", str(tmp_path),
                         "--retrieval", str(tmp_path / "none.keras")], capsys)
    assert code == 2 and "no retrieval model" in err


@pytest.mark.slow
def test_index_add_and_remove_from_the_command_line(tiny_trained, tiny_catalogue, tiny_index, tmp_path, capsys):
    import shutil

    import tensorflow as tf

    from esr_tf.search.ranking import blend_weights

    model, base = str(tiny_trained.model_path), tmp_path / "models"
    shutil.copytree(tiny_index, base / "shop" / "1")  # version 1 as `esr-tf index --data` wrote it
    info = base / "shop" / "1" / "assets.extra" / "esr_tf_index.json"
    rerank = {"rerank_weight": 0.3, "chosen_on": "a test"}
    info.write_text(json.dumps({**json.loads(info.read_text()), "rerank": rerank}))
    (tmp_path / "more.csv").write_text("product_id,title,image\nnew-9,Zorblax quantum teapot,\n")
    gone = next(iter(tiny_catalogue.products))
    (tmp_path / "gone.txt").write_text(gone + "\n")
    code, out, _ = _run(["index", "--model", model, "--base", str(base), "--name", "shop", "--add",
                         str(tmp_path / "more.csv"), "--remove", str(tmp_path / "gone.txt"), "--no-verify"], capsys)
    assert code == 0 and "shop/2" in out
    # the ranking chosen when the catalogue was indexed carries over to the next version (#31)
    assert json.loads((base / "shop" / "2" / "assets.extra" / "esr_tf_index.json").read_text())["rerank"] == rerank
    reader = tf.train.load_checkpoint(str(base / "shop" / "2" / "variables" / "variables"))
    (key,) = [k for k in reader.get_variable_to_shape_map() if "rank_weights" in k]
    assert reader.get_tensor(key).tolist() == blend_weights(0.3, 4).tolist()  # a blend recorded before the list head
    code, out, _ = _run(["search", "--model", f"{base}/shop", "zorblax quantum teapot", "--json",
                         "--k", str(len(tiny_catalogue.products))], capsys)
    ids = [h["product_id"] for h in json.loads(out)]
    assert "new-9" in ids and gone not in ids and len(ids) == len(tiny_catalogue.products)
    code, out, _ = _run(["search", "--model", f"{base}/shop", "--similar", "new-9", "--json"], capsys)
    assert code == 0 and "new-9" not in [h["product_id"] for h in json.loads(out)]
    # the products kept keep their stored vectors, bit for bit; version 1 stays as it was
    from esr_tf.search.catalogue import read_index

    old, now = read_index(base / "shop" / "1"), read_index(base / "shop" / "2")
    keep = [i for i, p in enumerate(old.product_ids) if p != gone]
    np.testing.assert_array_equal(now.embeddings[: len(keep)], old.embeddings[keep])
    assert len(old) == len(tiny_catalogue.products)
    code, _, err = _run(["index", "--model", model, "--base", str(base), "--name", "shop", "--remove",
                         str(tmp_path / "gone.txt")], capsys)
    assert code == 2 and "unknown product ids" in err
    code, _, err = _run(["index", "--model", model, "--base", str(base), "--name", "shop", "--add",
                         str(tmp_path / "more.csv"), "--judgments", str(tmp_path / "qrels.csv")], capsys)
    assert code == 2 and "--judgments are for --data" in err


def test_index_of_an_empty_catalogue_exits_2(tiny_trained, tmp_path, capsys):
    (tmp_path / "products.csv").write_text("product_id,title,image\n")
    (tmp_path / "examples.csv").write_text("query,product_id,label\n")
    code, _, err = _run(["index", "--model", str(tiny_trained.model_path), "--data", str(tmp_path),
                         "--base", str(tmp_path / "models")], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_every_export_command_runs_the_cpp_check_by_default(tmp_path, monkeypatch, capsys):
    """#28: `esr-tf export` and `esr-tf index` verify in C++ unless told not to (`--no-cpp`)."""
    import inspect

    import esr_tf.data as data
    import esr_tf.export.saved_model as saved_model
    import esr_tf.export.verify as verify
    import esr_tf.models.builder as builder
    import esr_tf.search.cli as cli_search
    import esr_tf.search.index as index_export
    from esr_tf.demo import run_demo

    version = tmp_path / "m" / "1"
    (version / "assets.extra").mkdir(parents=True)
    (version / "assets.extra" / "esr_tf_index.json").write_text('{"products": 1, "photos": 0}')
    seen = []
    monkeypatch.setattr(verify, "verify_export", lambda path, cpp=True: seen.append(cpp) or {"ok": True})
    listings = []  # whether the saved_model_cli listing was printed
    monkeypatch.setattr(verify, "format_report", lambda report, signatures=True: listings.append(signatures) or "PASS")
    monkeypatch.setattr(builder, "load_model", lambda path: None)
    monkeypatch.setattr(saved_model, "export_saved_model", lambda *a, **k: version)
    monkeypatch.setattr(cli_search, "_load_models", lambda args: (type("M", (), {"label_set": None})(), None))
    monkeypatch.setattr(data, "load_catalogue", lambda *a, **k: type("C", (), {"products": {}})())
    monkeypatch.setattr(index_export, "export_search_index", lambda *a, **k: version)
    assert _run(["export", "--model", "m.keras", "--base", str(tmp_path)], capsys)[0] == 0
    assert _run(["index", "--model", "m.keras", "--base", str(tmp_path), "--data", "d"], capsys)[0] == 0
    assert _run(["verify", str(version)], capsys)[0] == 0
    assert seen == [True, True, True]
    assert listings == [False, False, True]  # `export` / `index` print the listing with -v only, `verify` always
    assert _run(["index", "--model", "m.keras", "--base", str(tmp_path), "--data", "d", "--no-cpp"], capsys)[0] == 0
    assert seen[-1] is False
    assert inspect.signature(verify.verify_export).parameters["cpp"].default is True
    assert inspect.signature(run_demo).parameters["cpp"].default is True


def test_result_table_prints_whole_ids_and_aligns_wide_characters():
    """#33 item 6: ids were cut to 16 characters (two printed the same) and CJK / emoji titles
    broke the columns."""
    import unicodedata

    from esr_tf.search.cli import _table

    rows = [{"product_id": "shop-sku-0000000001", "label": "exact", "score": 0.9, "title": "赤い靴 🙂"},
            {"product_id": "shop-sku-0000000002", "label": "substitute", "score": 0.5, "title": "x" * 100},
            {"product_id": "靴-1", "label": "irrelevant", "score": 0.1, "title": "shoe"}]
    lines = _table(rows).splitlines()
    assert "shop-sku-0000000001" in lines[1] and "shop-sku-0000000002" in lines[2]

    def columns(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

    pairs = zip(lines[1:], rows, strict=True)
    score_ends = {columns(line[: line.index(f"{row['score']:.3f}") + 5]) for line, row in pairs}
    assert len(score_ends) == 1, "the title column starts at the same place on every row"
    assert columns(lines[2]) <= 120 and lines[2].endswith("…")
