"""Query-level bootstrap: resample the queries of an evaluation with replacement.

Examples of one query are not independent (they share the query, and ranking metrics are per
query), so the unit resampled is the query. A metric that is a ratio of sums over queries
(accuracy: correct / examples; macro-F1: from the summed confusion matrix; mean nDCG: summed
nDCG / counted queries) is recomputed on a resample from the per-query sums weighted by how
often each query was drawn: `resampled_sums` returns those weighted sums, one row per resample,
and the caller turns them into metrics (`esr_tf.training.metrics.metrics_from_sums`).
`percentile_interval` gives the 2.5 / 97.5 percentiles of the resampled values.

The draws depend only on `seed`, `resamples` and the number of queries, so two models scored on
the same queries get the same resamples: a paired comparison (`esr-tf ablate`).

Example:
>>> import numpy as np
>>> per_query = np.array([[1.0, 2.0], [0.0, 2.0], [1.0, 1.0]])  # (correct, examples) per query
>>> sums = resampled_sums(per_query, resamples=200, seed=0)
>>> lo, hi = percentile_interval(sums[:, 0] / sums[:, 1])
>>> bool(lo <= 2 / 5 <= hi)
True
"""

from __future__ import annotations

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
# Query draws per chunk: bounds the (resamples, queries) count matrix (~32 MB of float64).
_DRAWS_PER_CHUNK = 1 << 22


def resampled_sums(
    per_query: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """`(resamples, m)`: column sums of `per_query` `(Q, m)` over `Q` queries drawn with
    replacement, per resample (seeded; see the module docstring)."""
    per_query = np.asarray(per_query, np.float64)
    if per_query.ndim != 2 or not per_query.shape[0]:
        raise ValueError(f"per_query: expected a (queries, values) array, got shape {per_query.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    num_q = per_query.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, _DRAWS_PER_CHUNK // num_q))
    out = np.empty((resamples, per_query.shape[1]))
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        picks = rng.integers(0, num_q, size=(rows, num_q))
        picks += num_q * np.arange(rows)[:, None]  # one block of counts per resample
        counts = np.bincount(picks.ravel(), minlength=rows * num_q).reshape(rows, num_q)
        out[start : start + rows] = counts @ per_query
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """`[low, high]`: the central `level` percentile interval of `samples` (rounded to 6 d.p.)."""
    samples = np.asarray(samples, np.float64)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return [round(float(low), 6), round(float(high), 6)]
