"""`esr-tf simulate-logs`: search logs made from a judged catalogue, for development and tests.

Each session picks one of the catalogue's judged queries (train and valid splits by default:
the test split's judgments stay for evaluation) and shows `list_size` products: the query's
judged products, filled up with random catalogue products (counted as Irrelevant; with fewer
judged products than `list_size`). A logging ranker orders them: the truth made noisy, grade
(E 3, S 2, C 1, I 0) plus Gaussian noise of sd `noise` drawn anew for every session, so a
product is shown at different positions. The shopper then follows a position-based model:

- position k is examined with probability `(1 / k) ** eta` (the true propensities, written to
  `simulation.json` so an estimate can be checked against them);
- an examined product is clicked with `CLICK[label]`, a click put in the cart with
  `CART[label]`, a cart bought with `PURCHASE[label]` (noise included: Irrelevant products get
  clicks too).

Writes `<out>/impressions.csv` (the log format of `esr_tf.logs.read`) and `<out>/simulation.json`.

Example:
>>> info = simulate_logs(catalogue, "logs", sessions=20_000, eta=1.0)  # doctest: +SKIP
>>> info["propensities"][:3]  # doctest: +SKIP
[1.0, 0.5, 0.3333333333333333]
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from esr_tf.logs.read import COLUMNS, LogError

GRADE = {"E": 3, "S": 2, "C": 1, "I": 0}  # what the logging ranker orders by, before its noise
CLICK = {"E": 0.9, "S": 0.5, "C": 0.25, "I": 0.05}  # P(click | examined, label)
CART = {"E": 0.5, "S": 0.25, "C": 0.3, "I": 0.02}  # P(cart | click, label)
PURCHASE = {"E": 0.6, "S": 0.4, "C": 0.5, "I": 0.1}  # P(purchase | cart, label)
SPLITS = ("train", "valid")


def judged_lists(catalogue, splits: tuple[str, ...] = SPLITS) -> dict[str, dict[str, str]]:
    """query text -> {product id: ESCI code} of `splits`' judged pairs."""
    codes = catalogue.label_set.codes
    if set(codes) != set(GRADE):
        raise LogError(f"{catalogue.root}: simulating logs needs the ESCI labels (E, S, C, I), not {codes}")
    lists: dict[str, dict[str, str]] = {}
    for split in splits:
        for e in catalogue.select(split):
            lists.setdefault(e.query, {})[e.product_id] = codes[e.label]
    if not lists:
        raise LogError(f"{catalogue.root}: no judged query in split(s) {', '.join(splits)} to simulate sessions from")
    return lists


def _session(rng, judged: dict[str, str], products: np.ndarray, list_size: int, noise: float) -> list[tuple]:
    """(product id, label) in the order shown."""
    shown, taken = list(judged.items()), set(judged)
    while len(shown) < min(list_size, len(products)):
        extra = str(products[rng.integers(len(products))])
        if extra not in taken:
            taken.add(extra)
            shown.append((extra, "I"))
    score = np.array([GRADE[label] for _, label in shown], np.float64) + noise * rng.standard_normal(len(shown))
    return [shown[i] for i in np.argsort(-score, kind="stable")[:list_size]]


def simulate_logs(catalogue, out: str | Path, *, sessions: int = 20_000, eta: float = 1.0, list_size: int = 10,
                  noise: float = 1.0, seed: int = 0, splits: tuple[str, ...] = SPLITS) -> dict:
    """Writes the logs (see the module docstring); returns what `simulation.json` holds."""
    for name, value, least in (("sessions", sessions, 1), ("list_size", list_size, 1), ("eta", eta, 0),
                               ("noise", noise, 0)):
        if not value >= least:  # NaN too
            raise LogError(f"{name} must be >= {least}, got {value}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lists = judged_lists(catalogue, splits)
    queries = sorted(lists)
    products = np.array(sorted(catalogue.products), dtype=object)
    examined = (1.0 / np.arange(1, list_size + 1)) ** eta
    rng = np.random.default_rng(seed)
    with open(out / "impressions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for s in range(sessions):
            query = queries[rng.integers(len(queries))]
            for k, (product, label) in enumerate(_session(rng, lists[query], products, list_size, noise), 1):
                click = rng.random() < examined[k - 1] and rng.random() < CLICK[label]
                cart = click and rng.random() < CART[label]
                bought = cart and rng.random() < PURCHASE[label]
                writer.writerow([f"s{s:07d}", query, product, k, int(click), int(cart), int(bought)])
    info = {"sessions": sessions, "eta": eta, "list_size": list_size, "noise": noise, "seed": seed,
            "splits": list(splits), "queries": len(queries), "propensities": examined.tolist(),
            "logging_ranker": "grade (E 3, S 2, C 1, I 0) + N(0, noise^2) per session",
            "click": CLICK, "cart": CART, "purchase": PURCHASE}
    (out / "simulation.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
