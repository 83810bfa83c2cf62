"""Metrics checked against hand-computed cases; plots checked to produce readable PNGs."""

import json
import math
import warnings

import numpy as np
import pytest
from PIL import Image
from training import rs_reference

from esr_tf.labels import ESCI
from esr_tf.training.metrics import (
    classification_metrics,
    evaluation_report,
    ranking_metrics,
    write_metrics_json,
)
from esr_tf.training.plots import (
    plot_confusion_matrix,
    plot_prediction_grid,
    plot_training_curves,
)

E, S, C, I = 0, 1, 2, 3  # noqa: E741 - the ESCI codes
TOL = 1e-6  # values are rounded to 6 decimals


def _probs_with_argmax(pred, num=4, seed=0):
    """Non-one-hot probabilities whose argmax is `pred`."""
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.0, 0.2, size=(len(pred), num))
    probs[np.arange(len(pred)), pred] = 0.5
    return probs / probs.sum(axis=1, keepdims=True)


def _dcg(gains):
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


# ---------------------------------------------------------------- classification


def test_classification_hand_computed():
    # true: E E E S S C I I
    # pred: E E S S I E I I
    # confusion (rows true, cols pred E S C I):
    #   E [2 1 0 0]   S [0 1 0 1]   C [1 0 0 0]   I [0 0 0 2]
    # accuracy = micro F1 = (2 + 1 + 0 + 2) / 8 = 0.625
    # E: tp 2, predicted 3, support 3 -> P 2/3, R 2/3, F1 2/3
    # S: tp 1, predicted 2, support 2 -> P 1/2, R 1/2, F1 1/2
    # C: tp 0, predicted 0, support 1 -> P 0 (no prediction), R 0, F1 0
    # I: tp 2, predicted 3, support 2 -> P 2/3, R 1, F1 2*(2/3)/(5/3) = 0.8
    # macro F1 = (2/3 + 1/2 + 0 + 0.8) / 4 = 0.491667
    y = np.array([E, E, E, S, S, C, I, I])
    pred = np.array([E, E, S, S, I, E, I, I])
    m = classification_metrics(y, _probs_with_argmax(pred))
    assert m["accuracy"] == pytest.approx(0.625, abs=TOL)
    assert m["micro_f1"] == pytest.approx(0.625, abs=TOL)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.0 + 0.8) / 4, abs=TOL)
    # All four labels occur (C only as a true label): every one is averaged.
    assert m["macro_labels"] == list(ESCI.names)
    assert m["macro_precision"] == pytest.approx((2 / 3 + 0.5 + 0.0 + 2 / 3) / 4, abs=TOL)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 0.0 + 1.0) / 4, abs=TOL)
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 2]]
    expected = {
        "exact": (2 / 3, 2 / 3, 2 / 3, 3),
        "substitute": (0.5, 0.5, 0.5, 2),
        "complement": (0.0, 0.0, 0.0, 1),
        "irrelevant": (2 / 3, 1.0, 0.8, 2),
    }
    assert list(m["per_class"]) == list(ESCI.names)
    for name, (p, r, f1, support) in expected.items():
        got = m["per_class"][name]
        assert got["precision"] == pytest.approx(p, abs=TOL), name
        assert got["recall"] == pytest.approx(r, abs=TOL), name
        assert got["f1"] == pytest.approx(f1, abs=TOL), name
        assert got["support"] == support
    assert all(isinstance(v, float) for v in (m["accuracy"], m["micro_f1"], m["macro_f1"]))


def test_classification_zero_support_and_ties_without_warnings():
    # S and C never occur and are never predicted: all their numbers are 0.0, not NaN.
    # Row 2 ties E and I: the first maximum (E) wins.
    y = np.array([E, I, E])
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.4, 0.1, 0.1, 0.4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(1.0, abs=TOL)
    for name in ("substitute", "complement"):
        assert m["per_class"][name] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Macro averages over the labels that occur (true or predicted): E and I, not S and C.
    assert m["macro_labels"] == ["exact", "irrelevant"]
    assert (m["macro_f1"], m["macro_precision"], m["macro_recall"]) == (1.0, 1.0, 1.0)
    assert m["confusion_matrix"][0] == [2, 0, 0, 0]


