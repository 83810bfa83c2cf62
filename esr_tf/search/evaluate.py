"""Search quality over a whole catalogue, measured on an index export's own signatures.

For every query of a split with at least one exact product, judged by the catalogue's pairs or
by a complete judgments file (`search.judgments`; the report says which kind):

- retrieval recall@10 / @100 and nDCG@10: exact products among the first 10 / 100 by embedding alone
  (`retrieve_top(q, k=K)`, retrieval alone; in an index built before that signature,
  `search_top(q, k=K, rerank=K)` sorted back by its `retrieval_scores`);
- the re-ranked list (`search_top(q, k=10, rerank=N)`, N = 50 by default): recall@10 of exact
  products and nDCG@10 (tie-aware, `training.ranking`; ideal DCG from the query's judged labels);
- the upper bound: the cross-attention model re-ranking the whole catalogue (rerank = N products).

Example:
>>> report = evaluate_search("serving_models/shop/1", catalogue, split="test")  # doctest: +SKIP
>>> report["reranked"]["recall@10"], report["retrieval"]["recall@100"]  # doctest: +SKIP
(0.93, 1.0)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.constants import DEFAULT_K, DEFAULT_RERANK
from esr_tf.search.client import SearchRequestError
from esr_tf.search.judgments import judgments
from esr_tf.training.ranking import per_query_ranking

NOTE = "whole-catalogue search: queries without an exact product are left out"


def _ranked(fn, query: str, k: int, rerank: int) -> dict[str, np.ndarray]:
    out = fn(query=tf.constant([query]), k=tf.constant(k, tf.int32), rerank=tf.constant(rerank, tf.int32))
    return {key: value.numpy()[0] for key, value in out.items()}


def _by_retrieval(loaded, fn, query: str, n: int) -> list[str]:
    """Retrieval's own top `n` ids: `retrieve_top`, or in an index built before it, `search_top`
    re-ranking `n` sorted back by its cosines."""
    if "retrieve_top" in loaded.signatures:
        out = loaded.signatures["retrieve_top"](query=tf.constant([query]), k=tf.constant(n, tf.int32))
        return [p.decode() for p in out["product_ids"].numpy()[0]]
    out = _ranked(fn, query, n, n)
    return [p.decode() for p in out["product_ids"][np.argsort(-out["retrieval_scores"], kind="stable")]]


def list_metrics(ids: list[str], judged: dict[str, float], exact_gain: float, k: int) -> tuple[float, float]:
    """(recall@k of exact products, nDCG@k) of one ranked list of product ids."""
    exact = {p for p, g in judged.items() if g == exact_gain}
    top = ids[:k]
    recall = len(exact & set(top)) / len(exact)
    missing = [p for p in judged if p not in set(top)]
    scores = np.concatenate([np.arange(len(top), 0, -1, dtype=np.float64), np.full(len(missing), -np.inf)])
    gains = np.array([judged.get(p, 0.0) for p in top] + [judged[p] for p in missing])
    result = per_query_ranking(np.zeros(len(scores), int), gains, scores, gains == exact_gain, k=k)
    return recall, float(result.ndcg[0])


def _exact_missing(loaded, judged: dict, exact_gain: float, root, split: str) -> int:
    """How many judged exact products the index lacks; an error when it holds none of them (an
    index of another catalogue scored recall 0.0 without a word, #33)."""
    indexed = {p.decode() for p in loaded.index.product_ids.numpy()}
    exact = {p for _, labels in judged.values() for p, g in labels.items() if g == exact_gain}
    if not exact & indexed:
        raise SearchRequestError(f"{root}: the index holds none of the {len(exact)} exact products judged for "
                                 f"split {split!r}; was it built from another catalogue?")
    return len(exact - indexed)


def evaluate_search(export_dir: str | Path, catalogue, *, split: str = "test", rerank: int = DEFAULT_RERANK,
                    upper_bound: bool = True, k: int = DEFAULT_K, qrels: str | Path | None = None) -> dict:
    """Recall and nDCG of the index at `export_dir` on `catalogue`'s `split` (see module doc);
    `qrels`: a complete judgments file instead of the catalogue's judged pairs."""
    loaded = tf.saved_model.load(str(export_dir))
    fn = loaded.signatures["search_top"]
    size = int(loaded.index.product_ids.shape[0])
    judged, kind = judgments(catalogue, split, qrels)
    if not judged:
        raise SearchRequestError(f"{qrels or catalogue.root}: no query of split {split!r} has a judged exact "
                                 "product")
    exact_gain = float(max(catalogue.label_set.gains))
    missing = _exact_missing(loaded, judged, exact_gain, catalogue.root, split)
    wide = min(100, size)
    rows: dict[str, list[float]] = {key: [] for key in (
        "retrieval@10", "retrieval_ndcg", "retrieval@100", "reranked@10", "reranked_ndcg", "upper@10", "upper_ndcg")}
    seconds = {"reranked": 0.0, "upper": 0.0}
    for query, labels in judged.values():
        by_retrieval = _by_retrieval(loaded, fn, query, wide)
        recall, ndcg = list_metrics(by_retrieval, labels, exact_gain, min(k, wide))
        rows["retrieval@10"].append(recall)
        rows["retrieval_ndcg"].append(ndcg)
        rows["retrieval@100"].append(list_metrics(by_retrieval, labels, exact_gain, wide)[0])
        for name, n in (("reranked", rerank), ("upper", size)) if upper_bound else (("reranked", rerank),):
            start = time.perf_counter()
            out = _ranked(fn, query, min(k, size), min(n, size))
            seconds[name] += time.perf_counter() - start
            recall, ndcg = list_metrics([p.decode() for p in out["product_ids"]], labels, exact_gain, k)
            rows[f"{name}@10"].append(recall)
            rows[f"{name}_ndcg"].append(ndcg)
    mean = {key: float(np.mean(v)) if v else None for key, v in rows.items()}
    queries = len(judged)
    report = {
        "split": split, "queries": queries, "catalogue_products": size, "rerank": min(rerank, size), "k": k,
        "note": NOTE, "judgments": kind, "exact_products_missing_from_index": missing,
        "retrieval": {f"recall@{k}": mean["retrieval@10"], f"ndcg@{k}": mean["retrieval_ndcg"],
                      f"recall@{wide}": mean["retrieval@100"]},
        "reranked": {f"recall@{k}": mean["reranked@10"], f"ndcg@{k}": mean["reranked_ndcg"],
                     "ms_per_query": 1000 * seconds["reranked"] / queries},
    }
    if upper_bound:
        report["whole_catalogue_reranked"] = {f"recall@{k}": mean["upper@10"], f"ndcg@{k}": mean["upper_ndcg"],
                                              "ms_per_query": 1000 * seconds["upper"] / queries}
    return report
