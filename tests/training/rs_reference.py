"""Mean nDCG@k and MRR from `keras_rs.metrics`: the reference `esr_tf.training.ranking` is
checked against on tie-free lists (a test helper; production code never needs keras_rs).

Import it as `training.rs_reference`.
"""

from __future__ import annotations

import numpy as np

# Queries per keras_rs update: bounds the padded matrices.
QUERY_CHUNK = 4096


def keras_rs_reference(
    query_ids: np.ndarray, gains: np.ndarray, scores: np.ndarray, relevant: np.ndarray, *, k: int
) -> dict[str, float]:
    """Mean nDCG@k and MRR from `keras_rs.metrics` (linear gains, queries skipped as in `esr_tf.training.ranking`).

    Tied scores rank in input order here (each list is handed over already ranked, with strictly
    decreasing scores, so keras_rs has no tie to shuffle): on lists without ties this equals the
    mean of `per_query_ranking`, which is how the tests check it; with ties it is one ordering,
    not the expectation.
    """
    import keras
    import keras_rs

    ndcg = keras_rs.metrics.NDCG(k=int(k), gain_fn=lambda label: label, shuffle_ties=False)
    mrr = keras_rs.metrics.MeanReciprocalRank(shuffle_ties=False)
    both = np.stack([np.asarray(gains, np.float64), np.asarray(relevant, np.float64)], axis=1)
    for matrix, mask in _ranked_chunks(np.asarray(query_ids), both, np.asarray(scores, np.float64)):
        gain_m, rel_m = matrix[..., 0], matrix[..., 1]
        ranked = np.broadcast_to(-np.arange(gain_m.shape[1], dtype=np.float32), gain_m.shape)
        # A per-list weight of 0 skips lists with zero ideal DCG / nothing relevant.
        ndcg.update_state({"labels": gain_m, "mask": mask}, ranked, sample_weight=(gain_m.sum(1) > 0).astype("f4"))
        mrr.update_state({"labels": rel_m, "mask": mask}, ranked, sample_weight=(rel_m.sum(1) > 0).astype("f4"))
    return {name: float(keras.ops.convert_to_numpy(m.result())) for name, m in (("ndcg", ndcg), ("mrr", mrr))}


def _ranked_chunks(query_ids: np.ndarray, values: np.ndarray, scores: np.ndarray):
    """Yields `(values, mask)` matrices of `(queries, longest list, ...)`: each row holds one
    query's `values` in ranked order (score descending, input order on ties), padded with
    mask False. Queries are grouped by list length so that short lists are not padded to the
    longest one.
    """
    _, qidx = np.unique(query_ids, return_inverse=True)
    qidx = qidx.reshape(-1)
    counts = np.bincount(qidx)
    by_length = np.argsort(counts, kind="stable")
    new_id = np.empty_like(by_length)
    new_id[by_length] = np.arange(by_length.size)
    counts = counts[by_length]
    q = new_id[qidx]
    order = np.lexsort((np.arange(q.size), -scores, q))  # last key is the primary one
    q, values = q[order], values[order]
    starts = np.concatenate([[0], np.cumsum(counts)])
    rank = np.arange(q.size) - starts[q]
    for a in range(0, counts.size, QUERY_CHUNK):
        b = min(a + QUERY_CHUNK, counts.size)
        items = slice(starts[a], starts[b])
        matrix = np.zeros((b - a, counts[b - 1], *values.shape[1:]), dtype=np.float32)
        mask = np.zeros(matrix.shape[:2], dtype=bool)
        matrix[q[items] - a, rank[items]] = values[items]
        mask[q[items] - a, rank[items]] = True
        yield matrix, mask
