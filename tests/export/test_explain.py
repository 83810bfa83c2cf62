"""`explain`: each text token's attention over the patch grid, in Python and in the export."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf


@pytest.fixture(scope="module")
def loaded(tiny_export):
    import tensorflow_text  # noqa: F401

    return tf.saved_model.load(str(tiny_export))


@pytest.fixture(scope="module")
def samples():
    from esr_tf.export.saved_model import sample_inputs

    return sample_inputs()


def test_explain_signature_equals_the_python_api(loaded, tiny_trained, samples):
    model = tiny_trained.model
    sig = loaded.signatures["explain"]
    assert {k: v.dtype for k, v in sig.structured_input_signature[1].items()} == {
        "query": tf.string, "title": tf.string, "brand": tf.string, "color": tf.string, "image": tf.string,
    }
    served = sig(**{k: tf.constant(samples[k]) for k in model.preprocessor.raw_inputs})
    python = model.explain(samples)
    n, length = len(samples["query"]), model.preprocessor.sequence_length
    grid = tuple(model.image_projector.input.shape[1:3])
    assert served["attention"].dtype == tf.float32 and served["attention"].shape == (n, length, *grid)
    np.testing.assert_allclose(served["attention"].numpy(), python["attention"], atol=1e-5)
    tokens = np.vectorize(bytes.decode, otypes=[str])(served["tokens"].numpy())
    assert tokens.shape == (n, length) and (tokens == python["tokens"]).all()


def test_tokens_align_with_token_ids(tiny_trained, samples):
    model = tiny_trained.model
    out = model.explain(samples)
    tokenizer = model.preprocessor.tokenizer
    want = np.vectorize(tokenizer.id_to_token, otypes=[str])(out["token_ids"])
    assert (out["tokens"] == want).all()
    assert out["tokens"][0, :3].tolist() == ["[CLS]", "red", "sneakers"]


def test_attention_is_a_distribution_over_no_image_and_patches(tiny_trained, samples):
    from esr_tf.models import attention_maps as am

    model = tiny_trained.model
    x = model.preprocessor({k: list(v) for k, v in samples.items()})
    text = model.encode_text(x, training=False)
    image_tokens = model.encode_images(x["images"], x["has_image"], training=False)
    head = {"sequence_output": text["sequence_output"], "text_mask": text["text_mask"],
            "token_ids": x["token_ids"], "segment_ids": x["segment_ids"],
            "image_tokens": image_tokens, "has_image": x["has_image"]}
    block_inputs = am.block_inputs_model(model.fusion_head)(head, training=False)
    scores = np.asarray(am.cross_attention_scores(am.last_fusion_block(model.fusion_head), *block_inputs))
    valid = np.asarray(x["padding_mask"]).astype(bool)
    np.testing.assert_allclose(scores.sum(axis=-1).transpose(0, 2, 1)[valid], 1.0, atol=1e-5)
    maps = model.explain(samples)["attention"]
    assert maps.min() >= 0.0 and maps.sum(axis=(2, 3)).max() <= 1.0 + 1e-5
    no_photo = np.asarray(x["has_image"]) == 0
    assert no_photo.any() and (maps[no_photo] == 0).all()  # only the "no image" key is open
    assert (maps[~valid] == 0).all()  # padding


def test_modes_without_cross_attention_have_no_explain():
    from esr_tf.export.saved_model import build_signatures
    from esr_tf.models.builder import TINY_MODEL, build_relevance_model

    model = build_relevance_model(**{**TINY_MODEL, "fusion": "concat"})
    assert not model.has_attention
    with pytest.raises(ValueError, match="cross-attention"):
        model.explain({"query": ["a"], "title": ["b"], "image": [b""]})
    assert "explain" not in build_signatures(model)


def test_verify_compares_explain(tiny_export):
    ref = np.load(tiny_export / "assets.extra" / "esr_tf_reference.npz", allow_pickle=True)
    assert {"explain/attention", "explain/tokens"} <= set(ref.files)


def test_evaluate_writes_attention_png(tiny_trained, tiny_catalogue, tmp_path):
    from PIL import Image

    from esr_tf.training.evaluate import evaluate_model

    evaluate_model(tiny_trained.model, tiny_catalogue, split="test", out_dir=tmp_path, resamples=0)
    with Image.open(tmp_path / "attention.png") as image:
        assert image.size[0] > 300


def test_rest_body_and_response_of_explain(loaded, samples):
    import json

    from esr_tf.serving.requests import parse_explain_response, rest_predict_body

    fields = {k: list(samples[k]) for k in ("brand", "color")}
    body = rest_predict_body(list(samples["query"]), list(samples["title"]), list(samples["image"]),
                             fields=fields, signature_name="explain")
    assert body["signature_name"] == "explain" and len(body["instances"]) == len(samples["query"])
    assert set(body["instances"][0]) == {"query", "title", "brand", "color", "image"}
    out = loaded.signatures["explain"](**{k: tf.constant(samples[k]) for k in body["instances"][0]})
    tokens = [[t.decode() for t in row] for row in out["tokens"].numpy()]
    rows = [{"tokens": t, "attention": a} for t, a in zip(tokens, out["attention"].numpy().tolist(), strict=True)]
    parsed = parse_explain_response(json.dumps({"predictions": rows}))
    columnar = parse_explain_response({"outputs": {"tokens": tokens, "attention": out["attention"].numpy().tolist()}})
    assert parsed == columnar and parsed[0]["tokens"][:2] == ["[CLS]", "red"]
    np.testing.assert_allclose(np.array(parsed[1]["attention"]), out["attention"].numpy()[1], atol=1e-6)


def test_explain_leaves_the_model_and_its_file_alone(tiny_trained, samples, tmp_path):
    from esr_tf.models.builder import load_model

    model = tiny_trained.model
    before = [w.path for w in model.weights]
    explained = model.explain(samples)
    assert [w.path for w in model.weights] == before
    model.save(tmp_path / "model.keras")
    again = load_model(tmp_path / "model.keras").explain(samples)
    np.testing.assert_allclose(again["attention"], explained["attention"], atol=1e-6)


def test_image_only_is_explained_too():
    from esr_tf.models.builder import TINY_MODEL, build_relevance_model

    model = build_relevance_model(**{**TINY_MODEL, "fusion": "image_only"})
    assert model.has_attention
    out = model.explain({"query": ["red mug"], "title": ["Red mug"], "brand": [""], "color": ["red"], "image": [b""]})
    assert out["attention"].shape[:2] == out["tokens"].shape == (1, TINY_MODEL["sequence_length"])
    assert (out["attention"] == 0).all()  # no photo: all attention on the "no image" key
    with pytest.raises(ValueError, match="no rows"):
        model.explain({"query": [], "title": [], "brand": [], "color": [], "image": []})
