"""Training configuration, the fit loop, evaluation outputs and the ablation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from esr_tf.training.config import ConfigError, TrainConfig, parse_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("epochs: 3\nmodel:\n  fusion: concat\n  image_size: 128\n")
    cfg = parse_config(path, ["batch_size=8", "model.freeze_text=false", "learning_rate=2e-4"])
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate) == (3, 8, 2e-4)
    assert cfg.model.fusion == "concat" and cfg.model.image_size == 128 and cfg.model.freeze_text is False
    assert parse_config(None) == TrainConfig()


@pytest.mark.parametrize(
    ("tree", "overrides", "field"),
    [
        ({"epochs": "many"}, [], "epochs"),
        ({"epochs": 0}, [], "epochs"),
        ({"loss": "hinge"}, [], "loss"),
        ({"model": {"fusion": "late"}}, [], "model.fusion"),
        ({"model": {"hidden_dim": 30, "num_heads": 4}}, [], "model.hidden_dim"),
        ({"modell": {}}, [], "modell"),
        ({}, ["model.image_size=big"], "model.image_size"),
        ({}, ["strategy=tpu"], "strategy"),
        ({}, ["nonsense"], "nonsense"),
        ({"model": 3}, [], "model"),
    ],
)
def test_bad_values_name_the_field(tree, overrides, field):
    with pytest.raises(ConfigError) as info:
        parse_config(tree, overrides)
    assert field in str(info.value)


def test_bad_file_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        parse_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(tmp_path / "missing.yaml")


def test_balanced_class_weights():
    from esr_tf.training.trainer import class_weight_vector

    w = class_weight_vector(np.array([0, 0, 0, 1]), 4, "balanced")
    assert w[0] < w[1] and w[2] == 0.0 and w[3] == 0.0
    np.testing.assert_allclose((w[np.array([0, 0, 0, 1])]).mean(), 1.0)
    np.testing.assert_array_equal(class_weight_vector(np.array([0, 1]), 4, "none"), np.ones(4))
    # weighted examples (a pair split over labels): a label's frequency is its weight, not its rows
    labels, own = np.array([0, 1, 1, 1]), np.array([1.0, 0.1, 0.1, 0.8])
    weighted = class_weight_vector(labels, 4, "balanced", own)
    np.testing.assert_allclose(weighted[:2], [1.0, 1.0])  # 1.0 of each: balanced already
    np.testing.assert_allclose((weighted[labels] * own).sum(), own.sum())


def test_fit_writes_model_history_and_checkpoints(tiny_trained):
    out = tiny_trained.out_dir
    assert tiny_trained.model_path.is_file()
    assert (out / "checkpoints" / "best.weights.h5").is_file()
    assert (out / "history.csv").is_file() and (out / "config.json").is_file()
    assert tiny_trained.epochs_run == 2
    assert len(tiny_trained.history["loss"]) == 2 and len(tiny_trained.history["val_loss"]) == 2


def test_evaluate_writes_metrics_and_plots(tiny_trained, tiny_catalogue, tmp_path):
    from PIL import Image

    from esr_tf.training.evaluate import evaluate_model

    report = evaluate_model(
        tiny_trained.model, tiny_catalogue, split="test", out_dir=tmp_path, history=tiny_trained.history
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("accuracy", "micro_f1", "macro_f1", "per_class", "ndcg@10", "mrr", "confusion_matrix"):
        assert key in saved and key in report
    assert set(saved["per_class"]) == {"exact", "substitute", "complement", "irrelevant"}
    for name in ("confusion_matrix.png", "training_curves.png", "predictions.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] > 100


def test_nan_loss_stops_with_a_message(tiny_catalogue, tmp_path):
    from esr_tf.models.builder import TINY_MODEL
    from esr_tf.training.trainer import TrainingError, train

    cfg = parse_config(
        {"epochs": 2, "out_dir": str(tmp_path), "learning_rate": 1e30, "warmup_fraction": 0.0, "model": TINY_MODEL}
    )
    with pytest.raises(TrainingError, match="NaN"):
        train(cfg, catalogue=tiny_catalogue, verbose=0)


@pytest.mark.slow
def test_ablate_produces_all_four_rows(tiny_catalogue, tmp_path, monkeypatch):
    from esr_tf.models.builder import TINY_MODEL
    from esr_tf.training.ablate import ABLATION_MODES, ablate

    cfg = parse_config({"epochs": 1, "out_dir": str(tmp_path), "model": TINY_MODEL})
    import esr_tf.training.ablate as module

    monkeypatch.setattr(module, "load_training_data", lambda config: tiny_catalogue)  # reuse the session's shop
    from esr_tf.training.feature_cache import BackboneFeatures

    passes = []
    compute_parts = BackboneFeatures.compute_parts.__func__
    monkeypatch.setattr(
        BackboneFeatures,
        "compute_parts",
        classmethod(lambda cls, model, *a, **k: passes.append(model.fusion) or compute_parts(cls, model, *a, **k)),
    )
    result = ablate(cfg)
    # Own encoders: text_only (no photos), image_only (BERT sees the query only); concat's
    # pass serves cross_attention.
    assert passes == ["text_only", "image_only", "concat"]
    rows = result["runs"]
    assert [r["fusion"] for r in rows] == list(ABLATION_MODES)
    assert all(0.0 <= r["macro_f1"] <= 1.0 and r["seed"] == cfg.seed for r in rows)
    table = (tmp_path / "ablation.md").read_text()
    assert all(mode in table for mode in ABLATION_MODES)
    assert len(json.loads((tmp_path / "ablation.json").read_text())["runs"]) == 4
    assert (tmp_path / "cross_attention" / f"seed_{cfg.seed}" / "metrics.json").exists()


def test_cached_features_are_refused_by_other_backbones(tiny_trained, tiny_config):
    import dataclasses

    import keras

    from esr_tf.models.builder import build_relevance_model

    feats = tiny_trained.features["train"]
    assert feats.photos and feats.usable_by(tiny_trained.model)
    part = feats.take(slice(0, 2))
    assert len(part) == 2 and part.source == feats.source and part.photos
    keras.utils.set_random_seed(tiny_config.seed + 1)
    other = build_relevance_model(tiny_config.model)  # random init: other backbone weights
    assert not feats.usable_by(other)
    keras.utils.set_random_seed(tiny_config.seed)  # other encoder: BERT sees the query only
    image_only = build_relevance_model(tiny_config.model.replace(fusion="image_only"))
    assert not feats.usable_by(image_only)
    # text_only features have no photo table: they serve text_only heads only.
    assert not dataclasses.replace(feats, photos=False).usable_by(tiny_trained.model)


def test_cached_features_must_hold_the_same_examples(tiny_trained, tiny_config):
    from esr_tf.training.trainer import _features_fit, training_parts

    features = tiny_trained.features
    parts = training_parts(tiny_config, tiny_trained.catalogue, tiny_trained.model)
    assert _features_fit(features, tiny_trained.model, parts)
    shifted = {**parts, "valid": {**parts["valid"], "label": np.roll(parts["valid"]["label"], 1)}}
    assert not _features_fit(features, tiny_trained.model, shifted)
    # Same count and labels, other texts (e.g. another seed's colour-hidden copies): not reused.
    retitled = {**parts, "train": {**parts["train"], "title": np.roll(parts["train"]["title"], 1)}}
    assert not _features_fit(features, tiny_trained.model, retitled)


def test_feature_pass_shows_progress(tiny_trained, tiny_catalogue, capsys):
    from esr_tf.training.feature_cache import BackboneFeatures

    columns = tiny_catalogue.columns("valid")
    BackboneFeatures.compute(tiny_trained.model, columns, verbose=2)
    out = capsys.readouterr().out
    assert f"{len(columns['label'])}/{len(columns['label'])}" in out  # the text pass, one line
    BackboneFeatures.compute(tiny_trained.model, columns, verbose=0)
    assert capsys.readouterr().out == ""


def test_the_photo_pass_traces_its_encoder_once_per_model(tiny_trained, tiny_catalogue):
    """Keras' `predict_on_batch` per batch retraced ("5 out of the last 80 calls ... triggered
    tf.function retracing" on dev_colour); one weakly cached function serves every pass."""
    from esr_tf.training import encoder_pass

    model = tiny_trained.model
    paths = encoder_pass.distinct_photos(tiny_catalogue.columns())
    first = encoder_pass.photo_feature_maps(model, paths, batch_size=8)
    again = encoder_pass.photo_feature_maps(model, paths[:3], batch_size=8)
    np.testing.assert_array_equal(first[:3], again)
    traced = encoder_pass._PHOTO_FUNCTIONS[model.image_encoder]
    assert traced.experimental_get_tracing_count() <= 2  # a full batch, then any size
