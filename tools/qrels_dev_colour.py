"""A completely judged view of the dev_colour development catalogue: the products whose colour
its own judgments give, with complete judgments (qrels) over them.

    python tools/qrels_dev_colour.py ../shared/data/dev_colour OUT_FOLDER

dev_colour's products carry no attributes (the colour is only in the photo), so complete
judgments over all its products cannot be written. A product judged Exact for some query has
that query's article type and colour, and its gender from its judgments where a gendered query
judged it, else from the gender word of its title. OUT_FOLDER gets a catalogue of exactly those
products (their photos copied), the judged pairs among them (same query ids and splits) and
`qrels.csv` by the build's label rules (`dev_colour_build.py` beside the data folder, whose
complement table is read):
- E: the query's type and colour, and the query's gender where it names one;
- S: the query's type (gender as for E) in another colour (near shades too, which the build
  leaves unjudged: a navy shirt is at worst a substitute for a blue one);
- C: a complementary type (either way round in the build's table), gender as for E or Unisex;
- every other product is irrelevant and is not listed.
Within the view the judgments are complete: every product in it has a known type, colour and
gender. A query's Exact products in the view are the ones it was judged with (its family's other
products have no known colour and are not in the view), ~1,350 of the 6,404 products. The view's
judged pairs are mostly Exact: train on the whole catalogue and search the view
(`tools/search_quality.py --data VIEW --train-data ../shared/data/dev_colour`). Checked on the
way: every judged pair kept gets the label it has in `examples.csv`.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import sys
from pathlib import Path

MAX_DROPPED = 20  # more disagreeing judgments than this: the rules here are wrong, not a few titles
GENDER = re.compile(r"\b(Men|Women|Boys|Girls|Unisex)\b")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write(path: Path, header: list[str], rows: list) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def complements(source: Path) -> dict[str, list[str]]:
    """The build script's complement table (`COMPLEMENTS`)."""
    spec = importlib.util.spec_from_file_location("dev_colour_build", source.parent / "dev_colour_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build.COMPLEMENTS


def known_products(root: Path) -> dict[str, dict[str, str]]:
    """product id -> type, colour, gender for the products judged Exact somewhere."""
    queries = {q["query_id"]: q for q in _rows(root / "queries.csv")}
    titles = {p["product_id"]: p["title"] for p in _rows(root / "products.csv")}
    examples = _rows(root / "examples.csv")
    # E and S judgments of a gendered query give the source's gender (a few titles say "Kids
    # Boys" where the source says Men); else the title's gender word
    sure = {e["product_id"]: queries[e["query_id"]]["gender"] for e in examples
            if e["label"] in "ES" and queries[e["query_id"]]["gender"]}
    known = {}
    for e in examples:
        q = queries[e["query_id"]]
        word = GENDER.search(titles[e["product_id"]])
        gender = sure.get(e["product_id"]) or (word.group(1) if word else "")
        if e["label"] == "E" and gender:
            known[e["product_id"]] = {"type": q["articleType"], "colour": q["baseColour"], "gender": gender}
    return known


def label(query: dict[str, str], product: dict[str, str], table: dict[str, list[str]]) -> str:
    gender = query["gender"]
    if product["type"] == query["articleType"]:
        if gender and product["gender"] != gender:
            return "I"
        return "E" if product["colour"] == query["baseColour"] else "S"
    kind = query["articleType"]
    pair = product["type"] in table.get(kind, []) or kind in table.get(product["type"], [])
    return "C" if pair and (not gender or product["gender"] in (gender, "Unisex")) else "I"


def main(source: str, out: str) -> int:
    root, folder = Path(source), Path(out)
    known, table = known_products(root), complements(root)
    queries = _rows(root / "queries.csv")
    rows = [(q["query_id"], pid, lab) for q in queries for pid, p in known.items()
            if (lab := label(q, p, table)) != "I"]
    listed = {(q, p): lab for q, p, lab in rows}
    judged = [e for e in _rows(root / "examples.csv") if e["product_id"] in known]
    wrong = [e for e in judged if listed.get((e["query_id"], e["product_id"]), "I") != e["label"]]
    if len(wrong) > MAX_DROPPED:
        print(f"{len(wrong)} judged pairs disagree, e.g. {wrong[0]}", file=sys.stderr)
        return 1
    # a product whose title's gender word a judgment contradicts is left out of the view
    dropped = {e["product_id"] for e in wrong}
    known = {pid: p for pid, p in known.items() if pid not in dropped}
    rows = [r for r in rows if r[1] not in dropped]
    judged = [e for e in judged if e["product_id"] not in dropped]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    products = [p for p in _rows(root / "products.csv") if p["product_id"] in known]
    for p in products:
        shutil.copyfile(root / p["image"], folder / p["image"])
    _write(folder / "products.csv", list(products[0]), [list(p.values()) for p in products])
    _write(folder / "examples.csv", list(judged[0]), [list(e.values()) for e in judged])
    _write(folder / "qrels.csv", ["query_id", "product_id", "label"], rows)
    print(f"{folder}: {len(products)} products ({len(dropped)} left out: a judgment contradicts their "
          f"title's gender), {len(judged)} judged pairs, {len(rows)} qrels rows for {len(queries)} queries")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
