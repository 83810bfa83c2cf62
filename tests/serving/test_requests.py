"""REST / gRPC / warmup helpers against the TF Serving message formats and a stand-in model."""

import base64
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from esr_tf.labels import LabelSet
from esr_tf.serving import (
    MAX_WARMUP_RECORDS,
    grpc_predict_request,
    parse_grpc_response,
    parse_rest_response,
    rest_predict_body,
    rest_predict_url,
    warmup_records,
    write_warmup_file,
)

LABELS = ["exact", "substitute", "complement", "irrelevant"]
QUERIES = ["Red Shoes", "blue lamp", "ünïcode é"]
TITLES = ["red running shoe for men", "Lamp", ""]


def _png() -> bytes:
    return tf.io.encode_png(np.arange(60, dtype=np.uint8).reshape(4, 5, 3)).numpy()


class StandIn(tf.Module):
    """Same contract as the export's `serving_default`: raw strings + image bytes in."""

    def __init__(self):
        super().__init__()
        vocab = ["[UNK]", "red", "blue", "shoe", "##s", "run", "##ning", "for", "men", "lamp"]
        self.tokenizer = tf_text.FastWordpieceTokenizer(vocab, token_out_type=tf.int32)
        self.kernel = tf.constant(np.random.default_rng(0).normal(size=(4, 4)), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 3)
    def serve(self, query, title, image):
        def mean_pixel(data):
            def decode():
                pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.reduce_mean(tf.cast(pixels, tf.float32)) / 255.0

            return tf.cond(tf.strings.length(data) > 0, decode, lambda: tf.constant(0.0))

        q_ids = self.tokenizer.tokenize(tf_text.case_fold_utf8(query))
        t_words = tf_text.regex_split(tf_text.case_fold_utf8(title), r"\s+")
        feats = tf.stack([
            tf.cast(q_ids.row_lengths(), tf.float32),
            tf.cast(tf.reduce_sum(q_ids, axis=1), tf.float32) / 10.0,
            tf.cast(t_words.row_lengths(), tf.float32),
            tf.map_fn(mean_pixel, image, fn_output_signature=tf.float32),
        ], axis=1)
        probs = tf.nn.softmax(tf.matmul(feats, self.kernel), axis=-1)
        label = tf.gather(tf.constant(LABELS), tf.argmax(probs, axis=-1))
        score = tf.linalg.matvec(probs, tf.constant([1.0, 0.1, 0.01, 0.0]))
        return {"probabilities": probs, "label": label, "score": score}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("standin") / "esr" / "1"
    module = StandIn()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def test_rest_body_row_format_is_json_and_round_trips_b64():
    png = _png()
    body = rest_predict_body(QUERIES, TITLES, [png, None, b""])
    body = json.loads(json.dumps(body))  # JSON-serialisable as is
    assert body["signature_name"] == "serving_default"
    assert set(body) == {"signature_name", "instances"}
    rows = body["instances"]
    assert [set(r) for r in rows] == [{"query", "title", "image"}] * 3
    assert [r["query"] for r in rows] == QUERIES and [r["title"] for r in rows] == TITLES
    assert base64.b64decode(rows[0]["image"]["b64"]) == png
    assert rows[1]["image"] == {"b64": ""} and rows[2]["image"] == {"b64": ""}


