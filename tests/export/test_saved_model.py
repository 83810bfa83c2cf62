"""The TF Serving export: layout, signatures, ops, warm-up records, atomic versions, verify."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf


@pytest.fixture(scope="module")
def loaded(tiny_export):
    import tensorflow_text  # noqa: F401

    return tf.saved_model.load(str(tiny_export))


def test_layout_and_warmup_records(tiny_export):
    from tensorflow_serving.apis import prediction_log_pb2

    assert (tiny_export / "saved_model.pb").is_file()
    assert (tiny_export / "variables").is_dir()
    warmup = tiny_export / "assets.extra" / "tf_serving_warmup_requests"
    records = list(tf.data.TFRecordDataset(str(warmup)).as_numpy_iterator())
    assert 0 < len(records) <= 1000
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    assert set(log.predict_log.request.inputs) == {"query", "title", "brand", "color", "image"}
    siblings = [p.name for p in tiny_export.parent.iterdir()]
    assert siblings == ["1"], f"staging folders left behind: {siblings}"


def test_signatures_take_raw_strings(loaded):
    sig = loaded.signatures["serving_default"]
    inputs = sig.structured_input_signature[1]
    # 1-D, checked when a request runs: declared without a rank so that the check is not folded (#33)
    assert {k: (v.dtype, v.shape.rank) for k, v in inputs.items()} == {
        "query": (tf.string, None),
        "title": (tf.string, None),
        "brand": (tf.string, None),
        "color": (tf.string, None),
        "image": (tf.string, None),
    }
    outputs = sig.structured_outputs
    assert outputs["probabilities"].dtype == tf.float32 and outputs["probabilities"].shape.as_list() == [None, 4]
    assert outputs["label"].dtype == tf.string and outputs["score"].dtype == tf.float32
    assert set(loaded.signatures) == {"serving_default", "embed_images", "score_with_image_features", "explain"}


def test_empty_image_is_scored_from_text(loaded):
    out = loaded.signatures["serving_default"](
        query=tf.constant(["red sneakers"]), title=tf.constant(["Red sneaker"]), brand=tf.constant([""]),
        color=tf.constant([""]), image=tf.constant([b""])
    )
    assert np.isfinite(out["probabilities"].numpy()).all()
    assert out["label"].numpy()[0].decode() in ("exact", "substitute", "complement", "irrelevant")


def test_cached_image_features_give_the_same_scores(loaded):
    from esr_tf.export.saved_model import sample_inputs

    x = sample_inputs()
    text = {k: tf.constant(x[k]) for k in ("query", "title", "brand", "color")}
    direct = loaded.signatures["serving_default"](**text, image=tf.constant(x["image"]))
    emb = loaded.signatures["embed_images"](image=tf.constant(x["image"]))
    cached = loaded.signatures["score_with_image_features"](
        **text, image_tokens=emb["image_tokens"], has_image=emb["has_image"]
    )
    np.testing.assert_allclose(cached["probabilities"].numpy(), direct["probabilities"].numpy(), atol=1e-6)


def test_only_stock_and_expected_tf_text_ops(tiny_export):
    from esr_tf.export.saved_model import EXPECTED_TF_TEXT_OPS, list_ops
    from esr_tf.export.verify import non_stock_ops

    ops = list_ops(tiny_export)
    assert sorted(non_stock_ops(ops) - EXPECTED_TF_TEXT_OPS) == []
    assert "FastWordpieceTokenizeWithOffsets" in ops & EXPECTED_TF_TEXT_OPS
    assert "RoundRobinTrim" not in ops  # missing from TF Serving <= 2.19


def test_existing_version_is_never_overwritten_unless_asked(tiny_trained, tiny_export):
    from esr_tf.export.saved_model import export_saved_model

    before = (tiny_export / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists"):
        export_saved_model(tiny_trained.model, tiny_export.parent.parent, model_name="esr", version=1)
    assert (tiny_export / "saved_model.pb").stat().st_mtime_ns == before


@pytest.mark.slow
def test_verify_passes_in_a_fresh_process_and_cpp(tiny_export, tmp_path):
    from esr_tf.export.cpp_client import cpp_toolchain_available
    from esr_tf.export.verify import format_report, verify_export

    use_cpp = cpp_toolchain_available() is None
    report = verify_export(tiny_export, cpp=use_cpp)
    text = format_report(report)
    assert report["ok"], text
    assert report["load"]["modules"] == {"keras_hub": False, "keras_nlp": False, "esr_tf": False}
    assert {c["signature"] for c in report["load"]["checks"]} == {
        "serving_default",
        "embed_images",
        "score_with_image_features",
        "explain",
    }
    assert all(c["max_abs_diff"] <= 1e-4 for c in report["load"]["checks"])
    assert "PASS" in text and "serving_default" in report["saved_model_cli"] or "inputs" in report["saved_model_cli"]
    quiet = format_report(report, signatures=False)  # what `esr-tf demo` prints without --verbose (#33)
    assert "saved_model_cli show" in text and "saved_model_cli show" not in quiet and "PASS" in quiet
    if use_cpp:
        assert report["cpp"]["ok"] and report["cpp"]["max_abs_diff"] <= 1e-4


def test_cli_help_lists_every_command(capsys):
    from esr_tf.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for command in ("demo", "train", "evaluate", "ablate", "export", "verify", "summary", "bench"):
        assert command in text
