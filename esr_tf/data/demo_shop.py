"""A small synthetic shop with judged queries, written in the generic catalogue format.

`generate_demo_shop(out_dir, seed=...)` writes `products.csv`, `examples.csv` (with a `split`
column), `images/` (a mix of .jpg and .png), plus two answer-key files the loader ignores:
`demo_attributes.csv` (each product's true category, colour, material, audience, pattern,
whether it has an image and whether its title names its colour) and `demo_queries.csv` (each
query's intended category and colour); and `qrels.csv`, every query's complete judgments over
the whole catalogue by the label rules below (E, S and C rows; unlisted products are
irrelevant), for `esr-tf search --evaluate --judgments`. The same seed gives byte-identical files.

Products: 11 categories, each drawable as a distinct silhouette, in 8 well separated colours,
with brands, materials, audiences (apparel only) and patterns. Titles and descriptions come
from varied templates. About 35 % of the products do not name their colour anywhere in the text
(title, description and `color` column all omit it): only the photo tells exact from substitute
there. About 15 % have no image; those always name their colour, so every pair stays solvable.

Queries: "{colour} {category}" in varied phrasings (word order, synonyms, plurals, optional
audience / brand / material words, about 5 % with one typo). Optional words are soft: they
do not change labels. Each query judges 10-40 products by these rules:
- Exact: same category and same colour as the query;
- Substitute: same category, another colour;
- Complement: a category paired with the query's (sneaker-sock, t-shirt-cap, hoodie-cap,
  hoodie-backpack, backpack-water bottle, mug-teapot, phone case-headphones), any colour;
- Irrelevant: any other category (half of them, where possible, in the query's colour).
Candidate sets are sampled for a mix of about E 40 %, S 27 %, C 12 %, I 21 %.

Splits are by query (about 70 / 15 / 15 train / valid / test); a query is in one split only.

Example:
>>> import tempfile
>>> from esr_tf.data import load_catalogue
>>> folder = generate_demo_shop(tempfile.mkdtemp(), size="tiny")
>>> cat = load_catalogue(folder)
>>> cat.splits()
['train', 'valid', 'test']
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from esr_tf.constants import IMAGE_SIZE
from esr_tf.data.demo_images import COLOURS, PATTERNS, SHAPES, render_product_image

SIZES = {"tiny": 12, "small": 60, "default": 150, "large": 1500}
FORMAT_VERSION = 1
# category: (synonyms as (singular, plural), materials, features, apparel, complements)
CATEGORIES: dict[str, tuple] = {
    "sneaker": ([("sneaker", "sneakers"), ("running shoe", "running shoes"),
                 ("trainer", "trainers"), ("shoe", "shoes")],
                ["canvas", "leather", "mesh", "suede"],
                ["lightweight", "breathable", "cushioned", "non-slip"], True, ["sock"]),
    "sock": ([("sock", "socks"), ("crew sock", "crew socks"), ("ankle sock", "ankle socks")],
             ["cotton", "wool", "bamboo"], ["soft", "reinforced", "warm", "cushioned"], True,
             ["sneaker"]),
    "t-shirt": ([("t-shirt", "t-shirts"), ("tee", "tees"), ("t shirt", "t shirts"),
                 ("tshirt", "tshirts")], ["cotton", "organic cotton", "linen", "polyester"],
                ["classic fit", "slim fit", "crew neck", "short sleeve"], True, ["cap"]),
    "hoodie": ([("hoodie", "hoodies"), ("hooded sweatshirt", "hooded sweatshirts"),
                ("pullover hoodie", "pullover hoodies")], ["fleece", "cotton", "polyester"],
               ["cosy", "oversized", "zip-free", "brushed"], True, ["cap", "backpack"]),
    "cap": ([("cap", "caps"), ("baseball cap", "baseball caps"), ("hat", "hats")],
            ["cotton", "wool", "polyester"], ["adjustable", "curved brim", "six panel"], True,
            ["t-shirt", "hoodie"]),
    "backpack": ([("backpack", "backpacks"), ("rucksack", "rucksacks"), ("daypack", "daypacks"),
                  ("school bag", "school bags")], ["nylon", "canvas", "polyester"],
                 ["water-resistant", "padded", "20 litre", "laptop"], True,
                 ["water bottle", "hoodie"]),
    "water bottle": ([("water bottle", "water bottles"), ("drinking bottle", "drinking bottles"),
                      ("sports bottle", "sports bottles")],
                     ["stainless steel", "plastic", "glass"], ["leak-proof", "insulated",
                                                               "750 ml", "bpa-free"],
                     False, ["backpack"]),
    "mug": ([("mug", "mugs"), ("coffee mug", "coffee mugs"), ("cup", "cups")],
            ["ceramic", "porcelain", "enamel"], ["dishwasher-safe", "350 ml", "large"], False,
            ["teapot"]),
    "teapot": ([("teapot", "teapots"), ("tea pot", "tea pots")],
               ["ceramic", "porcelain", "cast iron"], ["1 litre", "with infuser", "classic"],
               False, ["mug"]),
    "phone case": ([("phone case", "phone cases"), ("phone cover", "phone covers"),
                    ("smartphone case", "smartphone cases")], ["silicone", "leather", "plastic"],
                   ["slim", "shockproof", "matte"], False, ["headphones"]),
    "headphones": ([("headphones", "headphones"), ("headset", "headsets"),
                    ("over-ear headphones", "over-ear headphones")], ["plastic", "aluminium"],
                   ["wireless", "noise-cancelling", "foldable"], False, ["phone case"]),
}
AUDIENCES = {"men": ["men's", "mens", "for men"], "women": ["women's", "womens", "for women"],
             "kids": ["kids", "kids'", "for kids"], "unisex": ["unisex", "unisex", "unisex"]}
SHADES = {"red": ["bright red", "deep red"], "blue": ["navy blue", "royal blue"],
          "green": ["forest green", "bright green"], "yellow": ["sunny yellow", "lemon yellow"],
          "black": ["jet black", "matte black"], "white": ["pure white", "off white"],
          "orange": ["bright orange", "burnt orange"], "purple": ["deep purple", "plum purple"]}
BRANDS = ["Northpeak", "Lumio", "Kestrel & Co", "Urbanfox", "Tidewell", "Brightloom",
          "Oakridge", "Zephyra", "Marlow", "Pinecrest", "Vantaro", "Solenne"]
TITLES_COLOUR = ["{brand} {aud}{colour} {material} {noun}",
                 "{noun} by {brand} - {colour}, {material}",
                 "{brand} {material} {noun} in {colour}{aud_for}",
                 "{aud}{material} {noun}, {colour} | {brand}",
                 "{colour} {noun} - {brand} {feature}",
                 "{brand} {feature} {colour} {noun}{aud_for}"]
TITLES_PLAIN = ["{brand} {aud}{material} {noun}", "{noun} by {brand}, {material}",
                "{brand} {feature} {noun}{aud_for}", "{aud}{material} {noun} | {brand}",
                "{brand} {feature} {material} {noun}"]
DESCRIPTIONS = ["Made of {material}.", "A {feature} {noun} made from {material}.",
                "{brand} quality: {material}, {feature}."]
QUERIES = ["{c} {n}", "{n} {c}", "{n} in {c}", "{c} {n}", "{c} colored {n}", "{n} {c} color"]
LABELS = ("E", "S", "C", "I")


def _cap_words(text: str) -> str:
    """Capitalises each word's first letter (str.title() would give "Men'S")."""
    return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))


