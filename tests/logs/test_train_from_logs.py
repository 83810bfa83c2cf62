"""Training from search logs (#32 item 3): weak labels with clipped inverse propensity weights,
`train --logs`, and a search index built from a log-trained model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from esr_tf.logs.read import LogCounts, LogError
from esr_tf.logs.weak_labels import LogLabelConfig, catalogue_from_logs, weak_pairs
from esr_tf.training.config import ConfigError, parse_config


def _counts(rows):
    """rows: (query, product, position, impressions, clicks, purchases)."""
    q, d, k, n, c, b = zip(*rows, strict=True)
    return LogCounts(queries=np.array(q, dtype=object), product_ids=np.array(d, dtype=object),
                     positions=np.array(k, np.int32), impressions=np.array(n), clicks=np.array(c),
                     carts=np.array(b), purchases=np.array(b), rows=sum(n), sessions=sum(n))


def test_corrected_rates_divide_by_the_position_propensity_and_raw_rates_do_not():
    # "low" is as relevant as "top" (clicked whenever examined) but was shown at position 4.
    counts = _counts([("q", "top", 1, 100, 90, 0), ("q", "low", 4, 100, 22, 0), ("q", "bad", 2, 100, 2, 0)])
    propensities = np.array([1.0, 0.5, 0.33, 0.25])
    corrected = weak_pairs(counts, propensities, LogLabelConfig(labels="rules"))
    rates = dict(zip(corrected.product_ids, corrected.click_rates, strict=True))
    assert rates["top"] == pytest.approx(0.9) and rates["low"] == pytest.approx(0.88)
    assert dict(zip(corrected.product_ids, corrected.codes, strict=True)) == {"top": "E", "low": "E", "bad": "I"}
    raw = weak_pairs(counts, propensities, LogLabelConfig(correct=False, labels="rules"))
    assert dict(zip(raw.product_ids, raw.codes, strict=True)) == {"top": "E", "low": "C", "bad": "I"}
    # weight: expected examinations over full_weight_at (5), at most 1; the same corrected or not
    shallow = weak_pairs(_counts([("q", "x", 4, 8, 1, 0)]), propensities, LogLabelConfig())
    assert shallow.weights.tolist() == pytest.approx([8 * 0.25 / 5])


def test_clip_bounds_the_weight_of_a_click_at_a_deep_position():
    counts = _counts([("q", "deep", 3, 10, 1, 0)])
    pairs = weak_pairs(counts, np.array([1.0, 0.5, 0.01]), LogLabelConfig(clip=0.1))
    assert pairs.click_rates.tolist() == pytest.approx([1 / 0.1 / 10])


def test_a_purchase_rate_makes_a_pair_exact():
    assert LogLabelConfig().codes([0.35, 0.35], [0.2, 0.0]).tolist() == ["E", "S"]


@pytest.mark.parametrize(("override", "message"), [
    ("log_labels.clip=0", "log_labels.clip"),
    ("log_labels.exact_click=0.2", "exact_click >= substitute_click"),
    ("log_labels.correct=maybe", "log_labels.correct"),
    ("log_labels.nope=1", "log_labels.nope: unknown field"),
])
def test_bad_label_rules_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(None, [override])


@pytest.fixture(scope="module")
def simulated(tiny_catalogue, tmp_path_factory):
    from esr_tf.logs.simulate import simulate_logs

    out = tmp_path_factory.mktemp("logs")
    simulate_logs(tiny_catalogue, out, sessions=600, seed=0)
    return out / "impressions.csv"


def test_the_logs_replace_train_and_valid_and_leave_the_test_queries_out(tiny_catalogue, simulated, tmp_path):
    learned, summary = catalogue_from_logs(tiny_catalogue, simulated, LogLabelConfig())
    assert learned.select("test") == tiny_catalogue.select("test")
    test_queries = {e.query for e in tiny_catalogue.select("test")}
    weak = learned.select("train") + learned.select("valid")
    assert weak and not {e.query for e in weak} & test_queries
    assert not {e.query for e in learned.select("train")} & {e.query for e in learned.select("valid")}
    assert all(0 < e.weight <= 1 for e in weak) and any(e.weight < 1 for e in weak)
    assert summary["examples"] == len(weak) >= summary["pairs"] and len(summary["propensities"]) == 10
    # a test query in the logs is left out, counted
    leaked = tmp_path / "leak.csv"
    test = tiny_catalogue.select("test")[0]
    leaked.write_text(simulated.read_text() + f"zz,{test.query},{test.product_id},1,1,0,0\n")
    assert catalogue_from_logs(tiny_catalogue, leaked, LogLabelConfig())[1]["pairs_of_test_queries_left_out"] == 1


def test_logs_that_leave_no_valid_query_are_refused(tiny_catalogue, tmp_path):
    logs = tmp_path / "one.csv"
    query = tiny_catalogue.select("train")[0]
    logs.write_text("session_id,query,product_id,position,clicked,added_to_cart,purchased\n"
                    f"s1,{query.query},{query.product_id},1,1,0,0\n")
    with pytest.raises(LogError, match="no logged query left for the '(train|valid)' split"):
        catalogue_from_logs(tiny_catalogue, logs, LogLabelConfig(valid_fraction=0.01))


def test_logs_need_the_features_in_ram(tiny_config, tiny_catalogue, simulated, tmp_path):
    from esr_tf.training.trainer import train

    config = replace(tiny_config, logs=str(simulated), feature_store=str(tmp_path / "store"),
                     out_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="feature_store"):
        train(config, catalogue=tiny_catalogue, verbose=0)


def test_example_weights_multiply_the_class_weights():
    from esr_tf.training.feature_cache import Batching, sample_weights

    labels = np.array([0, 1, 1])
    both = sample_weights(Batching(class_weights=np.array([2.0, 0.5]), example_weights=np.array([1, 0.5, 0.2])),
                          labels)
    assert both.tolist() == pytest.approx([2.0, 0.25, 0.1])
    assert sample_weights(Batching(), labels) is None


@pytest.mark.slow
def test_a_log_trained_model_gives_a_search_index_that_verifies(tiny_config, tiny_catalogue, simulated,
                                                                       tmp_path):
    import keras

    from esr_tf.export.verify import verify_export
    from esr_tf.search.index import export_search_index
    from esr_tf.training.trainer import train

    config = replace(tiny_config, logs=str(simulated), out_dir=str(tmp_path / "run"), epochs=1,
                     retrieval=replace(tiny_config.retrieval, epochs=1))
    result = train(config, catalogue=tiny_catalogue, verbose=0)
    summary = json.loads((result.out_dir / "weak_labels.json").read_text())
    assert summary["examples"] == len(result.catalogue.select("train")) + len(result.catalogue.select("valid"))
    towers = keras.saving.load_model(result.out_dir / "retrieval.keras")
    index = export_search_index(result.model, towers, list(result.catalogue.products.values()),
                                tmp_path / "models", model_name="shop")
    # The TF + TF-Text process on every signature; the C++ client runs this kind of export in
    # test_search_index (the graph is the same, only the weights differ): not twice in the suite.
    report = verify_export(index, cpp=False)
    assert report["ok"], report
    assert {"search", "search_top", "retrieve_top"} <= set(report["load"]["signatures"])


def test_the_logs_bench_summary_pairs_the_models_seed_by_seed():
    from esr_tf.logs.bench import markdown, summarise

    def run(seed, corrected):
        values = {"labels": {"ndcg@10": 0.95, "macro_f1": 0.8}, "uncorrected": {"ndcg@10": 0.80, "macro_f1": 0.3},
                  "rules": {"ndcg@10": 0.88, "macro_f1": 0.5}, "corrected": {"ndcg@10": corrected, "macro_f1": 0.6},
                  "logging ranker": {"ndcg@10": 0.85}}
        samples = {name: {m: np.full(50, v) for m, v in row.items()} for name, row in values.items()}
        return {"seed": seed, "values": values, "samples": samples, "propensity_max_error": 0.01}

    result = summarise([run(0, 0.93), run(1, 0.91)])
    assert result["share_of_the_way"]["per_seed"] == pytest.approx([0.8, 0.6])
    versus = {(d["versus"], d["metric"]): d for d in result["differences"]}
    assert versus["logging ranker", "ndcg@10"]["mean"] == pytest.approx(0.07)
    assert versus["logging ranker", "ndcg@10"]["ci95"] == pytest.approx([0.07, 0.07])
    assert ("logging ranker", "macro_f1") not in versus  # a ranker has no classes
    assert versus["rules", "ndcg@10"]["per_seed"] == pytest.approx([0.05, 0.03])
    text = markdown({**result, "data": "demo shop", "sessions": 20_000, "eta": 1.0, "noise": 1.0, "seeds": [0, 1],
                     "memory": [], "load_before": [1.0], "load_after": [1.0]})
    assert "| corrected − logging ranker | ndcg@10 | +0.070 ± 0.014" in text
    worse = summarise([run(0, 0.93) | {"values": {**run(0, 0.93)["values"], "labels": {"ndcg@10": 0.8,
                                                                                         "macro_f1": 0.8}}}])
    assert np.isnan(worse["share_of_the_way"]["per_seed"][0])  # labels below the logger: no way to go


@pytest.mark.slow
def test_train_from_logs_on_a_folder_of_products_alone(tiny_catalogue, simulated, tmp_path, capsys):
    import shutil

    from esr_tf.cli import main
    from esr_tf.data import load_catalogue
    from esr_tf.models.builder import TINY_MODEL

    shop = tmp_path / "shop"
    shop.mkdir()
    shutil.copy(tiny_catalogue.root / "products.csv", shop)
    shutil.copytree(tiny_catalogue.root / "images", shop / "images")
    with pytest.raises(Exception, match="no examples.csv"):
        load_catalogue(shop)
    assert not load_catalogue(shop, missing_images="no_image", require_examples=False).examples
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"epochs": 1, "model": TINY_MODEL, "retrieval": {"epochs": 0}}))
    code = main(["train", "--config", str(config), "--data", str(shop), "--logs", str(simulated),
                 "--out", str(tmp_path / "run")])
    assert code == 0
    assert "no judged test pairs: nothing evaluated" in capsys.readouterr().out
