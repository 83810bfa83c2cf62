"""One home for each default (#30): the config dataclasses, which the model's constructor follows."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from esr_tf.models.config import MODEL_ARGS, MODEL_DEFAULTS, ModelConfig
from esr_tf.models.relevance_model import RelevanceModel


def test_relevance_model_defaults_are_model_config_defaults():
    parameters = inspect.signature(RelevanceModel.__init__).parameters
    shared = set(parameters) & {f.name for f in dataclasses.fields(ModelConfig)}
    assert shared == set(MODEL_ARGS) | {"label_set"}, "MODEL_ARGS lists every argument both have"
    for name in MODEL_ARGS:
        assert parameters[name].default == getattr(MODEL_DEFAULTS, name), name
        assert getattr(ModelConfig(), name) == getattr(MODEL_DEFAULTS, name), name


def test_derived_tables_are_derived():
    from esr_tf.constants import IMAGE_SIZE
    from esr_tf.training.config import FEATURE_STORE_DTYPES
    from esr_tf.training.store_writer import FORMATS

    assert FEATURE_STORE_DTYPES == tuple(FORMATS)
    assert ModelConfig().image_size == IMAGE_SIZE


@pytest.mark.parametrize("option, layer", [("concat_path", "summed_logits"),
                                           ("interaction", "query_photo_interaction")])
def test_head_layout_options_build_save_and_load(tmp_path, option, layer):
    """`model.concat_path` (opt-in) / `model.interaction` (default, #29): the layer is there, and only then."""
    import numpy as np

    from esr_tf.models.builder import TINY_MODEL, build_relevance_model, load_model

    model = build_relevance_model(**TINY_MODEL, **{option: True})
    assert layer in {layer.name for layer in model.fusion_head.layers}
    without = build_relevance_model(**TINY_MODEL, **{option: False})
    assert layer not in {layer.name for layer in without.fusion_head.layers}
    raw = {"query": ["red shoe"], "title": ["Red shoe"], "brand": [""], "color": [""], "image": [b""]}
    model.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    assert again.get_config()[option] is True
    np.testing.assert_allclose(again.predict(raw, verbose=0)["probabilities"],
                               model.predict(raw, verbose=0)["probabilities"], atol=1e-6)
