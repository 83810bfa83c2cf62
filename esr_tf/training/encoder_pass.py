"""The frozen encoders' pass: tokenize once, BERT over each example, EfficientNet over each photo.

Both feature backends (`feature_cache.BackboneFeatures` in RAM, `feature_store.FeatureStore` on
disk) compute their features with these functions, and `backbone_fingerprint` /
`examples_digest` decide when computed features may be reused. `FrozenEncoders` picks the
precision the pass runs in (float32, or bfloat16 copies of the encoders).

Example:
>>> ids = tokenize_columns(model.preprocessor, catalogue.columns("train"), 256)  # doctest: +SKIP
>>> text = encode_text_rows(model.encode_text, ids, 64)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from esr_tf.constants import PRODUCT_TEXT_FIELDS
from esr_tf.models.precision import bfloat16_copy, check_precision, faster_precision
from esr_tf.models.relevance_backbone import TEXT_INPUTS
from esr_tf.preprocessing.pipeline import AUTOTUNE, require_columns

log = logging.getLogger("esr_tf.training")

# Columns whose values decide an example's features (and so whether stored ones can be reused).
DIGEST_KEYS = ("query", *PRODUCT_TEXT_FIELDS, "image", "label")


@dataclass(frozen=True)
class FrozenEncoders:
    """The encoders a feature pass runs: the model's own (float32), or bfloat16 copies of them
    (`models.precision`; the model, its training graph and its export stay float32).

    Example:
    >>> encoders = FrozenEncoders.of(model, "bfloat16")  # doctest: +SKIP
    >>> encoders.encode_text(packed)["sequence_output"].dtype  # doctest: +SKIP
    tf.bfloat16
    """

    text: keras.Model
    image: keras.Model
    precision: str = "float32"

    @classmethod
    def of(cls, model, precision: str = "float32", *, pairs: int = 1, photos: int = 0) -> FrozenEncoders:
        """`precision`: `"float32"` (the model's own encoders), `"bfloat16"` (copies) or `"auto"`:
        both timed here on a few blank batches, and the one whose pass over `pairs` examples and
        `photos` distinct photos would be faster (`models.precision.faster_precision`), logged."""
        own = cls(model.text_encoder, model.image_encoder)
        if check_precision(precision) == "float32":
            return own
        copies = cls(bfloat16_copy(model.text_encoder), bfloat16_copy(model.image_encoder), "bfloat16")
        if precision == "bfloat16":
            return copies
        length = model.preprocessor.sequence_length
        seconds = {e.precision: e.pass_seconds(length, pairs, photos if model.reads_photos else 0)
                   for e in (own, copies)}
        chosen = faster_precision(seconds)
        log.info("feature_pass_precision auto: %s (pass timed at %.1f s in float32, %.1f s in bfloat16)",
                 chosen, seconds["float32"], seconds["bfloat16"])
        return copies if chosen == "bfloat16" else own

    def pass_seconds(self, length: int, pairs: int, photos: int, *, batch: int = 32, repeats: int = 3) -> float:
        """Estimated seconds of a pass over `pairs` examples of `length` tokens and `photos`
        photos: the best of `repeats` timed blank batches of each encoder, after tracing."""
        text = {"token_ids": tf.zeros([batch, length], tf.int32), "segment_ids": tf.zeros([batch, length], tf.int32),
                "padding_mask": tf.ones([batch, length], tf.int32)}
        calls = [(traced_text_encoder(self.encode_text), text, pairs / batch)]
        if photos:
            images = tf.zeros([batch, *self.image.input.shape[1:]])
            calls.append((tf.function(lambda x: self.image(x, training=False)), images, photos / batch))
        total = 0.0
        for fn, inputs, batches in calls:
            tf.nest.map_structure(np.asarray, fn(inputs))  # traces
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                tf.nest.map_structure(np.asarray, fn(inputs))
                times.append(time.perf_counter() - start)
            total += min(times) * batches
        return total

    def encode_text(self, packed, training=None) -> dict:
        """`RelevanceModel.encode_text` through these encoders."""
        return self.text({k: packed[k] for k in TEXT_INPUTS}, training=training)


def backbone_fingerprint(model, precision: str = "float32") -> str:
    """Digest of the text and image encoders (layer types and weights) that features come from.

    Features are only valid for a head whose model has exactly these encoders: e.g. across
    `esr-tf ablate` modes with pretrained weights, but not from `image_only` (its BERT sees the
    query only) to `cross_attention`, nor across two random inits. The text packing
    (sequence length, product fields and their budgets) is part of it: it decides the tokens;
    so is a bfloat16 pass (`precision`, resolved): its outputs differ from float32 ones.
    """
    digest = hashlib.sha1()
    if precision != "float32":  # float32 fingerprints stay what they were
        digest.update(f"precision {precision}".encode())
    pre = model.preprocessor
    if pre is not None:
        digest.update(f"{pre.sequence_length} {pre.truncate} {sorted(pre.product_text.items())}".encode())
    for encoder in (model.text_encoder, model.image_encoder):
        digest.update(" ".join(type(layer).__name__ for layer in encoder.layers).encode())
        for weight in encoder.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def examples_digest(columns: Mapping[str, np.ndarray]) -> str:
    """Digest of the examples' query, product text, image path and label columns (those present).

    Features are reused only for the very same examples: e.g. two seeds' colour-hidden training
    copies can match in count and labels while their titles differ.
    """
    digest = hashlib.sha1()
    for key in DIGEST_KEYS:
        if key in columns:
            digest.update(key.encode())
            # value by value: `astype(str)` would copy the column as fixed-width UTF-32 (4 bytes
            # times the longest text per row: gigabytes for ESCI descriptions)
            for value in np.asarray(columns[key], dtype=object).tolist():
                digest.update(str(value).encode("utf-8", "surrogatepass") + b"\x00")
    return digest.hexdigest()


def distinct_photos(*parts: Mapping[str, np.ndarray]) -> list[str]:
    """Every distinct image path (not "") of the column sets' `image` columns, sorted."""
    return sorted({str(p) for cols in parts for p in np.asarray(cols["image"], dtype=object).tolist() if p})


def traced_text_encoder(encode_text, keys=("token_ids", "segment_ids", "padding_mask")):
    """`encode_text` as one `tf.function` over `[batch, length]` int32 ids of any size (traced
    once; reuse it across calls of `encode_text_rows`)."""
    spec = tf.TensorSpec([None, None], tf.int32)

    def encode(x):  # float32 out, also from a bfloat16 encoder: that is what gets stored
        out = encode_text(x, training=False)
        return {k: tf.cast(v, tf.float32) if v.dtype.is_floating else v for k, v in out.items()}

    return tf.function(encode, input_signature=[{k: spec for k in keys}])


def encode_text_rows(
    encode_text, ids: dict[str, np.ndarray], batch_size: int, verbose: int = 0, *, traced=None
) -> dict[str, np.ndarray]:
    """`encode_text` (`RelevanceModel.encode_text`, or `FrozenEncoders.encode_text`) outputs for
    packed ids, with the trailing padding cut off per batch.

    Query + title pairs are usually much shorter than `sequence_length`; examples are batched by
    length and each batch runs only up to its longest example (~40 % less BERT compute on the
    demo shop). Outputs beyond an example's length are zero; everything downstream masks them.
    `traced`: a `traced_text_encoder(encode_text)` from an earlier call, not traced again
    (`encode_text` may then be None).
    """
    encode = traced or traced_text_encoder(encode_text, tuple(ids))
    lengths = ids["padding_mask"].sum(axis=1)
    order = np.argsort(-lengths, kind="stable")
    n, full = ids["padding_mask"].shape
    out: dict[str, np.ndarray] = {}
    # Keras's own progress bar; verbose=2 (output not a terminal) prints one line at the end.
    progress = keras.utils.Progbar(n, verbose=verbose, unit_name="text") if verbose else None
    if verbose:  # names the stage: in a log, Keras's line alone is "3468/3468 - 21s - 6ms/text"
        print(f"encoding {n:,} texts (BERT)", flush=True)
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        width = max(1, int(lengths[rows].max()))
        result = encode({k: tf.constant(v[rows, :width]) for k, v in ids.items()})
        for key, value in result.items():
            value = value.numpy()
            if key not in out:
                out[key] = np.zeros((n, full, *value.shape[2:]), value.dtype)
            out[key][rows, :width] = value
        if progress is not None:
            progress.update(min(n, start + batch_size))
    return out


def tokenize_columns(preprocessor, columns: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Packed `token_ids`, `segment_ids`, `padding_mask` ([N, L] int32) of the query and the
    product fields the preprocessor reads (`KeyError` naming a field `columns` lacks)."""
    require_columns(columns, preprocessor.product_fields, "tokenize_columns (the product fields the model reads)")
    # The preprocessor's own traced `tokenize`, batch by batch: a `tf.data` map here would trace
    # a new graph per call (~17 MB of graph objects per feature-store shard, freed only by a
    # full garbage collection).
    text = {k: np.asarray(columns[k], dtype=object) for k in ("query", *preprocessor.product_fields)}
    n, step = len(text["query"]), max(batch_size, 1024)
    def batch(s: int) -> dict[str, tf.Tensor]:
        return {k: tf.constant(v[s : s + step].astype(str)) for k, v in text.items()}

    batches = [preprocessor.tokenize(b.pop("query"), b) for b in map(batch, range(0, max(n, 1), step))]
    return {k: np.concatenate([np.asarray(b[k]) for b in batches]).astype(np.int32) for k in batches[0]}


# Bytes: the alignment TF needs to wrap an array's memory in a tensor without copying it.
TENSOR_ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a `TENSOR_ALIGNMENT` boundary."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = np.empty(size + TENSOR_ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % TENSOR_ALIGNMENT
    return buffer[start : start + size].view(dtype).reshape(shape)


def is_aligned(array: np.ndarray) -> bool:
    """Whether TF can use `array`'s memory as a tensor's (`aligned_empty`)."""
    return array.flags.c_contiguous and array.ctypes.data % TENSOR_ALIGNMENT == 0


# One traced function per image encoder (weakly keyed): `predict_on_batch` retraced within a pass
# ("5 out of the last 80 calls ... triggered tf.function retracing") and again on every pass.
_PHOTO_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _photo_function(encoder: keras.Model) -> Callable:
    if encoder not in _PHOTO_FUNCTIONS:
        held = weakref.ref(encoder)  # a batch-size-agnostic trace after the first short batch
        _PHOTO_FUNCTIONS[encoder] = tf.function(lambda x: held()(x, training=False), reduce_retracing=True)
    return _PHOTO_FUNCTIONS[encoder]


# The photo pass's largest batch: EfficientNet's activations at 224 px, 64 photos a batch, held
# 0.95 GB beside a 0.3 GB table of 1,200 dev_colour photos, 16 a batch 0.22 GB, and the pass ran
# 10.3 s instead of 13.5 s (2 cores; #33).
PHOTO_BATCH = 16


def photo_feature_maps(model, paths: list[str], batch_size: int, verbose: int = 0, *,
                       encoder: keras.Model | None = None) -> np.ndarray:
    """`image_encoder` (or `encoder`, e.g. a bfloat16 copy) feature maps `[U, h, w, C]` float32 of
    image files, in `paths` order; one zero row when there are none (text_only, or no photos),
    for every example to point at.

    Written batch by batch (at most `PHOTO_BATCH` photos) into one `aligned_empty` table:
    `predict` would hold every batch's output and their concatenation at once (twice the table),
    and the training datasets wrap the aligned table without a copy of their own
    (`feature_cache.shared_tensor`)."""
    encoder = encoder or model.image_encoder
    batch_size = min(batch_size, PHOTO_BATCH)
    table = aligned_empty((max(len(paths), 1), *encoder.output.shape[1:]))
    if not paths:
        table[...] = 0.0
        return table
    decoder = model.preprocessor.image_decoder
    image_ds = (
        tf.data.Dataset.from_tensor_slices(np.array(paths))
        .map(lambda p: decoder(tf.io.read_file(p))[0], num_parallel_calls=AUTOTUNE)
        .batch(batch_size)
        .prefetch(AUTOTUNE)
    )
    if verbose:
        print(f"encoding {len(paths):,} photos (EfficientNet)", flush=True)
    progress = keras.utils.Progbar(len(paths), verbose=verbose)
    encode, start = _photo_function(encoder), 0
    for images in image_ds:
        maps = encode(images).numpy()
        table[start : start + len(maps)] = maps
        start += len(maps)
        progress.update(start)
    return table
