"""Batch rows with a photo: the image backbone runs on those only, the rest get zeros.

`RelevanceBackbone` gathers the rows whose `has_image` is 1 before its image backbone and
scatters the features back after it.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _photo_rows(has_image):
    return tf.where(has_image > 0)[:, 0]


@keras.saving.register_keras_serializable(package="esr_tf")
class GatherPhotoRows(keras.layers.Layer):
    """The images of the rows that have a photo, so that the image backbone skips the others.

    Rows without a photo are masked downstream (`NoImageToken`), so their feature map is never
    read: skipping them saves the backbone's memory and time (a text-only request of 2,000 rows
    used 12 GB when every row went through it). When no row has a photo, the empty batch
    included, one zero image is returned instead: oneDNN's Conv2D gives an empty batch a wrong
    shape (`esr_tf.upstream`, "onednn-conv2d-empty-batch"). `ScatterPhotoRows` puts the
    features back in place.

    Example:
    >>> import numpy as np
    >>> images = np.arange(3, dtype="float32").reshape(3, 1, 1, 1)
    >>> GatherPhotoRows()(images, np.array([1.0, 0.0, 1.0])).numpy().ravel().tolist()
    [0.0, 2.0]
    >>> GatherPhotoRows()(images[:0], np.zeros(0)).shape
    TensorShape([1, 1, 1, 1])
    """

    def call(self, images, has_image):
        photos = tf.gather(images, _photo_rows(has_image))
        dummy = tf.zeros([1, *images.shape[1:]], images.dtype)
        return tf.cond(tf.shape(photos)[0] > 0, lambda: photos, lambda: dummy)

    def compute_output_shape(self, images_shape, has_image_shape=None):
        return (None, *images_shape[1:])


@keras.saving.register_keras_serializable(package="esr_tf")
class ScatterPhotoRows(keras.layers.Layer):
    """Puts `GatherPhotoRows`' features back in batch order; rows without a photo get zeros.

    Example:
    >>> import numpy as np
    >>> features = np.array([[1.0], [2.0]], "float32")
    >>> ScatterPhotoRows()(features, np.array([1.0, 0.0, 1.0])).numpy().ravel().tolist()
    [1.0, 0.0, 2.0]
    """

    def call(self, features, has_image):
        rows = _photo_rows(has_image)
        shape = tf.concat([tf.shape(has_image, out_type=tf.int64)[:1], tf.shape(features, out_type=tf.int64)[1:]], 0)
        return tf.scatter_nd(rows[:, None], features[: tf.size(rows)], shape)

    def compute_output_shape(self, features_shape, has_image_shape):
        return (has_image_shape[0], *features_shape[1:])
