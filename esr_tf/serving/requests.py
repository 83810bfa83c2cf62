"""Request / response helpers for a TF Serving deployment of the esr_tf SavedModel.

The exported `serving_default` signature takes `tf.string [None]` inputs: `query`, the product
fields the model reads (its `model.product_text`: `title`, by default also `brand` and `color`;
empty strings allowed) and `image` (the encoded image file bytes; empty bytes mean "no image"),
and returns `probabilities [None, num_labels]`, `label [None]` (string) and `score [None]`.
Every helper takes the title positionally and the other fields as `fields={"brand": [...], ...}`;
send exactly the fields the model reads (TF Serving refuses a request that lacks or adds one).

REST bodies follow the TF Serving REST API: the row ("instances") or columnar ("inputs")
request format, binary values as `{"b64": ...}`, and "predictions" (row) or "outputs"
(columnar) responses. gRPC messages come from `tensorflow-serving-api`; TensorFlow is imported
only by the gRPC / warmup helpers so a REST-only client needs neither.

Example:
>>> from esr_tf.serving.requests import rest_predict_body, rest_predict_url
>>> body = rest_predict_body(["red shoes"], ["Red running shoe"], [None],
...                          fields={"brand": ["Acme"], "color": ["red"]})
>>> body["instances"][0]
{'query': 'red shoes', 'title': 'Red running shoe', 'brand': 'Acme', 'color': 'red', 'image': {'b64': ''}}
>>> rest_predict_url("localhost", 8501, "esr")
'http://localhost:8501/v1/models/esr:predict'
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from esr_tf.constants import PRODUCT_TEXT_FIELDS
from esr_tf.labels import ESCI, LabelSet
from esr_tf.validation import load_json_object

if TYPE_CHECKING:  # Imported lazily at run time: they pull in TensorFlow.
    from tensorflow_serving.apis import predict_pb2

# TF Serving refuses warmup files with more records than this (kMaxNumRecords in
# tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc).
MAX_WARMUP_RECORDS = 1000
WARMUP_FILE_NAME = "tf_serving_warmup_requests"  # under <version dir>/assets.extra/
OUTPUT_KEYS = ("probabilities", "label", "score")


def _text_column(values: Sequence[str | bytes], field: str) -> list[str]:
    if isinstance(values, str | bytes):
        kind = type(values).__name__
        raise TypeError(f"{field}: expected a list of strings, got a single {kind}")
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bytes | bytearray):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{field}[{i}]: bytes are not valid UTF-8 ({err})") from None
        if not isinstance(value, str):
            raise TypeError(f"{field}[{i}]: expected str or bytes, got {type(value).__name__}")
        out.append(value)
    return out


def _image_column(images: Sequence[bytes | None] | None, n: int) -> list[bytes]:
    if images is None:
        return [b""] * n
    if isinstance(images, bytes | bytearray | str):
        raise TypeError("images: expected a list of bytes (one per example), got a single value")
    out = []
    for i, image in enumerate(images):
        if image is None:
            image = b""
        if not isinstance(image, bytes | bytearray | memoryview):
            raise TypeError(
                f"images[{i}]: expected encoded image bytes or None, got {type(image).__name__}"
            )
        out.append(bytes(image))
    return out


def _columns(queries, titles, images, fields=None) -> tuple[list[str], dict[str, list[str]], list[bytes]]:
    """Validates one batch: `(queries, {"title": ..., <fields>}, images)`, one entry per example."""
    queries = _text_column(queries, "queries")
    text = {"title": _text_column(titles, "titles")}
    for name, values in (fields or {}).items():
        if name not in PRODUCT_TEXT_FIELDS or name == "title":
            others = ", ".join(f for f in PRODUCT_TEXT_FIELDS if f != "title")
            raise ValueError(f"fields: unknown product field {name!r} (one of {others}; the title is positional)")
        text[name] = _text_column(values, f"fields[{name!r}]")
    if not queries:
        raise ValueError("empty batch: give at least one (query, title, image) example")
    image_list = _image_column(images, len(queries))
    lengths = {"queries": len(queries), **{f"{k}s" if k == "title" else k: len(v) for k, v in text.items()},
               "images": len(image_list)}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns must have the same length (one entry per example), got {lengths}")
    return queries, text, image_list


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


def rest_predict_body(
    queries: Sequence[str],
    titles: Sequence[str],
    images: Sequence[bytes | None] | None,
    *,
    fields: dict[str, Sequence[str]] | None = None,
    form: str = "instances",
    signature_name: str = "serving_default",
) -> dict:
    """JSON body for `POST /v1/models/<name>:predict`.

    `form="instances"` gives the row format (one object per example), `form="inputs"` the
    columnar format (one list per input). Image bytes are sent as `{"b64": ...}`; a missing
    image (None or b"") is sent as `{"b64": ""}`, which the model reads as "no image".

    Example:
    >>> rest_predict_body(["a"], ["b"], [b"\\x89PNG"], form="inputs")["inputs"]["image"]
    [{'b64': 'iVBORw=='}]
    """
    queries, text, image_list = _columns(queries, titles, images, fields)
    columns = {"query": queries, **text, "image": [_b64(image) for image in image_list]}
    if form == "instances":
        rows = [{k: v[i] for k, v in columns.items()} for i in range(len(queries))]
        return {"signature_name": signature_name, "instances": rows}
    if form == "inputs":
        return {"signature_name": signature_name, "inputs": columns}
    raise ValueError(f"form must be 'instances' (row) or 'inputs' (columnar), got {form!r}")


def _response_object(body: dict | str | bytes, what: str) -> dict:
    """A TF Serving REST answer as a dict: JSON text parsed, errors raised with their message."""
    if isinstance(body, str | bytes):
        body = load_json_object(body, what)
    elif not isinstance(body, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(body).__name__}")
    if "error" in body:
        raise RuntimeError(f"TF Serving returned an error: {body['error']}")
    return body


def parse_explain_response(body: dict | str | bytes) -> list[dict]:
    """Parses a REST response of the `explain` signature (`rest_predict_body(...,
    signature_name="explain")`): one `{"tokens": [L] str, "attention": [L][h][w]}` per example.

    Example:
    >>> parse_explain_response('{"predictions": [{"tokens": ["[CLS]"], "attention": [[[0.5]]]}]}')
    [{'tokens': ['[CLS]'], 'attention': [[[0.5]]]}]
    """
    body = _response_object(body, "explain response")
    if "outputs" in body:  # columnar: {"outputs": {"tokens": [n][L], "attention": [n][L][h][w]}}
        columns = body["outputs"]
        rows = [{"tokens": t, "attention": a} for t, a in zip(columns["tokens"], columns["attention"], strict=True)]
    else:
        rows = body.get("predictions")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"tokens", "attention"} <= r.keys() for r in rows):
        raise ValueError("explain response: expected 'predictions' rows (or 'outputs') with tokens and attention")
    return [{"tokens": [_as_text(t, "tokens") for t in r["tokens"]], "attention": r["attention"]} for r in rows]


def rest_predict_url(host: str, port: int, model_name: str, version: int | None = None) -> str:
    """`http://host:port/v1/models/NAME[/versions/N]:predict`."""
    path = f"/v1/models/{model_name}"
    if version is not None:
        path += f"/versions/{int(version)}"
    return f"http://{host}:{int(port)}{path}:predict"


def _label_names(label_names, num_labels: int) -> list[str]:
    if label_names is None:
        # ESCI is the package default; other label counts get their index as name.
        if num_labels == ESCI.num_labels:
            return list(ESCI.names)
        return [str(i) for i in range(num_labels)]
    names = list(label_names.names if isinstance(label_names, LabelSet) else label_names)
    if len(names) != num_labels:
        raise ValueError(
            f"label_names has {len(names)} names but the model returned {num_labels} probabilities"
        )
    return [str(name) for name in names]


def _as_text(value: Any, where: str) -> str:
    if isinstance(value, dict) and "b64" in value:  # outputs named *_bytes come back base64
        value = base64.b64decode(value["b64"])
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string label, got {type(value).__name__}")
    return value


def _rows(probabilities, labels, scores, label_names, source: str) -> list[dict]:
    """Turns per-output columns into [{"label", "score", "probabilities"}] rows."""
    probabilities = [list(map(float, p)) for p in probabilities]
    n = len(probabilities)
    if len(labels) != n or len(scores) != n:
        raise ValueError(
            f"{source}: outputs disagree on the batch size (probabilities {n}, "
            f"label {len(labels)}, score {len(scores)})"
        )
    if n == 0:
        return []
    num_labels = len(probabilities[0])
    if any(len(p) != num_labels for p in probabilities):
        raise ValueError(f"{source}: 'probabilities' rows have different lengths")
    names = _label_names(label_names, num_labels)
    return [
        {
            "label": _as_text(label, f"{source} row {i} 'label'"),
            "score": float(score),
            "probabilities": dict(zip(names, probs, strict=True)),
        }
        for i, (probs, label, score) in enumerate(zip(probabilities, labels, scores, strict=True))
    ]


def _missing(keys, source: str) -> None:
    missing = [k for k in OUTPUT_KEYS if k not in keys]
    if missing:
        raise ValueError(
            f"{source}: missing output(s) {missing}; got {sorted(keys)} "
            f"(expected the outputs of 'serving_default': {list(OUTPUT_KEYS)})"
        )


def parse_rest_response(body: dict | str | bytes, label_names=None) -> list[dict]:
    """Parses a REST predict response ("predictions" rows or "outputs" columns).

    Returns one `{"label": str, "score": float, "probabilities": {name: p}}` per example;
    `label_names` (a `LabelSet` or names in output order) defaults to the ESCI names.

    Example:
    >>> parse_rest_response('{"outputs": {"probabilities": [[0.7, 0.1, 0.1, 0.1]],'
    ...     ' "label": ["exact"], "score": [0.711]}}')[0]["label"]
    'exact'
    """
    body = _response_object(body, "REST response")
    if "predictions" in body:
        rows = body["predictions"]
        if not isinstance(rows, list):
            raise ValueError("REST response: 'predictions' must be a list of rows")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(
                    f"REST response: predictions[{i}] is not an object of named outputs; "
                    "was a single-output signature called?"
                )
            _missing(row.keys(), f"REST response predictions[{i}]")
        return _rows(
            [r["probabilities"] for r in rows],
            [r["label"] for r in rows],
            [r["score"] for r in rows],
            label_names,
            "REST response",
        )
    if "outputs" in body:
        outputs = body["outputs"]
        if not isinstance(outputs, dict):
            raise ValueError("REST response: 'outputs' is not an object of named outputs")
        _missing(outputs.keys(), "REST response outputs")
        return _rows(
            outputs["probabilities"], outputs["label"], outputs["score"], label_names,
            "REST response",
        )
    raise ValueError(f"REST response has neither 'predictions' nor 'outputs': keys {sorted(body)}")


def grpc_predict_request(
    queries: Sequence[str],
    titles: Sequence[str],
    images: Sequence[bytes | None] | None,
    *,
    model_name: str,
    fields: dict[str, Sequence[str]] | None = None,
    signature_name: str = "serving_default",
    version: int | None = None,
) -> predict_pb2.PredictRequest:
    """A `PredictRequest` with `query`, `title`, the other `fields` and `image` as DT_STRING
    tensors of shape [n].

    Example:
    >>> req = grpc_predict_request(["a"], ["b"], [None], model_name="esr")
    >>> req.model_spec.name, req.inputs["image"].tensor_shape.dim[0].size
    ('esr', 1)
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    queries, text, image_list = _columns(queries, titles, images, fields)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    columns = {
        "query": [q.encode("utf-8") for q in queries],
        **{k: [t.encode("utf-8") for t in v] for k, v in text.items()},
        "image": image_list,
    }
    for name, values in columns.items():
        proto = tf.make_tensor_proto(values, dtype=tf.string, shape=[len(values)])
        request.inputs[name].CopyFrom(proto)
    return request


