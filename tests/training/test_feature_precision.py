"""`feature_pass_precision`: the frozen encoders' pass in bfloat16 (#17), the model left float32."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from esr_tf.models.builder import TINY_MODEL, build_relevance_model
from esr_tf.models.precision import AUTO_SPEEDUP, bfloat16_copy, check_precision, cpu_flags, faster_precision
from esr_tf.training import feature_store as fs
from esr_tf.training.config import ConfigError, parse_config
from esr_tf.training.encoder_pass import FrozenEncoders, backbone_fingerprint
from esr_tf.training.feature_cache import BackboneFeatures


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_relevance_model(**TINY_MODEL)


@pytest.fixture(scope="module")
def valid(tiny_catalogue):
    return tiny_catalogue.columns("valid")


@pytest.fixture(scope="module")
def both(model, valid):
    return {p: BackboneFeatures.compute(model, valid, precision=p) for p in ("float32", "bfloat16")}


def test_auto_keeps_bfloat16_only_where_it_times_faster(tmp_path):
    assert faster_precision({"float32": 10.0, "bfloat16": 9.0}) == "float32"  # within noise
    assert faster_precision({"float32": 10.0, "bfloat16": 12.0}) == "float32"
    assert faster_precision({"float32": 10.0, "bfloat16": 10.0 / AUTO_SPEEDUP}) == "bfloat16"
    assert check_precision("auto") == "auto"
    with pytest.raises(ValueError, match="one of"):
        check_precision("float16")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx512f", "amx_bf16"}
    assert cpu_flags(tmp_path / "absent") == frozenset()


def test_auto_times_both_encoders_and_takes_the_faster(model, monkeypatch, caplog):
    timed, seconds = [], {"float32": 10.0}

    def fake(self, length, pairs, photos, **kwargs):
        timed.append((self.precision, length, pairs, photos))
        return seconds[self.precision]

    monkeypatch.setattr(FrozenEncoders, "pass_seconds", fake)
    for seconds["bfloat16"], expected in ((9.0, "float32"), (5.0, "bfloat16")):
        with caplog.at_level("INFO", logger="esr_tf.training"):
            chosen = FrozenEncoders.of(model, "auto", pairs=100, photos=7)
        assert chosen.precision == expected
        assert (chosen.text is model.text_encoder) == (expected == "float32")
        assert f"auto: {expected}" in caplog.text
    length = model.preprocessor.sequence_length
    assert timed[:2] == [("float32", length, 100, 7), ("bfloat16", length, 100, 7)]


def test_auto_reuses_the_store_a_run_started_without_timing_again(model, valid, tmp_path, monkeypatch):
    started = fs.FeatureStore.build(model, {"valid": valid}, tmp_path, precision="bfloat16")

    def no_timing(*args, **kwargs):
        raise AssertionError("timed again")

    monkeypatch.setattr(FrozenEncoders, "pass_seconds", no_timing)
    again = fs.FeatureStore.build(model, {"valid": valid}, tmp_path, precision="auto")
    assert again.folder == started.folder and again.splits["valid"].files == started.splits["valid"].files


def test_the_timing_itself_runs_on_both_encoders(model):
    for precision in ("float32", "bfloat16"):
        encoders = FrozenEncoders.of(model, precision)
        seconds = encoders.pass_seconds(model.preprocessor.sequence_length, 64, 2, batch=4, repeats=1)
        assert 0 < seconds < 60


def test_the_copy_computes_in_bfloat16_and_leaves_the_encoder_float32(model):
    copy = bfloat16_copy(model.image_encoder)
    images = np.random.default_rng(0).uniform(0, 255, (2, *model.image_encoder.input.shape[1:])).astype("float32")
    assert keras.backend.standardize_dtype(copy(images).dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(model.image_encoder(images).dtype) == "float32"
    assert all(str(w.dtype) == "float32" for w in copy.weights)
    for a, b in zip(copy.get_weights(), model.image_encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bfloat16_features_are_float32_close_to_float32_ones_and_keyed_apart(model, both):
    f32, b16 = both["float32"], both["bfloat16"]
    assert b16.sequence_output.dtype == np.float32 and b16.feature_maps.dtype == np.float32
    np.testing.assert_array_equal(b16.text_mask, f32.text_mask)
    mask = f32.text_mask.astype(bool)
    err = np.linalg.norm(b16.sequence_output - f32.sequence_output, axis=-1)[mask]
    assert np.median(err / np.linalg.norm(f32.sequence_output, axis=-1)[mask]) < 0.03
    np.testing.assert_allclose(b16.feature_maps, f32.feature_maps, rtol=0.05, atol=0.05)
    assert b16.source == backbone_fingerprint(model, "bfloat16") != f32.source == backbone_fingerprint(model)
    assert f32.usable_by(model) and not b16.usable_by(model)


def test_a_bfloat16_pass_has_a_store_of_its_own(model, valid, tmp_path):
    stores = {p: fs.FeatureStore.build(model, {"valid": valid}, tmp_path, precision=p) for p in ("float32", "bfloat16")}
    assert stores["float32"].folder != stores["bfloat16"].folder


def test_the_config_names_the_precisions():
    assert parse_config({}).feature_pass_precision == "float32"
    assert parse_config({"feature_pass_precision": "auto"}).feature_pass_precision == "auto"
    with pytest.raises(ConfigError, match="feature_pass_precision"):
        parse_config({"feature_pass_precision": "float16"})
