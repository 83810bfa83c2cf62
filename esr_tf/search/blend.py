"""How `search` orders the products it re-ranks, chosen on the valid queries (#31).

`search` / `search_top` rank the `rerank` products retrieval found by `features @ rank_weights`
(`search.ranking`: retrieval's cosine, the model's log-probabilities and score). The candidates:

- the blends `weight x score + (1 - weight) x cosine` for weight 0, 0.1, ..., 1 (0: retrieval's
  order, 1: the model's alone);
- the list head (`search.list_head`), fitted on the train queries' own candidate lists;
- the list head fitted on the valid queries' lists, cross-fitted: its valid figures come from
  `FOLDS` heads, each fitted on the other folds' queries and scoring its own fold (what the model
  says on queries it never trained on, unlike the train queries' probabilities); the head that
  ships is fitted on all of them.

The model was trained on judged candidate lists, not on ordering a whole catalogue, so its order
can be worse than retrieval's; `choose_ranking` picks the candidate with the best nDCG@10 over
the whole catalogue on a split neither the model nor the head trained on (valid), so search
cannot end below retrieval alone there. `esr-tf index --data` does this and records the choice in
the index (`esr_tf_index.json`).

Example:
>>> choice = choose_ranking(search, catalogue)  # doctest: +SKIP
>>> choice["ranking"], choice["valid_queries"]  # doctest: +SKIP
('list head', 22)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.constants import DEFAULT_K, DEFAULT_RERANK
from esr_tf.search.evaluate import list_metrics
from esr_tf.search.judgments import Judged, judged_pairs, judgments
from esr_tf.search.list_head import MAX_QUERIES, fit_list_head
from esr_tf.search.ranking import blend_weights, rank_features

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # the blend grid, 0 (retrieval) .. 1 (the model)
LIST_HEAD = "list head"
VALID_HEAD = "list head on valid"
FOLDS = 5  # cross-fitting folds of the valid queries; fewer than 2 * FOLDS valid queries: no valid head


def candidate_lists(search, judged: Judged, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(product ids per query, features `[Q, n, F]`) of retrieval's top `n` for `judged`'s
    queries, each list in retrieval's order (the list head's order among equal gains)."""
    before = search.catalogue.rank_weights.numpy()
    search.catalogue.rank_weights.assign(blend_weights(1.0, len(before) - 2))  # `scores`: the model's own
    ids, features = [], []
    try:
        for query, _ in judged.values():
            out = search.search_top(tf.constant([query]), tf.constant(n, tf.int32), tf.constant(n, tf.int32))
            order = np.argsort(-out["retrieval_scores"].numpy()[0], kind="stable")
            ids.append(np.array([p.decode() for p in out["product_ids"].numpy()[0]], dtype=object)[order])
            features.append(rank_features(out["retrieval_scores"][0], out["probabilities"][0],
                                          out["scores"][0]).numpy()[order])
    finally:
        search.catalogue.rank_weights.assign(before)
    return ids, np.stack(features) if features else np.zeros((0, n, len(before)), np.float32)


def _gains(ids: list[np.ndarray], judged: Judged, n: int) -> np.ndarray:
    return np.array([[labels.get(p, 0.0) for p in row] for row, (_, labels) in zip(ids, judged.values(), strict=True)],
                    np.float32).reshape(len(ids), n)


def fit_on_train(search, catalogue, n: int, split: str = "train") -> tuple[np.ndarray | None, int]:
    """(list head weights or None, train queries used): the catalogue's judged pairs of `split`
    (what the model trained on; unjudged candidates gain 0), at most `MAX_QUERIES` queries."""
    judged = judged_pairs(catalogue, split)
    if len(judged) > MAX_QUERIES:
        keep = sorted(str(q) for q in np.random.default_rng(0).choice(sorted(judged), MAX_QUERIES, replace=False))
        judged = {q: judged[q] for q in keep}
    ids, features = candidate_lists(search, judged, n)
    gains = _gains(ids, judged, n)
    if not (gains > 0).any():
        return None, 0
    return fit_list_head(features, gains), len(judged)


