"""Hostile requests against the exported `serving_default` / `embed_images` signatures.

Every request gives either a result (finite probabilities summing to 1, a label of the label
set) or a `tf.errors.InvalidArgumentError` with a clear message; never a crashed process. The
riskiest inputs (undecodable bytes, headers declaring 50000x50000 pixels) run in a child process
that must exit 0 after printing the error, so a segfault or an out-of-memory kill would show.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import tensorflow as tf
from reliability.helpers import encode, huge_headers, last_json_line, run_python, tail

LABELS = {"exact", "substitute", "complement", "irrelevant"}
GAINS = np.array([1.0, 0.1, 0.01, 0.0])


@pytest.fixture(scope="module")
def loaded(tiny_export):
    import tensorflow_text  # noqa: F401  (registers the TF-Text ops of the graph)

    return tf.saved_model.load(str(tiny_export))


def serve(loaded, query, title, image) -> dict[str, np.ndarray]:
    """`serving_default` with `title`'s text also as the brand and the query's as the colour,
    so that every product field meets the hostile text."""
    out = loaded.signatures["serving_default"](
        query=tf.constant(query, tf.string), title=tf.constant(title, tf.string),
        brand=tf.constant(title, tf.string), color=tf.constant(query, tf.string),
        image=tf.constant(image, tf.string),
    )
    return {k: v.numpy() for k, v in out.items()}


def assert_valid(out: dict[str, np.ndarray], batch: int) -> None:
    probs, label, score = out["probabilities"], out["label"], out["score"]
    assert probs.shape == (batch, 4) and label.shape == (batch,) and score.shape == (batch,)
    assert np.isfinite(probs).all() and np.isfinite(score).all()
    assert (probs >= 0).all() and (probs <= 1).all()
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    assert {x.decode() for x in label} <= LABELS
    np.testing.assert_allclose(score, probs @ GAINS, atol=1e-5)


TEXTS = {
    "empty_strings": ("", ""),
    "title_10000_words": ("red sneaker", "red " * 2500),
    "title_10000_chars_one_word": ("red sneaker", "x" * 10_000),
    "query_10000_chars": ("q" * 10_000, "Red sneaker"),
    "accents": ("Café crème", "Crème brûlée mug, ñandú"),
    "emoji": ("socks 🧦🧦", "👟" * 300),
    "cjk": ("防水ジャケット 红色", "赤い靴 빨간 신발"),
    "rtl_zero_width_combining": ("\u202eeoh\u200bs der", "e\u0301\u0301\u0301 \u200d"),
    "nul_and_control_chars": ("red\x00shoe\x07", "\x00\x1b[31m"),
    "invalid_utf8_bytes": (b"\xff\xfe red \xc3", b"\x80\x80 title"),
    "lone_surrogate_bytes": ("\ud800".encode("utf-8", "surrogatepass"), b"x"),
}


@pytest.mark.parametrize("case", list(TEXTS))
def test_text_edge_cases_give_a_result(loaded, case):
    query, title = TEXTS[case]
    assert_valid(serve(loaded, [query], [title], [b""]), 1)


def test_empty_image_bytes_mean_no_image(loaded):
    emb = loaded.signatures["embed_images"](image=tf.constant([b"", encode(fmt="PNG")]))
    assert emb["has_image"].numpy().tolist() == [0.0, 1.0]
    assert np.isfinite(emb["image_tokens"].numpy()).all()
    assert_valid(serve(loaded, ["red", "red"], ["Red mug", "Red mug"],
                       [b"", encode(fmt="JPEG")]), 2)


@pytest.mark.parametrize("batch", [1, 512])
def test_batches_of_1_and_512_match_row_by_row(loaded, batch):
    rng = np.random.default_rng(batch)
    images = [b"", encode(fmt="JPEG"), encode(fmt="PNG"), encode(fmt="GIF"), encode(fmt="WEBP")]
    words = ["red", "blue", "sneaker", "mug", "sock", "防水", "🧦", "cap"]
    query = [" ".join(rng.choice(words, 2)) for _ in range(batch)]
    title = [" ".join(rng.choice(words, 5)) for _ in range(batch)]
    image = [images[i % len(images)] for i in range(batch)]
    out = serve(loaded, query, title, image)
    assert_valid(out, batch)
    # A row's result must not depend on the rest of the batch (no cross-row leakage).
    for i in range(0, batch, max(1, batch // 8)):
        alone = serve(loaded, [query[i]], [title[i]], [image[i]])
        np.testing.assert_allclose(out["probabilities"][i], alone["probabilities"][0], atol=1e-5)


def test_empty_batch_gives_empty_result(loaded):
    none = np.array([], dtype=object)
    out = serve(loaded, none, none, none)
    assert out["probabilities"].shape == (0, 4) and out["label"].shape == (0,)


def test_batch_without_any_photo_gives_a_result(loaded):
    assert_valid(serve(loaded, ["red"] * 3, ["Red mug"] * 3, [b""] * 3), 3)
    emb = loaded.signatures["embed_images"](image=tf.constant([b"", b""]))
    assert emb["has_image"].numpy().tolist() == [0.0, 0.0] and not emb["image_tokens"].numpy().any()


def test_request_over_the_row_limit_is_invalid_argument(loaded):
    from esr_tf.export.saved_model import MAX_REQUEST_ROWS

    rows = [""] * (MAX_REQUEST_ROWS + 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="MAX_REQUEST_ROWS"):
        serve(loaded, rows, rows, rows)
    with pytest.raises(tf.errors.InvalidArgumentError, match="MAX_REQUEST_ROWS"):
        loaded.signatures["embed_images"](image=tf.constant(rows))


def _score_with(loaded, tokens, has_image):
    return loaded.signatures["score_with_image_features"](
        query=tf.constant(["red"] * len(has_image)), title=tf.constant(["Red mug"] * len(has_image)),
        brand=tf.constant([""] * len(has_image)), color=tf.constant(["red"] * len(has_image)),
        image_tokens=tf.constant(tokens, tf.float32), has_image=tf.constant(has_image, tf.float32),
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image_tokens_are_invalid_argument(loaded, bad):
    tokens = loaded.signatures["embed_images"](image=tf.constant([encode(fmt="PNG")]))["image_tokens"].numpy()
    assert np.isfinite(_score_with(loaded, tokens, [1.0])["probabilities"].numpy()).all()
    tokens[0, 0, 0] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_tokens must be finite"):
        _score_with(loaded, tokens, [1.0])


@pytest.mark.parametrize("has_image", [np.nan, 5.0, -3.0, 0.5])
def test_has_image_outside_0_and_1_is_invalid_argument(loaded, has_image):
    tokens = loaded.signatures["embed_images"](image=tf.constant([b""]))["image_tokens"].numpy()
    with pytest.raises(tf.errors.InvalidArgumentError, match="has_image must be 0 or 1"):
        _score_with(loaded, tokens, [has_image])


ONEDNN_OFF_CHILD = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401

loaded = tf.saved_model.load(sys.argv[1])
serve = loaded.signatures["serving_default"]
images = [bytes.fromhex(x) for x in json.loads(sys.argv[2])]
n = len(images)
out = serve(query=tf.constant(["red"] * n), title=tf.constant(["Red mug"] * n), brand=tf.constant(["Red mug"] * n),
            color=tf.constant(["red"] * n), image=tf.constant(images))
none = tf.constant([], tf.string)
empty = serve(query=none, title=none, brand=none, color=none, image=none)
print(json.dumps({"probabilities": out["probabilities"].numpy().tolist(),
                  "empty_shape": list(empty["probabilities"].shape)}))
"""