def _typo(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not long:
        return text
    i = long[rng.integers(len(long))]
    w, j = words[i], int(rng.integers(1, len(words[i]) - 1))
    kind = rng.integers(3)
    words[i] = (w[:j] + w[j + 1] + w[j] + w[j + 2:] if kind == 0 else
                w[:j] + w[j + 1:] if kind == 1 else w[:j] + w[j] + w[j:])
    return " ".join(words)


def _products(n: int, colours_per_cat: int, rng: np.random.Generator) -> list[dict]:
    palette = list(COLOURS)
    combos = [(cat, palette[c]) for cat in CATEGORIES
              for c in sorted(rng.choice(len(palette), colours_per_cat, replace=False))]
    # Round-robin over the combos keeps every (category, colour) stocked with ~n / len(combos).
    order = [combos[i % len(combos)] for i in range(n)]
    no_image = set(rng.permutation(n)[: round(0.15 * n)].tolist())
    with_image = [i for i in rng.permutation(n).tolist() if i not in no_image]
    hidden = set(with_image[: round(0.35 * n)])  # colour named nowhere in the text
    products = []
    for i, (cat, colour) in enumerate(order):
        syn, materials, features, apparel, _ = CATEGORIES[cat]
        audience = str(rng.choice(list(AUDIENCES))) if apparel else ""
        fields = {
            "brand": str(rng.choice(BRANDS)), "material": str(rng.choice(materials)),
            "feature": str(rng.choice(features)), "noun": syn[rng.integers(len(syn))][0],
            "colour": colour if rng.random() < 0.6 else str(rng.choice(SHADES[colour])),
            "aud": "", "aud_for": "",
        }
        if audience and rng.random() < 0.7:
            phrase = str(rng.choice(AUDIENCES[audience]))
            key = "aud_for" if phrase.startswith("for ") else "aud"
            fields[key] = f" {phrase}" if key == "aud_for" else f"{phrase} "
        named = i not in hidden
        title = str(rng.choice(TITLES_COLOUR if named else TITLES_PLAIN)).format(**fields)
        if rng.random() < 0.7:
            title = _cap_words(title)
        title = title[:1].upper() + title[1:]
        description = str(rng.choice(DESCRIPTIONS)).format(**fields)
        if audience:
            description += f" Sized for {audience if audience != 'unisex' else 'everyone'}."
        if named:
            description += f" Colour: {colour}."
        products.append({
            "product_id": f"p{i + 1:05d}", "category": cat, "colour": colour, "title": title,
            "description": description, "brand": fields["brand"], "material": fields["material"],
            "audience": audience, "pattern": str(rng.choice(PATTERNS, p=[0.5, 0.25, 0.25])),
            "has_image": i not in no_image, "colour_in_title": named,
            "suffix": ".png" if rng.random() < 0.25 else ".jpg",
        })
    return products


def _query_text(cat: str, colour: str, rng: np.random.Generator) -> str:
    syn, materials, _, apparel, _ = CATEGORIES[cat]
    noun = syn[rng.integers(len(syn))][int(rng.random() < 0.5)]
    text = str(rng.choice(QUERIES)).format(c=colour, n=noun)
    if apparel and rng.random() < 0.25:
        phrase = str(rng.choice(AUDIENCES[str(rng.choice(list(AUDIENCES)))]))
        text = f"{text} {phrase}" if phrase.startswith("for ") else f"{phrase} {text}"
    if rng.random() < 0.2:
        text = f"{rng.choice(materials)} {text}"
    if rng.random() < 0.15:
        text = f"{rng.choice(BRANDS).lower()} {text}"
    return text


def _label(query: dict, category: str, colour: str) -> str:
    """The module's label rule: what a product of `category` and `colour` is for `query`."""
    if category == query["category"]:
        return "E" if colour == query["colour"] else "S"
    return "C" if category in CATEGORIES[query["category"]][4] else "I"


def _judge(query: dict, by_kind: dict, rng: np.random.Generator) -> list[tuple[int, str]]:
    """Samples one query's candidates by the module's label rules: [(product index, label)].

    `by_kind` maps (category, colour) -> product indices.
    """
    pools: dict[str, list[int]] = {k: [] for k in LABELS}
    same_colour_irrelevant = []
    for (c, col), indices in by_kind.items():
        label = _label(query, c, col)
        pools[label] += indices
        if label == "I" and col == query["colour"]:
            same_colour_irrelevant += indices
    share = {"E": rng.uniform(0.36, 0.44), "S": rng.uniform(0.255, 0.295),
             "C": rng.uniform(0.10, 0.14)}
    total = int(rng.integers(12, 31))
    n_e = min(round(total * share["E"]), len(pools["E"]))
    total = min(40, max(10, round(n_e / share["E"])))
    counts = {"E": n_e, "S": round(total * share["S"]), "C": max(1, round(total * share["C"]))}
    counts["I"] = max(0, total - sum(counts.values()))
    chosen: list[tuple[int, str]] = []
    for label in LABELS:
        pool, k = pools[label], min(counts[label], len(pools[label]))
        if label == "I":  # half of the irrelevant ones share the query's colour, where possible
            hard = rng.permutation(same_colour_irrelevant)[: k // 2].tolist()
            rest = [i for i in rng.permutation(pool).tolist() if i not in set(hard)]
            picks = hard + rest[: k - len(hard)]
        else:
            picks = rng.permutation(pool)[:k].tolist()
        chosen += [(int(i), label) for i in picks]
    return chosen


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _prepare(out: Path) -> None:
    """Creates `out`, or clears a previous demo shop there; refuses other non-empty folders."""
    if out.exists() and any(out.iterdir()):
        if not (out / "demo_shop.json").is_file():
            raise FileExistsError(f"{out}: folder is not empty and holds no demo shop")
        shutil.rmtree(out / "images", ignore_errors=True)
    (out / "images").mkdir(parents=True, exist_ok=True)


def _queries(products: list[dict], n_queries: int, rng: np.random.Generator) -> list[dict]:
    """`n_queries` distinct query texts over the stocked (category, colour) pairs, each in one split."""
    combos = sorted({(p["category"], p["colour"]) for p in products})
    queries: list[dict] = []
    seen: set[str] = set()
    order = rng.permutation(len(combos)).tolist()
    while len(queries) < n_queries:
        cat, colour = combos[order[len(queries) % len(combos)]]
        for _ in range(50):  # a fresh phrasing for each query text
            text = _query_text(cat, colour, rng)
            typo = bool(rng.random() < 0.05)
            text = _typo(text, rng) if typo else text
            if text not in seen:
                break
        else:
            order = rng.permutation(len(combos)).tolist()
            continue
        seen.add(text)
        queries.append({"query_id": f"q{len(queries) + 1:05d}", "query": text,
                        "category": cat, "colour": colour, "typo": typo})
    n_train, n_valid = round(0.7 * n_queries), max(1, round(0.15 * n_queries))
    for rank, qi in enumerate(rng.permutation(n_queries).tolist()):
        queries[qi]["split"] = ("train" if rank < n_train else
                                "valid" if rank < n_train + n_valid else "test")
    return queries


def _examples(queries: list[dict], products: list[dict], rng: np.random.Generator) -> list[list]:
    """examples.csv rows: every query's judged candidates (`_judge`)."""
    by_kind: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(products):
        by_kind.setdefault((p["category"], p["colour"]), []).append(i)
    examples = []
    for q in queries:
        for i, label in sorted(_judge(q, by_kind, rng)):
            examples.append([q["query_id"], q["query"], products[i]["product_id"], label,
                             q["split"]])
    return examples


def _write_images(out: Path, products: list[dict], seed: int, image_size: int) -> None:
    """Sets each product's `image` path and renders the photo there (a seed of its own per product)."""
    for i, p in enumerate(products):
        p["image"] = f"images/{p['product_id']}{p['suffix']}" if p["has_image"] else ""
        if not p["has_image"]:
            continue
        image = render_product_image(p["category"], p["colour"], p["pattern"],
                                     np.random.default_rng([seed, 1, i]), image_size)
        if p["suffix"] == ".jpg":
            image.save(out / p["image"], "JPEG", quality=90, subsampling="4:2:0",
                       optimize=False, progressive=False)
        else:
            # Level 1: photo noise barely compresses, and higher levels cost 2x the time.
            image.save(out / p["image"], "PNG", compress_level=1, optimize=False)


def _write_tables(out: Path, products: list[dict], examples: list[list], queries: list[dict]) -> None:
    """products.csv and examples.csv, plus the answer keys demo_attributes.csv, demo_queries.csv and
    qrels.csv."""
    _write_csv(out / "products.csv", ["product_id", "title", "description", "brand", "color",
                                      "image"],
               [[p["product_id"], p["title"], p["description"], p["brand"],
                 p["colour"] if p["colour_in_title"] else "", p["image"]] for p in products])
    _write_csv(out / "examples.csv", ["query_id", "query", "product_id", "label", "split"],
               examples)
    _write_csv(out / "demo_attributes.csv",
               ["product_id", "category", "colour", "material", "audience", "pattern",
                "has_image", "colour_in_title"],
               [[p["product_id"], p["category"], p["colour"], p["material"], p["audience"],
                 p["pattern"], int(p["has_image"]), int(p["colour_in_title"])] for p in products])
    _write_csv(out / "qrels.csv", ["query_id", "product_id", "label"],
               [[q["query_id"], p["product_id"], label] for q in queries for p in products
                if (label := _label(q, p["category"], p["colour"])) != "I"])
    _write_csv(out / "demo_queries.csv", ["query_id", "query", "category", "colour", "split",
                                          "typo"],
               [[q["query_id"], q["query"], q["category"], q["colour"], q["split"],
                 int(q["typo"])] for q in queries])


def generate_demo_shop(
    out_dir: str | Path, *, seed: int = 0, size: str | int = "default", image_size: int = IMAGE_SIZE
) -> Path:
    """Writes the demo shop into `out_dir` and returns the folder (see the module docstring).

    Args:
        size: "tiny" (12 queries), "small" (60), "default" (150, ~3000 pairs, ~400 products),
            "large" (1500, ~30k pairs), or an int number of queries.
        image_size: side of the square product photos (>= 128; default: what the default
            model reads, so that its photos are not upscaled).
    """
    n_queries = SIZES[size] if isinstance(size, str) and size in SIZES else size
    if not isinstance(n_queries, int) or isinstance(n_queries, bool) or n_queries < 3:
        raise ValueError(f"size must be one of {list(SIZES)} or an int >= 3, got {size!r}")
    if image_size < 128:
        raise ValueError(f"image_size must be >= 128, got {image_size}")
    out = Path(out_dir)
    _prepare(out)
    rng = np.random.default_rng([seed, 0])
    n_products = max(110, round(n_queries * 2.8))
    colours_per_cat = int(np.clip(n_products // (len(CATEGORIES) * 8), 2, len(COLOURS)))
    products = _products(n_products, colours_per_cat, rng)
    queries = _queries(products, n_queries, rng)
    examples = _examples(queries, products, rng)
    _write_images(out, products, seed, image_size)
    _write_tables(out, products, examples, queries)
    meta = {"format_version": FORMAT_VERSION, "seed": seed, "queries": n_queries,
            "products": n_products, "image_size": image_size,
            "complements": {c: v[4] for c, v in CATEGORIES.items()}}
    (out / "demo_shop.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out


assert set(CATEGORIES) == set(SHAPES), "every category needs a silhouette"
