"""How often shoppers look at each position: the position-based click model, fitted by EM.

A click needs both: the position examined (probability `theta[k]`, the propensity) and the
product relevant to the query (`gamma[q, d]`). Expectation-maximisation over the logs' counts
(Wang et al., "Position Bias Estimation for Unbiased Learning to Rank in Personal Search",
WSDM 2018; their regression step replaced by one free parameter per (query, product), which
needs each product to have been shown at several positions, as a ranker's own variation gives).
Only ratios matter to inverse-propensity weights and the model cannot tell a scale of `theta`
from its inverse on `gamma`, so the estimate is reported relative to position 1.

Example:
>>> counts = LogCounts(queries=np.array(["q", "q"], dtype=object), product_ids=np.array(["a", "a"], dtype=object),
...                    positions=np.array([1, 2]), impressions=np.array([1000, 1000]), clicks=np.array([500, 250]),
...                    carts=np.zeros(2, int), purchases=np.zeros(2, int), rows=2000, sessions=2000)
>>> estimate_propensities(counts).round(2).tolist()
[1.0, 0.5]
"""

from __future__ import annotations

import numpy as np

from esr_tf.logs.read import LogCounts

TINY = 1e-6  # keeps every probability inside (0, 1): the E-step divides by 1 - theta * gamma


def pair_index(queries: np.ndarray, product_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Each entry's (query, product) as a number 0..P-1, and P."""
    keys = np.char.add(np.char.add(queries.astype(str), "\x1f"), product_ids.astype(str))
    _, index = np.unique(keys, return_inverse=True)
    return index.ravel(), int(index.max()) + 1 if len(index) else 0


def estimate_propensities(counts: LogCounts, *, positions: int | None = None, iterations: int = 500,
                          tolerance: float = 1e-7) -> np.ndarray:
    """`theta[k] / theta[0]` for positions 1..`positions` (default: the deepest position seen)."""
    depth = int(positions or counts.positions.max())
    keep = counts.positions <= depth
    position = counts.positions[keep].astype(np.int64) - 1
    shown = counts.impressions[keep].astype(np.float64)
    clicked = counts.clicks[keep].astype(np.float64)
    pairs, size = pair_index(counts.queries[keep], counts.product_ids[keep])
    per_position = np.bincount(position, shown, depth)
    if (per_position == 0).any():
        raise ValueError(f"no impression at position(s) {(np.flatnonzero(per_position == 0) + 1).tolist()}")
    per_pair = np.bincount(pairs, shown, size)
    theta, gamma = np.full(depth, 0.5), np.full(size, 0.5)
    unclicked = shown - clicked
    for _ in range(iterations):
        t, g = theta[position], gamma[pairs]
        missed = 1.0 - t * g
        seen_not_relevant = t * (1.0 - g) / missed  # P(examined | no click)
        relevant_not_seen = (1.0 - t) * g / missed  # P(relevant | no click)
        new_theta = np.bincount(position, clicked + unclicked * seen_not_relevant, depth) / per_position
        new_gamma = np.bincount(pairs, clicked + unclicked * relevant_not_seen, size) / per_pair
        new_theta, new_gamma = np.clip(new_theta, TINY, 1 - TINY), np.clip(new_gamma, TINY, 1 - TINY)
        change = max(np.abs(new_theta - theta).max(), np.abs(new_gamma - gamma).max())
        theta, gamma = new_theta, new_gamma
        if change < tolerance:
            break
    return theta / theta[0]
