"""`.keras` files saved before `RelevanceModel` became a KerasHub Task over `RelevanceBackbone`.

A `.keras` archive keys each weight by the position of its layer in the saved model's layer
list (`layers/functional_2/...`), not by name. Earlier models held their four sub-models
(`text_encoder`, `image_encoder`, `image_projector`, `fusion_head`) directly; the Task holds
`relevance_backbone` (the two encoders), `image_projector` and `fusion_head`. To read an
earlier file, `load_legacy` builds today's model from its config and loads the weights through
a view that wires the same sub-models (the same objects) in the earlier layout.

Example:
>>> model = load_legacy("old_model.keras")  # doctest: +SKIP
>>> model.save("model.keras")  # the current layout from now on  # doctest: +SKIP
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import keras

# Imported for their `register_keras_serializable` side effects (classes an archive names).
import esr_tf.models.backbones.efficientnet_lite  # noqa: F401
import esr_tf.models.backbones.exact_gelu_bert  # noqa: F401
import esr_tf.models.backbones.image_backbone  # noqa: F401
from esr_tf.models.relevance_backbone import TEXT_INPUTS
from esr_tf.models.relevance_model import RelevanceModel, model_inputs

_ASSETS = "assets/preprocessor/tokenizer/"


def is_legacy(path: str | Path) -> bool:
    """Whether `path` is a `.keras` archive of a `RelevanceModel` in the earlier layout."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    inner = config.get("config") if isinstance(config, dict) else None
    return config.get("class_name") == "RelevanceModel" and isinstance(inner, dict) and "text_backbone" in inner


def legacy_view(model: RelevanceModel) -> keras.Model:
    """`model`'s sub-models wired as in the earlier layout (shared weights, nothing copied)."""
    backbone = model.backbone
    inputs = model_inputs(backbone)
    text = model.text_encoder({k: inputs[k] for k in TEXT_INPUTS})
    if model.reads_photos:
        photos = model.image_encoder(backbone.gather_photos(inputs["images"], inputs["has_image"]))
        tokens = model.image_projector(backbone.scatter_photos(photos, inputs["has_image"]))
    else:
        tokens = model.no_image_tokens(inputs["images"])
    return keras.Model(inputs, model.score(text, inputs, tokens, inputs["has_image"]), name="legacy_view")


def load_legacy(path: str | Path) -> RelevanceModel:
    """Loads an earlier-layout `.keras` file as today's `RelevanceModel` (same outputs)."""
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
        config = json.loads(archive.read("config.json"))
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        weights = Path(archive.extract("model.weights.h5", tmp))
        legacy_view(model).load_weights(weights)
        assets = [name for name in archive.namelist() if name.startswith(_ASSETS)]
        for name in assets:
            archive.extract(name, tmp)
        tokenizer = getattr(model.preprocessor, "tokenizer", None)
        if assets and tokenizer is not None:
            tokenizer.load_assets(str(Path(tmp) / _ASSETS))
    return model
