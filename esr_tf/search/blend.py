"""How `search` orders the products it re-ranks: the model's score blended with retrieval's (#31).

`search` / `search_top` rank the `rerank` products retrieval found by
`weight * score + (1 - weight) * cosine` (`score`: the relevance model's expected gain; `cosine`:
the retrieval score). Weight 1 is the model's order alone, 0 retrieval's own. The model was
trained on judged candidate lists, not on ordering a whole catalogue, so its order can be worse
than retrieval's; `choose_rerank_weight` picks the weight on a split the model did not train on
(valid) by nDCG@10 over the whole catalogue, so search cannot end below retrieval alone there.
`esr-tf index --data` does this and records the choice in the index (`esr_tf_index.json`).

Example:
>>> choice = choose_rerank_weight(search, catalogue)  # doctest: +SKIP
>>> choice["rerank_weight"], choice["valid_queries"]  # doctest: +SKIP
(0.2, 22)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.constants import DEFAULT_K, DEFAULT_RERANK
from esr_tf.search.evaluate import list_metrics
from esr_tf.search.judgments import judgments

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # the grid, 0 (retrieval) .. 1 (the model)


def _candidates(search, query: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(product ids, model scores, cosines) of retrieval's top `n` for `query`, at weight 1."""
    out = search.search_top(tf.constant([query]), tf.constant(n, tf.int32), tf.constant(n, tf.int32))
    ids = np.array([p.decode() for p in out["product_ids"].numpy()[0]], dtype=object)
    return ids, out["scores"].numpy()[0].astype(np.float64), out["retrieval_scores"].numpy()[0].astype(np.float64)


def choose_rerank_weight(search, catalogue, *, split: str = "valid", qrels: str | Path | None = None,
                         rerank: int = DEFAULT_RERANK, k: int = DEFAULT_K) -> dict:
    """The `WEIGHTS` value with the best mean nDCG@k (then recall@k; ties: the smaller weight,
    nearer retrieval's order) on `split`'s queries, each ranking retrieval's top `rerank`.

    `search`: a `CatalogueSearch` (its weight is left as it was). Returns `rerank_weight`,
    the judgments used, and per weight the mean recall@k / nDCG@k; weight 1 (the model alone)
    when no query of `split` has an exact product."""
    judged, kind = judgments(catalogue, split, qrels)
    if not judged:
        return {"rerank_weight": 1.0, "chosen_on": f"no {split} query has an exact product: the model's order"}
    n, k = min(rerank, search.size), min(k, search.size)
    exact_gain = float(max(catalogue.label_set.gains))
    metrics = {w: [] for w in WEIGHTS}
    before = search.catalogue.rerank_weight.numpy()
    search.catalogue.rerank_weight.assign(1.0)  # `scores` are then the model's own
    try:
        for query, labels in judged.values():
            ids, score, cosine = _candidates(search, query, n)
            for w in WEIGHTS:
                order = np.argsort(-(w * score + (1 - w) * cosine), kind="stable")
                metrics[w].append(list_metrics(list(ids[order]), labels, exact_gain, k))
    finally:
        search.catalogue.rerank_weight.assign(before)
    mean = {w: np.mean(v, axis=0) for w, v in metrics.items()}
    best = max(WEIGHTS, key=lambda w: (round(mean[w][1], 9), round(mean[w][0], 9), -w))
    return {
        "rerank_weight": best,
        "chosen_on": f"{split} split, {len(judged)} queries, best nDCG@{k} (then recall@{k}) re-ranking {n}",
        "judgments": kind,
        "valid_queries": len(judged),
        "by_weight": {str(w): {f"recall@{k}": round(float(m[0]), 4), f"ndcg@{k}": round(float(m[1]), 4)}
                      for w, m in mean.items()},
    }


def describe(choice: dict) -> str:
    """One line for the CLI: the weight and what it was chosen on."""
    by = choice.get("by_weight")
    if not by:
        return f"re-rank weight {choice['rerank_weight']} ({choice['chosen_on']})"
    ndcg = next(key for key in by["1.0"] if key.startswith("ndcg"))
    return (f"re-rank weight {choice['rerank_weight']} (model score x weight + retrieval cosine x (1 - weight); "
            f"{choice['chosen_on']}: {ndcg} {by[str(choice['rerank_weight'])][ndcg]:.3f}, the model alone "
            f"{by['1.0'][ndcg]:.3f}, retrieval alone {by['0.0'][ndcg]:.3f})")
