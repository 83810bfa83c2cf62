"""The in-memory catalogue: products, judged (query, product, label) examples and their splits.

Every loader (`load_catalogue` for CSV / JSONL folders, `load_esci` for the Amazon Shopping
Queries parquet files) returns a `Catalogue`. Bad input raises `CatalogueError`, whose message
names the file, the row (1-based data row; `line` for JSONL) and the column or field.

Documented fallbacks (counted, never silent; one warning per load sums them up):
- `Catalogue.image_problems`: reason -> number of images turned into "no image" when the loader
  runs with `missing_images="no_image"` (reasons are the keys of `image_files.IMAGE_PROBLEMS`).
- `Catalogue.fixes`: other repairs, e.g. `text_truncated` (a text over `max_text_chars`
  characters was cut to that length), `title_empty`, and ESCI's `title_missing`.

Splits are by query: a query is never in two splits. Where a file gives no split, it is derived
from a hash of the normalised query text (80 / 10 / 10 train / valid / test), so it never
depends on row order or on which other queries are present.

Example:
>>> from esr_tf.labels import ESCI
>>> cat = Catalogue(root=Path("."), products={"p1": Product("p1", "red mug")},
...                 examples=[Example("red mug", "q1", "p1", 0, "train")], label_set=ESCI)
>>> cat.splits(), cat.columns("train")["title"].tolist()
(['train'], ['red mug'])
"""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from esr_tf.constants import MISSING_IMAGE_POLICIES
from esr_tf.data.image_files import inspect_image_file
from esr_tf.labels import ESCI, LabelSet

logger = logging.getLogger("esr_tf.data")

SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"validation": "valid", "val": "valid", "dev": "valid", "eval": "valid"}


class CatalogueError(ValueError):
    """Bad catalogue input; the message names the file, row / line and column / field."""


def locate(file: str | Path, row: int | None = None, column: str | None = None, *,
           unit: str = "row") -> str:
    """Formats `"products.csv, row 3, column 'title'"` (`unit="line"` for JSONL)."""
    parts = [str(file)]
    if row is not None:
        parts.append(f"{unit} {row}")
    if column is not None:
        parts.append(f"{'field' if unit == 'line' else 'column'} {column!r}")
    return ", ".join(parts)


# slots: no per-object __dict__ (~100 bytes each; a catalogue holds one Product and one Example
# per judged pair at ESCI scale, and training memory should not grow with them, #17).
@dataclass(frozen=True, slots=True)
class Product:
    """One product; `image` is a resolved absolute path, or "" for no image."""

    product_id: str
    title: str
    description: str = ""
    brand: str = ""
    color: str = ""
    bullets: str = ""  # bullet points (ESCI's product_bullet_point), one per line
    image: str = ""


@dataclass(frozen=True, slots=True)
class Example:
    """One judged pair: `label` indexes `Catalogue.label_set.names`; `weight` scales its loss
    (1 for human judgments; weak labels from search logs carry their confidence, `esr_tf.logs`)."""

    query: str
    query_id: str
    product_id: str
    label: int
    split: str
    weight: float = 1.0


def normalize_query(query: str) -> str:
    """The query as the model's tokenizer reads it: the identity used for splits and ids.

    KerasHub's BERT tokenizer (lowercase + strip_accents) decomposes (NFD) and drops combining
    marks, case-folds with NFKC_Casefold (full-width letters become ASCII) and splits on
    whitespace, control and format characters. Texts equal after that are one query, so they
    can never land in two splits.

    >>> normalize_query("Crème  Brûlée"), normalize_query("ＲＥＤ ＭＵＧ"), normalize_query("red\u200bmug")
    ('creme brulee', 'red mug', 'red mug')
    """
    text = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", query))
    text = "".join(
        " " if unicodedata.category(c) in ("Cc", "Cf") else c
        for c in text
        if unicodedata.category(c) != "Mn"
    )
    return " ".join(unicodedata.normalize("NFKC", text.casefold()).split())


def derive_query_id(query: str) -> str:
    """A stable id from the query text (same text, same id, on every machine)."""
    return "q" + hashlib.sha256(normalize_query(query).encode("utf-8")).hexdigest()[:12]


