"""Registry of the upstream bugs and gaps that esr_tf works around, each with a canary test.

Every entry names the bug (or the missing public API that makes esr_tf reach into a private
one), the versions it was seen with, where esr_tf works around it and the test that fails once
upstream changes (fixed, or the private piece moved), so the workaround gets revisited. Where no
upstream issue was found, the link is the upstream source the workaround depends on and the
summary says "no upstream issue found". Workarounds stay small and live where the entry says;
nothing here patches anything. `tests/test_upstream.py` checks every canary exists.

Example:
>>> KNOWN_ISSUES["onednn-conv2d-empty-batch"].workaround
'esr_tf.models.photo_rows.GatherPhotoRows'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UpstreamIssue:
    """One upstream bug: what it is, where it is tracked, where esr_tf works around it."""

    summary: str
    link: str
    seen_with: str
    workaround: str
    canary: str


KNOWN_ISSUES: dict[str, UpstreamIssue] = {
    "onednn-conv2d-empty-batch": UpstreamIssue(
        summary=(
            "With oneDNN on (TensorFlow's default on x86 CPUs), Conv2D on an empty batch returns "
            "the input's shape ([0, 8, 8, 3] for 8 filters), so the next BatchNorm / bias add "
            "fails with 'Incompatible shapes: [8] vs. [0, 8, 8, 3]'. Seen on Intel Xeon (AMX) "
            "and AMD EPYC (Zen 4) alike; TF_ENABLE_ONEDNN_OPTS=0 gives the right shape. No "
            "TensorFlow issue for Conv2D yet; the same defect was fixed for Conv3D in the link."
        ),
        link="https://github.com/tensorflow/tensorflow/pull/30968",
        seen_with="tensorflow 2.21.0 (oneDNN CPU kernels)",
        workaround="esr_tf.models.photo_rows.GatherPhotoRows",
        canary="tests/models/test_photo_rows.py::test_upstream_onednn_conv2d_still_breaks_empty_batches",
    ),
    # The two Keras multi-worker patches of training/distribute.py's _PATCHES, one canary.
    **{
        f"keras-team/keras#{number}": UpstreamIssue(
            summary=summary,
            link=f"https://github.com/keras-team/keras/issues/{number}",
            seen_with="keras 3.15",
            workaround=f"esr_tf.training.distribute.{workaround}",
            canary="tests/training/test_distribute.py::test_upstream_keras_still_needs_the_workarounds",
        )
        for number, summary, workaround in (
            (20329, "fit under MultiWorkerMirroredStrategy fails on nested (dict) batches",
             "_first_replica_symbolic_build"),
            (20585, "multi-worker reduce_per_replica reduces scalar losses with axis=0",
             "_scalar_safe_reduce_per_replica"),
        )
    },
    "keras-hub-bert-tanh-gelu": UpstreamIssue(
        summary=(
            "keras_hub.models.BertBackbone hard-codes the tanh approximation of GELU "
            "(gelu_approximate) in every TransformerEncoder, with no constructor argument; HF "
            "checkpoints with hidden_act='gelu' (all-MiniLM-L6-v2) use the exact erf GELU, and "
            "the approximation moves MiniLM's pooled outputs by ~1e-4. The workaround sets the "
            "activation of each layer's private _feedforward_intermediate_dense after "
            "construction. No upstream issue found (keras-hub#1284 kept 'gelu' exact for T5 only)."
        ),
        link="https://github.com/keras-team/keras-hub/blob/master/keras_hub/src/models/bert/bert_backbone.py",
        seen_with="keras-hub 0.32.0",
        workaround="esr_tf.models.backbones.exact_gelu_bert.ExactGeluBertBackbone",
        canary="tests/test_upstream.py::test_upstream_bert_backbone_still_hard_codes_tanh_gelu",
    ),
    "keras-hub-efficientnet-symmetric-padding": UpstreamIssue(
        summary=(
            "keras_hub EfficientNetBackbone's inverted-residual block always pads depthwise "
            "convolutions symmetrically (ZeroPadding2D k//2, PyTorch style) and offers no TF "
            "'same' option, which the TF-trained EfficientNet-Lite0 weights need. The "
            "workaround overrides the private EfficientNetBackbone._apply_efficientnet_block "
            "(same signature, same layer names) and ports weights with the private "
            "keras_hub.src.utils.timm.convert_efficientnet. No upstream issue found."
        ),
        link=("https://github.com/keras-team/keras-hub/blob/master/keras_hub/src/models/efficientnet/"
              "efficientnet_backbone.py"),
        seen_with="keras-hub 0.32.0",
        workaround="esr_tf.models.backbones.efficientnet_lite.EfficientNetLiteBackbone",
        canary="tests/test_upstream.py::test_upstream_efficientnet_still_pads_depthwise_symmetrically",
    ),
    "keras-hub-tokenizer-preset-class-check": UpstreamIssue(
        summary=(
            "BertTokenizer.from_preset refuses a preset whose backbone class is a subclass of "
            "BertBackbone (a saved ExactGeluBertBackbone); the private preset loader underneath "
            "(keras_hub.src.utils.preset_utils.get_preset_loader(...).load_tokenizer) does not "
            "care, so esr_tf calls it. keras-hub#2276 (open) loosens the class check."
        ),
        link="https://github.com/keras-team/keras-hub/pull/2276",
        seen_with="keras-hub 0.32.0",
        workaround="esr_tf.models.backbones.text_backbone._from_local_folder",
        canary="tests/test_upstream.py::test_upstream_tokenizer_from_preset_still_refuses_bert_subclasses",
    ),
    "keras-hub-hf-loader-needs-safetensors": UpstreamIssue(
        summary=(
            "KerasHub reads HF folders through SafetensorLoader, which needs the safetensors "
            "package that keras-hub does not declare; esr_tf feeds the private converter "
            "keras_hub.src.utils.transformers.convert_bert from a small numpy safetensors "
            "reader instead. No upstream issue found."
        ),
        link=("https://github.com/keras-team/keras-hub/blob/master/keras_hub/src/utils/transformers/"
              "safetensor_utils.py"),
        seen_with="keras-hub 0.32.0",
        workaround="esr_tf.models.backbones.text_backbone._SafetensorsReader",
        canary="tests/test_upstream.py::test_upstream_keras_hub_still_lacks_safetensors_and_keeps_convert_bert",
    ),
    "tensorflow#32809": UpstreamIssue(
        summary=(
            "TensorFlow 2 has no public API to count a model's FLOPs: the profiler needs a "
            "frozen graph, and the function that freezes a concrete function "
            "(convert_variables_to_constants_v2) is only importable from tensorflow.python."
        ),
        link="https://github.com/tensorflow/tensorflow/issues/32809",
        seen_with="tensorflow 2.21.0",
        workaround="esr_tf.models.summary._flops",
        canary="tests/test_upstream.py::test_upstream_tensorflow_still_freezes_graphs_only_privately",
    ),
    "tensorflow-op-registry-private": UpstreamIssue(
        summary=(
            "TensorFlow has no public way to ask whether an op is registered (stock) or comes "
            "from a custom-op library; the export check asks the private "
            "tensorflow.python.framework.op_def_registry in a process without TF-Text. No "
            "upstream issue found."
        ),
        link="https://github.com/tensorflow/tensorflow/blob/master/tensorflow/python/framework/op_def_registry.py",
        seen_with="tensorflow 2.21.0",
        workaround="esr_tf.export.verify.non_stock_ops",
        canary="tests/test_upstream.py::test_upstream_tensorflow_op_registry_is_still_private",
    ),
    "keras-team/keras#20095": UpstreamIssue(
        summary=(
            "A Keras 3 model reached through object tracking (an attribute of a tf.Module, or "
            "ExportArchive.track(model)) is saved with a new tf.Variable per Keras variable, "
            "copied from the one the traced functions read: the checkpoint restores the copies, "
            "so C++ LoadSavedModel (TF Serving) fails with 'Could not find variable ...' while "
            "Python's loader works, and ExportArchive.track(model) stores every weight twice. "
            "The workaround saves a root that tracks exactly the tf.Variables the signatures read."
        ),
        link="https://github.com/keras-team/keras/issues/20095",
        seen_with="keras 3.15.1, tensorflow 2.21.0",
        workaround="esr_tf.export.archive.ServingArchive",
        canary="tests/test_upstream.py::test_upstream_keras_variables_still_save_as_unread_copies",
    ),
    "keras-predict-local-under-multiworker": UpstreamIssue(
        summary=(
            "Keras' predict under MultiWorkerMirroredStrategy always shards the data and "
            "gathers every batch across workers, with no option to predict locally (2-3x "
            "slower for the feature cache each worker needs whole). The workaround clears the "
            "private Model._distribute_strategy for the block. No upstream issue found."
        ),
        link="https://github.com/keras-team/keras/blob/master/keras/src/backend/tensorflow/trainer.py",
        seen_with="keras 3.15.1",
        workaround="esr_tf.training.distribute.local_predict",
        canary="tests/test_upstream.py::test_upstream_keras_predict_still_has_no_local_option",
    ),
}
