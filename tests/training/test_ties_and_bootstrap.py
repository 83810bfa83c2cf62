"""Tie-aware ranking metrics (exact expectations over tied orderings) and the query bootstrap."""

import itertools
import math

import numpy as np
import pytest
from training.rs_reference import keras_rs_reference

from esr_tf.labels import ESCI
from esr_tf.training.bootstrap import percentile_interval, resampled_sums
from esr_tf.training.metrics import evaluation_report, query_stats, ranking_metrics
from esr_tf.training.ranking import per_query_ranking

E, S, C, I = 0, 1, 2, 3  # noqa: E741 - the ESCI codes
GAINS = np.array(ESCI.gains)


def _disc(rank):  # 1-based rank
    return 1 / math.log2(rank + 1)


def _numbers(report, prefix=""):
    """Every number in a report, flattened, for exact comparisons."""
    if isinstance(report, dict):
        return {f"{prefix}{k}/{kk}": v for k, sub in report.items() for kk, v in _numbers(sub).items()}
    if isinstance(report, list):
        return {f"{prefix}{i}/{kk}": v for i, sub in enumerate(report) for kk, v in _numbers(sub).items()}
    return {"": report}


def test_row_order_does_not_change_any_metric():
    # The case: a text-only model scores every product of a class alike, and the
    # examples file lists exact products first. Reversed or shuffled rows must score the same.
    rng = np.random.default_rng(0)
    q = np.repeat(np.arange(60), 12)
    y = np.sort(rng.choice(4, size=q.size, p=[0.4, 0.3, 0.1, 0.2]).reshape(60, 12), axis=1).ravel()
    probs = np.eye(4)[rng.integers(0, 2, size=60)[q]] * 0.6 + 0.1  # one score per query
    first = evaluation_report(y, probs, None, q)
    # Ties broken by input order (what keras_rs computes once handed the lists in that order)
    # would score this 1.0 as given and 0.30 reversed.
    scores, gains = probs @ GAINS, GAINS[y]
    in_order = keras_rs_reference(q, gains, scores, y == E, k=10)["ndcg"]
    reversed_ = keras_rs_reference(q[::-1], gains[::-1], scores[::-1], y[::-1] == E, k=10)["ndcg"]
    assert in_order == pytest.approx(1.0) and reversed_ < 0.4
    assert reversed_ < first["ndcg@10"] < in_order
    for order in (np.arange(q.size)[::-1], rng.permutation(q.size)):
        again = evaluation_report(y[order], probs[order], None, q[order])
        a, b = _numbers(first), _numbers(again)
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-9), key
            else:
                assert b[key] == value, key


@pytest.mark.parametrize("n, r", [(1, 1), (4, 1), (5, 2), (12, 3), (30, 30), (25, 1)])
def test_constant_scores_give_the_closed_form_expectation(n, r):
    # A constant-score model: the whole list is one tied group. Every product is at each rank
    # with probability 1/n, so DCG@k = mean gain * sum_{i<=min(n,k)} 1/log2(i+1); the first
    # exact product is at rank i with probability C(n-i, r-1) / C(n, r).
    k = 10
    y = np.array([E] * r + [S] * ((n - r) // 2) + [I] * (n - r - (n - r) // 2))
    m = ranking_metrics(np.zeros(n, int), y, np.full(n, 0.3), k=k)
    gains = GAINS[y]
    ideal = sum(g * _disc(i + 1) for i, g in enumerate(sorted(gains, reverse=True)[:k]))
    dcg = gains.mean() * sum(_disc(i) for i in range(1, min(n, k) + 1))
    rr = sum(math.comb(n - i, r - 1) / math.comb(n, r) / i for i in range(1, n - r + 2))
    assert m["ndcg@10"] == pytest.approx(dcg / ideal, abs=1e-6)
    assert m["mrr"] == pytest.approx(rr, abs=1e-6)


def test_partial_ties_hand_computed():
    # Scores .9 | .5 .5 .5 | .1 with labels S | E I I | E: the tied group at ranks 2-4 has mean
    # gain 1/3, and its exact product is at rank 2, 3 or 4 with probability 1/3 each.
    #   DCG@10 = 0.1 + (1/3)(1/log2 3 + 1/log2 4 + 1/log2 5) + 1/log2 6
    #   IDCG@10 = 1 + 1/log2 3 + 0.1/log2 4; RR = (1/2 + 1/3 + 1/4) / 3 = 13/36
    #   At k=3 only ranks 2 and 3 of the group count: DCG@3 = 0.1 + (1/3)(1/log2 3 + 1/log2 4)
    # Second query, all tied, I E E: RR = P(exact first) + P(I first) / 2 = 2/3 + 1/6 = 5/6.
    q = np.array([1, 1, 1, 1, 1, 2, 2, 2])
    y = np.array([S, E, I, I, E, I, E, E])
    s = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.4, 0.4, 0.4])
    r = per_query_ranking(q, GAINS[y], s, y == E, k=10)
    dcg = 0.1 + (_disc(2) + _disc(3) + _disc(4)) / 3 + _disc(5)
    ideal = 1 + _disc(2) + 0.1 * _disc(3)
    assert r.ndcg[0] == pytest.approx(dcg / ideal, abs=1e-12)
    assert r.rr.tolist() == pytest.approx([13 / 36, 5 / 6], abs=1e-12)
    at3 = per_query_ranking(q, GAINS[y], s, y == E, k=3)
    assert at3.ndcg[0] == pytest.approx((0.1 + (_disc(2) + _disc(3)) / 3) / ideal, abs=1e-12)
    assert at3.ndcg[1] == pytest.approx((2 / 3) * (_disc(1) + _disc(2) + _disc(3)) / (1 + _disc(2)), abs=1e-12)


