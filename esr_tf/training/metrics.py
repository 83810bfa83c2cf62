"""Classification and ranking metrics for ESCI relevance predictions.

Classification metrics (accuracy, micro / macro / per-class F1, precision, recall) come from
`keras.metrics`; ranking metrics (nDCG@k with the label set's gains, MRR of the first exact
product) come from `keras_rs.metrics`, fed so that they compute exactly the definitions below.

Definitions:
- The predicted class is `argmax(probabilities)`; ties go to the lowest class index.
- Classes with no support or no predictions get precision / recall / F1 0.0 (no NaN, no
  warning); macro F1 is the plain mean over all classes of the label set, those included.
- Values are rounded to 6 decimals (keras metrics compute in float32).
- Products of one query are ranked by descending score; equal scores keep their input order.
- nDCG@k uses the gains as given (linear): `DCG@k = sum_{i<=k} gain_i / log2(i + 1)`, divided by
  the DCG@k of the same products sorted by gain. Queries whose ideal DCG is 0 (every product
  has gain 0, i.e. all irrelevant) are skipped and counted in `queries_with_zero_ideal_dcg`.
- MRR: a product is relevant iff its label has the highest gain of the label set (ESCI: exact);
  the reciprocal rank of the first relevant product over the whole list (no cut-off), averaged
  over queries. Queries without any exact product are skipped (counted in
  `queries_without_exact`), like nDCG's zero-ideal queries: there is nothing to find in them,
  so a constant 0 would only dilute the mean. A metric with no query left to average is 0.0.

Example:
>>> import numpy as np
>>> from esr_tf.training.metrics import evaluation_report
>>> y = np.array([0, 3, 1, 0])
>>> p = np.eye(4)[[0, 3, 0, 0]] * 0.7 + 0.075
>>> report = evaluation_report(y, p, p @ np.array([1.0, 0.1, 0.01, 0.0]), np.array([1, 1, 2, 2]))
>>> report["accuracy"], report["queries"]
(0.75, 2)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np

from esr_tf.labels import ESCI, LabelSet

# Queries per keras_rs update: bounds the padded (queries, longest list) matrices.
_QUERY_CHUNK = 4096


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


def _result(metric: keras.metrics.Metric) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(metric.result()), dtype=np.float32)


def _float(value: np.float32) -> float:
    # Keras metrics run in float32 and F1Score adds epsilon 1e-7 to its denominators, so a
    # perfect F1 reads 0.99999994 and 0.27 reads 0.27000001: 6 decimals keep what is exact.
    return round(float(value), 6)


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, label_set: LabelSet = ESCI
) -> dict:
    """Accuracy, micro / macro F1, per-class precision / recall / F1 and the confusion matrix.

    Args:
        y_true: `(n,)` class ids (or label spellings such as `"E"` / `"exact"`).
        probabilities: `(n, num_labels)` probabilities or logits; only the argmax is used.
        label_set: gives the class names and their order.

    Returns:
        `{"accuracy", "micro_f1", "macro_f1", "per_class": {name: {"precision", "recall", "f1",
        "support"}}, "confusion_matrix"}`; the matrix is a list of lists with rows = true class
        and columns = predicted class.

    Example:
    >>> import numpy as np
    >>> m = classification_metrics(np.array([0, 1, 1]), np.eye(4)[[0, 1, 0]])
    >>> round(m["accuracy"], 4), m["confusion_matrix"][1]
    (0.6667, [1, 1, 0, 0])
    """
    label_set = LabelSet.coerce(label_set)
    y = _as_labels(y_true, label_set)
    num = label_set.num_labels
    probs = _as_float_array(probabilities, "probabilities", (y.size, num))
    pred = np.argmax(probs, axis=1)  # first maximum wins on ties
    # Keras metrics get one-hot argmax predictions, so that ties cannot light up two classes
    # (F1Score with threshold=None would) and every number agrees with the confusion matrix.
    true_1h = np.eye(num, dtype=np.float32)[y]
    pred_1h = np.eye(num, dtype=np.float32)[pred]

    accuracy = keras.metrics.CategoricalAccuracy()
    accuracy.update_state(true_1h, pred_1h)
    f1 = {}
    for average in ("micro", "macro", None):
        metric = keras.metrics.F1Score(average=average)
        metric.update_state(true_1h, pred_1h)
        f1[average] = _result(metric)

    support = np.bincount(y, minlength=num)
    per_class = {}
    for i, name in enumerate(label_set.names):
        precision = keras.metrics.Precision(class_id=i)  # threshold 0.5 on the one-hot
        recall = keras.metrics.Recall(class_id=i)
        precision.update_state(true_1h, pred_1h)
        recall.update_state(true_1h, pred_1h)
        per_class[name] = {
            "precision": _float(_result(precision)),
            "recall": _float(_result(recall)),
            "f1": _float(f1[None][i]),
            "support": int(support[i]),
        }
    confusion = np.bincount(y * num + pred, minlength=num * num).reshape(num, num)
    return {
        "accuracy": _float(_result(accuracy)),
        "micro_f1": _float(f1["micro"]),
        "macro_f1": _float(f1["macro"]),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def _ranked_chunks(query_ids: np.ndarray, values: np.ndarray, scores: np.ndarray):
    """Yields `(values, mask)` matrices of `(queries, longest list, ...)`: each row holds one
    query's `values` in ranked order (score descending, input order on ties), padded with
    mask False.

    Queries are grouped by list length so that short lists are not padded to the longest one.
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
    for a in range(0, counts.size, _QUERY_CHUNK):
        b = min(a + _QUERY_CHUNK, counts.size)
        items = slice(starts[a], starts[b])
        matrix = np.zeros((b - a, counts[b - 1], *values.shape[1:]), dtype=np.float32)
        mask = np.zeros(matrix.shape[:2], dtype=bool)
        matrix[q[items] - a, rank[items]] = values[items]
        mask[q[items] - a, rank[items]] = True
        yield matrix, mask


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
    """
    try:
        import keras_rs
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("ranking_metrics needs keras-rs: pip install 'keras-rs>=0.4'") from error

    label_set = LabelSet.coerce(label_set)
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    y = _as_labels(y_true, label_set)
    query_ids = np.asarray(query_ids)
    if query_ids.shape != y.shape:
        raise ValueError(f"query_ids: expected shape {y.shape}, got {query_ids.shape}")
    scores = _as_float_array(scores, "scores", y.shape)
    gains = np.asarray(label_set.gains, dtype=np.float64)
    if np.any(gains < 0):
        # keras_rs treats negative labels as padding, and nDCG needs gains >= 0 anyway.
        raise ValueError(f"label_set gains must be >= 0, got {label_set.gains}")
    item_gain = gains[y]
    is_exact = (item_gain == gains.max()).astype(np.float64)

    # keras_rs computes the standard formulas, but three of its defaults differ from ours:
    # - gain_fn defaults to 2**rel - 1; the identity makes it linear in the given ESCI gains.
    # - ties: keras_rs always passes a mask to its sort, and with a mask it shuffles ties at
    #   random even with shuffle_ties=False (keras_rs 0.4.0, ranking_metrics_utils.
    #   sort_by_scores). We therefore hand it each query already ranked (stable ties), with
    #   strictly decreasing scores, so it has no tie left to shuffle.
    # - lists with zero ideal DCG / no relevant item count as 0 there; a per-list weight of 0
    #   skips them instead.
    ndcg = keras_rs.metrics.NDCG(k=int(k), gain_fn=_identity_gain, shuffle_ties=False)
    mrr = keras_rs.metrics.MeanReciprocalRank(shuffle_ties=False)
    both = np.stack([item_gain, is_exact], axis=1)
    num_queries = zero_ideal = no_exact = 0
    for matrix, mask in _ranked_chunks(query_ids, both, scores):
        gain_m, exact_m = matrix[..., 0], matrix[..., 1]
        ranked_scores = np.broadcast_to(-np.arange(gain_m.shape[1], dtype=np.float32), gain_m.shape)
        has_gain = gain_m.sum(axis=1) > 0
        has_exact = exact_m.sum(axis=1) > 0
        num_queries += gain_m.shape[0]
        zero_ideal += int((~has_gain).sum())
        no_exact += int((~has_exact).sum())
        ndcg.update_state(
            {"labels": gain_m, "mask": mask}, ranked_scores, sample_weight=has_gain.astype("f4")
        )
        mrr.update_state(
            {"labels": exact_m, "mask": mask}, ranked_scores, sample_weight=has_exact.astype("f4")
        )
    return {
        f"ndcg@{k}": _float(_result(ndcg)),
        "mrr": _float(_result(mrr)),
        "queries": num_queries,
        "queries_with_zero_ideal_dcg": zero_ideal,
        "queries_without_exact": no_exact,
    }


def _identity_gain(label):
    return label


def evaluation_report(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    scores: np.ndarray | None,
    query_ids: np.ndarray,
    label_set: LabelSet = ESCI,
) -> dict:
    """`classification_metrics` and `ranking_metrics` (k=10) in one dict, plus `num_examples`
    and `label_names`.

    `scores=None` ranks by the expected gain `probabilities @ label_set.gains` (this is the
    model's ranking score).

    Example:
    >>> import numpy as np
    >>> r = evaluation_report(np.array([0, 3]), np.eye(4)[[0, 3]], None, np.array([7, 7]))
    >>> r["macro_f1"] < r["micro_f1"], r["ndcg@10"], r["num_examples"]
    (True, 1.0, 2)
    """
    label_set = LabelSet.coerce(label_set)
    y = _as_labels(y_true, label_set)
    report = classification_metrics(y, probabilities, label_set)
    if scores is None:
        probs = _as_float_array(probabilities, "probabilities", (y.size, label_set.num_labels))
        scores = probs @ np.asarray(label_set.gains, dtype=np.float64)
    report.update(ranking_metrics(query_ids, y, scores, label_set, k=10))
    report["num_examples"] = int(y.size)
    report["label_names"] = list(label_set.names)
    return report


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
