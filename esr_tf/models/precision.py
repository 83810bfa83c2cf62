"""bfloat16 copies of the frozen encoders, for the feature pass on CPUs with bfloat16 matrix units.

With both backbones frozen, their outputs are computed once (the feature pass) and the head
trains on them. On Intel Xeons with AMX, `tf.matmul` 2048² runs at 444 GFLOP/s in bfloat16
against 197 in float32 (#17), so the pass can run there in bfloat16: `bfloat16_copy` gives an
encoder with the same (float32) weights whose layers compute under Keras's `mixed_bfloat16`
policy (matmuls and convolutions in bfloat16; LayerNorm, softmax and BatchNorm statistics in
float32). The model itself, and so its training graph and its export, stays float32.

`"auto"` picks bfloat16 only where the CPU has AMX tiles (`amx_bf16`). With AVX512_BF16 alone
(AMD EPYC Zen 4) it does not pay: `esr-tf bench --suite precision` on dev_photos measured the
text pass at 0.95x float32's time and the image pass at 1.18x; a CPU without either emulates
bfloat16 slowly.

Example:
>>> resolve_precision("float32")
'float32'
>>> resolve_precision("auto") in ("float32", "bfloat16")
True
"""

from __future__ import annotations

from pathlib import Path

import keras

PRECISIONS = ("float32", "bfloat16", "auto")
BFLOAT16_POLICY = "mixed_bfloat16"


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


def resolve_precision(precision: str, flags: frozenset[str] | None = None) -> str:
    """`"float32"` or `"bfloat16"`: `precision` itself, or for `"auto"` bfloat16 where the CPU
    has AMX bfloat16 tiles (`flags`: `cpu_flags()` unless given)."""
    if precision not in PRECISIONS:
        raise ValueError(f"feature pass precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bfloat16" if "amx_bf16" in (cpu_flags() if flags is None else flags) else "float32"


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
