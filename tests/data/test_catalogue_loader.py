"""The generic CSV / JSONL catalogue folder: parsing, splits, validation errors, fallbacks."""

from __future__ import annotations

import copy
import io
import logging
import os

import numpy as np
import pytest
from data_helpers import EXAMPLES, PRODUCTS, huge_header, image_bytes, write_rows
from PIL import Image

from esr_tf.data import Catalogue, CatalogueError, describe_catalogue, load_catalogue
from esr_tf.data.catalogue import derive_query_id, hash_split
from esr_tf.labels import ESCI, LabelSet


def _products(**changes):
    """PRODUCTS with row `i` updated: _products(**{"1": {"title": ...}})."""
    rows = copy.deepcopy(PRODUCTS)
    for index, change in changes.items():
        rows[int(index)].update(change)
    return rows


def test_loads_csv(make_catalogue):
    root = make_catalogue()
    cat = load_catalogue(root)
    assert isinstance(cat, Catalogue) and cat.label_set == ESCI
    assert sorted(cat.products) == ["p1", "p2", "p3", "p4"]
    assert cat.products["p1"].image == str((root / "images" / "p1.jpg").resolve())
    assert cat.products["p3"].image == ""
    assert [e.label for e in cat.examples] == [0, 1, 2, 3, 0, 3]
    assert cat.image_problems == {} and cat.fixes == {}
    cols = cat.columns()
    assert set(cols) == {"query", "query_id", "product_id", "title", "description", "brand",
                         "color", "bullets", "image", "label", "weight", "split"}
    assert cols["label"].dtype == np.int32
    assert cols["weight"].dtype == np.float32 and (cols["weight"] == 1).all()  # judged pairs weigh 1
    assert all(cols[k].dtype == object for k in cols if k not in ("label", "weight"))
    assert cols["title"][0] == "Red canvas sneaker"
    # Derived query ids and splits are stable functions of the query text.
    assert cols["query_id"][0] == derive_query_id("red sneaker") == derive_query_id(" Red  SNEAKER")
    assert cols["split"][0] == hash_split("red sneaker")
    summary = describe_catalogue(cat)
    assert summary["products"] == 4 and summary["examples"] == 6 and summary["queries"] == 2


def test_jsonl_equals_csv(make_catalogue):
    csv_cat = load_catalogue(make_catalogue(folder="a"))
    json_cat = load_catalogue(make_catalogue(fmt="jsonl", folder="b"))
    a, b = csv_cat.columns(), json_cat.columns()
    for key in a:
        if key != "image":
            assert a[key].tolist() == b[key].tolist(), key
    assert [os.path.basename(p) for p in a["image"]] == [os.path.basename(p) for p in b["image"]]


def test_given_split_and_query_id_are_kept(make_catalogue):
    examples = [dict(e, split="valid" if e["query"] == "red sneaker" else "TEST",
                     query_id="Q" + e["query"][:3]) for e in EXAMPLES]
    cat = load_catalogue(make_catalogue(examples=examples))
    assert cat.splits() == ["valid", "test"]
    assert set(cat.columns("valid")["query_id"]) == {"Qred"}
    assert len(cat.columns("test")["label"]) == 2


def test_hash_split_is_by_query_and_near_80_10_10():
    queries = [f"query number {i}" for i in range(3000)]
    splits = [hash_split(q) for q in queries]
    share = {s: splits.count(s) / len(splits) for s in ("train", "valid", "test")}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["valid"] - 0.1) < 0.02
    assert all(hash_split(q.upper() + "  ") == s for q, s in zip(queries[:50], splits[:50],
                                                                strict=True))


def test_query_in_two_splits_is_refused(make_catalogue):
    examples = [dict(e, split="train") for e in EXAMPLES]
    examples[3]["split"] = "test"
    with pytest.raises(CatalogueError) as err:
        load_catalogue(make_catalogue(examples=examples))
    msg = str(err.value)
    assert "examples.csv" in msg and "row 4" in msg and "'split'" in msg and "row 1" in msg


@pytest.mark.parametrize("kind,column", [("products", "title"), ("examples", "label")])
def test_missing_required_column(make_catalogue, kind, column):
    rows = copy.deepcopy(PRODUCTS if kind == "products" else EXAMPLES)
    for r in rows:
        del r[column]
    root = make_catalogue(**{kind: rows})
    with pytest.raises(CatalogueError) as err:
        load_catalogue(root)
    assert f"{kind}.csv" in str(err.value) and repr(column) in str(err.value)


