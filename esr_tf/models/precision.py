"""bfloat16 copies of the frozen encoders, for the feature pass on CPUs with bfloat16 matrix units.

With both backbones frozen, their outputs are computed once (the feature pass) and the head
trains on them. On Intel Xeons with AMX, `tf.matmul` 2048² runs 3-4x faster in bfloat16 (#17:
444 against 197 GFLOP/s; 1,118 against 302 on this project's test Xeon), so the pass may run in
bfloat16: `bfloat16_copy` gives an encoder
with the same (float32) weights whose layers compute under Keras's `mixed_bfloat16` policy
(matmuls and convolutions in bfloat16; LayerNorm, softmax and BatchNorm statistics in float32).
The model itself, and so its training graph and its export, stays float32.

Fast matmuls do not make a fast pass: `esr-tf bench --suite precision` on dev_photos measured
the bfloat16 text pass at 0.93x float32's time and the image pass at 1.38x on a Xeon with AMX
(where `tf.matmul` at BERT's shapes ran 3.3x faster in bfloat16: the elementwise ops, GELU,
casts and depthwise convolutions are slower in bfloat16 on CPU), and at 0.95x / 1.18x on an
AMD EPYC Zen 4 (AVX512_BF16, no AMX). So no CPU flag is taken to mean it pays: `"auto"` times
both on this machine before the pass and keeps bfloat16 only where the pass as a whole would
be at least `AUTO_SPEEDUP` times faster (`faster_precision`; see `FrozenEncoders.of`).

Example:
>>> check_precision("auto")
'auto'
>>> faster_precision({"float32": 1.88, "bfloat16": 1.74})  # dev_photos text pass, AMX Xeon, ms / pair
'float32'
"""

from __future__ import annotations

from pathlib import Path

import keras

PRECISIONS = ("float32", "bfloat16", "auto")
BFLOAT16_POLICY = "mixed_bfloat16"
AUTO_SPEEDUP = 1.15  # how much faster bfloat16 must time to be picked by "auto"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux `/proc/cpuinfo`); empty where that file is not readable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def check_precision(precision: str) -> str:
    """`precision` if it is one of `PRECISIONS`, else `ValueError`."""
    if precision not in PRECISIONS:
        raise ValueError(f"feature pass precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def faster_precision(seconds: dict[str, float]) -> str:
    """`"bfloat16"` where its estimated pass (`seconds`: precision -> seconds) is at least
    `AUTO_SPEEDUP` times faster than float32's, else `"float32"` (the default stays where the
    gain is within a timing's noise).

    >>> faster_precision({"float32": 10.0, "bfloat16": 9.5}), faster_precision({"float32": 10.0, "bfloat16": 5.0})
    ('float32', 'bfloat16')
    """
    return "bfloat16" if seconds["bfloat16"] * AUTO_SPEEDUP <= seconds["float32"] else "float32"


def bfloat16_copy(encoder: keras.Model) -> keras.Model:
    """A copy of `encoder` (its weights included) whose every layer computes in bfloat16.

    Only for inference: the copy's float32 weights are the encoder's values at the time of the
    call, not shared variables. Outputs are bfloat16; cast them back where they are stored.
    """
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(encoder))
    copy.set_weights(encoder.get_weights())
    # Nested backbones too (BERT inside `text_encoder`, EfficientNet inside its wrapper layer):
    # Keras has no public recursive walk over a model's layers.
    for layer in copy._flatten_layers(include_self=True, recursive=True):
        layer.dtype_policy = BFLOAT16_POLICY
    return copy