@pytest.mark.slow
def test_onednn_off_path_gives_the_same_results(loaded, tiny_export):
    """The other CPU code path (TF_ENABLE_ONEDNN_OPTS=0) answers empty and mixed batches alike."""
    import subprocess
    import sys

    from reliability.helpers import child_env

    images = [b"", encode(fmt="PNG"), encode(fmt="JPEG"), b""]
    child = subprocess.run(
        [sys.executable, "-c", ONEDNN_OFF_CHILD, str(tiny_export), json.dumps([x.hex() for x in images])],
        capture_output=True, text=True, timeout=300, env=child_env(TF_ENABLE_ONEDNN_OPTS="0"),
    )
    assert child.returncode == 0, tail(child.stderr)
    report = last_json_line(child.stdout)
    assert report["empty_shape"] == [0, 4]
    here = serve(loaded, ["red"] * 4, ["Red mug"] * 4, images)["probabilities"]
    np.testing.assert_allclose(np.array(report["probabilities"]), here, rtol=0, atol=1e-4)


def test_mismatched_batch_lengths_are_invalid_argument(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(loaded, ["a", "b"], ["a"], [b"", b""])


# --- the risky ones, in a child process -----------------------------------------------------------

CHILD = r"""
import base64, json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401

loaded = tf.saved_model.load(sys.argv[1])
serve, embed = loaded.signatures["serving_default"], loaded.signatures["embed_images"]
cases = json.load(open(sys.argv[2]))
report = {}
for name, encoded in cases.items():
    images = tf.constant([base64.b64decode(x) for x in encoded])
    n = int(images.shape[0])
    for signature, call in (
        ("serving_default", lambda: serve(query=tf.constant(["red"] * n), title=tf.constant(["Red sneaker"] * n),
                                          brand=tf.constant([""] * n), color=tf.constant([""] * n),
                                          image=images)),
        ("embed_images", lambda: embed(image=images)),
    ):
        try:
            out = call()
            result = "ok " + str(sorted(out))
        except tf.errors.InvalidArgumentError as e:
            result = "InvalidArgumentError: " + e.message.replace("\n", " ")
        print(name, signature, result[:300], flush=True)
        report[f"{name}/{signature}"] = result
print(json.dumps(report))
"""

GOOD = encode(fmt="PNG")
RISKY = {
    "corrupt_bytes": ([b"\x00\x01\x02garbage\xff"], "Unknown image file format"),
    "html_named_jpg": ([b"<html><body>404</body></html>"], "Unknown image file format"),
    "truncated_jpeg": ([encode(fmt="JPEG")[:120]], ""),
    "png_magic_only": ([b"\x89PNG\r\n\x1a\n"], ""),
    "one_corrupt_row_in_a_batch": ([GOOD, b"", b"garbage", GOOD], "Unknown image file format"),
    **{f"huge_{fmt}_header": ([data], "image refused")
       for fmt, data in huge_headers(50000).items()},
}


@pytest.mark.slow
def test_risky_images_give_invalid_argument_in_a_child_process(tiny_export, tmp_path):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps({k: [base64.b64encode(x).decode() for x in images]
                                 for k, (images, _) in RISKY.items()}))
    child = run_python(CHILD, str(tiny_export), str(cases), timeout=300)
    assert child.returncode == 0, f"the child crashed ({child.returncode}):\n{tail(child.stderr)}"
    report = last_json_line(child.stdout)
    for name, (_, expected) in RISKY.items():
        for signature in ("serving_default", "embed_images"):
            result = report[f"{name}/{signature}"]
            assert result.startswith("InvalidArgumentError: "), (name, signature, result)
            assert expected in result, (name, signature, result)
    for fmt in ("png", "jpeg", "gif", "bmp"):
        assert "[50000 50000]" in report[f"huge_{fmt}_header/serving_default"]
    assert "[16384 16384]" in report["huge_webp_header/serving_default"]
    assert "InvalidArgumentError" in child.stdout  # printed, not only returned


