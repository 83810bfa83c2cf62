"""Canaries of `esr_tf.upstream.KNOWN_ISSUES`: each fails once upstream changes what esr_tf
works around (fixed, or the private piece moved), naming the entry to revisit.

The registry itself is checked too: every entry's canary is an existing test function and
every workaround an importable object.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest

from esr_tf.upstream import KNOWN_ISSUES

ROOT = Path(__file__).resolve().parents[1]
TINY_BERT = {"vocabulary_size": 40, "num_layers": 1, "num_heads": 2, "hidden_dim": 8,
             "intermediate_dim": 16, "max_sequence_length": 16}


def _still(issue: str) -> str:
    return (f"upstream changed: revisit esr_tf.upstream.KNOWN_ISSUES[{issue!r}] and its workaround "
            f"{KNOWN_ISSUES[issue].workaround}")


@pytest.mark.parametrize("issue", sorted(KNOWN_ISSUES))
def test_every_canary_is_an_existing_test(issue):
    path, _, name = KNOWN_ISSUES[issue].canary.partition("::")
    assert name.startswith("test_"), KNOWN_ISSUES[issue].canary
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert name in names, f"{issue}: no test {name} in {path}"


@pytest.mark.parametrize("issue", sorted(KNOWN_ISSUES))
def test_every_workaround_is_importable(issue):
    module, _, attribute = KNOWN_ISSUES[issue].workaround.rpartition(".")
    assert hasattr(importlib.import_module(module), attribute), KNOWN_ISSUES[issue].workaround
    assert KNOWN_ISSUES[issue].link.startswith("https://github.com/")


def test_upstream_bert_backbone_still_hard_codes_tanh_gelu():
    from keras_hub.src.utils.keras_utils import gelu_approximate

    issue = "keras-hub-bert-tanh-gelu"
    parameters = inspect.signature(keras_hub.models.BertBackbone.__init__).parameters
    assert not any("activation" in p for p in parameters), _still(issue)
    backbone = keras_hub.models.BertBackbone(**TINY_BERT)
    for layer in backbone.transformer_layers:
        # The workaround sets exactly these two attributes.
        assert layer.activation is gelu_approximate, _still(issue)
        assert layer._feedforward_intermediate_dense.activation is gelu_approximate, _still(issue)


def test_upstream_efficientnet_still_pads_depthwise_symmetrically():
    from keras_hub.src.models.efficientnet.efficientnet_backbone import EfficientNetBackbone
    from keras_hub.src.utils.timm import convert_efficientnet

    from esr_tf.models.backbones import lite0_weights
    from esr_tf.models.backbones.efficientnet_lite import EfficientNetLiteBackbone

    issue = "keras-hub-efficientnet-symmetric-padding"
    # Padding options upstream has today: the stem's only, none for the depthwise convolutions.
    padding = {p for p in inspect.signature(EfficientNetBackbone.__init__).parameters if "padding" in p}
    assert padding == {"include_stem_padding", "stem_conv_padding"}, _still(issue)
    # The override mirrors the private method's signature argument for argument.
    parent = list(inspect.signature(EfficientNetBackbone._apply_efficientnet_block).parameters)
    assert parent == list(inspect.signature(EfficientNetLiteBackbone._apply_efficientnet_block).parameters)
    assert callable(convert_efficientnet.convert_backbone_config) and callable(convert_efficientnet.convert_weights)
    config = convert_efficientnet.convert_backbone_config(lite0_weights.TIMM_CONFIG)
    symmetric = EfficientNetLiteBackbone(**config, depthwise_padding="symmetric", input_shape=(32, 32, 3))
    assert any(layer.name.endswith("dwconv_pad") for layer in symmetric.layers), _still(issue)


def test_upstream_tokenizer_from_preset_still_refuses_bert_subclasses(tmp_path):
    from keras_hub.src.utils.preset_utils import get_preset_loader

    from esr_tf.models.backbones.exact_gelu_bert import ExactGeluBertBackbone
    from esr_tf.models.backbones.text_backbone import _builtin_vocabulary

    vocabulary = _builtin_vocabulary()
    ExactGeluBertBackbone(**{**TINY_BERT, "vocabulary_size": len(vocabulary)}).save_to_preset(str(tmp_path))
    keras_hub.models.BertTokenizer(vocabulary=vocabulary).save_to_preset(str(tmp_path))
    with pytest.raises(ValueError):  # if this passes, from_preset accepts subclasses: drop the loader call
        keras_hub.models.BertTokenizer.from_preset(str(tmp_path))
    tokenizer = get_preset_loader(str(tmp_path)).load_tokenizer(keras_hub.models.BertTokenizer)
    assert tokenizer.vocabulary_size() == len(vocabulary)


def test_upstream_keras_hub_still_lacks_safetensors_and_keeps_convert_bert():
    from keras_hub.src.utils.transformers import convert_bert

    issue = "keras-hub-hf-loader-needs-safetensors"
    requires = importlib.metadata.requires("keras-hub") or []
    declared = [r for r in requires if r.split(";")[0].strip().lower().startswith("safetensors")
                and "extra" not in r]
    assert not declared, _still(issue)
    assert callable(convert_bert.convert_backbone_config) and callable(convert_bert.convert_weights)


def test_upstream_tensorflow_still_freezes_graphs_only_privately():
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    issue = "tensorflow#32809"
    public = [tf.graph_util, tf.compat.v1.graph_util, tf.experimental, tf.profiler.experimental]
    assert not any(hasattr(m, "convert_variables_to_constants_v2") for m in public), _still(issue)
    assert callable(convert_variables_to_constants_v2)


def test_upstream_keras_predict_still_has_no_local_option():
    import tensorflow as tf

    issue = "keras-predict-local-under-multiworker"
    parameters = inspect.signature(keras.Model.predict).parameters
    assert not any("distribut" in p or "local" in p for p in parameters), _still(issue)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    # local_predict relies on this private attribute and on the public property's fallback.
    assert model._distribute_strategy is strategy, _still(issue)
    model._distribute_strategy = None
    assert model.distribute_strategy is tf.distribute.get_strategy()
    assert model.predict(np.ones((3, 2), "float32"), verbose=0).shape == (3, 1)


def test_upstream_tensorflow_op_registry_is_still_private():
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    issue = "tensorflow-op-registry-private"
    assert op_def_registry.get("MatMul") is not None and op_def_registry.get("NoSuchOpEver") is None
    public = [tf.experimental, tf.sysconfig, tf.config.experimental, tf.compat.v1]
    assert not any(hasattr(m, "op_def_registry") for m in public), _still(issue)


def test_upstream_keras_variables_still_save_as_unread_copies(tmp_path):
    """keras-team/keras#20095: a tracked Keras layer's variables are saved as copies no function
    reads. A TF1 session load (the MetaGraph + restore op, as C++ LoadSavedModel and
    `saved_model_cli run` load) then runs a signature that reads a variable nothing restored."""
    import tensorflow as tf

    from esr_tf.export.archive import ServingArchive

    def run_as_cpp_loads(path) -> np.ndarray:
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            meta = tf.compat.v1.saved_model.load(session, ["serve"], str(path))
            signature = meta.signature_def["serving_default"]
            (name, output), = signature.outputs.items()
            return session.run(output.name, {signature.inputs["x"].name: np.ones((1, 3), np.float32)})

    layer = keras.layers.Dense(2, name="canary_dense")
    layer.build((None, 3))
    fn = tf.function(lambda x: layer(x), input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")],
                     autograph=False)
    module = tf.Module()
    module.layer = layer
    tf.saved_model.save(module, str(tmp_path / "tracked"), signatures={"serving_default": fn})
    try:
        run_as_cpp_loads(tmp_path / "tracked")
    except tf.errors.FailedPreconditionError as error:
        assert "Could not find variable canary_dense" in str(error)
    else:
        pytest.fail(_still("keras-team/keras#20095"))
    ServingArchive({"serving_default": fn}).write_out(tmp_path / "archive")
    want = np.ones((1, 3), np.float32) @ layer.kernel.numpy() + layer.bias.numpy()
    np.testing.assert_allclose(run_as_cpp_loads(tmp_path / "archive"), want, rtol=1e-6)