def parse_grpc_response(response: predict_pb2.PredictResponse, label_names=None) -> list[dict]:
    """Parses a `PredictResponse` into the rows `parse_rest_response` returns."""
    import tensorflow as tf

    _missing(response.outputs.keys(), "gRPC response")
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    if probabilities.ndim != 2:
        raise ValueError(
            f"gRPC response: 'probabilities' must be [batch, num_labels], got {probabilities.shape}"
        )
    labels = tf.make_ndarray(response.outputs["label"]).reshape(-1).tolist()
    scores = tf.make_ndarray(response.outputs["score"]).reshape(-1).tolist()
    return _rows(probabilities, labels, scores, label_names, "gRPC response")


def warmup_records(
    queries: Sequence[str],
    titles: Sequence[str],
    images: Sequence[bytes | None] | None,
    *,
    model_name: str,
    fields: dict[str, Sequence[str]] | None = None,
    max_records: int = MAX_WARMUP_RECORDS,
    signature_name: str = "serving_default",
    batch_size: int = 1,
) -> list[bytes]:
    """Serialized `PredictionLog` records for `assets.extra/tf_serving_warmup_requests`.

    One record per `batch_size` examples (batch 1 by default: the shape a first online request
    has). TF Serving replays them when it loads the model, so the first real request does not
    pay for graph initialisation. More than `max_records` (at most 1000, TF Serving's cap)
    raises `ValueError`.
    """
    from tensorflow_serving.apis import prediction_log_pb2

    if not 1 <= max_records <= MAX_WARMUP_RECORDS:
        raise ValueError(f"max_records must be in 1..{MAX_WARMUP_RECORDS}, got {max_records}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    queries, text, image_list = _columns(queries, titles, images, fields)
    num_records = -(-len(queries) // batch_size)
    if num_records > max_records:
        raise ValueError(
            f"{num_records} warmup records requested but at most {max_records} are allowed "
            f"(TF Serving refuses files with more than {MAX_WARMUP_RECORDS})"
        )
    records = []
    for start in range(0, len(queries), batch_size):
        end = start + batch_size
        request = grpc_predict_request(
            queries[start:end], text["title"][start:end], image_list[start:end], model_name=model_name,
            fields={k: v[start:end] for k, v in text.items() if k != "title"}, signature_name=signature_name,
        )
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log.SerializeToString())
    return records


def write_warmup_file(path: str | os.PathLike, records: Sequence[bytes]) -> None:
    """Writes `records` as a TFRecord file (parent folders are created).

    TF Serving reads it from `<export>/<version>/assets.extra/tf_serving_warmup_requests`.
    """
    import tensorflow as tf

    if len(records) > MAX_WARMUP_RECORDS:
        raise ValueError(
            f"{path}: {len(records)} records, but TF Serving accepts at most {MAX_WARMUP_RECORDS}"
        )
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    with tf.io.TFRecordWriter(path) as writer:
        for i, record in enumerate(records):
            if not isinstance(record, bytes):
                raise TypeError(f"{path}: record {i} is {type(record).__name__}, expected bytes")
            writer.write(record)
