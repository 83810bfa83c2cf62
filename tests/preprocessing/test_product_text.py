"""`model.product_text`: brand / colour (and the other product fields) in BERT's product segment,
the same tokens in training and in the exported signatures (#17)."""

from __future__ import annotations

import numpy as np
import pytest

from esr_tf.constants import DEFAULT_PRODUCT_TEXT


@pytest.fixture(scope="module")
def tokenizer():
    from esr_tf.models.backbones.text_backbone import load_text_backbone
    from esr_tf.models.backbones.tiny import TINY_TEXT

    return load_text_backbone(TINY_TEXT, weights="random")[1]


def _pre(tokenizer, product_text=None, sequence_length=24):
    from esr_tf.preprocessing.relevance_preprocessor import RelevancePreprocessor

    return RelevancePreprocessor(tokenizer, sequence_length=sequence_length, image_size=32,
                                 product_text=product_text)


def _ids(pre, text: str) -> list[int]:
    out = pre.tokenizer(np.array([text]))  # eager: KerasHub answers with Python lists
    return [int(i) for i in (out.to_list() if hasattr(out, "to_list") else out)[0]]


def _segment(packed, row: int) -> list[int]:
    """The product segment's ids of `row` (segment 1, the closing [SEP] left out)."""
    ids, seg = np.asarray(packed["token_ids"][row]), np.asarray(packed["segment_ids"][row])
    return ids[seg == 1].tolist()[:-1]


def _contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i : i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def test_fields_are_packed_in_order_each_within_its_budget(tokenizer):
    pre = _pre(tokenizer, {"title": 3, "brand": 4, "color": 2}, sequence_length=32)
    packed = pre.tokenize(np.array(["mug"]), {"title": np.array(["red ceramic coffee mug large"]),
                                              "brand": np.array(["acme"]), "color": np.array(["dark blue grey"])})
    want = _ids(pre, "red ceramic coffee mug large")[:3] + _ids(pre, "acme") + _ids(pre, "dark blue grey")[:2]
    assert _segment(packed, 0) == want


def test_empty_fields_add_no_token_so_title_only_products_pack_as_before(tokenizer):
    """A catalogue without brand / colour (e.g. the dev_photos one) gets the tokens a title-only
    model gave it: the default fields cost nothing there."""
    legacy = _pre(tokenizer)  # no product_text: the title alone (models saved before #17)
    assert legacy.raw_inputs == ("query", "title", "image")
    new = _pre(tokenizer, DEFAULT_PRODUCT_TEXT)
    titles = np.array(["Kids' top", "Outerwear", " ".join(["wool"] * 30)])
    queries = np.array(["t-shirt", "jacket", "sock"])
    empty = np.array([""] * 3)
    old = legacy.tokenize(queries, {"title": titles})
    now = new.tokenize(queries, {"title": titles, "brand": empty, "color": empty})
    for key in ("token_ids", "segment_ids", "padding_mask"):
        np.testing.assert_array_equal(np.asarray(old[key])[:2], np.asarray(now[key])[:2])
    # Only a title longer than its budget (16 tokens by default) is cut where it was not before.
    assert int(np.asarray(now["padding_mask"])[2].sum()) < int(np.asarray(old["padding_mask"])[2].sum())


def test_waterfall_trims_the_last_field_first(tokenizer):
    pre = _pre(tokenizer, {"title": 8, "brand": 8}, sequence_length=12)
    packed = pre.tokenize(np.array(["red mug"]), {"title": np.array(["one two three four five"]),
                                                  "brand": np.array(["alpha beta gamma delta"])})
    segment = _segment(packed, 0)
    budget = 12 - 3 - len(_ids(pre, "red mug"))
    assert len(segment) == budget and segment[:5] == _ids(pre, "one two three four five")


def test_missing_field_and_bad_config_name_the_field(tokenizer):
    from esr_tf.models.builder import ModelConfig
    from esr_tf.validation import ConfigError

    pre = _pre(tokenizer, DEFAULT_PRODUCT_TEXT)
    with pytest.raises(KeyError, match="missing.*brand.*color"):
        pre({"query": ["a"], "title": ["b"], "image": [b""]})
    with pytest.raises(ConfigError, match="unknown product field 'colour'"):
        ModelConfig(product_text={"title": 16, "colour": 4})
    with pytest.raises(ConfigError, match=r"model.product_text.brand: the token budget"):
        ModelConfig(product_text={"title": 16, "brand": 0})
    assert ModelConfig().product_text == {"title": 16, "brand": 4, "color": 4}


