"""The search index export (#16): retrieval + re-ranking in one SavedModel, verify, --add / --remove,
and the errors bad requests get."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf


@pytest.fixture(scope="module")
def loaded(tiny_index):
    import tensorflow_text  # noqa: F401

    return tf.saved_model.load(str(tiny_index))


def _search(loaded, queries, k=None, rerank=None):
    if k is None:
        return loaded.signatures["search"](query=tf.constant(queries))
    return loaded.signatures["search_top"](query=tf.constant(queries), k=tf.constant(k), rerank=tf.constant(rerank))


def test_signatures_and_outputs(loaded, tiny_trained):
    assert {"search", "search_top", "retrieve_top", "similar_products", "complements", "serving_default",
            "embed_images", "score_with_image_features"} <= set(loaded.signatures)
    out = _search(loaded, ["red sneakers", "blue mug"])
    ids = out["product_ids"].numpy()
    assert ids.shape == (2, 10)
    catalogue = {p.encode() for p in tiny_trained.catalogue.products}
    for row in ids.tolist():
        assert len(set(row)) == 10 and set(row) <= catalogue
    assert out["probabilities"].shape == (2, 10, 4)
    scores = out["scores"].numpy()
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "re-ranked by score, best first"
    labels = set(out["labels"].numpy().ravel().tolist())
    assert labels <= {n.encode() for n in tiny_trained.model.label_set.names}


def test_search_top_reranks_retrievals_top_n(loaded):
    out = _search(loaded, ["green cap"], k=3, rerank=7)
    assert out["product_ids"].shape == (1, 3)
    wide = _search(loaded, ["green cap"], k=7, rerank=7)
    assert set(out["product_ids"].numpy()[0]) <= set(wide["product_ids"].numpy()[0])
    # rerank below k re-ranks k products; beyond the catalogue, all of them
    assert _search(loaded, ["green cap"], k=5, rerank=1)["product_ids"].shape == (1, 5)
    size = int(loaded.index.product_ids.shape[0])
    assert _search(loaded, ["green cap"], k=size, rerank=10 * size)["product_ids"].shape == (1, size)


def test_retrieve_top_is_retrievals_own_order_without_the_model(loaded):
    """#34: retrieval alone as a signature (re-rank 0): the products `search_top` would re-rank, in
    retrieval's order, with no model run (empty labels, zero probabilities)."""
    size = int(loaded.index.product_ids.shape[0])
    out = loaded.signatures["retrieve_top"](query=tf.constant(["green cap", "blue mug"]), k=tf.constant(5))
    wide = _search(loaded, ["green cap", "blue mug"], k=size, rerank=size)
    for row in range(2):
        order = np.argsort(-wide["retrieval_scores"].numpy()[row], kind="stable")[:5]
        assert out["product_ids"].numpy()[row].tolist() == wide["product_ids"].numpy()[row][order].tolist()
        assert np.allclose(out["retrieval_scores"].numpy()[row], wide["retrieval_scores"].numpy()[row][order],
                           atol=1e-5)
    assert np.array_equal(out["scores"].numpy(), out["retrieval_scores"].numpy())
    assert set(out["labels"].numpy().ravel().tolist()) == {b""} and not out["probabilities"].numpy().any()
    assert out["probabilities"].shape == (2, 5, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be in"):
        loaded.signatures["retrieve_top"](query=tf.constant(["cap"]), k=tf.constant(size + 1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty query"):
        loaded.signatures["retrieve_top"](query=tf.constant(["\u00a0"]), k=tf.constant(3))


def test_rank_weights_order_the_reranked_list(loaded):
    """#31: `search_top` orders by `rank_weights` over (cosine, log-probabilities, score): the
    blend at 0 is retrieval's own order; by default (an index built without a valid choice), the
    model's score alone."""
    from esr_tf.search.ranking import blend_weights

    size = int(loaded.index.product_ids.shape[0])
    model_alone = blend_weights(1.0, 4)
    assert np.array_equal(loaded.index.rank_weights.numpy(), model_alone)  # tiny_index: built without a choice
    try:
        loaded.index.rank_weights.assign(blend_weights(0.0, 4))
        out = _search(loaded, ["red sneakers"], k=size, rerank=size)
        cosine = out["retrieval_scores"].numpy()[0]
        assert (np.diff(cosine) <= 0).all() and np.allclose(out["scores"].numpy()[0], cosine)
    finally:
        loaded.index.rank_weights.assign(model_alone)
    scores = _search(loaded, ["red sneakers"], k=size, rerank=size)["scores"].numpy()[0]
    assert (np.diff(scores) <= 0).all()


def test_the_served_key_is_the_features_times_the_weights(loaded):
    """The graph's ranking key is `rank_features(...) @ rank_weights`, the formula the choice on
    valid scores candidates by (`search.blend`): any weights, the same order and values."""
    from esr_tf.search.ranking import blend_weights, rank_features

    size = int(loaded.index.product_ids.shape[0])
    plain = _search(loaded, ["red sneakers"], k=size, rerank=size)  # the model's score alone
    features = rank_features(plain["retrieval_scores"][0], plain["probabilities"][0], plain["scores"][0]).numpy()
    weights = np.array([0.7, 0.3, -0.2, 0.1, -0.4, 0.5], np.float32)
    try:
        loaded.index.rank_weights.assign(weights)
        out = _search(loaded, ["red sneakers"], k=size, rerank=size)
    finally:
        loaded.index.rank_weights.assign(blend_weights(1.0, 4))
    expected = dict(zip(plain["product_ids"].numpy()[0].tolist(), features @ weights, strict=True))
    got = dict(zip(out["product_ids"].numpy()[0].tolist(), out["scores"].numpy()[0], strict=True))
    assert got.keys() == expected.keys() and all(abs(got[p] - expected[p]) < 1e-5 for p in got)
    assert (np.diff(out["scores"].numpy()[0]) <= 0).all()


def test_choosing_on_the_tiny_shop_records_weights_search_can_use(loaded, tiny_trained):
    """`choose_ranking` end to end on a real index: the list head is fitted on the train queries'
    lists and the valid queries pick among it, the blends (and, with enough valid queries, the
    head cross-fitted on them); its weights fit the graph."""
    from types import SimpleNamespace

    from esr_tf.search.blend import FOLDS, LIST_HEAD, WEIGHTS, choose_ranking

    search = SimpleNamespace(size=int(loaded.index.product_ids.shape[0]),
                             catalogue=SimpleNamespace(rank_weights=loaded.index.rank_weights),
                             search_top=lambda q, k, r: loaded.signatures["search_top"](query=q, k=k, rerank=r))
    choice = choose_ranking(search, tiny_trained.catalogue, rerank=8, k=8)
    assert choice["list_head_train_queries"] > 0 and LIST_HEAD in choice["by_candidate"]
    with_valid_head = choice["valid_queries"] >= 2 * FOLDS  # the cross-fitted head on valid's own lists
    assert len(choice["by_candidate"]) == len(WEIGHTS) + 1 + with_valid_head and len(choice["rank_weights"]) == 6
    best = choice["by_candidate"][choice["ranking"]]["ndcg@8"]
    assert best >= choice["by_candidate"]["blend 0.0"]["ndcg@8"], "never below retrieval on valid"


def test_scores_match_the_relevance_model(loaded, tiny_trained):
    """The re-ranking score is the model's own score of (query, product fields, cached photo tokens)."""
    out = _search(loaded, ["red sneakers"], k=3, rerank=3)
    products = tiny_trained.catalogue.products
    ids = [p.decode() for p in out["product_ids"].numpy()[0]]
    images = [open(products[p].image, "rb").read() if products[p].image else b"" for p in ids]
    fields = tiny_trained.model.preprocessor.product_fields
    text = {f: tf.constant([getattr(products[p], f) for p in ids]) for f in fields}
    direct = loaded.signatures["serving_default"](query=tf.constant(["red sneakers"] * 3), **text,
                                                  image=tf.constant(images))
    # bfloat16 image tokens in the index: close, not bit-equal
    np.testing.assert_allclose(out["scores"].numpy()[0], direct["score"].numpy(), atol=0.02)


def test_similar_products_and_complements(loaded):
    pid = loaded.index.product_ids.numpy()[0]
    similar = loaded.signatures["similar_products"](product_id=tf.constant([pid]))
    ids = similar["product_ids"].numpy()[0].tolist()
    assert pid not in ids and len(set(ids)) == len(ids) == 10
    assert np.all(np.diff(similar["scores"].numpy()[0]) <= 1e-6)
    comp = loaded.signatures["complements"](product_id=tf.constant([pid]))
    assert pid not in comp["product_ids"].numpy()[0].tolist()
    p_c = comp["probabilities"].numpy()[0][:, 2]
    np.testing.assert_allclose(comp["scores"].numpy()[0], p_c, atol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: _search(m, ["  "]), "empty query"),
        # #33: empty queries in disguise answered with the empty query's ranking
        (lambda m: _search(m, ["red", "\u00a0"]), r"empty query at rows.*\b1\b"),
        (lambda m: _search(m, ["\u3000"]), "empty query"),
        (lambda m: _search(m, ["\u200b"]), "empty query"),
        (lambda m: m.signatures["search"](query=tf.constant([b"\xff\xfe"])), "empty query"),
        (lambda m: _search(m, ["red"], k=0, rerank=5), "k must be in 1.."),
        (lambda m: _search(m, ["red"], k=100_000, rerank=5), "k must be in 1.."),
        (lambda m: _search(m, ["red"] * 65), "more than 64"),
        (lambda m: m.signatures["similar_products"](product_id=tf.constant(["no-such-id"])), "no-such-id"),
        (lambda m: m.signatures["complements"](product_id=tf.constant(["x", "no-such-id"])), "unknown product_id"),
    ],
)
def test_bad_requests_name_the_input(loaded, call, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        call(loaded)


@pytest.mark.slow
def test_verify_passes_in_a_fresh_process_and_cpp(tiny_index):
    """#28: the index runs in TF Serving's C++ loader, every signature equal to Python's."""
    from esr_tf.export.cpp_client import cpp_toolchain_available
    from esr_tf.export.verify import format_report, verify_export

    assert cpp_toolchain_available() is None, "the suite checks one index export in C++: install g++"
    report = verify_export(tiny_index)  # the C++ check is on by default
    assert report["ok"], format_report(report)
    signatures = {c["signature"] for c in report["load"]["checks"]}
    assert {"search", "search_top", "retrieve_top", "similar_products", "complements"} <= signatures
    cpp = {c["signature"] for c in report["cpp"]["checks"]}
    assert cpp == set(report["load"]["signatures"]), "C++ runs every signature of the export"
    assert report["cpp"]["max_abs_diff"] <= 1e-4
    assert {c["output"] for c in report["cpp"]["checks"] if c["signature"] == "search_top"} >= {
        "product_ids", "scores", "probabilities", "labels"}
    assert any(c["output"] == "product_ids distinct" for c in report["load"]["checks"])
    assert not any(report["load"]["modules"].values()), "only tensorflow + tensorflow_text in that process"
    info = json.loads((tiny_index / "assets.extra" / "esr_tf_index.json").read_text())
    assert info["products"] == int(tf.saved_model.load(str(tiny_index)).index.product_ids.shape[0])


def test_warmup_records_cover_search(tiny_index):
    from tensorflow_serving.apis import prediction_log_pb2

    path = tiny_index / "assets.extra" / "tf_serving_warmup_requests"
    records = [prediction_log_pb2.PredictionLog.FromString(r)
               for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]
    names = {r.predict_log.request.model_spec.signature_name for r in records}
    assert {"serving_default", "search", "search_top", "retrieve_top", "similar_products", "complements"} <= names


def test_update_refuses_other_models_and_bad_removals(tiny_index, tiny_trained, tiny_towers):
    from esr_tf.search.catalogue import IndexBuildError
    from esr_tf.search.index import update_search_index
    from esr_tf.search.towers import build_two_tower

    base, name = tiny_index.parent.parent, tiny_index.parent.name
    other = build_two_tower(text_dim=tiny_towers.input["query_embedding"].shape[-1],
                            image_dim=tiny_towers.input["image_vector"].shape[-1])
    with pytest.raises(IndexBuildError, match="other models"):
        update_search_index(tiny_trained.model, other, base, name, remove=["x"])
    with pytest.raises(IndexBuildError, match="unknown product ids"):
        update_search_index(tiny_trained.model, tiny_towers, base, name, remove=["no-such-id"])
    with pytest.raises(IndexBuildError, match="no index version"):
        update_search_index(tiny_trained.model, tiny_towers, base, "never-built", remove=["x"])
    assert not [p for p in tiny_index.parent.iterdir() if p.name.startswith(".")], "no staging left behind"


def test_an_empty_batch_gets_empty_outputs(loaded):
    """#33 item 7: `search` / `similar_products` / `complements` failed inside the graph on 0 rows
    ("Reduction axis -1 is empty in shape [0,10,0]") while `serving_default` returned 0 rows."""
    empty = tf.constant([], tf.string)
    outputs = [loaded.signatures["search"](query=empty),
               loaded.signatures["search_top"](query=empty, k=tf.constant(3), rerank=tf.constant(5)),
               loaded.signatures["retrieve_top"](query=empty, k=tf.constant(3)),
               loaded.signatures["similar_products"](product_id=empty),
               loaded.signatures["complements"](product_id=empty)]
    for out in outputs:
        assert out["product_ids"].shape[0] == 0 and out["probabilities"].shape[0] == 0
        assert out["probabilities"].shape[-1] == 4


def test_a_query_that_is_not_1d_is_refused_naming_it(loaded):
    """#33 item 7: the search signatures took a 2-D query as well (TF Serving checks no shapes)."""
    with pytest.raises(tf.errors.InvalidArgumentError, match="query must be 1-D: one value per row"):
        loaded.signatures["search"](query=tf.constant([["red mug"]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="product_id must be 1-D"):
        loaded.signatures["similar_products"](product_id=tf.constant([["p1"]]))