def hash_fraction(text: str, salt: str = "split") -> float:
    """Deterministic number in [0, 1) from `text` (unlike `hash()`, not salted per process)."""
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(query: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """Assigns a split from the normalised query text (`fractions` = train, valid, test)."""
    u = hash_fraction(normalize_query(query)) * sum(fractions)
    if u < fractions[0]:
        return "train"
    return "valid" if u < fractions[0] + fractions[1] else "test"


def parse_split(value: str) -> str:
    """Maps a split spelling (`train`, `valid`/`validation`/`val`/`dev`, `test`); `ValueError`."""
    key = value.strip().lower()
    key = _SPLIT_ALIASES.get(key, key)
    if key not in SPLITS:
        raise ValueError(f"unknown split {value!r} (expected train, valid or test)")
    return key


class TextFixer:
    """Strips text and cuts it to `max_chars`, counting every repair in `fixes`."""

    def __init__(self, max_chars: int, fixes: Counter):
        if max_chars < 1:
            raise ValueError(f"max_text_chars must be >= 1, got {max_chars}")
        self.max_chars = max_chars
        self.fixes = fixes

    def __call__(self, text: str | None) -> str:
        text = "" if text is None else str(text).strip()
        if len(text) > self.max_chars:
            self.fixes["text_truncated"] += 1
            text = text[: self.max_chars].rstrip()
        return text


class SplitGuard:
    """Refuses a query (by normalised text or by id) that shows up in two splits, one
    `query_id` given to two different queries (nDCG would pool their products), and ids that
    differ only by Unicode normalisation (NFKC: full-width, composed vs decomposed accents)."""

    def __init__(self, file: str | Path, unit: str = "row"):
        self.file, self.unit = file, unit
        self._seen: dict[tuple[str, str], tuple[str, int]] = {}
        self._queries: dict[str, tuple[str, str, int]] = {}  # id -> normalised, query, row
        self._spellings: dict[str, tuple[str, int]] = {}  # NFKC id -> id as written, row

    def check(self, query: str, query_id: str, split: str, row: int) -> None:
        text = normalize_query(query)
        for key in (("query", text), ("query_id", query_id)):
            first = self._seen.setdefault(key, (split, row))
            if first[0] != split:
                raise CatalogueError(
                    f"{locate(self.file, row, 'split', unit=self.unit)}: {key[0]} {key[1]!r} is in "
                    f"split {split!r} here but in {first[0]!r} at {self.unit} {first[1]} "
                    "(a query must stay in one split)"
                )
        self._check_id(query, text, query_id, row)

    def _check_id(self, query: str, text: str, query_id: str, row: int) -> None:
        where = locate(self.file, row, "query_id", unit=self.unit)
        written, first_row = self._spellings.setdefault(
            unicodedata.normalize("NFKC", query_id), (query_id, row)
        )
        if written != query_id:
            raise CatalogueError(
                f"{where}: query_id {query_id!r} differs from {written!r} at {self.unit} "
                f"{first_row} only by Unicode normalisation (NFKC); write the id one way"
            )
        first_text, first_query, first_row = self._queries.setdefault(query_id, (text, query, row))
        if first_text != text:
            raise CatalogueError(
                f"{where}: query_id {query_id!r} is given to query {query!r} here and to "
                f"{first_query!r} at {self.unit} {first_row} (one id must be one query: nDCG "
                "would pool their products)"
            )


def check_missing_images(value: str) -> str:
    if value not in MISSING_IMAGE_POLICIES:
        raise ValueError(f"missing_images must be one of {MISSING_IMAGE_POLICIES}, got {value!r}")
    return value


class ImagePolicy:
    """Applies `missing_images` to image files: raise, or count and fall back to "no image"."""

    def __init__(self, missing_images: str):
        self.policy = check_missing_images(missing_images)
        self.problems: Counter = Counter()
        self._cache: dict[Path, tuple[str | None, str]] = {}

    def __call__(self, path: Path, where: str, shown: str) -> str:
        """Returns the path as a string, or "" (counted) when unusable under "no_image"."""
        if path not in self._cache:  # shared images are checked once
            self._cache[path] = inspect_image_file(path)
        reason, detail = self._cache[path]
        return str(path) if reason is None else self.refuse(reason, detail, where, shown)

    def refuse(self, reason: str, detail: str, where: str, shown: str) -> str:
        """Raises under "error"; else counts `reason` and returns "" (no image)."""
        if self.policy == "error":
            raise CatalogueError(
                f"{where}: image {shown!r} is unusable ({reason}: {detail}); "
                "pass missing_images='no_image' to load it as a product without image"
            )
        self.problems[reason] += 1
        return ""


def log_fallbacks(source: str | Path, image_problems: dict[str, int], fixes: dict[str, int]):
    """One warning per load with every fallback count (silent when nothing was repaired)."""
    parts = []
    if image_problems:
        n = sum(image_problems.values())
        detail = ", ".join(f"{k} {v}" for k, v in sorted(image_problems.items()))
        parts.append(f"{n} image(s) replaced by 'no image' ({detail})")
    if fixes:
        parts.append("fixes (" + ", ".join(f"{k} {v}" for k, v in sorted(fixes.items())) + ")")
    if parts:
        logger.warning("%s: %s", source, "; ".join(parts))


@dataclass
class Catalogue:
    """Products plus judged examples. See the module docstring for the fallback counters."""

    root: Path
    products: dict[str, Product]
    examples: list[Example]
    label_set: LabelSet = ESCI
    image_problems: dict[str, int] = field(default_factory=dict)
    fixes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def loaded(cls, source: str | Path, root: Path, products, examples, label_set, image_problems, fixes):
        """The catalogue a loader read from `source`, after one warning summing up its fallbacks."""
        log_fallbacks(source, dict(image_problems), dict(fixes))
        return cls(
            root=Path(root).resolve(),
            products=products,
            examples=examples,
            label_set=label_set,
            image_problems=dict(image_problems),
            fixes=dict(fixes),
        )

    def splits(self) -> list[str]:
        """The splits present, in train / valid / test order."""
        present = {e.split for e in self.examples}
        return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))

    def select(self, split: str | None = None) -> list[Example]:
        if split is None:
            return list(self.examples)
        split = parse_split(split)
        return [e for e in self.examples if e.split == split]

    def columns(
        self, split: str | None = None, label_set: LabelSet | None = None
    ) -> dict[str, np.ndarray]:
        """Column arrays over the examples of `split` (all when None), products joined in.

        Keys: query, query_id, product_id, title, description, brand, color, bullets, image
        (resolved path or ""), split (object arrays of str), label (int32) and weight (float32).

        `label_set`: number the labels as this set does (a model's, matched by name or code)
        instead of as `self.label_set`; `CatalogueError` names labels it lacks.
        """
        examples = self.select(split)
        labels = np.asarray([e.label for e in examples], dtype=np.int32).reshape(-1)
        if label_set is not None and label_set != self.label_set:
            labels = self._relabel(labels, label_set)
        products = [self.products[e.product_id] for e in examples]

        def col(values) -> np.ndarray:
            out = np.empty(len(examples), dtype=object)
            out[:] = list(values)
            return out

        return {
            "query": col(e.query for e in examples),
            "query_id": col(e.query_id for e in examples),
            "product_id": col(e.product_id for e in examples),
            "title": col(p.title for p in products),
            "description": col(p.description for p in products),
            "brand": col(p.brand for p in products),
            "color": col(p.color for p in products),
            "bullets": col(p.bullets for p in products),
            "image": col(p.image for p in products),
            "label": labels,
            "weight": np.asarray([e.weight for e in examples], dtype=np.float32).reshape(-1),
            "split": col(e.split for e in examples),
        }

    def _relabel(self, labels: np.ndarray, label_set: LabelSet) -> np.ndarray:
        try:
            mapping = self.label_set.index_map(label_set, used=np.unique(labels))
        except ValueError as e:
            raise CatalogueError(f"catalogue at {self.root}: {e}") from None
        return mapping[labels] if labels.size else labels

    def label_counts(self, split: str | None = None) -> dict[str, int]:
        counts = Counter(e.label for e in self.select(split))
        return {name: counts.get(i, 0) for i, name in enumerate(self.label_set.names)}

    def __len__(self) -> int:
        return len(self.examples)


def describe_catalogue(cat: Catalogue) -> dict:
    """Counts per split (examples, queries, label mix) plus products, images and fallbacks.

    Example:
    >>> describe_catalogue(Catalogue(Path("."), {}, []))["examples"]
    0
    """
    per_split = {}
    for split in cat.splits():
        examples = cat.select(split)
        counts = cat.label_counts(split)
        n = max(len(examples), 1)
        per_split[split] = {
            "examples": len(examples),
            "queries": len({e.query_id for e in examples}),
            "labels": counts,
            "label_mix": {k: round(v / n, 3) for k, v in counts.items()},
        }
    with_image = sum(1 for p in cat.products.values() if p.image)
    return {
        "products": len(cat.products),
        "products_with_image": with_image,
        "examples": len(cat.examples),
        "queries": len({e.query_id for e in cat.examples}),
        "splits": per_split,
        "image_problems": dict(cat.image_problems),
        "fixes": dict(cat.fixes),
    }
