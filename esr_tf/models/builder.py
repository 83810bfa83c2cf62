"""Builds a `RelevanceModel` with its preprocessor from a `ModelConfig` (configs as data).

Example:
>>> model = build_relevance_model(text="tiny", image="tiny", image_size=32, sequence_length=16)
>>> model.fusion, model.preprocessor.sequence_length
('cross_attention', 16)
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import keras

from esr_tf.labels import LabelSet
from esr_tf.models.backbones.tiny import TINY_TEXT  # noqa: F401  (re-exported for tests / notebooks)
from esr_tf.models.config import MODEL_ARGS, TINY_MODEL, ModelConfig  # noqa: F401  (TINY_MODEL: for tests)
from esr_tf.models.relevance_model import RelevanceModel, backbone_for
from esr_tf.preprocessing.relevance_preprocessor import RelevancePreprocessor


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
        label_set=LabelSet.from_config(config.label_set),
        **{name: getattr(config, name) for name in MODEL_ARGS},
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
