"""The two-tower retrieval model (#16): towers, sentence embeddings, what `train` fits and saves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf


def test_towers_share_weights_and_give_unit_vectors():
    from esr_tf.search.towers import build_two_tower, product_tower, query_tower

    towers = build_two_tower(text_dim=6, image_dim=3, embedding_dim=4)
    rng = np.random.default_rng(0)
    x = {"query_embedding": rng.normal(size=(2, 6)), "product_embedding": rng.normal(size=(2, 6)),
         "image_vector": rng.normal(size=(2, 3)), "has_image": np.array([1.0, 0.0])}
    out = towers(x)
    np.testing.assert_allclose(np.linalg.norm(out["query"], axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(query_tower(towers)(x["query_embedding"]), out["query"], atol=1e-6)
    product = product_tower(towers)({k: x[k] for k in ("product_embedding", "image_vector", "has_image")})
    np.testing.assert_allclose(product, out["product"], atol=1e-6)
    no_photo = dict(x, image_vector=rng.normal(size=(2, 3)))
    np.testing.assert_allclose(towers(no_photo)["product"][1], out["product"][1], atol=1e-6,
                               err_msg="without a photo, the image vector must not count")


def test_sentence_embedding_ignores_padding(tiny_trained):
    from esr_tf.search.towers import sentence_embedding

    model = tiny_trained.model
    one = sentence_embedding(model, tf.constant(["red mug"])).numpy()
    with_long = sentence_embedding(model, tf.constant(["red mug", "a much longer blue cotton hoodie for kids"])).numpy()
    np.testing.assert_allclose(one[0], with_long[0], atol=1e-5)


def test_train_fits_and_saves_the_retrieval_model(tiny_trained, tiny_towers):
    out = tiny_trained.out_dir
    report = json.loads((out / "retrieval.json").read_text())
    assert set(report["recall"]) >= {"train", "test"}
    for split in report["recall"].values():
        assert 0 <= split["recall@10"] <= split["recall@100"] <= 1
    assert tiny_trained.retrieval_metrics == report["recall"]
    assert tiny_towers.get_layer("query").output.shape[-1] == report["config"]["embedding_dim"]


def test_recall_at_k_counts_exact_products_over_the_catalogue():
    from esr_tf.search.fit import recall_at_k

    products = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0.5, 0, 0], [0, 0, 0, 1]], np.float32)
    out = recall_at_k(products, queries, [{0, 2}, {3}], ks=(1, 2))
    assert out == {"recall@1": 0.75, "recall@2": 0.75, "queries": 2}


def test_retrieval_config_is_checked():
    from esr_tf.training.config import ConfigError, parse_config

    assert parse_config({"retrieval": {"epochs": 0}}).retrieval.epochs == 0
    with pytest.raises(ConfigError, match="retrieval.temperature"):
        parse_config({"retrieval": {"temperature": 0}})
    with pytest.raises(ConfigError, match="retrieval.bogus"):
        parse_config({}, ["retrieval.bogus=1"])
