"""The ESCI parquet loader on a small fixture with the published schema and dtypes."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_helpers import (
    ESCI_EXAMPLES_SCHEMA,
    esci_example_rows,
    esci_product_rows,
    image_bytes,
    write_esci,
)

from esr_tf.data import CatalogueError, load_esci
from esr_tf.data.catalogue import hash_fraction, normalize_query


def _expected(version="small", locale="us", split=None, valid_fraction=0.1):
    """The filter + split rules of the module docstring, computed independently."""
    out = []
    for r in esci_example_rows():
        if version != "all" and r[f"{version}_version"] != 1:
            continue
        if locale is not None and r["product_locale"] != locale:
            continue
        ours = r["split"]
        if ours == "train" and hash_fraction(normalize_query(r["query"]), "valid") < valid_fraction:
            ours = "valid"
        if split is None or ours == split:
            out.append((r["query"], r["product_id"], "ESCI".index(r["esci_label"]), ours))
    return out


def _got(cat):
    return [(e.query, e.product_id.split(":")[-1], e.label, e.split) for e in cat.examples]


def test_fixture_has_the_published_schema(esci_files):
    ex, pr = esci_files
    assert pq.read_schema(ex).types == [pa.int64(), pa.string(), pa.int64(), pa.string(),
                                        pa.string(), pa.string(), pa.int64(), pa.int64(),
                                        pa.string()]
    assert pq.read_schema(pr).names == ["product_id", "product_title", "product_description",
                                        "product_bullet_point", "product_brand", "product_color",
                                        "product_locale"]


def test_default_small_us(esci_files):
    cat = load_esci(*esci_files)
    assert _got(cat) == _expected()
    assert "B004" not in cat.products  # large_version only
    assert {"train", "valid", "test"} == set(cat.splits())
    # Joined on (locale, product_id): the us title, not the es one.
    shoe = cat.products["B001"]
    assert shoe.title == "Red Running Shoe" and shoe.brand == "Acme" and shoe.color == "Red"
    assert shoe.description == "Light and fast" and shoe.bullets == "Mesh upper"  # HTML removed
    assert cat.products["B005"].title == ""
    assert cat.products["B999"].title == ""  # left join: no product row
    assert cat.fixes == {"title_missing": 1, "product_not_found": 1}
    assert "B007" not in cat.products  # products nobody judged are not loaded
    cols = cat.columns("test")
    assert cols["query_id"].tolist() == ["2", "2", "2"]
    assert cols["title"].tolist() == ["Running Socks", "", ""]


@pytest.mark.parametrize("version", ["small", "large", "all"])
@pytest.mark.parametrize("locale", ["us", "es", "jp", None])
def test_version_and_locale_filters(esci_files, version, locale):
    cat = load_esci(*esci_files, version=version, locale=locale)
    assert _got(cat) == _expected(version, locale)


def test_all_locales_prefix_product_ids(esci_files):
    cat = load_esci(*esci_files, locale=None)
    assert cat.products["us:B001"].title == "Red Running Shoe"
    assert cat.products["es:B001"].title == "Zapatilla roja"
    assert cat.products["jp:B006"].title == "青い靴"


def test_splits_and_valid_carve_out(esci_files):
    full = load_esci(*esci_files)
    parts = {s: load_esci(*esci_files, split=s) for s in ("train", "valid", "test")}
    for s, cat in parts.items():
        assert _got(cat) == _expected(split=s)
    assert sum(len(c.examples) for c in parts.values()) == len(full.examples)
    queries = {s: {e.query for e in c.examples} for s, c in parts.items()}
    assert queries["valid"] and not queries["valid"] & queries["train"]
    assert not queries["test"] & (queries["train"] | queries["valid"])
    published = load_esci(*esci_files, valid_fraction=0.0)
    assert published.splits() == ["train", "test"]


def test_image_dir(tmp_path, esci_files):
    images = tmp_path / "images"
    images.mkdir()
    (images / "B001.jpg").write_bytes(image_bytes("JPEG"))
    (images / "B002.png").write_bytes(image_bytes("PNG"))
    (images / "B003.jpg").write_bytes(b"")  # empty file
    (images / "notes.txt").write_text("ignored")
    cat = load_esci(*esci_files, image_dir=images)
    assert cat.products["B001"].image == str((images / "B001.jpg").resolve())
    assert cat.products["B002"].image.endswith("B002.png")
    assert cat.products["B003"].image == ""
    assert cat.image_problems == {"empty_file": 1, "missing_file": 2}  # B005, B999 have none
    with pytest.raises(CatalogueError) as err:
        load_esci(*esci_files, image_dir=images, missing_images="error")
    msg = str(err.value)
    assert "shopping_queries_dataset_examples.parquet" in msg and "'product_id'" in msg
    assert "B003" in msg and "empty_file" in msg


def test_image_dir_symlink_outside_is_refused(tmp_path, esci_files):
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "secret.jpg").write_bytes(image_bytes())
    os.symlink(tmp_path / "secret.jpg", images / "B001.jpg")
    with pytest.raises(CatalogueError, match="outside"):
        load_esci(*esci_files, image_dir=images)


def test_missing_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "esci_label"} for r in esci_example_rows()]
    schema = pa.schema([f for f in ESCI_EXAMPLES_SCHEMA if f.name != "esci_label"])
    ex, pr = write_esci(tmp_path, examples=rows, examples_schema=schema)
    with pytest.raises(CatalogueError) as err:
        load_esci(ex, pr)
    assert "shopping_queries_dataset_examples.parquet" in str(err.value)
    assert "'esci_label'" in str(err.value)
    # Only the version column asked for is required.
    rows = [{k: v for k, v in r.items() if k != "large_version"} for r in esci_example_rows()]
    schema = pa.schema([f for f in ESCI_EXAMPLES_SCHEMA if f.name != "large_version"])
    ex, pr = write_esci(tmp_path / "b", examples=rows, examples_schema=schema)
    assert len(load_esci(ex, pr, version="small").examples) == len(_expected())
    with pytest.raises(CatalogueError, match="'large_version'"):
        load_esci(ex, pr, version="large")


def test_missing_product_column(tmp_path):
    ex, pr = write_esci(tmp_path)
    table = pq.read_table(pr).drop_columns(["product_title"])
    pq.write_table(table, pr)
    with pytest.raises(CatalogueError, match=r"products.parquet.*'product_title'"):
        load_esci(ex, pr)


def test_bad_label_and_empty_query(tmp_path):
    rows = esci_example_rows()
    rows[2]["esci_label"] = "X"
    ex, pr = write_esci(tmp_path / "a", examples=rows)
    with pytest.raises(CatalogueError) as err:
        load_esci(ex, pr)
    assert "row 3" in str(err.value) and "'esci_label'" in str(err.value)
    rows = esci_example_rows()
    rows[4]["query"] = ""
    ex, pr = write_esci(tmp_path / "b", examples=rows)
    with pytest.raises(CatalogueError, match=r"examples.parquet, row 5, column 'query'"):
        load_esci(ex, pr)


def test_duplicated_product_in_a_locale(tmp_path):
    products = esci_product_rows() + [esci_product_rows()[0]]
    ex, pr = write_esci(tmp_path, products=products)
    with pytest.raises(CatalogueError, match=r"duplicated product 'B001' in locale 'us'"):
        load_esci(ex, pr)


def test_not_parquet(tmp_path, esci_files):
    bad = tmp_path / "bad.parquet"
    bad.write_text("nope")
    with pytest.raises(CatalogueError, match="bad.parquet: cannot read as parquet"):
        load_esci(bad, esci_files[1])


@pytest.mark.parametrize("kwargs", [{"version": "medium"}, {"split": "dev"}, {"locale": "fr"},
                                    {"valid_fraction": 1.0}, {"missing_images": "skip"}])
def test_bad_arguments(esci_files, kwargs):
    with pytest.raises(ValueError):
        load_esci(*esci_files, **kwargs)


def test_text_truncation(esci_files):
    cat = load_esci(*esci_files, max_text_chars=8)
    assert cat.products["B001"].title == "Red Runn"
    assert cat.fixes["text_truncated"] >= 3
