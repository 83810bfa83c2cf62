"""Parameters and forward FLOPs per branch (`esr-tf summary`).

FLOPs come from TensorFlow's graph profiler on each sub-model traced at batch 1 (a multiply-add
counts as 2 FLOPs).

Example:
>>> from esr_tf.models.builder import build_relevance_model
>>> rows = branch_summary(build_relevance_model(text="tiny", image="tiny", image_size=32))
>>> [r["branch"] for r in rows]
['text_encoder', 'image_encoder', 'image_projector', 'fusion_head', 'total']
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _flops(model, batch_size: int, seq_len: int) -> int:
    """Forward FLOPs of `model` at `batch_size`, unknown lengths set to `seq_len`."""
    # Private: TF has no public graph freezing / FLOPs API (esr_tf.upstream: "tensorflow#32809").
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    def spec(t):
        return tf.TensorSpec([batch_size, *(seq_len if d is None else d for d in t.shape[1:])], t.dtype)

    specs = {k: spec(t) for k, t in model.input.items()} if isinstance(model.input, dict) else spec(model.input)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(specs)
    graph = convert_variables_to_constants_v2(fn).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=graph, options=options)
    return int(info.total_float_ops) if info is not None else 0


def _params(model) -> tuple[int, int]:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(sum(np.prod(w.shape) for w in model.weights))
    return trainable, total


def branch_summary(model, batch_size: int = 1) -> list[dict]:
    """One row per branch: parameters (trainable / total) and forward FLOPs per example."""
    seq_len = model.preprocessor.sequence_length if model.preprocessor is not None else 32
    rows = []
    for name in ("text_encoder", "image_encoder", "image_projector", "fusion_head"):
        sub = getattr(model, name)
        trainable, total = _params(sub)
        flops = _flops(sub, batch_size, seq_len)
        rows.append(
            {
                "branch": name,
                "trainable_params": trainable,
                "params": total,
                "flops": flops // batch_size,
            }
        )
    rows.append(
        {
            "branch": "total",
            "trainable_params": sum(r["trainable_params"] for r in rows),
            "params": sum(r["params"] for r in rows),
            "flops": sum(r["flops"] for r in rows),
        }
    )
    return rows


def format_summary(rows: list[dict]) -> str:
    lines = [f"{'branch':<16}{'trainable':>14}{'params':>14}{'GFLOPs/example':>16}"]
    for r in rows:
        lines.append(f"{r['branch']:<16}{r['trainable_params']:>14,}{r['params']:>14,}{r['flops'] / 1e9:>16.3f}")
    return "\n".join(lines)