def test_missing_required_jsonl_field(make_catalogue):
    rows = copy.deepcopy(PRODUCTS)
    del rows[1]["title"]
    with pytest.raises(CatalogueError) as err:
        load_catalogue(make_catalogue(products=rows, fmt="jsonl"))
    msg = str(err.value)
    assert "products.jsonl" in msg and "line 2" in msg and "'title'" in msg


def test_unknown_label(make_catalogue):
    examples = copy.deepcopy(EXAMPLES)
    examples[1]["label"] = "maybe"
    with pytest.raises(CatalogueError) as err:
        load_catalogue(make_catalogue(examples=examples))
    msg = str(err.value)
    assert "examples.csv" in msg and "row 2" in msg and "'label'" in msg and "'maybe'" in msg


def test_duplicated_product_id(make_catalogue):
    rows = _products(**{"2": {"product_id": "p1"}})
    with pytest.raises(CatalogueError) as err:
        load_catalogue(make_catalogue(products=rows))
    msg = str(err.value)
    assert "products.csv" in msg and "row 3" in msg and "'product_id'" in msg
    assert "'p1'" in msg and "row 1" in msg


def test_unknown_product(make_catalogue):
    examples = copy.deepcopy(EXAMPLES)
    examples[4]["product_id"] = "p404"
    with pytest.raises(CatalogueError) as err:
        load_catalogue(make_catalogue(examples=examples))
    msg = str(err.value)
    assert "examples.csv" in msg and "row 5" in msg and "'product_id'" in msg and "p404" in msg


def test_empty_query(make_catalogue):
    examples = copy.deepcopy(EXAMPLES)
    examples[2]["query"] = "   "
    with pytest.raises(CatalogueError) as err:
        load_catalogue(make_catalogue(examples=examples))
    msg = str(err.value)
    assert "examples.csv" in msg and "row 3" in msg and "'query'" in msg


def test_duplicated_pair(make_catalogue):
    examples = copy.deepcopy(EXAMPLES) + [dict(EXAMPLES[0], label="S")]
    with pytest.raises(CatalogueError, match=r"row 7.*second time.*row 1"):
        load_catalogue(make_catalogue(examples=examples))


def test_unknown_split(make_catalogue):
    examples = [dict(e, split="holdout") for e in EXAMPLES]
    with pytest.raises(CatalogueError, match=r"examples.csv, row 1, column 'split'.*holdout"):
        load_catalogue(make_catalogue(examples=examples))


def test_non_utf8_csv_names_row_and_column(make_catalogue):
    root = make_catalogue()
    data = (root / "products.csv").read_bytes().replace(b"Wool sock", b"W\xf6ol sock")
    (root / "products.csv").write_bytes(data)
    with pytest.raises(CatalogueError) as err:
        load_catalogue(root)
    msg = str(err.value)
    assert "products.csv" in msg and "row 3" in msg and "'title'" in msg and "UTF-8" in msg


def test_non_utf8_jsonl_names_line(make_catalogue):
    root = make_catalogue(fmt="jsonl")
    lines = (root / "examples.jsonl").read_bytes().split(b"\n")
    lines[4] = lines[4].replace(b"blue", b"bl\xfce")
    (root / "examples.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(CatalogueError) as err:
        load_catalogue(root)
    msg = str(err.value)
    assert "examples.jsonl" in msg and "line 5" in msg and "UTF-8" in msg


def test_malformed_rows(make_catalogue):
    root = make_catalogue()
    with open(root / "examples.csv", "a") as f:
        f.write("red sneaker,p1\n")
    with pytest.raises(CatalogueError, match=r"examples.csv, row 7 \(line 8\): 2 fields"):
        load_catalogue(root)
    root = make_catalogue(fmt="jsonl", folder="j")
    with open(root / "products.jsonl", "a") as f:
        f.write('{"product_id": "p9", "title": \n')
    with pytest.raises(CatalogueError, match=r"products.jsonl, line 5: invalid JSON"):
        load_catalogue(root)


def test_folder_problems(tmp_path, make_catalogue):
    with pytest.raises(CatalogueError, match="not a folder"):
        load_catalogue(tmp_path / "nowhere")
    root = make_catalogue()
    (root / "examples.csv").unlink()
    with pytest.raises(CatalogueError, match="no examples.csv or examples.jsonl"):
        load_catalogue(root)
    with pytest.raises(ValueError, match="missing_images"):
        load_catalogue(make_catalogue(folder="x"), missing_images="skip")


@pytest.mark.parametrize("policy", ["error", "no_image"])
@pytest.mark.parametrize("path", ["../outside.jpg", "/etc/passwd", "images/link.jpg"])
def test_escaping_image_paths_are_always_refused(tmp_path, make_catalogue, policy, path):
    (tmp_path / "outside.jpg").write_bytes(image_bytes())
    root = make_catalogue(products=_products(**{"1": {"image": path}}))
    os.symlink(tmp_path / "outside.jpg", root / "images" / "link.jpg")
    with pytest.raises(CatalogueError) as err:
        load_catalogue(root, missing_images=policy)
    msg = str(err.value)
    assert "products.csv" in msg and "row 2" in msg and "'image'" in msg


BAD_IMAGES = {
    "missing_file": None,
    "empty_file": b"",
    "not_an_image": b"<html>not a photo</html>",
    "truncated": "truncated",
    "too_large": "huge",
}


def _bad_image_catalogue(make_catalogue, reason: str):
    rows = _products(**{"1": {"image": f"images/{reason}.jpg"}})
    root = make_catalogue(products=rows)
    content = BAD_IMAGES[reason]
    if content == "truncated":
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, "JPEG")
        content = buffer.getvalue()[:1500]
    elif content == "huge":
        content = huge_header("JPEG", 9000, 9000)
    if content is not None:
        (root / "images" / f"{reason}.jpg").write_bytes(content)
    return root


