"""Classification and ranking metrics for ESCI relevance predictions, with 95 % intervals.

Definitions:
- The predicted class is `argmax(probabilities)`; ties go to the lowest class index.
- Per class: precision `tp / predicted`, recall `tp / support`, F1 `2 tp / (support +
  predicted)`; 0.0 where the denominator is 0 (no NaN, no warning). Accuracy = micro F1.
- Macro precision / recall / F1 average over the labels that occur in the true or the
  predicted labels (scikit-learn's convention); `macro_labels` lists them. A label absent from
  both keeps its `per_class` entry (support 0, all 0.0) and is left out of the means.
- Ranking: products of one query by descending score. Tied scores are not broken by row order:
  every group of tied scores counts with its exact expected value over all orderings of the
  group (McSherry & Najork 2008; `esr_tf.training.ranking`), so no metric depends on the order
  of the rows.
- nDCG@k uses the gains as given (linear): `DCG@k = sum_{i<=k} gain_i / log2(i + 1)`, divided by
  the DCG@k of the same products sorted by gain. Queries whose ideal DCG is 0 (every product
  has gain 0, i.e. all irrelevant) are skipped and counted in `queries_with_zero_ideal_dcg`.
- MRR: a product is relevant iff its label has the highest gain of the label set (ESCI: exact);
  the (expected) reciprocal rank of the first relevant product over the whole list (no
  cut-off), averaged over queries. Queries without any exact product are skipped (counted in
  `queries_without_exact`), like nDCG's zero-ideal queries: there is nothing to find in them,
  so a constant 0 would only dilute the mean. A metric with no query left to average is 0.0.
- `<metric>_ci95`: the 95 % percentile interval of accuracy, macro-F1, nDCG@10 and MRR over a
  seeded bootstrap that resamples queries (`esr_tf.training.bootstrap`; default 1000 resamples,
  seed 0; `bootstrap` in the report says which).
- Values are rounded to 6 decimals.

Everything is computed in float64 numpy from per-query sums, the same code for the figure and
for its resamples. The tests check the classification numbers against `keras.metrics` and, on
lists without ties, the ranking numbers against `keras_rs.metrics` (`tests/training/rs_reference.py`;
the ranking module's docstring says what differs from keras_rs).

Example:
>>> import numpy as np
>>> from esr_tf.training.metrics import evaluation_report
>>> y = np.array([0, 3, 1, 0])
>>> p = np.eye(4)[[0, 3, 0, 0]] * 0.7 + 0.075
>>> report = evaluation_report(y, p, p @ np.array([1.0, 0.1, 0.01, 0.0]), np.array([1, 1, 2, 2]))
>>> report["accuracy"], report["queries"], report["macro_labels"]
(0.75, 2, ['exact', 'substitute', 'irrelevant'])
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from esr_tf.labels import ESCI, LabelSet
from esr_tf.training.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, percentile_interval, resampled_sums
from esr_tf.training.ranking import QueryRanking, per_query_ranking

# The headline metrics every report shows (ablation rows, `esr-tf evaluate`), and those of them
# given 95 % query-bootstrap intervals.
REPORT_COLUMNS = ("accuracy", "micro_f1", "macro_f1", "ndcg@10", "mrr")
INTERVAL_METRICS = ("accuracy", "macro_f1", "ndcg@10", "mrr")


def _as_labels(y_true: Any, label_set: LabelSet, name: str = "y_true") -> np.ndarray:
    """Integer class ids from ids or label spellings (`"E"`, `"exact"`)."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of labels, got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name}: no examples")
    if y.dtype.kind in "USO":
        return np.array([label_set.parse(str(v)) for v in y], dtype=np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{name}: labels must be whole class ids")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"{name}: unsupported label dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= label_set.num_labels))
    if bad.size:
        raise ValueError(
            f"{name}[{bad[0]}] = {y[bad[0]]} is outside 0..{label_set.num_labels - 1} "
            f"({', '.join(label_set.names)})"
        )
    return y


