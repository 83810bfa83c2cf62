"""Per-query nDCG@k and reciprocal rank with tied scores handled exactly, in numpy.

A model often gives several products of one query the same score (a text-only model scores
every product whose title reads alike the same). Ranking tied products in their input order,
or at random, makes the metric reward the order of the examples file or a coin. Here each
group of tied scores contributes its expected value over all orderings of the group, computed
exactly (McSherry & Najork, ECIR 2008, "Computing Information Retrieval Performance Measures
Efficiently in the Presence of Tied Scores"); the result does not depend on the row order.

- DCG@k: a tied group spanning ranks `a+1 .. a+n` contributes `mean gain of the group * sum of
  the discounts 1/log2(i + 1) of those of its ranks that are <= k` (every product is equally
  likely at each of the group's ranks). Ideal DCG sorts by gain, where ties do not matter.
- Reciprocal rank: only the first tied group holding a relevant product matters. With `n`
  products, `r` of them relevant, starting after rank `a`, the first relevant one is at offset
  `j` (0-based) with probability `C(n-1-j, r-1) / C(n, r)`, so the expected reciprocal rank is
  `sum_j P(j) / (a + j + 1)`, summed exactly over `j = 0 .. n - r`.

On lists without ties this is the standard definition, i.e. what `keras_rs.metrics.NDCG`
(with a linear gain function) and `keras_rs.metrics.MeanReciprocalRank` compute;
the tests run those (`tests/training/rs_reference.py`) and check that both agree on tie-free lists. What
differs from keras_rs: (1) ties: keras_rs sorts with a mask and then shuffles ties at random
(keras_rs 0.4.0, even with `shuffle_ties=False`), so its value on tied scores is one random
draw, not the expectation; (2) keras_rs counts a list with zero ideal DCG / no relevant item
as 0, here it is skipped (NaN per query, left out of the mean); (3) keras_rs' default gain is
`2**label - 1`, here gains are used as given (linear).

Example:
>>> import numpy as np
>>> r = per_query_ranking([1, 1], [1.0, 0.0], [0.5, 0.5], [True, False], k=10)
>>> r.rr.tolist()  # the relevant product is first or second with probability 1/2 each
[0.75]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QueryRanking:
    """Per-query values, one entry per distinct query id (in `np.unique` order)."""

    queries: np.ndarray  # the distinct query ids
    query_index: np.ndarray  # (n,) row -> index into `queries`
    ndcg: np.ndarray  # (Q,) nDCG@k; NaN where the ideal DCG is 0 (all gains 0)
    rr: np.ndarray  # (Q,) expected reciprocal rank of the first relevant product; NaN if none


def per_query_ranking(
    query_ids: np.ndarray, gains: np.ndarray, scores: np.ndarray, relevant: np.ndarray, *, k: int
) -> QueryRanking:
    """Tie-aware nDCG@k and reciprocal rank of every query (see the module docstring).

    Args:
        query_ids: `(n,)` query of each row (any sortable ids).
        gains: `(n,)` gain of each row (>= 0).
        scores: `(n,)` ranking scores, higher first.
        relevant: `(n,)` bool: what the reciprocal rank looks for (ESCI: exact products).
        k: nDCG cut-off.
    """
    queries, qidx = np.unique(np.asarray(query_ids), return_inverse=True)
    qidx = qidx.reshape(-1)
    gains = np.asarray(gains, np.float64)
    # The gain as the last sort key only makes the float sums independent of the row order.
    order = np.lexsort((-gains, -np.asarray(scores, np.float64), qidx))
    q, g, s = qidx[order], gains[order], np.asarray(scores, np.float64)[order]
    num_q = queries.size
    starts = np.concatenate([[0], np.cumsum(np.bincount(q, minlength=num_q))])
    rank = np.arange(q.size) - starts[q]  # 0-based position in its query's list
    discount = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)

    first = np.concatenate([[True], (q[1:] != q[:-1]) | (s[1:] != s[:-1])])
    group = np.cumsum(first) - 1  # tie groups, in rank order
    size = np.bincount(group)
    mean_gain = np.bincount(group, g) / size
    dcg = np.bincount(q[first], mean_gain * np.bincount(group, discount), minlength=num_q)
    ideal_gains = g[np.lexsort((-g, q))]  # q is sorted already: same rank per position
    ideal = np.bincount(q, ideal_gains * discount, minlength=num_q)
    ndcg = np.full(num_q, np.nan)
    np.divide(dcg, ideal, out=ndcg, where=ideal > 0)

    group_relevant = np.bincount(group, np.asarray(relevant, bool)[order], minlength=size.size)
    rr = _expected_rr(q[first], rank[first], size, group_relevant.astype(np.int64), num_q)
    return QueryRanking(queries, qidx, ndcg, rr)


def _expected_rr(
    group_q: np.ndarray, start: np.ndarray, size: np.ndarray, relevant: np.ndarray, num_q: int
) -> np.ndarray:
    """Per query, the expected 1 / rank of the first relevant row (NaN if it has none).

    Groups are in rank order; `start` is each group's 0-based first rank. Only the first group
    with a relevant row counts. The loop runs over offsets `j` (at most the longest group), each
    step over the groups that still have an offset `j`: O(rows) work in all.
    """
    rr = np.full(num_q, np.nan)
    with_rel = np.flatnonzero(relevant > 0)
    if not with_rel.size:
        return rr
    gq = group_q[with_rel]
    firsts = with_rel[np.concatenate([[True], gq[1:] != gq[:-1]])]
    n, r = size[firsts].astype(np.float64), relevant[firsts].astype(np.float64)
    offsets = (size[firsts] - relevant[firsts] + 1).astype(np.int64)  # j = 0 .. n - r
    by_offsets = np.argsort(-offsets, kind="stable")  # still active groups form a prefix
    n, r, a, offsets = n[by_offsets], r[by_offsets], start[firsts][by_offsets], offsets[by_offsets]
    active = np.searchsorted(-offsets, -np.arange(offsets[0]), side="left")  # count with offsets > j
    none_yet = np.ones(n.size)  # P(the first j rows of the group are all not relevant)
    total = np.zeros(n.size)
    for j, m in enumerate(active):
        p = none_yet[:m] * r[:m] / (n[:m] - j)  # = C(n-1-j, r-1) / C(n, r)
        total[:m] += p / (a[:m] + j + 1.0)
        none_yet[:m] *= (n[:m] - r[:m] - j) / (n[:m] - j)
    rr[group_q[firsts][by_offsets]] = total
    return rr