@pytest.mark.parametrize("reason", list(BAD_IMAGES))
def test_bad_image_files_raise_under_error(make_catalogue, reason):
    root = _bad_image_catalogue(make_catalogue, reason)
    with pytest.raises(CatalogueError) as err:
        load_catalogue(root, missing_images="error")
    msg = str(err.value)
    assert "products.csv" in msg and "row 2" in msg and "'image'" in msg
    assert f"images/{reason}.jpg" in msg and reason in msg


@pytest.mark.parametrize("reason", list(BAD_IMAGES))
def test_bad_image_files_fall_back_under_no_image(make_catalogue, caplog, reason):
    root = _bad_image_catalogue(make_catalogue, reason)
    with caplog.at_level(logging.WARNING, logger="esr_tf.data"):
        cat = load_catalogue(root, missing_images="no_image")
    assert cat.products["p2"].image == ""
    assert cat.products["p1"].image != ""
    assert cat.image_problems == {reason: 1}
    warnings = [r for r in caplog.records if r.name == "esr_tf.data"]
    assert len(warnings) == 1 and reason in warnings[0].getMessage()


def test_shared_image_counts_per_product(make_catalogue):
    rows = _products(**{"2": {"image": "images/gone.jpg"}, "3": {"image": "images/gone.jpg"}})
    cat = load_catalogue(make_catalogue(products=rows), missing_images="no_image")
    assert cat.image_problems == {"missing_file": 2}


def test_over_long_text_is_truncated_and_counted(make_catalogue):
    rows = _products(**{"0": {"title": "x" * 50}, "1": {"description": "y" * 80}})
    cat = load_catalogue(make_catalogue(products=rows), max_text_chars=40)
    assert cat.products["p1"].title == "x" * 40
    assert len(cat.products["p2"].description) == 40
    assert cat.fixes == {"text_truncated": 2}
    # Longer than the csv module's default cell limit (128 KiB).
    rows = _products(**{"0": {"description": "z" * 300_000}})
    cat = load_catalogue(make_catalogue(products=rows, folder="long"))
    assert len(cat.products["p1"].description) == 2000
    assert cat.fixes == {"text_truncated": 1}


def test_empty_title_is_counted(make_catalogue):
    cat = load_catalogue(make_catalogue(products=_products(**{"3": {"title": ""}})))
    assert cat.products["p4"].title == "" and cat.fixes == {"title_empty": 1}


def test_custom_label_set(make_catalogue):
    binary = LabelSet(names=("relevant", "irrelevant"), codes=("R", "N"), gains=(1.0, 0.0))
    examples = [dict(e, label="R" if e["label"].lower() in ("e", "exact") else "irrelevant")
                for e in EXAMPLES]
    cat = load_catalogue(make_catalogue(examples=examples), label_set=binary)
    assert cat.label_set is binary
    assert cat.columns()["label"].tolist() == [0, 1, 1, 1, 0, 1]
    assert cat.label_counts() == {"relevant": 2, "irrelevant": 4}
    with pytest.raises(CatalogueError, match="row 1, column 'label'"):
        load_catalogue(make_catalogue(folder="esci"), label_set=binary)


def test_bom_and_column_case_are_tolerated(tmp_path):
    root = tmp_path / "cat"
    write_rows(root / "products.csv", [{"Product_ID": "a", " Title ": "Mug"}])
    write_rows(root / "examples.csv", [{"QUERY": "mug", "product_id": "a", "Label": "E"}])
    data = (root / "products.csv").read_bytes()
    (root / "products.csv").write_bytes(b"\xef\xbb\xbf" + data)
    assert load_catalogue(root).products["a"].title == "Mug"