def _as_float_array(values: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {x.shape}")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        raise ValueError(f"{name}{bad[0].tolist()} is not finite")
    return x


def _float(value) -> float:
    return round(float(value), 6)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """`num / den`, 0.0 where `den` is 0."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    return np.divide(num, den, out=np.zeros(num.shape), where=den > 0)


def confusion_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and per-class / macro precision, recall and F1 of `(..., L, L)` confusion counts
    (rows true, columns predicted), vectorised over the leading axes (module docstring rules).

    Example:
    >>> s = confusion_scores(np.array([[2, 0, 0], [0, 0, 0], [1, 0, 1]]))  # no label 1 at all
    >>> s["present"].tolist(), s["f1"].round(4).tolist(), round(float(s["macro_f1"]), 4)
    ([True, False, True], [0.8, 0.0, 0.6667], 0.7333)
    """
    c = np.asarray(confusion, np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    support, predicted = c.sum(axis=-1), c.sum(axis=-2)
    present = (support + predicted) > 0
    per_class = {
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, support),
        "f1": _ratio(2.0 * tp, support + predicted),
    }
    count = present.sum(axis=-1)
    macro = {f"macro_{name}": _ratio((v * present).sum(axis=-1), count) for name, v in per_class.items()}
    accuracy = _ratio(tp.sum(axis=-1), support.sum(axis=-1))
    return {"accuracy": accuracy, **per_class, **macro, "support": support, "present": present}


def _predicted(y: np.ndarray, probabilities: Any, num: int) -> np.ndarray:
    probs = _as_float_array(probabilities, "probabilities", (y.size, num))
    return np.argmax(probs, axis=1)  # first maximum wins on ties


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, label_set: LabelSet = ESCI
) -> dict:
    """Accuracy, micro / macro F1, macro precision / recall, per-class precision / recall / F1
    and the confusion matrix.

    Args:
        y_true: `(n,)` class ids (or label spellings such as `"E"` / `"exact"`).
        probabilities: `(n, num_labels)` probabilities or logits; only the argmax is used.
        label_set: gives the class names and their order.

    Returns:
        `{"accuracy", "micro_f1", "macro_f1", "macro_precision", "macro_recall", "macro_labels",
        "per_class": {name: {"precision", "recall", "f1", "support"}}, "confusion_matrix"}`; the
        matrix is a list of lists with rows = true class and columns = predicted class.

    Example:
    >>> import numpy as np
    >>> m = classification_metrics(np.array([0, 1, 1]), np.eye(4)[[0, 1, 0]])
    >>> round(m["accuracy"], 4), m["confusion_matrix"][1], m["macro_labels"]
    (0.6667, [1, 1, 0, 0], ['exact', 'substitute'])
    """
    label_set = LabelSet.coerce(label_set)
    y = _as_labels(y_true, label_set)
    num = label_set.num_labels
    pred = _predicted(y, probabilities, num)
    confusion = np.bincount(y * num + pred, minlength=num * num).reshape(num, num)
    s = confusion_scores(confusion)
    per_class = {
        name: {
            "precision": _float(s["precision"][i]),
            "recall": _float(s["recall"][i]),
            "f1": _float(s["f1"][i]),
            "support": int(s["support"][i]),
        }
        for i, name in enumerate(label_set.names)
    }
    return {
        "accuracy": _float(s["accuracy"]),
        "micro_f1": _float(s["accuracy"]),  # one label per example: micro F1 is the accuracy
        "macro_f1": _float(s["macro_f1"]),
        "macro_precision": _float(s["macro_precision"]),
        "macro_recall": _float(s["macro_recall"]),
        "macro_labels": [n for n, p in zip(label_set.names, s["present"], strict=True) if p],
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def _query_ranking(query_ids, y: np.ndarray, scores, label_set: LabelSet, k: int) -> QueryRanking:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    query_ids = np.asarray(query_ids)
    if query_ids.shape != y.shape:
        raise ValueError(f"query_ids: expected shape {y.shape}, got {query_ids.shape}")
    scores = _as_float_array(scores, "scores", y.shape)
    gains = np.asarray(label_set.gains, dtype=np.float64)
    if np.any(gains < 0):
        raise ValueError(f"label_set gains must be >= 0, got {label_set.gains}")
    item_gain = gains[y]
    return per_query_ranking(query_ids, item_gain, scores, item_gain == gains.max(), k=int(k))


def _ranking_summary(ranking: QueryRanking, k: int) -> dict:
    def mean(values: np.ndarray) -> float:
        kept = values[~np.isnan(values)]
        return _float(kept.sum() / kept.size) if kept.size else 0.0

    return {
        f"ndcg@{k}": mean(ranking.ndcg),
        "mrr": mean(ranking.rr),
        "queries": int(ranking.queries.size),
        "queries_with_zero_ideal_dcg": int(np.isnan(ranking.ndcg).sum()),
        "queries_without_exact": int(np.isnan(ranking.rr).sum()),
    }


def ranking_metrics(
    query_ids: np.ndarray,
    y_true: np.ndarray,
    scores: np.ndarray,
    label_set: LabelSet = ESCI,
    k: int = 10,
) -> dict:
    """Mean per-query nDCG@k (linear label-set gains) and MRR of the first exact product.

    See the module docstring for the exact definitions, the tie rule and skipped queries.

    Args:
        query_ids: `(n,)` query of each example (any sortable ids: ints or strings).
        y_true: `(n,)` true class ids (or label spellings).
        scores: `(n,)` ranking scores, higher first (e.g. the expected gain).
        label_set: gives each class's gain.
        k: nDCG cut-off.

    Returns:
        `{f"ndcg@{k}", "mrr", "queries", "queries_with_zero_ideal_dcg",
        "queries_without_exact"}`.

    Example:
    >>> import numpy as np
    >>> m = ranking_metrics(np.array(["a", "a"]), np.array([3, 0]), np.array([0.9, 0.1]))
    >>> round(m["ndcg@10"], 4), m["mrr"]
    (0.6309, 0.5)
    >>> ranking_metrics(np.array(["a", "a"]), np.array([3, 0]), np.array([0.5, 0.5]))["mrr"]
    0.75
    """
    label_set = LabelSet.coerce(label_set)
    y = _as_labels(y_true, label_set)
    return _ranking_summary(_query_ranking(query_ids, y, scores, label_set, k), k)


@dataclass(frozen=True)
class QueryStats:
    """Per-query sums that accuracy, macro-F1, nDCG@k and MRR are functions of.

    `columns[q]` = query `q`'s confusion counts (`num_labels**2`, row-major), its nDCG@k and
    whether it counts (0 / 1), its reciprocal rank and whether it counts. A resample of queries
    is a weighted sum of these rows (`esr_tf.training.bootstrap.resampled_sums`).
    """

    ranking: QueryRanking
    columns: np.ndarray
    num_labels: int
    k: int

    def metrics(self, sums: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The metrics of `(B, m)` summed columns (default: all queries once)."""
        sums = self.columns.sum(axis=0)[None] if sums is None else np.asarray(sums, np.float64)
        num = self.num_labels
        scores = confusion_scores(sums[:, : num * num].reshape(-1, num, num))
        ndcg_sum, ndcg_n, rr_sum, rr_n = (sums[:, num * num + i] for i in range(4))
        return {
            "accuracy": scores["accuracy"],
            "macro_f1": scores["macro_f1"],
            f"ndcg@{self.k}": _ratio(ndcg_sum, ndcg_n),
            "mrr": _ratio(rr_sum, rr_n),
        }

    def resample(self, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict[str, np.ndarray]:
        """`(resamples,)` values of each metric over seeded query resamples."""
        return self.metrics(resampled_sums(self.columns, resamples=resamples, seed=seed))


def query_stats(
    query_ids: np.ndarray,
    y_true: np.ndarray,
    probabilities: np.ndarray,
    scores: np.ndarray,
    *,
    label_set: LabelSet = ESCI,
    k: int = 10,
) -> QueryStats:
    """`QueryStats` of one set of predictions (arguments as in `evaluation_report`).

    Example:
    >>> st = query_stats([1, 1, 2], [0, 3, 0], np.eye(4)[[0, 0, 0]], [0.9, 0.5, 0.7])
    >>> {k: v.round(4).tolist() for k, v in st.metrics().items()}
    {'accuracy': [0.6667], 'macro_f1': [0.4], 'ndcg@10': [1.0], 'mrr': [1.0]}
    """
    label_set = LabelSet.coerce(label_set)
    y = _as_labels(y_true, label_set)
    num = label_set.num_labels
    pred = _predicted(y, probabilities, num)
    ranking = _query_ranking(query_ids, y, scores, label_set, k)
    num_q = ranking.queries.size
    cell = (ranking.query_index * num + y) * num + pred
    confusion = np.bincount(cell, minlength=num_q * num * num).reshape(num_q, num * num)
    ndcg_n, rr_n = ~np.isnan(ranking.ndcg), ~np.isnan(ranking.rr)
    extra = np.stack([np.nan_to_num(ranking.ndcg), ndcg_n, np.nan_to_num(ranking.rr), rr_n], axis=1)
    return QueryStats(ranking, np.concatenate([confusion, extra], axis=1).astype(np.float64), num, int(k))


def evaluation_report(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    scores: np.ndarray | None,
    query_ids: np.ndarray,
    label_set: LabelSet = ESCI,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict:
    """`classification_metrics` and `ranking_metrics` (k=10) in one dict, plus `num_examples`,
    `label_names` and, unless `resamples=0`, `<metric>_ci95` for `INTERVAL_METRICS` with the
    `bootstrap` settings (query-level, seeded).

    `scores=None` ranks by the expected gain `probabilities @ label_set.gains` (this is the
    model's ranking score).

    Example:
    >>> import numpy as np
    >>> r = evaluation_report(np.array([0, 3]), np.eye(4)[[0, 3]], None, np.array([7, 7]))
    >>> r["macro_f1"] == r["micro_f1"], r["ndcg@10"], r["num_examples"], r["macro_f1_ci95"]
    (True, 1.0, 2, [1.0, 1.0])
    """
    label_set = LabelSet.coerce(label_set)
    y = _as_labels(y_true, label_set)
    report = classification_metrics(y, probabilities, label_set)
    if scores is None:
        probs = _as_float_array(probabilities, "probabilities", (y.size, label_set.num_labels))
        scores = probs @ np.asarray(label_set.gains, dtype=np.float64)
    stats = query_stats(query_ids, y, probabilities, scores, label_set=label_set, k=10)
    report.update(_ranking_summary(stats.ranking, 10))
    if resamples:
        for name, values in stats.resample(resamples, seed).items():
            report[f"{name}_ci95"] = percentile_interval(values)
        report["bootstrap"] = {"resamples": int(resamples), "seed": int(seed), "unit": "query",
                               "interval": "2.5 / 97.5 percentiles"}
    report["num_examples"] = int(y.size)
    report["label_names"] = list(label_set.names)
    return report


def format_intervals(report: dict, keys: tuple[str, ...] = INTERVAL_METRICS) -> str:
    """`"accuracy 0.750 [0.500, 1.000], ..."`: each figure with its 95 % interval if present.

    Example:
    >>> format_intervals({"accuracy": 0.75, "accuracy_ci95": [0.5, 1.0], "mrr": 1.0}, ("accuracy", "mrr"))
    'accuracy 0.750 [95% CI 0.500-1.000], mrr 1.000'
    """
    parts = []
    for key in keys:
        interval = report.get(f"{key}_ci95")
        ci = f" [95% CI {interval[0]:.3f}-{interval[1]:.3f}]" if interval else ""
        parts.append(f"{key} {report[key]:.3f}{ci}")
    return ", ".join(parts)

def _to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return _to_json(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else None  # JSON has no NaN / Infinity
    if isinstance(value, Path):
        return str(value)
    return value


def write_metrics_json(report: dict, path) -> Path:
    """Writes `report` as indented JSON with sorted keys; numpy scalars / arrays become Python
    numbers / lists and non-finite floats become `null`. Creates missing parent folders.

    Example:
    >>> import tempfile, os
    >>> p = write_metrics_json({"b": np.float32(0.5), "a": 1}, os.path.join(tempfile.mkdtemp(),
    ...     "m.json"))
    >>> p.read_text().splitlines()[1]
    '  "a": 1,'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_to_json(report), indent=2, sort_keys=True) + "\n")
    return path
