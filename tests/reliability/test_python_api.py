"""The Python API on bad raw inputs (#33 item 8): one clear error naming the field, not a
`KeyError` wrapped by Keras with "in user code" frames, nor "Dimensions 3 and 1 are not
compatible" naming no input."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_model():
    from esr_tf.models.builder import TINY_MODEL, build_relevance_model

    return build_relevance_model(**TINY_MODEL)


def _raw(n: int = 3, images: int | None = None) -> dict:
    return {"query": ["red shoe"] * n, "title": ["Red shoe"] * n, "brand": [""] * n, "color": [""] * n,
            "image": [b""] * (n if images is None else images)}


def test_predict_names_a_missing_product_field(tiny_model):
    raw = _raw()
    del raw["brand"]
    with pytest.raises(KeyError) as error:
        tiny_model.predict(raw, verbose=0)
    message = str(error.value)
    assert "missing ['brand']" in message and "in user code" not in message and "\x1b[" not in message


def test_predict_names_inputs_of_different_lengths(tiny_model):
    with pytest.raises(ValueError, match=r"one value per row; got rows .*'query': 3.*'image': 1"):
        tiny_model.predict(_raw(3, images=1), verbose=0)


def test_predict_refuses_one_string_for_a_column(tiny_model):
    raw = _raw(1)
    raw["query"] = "red shoe"
    with pytest.raises(TypeError, match="'query' must be a list"):
        tiny_model.predict(raw, verbose=0)


def test_good_raw_inputs_still_predict(tiny_model):
    out = tiny_model.predict(_raw(2), verbose=0)
    assert out["probabilities"].shape[0] == 2
