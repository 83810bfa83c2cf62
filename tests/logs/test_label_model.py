"""The latent-label click model (#32): posteriors over E / S / C / I from how often a pair was
seen, clicked, carted and bought, and the training rows they become."""

from __future__ import annotations

import numpy as np
import pytest

from esr_tf.logs.label_model import fit_label_model
from esr_tf.logs.read import LogCounts
from esr_tf.logs.weak_labels import LogLabelConfig, weak_pairs
from esr_tf.training.config import ConfigError, parse_config

# (clicks, carts, purchases) per 100 impressions at position 1, by true label
WELL_SEEN = {"E": (90, 45, 27), "S": (50, 12, 5), "C": (25, 8, 4), "I": (5, 0, 0)}


def _counts(extra=()):
    """20 well-seen pairs of each label, plus `extra` rows (product, position, shown, clicks, carts, buys)."""
    rows = [(f"{label}{i}", 1, 100, *WELL_SEEN[label]) for label in WELL_SEEN for i in range(20)]
    rows += list(extra)
    d, k, n, c, a, b = zip(*rows, strict=True)
    return LogCounts(queries=np.array(["q"] * len(rows), dtype=object), product_ids=np.array(d, dtype=object),
                     positions=np.array(k, np.int32), impressions=np.array(n), clicks=np.array(c),
                     carts=np.array(a), purchases=np.array(b), rows=sum(n), sessions=sum(n))


def _by_product(pairs, values):
    return dict(zip(pairs.product_ids, values, strict=True))


def test_a_pair_seen_three_times_is_not_exact_because_two_clicks_cleared_the_threshold():
    counts = _counts([("lucky", 1, 3, 2, 0, 0)])
    propensities = np.array([1.0])
    rules = weak_pairs(counts, propensities, LogLabelConfig(labels="rules"))
    assert _by_product(rules, rules.codes)["lucky"] == "E"  # 2 / 3 >= exact_click
    posterior = weak_pairs(counts, propensities, LogLabelConfig())
    shares = _by_product(posterior, posterior.shares)["lucky"]
    assert shares.sum() == pytest.approx(1.0) and shares[1] > shares[0]  # Substitute more likely than Exact
    # the well-seen pairs keep their labels, and the fitted rates their order
    codes = _by_product(posterior, posterior.codes)
    assert all(codes[f"{label}{i}"] == label for label in WELL_SEEN for i in range(20))
    click = posterior.label_model["click"]
    assert click == sorted(click, reverse=True) and click[0] == pytest.approx(0.9, abs=0.02)


def test_the_posterior_corrects_for_the_position_a_pair_was_shown_at():
    # clicked 22 of 100 times at position 4, where one shopper in four looks: an Exact product
    counts = _counts([("deep", 4, 100, 22, 11, 7)])
    posterior = weak_pairs(counts, np.array([1.0, 0.5, 0.33, 0.25]), LogLabelConfig())
    assert _by_product(posterior, posterior.codes)["deep"] == "E"
    raw = weak_pairs(counts, np.array([1.0, 0.5, 0.33, 0.25]), LogLabelConfig(correct=False))
    assert _by_product(raw, raw.codes)["deep"] != "E"


def test_the_fit_starts_from_the_rules_and_an_empty_label_keeps_a_rate():
    # every pair Exact by the rules: the other labels start from the fallback rates, nothing is NaN
    fit = fit_label_model(np.array([0, 1]), np.array([50, 50]), np.array([45, 40]), np.zeros(2), np.zeros(2),
                          np.ones(2), np.array([0, 0]), 2)
    assert np.isfinite(fit.posteriors).all() and np.isfinite(fit.click).all()
    assert fit.posteriors.argmax(axis=1).tolist() == [0, 0]


def test_posterior_pairs_become_rows_whose_weights_sum_to_the_pair_weight(tiny_catalogue, tmp_path):
    from esr_tf.logs.simulate import simulate_logs
    from esr_tf.logs.weak_labels import catalogue_from_logs

    simulate_logs(tiny_catalogue, tmp_path, sessions=300, seed=1)
    logs = tmp_path / "impressions.csv"
    by_rules, summary = catalogue_from_logs(tiny_catalogue, logs, LogLabelConfig(labels="rules"))
    soft, soft_summary = catalogue_from_logs(tiny_catalogue, logs, LogLabelConfig())
    rows = [e for s in ("train", "valid") for e in by_rules.select(s)]
    assert len(rows) == summary["pairs"] == summary["examples"] and summary["label_model"] is None
    weight = {}
    for s in ("train", "valid"):
        for e in soft.select(s):
            weight[(e.query, e.product_id)] = weight.get((e.query, e.product_id), 0.0) + e.weight
    assert weight == pytest.approx({(e.query, e.product_id): e.weight for e in rows})
    assert soft_summary["examples"] >= soft_summary["pairs"] == summary["pairs"]
    assert set(soft_summary["label_model"]) == {"click", "cart", "purchase", "iterations"}


def test_an_unknown_label_kind_names_the_field():
    with pytest.raises(ConfigError, match="log_labels.labels"):
        parse_config(None, ["log_labels.labels=maybe"])
