"""REST / gRPC helpers for the search signatures (no server needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from esr_tf.search.requests import (
    parse_grpc_search_response,
    parse_search_response,
    rest_product_body,
    rest_search_body,
    search_inputs,
)


def test_rest_bodies():
    assert rest_search_body(["red sneakers"]) == {"signature_name": "search", "inputs": {"query": ["red sneakers"]}}
    assert rest_search_body(["a"], k=5, rerank=20) == {
        "signature_name": "search_top", "inputs": {"query": ["a"], "k": 5, "rerank": 20}}
    assert rest_search_body(["a"], k=80)["inputs"]["rerank"] == 80, "re-rank at least k"
    assert rest_product_body(["p1"], "complements") == {
        "signature_name": "complements", "inputs": {"product_id": ["p1"]}}
    json.dumps(rest_search_body(["x"], k=3))
    assert search_inputs(["x"], k=3, rerank=0) == ("retrieve_top", {"query": ["x"], "k": 3})  # retrieval alone


@pytest.mark.parametrize("call, message", [
    (lambda: search_inputs([" "]), "query"),
    (lambda: search_inputs([]), "no rows"),
    (lambda: search_inputs("red"), "one string"),
    (lambda: search_inputs(["a"], k=0), "k must be"),
    (lambda: search_inputs(["a"], k=True), "k must be"),
    (lambda: search_inputs(["a"], rerank=-1), "rerank must be an integer >= 0"),
    (lambda: rest_product_body(["p"], "bogus"), "signature"),
])
def test_bad_inputs_are_refused_before_sending(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()


def _columns():
    return {"product_ids": [["p1", "p2"]], "titles": [["A", "B"]], "labels": [["exact", "irrelevant"]],
            "scores": [[0.9, 0.1]], "retrieval_scores": [[0.5, 0.4]], "probabilities": [[[1, 0, 0, 0], [0, 0, 0, 1]]]}


def test_parse_rest_and_grpc_answers():
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    rows = parse_search_response(json.dumps({"outputs": _columns()}))
    assert [h["product_id"] for h in rows[0]] == ["p1", "p2"] and rows[0][0]["label"] == "exact"
    with pytest.raises(ValueError, match="missing outputs"):
        parse_search_response({"outputs": {"product_ids": [["p1"]]}})
    with pytest.raises(ValueError, match="error"):
        parse_search_response({"error": "k must be in 1..3"})
    response = predict_pb2.PredictResponse()
    for key, value in _columns().items():
        array = np.array(value, dtype=object if isinstance(value[0][0], str) else np.float32)
        response.outputs[key].CopyFrom(tf.make_tensor_proto(array))
    grpc_rows = parse_grpc_search_response(response)
    assert [[h["product_id"] for h in r] for r in grpc_rows] == [["p1", "p2"]]
    assert grpc_rows[0][1]["label"] == "irrelevant"
    assert grpc_rows[0][0]["score"] == pytest.approx(0.9) and grpc_rows[0][1]["probabilities"] == [0, 0, 0, 1]
