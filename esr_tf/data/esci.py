"""Loader for the Amazon Shopping Queries (ESCI) dataset as published, in parquet.

Reads `shopping_queries_dataset_examples.parquet` (example_id, query, query_id, product_id,
product_locale, esci_label, small_version, large_version, split) and LEFT-joins
`shopping_queries_dataset_products.parquet` (product_id, product_title, product_description,
product_bullet_point, product_brand, product_color, product_locale) on (product_locale,
product_id), with pyarrow only (no pandas).

Filters: `version` "small" (small_version == 1, the paper's task 1 set), "large"
(large_version == 1) or "all"; `locale` "us" / "es" / "jp" (None keeps all three; product ids
then become "<locale>:<product_id>", as one ASIN may differ between locales); `split`.

Splits: the dataset publishes only train and test. A validation split is carved out of train
here, deterministically by a hash of the normalised query text (`valid_fraction`, 10 % by
default; 0 keeps the published train intact). So `split="train"` is the published train minus
that carve-out, `split="valid"` the carve-out, `split="test"` the published test.

Fallbacks, counted in `Catalogue.fixes`: `title_missing` (null title -> ""), `product_not_found`
(no product row for an example: the left join gives an empty product), `text_truncated`.
The description is the product description with HTML tags removed; the bullet points go to
`Product.bullets` (both readable by the model through `model.product_text`).

Images are not part of ESCI. `image_dir` may hold one file per product named
`<product_id>.jpg` (or .jpeg / .png / .gif / .bmp / .webp); products without a usable file get no
image and are counted in `Catalogue.image_problems` (`missing_images="no_image"`, the default).

Example (paths of the downloaded files):
>>> cat = load_esci("shopping_queries_dataset_examples.parquet",
...                 "shopping_queries_dataset_products.parquet", split="test")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from esr_tf.data.catalogue import (
    Catalogue,
    CatalogueError,
    Example,
    ImagePolicy,
    Product,
    TextFixer,
    hash_fraction,
    locate,
    normalize_query,
)
from esr_tf.data.image_files import IMAGE_SUFFIXES, resolve_inside
from esr_tf.labels import ESCI, LabelSet

EXAMPLE_COLUMNS = ("query", "query_id", "product_id", "product_locale", "esci_label", "split")
PRODUCT_COLUMNS = ("product_id", "product_locale", "product_title")
PRODUCT_OPTIONAL = ("product_description", "product_bullet_point", "product_brand", "product_color")
VERSIONS = ("small", "large", "all")
LOCALES = ("us", "es", "jp")
_TAG = re.compile(r"<[^>]{0,200}>")


def _schema_names(path: Path, required: tuple[str, ...]) -> list[str]:
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as e:
        raise CatalogueError(f"{path}: cannot read as parquet ({e})") from None
    missing = [c for c in required if c not in names]
    if missing:
        raise CatalogueError(
            f"{path}: missing required column(s) {', '.join(map(repr, missing))} "
            f"(found: {', '.join(names)})"
        )
    return names


def _mask(table: pa.Table, column: str, value) -> pa.Array:
    return pc.fill_null(pc.equal(table[column], value), False)


def _image_index(image_dir: Path) -> dict[str, Path]:
    """product_id -> image file, from one listing of `image_dir` (preferred suffix first)."""
    if not image_dir.is_dir():
        raise CatalogueError(f"{image_dir}: image_dir is not a folder")
    rank = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
    found: dict[str, tuple[int, str]] = {}
    with os.scandir(image_dir) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            r = rank.get(suffix.lower())
            if r is not None and (stem not in found or r < found[stem][0]):
                found[stem] = (r, entry.name)
    return {stem: image_dir / name for stem, (_, name) in found.items()}


def _read_examples(path: Path, version: str, split: str | None, locale: str | None) -> dict:
    names = _schema_names(path, EXAMPLE_COLUMNS + ((f"{version}_version",) if version != "all"
                                                   else ()))
    columns = list(EXAMPLE_COLUMNS) + ([f"{version}_version"] if version != "all" else [])
    table = pq.read_table(path, columns=[c for c in columns if c in names])
    keep = pa.array(np.ones(table.num_rows, dtype=bool))
    if version != "all":
        keep = pc.and_(keep, _mask(table, f"{version}_version", 1))
    if locale is not None:
        keep = pc.and_(keep, _mask(table, "product_locale", locale))
    if split is not None:
        keep = pc.and_(keep, _mask(table, "split", "test" if split == "test" else "train"))
    rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    table = table.take(pa.array(rows))
    out = {c: table[c].to_pylist() for c in EXAMPLE_COLUMNS}
    out["row"] = (rows + 1).tolist()  # 1-based data row in the file, for error messages
    return out


def _read_products(path: Path, ids: set[str], locale: str | None) -> dict:
    names = _schema_names(path, PRODUCT_COLUMNS)
    columns = [c for c in PRODUCT_COLUMNS + PRODUCT_OPTIONAL if c in names]
    filters = pc.field("product_id").isin(sorted(ids))
    if locale is not None:
        filters = filters & (pc.field("product_locale") == locale)
    table = pq.read_table(path, columns=columns, filters=filters)
    return {c: table[c].to_pylist() if c in columns else [None] * table.num_rows
            for c in PRODUCT_COLUMNS + PRODUCT_OPTIONAL}


def load_esci(
    examples_path: str | Path,
    products_path: str | Path,
    *,
    version: str = "small",
    split: str | None = None,
    locale: str | None = "us",
    image_dir: str | Path | None = None,
    missing_images: str = "no_image",
    max_text_chars: int = 2000,
    valid_fraction: float = 0.1,
    label_set: LabelSet = ESCI,
) -> Catalogue:
    """Loads the published ESCI parquet files into a `Catalogue` (see the module docs)."""
    _check_options(version, split, locale, valid_fraction)
    examples_path, products_path = Path(examples_path), Path(products_path)
    label_set = LabelSet.coerce(label_set)
    fixes: Counter = Counter()
    fix = TextFixer(max_text_chars, fixes)
    images = ImagePolicy(missing_images)

    ex = _read_examples(examples_path, version, split, locale)
    examples, needed = _examples(ex, examples_path, split, locale, valid_fraction, label_set, fix)
    pr = _read_products(products_path, {pid for _, pid, _ in needed.values()}, locale)
    by_key = _product_rows(pr, products_path)
    index = _image_index(Path(image_dir)) if image_dir is not None else {}
    products: dict[str, Product] = {}
    for key, (loc, pid, row) in sorted(needed.items()):
        i = by_key.get((loc, pid))
        if i is None:
            fixes["product_not_found"] += 1
            values = dict.fromkeys(PRODUCT_COLUMNS + PRODUCT_OPTIONAL)
        else:
            values = {c: pr[c][i] for c in PRODUCT_COLUMNS + PRODUCT_OPTIONAL}
            if values["product_title"] is None:
                fixes["title_missing"] += 1
        image = ""
        if image_dir is not None:
            where = f"{locate(examples_path, row, 'product_id')}: product {pid!r}"
            image = _product_image(image_dir, index, images, pid, where)
        products[key] = _product(key, values, image, fix)
    root = Path(image_dir) if image_dir is not None else examples_path.parent
    return Catalogue.loaded(examples_path, root, products, examples, label_set, images.problems, fixes)


def _check_options(version: str, split: str | None, locale: str | None, valid_fraction: float) -> None:
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if split not in (None, "train", "valid", "test"):
        raise ValueError(f"split must be None, 'train', 'valid' or 'test', got {split!r}")
    if locale is not None and locale not in LOCALES:
        raise ValueError(f"locale must be one of {LOCALES} or None, got {locale!r}")
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")


def _examples(
    ex: dict,
    examples_path: Path,
    split: str | None,
    locale: str | None,
    valid_fraction: float,
    label_set: LabelSet,
    fix: TextFixer,
) -> tuple[list[Example], dict[str, tuple[str, str, int]]]:
    """The examples of `split` (valid carved out of the published train), and the products they
    need: catalogue id -> (locale, product_id, first row)."""
    examples: list[Example] = []
    needed: dict[str, tuple[str, str, int]] = {}  # catalogue id -> (locale, product_id, row)
    carved: dict[str, bool] = {}  # query -> in the valid carve-out
    labels: dict[str, int] = {}  # label spelling -> index, parsed once per spelling

    def where(row: int, column: str) -> str:
        return locate(examples_path, row, column)

    for row, query, qid, pid, loc, label, published in zip(
        ex["row"], ex["query"], ex["query_id"], ex["product_id"], ex["product_locale"],
        ex["esci_label"], ex["split"], strict=True,
    ):
        query = fix(query)
        if not query:
            raise CatalogueError(f"{where(row, 'query')}: empty query")
        if not pid:
            raise CatalogueError(f"{where(row, 'product_id')}: empty product id")
        label_index = labels.get(label)
        if label_index is None:
            try:
                label_index = labels[label] = label_set.parse(label or "")
            except ValueError as e:
                raise CatalogueError(f"{where(row, 'esci_label')}: {e}") from None
        if published not in ("train", "test"):
            raise CatalogueError(
                f"{where(row, 'split')}: unknown split {published!r} (train or test)"
            )
        ours = published
        if published == "train":
            if query not in carved:  # one hash per query, not per row
                carved[query] = hash_fraction(normalize_query(query), "valid") < valid_fraction
            ours = "valid" if carved[query] else "train"
        if split is not None and ours != split:
            continue
        key = pid if locale is not None else f"{loc}:{pid}"
        needed.setdefault(key, (loc, pid, row))
        examples.append(Example(query, "" if qid is None else str(qid), key, label_index, ours))
    return examples, needed


def _product_rows(pr: dict, products_path: Path) -> dict[tuple[str, str], int]:
    """(product_locale, product_id) -> row of `pr`; a key given twice is refused."""
    by_key: dict[tuple[str, str], int] = {}
    for i, (pid, loc) in enumerate(zip(pr["product_id"], pr["product_locale"], strict=True)):
        if (loc, pid) in by_key:
            raise CatalogueError(
                f"{locate(products_path, None, 'product_id')}: duplicated product {pid!r} in "
                f"locale {loc!r} (the join key is product_locale + product_id)"
            )
        by_key[(loc, pid)] = i
    return by_key


def _product_image(
    image_dir: str | Path, index: dict[str, Path], images: ImagePolicy, pid: str, where: str
) -> str:
    """The product's image file from `image_dir` (`_image_index`), or the policy's fallback."""
    if pid in index:
        try:
            path = resolve_inside(image_dir, index[pid].name)
        except ValueError as e:
            raise CatalogueError(f"{Path(image_dir) / index[pid].name}: {e}") from None
        return images(path, where, str(index[pid]))
    # Never build a path from the id itself: ids are data, not file names.
    return images.refuse("missing_file", f"no {pid}.<jpg|png|...> in image_dir", where, str(image_dir))


def _product(key: str, values: dict, image: str, fix: TextFixer) -> Product:
    """One catalogue product from its parquet values (description without HTML tags)."""
    description = _TAG.sub(" ", values["product_description"] or "")
    description = " ".join(description.split())
    bullets = (values["product_bullet_point"] or "").strip()
    return Product(
        product_id=key,
        title=fix(values["product_title"]),
        description=fix(description),
        brand=sys.intern(fix(values["product_brand"])),  # repeated across products: one string each
        color=sys.intern(fix(values["product_color"])),
        bullets=fix(bullets),
        image=image,
    )
