"""Random-init test backbones, registered as the `"tiny"` presets of `esr_tf.models.presets`.

They build and train in about a second, so tests and smoke runs use the real model code
paths without any weights wheel.

Example:
>>> tiny_cnn(32).output.shape
(None, 4, 4, 32)
"""

from __future__ import annotations

from pathlib import Path

import keras

# `BertBackbone` arguments of a 1-layer BERT; the vocabulary comes from the text loader.
TINY_TEXT = {
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 32,
    "intermediate_dim": 64,
    "max_sequence_length": 128,
}


def tiny_cnn(image_size: int, weights: str | Path | None = None) -> keras.Model:
    """A 3-layer CNN: `[B, S, S, 3]` in [-1, 1] -> `[B, S/8, S/8, 32]`, always random init.

    `weights` may only be `None` or `"pretrained"` (there are no pretrained weights; a saved
    `.weights.h5` is loaded by `build_image_backbone` into the wrapped model).
    """
    if weights not in (None, "pretrained"):
        raise ValueError(f"the tiny image backbone has no weights file format of its own, got {weights!r}")
    images = keras.Input((image_size, image_size, 3), name="tiny_cnn_images")  # unique layer names
    x = images
    for i, filters in enumerate((8, 16, 32)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name=f"conv_{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = keras.layers.Activation("relu6", name=f"act_{i}")(x)
    return keras.Model(images, x, name="tiny_cnn")