def cross_fitted(features: np.ndarray, gains: np.ndarray, folds: int = FOLDS) -> tuple[np.ndarray, np.ndarray]:
    """(weights fitted on every list, keys `[Q, N]` each scored by a head fitted without its fold):
    the valid head's honest figures on the lists it is fitted on. Folds: every `folds`-th query."""
    keys = np.zeros(gains.shape, np.float32)
    for fold in range(folds):
        held = np.arange(len(gains)) % folds == fold
        keys[held] = features[held] @ fit_list_head(features[~held], gains[~held])
    return fit_list_head(features, gains), keys


def choose_ranking(search, catalogue, *, split: str = "valid", qrels: str | Path | None = None,
                   rerank: int = DEFAULT_RERANK, k: int = DEFAULT_K) -> dict:
    """The candidate ranking (see the module doc) with the best mean nDCG@k (then recall@k; ties:
    the earlier candidate, nearer retrieval's order) on `split`'s queries, each ranking retrieval's
    top `rerank`. `search`: a `CatalogueSearch` (its weights are left as they were).

    Returns `ranking` (its name), `rank_weights`, the judgments used, and per candidate the mean
    recall@k / nDCG@k; the model's order alone when no query of `split` has an exact product."""
    judged, kind = judgments(catalogue, split, qrels)
    num_labels = catalogue.label_set.num_labels
    if not judged:
        return {"ranking": "blend 1.0", "rank_weights": blend_weights(1.0, num_labels).tolist(),
                "chosen_on": f"no {split} query has an exact product: the model's order"}
    n, k = min(rerank, search.size), min(k, search.size)
    ids, features = candidate_lists(search, judged, n)
    candidates = {f"blend {w}": blend_weights(w, num_labels) for w in WEIGHTS}
    head, fit_queries = fit_on_train(search, catalogue, n)
    if head is not None:
        candidates[LIST_HEAD] = head
    out_of_fold = {}  # a head fitted on these very queries is scored by its held-out folds' keys
    if len(judged) >= 2 * FOLDS:
        candidates[VALID_HEAD], out_of_fold[VALID_HEAD] = cross_fitted(features, _gains(ids, judged, n))
    exact_gain, mean = float(max(catalogue.label_set.gains)), {}
    for name, weights in candidates.items():
        orders = np.argsort(-out_of_fold.get(name, features @ weights), axis=1, kind="stable")
        mean[name] = np.mean([list_metrics(list(row[order]), labels, exact_gain, k)
                              for row, order, (_, labels) in zip(ids, orders, judged.values(), strict=True)], axis=0)
    names = list(candidates)
    best = max(names, key=lambda c: (round(mean[c][1], 9), round(mean[c][0], 9), -names.index(c)))
    return {
        "ranking": best,
        "rank_weights": [round(float(w), 6) for w in candidates[best]],
        "chosen_on": f"{split} split, {len(judged)} queries, best nDCG@{k} (then recall@{k}) re-ranking {n}",
        "judgments": kind,
        "valid_queries": len(judged),
        "list_head_train_queries": fit_queries,
        "by_candidate": {c: {f"recall@{k}": round(float(m[0]), 4), f"ndcg@{k}": round(float(m[1]), 4)}
                         for c, m in mean.items()},
    }


def describe(choice: dict) -> str:
    """One line for the CLI: the ranking chosen and what it was chosen on."""
    by, name = choice.get("by_candidate"), choice.get("ranking", f"blend {choice.get('rerank_weight', 1.0)}")
    if not by:  # no valid queries, or an index recorded before the list head (a blend weight)
        return f"re-ranking: {name} ({choice.get('chosen_on', 'recorded in the index')})"
    ndcg = next(key for key in by["blend 1.0"] if key.startswith("ndcg"))
    head = "".join(f", {label} {by[name][ndcg]:.3f}" for name, label in
                   ((LIST_HEAD, "the list head"), (VALID_HEAD, "the list head on valid (cross-fitted)")) if name in by)
    return (f"re-ranking: {name} ({choice['chosen_on']}: {ndcg} {by[name][ndcg]:.3f}; "
            f"the model alone {by['blend 1.0'][ndcg]:.3f}, retrieval alone {by['blend 0.0'][ndcg]:.3f}{head})")
