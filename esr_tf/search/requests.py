"""Request / response helpers for the search signatures of an `esr-tf index` export.

Signatures (see `esr_tf.search.graph`): `search(query)` (k = 10, re-rank 50),
`search_top(query, k, rerank)`, `retrieve_top(query, k)` (retrieval alone: what re-rank 0 asks
for), `similar_products(product_id)`, `complements(product_id)`.
Each returns, per input row, `product_ids`, `titles`, `labels`, `scores`, `probabilities` and
`retrieval_scores` with k entries. REST bodies use TF Serving's columnar ("inputs") format,
since `k` and `rerank` are scalars next to a batch of queries.

Example:
>>> rest_search_body(["red sneakers"], k=5)
{'signature_name': 'search_top', 'inputs': {'query': ['red sneakers'], 'k': 5, 'rerank': 50}}
>>> rest_search_body(["red sneakers"])
{'signature_name': 'search', 'inputs': {'query': ['red sneakers']}}
>>> rest_search_body(["red sneakers"], rerank=0)
{'signature_name': 'retrieve_top', 'inputs': {'query': ['red sneakers'], 'k': 10}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from esr_tf.constants import DEFAULT_K, DEFAULT_RERANK, INT32_MAX
from esr_tf.validation import load_json_object

SEARCH_OUTPUTS = ("product_ids", "titles", "labels", "scores", "probabilities", "retrieval_scores")
PRODUCT_SIGNATURES = ("similar_products", "complements")


def _texts(values: Sequence[str], field: str) -> list[str]:
    if isinstance(values, str | bytes):
        raise TypeError(f"{field}: expected a list of strings, got one string")
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{field}[{i}]: expected a non-empty string, got {v!r}")
        out.append(v)
    if not out:
        raise ValueError(f"{field}: no rows")
    return out


def _at_least(value: int, field: str, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{field} must be an integer >= {least}, got {value!r}")
    if value > INT32_MAX:  # checked before it becomes an int32 (3000000000 would wrap negative)
        raise ValueError(f"{field} must be at most {INT32_MAX} (an int32), got {value}")
    return value


def search_inputs(queries: Sequence[str], k: int | None = None, rerank: int | None = None) -> tuple[str, dict]:
    """(signature name, inputs): `search` with the defaults, `search_top` when k / rerank are given,
    `retrieve_top` for rerank 0 (retrieval alone)."""
    queries = _texts(queries, "query")
    if k is None and rerank is None:
        return "search", {"query": queries}
    k = _at_least(DEFAULT_K if k is None else k, "k")
    rerank = _at_least(max(DEFAULT_RERANK, k) if rerank is None else rerank, "rerank", least=0)
    if rerank == 0:
        return "retrieve_top", {"query": queries, "k": k}
    return "search_top", {"query": queries, "k": k, "rerank": rerank}


def rest_search_body(queries: Sequence[str], k: int | None = None, rerank: int | None = None) -> dict:
    """JSON body for `POST /v1/models/<name>:predict` running a search."""
    signature, inputs = search_inputs(queries, k, rerank)
    return {"signature_name": signature, "inputs": inputs}


def rest_product_body(product_ids: Sequence[str], signature: str = "similar_products") -> dict:
    """JSON body for `similar_products` or `complements`."""
    if signature not in PRODUCT_SIGNATURES:
        raise ValueError(f"signature must be one of {PRODUCT_SIGNATURES}, got {signature!r}")
    return {"signature_name": signature, "inputs": {"product_id": _texts(product_ids, "product_id")}}


def ranked_rows(columns: dict[str, Any], source: str) -> list[list[dict]]:
    """Columns of a search answer ([B, k] each) -> per row, the ranked products as dicts."""
    missing = [k for k in SEARCH_OUTPUTS if k not in columns]
    if missing:
        raise ValueError(f"{source}: missing outputs {missing}")
    rows = []
    for i, ids in enumerate(columns["product_ids"]):
        rows.append([
            {"product_id": _text(ids[j]), "title": _text(columns["titles"][i][j]),
             "label": _text(columns["labels"][i][j]), "score": float(columns["scores"][i][j]),
             "retrieval_score": float(columns["retrieval_scores"][i][j]),
             "probabilities": [float(p) for p in columns["probabilities"][i][j]]}
            for j in range(len(ids))
        ])
    return rows


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def parse_search_response(body: dict | str | bytes) -> list[list[dict]]:
    """A REST answer of any search signature -> per input row, the ranked products (dicts)."""
    body = load_json_object(body, "REST response") if not isinstance(body, dict) else body
    if "error" in body:
        raise ValueError(f"TF Serving answered an error: {body['error']}")
    if "outputs" not in body:
        raise ValueError(f"REST response has no 'outputs' (columnar answer expected): keys {sorted(body)}")
    return ranked_rows(body["outputs"], "REST response")


def grpc_search_request(inputs: dict, *, model_name: str, signature_name: str, version: int | None = None):
    """A `PredictRequest` for `search_inputs(...)` / a product signature's inputs."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        if isinstance(value, int):
            proto = tf.make_tensor_proto(value, dtype=tf.int32)
        else:
            proto = tf.make_tensor_proto([v.encode("utf-8") for v in value], dtype=tf.string, shape=[len(value)])
        request.inputs[name].CopyFrom(proto)
    return request


def parse_grpc_search_response(response) -> list[list[dict]]:
    import tensorflow as tf

    columns = {k: tf.make_ndarray(v).tolist() for k, v in response.outputs.items()}
    return ranked_rows(columns, "gRPC response")


def search_warmup_records(queries: Sequence[str], product_ids: Sequence[str], *, model_name: str,
                          signatures: Sequence[str]) -> list[bytes]:
    """`PredictionLog` records for each search signature present (one row each)."""
    from tensorflow_serving.apis import prediction_log_pb2

    calls = [("search", {"query": [q]}) for q in queries]
    calls += [("search_top", {"query": [q], "k": 5, "rerank": 20}) for q in queries[:1]]
    calls += [("retrieve_top", {"query": [q], "k": 5}) for q in queries[:1]]
    calls += [(s, {"product_id": [p]}) for s in PRODUCT_SIGNATURES for p in product_ids]
    records = []
    for signature, inputs in calls:
        if signature in signatures:
            request = grpc_search_request(inputs, model_name=model_name, signature_name=signature)
            records.append(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    return records
