"""Weak labels from search logs: every (query, product) the logs show becomes a training example.

Per pair, the rate of each behaviour per *examination* is estimated with clipped inverse
propensity weights (Joachims et al., WSDM 2017), self-normalised (Swaminathan & Joachims, NeurIPS
2015): `rate = sum(a_i) / sum(max(p_i, clip))` over the pair's impressions, `p_i` the propensity
of the position it was shown at (estimated from the same logs, `estimate_propensities`): clicks
per expected examination. On the demo shop's simulated logs it agrees with the true label more
often than the plain `sum(a_i / p_i) / n` (0.77 against 0.74 of pairs: less variance from the
deep positions). With `correct: false` every `p_i` is 1: the raw rate per impression, which
credits a product for the positions the old ranker gave it.

The label, by the first rule that holds (thresholds are `LogLabelConfig` fields):

| label | rule |
|---|---|
| Exact | purchase rate >= `exact_purchase`, or click rate >= `exact_click` |
| Substitute | click rate >= `substitute_click` |
| Complement | click rate >= `complement_click` |
| Irrelevant | otherwise: examined, rarely clicked |

With `labels: "posterior"` (the default) these rules' labels only start the latent-label click
model (`esr_tf.logs.label_model`), and each pair becomes one example per label holding at least
`MIN_SHARE` of its posterior, weighted by that share: the cross-entropy against the posterior,
which weighs how often the pair was seen instead of a threshold on its rate.

The weight says how sure the pair's rate is: its expected examinations (`sum(p_i)`; corrected
or not, `n` times the same) over `full_weight_at`, at most 1. Pairs of the judged test queries
are left out, so that evaluation stays on unseen queries; the rest split into train and valid by
query (`valid_fraction`, hashed: the same query always lands in the same split).

Example:
>>> LogLabelConfig().codes([0.8, 0.4, 0.2, 0.01], [0.0, 0.0, 0.0, 0.0]).tolist()
['E', 'S', 'C', 'I']
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from esr_tf.data.catalogue import Catalogue, Example, derive_query_id, hash_fraction, normalize_query
from esr_tf.logs.label_model import fit_label_model
from esr_tf.logs.propensity import estimate_propensities, pair_index
from esr_tf.logs.read import LogCounts, LogError, aggregate_logs
from esr_tf.validation import ConfigError, check_bool, check_float

CODES = ("E", "S", "C", "I")  # the label model's order
LABEL_KINDS = ("posterior", "rules")
MIN_SHARE = 0.05  # a pair's labels below this share of its posterior are dropped (fewer rows)


@dataclass
class LogLabelConfig:
    """How logged behaviour becomes a label and a weight (`TrainConfig.log_labels`).

    Args:
        correct: divide by the position's propensity (inverse propensity weighting); false
            takes the raw rates (for comparison: what position bias does to a model).
        clip: propensities below this count as this (one impression counts at least `clip`
            examinations).
        exact_click, exact_purchase, substitute_click, complement_click: the label rules of the
            module docstring, rates per examination.
        full_weight_at: expected examinations at which a pair gets the full weight 1.
        valid_fraction: share of the logged queries kept for validation.
        labels: `"posterior"` (each pair's labels as the latent-label click model's posterior,
            `esr_tf.logs.label_model`, started from the rules) or `"rules"` (the rules' label alone).
    """

    correct: bool = True
    clip: float = 0.1
    exact_click: float = 0.6
    exact_purchase: float = 0.15
    substitute_click: float = 0.3
    complement_click: float = 0.12
    full_weight_at: float = 5.0
    valid_fraction: float = 0.15
    labels: str = "posterior"

    def __post_init__(self) -> None:
        self.correct = check_bool("log_labels.correct", self.correct)
        if self.labels not in LABEL_KINDS:
            raise ConfigError(f"log_labels.labels must be one of {LABEL_KINDS}, got {self.labels!r}")
        for name in ("clip", "exact_click", "exact_purchase", "substitute_click", "complement_click",
                     "valid_fraction"):
            value = check_float(f"log_labels.{name}", getattr(self, name), low=0, high=1, low_open=True)
            setattr(self, name, value)
        self.full_weight_at = check_float("log_labels.full_weight_at", self.full_weight_at, low=0, low_open=True)
        if not self.exact_click >= self.substitute_click >= self.complement_click:
            raise ConfigError("log_labels: exact_click >= substitute_click >= complement_click is needed "
                             f"(got {self.exact_click}, {self.substitute_click}, {self.complement_click})")

    def codes(self, click_rate, purchase_rate) -> np.ndarray:
        """The ESCI code each pair's rates give (the module docstring's table)."""
        click, purchase = np.asarray(click_rate, np.float64), np.asarray(purchase_rate, np.float64)
        rules = [(purchase >= self.exact_purchase) | (click >= self.exact_click), click >= self.substitute_click,
                 click >= self.complement_click]
        return np.select(rules, ["E", "S", "C"], "I").astype(object)


@dataclass
class WeakPairs:
    """One entry per logged (query, product): parallel arrays."""

    queries: np.ndarray
    product_ids: np.ndarray
    codes: np.ndarray  # "E" / "S" / "C" / "I": the rules', or the posterior's most likely
    weights: np.ndarray  # float32 in (0, 1]
    click_rates: np.ndarray
    purchase_rates: np.ndarray
    shares: np.ndarray  # [P, 4] each label's share of the pair (E S C I): one-hot under the rules
    label_model: dict | None = None  # the fitted rates, under "posterior"


def weak_pairs(counts: LogCounts, propensities: np.ndarray, rules: LogLabelConfig) -> WeakPairs:
    """`counts` folded per pair into rates, labels and weights (the module docstring)."""
    depth = len(propensities)
    p = np.asarray(propensities, np.float64)[np.minimum(counts.positions, depth) - 1]
    pairs, size = pair_index(counts.queries, counts.product_ids)
    seen = np.maximum(p, rules.clip) if rules.correct else np.ones_like(p)
    per_look = np.bincount(pairs, counts.impressions * seen, size)  # impressions if uncorrected
    click_rate = np.bincount(pairs, counts.clicks, size) / per_look
    purchase_rate = np.bincount(pairs, counts.purchases, size) / per_look
    examined = np.bincount(pairs, counts.impressions * p, size)
    first = np.unique(pairs, return_index=True)[1]  # each pair's first entry, for its names
    codes = rules.codes(click_rate, purchase_rate)
    weights = np.minimum(1.0, examined / rules.full_weight_at).astype(np.float32)
    number = {code: i for i, code in enumerate(CODES)}
    start = np.fromiter((number[c] for c in codes), np.int64, len(codes))
    shares, fitted = np.eye(len(CODES))[start], None
    if rules.labels == "posterior":
        model = fit_label_model(pairs, counts.impressions, counts.clicks, counts.carts, counts.purchases,
                                p if rules.correct else np.ones_like(p), start, size)
        shares, fitted = model.posteriors, model.summary()
        codes = np.array(CODES, dtype=object)[shares.argmax(axis=1)]
    return WeakPairs(counts.queries[first], counts.product_ids[first], codes, weights, click_rate, purchase_rate,
                     shares, fitted)


def _rows(shares: np.ndarray, weight: float) -> list[tuple[str, float]]:
    """(code, weight) per label with at least `MIN_SHARE` of the pair, its shares renormalised:
    a pair split over labels this way is the cross-entropy against its posterior."""
    keep = shares >= MIN_SHARE
    kept = shares[keep] / shares[keep].sum()
    return [(CODES[i], float(weight * s)) for i, s in zip(np.flatnonzero(keep), kept, strict=True)]


def catalogue_from_logs(catalogue: Catalogue, logs: str | Path, rules: LogLabelConfig) -> tuple[Catalogue, dict]:
    """`catalogue` with its train and valid examples made from `logs` (its test split kept),
    and a summary for `weak_labels.json`: propensities, pairs and labels per split."""
    counts = aggregate_logs(logs, catalogue.products)
    if not counts.rows:
        raise LogError(f"{logs}: no impressions to train from")
    propensities = estimate_propensities(counts)
    pairs = weak_pairs(counts, propensities, rules)
    index = {code: i for i, code in enumerate(catalogue.label_set.codes)}
    if set(index) != {"E", "S", "C", "I"}:
        raise LogError(f"{catalogue.root}: training from logs needs the ESCI labels (E, S, C, I), "
                       f"not {catalogue.label_set.codes}")
    held_out = {normalize_query(e.query) for e in catalogue.select("test")}
    examples, skipped = [], 0
    for query, product, shares, weight in zip(pairs.queries, pairs.product_ids, pairs.shares, pairs.weights,
                                              strict=True):
        key = normalize_query(query)
        if key in held_out:
            skipped += 1
            continue
        split = "valid" if hash_fraction(key, "logs") < rules.valid_fraction else "train"
        examples += [Example(query, derive_query_id(query), product, index[code], split, w)
                     for code, w in _rows(shares, weight)]
    learned = replace(catalogue, examples=examples + catalogue.select("test"))
    for split in ("train", "valid"):
        if not learned.select(split):
            raise LogError(f"{logs}: no logged query left for the '{split}' split (test queries are left out)")
    summary = {"logs": str(logs), "impressions": counts.rows, "sessions": counts.sessions,
               "pairs": len(pairs.codes) - skipped, "examples": len(examples), "label_model": pairs.label_model,
               "pairs_of_test_queries_left_out": skipped, "propensities": propensities.round(4).tolist(),
               "labels": {s: learned.label_counts(s) for s in ("train", "valid")}, "rules": vars(rules).copy()}
    return learned, summary
