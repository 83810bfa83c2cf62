"""Every fusion layer through KerasHub's layer test (config round trip, build, symbolic and eager
calls, a training step, mixed precision) or, for integer / weightless helpers, its
serialization test plus the outputs they must give."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from keras_hub.src.tests.test_case import TestCase

from esr_tf.models import fusion_layers as fl
from esr_tf.models import photo_rows

RNG = np.random.default_rng(0)


def _floats(*shape):
    # Tensors, not numpy: Keras derives output specs only from tensor arguments.
    return tf.constant(RNG.standard_normal(shape).astype("float32"))


class FusionLayerTest(TestCase):
    def test_image_patch_tokens(self):
        self.run_layer_test(
            cls=fl.ImagePatchTokens,
            init_kwargs={"hidden_dim": 8, "colour_channels": 3},
            input_data=_floats(2, 3, 3, 7),
            expected_output_shape=(2, 9, 8),
            # projection, colour MLP (2 dense), norm, row and column embeddings
            expected_num_trainable_weights=10,
        )

    def test_cross_attention_block(self):
        # Non-trainable variables: the dropout seed generators (two attentions and one Dropout).
        for self_attention, weights, seeds in ((True, 26, 3), (False, 16, 2)):
            self.run_layer_test(
                cls=fl.CrossAttentionBlock,
                init_kwargs={"num_heads": 2, "hidden_dim": 8, "intermediate_dim": 16, "self_attention": self_attention},
                input_data={
                    "text": _floats(2, 5, 8),
                    "image": _floats(2, 4, 8),
                    "text_mask": tf.ones((2, 5), "int32"),
                    "image_mask": tf.constant([[1, 1, 1, 1], [1, 0, 0, 0]], "float32"),
                },
                expected_output_shape=(2, 5, 8),
                expected_num_trainable_weights=weights,
                expected_num_non_trainable_variables=seeds,
            )

    def test_masked_mean_pool(self):
        layer = fl.MaskedMeanPool()
        self.run_serialization_test(layer)
        x = np.arange(12, dtype="float32").reshape(2, 3, 2)
        out = layer(x, np.array([[1, 1, 0], [0, 0, 0]], "int32"))
        np.testing.assert_array_equal(out, [[1.0, 2.0], [0.0, 0.0]])  # an all-masked row is 0, not NaN

    def test_expected_gain(self):
        self.run_layer_test(
            cls=fl.ExpectedGain,
            init_kwargs={"gains": [1.0, 0.1, 0.01, 0.0]},
            input_data=tf.constant([[1.0, 0, 0, 0], [0, 0.5, 0.5, 0]]),
            expected_output_shape=(2,),
            expected_output_data=np.array([1.0, 0.055]),
            run_training_check=False,
        )

    def test_first_token_and_patch_colours(self):
        self.run_layer_test(
            cls=fl.FirstToken,
            init_kwargs={},
            input_data=_floats(2, 4, 3),
            expected_output_shape=(2, 3),
            run_training_check=False,
        )
        self.run_layer_test(
            cls=fl.PatchColours,
            init_kwargs={"grid": (2, 2)},
            input_data=tf.ones((2, 8, 8, 3)),
            expected_output_shape=(2, 2, 2, 3),
            expected_output_data=np.ones((2, 2, 2, 3)),
            run_training_check=False,
        )

    def test_no_image_token(self):
        layer = fl.NoImageToken()
        self.run_serialization_test(layer)
        tokens, mask = layer(_floats(2, 4, 8), np.array([1.0, 0.0], "float32"))
        assert tokens.shape == (2, 5, 8) and len(layer.trainable_weights) == 1
        np.testing.assert_array_equal(np.asarray(mask), [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])

    def test_global_image_token(self):
        layer = fl.GlobalImageToken()
        tokens, key_mask = fl.NoImageToken()(_floats(2, 4, 8), np.array([1.0, 0.0], "float32"))
        out, mask = layer(tokens, key_mask)
        assert out.shape == (2, 6, 8) and len(layer.trainable_weights) == 4
        np.testing.assert_array_equal(np.asarray(out)[:, :5], np.asarray(tokens))  # appended, nothing moved
        np.testing.assert_array_equal(np.asarray(mask), [[1] * 6, [1, 0, 0, 0, 0, 0]])  # no photo: not attendable

    def test_modality_dropout(self):
        layer = fl.ModalityDropout(rate=0.5, seed=1)
        self.run_serialization_test(layer)
        has_image = np.ones((1000,), "float32")
        np.testing.assert_array_equal(layer(has_image, training=False), has_image)
        hidden = 1.0 - float(np.mean(np.asarray(layer(has_image, training=True))))
        assert 0.4 < hidden < 0.6

    def test_integer_helpers(self):
        token_ids = np.array([[101, 7, 8, 102, 7, 9, 102, 0]], "int32")
        segment_ids = np.array([[0, 0, 0, 0, 1, 1, 1, 0]], "int32")
        mask = np.array([[1, 1, 1, 1, 1, 1, 1, 0]], "int32")
        match = fl.CrossSegmentMatch(special_token_ids=[0, 101, 102])
        self.run_serialization_test(match)
        np.testing.assert_array_equal(match(token_ids, segment_ids, mask), [[0, 1, 0, 0, 1, 0, 0, 0]])
        query_only = fl.QueryOnlyMask()
        self.run_serialization_test(query_only)
        np.testing.assert_array_equal(query_only(mask, segment_ids), [[1, 1, 1, 1, 0, 0, 0, 0]])
        empty = fl.ZeroFeatureMap((1, 1))
        self.run_serialization_test(empty)
        assert empty(_floats(3, 4, 4, 3)).shape == (3, 1, 1)

    def test_photo_rows(self):
        for layer in (photo_rows.GatherPhotoRows(), photo_rows.ScatterPhotoRows()):
            self.run_serialization_test(layer)
        images = _floats(3, 2, 2, 1)
        has_image = np.array([0.0, 1.0, 1.0], "float32")
        photos = photo_rows.GatherPhotoRows()(images, has_image)
        np.testing.assert_array_equal(photos, images[1:])
        scattered = photo_rows.ScatterPhotoRows()(photos, has_image)
        np.testing.assert_array_equal(scattered, [np.zeros((2, 2, 1)), *images[1:]])
