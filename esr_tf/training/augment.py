"""Training-set augmentation that teaches the fusion head to read the photo.

Many catalogue titles name the product's colour, so a model learns to match the query's colour
word against the title and rarely has to look at the photo; yet for titles without a colour only
the photo tells an exact match from a substitute. `hide_colour_words` adds copies of training
examples whose product has a photo and a known `color` (the catalogue's optional column) with
that colour removed from the title and every other product text field, and `color` itself
emptied (a model reading `model.product_text` would find it there), labels unchanged: for those
copies only the photo can tell.

Only modes that read photos are given the copies (see `train`): for `text_only` they would be
examples without any answer in its input.

Example:
>>> cols = {"title": np.array(["Red wool sock", "Blue cap"], dtype=object),
...         "color": np.array(["red", ""], dtype=object), "image": np.array(["a.jpg", "b.jpg"], dtype=object),
...         "label": np.array([0, 1], np.int32)}
>>> out = hide_colour_words(cols, rate=1.0, seed=0)
>>> out["title"].tolist(), out["color"].tolist()
(['Red wool sock', 'Blue cap', 'wool sock'], ['red', '', ''])
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from esr_tf.constants import PRODUCT_TEXT_FIELDS


def _without(title: str, colour: str) -> str | None:
    """`title` with every whole-word occurrence of `colour` removed; None if it has none."""
    # Not next to a hyphen either: "blue-green" minus "blue" would name another colour.
    pattern = re.compile(rf"(?<![\w-]){re.escape(colour)}(?![\w-])", re.IGNORECASE)
    stripped, count = pattern.subn("", title)
    if not count:
        return None
    stripped = re.sub(r"\s+([,.;:])", r"\1", stripped)  # "Lumio - , Nylon" -> "Lumio -, Nylon"
    stripped = re.sub(r"([-|,])(\s*[-|,])+", r"\1", stripped)  # -> "Lumio - Nylon"
    return re.sub(r"\s{2,}", " ", stripped).strip(" ,-|")


def hide_colour_words(columns: Mapping[str, np.ndarray], *, rate: float, seed: int = 0) -> dict[str, np.ndarray]:
    """`columns` plus colour-hidden copies of a `rate` share of the eligible examples.

    Eligible: a photo, a non-empty `color`, and that colour written in the title (whole word,
    any case). Copies are appended after the originals; every other column is copied as is.
    """
    columns = {k: np.asarray(v) for k, v in columns.items()}
    if rate <= 0 or "color" not in columns:
        return columns
    n = len(columns["title"])
    rng = np.random.default_rng([seed, 7])
    rows, titles = [], []
    for i in range(n):
        colour = str(columns["color"][i]).strip()
        if not colour or not str(columns["image"][i]) or rng.random() >= rate:
            continue
        title = _without(str(columns["title"][i]), colour)
        if title:
            rows.append(i)
            titles.append(title)
    if not rows:
        return columns
    out = {k: np.concatenate([v, v[rows]]) for k, v in columns.items()}
    out["title"][n:] = titles
    for name in (f for f in PRODUCT_TEXT_FIELDS if f in out and f not in ("title", "color")):
        for j, i in enumerate(rows, start=n):
            stripped = _without(str(out[name][j]), str(columns["color"][i]).strip())
            out[name][j] = out[name][j] if stripped is None else stripped
    out["color"][n:] = ""
    return out