def test_macro_f1_of_three_present_labels_is_their_mean():
    # No complement pair at all (true or predicted): macro-F1 is the mean over E, S, I.
    # E: tp 2, support 3, predicted 2 -> F1 4/5; S: tp 1, support 1, predicted 2 -> 2/3;
    # I: tp 1, support 1, predicted 1 -> 1.
    y = np.array([E, E, E, S, I])
    pred = np.array([E, E, S, S, I])
    m = classification_metrics(y, _probs_with_argmax(pred))
    assert m["macro_labels"] == ["exact", "substitute", "irrelevant"]
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 1.0) / 3, abs=TOL)
    assert m["per_class"]["complement"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # A label only predicted (never true) is averaged too, with F1 0.
    m = classification_metrics(np.array([E, E]), np.eye(4)[[E, C]])
    assert m["macro_labels"] == ["exact", "complement"]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2, abs=TOL)


def test_classification_agrees_with_keras_metrics():
    import keras

    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, size=300)
    probs = rng.dirichlet(np.ones(4), size=300)
    m = classification_metrics(y, probs)
    true_1h, pred_1h = np.eye(4, dtype="f4")[y], np.eye(4, dtype="f4")[probs.argmax(1)]
    f1 = keras.metrics.F1Score(average=None)
    f1.update_state(true_1h, pred_1h)
    macro = keras.metrics.F1Score(average="macro")  # all four labels occur here
    macro.update_state(true_1h, pred_1h)
    assert m["macro_labels"] == list(ESCI.names)
    assert m["macro_f1"] == pytest.approx(float(macro.result()), abs=1e-5)
    for i, name in enumerate(ESCI.names):
        precision, recall = keras.metrics.Precision(class_id=i), keras.metrics.Recall(class_id=i)
        precision.update_state(true_1h, pred_1h)
        recall.update_state(true_1h, pred_1h)
        got = m["per_class"][name]
        assert got["f1"] == pytest.approx(float(f1.result()[i]), abs=1e-5)
        assert got["precision"] == pytest.approx(float(precision.result()), abs=1e-5)
        assert got["recall"] == pytest.approx(float(recall.result()), abs=1e-5)


def test_classification_accepts_label_spellings():
    m = classification_metrics(np.array(["E", "irrelevant"]), np.eye(4)[[0, 3]])
    assert m["accuracy"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "y, probs, match",
    [
        (np.array([0, 4]), np.eye(4)[[0, 1]], r"y_true\[1\] = 4"),
        (np.array([0, 1]), np.eye(4)[[0]], "probabilities: expected shape"),
        (np.array([0, 1]), np.array([[np.nan, 0, 0, 0], [0, 1, 0, 0]]), "not finite"),
        (np.array([], dtype=int), np.zeros((0, 4)), "no examples"),
        (np.array(["X"]), np.eye(4)[[0]], "unknown label 'X'"),
    ],
)
def test_classification_bad_input(y, probs, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, probs)


# ---------------------------------------------------------------- ranking


def test_ndcg_and_mrr_hand_computed_two_queries():
    # Query "a": (label, score) S .9, E .8, I .7, C .6 -> ranked gains [0.1, 1, 0, 0.01]
    #   DCG  = 0.1/log2(2) + 1/log2(3) + 0/log2(4) + 0.01/log2(5) = 0.1 + 0.63093 + 0 + 0.00431
    #        = 0.73524
    #   IDCG = 1/log2(2) + 0.1/log2(3) + 0.01/log2(4) + 0 = 1 + 0.06309 + 0.005 = 1.06809
    #   nDCG = 0.68836; first exact at rank 2 -> RR 1/2
    # Query "b": E .2, E .9, C .5 -> ranked gains [1, 0.01, 1]
    #   DCG  = 1 + 0.01/log2(3) + 1/log2(4) = 1 + 0.00631 + 0.5 = 1.50631
    #   IDCG = 1 + 1/log2(3) + 0.01/log2(4) = 1 + 0.63093 + 0.005 = 1.63593
    #   nDCG = 0.92077; first exact at rank 1 -> RR 1
    # Items of the two queries are interleaved on purpose.
    q = np.array(["a", "b", "a", "b", "a", "a", "b"])
    y = np.array([S, E, E, E, I, C, C])
    s = np.array([0.9, 0.2, 0.8, 0.9, 0.7, 0.6, 0.5])
    m = ranking_metrics(q, y, s)
    ndcg_a = (0.1 + 1 / math.log2(3) + 0.01 / math.log2(5)) / (1 + 0.1 / math.log2(3) + 0.01 / 2)
    ndcg_b = (1 + 0.01 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3) + 0.01 / 2)
    assert ndcg_a == pytest.approx(0.68836, abs=1e-5)
    assert ndcg_b == pytest.approx(0.92077, abs=1e-5)
    assert m["ndcg@10"] == pytest.approx((ndcg_a + ndcg_b) / 2, abs=TOL)
    assert m["mrr"] == pytest.approx(0.75, abs=TOL)
    assert m["queries"] == 2
    assert m["queries_with_zero_ideal_dcg"] == 0
    assert m["queries_without_exact"] == 0


