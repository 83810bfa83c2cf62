"""The image branch runs only on rows with a photo, and never on an empty batch.

Also the canary of `esr_tf.upstream`'s "onednn-conv2d-empty-batch": it fails once TensorFlow's
oneDNN Conv2D handles empty batches, so the registry entry can be dropped.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from esr_tf.models.builder import TINY_MODEL
from esr_tf.models.photo_rows import GatherPhotoRows, ScatterPhotoRows


class _CountingEncoder(keras.Model):
    """An image encoder that counts the rows it was called on (eagerly)."""

    def __init__(self):
        images = keras.Input((8, 8, 3))
        super().__init__(images, keras.layers.Conv2D(4, 3, strides=2, padding="same")(images))
        self.rows_seen = []

    def call(self, images, training=None):
        self.rows_seen.append(int(tf.shape(images)[0]))
        return super().call(images, training=training)


def _encode(encoder, images, has_image):
    return ScatterPhotoRows()(encoder(GatherPhotoRows()(images, has_image)), has_image)


def test_only_rows_with_a_photo_are_encoded():
    encoder = _CountingEncoder()
    images = np.random.default_rng(0).random((4, 8, 8, 3)).astype("float32")
    out = _encode(encoder, images, np.array([1.0, 0.0, 1.0, 0.0], "float32")).numpy()
    assert encoder.rows_seen[-1] == 2
    expected = encoder(images[[0, 2]]).numpy()
    np.testing.assert_allclose(out[[0, 2]], expected, rtol=0, atol=1e-6)
    assert not out[[1, 3]].any()


@pytest.mark.parametrize("batch", [0, 3])
def test_no_photo_at_all_encodes_one_dummy_row_and_returns_zeros(batch):
    encoder = _CountingEncoder()
    out = _encode(encoder, np.zeros((batch, 8, 8, 3), "float32"), np.zeros((batch,), "float32"))
    assert out.shape == (batch, 4, 4, 4) and not np.asarray(out).any()
    assert encoder.rows_seen == [1]  # never an empty batch (oneDNN), never the whole batch


def test_empty_batch_through_the_full_model_in_a_graph():
    from esr_tf.models.builder import build_relevance_model

    model = build_relevance_model(**TINY_MODEL)
    serve = tf.function(lambda x: model(x, training=False))
    empty = np.array([], str)
    x = model.preprocessor({"query": empty, "title": empty, "brand": empty, "color": empty,
                            "image": np.array([], object)})
    out = serve(x)
    assert out["probabilities"].shape == (0, 4) and out["score"].shape == (0,)


def test_skipping_rows_without_photo_changes_no_output():
    """Their feature map is masked downstream: zeros instead of the backbone's give the same result."""
    from esr_tf.models.builder import build_relevance_model

    model = build_relevance_model(**{**TINY_MODEL, "fusion": "concat"})
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (3, 64, 64, 3)).astype("float32")
    has_image = tf.constant([1.0, 0.0, 1.0])
    product = {"title": np.array(["Red mug", "Mug", "Cap"]), "brand": np.array(["Acme"] * 3),
               "color": np.array(["red", "", "blue"])}
    packed = model.preprocessor.tokenize(np.array(["red mug"] * 3), product)
    text = model.text_encoder(packed)
    head = {
        "sequence_output": text["sequence_output"],
        "text_mask": text["text_mask"],
        "token_ids": packed["token_ids"],
        "segment_ids": packed["segment_ids"],
        "has_image": has_image,
    }
    every_row = model.fusion_head({**head, "image_tokens": model.image_projector(model.image_encoder(images))})
    assert float(tf.reduce_max(tf.abs(model.image_encoder(images)[1]))) > 0  # the skipped row is not zero
    photo_rows = model.fusion_head({**head, "image_tokens": model.encode_images(images, has_image)})
    np.testing.assert_allclose(photo_rows["probabilities"], every_row["probabilities"], rtol=0, atol=1e-6)


def _onednn_on() -> bool:
    from tensorflow.python.util import _pywrap_util_port

    return _pywrap_util_port.IsMklEnabled() and os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"


def test_upstream_onednn_conv2d_still_breaks_empty_batches():
    """Fails with 'upstream fixed ...' once oneDNN's Conv2D gives an empty batch the right shape."""
    if not _onednn_on():
        pytest.skip("oneDNN kernels are off here (TF_ENABLE_ONEDNN_OPTS=0 or a non-oneDNN build)")
    kernel = tf.zeros([3, 3, 3, 8])
    shape = tuple(tf.nn.conv2d(tf.zeros([0, 8, 8, 3]), kernel, strides=2, padding="SAME").shape)
    if shape == (0, 4, 4, 8):
        pytest.fail(
            "upstream fixed oneDNN Conv2D on empty batches: drop 'onednn-conv2d-empty-batch' from "
            "esr_tf/upstream.py (GatherPhotoRows still saves work on rows without a photo)"
        )
    assert shape == (0, 8, 8, 3)
