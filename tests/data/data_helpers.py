"""Helpers for the data-layer tests: tiny image files, catalogue rows, ESCI parquet files."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def image_bytes(fmt: str = "JPEG", size=(24, 16), colour="red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def huge_header(fmt: str, width: int = 10000, height: int = 10000) -> bytes:
    """A small valid image whose header is patched to declare `width` x `height` pixels."""
    data = bytearray(image_bytes(fmt))
    if fmt == "PNG":  # IHDR data at 16..24, its CRC over type + data at 29..33
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    elif fmt == "JPEG":  # SOF0: marker, length, precision, then height, width
        sof = data.find(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    elif fmt == "GIF":  # logical screen size
        data[6:10] = struct.pack("<HH", width, height)
    elif fmt == "BMP":  # BITMAPINFOHEADER width, height
        data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def write_rows(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """Writes `rows` as CSV (header = `columns` or the first row's keys) or JSONL by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    columns = columns or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


PRODUCTS = [
    {"product_id": "p1", "title": "Red canvas sneaker", "description": "A shoe.", "brand": "Acme",
     "color": "red", "image": "images/p1.jpg"},
    {"product_id": "p2", "title": "Blue sneaker", "description": "", "brand": "Acme",
     "color": "blue", "image": "images/p2.png"},
    {"product_id": "p3", "title": "Wool sock", "description": "Warm.", "brand": "Bobo",
     "color": "", "image": ""},
    {"product_id": "p4", "title": "Ceramic mug", "description": "", "brand": "", "color": "",
     "image": ""},
]
EXAMPLES = [
    {"query": "red sneaker", "product_id": "p1", "label": "E"},
    {"query": "red sneaker", "product_id": "p2", "label": "substitute"},
    {"query": "red sneaker", "product_id": "p3", "label": "c"},
    {"query": "red sneaker", "product_id": "p4", "label": "IRRELEVANT"},
    {"query": "blue sneaker", "product_id": "p2", "label": "Exact"},
    {"query": "blue sneaker", "product_id": "p4", "label": "i"},
]


# --- ESCI parquet fixture with the published schema and dtypes --------------------------------
ESCI_EXAMPLES_SCHEMA = pa.schema([
    ("example_id", pa.int64()), ("query", pa.string()), ("query_id", pa.int64()),
    ("product_id", pa.string()), ("product_locale", pa.string()), ("esci_label", pa.string()),
    ("small_version", pa.int64()), ("large_version", pa.int64()), ("split", pa.string()),
])
ESCI_PRODUCTS_SCHEMA = pa.schema([
    ("product_id", pa.string()), ("product_title", pa.string()),
    ("product_description", pa.string()), ("product_bullet_point", pa.string()),
    ("product_brand", pa.string()), ("product_color", pa.string()),
    ("product_locale", pa.string()),
])


def esci_example_rows() -> list[dict]:
    """(query, query_id, product, locale, label, small, large, split) covering every filter."""
    rows = [
        ("red shoes", 1, "B001", "us", "E", 1, 1, "train"),
        ("red shoes", 1, "B002", "us", "S", 1, 1, "train"),
        ("red shoes", 1, "B003", "us", "C", 1, 1, "train"),
        ("red shoes", 1, "B004", "us", "I", 0, 1, "train"),  # large only
        ("blue mug", 2, "B003", "us", "E", 1, 1, "test"),
        ("blue mug", 2, "B005", "us", "I", 1, 1, "test"),  # title is null
        ("blue mug", 2, "B999", "us", "S", 1, 1, "test"),  # not in the products file
        ("zapatos rojos", 3, "B001", "es", "E", 1, 1, "train"),
        ("赤い靴", 4, "B006", "jp", "S", 1, 1, "test"),
    ]
    # Many one-pair train queries, so the valid carve-out gets some.
    rows += [(f"query {i}", 100 + i, "B002", "us", "E", 1, 1, "train") for i in range(40)]
    keys = ("query", "query_id", "product_id", "product_locale", "esci_label", "small_version",
            "large_version", "split")
    return [{"example_id": i, **dict(zip(keys, r, strict=True))} for i, r in enumerate(rows)]


def esci_product_rows() -> list[dict]:
    def p(pid, locale, title, desc=None, bullets=None, brand=None, color=None):
        return {"product_id": pid, "product_title": title, "product_description": desc,
                "product_bullet_point": bullets, "product_brand": brand, "product_color": color,
                "product_locale": locale}

    return [
        p("B001", "us", "Red Running Shoe", "<p>Light <b>and</b> fast</p>", "Mesh upper",
          "Acme", "Red"),
        p("B001", "es", "Zapatilla roja", "Ligera"),  # same id, other locale
        p("B002", "us", "Blue Running Shoe", None, None, "Acme", "Blue"),
        p("B003", "us", "Running Socks"),
        p("B004", "us", "Garden Hose"),
        p("B005", "us", None, "no title here"),
        p("B006", "jp", "青い靴"),
        p("B007", "us", "Never judged"),
    ]


def write_esci(folder: Path, examples=None, products=None,
               examples_schema=ESCI_EXAMPLES_SCHEMA) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ex_path = folder / "shopping_queries_dataset_examples.parquet"
    pr_path = folder / "shopping_queries_dataset_products.parquet"
    ex = esci_example_rows() if examples is None else examples
    pr = esci_product_rows() if products is None else products
    pq.write_table(pa.Table.from_pylist(ex, schema=examples_schema), ex_path)
    pq.write_table(pa.Table.from_pylist(pr, schema=ESCI_PRODUCTS_SCHEMA), pr_path)
    return ex_path, pr_path