def test_zero_ideal_dcg_and_no_exact_queries_are_skipped():
    # "x": I .5, E .4         -> nDCG 1/log2(3) = 0.63093, RR 1/2
    # "zero": I .9, I .1      -> ideal DCG 0: skipped by nDCG; no exact: skipped by MRR
    # "noexact": C .9, S .1   -> nDCG (0.01 + 0.1/log2 3) / (0.1 + 0.01/log2 3) = 0.65429;
    #                            no exact: skipped by MRR
    q = np.array([10, 10, 20, 20, 30, 30])
    y = np.array([I, E, I, I, C, S])
    s = np.array([0.5, 0.4, 0.9, 0.1, 0.9, 0.1])
    m = ranking_metrics(q, y, s)
    ndcg_noexact = (0.01 + 0.1 / math.log2(3)) / (0.1 + 0.01 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + ndcg_noexact) / 2, abs=TOL)
    assert m["mrr"] == pytest.approx(0.5, abs=TOL)
    assert (m["queries"], m["queries_with_zero_ideal_dcg"], m["queries_without_exact"]) == (3, 1, 2)


def test_no_query_left_gives_zero():
    m = ranking_metrics(np.array([1, 1]), np.array([I, I]), np.array([0.3, 0.2]))
    assert (m["ndcg@10"], m["mrr"], m["queries_with_zero_ideal_dcg"]) == (0.0, 0.0, 1)


def test_k_truncation_on_a_12_item_query():
    scores = np.linspace(1.0, 0.0, 12)  # input order = rank order
    # 11 irrelevant items, then the only exact one at rank 12: outside the top 10.
    y = np.array([I] * 11 + [E])
    q = np.zeros(12, dtype=int)
    at10 = ranking_metrics(q, y, scores)
    assert at10["ndcg@10"] == pytest.approx(0.0, abs=TOL)
    assert at10["mrr"] == pytest.approx(1 / 12, abs=TOL)  # MRR has no cut-off
    at12 = ranking_metrics(q, y, scores, k=12)
    assert "ndcg@12" in at12
    assert at12["ndcg@12"] == pytest.approx(1 / math.log2(13), abs=TOL)
    # One irrelevant item first, then 11 exact: both DCG and ideal DCG are cut at 10.
    #   DCG@10 = sum_{i=2..10} 1/log2(i+1), IDCG@10 = sum_{i=1..10} 1/log2(i+1)
    y = np.array([I] + [E] * 11)
    m = ranking_metrics(q, y, scores)
    expected = _dcg([0.0] + [1.0] * 9) / _dcg([1.0] * 10)
    assert m["ndcg@10"] == pytest.approx(expected, abs=TOL)
    assert m["mrr"] == pytest.approx(0.5, abs=TOL)


def test_matches_keras_rs_on_random_lists_without_ties(monkeypatch):
    rng = np.random.default_rng(3)
    n = 400
    q = rng.integers(0, 40, size=n)
    y = rng.choice(4, size=n, p=[0.4, 0.2, 0.1, 0.3])
    s = rng.permutation(n) / n  # distinct scores: the tie rule plays no part
    gains = np.array(ESCI.gains)[y]
    m = ranking_metrics(q, y, s, k=5)
    want = rs_reference.keras_rs_reference(q, gains, s, y == E, k=5)
    assert m["ndcg@5"] == pytest.approx(want["ndcg"], abs=1e-5)  # keras_rs runs in float32
    assert m["mrr"] == pytest.approx(want["mrr"], abs=1e-5)
    monkeypatch.setattr(rs_reference, "QUERY_CHUNK", 7)  # several padded keras_rs updates
    chunked = rs_reference.keras_rs_reference(q, gains, s, y == E, k=5)
    assert chunked == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize(
    "q, y, s, k, match",
    [
        ([1, 1], [0, 1], [0.1], 10, "scores: expected shape"),
        ([1], [0, 1], [0.1, 0.2], 10, "query_ids: expected shape"),
        ([1, 1], [0, 1], [0.1, np.inf], 10, r"scores\[1\] is not finite"),
        ([1, 1], [0, 1], [0.1, 0.2], 0, "k must be a positive integer"),
    ],
)
def test_ranking_bad_input(q, y, s, k, match):
    with pytest.raises(ValueError, match=match):
        ranking_metrics(np.array(q), np.array(y), np.array(s), k=k)


