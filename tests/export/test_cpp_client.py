"""The C++ loader client (tensorflow::LoadSavedModel, as in TF Serving) against Python's loader."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as tf_text

from esr_tf.export.cpp_client import (
    build_cpp_client,
    cpp_toolchain_available,
    run_cpp_calls,
    run_cpp_client,
    tf_text_op_libraries,
)

# Compiling the client takes 6 s on an idle 2-core machine (over a minute under load); each run
# loads TF in a subprocess.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(cpp_toolchain_available() is not None,
                       reason=f"C++ client not buildable: {cpp_toolchain_available()}"),
]

LABELS = ["exact", "substitute", "complement", "irrelevant"]


class StandIn(tf.Module):
    """Same contracts as the export's `serving_default` and `score_with_image_features`."""

    def __init__(self):
        super().__init__()
        vocab = ["[UNK]", "red", "blue", "shoe", "##s", "run", "##ning", "for", "men", "lamp"]
        self.tokenizer = tf_text.FastWordpieceTokenizer(vocab, token_out_type=tf.int32)
        self.kernel = tf.constant(np.random.default_rng(0).normal(size=(4, 4)), tf.float32)

    def _head(self, query, title, image_feature):
        q_ids = self.tokenizer.tokenize(tf_text.case_fold_utf8(query))
        t_words = tf_text.regex_split(tf_text.case_fold_utf8(title), r"\s+")
        feats = tf.stack([
            tf.cast(q_ids.row_lengths(), tf.float32),
            tf.cast(tf.reduce_sum(q_ids, axis=1), tf.float32) / 10.0,
            tf.cast(t_words.row_lengths(), tf.float32),
            image_feature,
        ], axis=1)
        probs = tf.nn.softmax(tf.matmul(feats, self.kernel), axis=-1)
        label = tf.gather(tf.constant(LABELS), tf.argmax(probs, axis=-1))
        score = tf.linalg.matvec(probs, tf.constant([1.0, 0.1, 0.01, 0.0]))
        return {"probabilities": probs, "label": label, "score": score}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 3)
    def serve(self, query, title, image):
        def mean_pixel(data):
            def decode():
                pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.reduce_mean(tf.cast(pixels, tf.float32)) / 255.0

            return tf.cond(tf.strings.length(data) > 0, decode, lambda: tf.constant(0.0))

        image_feature = tf.map_fn(mean_pixel, image, fn_output_signature=tf.float32)
        return self._head(query, title, image_feature)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string),
        tf.TensorSpec([None], tf.string),
        tf.TensorSpec([None, 2, 3], tf.float32),
        tf.TensorSpec([None], tf.float32),
    ])
    def score_features(self, query, title, image_tokens, has_image):
        return self._head(query, title, tf.reduce_mean(image_tokens, axis=[1, 2]) * has_image)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)])
    def top(self, query, k):
        """int32 scalar input and output shape decided by it, like the index's `search_top`."""
        lengths = tf.cast(tf.strings.length(query), tf.float32)
        table = lengths[:, None] * tf.range(1.0, 6.0)[None, :]
        return {"values": tf.math.top_k(table, k).values, "k": k}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("standin") / "esr" / "1"
    module = StandIn()
    signatures = {
        "serving_default": module.serve,
        "score_with_image_features": module.score_features,
        "top": module.top,
    }
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


@pytest.fixture(scope="module")
def loaded(export_dir):
    return tf.saved_model.load(str(export_dir)).signatures


def _inputs() -> dict:
    png = tf.io.encode_png(np.arange(60, dtype=np.uint8).reshape(4, 5, 3)).numpy()
    jpeg = tf.io.encode_jpeg(np.full((8, 8, 3), 200, np.uint8)).numpy()
    return {
        "query": ["Red Shoes", "blue lamp", "ünïcode é", "x\ny \"quoted\""],
        "title": ["red running shoe for men", "Lamp", "", "\x00\xff\n"],
        "image": [png, b"", jpeg, png],
    }


def _assert_same(cpp: dict, python: dict) -> None:
    assert set(cpp) == set(python) == {"probabilities", "label", "score"}
    for name, expected in python.items():
        expected = expected.numpy()
        assert cpp[name].shape == expected.shape, name
        if expected.dtype == object:
            assert cpp[name].tolist() == expected.tolist(), name
        else:
            assert cpp[name].dtype == expected.dtype, name
            np.testing.assert_allclose(cpp[name], expected, rtol=0, atol=1e-6, err_msg=name)


def test_build_is_cached():
    first = build_cpp_client()
    mtime = first.stat().st_mtime_ns
    assert build_cpp_client() == first and first.stat().st_mtime_ns == mtime


def test_serving_default_matches_python(export_dir, loaded):
    inputs = _inputs()
    result = run_cpp_client(export_dir, inputs, repeats=5)
    python = loaded["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})
    _assert_same(result["outputs"], python)
    assert result["ms_per_run"] > 0
    assert result["ms_per_example"] == pytest.approx(result["ms_per_run"] / 4, rel=1e-3)


def test_float_inputs_signature_matches_python(export_dir, loaded):
    rng = np.random.default_rng(1)
    inputs = {
        "query": ["red shoes", "lamp"],
        "title": ["shoe", "blue lamp for men"],
        "image_tokens": rng.normal(size=(2, 2, 3)).astype(np.float32),
        "has_image": np.array([1.0, 0.0], np.float32),
    }
    result = run_cpp_client(export_dir, inputs, signature="score_with_image_features")
    python = loaded["score_with_image_features"](**{k: tf.constant(v) for k, v in inputs.items()})
    _assert_same(result["outputs"], python)


def test_calls_share_one_load_and_take_int32_scalars(export_dir, loaded):
    """`run_cpp_calls` (what `verify` uses for every signature): one load, each call its own signature."""
    inputs = _inputs()
    calls = [("top", {"query": ["ab", "abcd"], "k": 3}), ("serving_default", inputs), ("top", {"query": ["x"], "k": 1})]
    result = run_cpp_calls(export_dir, calls)
    assert result["load_ms"] > 0 and len(result["calls"]) == 3
    first, serve, last = (c["outputs"] for c in result["calls"])
    python = loaded["top"](query=tf.constant(["ab", "abcd"]), k=tf.constant(3))
    np.testing.assert_allclose(first["values"], python["values"].numpy(), atol=0)
    assert first["k"].shape == () and int(first["k"]) == 3 and last["values"].shape == (1, 1)
    _assert_same(serve, loaded["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()}))


def test_errors_name_the_problem(export_dir):
    with pytest.raises(RuntimeError, match="needs input 'title'"):
        run_cpp_client(export_dir, {"query": ["a"], "image": [b""]})
    with pytest.raises(RuntimeError, match=r"signature 'nope' not in .*serving_default"):
        run_cpp_client(export_dir, {"query": ["a"]}, signature="nope")
    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        run_cpp_client(export_dir.parent, {"query": ["a"]})


def test_op_libraries_found():
    names = {p.name for p in tf_text_op_libraries()}
    assert {"_fast_wordpiece_tokenizer.so", "_regex_split_ops.so", "_normalize_ops.so"} <= names
