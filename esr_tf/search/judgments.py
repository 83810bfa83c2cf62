"""Which products count for a query when search is scored over the whole catalogue.

Two kinds of judgments:

- **judged pairs** (the catalogue's `examples`): each query judges a few candidates; a product
  nobody judged counts as irrelevant, so a relevant but unjudged product in the top 10 lowers
  the score (on `dev_photos` a query judges ~5 of ~100 same-type photos);
- **complete** (a TREC-qrels style file, `query_id,product_id,label`, CSV or JSONL): every
  product that matters for a query is listed; unlisted products are irrelevant by definition.
  The demo shop writes one (`qrels.csv`); build yours from the catalogue's attributes.

Either way a query is scored only when it has at least one exact product; the query texts and
splits come from the catalogue.

Example:
>>> judged, kind = judgments(catalogue, "test", "shop/qrels.csv")  # doctest: +SKIP
>>> kind  # doctest: +SKIP
'complete (shop/qrels.csv): products it does not list count as irrelevant'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from esr_tf.data.catalogue import CatalogueError
from esr_tf.data.csv_jsonl import read_table

QRELS_COLUMNS = ("query_id", "product_id", "label")
PAIRS_NOTE = "judged pairs: products not judged for a query count as irrelevant (gain 0)"

# query id -> (query text, {product id: gain})
Judged = dict[str, tuple[str, dict[str, float]]]


def judged_pairs(catalogue, split: str) -> Judged:
    """The catalogue's own judged pairs of `split`, for queries with an exact product."""
    gains = np.asarray(catalogue.label_set.gains, np.float64)
    out: Judged = {}
    for e in catalogue.select(split):
        out.setdefault(e.query_id, (e.query, {}))[1][e.product_id] = float(gains[e.label])
    return _with_exact(out, float(gains.max()))


def read_qrels(path: str | Path, catalogue, split: str) -> Judged:
    """Complete judgments of `split`'s queries from `path` (see the module doc).

    Raises `CatalogueError` naming the file, row and column for a missing column, an unknown
    label, query id or product id, and a pair listed twice.
    """
    table = read_table(path)
    missing = [c for c in QRELS_COLUMNS if table.unit == "row" and c not in table.columns]
    if missing:
        raise CatalogueError(f"{table.path}: missing column(s) {', '.join(map(repr, missing))} "
                             f"(a qrels file has {', '.join(QRELS_COLUMNS)})")
    texts = {e.query_id: (e.query, e.split) for e in catalogue.select()}
    gains = catalogue.label_set.gains
    out: Judged = {}
    for number, record in table.records:
        query_id, product_id, label = (str(record.get(c) or "").strip() for c in QRELS_COLUMNS)
        if query_id not in texts:
            raise CatalogueError(f"{table.where(number, 'query_id')}: query id {query_id!r} is not in the "
                                 f"catalogue's examples at {catalogue.root}")
        if product_id not in catalogue.products:
            raise CatalogueError(f"{table.where(number, 'product_id')}: product id {product_id!r} is not in "
                                 f"the catalogue at {catalogue.root}")
        try:
            gain = float(gains[catalogue.label_set.parse(label)])
        except ValueError as error:
            raise CatalogueError(f"{table.where(number, 'label')}: {error}") from None
        text, query_split = texts[query_id]
        labels = out.setdefault(query_id, (text, {}))[1]
        if product_id in labels:
            raise CatalogueError(f"{table.where(number)}: ({query_id}, {product_id}) is listed twice")
        if query_split == split:
            labels[product_id] = gain
    return _with_exact({q: v for q, v in out.items() if texts[q][1] == split}, float(max(gains)))


def judgments(catalogue, split: str, qrels: str | Path | None = None) -> tuple[Judged, str]:
    """The judgments `evaluate_search` scores with, and a line saying which kind they are."""
    if qrels is None:
        return judged_pairs(catalogue, split), PAIRS_NOTE
    kind = f"complete ({qrels}): products it does not list count as irrelevant"
    return read_qrels(qrels, catalogue, split), kind


def _with_exact(judged: Judged, exact_gain: float) -> Judged:
    return {q: v for q, v in judged.items() if exact_gain in v[1].values()}