def test_inputs_of_different_row_counts_name_both(loaded):
    """#33 item 7: 3 rows of image_tokens with 2 of has_image failed at an internal Reshape
    naming neither input; a query column shorter than the title column likewise."""
    tokens = loaded.signatures["embed_images"](image=tf.constant([b""] * 3))["image_tokens"].numpy()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"one value per row: query has.*has_image has"):
        loaded.signatures["score_with_image_features"](
            query=tf.constant(["red"] * 3), title=tf.constant(["Red mug"] * 3), brand=tf.constant([""] * 3),
            color=tf.constant([""] * 3), image_tokens=tf.constant(tokens), has_image=tf.constant([0.0, 0.0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"one value per row: query has.*(title|brand) has"):
        serve(loaded, ["red"] * 2, ["Red mug"] * 3, [b""] * 2)


@pytest.mark.parametrize("bad", [[["red"]], [["red", "blue"]], "red"])
def test_a_query_that_is_not_1d_is_refused_naming_it(loaded, bad):
    """#33 item 7: `serving_default` accepted a 2-D `query=[["a"]]` (TF Serving checks no shapes,
    and a declared `[None]` folded the graph's own rank check away)."""
    rows = np.asarray(bad).reshape(-1).shape[0]
    fields = {k: tf.constant([""] * rows) for k in ("title", "brand", "color", "image")}
    for name in ("serving_default", "explain"):
        with pytest.raises(tf.errors.InvalidArgumentError, match="query must be 1-D: one value per row"):
            loaded.signatures[name](query=tf.constant(bad), **fields)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image must be 1-D"):
        loaded.signatures["embed_images"](image=tf.constant([[b""]]))
