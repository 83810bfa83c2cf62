"""The search-log format: impressions as CSV, JSONL or Parquet, read streamed and checked.

One row per product shown: `session_id`, `query`, `product_id` (a product of the catalogue's
products table), `position` (1-based, as shown), `clicked`, `added_to_cart`, `purchased` (0 / 1),
and an optional `timestamp` (kept as text). Column names match case-insensitively.

Rules (each broken rule is a `LogError` naming the file, row and column):
- a product id the catalogue does not have, a position that is not an integer >= 1, a flag
  outside {0, 1}, an empty session id or query;
- a cart or a purchase without a click (what was not clicked was not put in the cart);
- one position twice in a session, and a session's rows apart from each other: logs are
  written session by session, and the check then needs only the current session in memory.

`aggregate_logs` folds the rows into counts per (query, product, position) as it reads them,
so memory grows with the distinct triples, not with the number of impressions.

Example:
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "logs.csv"
>>> _ = path.write_text("session_id,query,product_id,position,clicked,added_to_cart,purchased\\n"
...                     "s1,red mug,p1,1,1,0,0\\ns1,red mug,p2,2,0,0,0\\n")
>>> counts = aggregate_logs(path, {"p1", "p2"})
>>> counts.impressions.tolist(), counts.clicks.tolist()
([1, 1], [1, 0])
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from esr_tf.data.catalogue import CatalogueError, locate
from esr_tf.data.csv_jsonl import read_table

COLUMNS = ("session_id", "query", "product_id", "position", "clicked", "added_to_cart", "purchased")
FLAGS = ("clicked", "added_to_cart", "purchased")


class LogError(CatalogueError):
    """A bad search-log row; the message names the file, row and column."""


@dataclass
class Impression:
    """One checked row: where it came from, and what was shown and done."""

    row: int
    session_id: str
    query: str
    product_id: str
    position: int
    clicked: int
    added_to_cart: int
    purchased: int


def _parquet_text(value) -> str | None:
    """A Parquet cell as the CSV reader would give it: whole floats and booleans as integers."""
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return str(value)


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
        names = [n.strip().lower() for n in batch.schema.names]
        columns = [col.to_pylist() for col in batch.columns]
        for values in zip(*columns, strict=True):
            number += 1
            yield number, {n: _parquet_text(v) for n, v in zip(names, values, strict=True)}


def _rows(path: Path) -> tuple[Iterator[tuple[int, dict]], str]:
    if not path.is_file():
        raise LogError(f"{path}: no such file")
    if path.suffix.lower() == ".parquet":
        return _parquet_rows(path), "row"
    table = read_table(path)
    missing = [c for c in COLUMNS if table.columns and c not in table.columns]
    if missing:
        raise LogError(f"{path}, header: missing column(s) {missing} (expected {', '.join(COLUMNS)})")
    return table.records, table.unit


def _whole(text: str | None, where: str, least: int, most: int | None = None) -> int:
    value = (text or "").strip()
    number = int(value) if value.lstrip("-").isdigit() else None
    if number is None or number < least or (most is not None and number > most):
        span = f"{least}..{most}" if most is not None else f">= {least}"
        raise LogError(f"{where}: expected an integer {span}, got {text!r}")
    return number


def _impression(path: Path, unit: str, number: int, record: dict, products) -> Impression:
    def where(column: str) -> str:
        return locate(path, number, column, unit=unit)

    for column in COLUMNS:
        if record.get(column) is None:
            raise LogError(f"{where(column)}: missing")
    values = {c: record[c].strip() for c in ("session_id", "query", "product_id")}
    for column, value in values.items():
        if not value:
            raise LogError(f"{where(column)}: empty")
    if values["product_id"] not in products:
        raise LogError(f"{where('product_id')}: unknown product {values['product_id']!r} (not in the catalogue)")
    flags = {f: _whole(record[f], where(f), 0, 1) for f in FLAGS}
    for flag in ("added_to_cart", "purchased"):
        if flags[flag] and not flags["clicked"]:
            raise LogError(f"{where(flag)}: {flag} = 1 without a click (clicked = 0)")
    return Impression(number, values["session_id"], values["query"], values["product_id"],
                      _whole(record["position"], where("position"), 1), **flags)


def read_logs(path: str | Path, products) -> Iterator[Impression]:
    """The checked impressions of `path` (`.csv`, `.jsonl` or `.parquet`), one at a time;
    `products`: the catalogue's product ids (a set)."""
    path = Path(path)
    rows, unit = _rows(path)
    session, positions, finished = None, set(), set()
    for number, record in rows:
        row = _impression(path, unit, number, record, products)
        if row.session_id != session:
            if session is not None:
                finished.add(hashlib.blake2b(session.encode(), digest_size=8).digest())
            key = hashlib.blake2b(row.session_id.encode(), digest_size=8).digest()
            if key in finished:
                raise LogError(f"{locate(path, number, 'session_id', unit=unit)}: session {row.session_id!r} "
                               "appears again after other sessions (keep a session's rows together)")
            session, positions = row.session_id, set()
        if row.position in positions:
            raise LogError(f"{locate(path, number, 'position', unit=unit)}: position {row.position} twice in "
                           f"session {row.session_id!r}")
        positions.add(row.position)
        yield row


@dataclass
class LogCounts:
    """Impressions folded per (query, product, position): parallel arrays, one entry a triple."""

    queries: np.ndarray  # str
    product_ids: np.ndarray  # str
    positions: np.ndarray  # int32, 1-based
    impressions: np.ndarray  # int64
    clicks: np.ndarray
    carts: np.ndarray
    purchases: np.ndarray
    rows: int  # impressions read
    sessions: int


def aggregate_logs(path: str | Path, products) -> LogCounts:
    """Reads `path` (see `read_logs`) into `LogCounts`."""
    counts: dict[tuple[str, str, int], list[int]] = {}
    rows, sessions, last = 0, 0, None
    for row in read_logs(path, products):
        rows += 1
        if row.session_id != last:
            sessions, last = sessions + 1, row.session_id
        entry = counts.setdefault((row.query, row.product_id, row.position), [0, 0, 0, 0])
        entry[0] += 1
        entry[1] += row.clicked
        entry[2] += row.added_to_cart
        entry[3] += row.purchased
    keys = list(counts)
    values = np.array(list(counts.values()), np.int64).reshape(-1, 4)
    return LogCounts(
        queries=np.array([k[0] for k in keys], dtype=object),
        product_ids=np.array([k[1] for k in keys], dtype=object),
        positions=np.array([k[2] for k in keys], np.int32),
        impressions=values[:, 0], clicks=values[:, 1], carts=values[:, 2], purchases=values[:, 3],
        rows=rows, sessions=sessions,
    )