def test_rest_body_columnar_format():
    body = rest_predict_body(QUERIES, TITLES, None, form="inputs", signature_name="x")
    assert json.loads(json.dumps(body)) == {
        "signature_name": "x",
        "inputs": {"query": QUERIES, "title": TITLES, "image": [{"b64": ""}] * 3},
    }


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("q", ["t"], None), {}, "queries: expected a list"),
        ((["q"], ["t", "u"], None), {}, "same length"),
        ((["q"], ["t"], ["not bytes"]), {}, r"images\[0\]"),
        ((["q"], [b"\xff"], None), {}, r"titles\[0\]: bytes are not valid UTF-8"),
        (([], [], None), {}, "empty batch"),
        ((["q"], ["t"], None), {"form": "rows"}, "form must be"),
    ],
)
def test_rest_body_rejects_bad_input(args, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        rest_predict_body(*args, **kwargs)


def test_rest_url():
    assert rest_predict_url("h", 8501, "esr") == "http://h:8501/v1/models/esr:predict"
    assert rest_predict_url("h", 8501, "esr", 3) == "http://h:8501/v1/models/esr/versions/3:predict"


def test_parse_rest_response_row_and_columnar_forms_agree():
    probs = [[0.7, 0.2, 0.05, 0.05], [0.1, 0.1, 0.1, 0.7]]
    labels, scores = ["exact", "irrelevant"], [0.7205, 0.111]
    rows = {"predictions": [
        {"probabilities": p, "label": lab, "score": s}
        for p, lab, s in zip(probs, labels, scores, strict=True)
    ]}
    columns = {"outputs": {"probabilities": probs, "label": labels, "score": scores}}
    parsed = parse_rest_response(json.dumps(rows))
    assert parsed == parse_rest_response(columns)
    assert parsed[0] == {
        "label": "exact",
        "score": 0.7205,
        "probabilities": dict(zip(LABELS, probs[0], strict=True)),
    }
    custom = LabelSet(names=("a", "b", "c", "d"), codes=("A", "B", "C", "D"), gains=(1, 0, 0, 0))
    assert list(parse_rest_response(columns, custom)[1]["probabilities"]) == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    "body, match",
    [
        ({"error": "Missing input 'title'"}, "Missing input 'title'"),
        (
            {"outputs": {"probabilities": [[1.0]], "score": [1.0]}},
            r"missing output\(s\) \['label'\]",
        ),
        ({"predictions": [[0.1, 0.9]]}, r"predictions\[0\] is not an object"),
        ({"result": 1}, "neither 'predictions' nor 'outputs'"),
        ("not json", "invalid JSON"),
    ],
)
def test_parse_rest_response_errors(body, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        parse_rest_response(body)


def test_parse_rest_response_checks_label_count():
    body = {"outputs": {"probabilities": [[0.5, 0.5]], "label": ["a"], "score": [0.5]}}
    assert list(parse_rest_response(body)[0]["probabilities"]) == ["0", "1"]
    with pytest.raises(ValueError, match="label_names has 4 names"):
        parse_rest_response(body, LABELS)


def test_grpc_request_messages():
    png = _png()
    request = grpc_predict_request(QUERIES, TITLES, [png, None, b""], model_name="esr", version=7)
    assert request.model_spec.name == "esr"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 7
    assert set(request.inputs) == {"query", "title", "image"}
    for proto in request.inputs.values():
        assert proto.dtype == tf.string.as_datatype_enum  # DT_STRING
        assert [d.size for d in proto.tensor_shape.dim] == [3]
    assert [q.decode() for q in tf.make_ndarray(request.inputs["query"])] == QUERIES
    assert list(tf.make_ndarray(request.inputs["image"])) == [png, b"", b""]
    assert not grpc_predict_request(["q"], ["t"], None, model_name="m").model_spec.HasField(
        "version"
    )


def test_grpc_request_feeds_the_saved_model_signature(served):
    request = grpc_predict_request(QUERIES, TITLES, [_png(), None, b""], model_name="esr")
    feeds = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
    outputs = served(**feeds)
    assert outputs["probabilities"].shape == (3, 4)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-6)
    # The image changes the prediction: its bytes reached decode_image intact.
    no_image = served(**{**feeds, "image": tf.constant([b"", b"", b""])})
    assert not np.allclose(outputs["probabilities"][0], no_image["probabilities"][0])

    response = predict_pb2.PredictResponse()
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    parsed = parse_grpc_response(response)
    assert [p["label"] for p in parsed] == [lab.decode() for lab in outputs["label"].numpy()]
    np.testing.assert_allclose([p["score"] for p in parsed], outputs["score"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        [list(p["probabilities"].values()) for p in parsed], outputs["probabilities"].numpy()
    )


def test_parse_grpc_response_missing_output():
    response = predict_pb2.PredictResponse()
    response.outputs["score"].CopyFrom(tf.make_tensor_proto(np.zeros(2, np.float32)))
    with pytest.raises(ValueError, match=r"gRPC response: missing output\(s\)"):
        parse_grpc_response(response)


def test_warmup_file_round_trip(tmp_path):
    png = _png()
    records = warmup_records(QUERIES, TITLES, [png, None, b""], model_name="esr")
    assert len(records) == 3
    path = tmp_path / "1" / "assets.extra" / "tf_serving_warmup_requests"
    write_warmup_file(path, records)
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(str(path))
    ]
    assert len(logs) == 3
    request = logs[0].predict_log.request
    assert request.model_spec.name == "esr"
    assert request.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(request.inputs["query"]).tolist() == [QUERIES[0].encode()]
    assert tf.make_ndarray(request.inputs["image"]).tolist() == [png]
    batched = warmup_records(QUERIES, TITLES, None, model_name="esr", batch_size=2)
    sizes = [
        prediction_log_pb2.PredictionLog.FromString(r).predict_log.request.inputs["title"]
        .tensor_shape.dim[0].size
        for r in batched
    ]
    assert sizes == [2, 1]


def test_warmup_refuses_more_than_tf_serving_cap(tmp_path):
    n = MAX_WARMUP_RECORDS + 1
    with pytest.raises(ValueError, match="at most 1000"):
        warmup_records(["q"] * n, ["t"] * n, None, model_name="esr")
    with pytest.raises(ValueError, match="at most 2"):
        warmup_records(["q"] * 3, ["t"] * 3, None, model_name="esr", max_records=2)
    with pytest.raises(ValueError, match="max_records must be in 1..1000"):
        warmup_records(["q"], ["t"], None, model_name="esr", max_records=5000)
    with pytest.raises(ValueError, match="at most 1000"):
        write_warmup_file(tmp_path / "w", [b""] * n)