# ---------------------------------------------------------------- report / JSON


def test_evaluation_report_and_json(tmp_path):
    y = np.array([E, I, S, E, C])
    probs = _probs_with_argmax(np.array([E, I, E, E, C]))
    q = np.array([1, 1, 1, 2, 2])
    report = evaluation_report(y, probs, None, q)
    for key in (
        "accuracy",
        "micro_f1",
        "macro_f1",
        "per_class",
        "confusion_matrix",
        "ndcg@10",
        "mrr",
        "num_examples",
        "queries",
        "queries_without_exact",
    ):
        assert key in report
    assert report["num_examples"] == 5
    for key in ("accuracy", "macro_f1", "ndcg@10", "mrr"):
        low, high = report[f"{key}_ci95"]
        assert low <= report[key] <= high
    assert report["bootstrap"]["resamples"] == 1000 and report["bootstrap"]["seed"] == 0
    assert "accuracy_ci95" not in evaluation_report(y, probs, None, q, resamples=0)
    explicit = evaluation_report(y, probs, probs @ np.array(ESCI.gains), q)
    assert explicit["ndcg@10"] == pytest.approx(report["ndcg@10"])

    report["extra"] = {
        "np_float": np.float32(0.25),
        "np_int": np.int64(3),
        "nan": float("nan"),
        "array": np.arange(2),
    }
    path = write_metrics_json(report, tmp_path / "sub" / "metrics.json")
    text = path.read_text()
    loaded = json.loads(text)
    assert loaded["accuracy"] == pytest.approx(report["accuracy"])
    assert loaded["extra"] == {"array": [0, 1], "nan": None, "np_float": 0.25, "np_int": 3}
    assert list(loaded) == sorted(loaded)
    assert text.startswith("{\n  ")


# ---------------------------------------------------------------- plots


def _assert_png(path):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 100 and image.size[1] > 100


def test_plot_confusion_matrix(tmp_path):
    confusion = [[5, 1, 0, 0], [2, 3, 0, 1], [0, 0, 0, 0], [1, 0, 0, 9]]
    _assert_png(plot_confusion_matrix(confusion, ESCI.names, tmp_path / "cm.png", title="val"))
    _assert_png(plot_confusion_matrix(confusion, ESCI.names, tmp_path / "raw.png", normalize=False))
    with pytest.raises(ValueError, match="expected shape"):
        plot_confusion_matrix([[1, 2]], ESCI.names, tmp_path / "bad.png")


def test_plot_training_curves(tmp_path):
    history = {
        "loss": [1.2, 0.9, 0.8],
        "val_loss": [1.3, 1.0, 0.95],
        "macro_f1": [0.2, 0.35, 0.4],
        "val_macro_f1": [0.18, 0.3, 0.33],
        "learning_rate": [1e-3, 1e-3, 5e-4],
    }
    _assert_png(plot_training_curves(history, tmp_path / "curves.png"))
    with pytest.raises(ValueError, match="no metric"):
        plot_training_curves({"loss": []}, tmp_path / "empty.png")


def test_plot_prediction_grid(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (30, 120, 200)).save(photo)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    rows = [
        {
            "query": "usb c cable",
            "title": "USB-C cable 1 m",
            "image_path": str(photo),
            "true": "exact",
            "pred": "exact",
            "score": 0.93,
        },
        {
            "query": "phone case",
            "title": "Screen protector",
            "image_path": "",
            "true": "complement",
            "pred": "exact",
            "score": 0.71,
        },
        {
            "query": "lamp",
            "title": "LED bulb",
            "image_path": str(broken),
            "true": "substitute",
            "pred": "substitute",
            "score": 0.4,
        },
        {
            "query": "shoes",
            "title": "Socks",
            "image_path": str(tmp_path / "missing.jpg"),
            "true": "irrelevant",
            "pred": "complement",
            "score": 0.1,
        },
        {
            "query": "pen",
            "title": "Ballpoint pen, blue, 10 pack",
            "image_path": "",
            "true": "exact",
            "pred": "exact",
            "score": 0.88,
        },
    ]
    _assert_png(plot_prediction_grid(rows, tmp_path / "grid.png", columns=3))
    with pytest.raises(ValueError, match="rows is empty"):
        plot_prediction_grid([], tmp_path / "none.png")
    with pytest.raises(ValueError, match=r"rows\[0\] lacks \['pred'\]"):
        plot_prediction_grid([{"query": "q", "true": "exact"}], tmp_path / "bad.png")
