"""`RelevanceModel` as a KerasHub Task: the preset round trip, and `.keras` files saved before
the Backbone / Task split (their layout is rebuilt here the way those versions wrote it)."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest

from esr_tf.models.builder import TINY_MODEL, build_relevance_model, load_model
from esr_tf.models.legacy import is_legacy, legacy_view
from esr_tf.models.relevance_model import RelevanceBackbone, RelevanceModel


def _raw():
    import tensorflow as tf

    png = tf.io.encode_png((np.random.default_rng(0).random((40, 30, 3)) * 255).astype(np.uint8)).numpy()
    return {
        "query": np.array(["red mug", "blue cap", "green hat"]),
        "title": np.array(["Red mug", "Cap", "Green wool hat"]),
        "brand": np.array(["Acme", "", "Nordwind"]),
        "color": np.array(["red", "blue", ""]),
        "image": np.array([png, b"", png], dtype=object),
    }


@pytest.fixture(scope="module", params=["cross_attention", "text_only"])
def model(request):
    keras.utils.set_random_seed(0)
    return build_relevance_model(**{**TINY_MODEL, "fusion": request.param})


def _probabilities(model):
    return model.predict(_raw(), verbose=0)["probabilities"]


def test_model_is_a_task_over_a_relevance_backbone(model):
    assert isinstance(model.backbone, RelevanceBackbone)
    assert model.backbone.reads_photos == (model.fusion != "text_only")
    assert model.text_encoder is model.backbone.text_encoder and model.image_encoder is model.backbone.image_encoder


def test_preset_round_trip_gives_identical_outputs(model, tmp_path):
    model.save_to_preset(str(tmp_path / "preset"))
    loaded = RelevanceModel.from_preset(str(tmp_path / "preset"))
    assert loaded.fusion == model.fusion and isinstance(loaded.backbone, RelevanceBackbone)
    np.testing.assert_array_equal(_probabilities(loaded), _probabilities(model))
    backbone = RelevanceBackbone.from_preset(str(tmp_path / "preset"))
    assert len(backbone.weights) == len(model.backbone.weights)


def _write_legacy_archive(model, path) -> None:
    """A `.keras` file as esr_tf wrote it before the split: the encoders as config entries of
    the model, weights in the layout of `legacy_view`, the tokenizer's assets."""
    config = keras.saving.serialize_keras_object(model)
    inner = config["config"]
    inner["backbone"] = None
    inner["text_backbone"] = keras.saving.serialize_keras_object(model.text_backbone)
    inner["image_backbone"] = keras.saving.serialize_keras_object(model.image_backbone)
    folder = path.parent / "legacy_parts"
    (folder / "tokenizer").mkdir(parents=True)
    legacy_view(model).save_weights(str(folder / "model.weights.h5"))
    model.preprocessor.tokenizer.save_assets(str(folder / "tokenizer"))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": keras.__version__}))
        archive.writestr("config.json", json.dumps(config))
        archive.write(folder / "model.weights.h5", "model.weights.h5")
        for asset in (folder / "tokenizer").iterdir():
            archive.write(asset, f"assets/preprocessor/tokenizer/{asset.name}")


def test_keras_files_of_the_earlier_layout_load_with_identical_outputs(model, tmp_path):
    path = tmp_path / "old.keras"
    _write_legacy_archive(model, path)
    assert is_legacy(path)
    loaded = load_model(path)
    assert isinstance(loaded.backbone, RelevanceBackbone)
    np.testing.assert_array_equal(_probabilities(loaded), _probabilities(model))
    loaded.save(tmp_path / "new.keras")  # written in today's layout from then on
    assert not is_legacy(tmp_path / "new.keras")
    np.testing.assert_array_equal(_probabilities(load_model(tmp_path / "new.keras")), _probabilities(model))


def test_backbone_must_match_the_fusion_mode(model):
    other = "text_only" if model.fusion != "text_only" else "concat"
    with pytest.raises(ValueError, match="backbone_for"):
        RelevanceModel(backbone=model.backbone, preprocessor=model.preprocessor, fusion=other)


def test_files_saved_before_photo_summary_and_product_text_load_without_them(tmp_path):
    """`.keras` files written before #15 have no `photo_summary` entry, before #17 no
    `product_text`: they load in that layout, reading the title alone."""
    keras.utils.set_random_seed(0)
    title_only = {"title": TINY_MODEL["sequence_length"]}
    old = build_relevance_model(**TINY_MODEL, photo_summary=False, product_text=title_only)
    old.save(tmp_path / "saved.keras")
    with zipfile.ZipFile(tmp_path / "saved.keras") as src, zipfile.ZipFile(tmp_path / "old.keras", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                assert config["config"].pop("photo_summary") is False
                assert "title" in config["config"]["preprocessor"]["config"].pop("product_text")
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    loaded = load_model(tmp_path / "old.keras")
    assert loaded.photo_summary is False
    assert loaded.preprocessor.raw_inputs == ("query", "title", "image")
    assert "global_image_token" not in [layer.name for layer in loaded.fusion_head.layers]
    np.testing.assert_array_equal(_probabilities(loaded), _probabilities(old))