def _mean_over_orderings(gains, scores, relevant, k):
    """nDCG@k and RR averaged over every ordering consistent with the scores (brute force)."""
    ideal = sum(g * _disc(i + 1) for i, g in enumerate(sorted(gains, reverse=True)[:k]))
    ndcgs, rrs = [], []
    for perm in itertools.permutations(range(len(gains))):
        if any(scores[a] < scores[b] for a, b in itertools.pairwise(perm)):
            continue
        ndcgs.append(sum(gains[j] * _disc(i + 1) for i, j in enumerate(perm[:k])) / ideal if ideal else np.nan)
        ranks = [i + 1 for i, j in enumerate(perm) if relevant[j]]
        rrs.append(1 / ranks[0] if ranks else np.nan)
    return np.mean(ndcgs), np.mean(rrs)


def test_tie_rule_equals_the_mean_over_all_orderings():
    rng = np.random.default_rng(1)
    for _ in range(120):
        n = int(rng.integers(1, 7))
        y = rng.choice(4, size=n)
        s = rng.integers(0, 3, size=n).astype(float)
        k = int(rng.integers(1, 6))
        got = per_query_ranking(np.zeros(n), GAINS[y], s, y == E, k=k)
        want = _mean_over_orderings(GAINS[y], s, y == E, k)
        np.testing.assert_allclose([got.ndcg[0], got.rr[0]], want, atol=1e-12, equal_nan=True)


def test_bootstrap_interval_contains_the_figure_and_narrows_with_more_queries():
    rng = np.random.default_rng(2)

    def report(num_queries):
        q = np.repeat(np.arange(num_queries), 8)
        y = rng.choice(4, size=q.size, p=[0.5, 0.2, 0.1, 0.2])
        right = rng.random(q.size) < 0.7  # a model right 70 % of the time
        pred = np.where(right, y, (y + 1) % 4)
        probs = np.eye(4)[pred] * 0.5 + rng.uniform(0, 0.1, size=(q.size, 4))
        return evaluation_report(y, probs, None, q)

    small, large = report(20), report(500)
    for key in ("accuracy", "macro_f1", "ndcg@10", "mrr"):
        for r in (small, large):
            low, high = r[f"{key}_ci95"]
            assert low <= r[key] <= high, key
        width = {n: r[f"{key}_ci95"][1] - r[f"{key}_ci95"][0] for n, r in (("small", small), ("large", large))}
        assert width["large"] < 0.5 * width["small"], key


def test_bootstrap_is_seeded_and_pairs_equal_query_sets():
    per_query = np.random.default_rng(3).random((50, 2))
    a = resampled_sums(per_query, resamples=300, seed=7)
    assert np.array_equal(a, resampled_sums(per_query, resamples=300, seed=7))
    assert not np.array_equal(a, resampled_sums(per_query, resamples=300, seed=8))
    # Another model on the same 50 queries gets the same draws: identical data, zero difference.
    doubled = resampled_sums(per_query * 2, resamples=300, seed=7)
    np.testing.assert_allclose(doubled, 2 * a)
    assert percentile_interval(np.arange(101.0)) == [2.5, 97.5]
    with pytest.raises(ValueError, match="resamples"):
        resampled_sums(per_query, resamples=0)


def test_query_stats_point_metrics_match_the_report():
    rng = np.random.default_rng(4)
    q = rng.integers(0, 30, size=240)
    y = rng.choice(4, size=240)
    probs = rng.dirichlet(np.ones(4), size=240)
    scores = np.round(probs @ GAINS, 1)  # ties
    report = evaluation_report(y, probs, scores, q, resamples=0)
    point = query_stats(q, y, probs, scores).metrics()
    for key in ("accuracy", "macro_f1", "ndcg@10", "mrr"):
        assert point[key][0] == pytest.approx(report[key], abs=1e-6), key
