"""The generic catalogue folder format (CSV or JSONL) and its loader, `load_catalogue`.

A catalogue folder holds two tables, each as `.csv` (UTF-8, header row) or `.jsonl` (one UTF-8
JSON object per line), with the same column / field names:

- `products`: `product_id`, `title` (required); `description`, `brand`, `color`, `bullets`,
  `image` (optional). `image` is a path relative to the folder ("" = no image); absolute paths and
  paths or symlinks leading outside the folder are always refused.
- `examples`: `query`, `product_id`, `label` (required); `query_id`, `split` (optional).
  Labels are the label set's codes or names in any case (`E`, `exact`, ...). A missing
  `query_id` is derived from the query text; a missing split from a hash of the query text
  (80 / 10 / 10 train / valid / test). A query in two splits is an error.

Rows are numbered from 1 after the CSV header (the physical `line` is added when it differs);
JSONL records are numbered by line. Column names are matched case-insensitively.

Example:
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> _ = (folder / "products.csv").write_text("product_id,title\\np1,Red mug\\np2,Blue mug\\n")
>>> rows = "query,product_id,label\\nred mug,p1,E\\nred mug,p2,S\\n"
>>> _ = (folder / "examples.csv").write_text(rows)
>>> cat = load_catalogue(folder)
>>> [e.label for e in cat.examples], len(cat.splits())
([0, 1], 1)
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from esr_tf.data.catalogue import (
    Catalogue,
    CatalogueError,
    Example,
    ImagePolicy,
    Product,
    SplitGuard,
    TextFixer,
    derive_query_id,
    hash_split,
    locate,
    log_fallbacks,
    parse_split,
)
from esr_tf.data.image_files import resolve_inside
from esr_tf.labels import ESCI, LabelSet
from esr_tf.validation import load_json_object

PRODUCT_COLUMNS = ("product_id", "title", "description", "brand", "color", "bullets", "image")
EXAMPLE_COLUMNS = ("query", "query_id", "product_id", "label", "split")
_REQUIRED = {"products": ("product_id", "title"), "examples": ("query", "product_id", "label")}


@dataclass
class Table:
    """Rows of one CSV / JSONL file, read anew on each pass over `records`:
    `(row or line number, {column: text})` pairs.

    Streamed, not held: a list of every row's dict was the loader's largest transient at
    catalogue scale (~0.5 KB a row, and Python's allocator keeps most of it after it is freed).
    """

    path: Path
    unit: str  # "row" (CSV) or "line" (JSONL)
    columns: list[str]  # the CSV header ([] for JSONL: each line names its own fields)
    rows: Callable[[], Iterator[tuple[int, dict[str, str | None]]]] = field(repr=False, default=lambda: iter(()))

    @property
    def records(self) -> Iterator[tuple[int, dict[str, str | None]]]:
        return self.rows()

    def where(self, number: int | None = None, column: str | None = None) -> str:
        return locate(self.path, number, column, unit=self.unit)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _open_csv(path: Path):
    # Bytes that are not UTF-8 decode losslessly (surrogateescape), so that the error can name
    # the row and column holding them; a leading BOM is dropped.
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _csv_header(path: Path) -> list[str]:
    with _open_csv(path) as f:
        try:
            header = next(csv.reader(f, strict=True), None)
        except csv.Error as e:
            raise CatalogueError(f"{path}, line 1: malformed CSV ({e})") from None
    if header is None:
        raise CatalogueError(f"{path}: the file is empty (expected a header row)")
    if any(_has_surrogate(h) for h in header):
        raise CatalogueError(f"{path}, header (line 1): bytes that are not valid UTF-8")
    columns = [h.strip().lower() for h in header]
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise CatalogueError(f"{path}, header: duplicated column(s) {dupes}")
    return columns


def _csv_record(table: Table, number: int, line: int, values: list[str]) -> dict[str, str]:
    columns = table.columns
    if len(values) != len(columns):
        raise CatalogueError(
            f"{table.where(number)} (line {line}): {len(values)} fields, the header has {len(columns)}"
        )
    if _has_surrogate("".join(values)):  # one check a row; the column is looked for only then
        name = next(n for n, v in zip(columns, values, strict=True) if _has_surrogate(v))
        raise CatalogueError(
            f"{table.where(number, name)} (line {line}): bytes that are not valid UTF-8 (save the file as UTF-8)"
        )
    return dict(zip(columns, values, strict=True))


def _csv_rows(table: Table) -> Iterator[tuple[int, dict[str, str | None]]]:
    # Over-long cells are truncated later (a documented fallback), so lift csv's 128 KiB limit.
    old_limit = csv.field_size_limit(2**31 - 1)
    try:
        with _open_csv(table.path) as f:
            reader = csv.reader(f, strict=True)
            try:
                next(reader)  # the header (`_csv_header` checked it)
                for number, values in enumerate(reader, start=1):
                    if values:  # not a blank line
                        yield number, _csv_record(table, number, reader.line_num, values)
            except csv.Error as e:
                raise CatalogueError(f"{table.path}, line {reader.line_num}: malformed CSV ({e})") from None
    finally:
        csv.field_size_limit(old_limit)


def read_csv(path: str | Path) -> Table:
    """A UTF-8 CSV file (a leading BOM is allowed); its header is checked now, its rows as they
    are read (errors name the row and column)."""
    path = Path(path)
    table = Table(path, "row", _csv_header(path))
    table.rows = lambda: _csv_rows(table)
    return table


def _json_text(table: Table, line: int, key: str, value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise CatalogueError(
        f"{table.where(line, key)}: expected a string, got {type(value).__name__} {value!r}"
    )


def _jsonl_rows(table: Table) -> Iterator[tuple[int, dict[str, str | None]]]:
    with open(table.path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CatalogueError(
                    f"{table.path}, line {number}: bytes that are not valid UTF-8 at byte {e.start} of the "
                    "line (save the file as UTF-8)"
                ) from None
            obj = load_json_object(text, f"{table.path}, line {number}", CatalogueError)
            yield number, {str(k).strip().lower(): _json_text(table, number, str(k).strip().lower(), v)
                           for k, v in obj.items()}


def read_jsonl(path: str | Path) -> Table:
    """One JSON object per line (blank lines skipped), read as the rows are read; errors name
    the line and field."""
    path = Path(path)
    if not path.is_file():
        raise CatalogueError(f"{path}: no such file")
    table = Table(path, "line", [])
    table.rows = lambda: _jsonl_rows(table)
    return table


def read_table(path: str | Path) -> Table:
    path = Path(path)
    return read_jsonl(path) if path.suffix.lower() == ".jsonl" else read_csv(path)


def _find(root: Path, stem: str) -> Path:
    found = [root / f"{stem}{s}" for s in (".csv", ".jsonl") if (root / f"{stem}{s}").is_file()]
    if not found:
        raise CatalogueError(f"{root}: no {stem}.csv or {stem}.jsonl in the catalogue folder")
    if len(found) > 1:
        raise CatalogueError(f"{root}: both {stem}.csv and {stem}.jsonl exist; keep one")
    return found[0]


def _require(table: Table, kind: str) -> None:
    required = _REQUIRED[kind]
    if table.unit == "row":
        missing = [c for c in required if c not in table.columns]
        if missing:
            raise CatalogueError(
                f"{table.path}: missing required column(s) {', '.join(map(repr, missing))} "
                f"(found: {', '.join(table.columns)})"
            )
        return
    for number, record in table.records:
        for name in required:
            if record.get(name) is None:
                raise CatalogueError(f"{table.where(number, name)}: required field is missing")


def _read_products(
    table: Table, root: Path, fix: TextFixer, images: ImagePolicy
) -> dict[str, Product]:
    _require(table, "products")
    products: dict[str, Product] = {}
    rows: dict[str, int] = {}
    for number, r in table.records:
        pid = (r.get("product_id") or "").strip()
        if not pid:
            raise CatalogueError(f"{table.where(number, 'product_id')}: empty product id")
        if pid in rows:
            raise CatalogueError(
                f"{table.where(number, 'product_id')}: duplicated product id {pid!r} "
                f"(first at {table.unit} {rows[pid]})"
            )
        rows[pid] = number
        title = fix(r.get("title"))
        if not title:
            fix.fixes["title_empty"] += 1
        image = ""
        shown = (r.get("image") or "").strip()
        if shown:
            where = table.where(number, "image")
            try:
                path = resolve_inside(root, shown)
            except ValueError as e:
                raise CatalogueError(f"{where}: {e}") from None
            image = sys.intern(images(path, where, shown))  # photos shared by many products: one string
        products[pid] = Product(
            product_id=pid,
            title=title,
            description=fix(r.get("description")),
            # brands and colours repeat across products: one string object per distinct value
            brand=sys.intern(fix(r.get("brand"))),
            color=sys.intern(fix(r.get("color"))),
            bullets=fix(r.get("bullets")),
            image=image,
        )
    return products


def _read_examples(
    table: Table, products: dict[str, Product], label_set: LabelSet, fix: TextFixer
) -> list[Example]:
    _require(table, "examples")
    examples: list[Example] = []
    guard = SplitGuard(table.path, table.unit)
    pairs: dict[tuple[str, str], int] = {}
    for number, r in table.records:
        query = fix(r.get("query"))
        if not query:
            raise CatalogueError(f"{table.where(number, 'query')}: empty query")
        pid = (r.get("product_id") or "").strip()
        if pid not in products:
            raise CatalogueError(
                f"{table.where(number, 'product_id')}: unknown product id {pid!r} "
                "(not in the products file)"
            )
        try:
            label = label_set.parse(r.get("label") or "")
        except ValueError as e:
            raise CatalogueError(f"{table.where(number, 'label')}: {e}") from None
        query_id = (r.get("query_id") or "").strip() or derive_query_id(query)
        split_text = (r.get("split") or "").strip()
        try:
            split = parse_split(split_text) if split_text else hash_split(query)
        except ValueError as e:
            raise CatalogueError(f"{table.where(number, 'split')}: {e}") from None
        guard.check(query, query_id, split, number)
        first = pairs.setdefault((query_id, pid), number)
        if first != number:
            raise CatalogueError(
                f"{table.where(number, 'product_id')}: query {query!r} judges product {pid!r} "
                f"a second time (first at {table.unit} {first})"
            )
        # One string object per distinct query / id, not one per row (memory at ESCI scale).
        examples.append(Example(sys.intern(query), sys.intern(query_id), products[pid].product_id, label, split))
    return examples


def load_catalogue(
    path: str | Path,
    *,
    missing_images: str = "error",
    label_set: LabelSet = ESCI,
    max_text_chars: int = 2000,
    require_examples: bool = True,
) -> Catalogue:
    """Loads a catalogue folder (`products` + `examples`, CSV or JSONL; see the module docs).

    Args:
        path: the catalogue folder; image paths are relative to it.
        missing_images: "error" raises on an unusable image file (missing, empty, truncated,
            not an image, too large); "no_image" loads the product without image and counts the
            reason in `Catalogue.image_problems`.
        label_set: the label vocabulary (`ESCI` by default).
        max_text_chars: longer texts are cut to this length, counted in
            `Catalogue.fixes["text_truncated"]`.
        require_examples: False: a folder without an examples file loads with no examples
            (training from search logs needs the products alone).
    """
    root = Path(path)
    if not root.is_dir():
        raise CatalogueError(f"{root}: not a folder (expected products + examples files in it)")
    label_set = LabelSet.coerce(label_set)
    fixes: Counter = Counter()
    fix = TextFixer(max_text_chars, fixes)
    images = ImagePolicy(missing_images)
    products = _read_products(read_table(_find(root, "products")), root, fix, images)
    judged = require_examples or any((root / f"examples{s}").is_file() for s in (".csv", ".jsonl"))
    examples = _read_examples(read_table(_find(root, "examples")), products, label_set, fix) if judged else []
    return Catalogue.loaded(root, root, products, examples, label_set, images.problems, fixes)


def load_products(
    path: str | Path, *, missing_images: str = "error", max_text_chars: int = 2000
) -> dict[str, Product]:
    """Products alone (no judged examples): a products CSV / JSONL file, or a catalogue folder's.

    Image paths are relative to the file's folder; the columns and checks are
    `load_catalogue`'s. Used to add products to a search index (`esr-tf index --add`).
    """
    path = Path(path)
    file = _find(path, "products") if path.is_dir() else path
    if not file.is_file():
        raise CatalogueError(f"{file}: no such products file (a .csv or .jsonl, or a catalogue folder)")
    fixes: Counter = Counter()
    images = ImagePolicy(missing_images)
    products = _read_products(read_table(file), file.parent, TextFixer(max_text_chars, fixes), images)
    log_fallbacks(file, images.problems, fixes)
    return products


def read_product_ids(path: str | Path) -> list[str]:
    """Product ids to remove: a CSV / JSONL with a `product_id` column, or one id per line."""
    path = Path(path)
    if not path.is_file():
        raise CatalogueError(f"{path}: no such file of product ids")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CatalogueError(f"{path}: not UTF-8 text (byte {error.start})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    header = lines[0].split(",")[0].strip().strip('"').lower() if lines else ""
    if path.suffix.lower() == ".jsonl" or header == "product_id":  # column names match case-insensitively
        table = read_table(path)
        if table.unit == "row" and "product_id" not in table.columns:
            raise CatalogueError(f"{path}: no 'product_id' column")
        ids = [(r.get("product_id") or "").strip() for _, r in table.records]
    else:
        ids = lines
    if not ids or not all(ids):
        raise CatalogueError(f"{path}: empty product id (or no ids at all)")
    return ids