def test_packing_is_part_of_the_feature_fingerprint():
    """Stored backbone outputs are never reused across product_text settings."""
    from esr_tf.models.builder import TINY_MODEL, build_relevance_model
    from esr_tf.training.encoder_pass import backbone_fingerprint

    a = build_relevance_model(**TINY_MODEL, text_weights="random")
    b = build_relevance_model(**TINY_MODEL, text_weights="random", product_text={"title": 16})
    b.text_encoder.set_weights(a.text_encoder.get_weights())
    b.image_encoder.set_weights(a.image_encoder.get_weights())
    assert backbone_fingerprint(a) != backbone_fingerprint(b)
    b.preprocessor.product_text = dict(a.preprocessor.product_text)
    assert backbone_fingerprint(a) == backbone_fingerprint(b)


def _rows_with_brand_and_colour(columns, n: int = 4) -> np.ndarray:
    rows = [i for i in range(len(columns["query"])) if columns["brand"][i] and columns["color"][i]]
    assert len(rows) >= n
    return np.array(rows[:n])


def test_brand_and_colour_reach_training_and_the_export_as_the_same_tokens(tiny_trained, tiny_export):
    """Training's token ids (the frozen-backbone features of the run) hold each product's brand
    and colour wordpieces, and the exported `explain` signature, fed the raw fields, gives the
    very same tokens."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the export's ops)

    model = tiny_trained.model
    pre = model.preprocessor
    assert pre.product_fields == ("title", "brand", "color")
    columns = tiny_trained.catalogue.columns("test")
    rows = _rows_with_brand_and_colour(columns)
    features = tiny_trained.features["test"]
    train_ids = features.token_ids[rows]
    for row, ids in zip(rows, train_ids, strict=True):
        segment = _segment({"token_ids": ids[None], "segment_ids": features.segment_ids[row][None]}, 0)
        assert _contains(segment, _ids(pre, str(columns["brand"][row]))[:4])
        assert _contains(segment, _ids(pre, str(columns["color"][row]))[:4])

    loaded = tf.saved_model.load(str(tiny_export))
    signature = loaded.signatures["serving_default"]
    assert set(signature.structured_input_signature[1]) == {"query", "title", "brand", "color", "image"}
    raw = {k: tf.constant([str(columns[k][i]) for i in rows]) for k in ("query", *pre.product_fields)}
    served = loaded.signatures["explain"](**raw, image=tf.constant([b""] * len(rows)))["tokens"].numpy()
    vocab = pre.tokenizer.get_vocabulary()
    trained = np.array([[vocab[i] for i in ids] for ids in train_ids])
    np.testing.assert_array_equal(np.vectorize(bytes.decode)(served), trained)
    # The fields change the answer: the same request without brand and colour scores differently.
    blank = {**raw, "brand": tf.constant([""] * len(rows)), "color": tf.constant([""] * len(rows))}
    image = tf.constant([b""] * len(rows))
    with_fields = signature(**raw, image=image)["probabilities"].numpy()
    without = signature(**blank, image=image)["probabilities"].numpy()
    assert np.abs(with_fields - without).max() > 1e-6


def test_colour_hidden_copies_lose_the_colour_field_too():
    from esr_tf.training.augment import hide_colour_words

    cols = {"title": np.array(["Red wool sock"], dtype=object), "color": np.array(["red"], dtype=object),
            "brand": np.array(["Red Fox"], dtype=object), "description": np.array(["red"], dtype=object),
            "image": np.array(["a.jpg"], dtype=object), "label": np.array([0], np.int32)}
    out = hide_colour_words(cols, rate=1.0, seed=0)
    assert out["title"].tolist() == ["Red wool sock", "wool sock"]
    assert out["color"].tolist() == ["red", ""]
    assert out["brand"].tolist() == ["Red Fox", "Fox"] and out["description"].tolist() == ["red", ""]


def test_one_example_packs_as_it_does_in_a_batch(tokenizer):
    """A `tf.data` map over single examples (scalar strings) gives the batch's tokens."""
    import tensorflow as tf

    pre = _pre(tokenizer, {"title": 3, "brand": 2}, sequence_length=16)
    raw = {"query": ["red mug", "cap"], "title": ["red ceramic coffee mug", "blue cap"],
           "brand": ["acme corp ltd", ""], "image": [b"", b""]}
    one_by_one = [x["token_ids"].numpy() for x in tf.data.Dataset.from_tensor_slices(raw).map(pre)]
    batch = pre({k: np.array(v, dtype=object) for k, v in raw.items()})["token_ids"].numpy()
    np.testing.assert_array_equal(np.stack(one_by_one), batch)
