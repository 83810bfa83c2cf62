"""Registry of the upstream bugs that esr_tf works around, each with a canary test.

Every entry names the bug, the versions it was seen with, where esr_tf works around it and the
test that fails once upstream fixes it (so the workaround gets removed). Workarounds stay small
and live where the entry says; nothing here patches anything.

Example:
>>> KNOWN_ISSUES["onednn-conv2d-empty-batch"].workaround
'esr_tf.models.fusion_layers.GatherPhotoRows'
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
        workaround="esr_tf.models.fusion_layers.GatherPhotoRows",
        canary="tests/models/test_photo_rows.py::test_upstream_onednn_conv2d_still_breaks_empty_batches",
    ),
    "keras-team/keras#20329": UpstreamIssue(
        summary="fit under MultiWorkerMirroredStrategy fails on nested (dict) batches",
        link="https://github.com/keras-team/keras/issues/20329",
        seen_with="keras 3.15",
        workaround="esr_tf.training.distribute._first_replica_symbolic_build",
        canary="tests/training/test_distribute.py::test_upstream_keras_still_needs_the_workarounds",
    ),
    "keras-team/keras#20585": UpstreamIssue(
        summary="multi-worker reduce_per_replica reduces scalar losses with axis=0",
        link="https://github.com/keras-team/keras/issues/20585",
        seen_with="keras 3.15",
        workaround="esr_tf.training.distribute._scalar_safe_reduce_per_replica",
        canary="tests/training/test_distribute.py::test_upstream_keras_still_needs_the_workarounds",
    ),
}
