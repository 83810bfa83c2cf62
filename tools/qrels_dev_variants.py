"""Complete judgments (qrels) for the dev_variants development catalogue, from its attribute files.

    python tools/qrels_dev_variants.py ../shared/data/dev_variants OUT/qrels.csv

By the catalogue's own label rules (its README and build script): for a query naming a category
and a colour (and a model, `parent_sku`, when the query names one),
- E: same category and colour (and the named model);
- S: same category in another colour; with a model named, also the same category and colour
  in another model (the build never judges those; they are what a shopper would take instead);
- every other product is irrelevant and is not listed (the build's I: another garment kind;
  the same kind for another gender is never judged there and counts as irrelevant here).
Checked on the way: every judged pair of `examples.csv` gets the label it has there.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def label(query: dict[str, str], product: dict[str, str]) -> str:
    if product["category"] != query["category"]:
        return "I"
    if product["color"] != query["color"]:
        return "S"
    named = query["parent_sku"]
    return "E" if not named or product["parent_sku"] == named else "S"


def main(source: str, out: str) -> int:
    root = Path(source)
    products, queries = _rows(root / "attributes.csv"), _rows(root / "queries.csv")
    rows = [(q["query_id"], p["product_id"], lab) for q in queries for p in products
            if (lab := label(q, p)) != "I"]
    listed = {(q, p): lab for q, p, lab in rows}
    wrong = [e for e in _rows(root / "examples.csv")
             if listed.get((e["query_id"], e["product_id"]), "I") != e["label"]]
    if wrong:
        print(f"{len(wrong)} judged pairs disagree, e.g. {wrong[0]}", file=sys.stderr)
        return 1
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["query_id", "product_id", "label"])
        writer.writerows(rows)
    print(f"{out}: {len(rows)} rows for {len(queries)} queries over {len(products)} products")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
