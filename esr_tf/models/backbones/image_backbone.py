"""Image backbone loaders (EfficientNet-Lite0, keras.applications) and their inference-mode wrapper.

The presets naming them live in `esr_tf.models.presets`, whose `build_image_backbone` returns a
`keras.Model` mapping `images [B, S, S, 3]` (float32, in the range `image_value_range(name)`)
to a feature map `[B, S/32, S/32, C]`; for EfficientNet-Lite0 at 160 px that is
`[B, 5, 5, 1280]` (KerasHub's backbone includes the 1x1 `top_conv` to 1280).

Batch norm always runs in inference mode: the backbone is wrapped in `InferenceModeBackbone`,
which calls it with `training=False` whatever the caller passes. Fine-tuning still trains the
convolutions and the batch-norm scale/offset, but never the moving statistics, which would be
estimated from small, replica-local batches (and diverge between MirroredStrategy replicas).
"""

from __future__ import annotations

from pathlib import Path

import keras

from esr_tf.models.backbones.errors import WeightsNotInstalledError  # noqa: F401  (re-exported)

__all__ = ["InferenceModeBackbone", "WeightsNotInstalledError", "keras_application", "lite0", "wrap"]


@keras.saving.register_keras_serializable(package="esr_tf")
class InferenceModeBackbone(keras.layers.Layer):
    """Calls a backbone with `training=False` always, so batch norm uses (and keeps) its
    moving statistics even while the backbone's weights are being fine-tuned.

    A `training=False` argument written into a functional graph is not enough: in Keras 3 the
    outer call's `training` flag overrides it.

    Args:
        backbone: the wrapped `keras.Model`.

    Example:
    ```python
    inputs = keras.Input((160, 160, 3))
    features = InferenceModeBackbone(backbone)(inputs)
    ```
    """

    def __init__(self, backbone: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        self.built = True

    def call(self, images, training=None):
        return self.backbone(images, training=False)

    def compute_output_shape(self, input_shape):
        return self.backbone.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config["backbone"] = keras.saving.serialize_keras_object(self.backbone)
        return config

    @classmethod
    def from_config(cls, config: dict) -> InferenceModeBackbone:
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def lite0(image_size: int, weights: str | Path | None, **kwargs) -> keras.Model:
    """The `"efficientnet_lite0"` preset's loader (see `efficientnet_lite.load_lite0_backbone`)."""
    # Imported here: KerasHub's timm converter is only needed for Lite0.
    from esr_tf.models.backbones.efficientnet_lite import load_lite0_backbone

    return load_lite0_backbone(image_size, weights=weights, **kwargs)


def keras_application(image_size: int, weights: str | Path | None, *, constructor: str, **kwargs) -> keras.Model:
    """A `keras.applications` model without its top (these rescale internally: pixels in [0, 255]).

    `weights`: `"pretrained"` (`"imagenet"`, downloaded by Keras), None, or a notop weights file.
    """
    return getattr(keras.applications, constructor)(
        include_top=False,
        weights="imagenet" if weights == "pretrained" else (weights and str(weights)),
        input_shape=(image_size, image_size, 3),
        **kwargs,
    )


def wrap(name: str, backbone: keras.Model, image_size: int) -> keras.Model:
    """`images [B, S, S, 3]` -> `backbone`'s features, batch norm always in inference mode.

    Layer names (`images`, `<name>_inference_mode`, model `<name>_image_backbone`) are part of
    every saved `.keras` file; keep them.
    """
    images = keras.Input((image_size, image_size, 3), name="images")
    features = InferenceModeBackbone(backbone, name=f"{name}_inference_mode")(images)
    return keras.Model(images, features, name=f"{name}_image_backbone")
