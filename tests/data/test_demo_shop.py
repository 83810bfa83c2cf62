"""The synthetic demo shop: determinism, label rules, splits, shares, and loading."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from esr_tf.constants import IMAGE_SIZE
from esr_tf.data import describe_catalogue, generate_demo_shop, load_catalogue
from esr_tf.data.demo_images import COLOURS
from esr_tf.data.demo_shop import CATEGORIES


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _rules(query: dict, product: dict) -> str:
    """The label rules of the demo_shop docstring, recomputed from the answer keys."""
    if product["category"] == query["category"]:
        return "E" if product["colour"] == query["colour"] else "S"
    return "C" if product["category"] in CATEGORIES[query["category"]][4] else "I"


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_shop):
    again = _files(generate_demo_shop(tmp_path / "again", seed=0, size="tiny"))
    assert again == _files(tiny_shop)
    other = _files(generate_demo_shop(tmp_path / "other", seed=1, size="tiny"))
    assert other["products.csv"] != again["products.csv"]
    assert other["examples.csv"] != again["examples.csv"]
    shared = sorted(set(other) & set(again) - {"demo_shop.json"})
    assert any(other[k] != again[k] for k in shared if k.startswith("images/"))


def test_loads_strictly(tiny_shop):
    cat = load_catalogue(tiny_shop, missing_images="error")
    assert cat.image_problems == {} and cat.fixes == {}
    assert cat.splits() == ["train", "valid", "test"]
    summary = describe_catalogue(cat)
    assert summary["queries"] == 12
    assert summary["products"] == len(cat.products) >= 100


def test_files_and_images(tiny_shop):
    products = _read(tiny_shop / "products.csv")
    attributes = {r["product_id"]: r for r in _read(tiny_shop / "demo_attributes.csv")}
    suffixes = Counter()
    for p in products:
        has_image = attributes[p["product_id"]]["has_image"] == "1"
        assert bool(p["image"]) == has_image
        if has_image:
            suffixes[Path(p["image"]).suffix] += 1
            with Image.open(tiny_shop / p["image"]) as im:
                assert im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "RGB"
    assert set(suffixes) == {".jpg", ".png"}
    assert len(list((tiny_shop / "images").iterdir())) == sum(suffixes.values())
    assert [p["product_id"] for p in products] == sorted(p["product_id"] for p in products)
    meta = json.loads((tiny_shop / "demo_shop.json").read_text())
    assert meta["seed"] == 0 and meta["queries"] == 12


@pytest.mark.parametrize("shop", ["tiny_shop", "small_shop"])
def test_labels_follow_the_rules(request, shop):
    root = request.getfixturevalue(shop)
    products = {r["product_id"]: r for r in _read(root / "demo_attributes.csv")}
    queries = {r["query_id"]: r for r in _read(root / "demo_queries.csv")}
    examples = _read(root / "examples.csv")
    for e in examples:
        assert e["label"] == _rules(queries[e["query_id"]], products[e["product_id"]]), e
        assert e["split"] == queries[e["query_id"]]["split"]
    per_query = Counter(e["query_id"] for e in examples)
    assert set(per_query) == set(queries)
    assert all(10 <= n <= 40 for n in per_query.values()), per_query


def test_no_query_in_two_splits(small_shop):
    cat = load_catalogue(small_shop)
    split_of: dict[str, set] = {}
    for e in cat.examples:
        split_of.setdefault(e.query, set()).add(e.split)
        split_of.setdefault(e.query_id, set()).add(e.split)
    assert all(len(s) == 1 for s in split_of.values())
    queries = Counter(r["split"] for r in _read(small_shop / "demo_queries.csv"))
    assert queries == {"train": 42, "valid": 9, "test": 9}
    assert len({r["query"] for r in _read(small_shop / "demo_queries.csv")}) == 60


@pytest.mark.parametrize("shop", ["tiny_shop", "small_shop"])
def test_label_mix(request, shop):
    cat = load_catalogue(request.getfixturevalue(shop))
    mix = {k: v / len(cat.examples) for k, v in cat.label_counts().items()}
    assert 0.35 <= mix["exact"] <= 0.45, mix
    assert 0.25 <= mix["substitute"] <= 0.30, mix
    assert 0.10 <= mix["complement"] <= 0.15, mix
    assert 0.15 <= mix["irrelevant"] <= 0.25, mix


def test_colour_missing_and_no_image_shares(small_shop):
    text = {r["product_id"]: r for r in _read(small_shop / "products.csv")}
    attributes = _read(small_shop / "demo_attributes.csv")
    n = len(attributes)
    hidden = [a for a in attributes if a["colour_in_title"] == "0"]
    no_image = [a for a in attributes if a["has_image"] == "0"]
    assert 0.30 <= len(hidden) / n <= 0.40
    assert 0.12 <= len(no_image) / n <= 0.18
    for a in hidden:  # only the photo tells the colour: no colour word anywhere in the text
        p = text[a["product_id"]]
        words = f"{p['title']} {p['description']} {p['color']}".lower()
        assert not any(c in words.replace("-", " ").split() for c in COLOURS), p
        assert a["has_image"] == "1"
    for a in no_image:  # no photo: the title always names the colour
        assert a["colour"] in text[a["product_id"]]["title"].lower()
        assert text[a["product_id"]]["color"] == a["colour"]


def test_queries_name_their_intent(small_shop):
    queries = _read(small_shop / "demo_queries.csv")
    typos = sum(q["typo"] == "1" for q in queries)
    assert typos <= 0.15 * len(queries)
    for q in queries:
        if q["typo"] == "0":
            assert q["colour"] in q["query"]
    phrasings = {q["query"].replace(q["colour"], "{c}") for q in queries}
    assert len(phrasings) > len(queries) // 2  # varied wording, not one template


def test_int_size_and_regeneration(tmp_path):
    root = generate_demo_shop(tmp_path / "shop", seed=5, size=4, image_size=128)
    assert len(_read(root / "demo_queries.csv")) == 4
    generate_demo_shop(root, seed=5, size=4, image_size=128)  # over a previous demo shop
    with Image.open(next((root / "images").iterdir())) as im:
        assert im.size == (128, 128)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        generate_demo_shop(tmp_path / "a", size="huge")
    with pytest.raises(ValueError, match="image_size"):
        generate_demo_shop(tmp_path / "b", image_size=64)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        generate_demo_shop(tmp_path / "c", size="tiny")
    assert (tmp_path / "c" / "thesis.txt").exists()
