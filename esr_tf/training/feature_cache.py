"""Frozen-backbone outputs computed once and reused across epochs.

With both backbones frozen, every epoch would recompute the same BERT and EfficientNet outputs;
on 2 CPU cores they are ~90 % of a training step. `BackboneFeatures.compute` runs the model's own
`text_encoder` once per example and `image_encoder` once per distinct photo (photos repeat across
queries), then `dataset()` feeds `RelevanceModel.head_model()`, which shares its weights with the
full model, so the trained model and its export are exactly the full graph.

Example:
>>> feats = BackboneFeatures.compute(model, catalogue.columns("train"))  # doctest: +SKIP
>>> model.head_model().fit(feats.dataset(batch_size=32, shuffle=True), epochs=3)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import keras
import numpy as np
import tensorflow as tf

from esr_tf.constants import PRODUCT_TEXT_FIELDS
from esr_tf.labels import ESCI
from esr_tf.models.precision import bfloat16_copy, check_precision, faster_precision
from esr_tf.models.relevance_backbone import TEXT_INPUTS
from esr_tf.preprocessing.pipeline import AUTOTUNE, require_columns

log = logging.getLogger("esr_tf.training")

# Columns whose values decide an example's features (and so whether stored ones can be reused).
DIGEST_KEYS = ("query", *PRODUCT_TEXT_FIELDS, "image", "label")


def targets(labels, gains) -> dict:
    """Keras wants a target per model output: the label, and its ranking gain for `score`."""
    if isinstance(labels, np.ndarray):
        return {"probabilities": labels, "score": np.asarray(gains, np.float32)[labels]}
    return {"probabilities": labels, "score": tf.gather(tf.constant(gains, tf.float32), labels)}


def targets_and_weights(labels, gains, sample_weights=None) -> tuple:
    """`(targets,)`, or `(targets, sample weights)` with each example's weight on both outputs.

    The one place both training paths (cached features and the tf.data pipeline) get theirs.
    """
    if sample_weights is None:
        return (targets(labels, gains),)
    return targets(labels, gains), {"probabilities": sample_weights, "score": sample_weights}


# The head's per-token inputs: what a batch cuts to its own length (`cut_text`).
TEXT_KEYS = ("sequence_output", "text_mask", "token_ids", "segment_ids")
# Under XLA every batch length compiles a program of its own: lengths are rounded up to this
# (at most 4 programs at L=32). Without XLA, one trace serves every length.
XLA_LENGTH_MULTIPLE = 8


def length_multiple_for(model: keras.Model) -> int:
    """`length_multiple` for the datasets a compiled `model` trains or predicts on."""
    return XLA_LENGTH_MULTIPLE if getattr(model, "jit_compile", False) else 1


def text_extent(text_mask: np.ndarray) -> np.ndarray:
    """`[N]`: one past each row's last text token (1 for a row without any)."""
    mask = np.asarray(text_mask) != 0
    last = mask.shape[1] - np.argmax(mask[:, ::-1], axis=1)
    return np.where(mask.any(axis=1), last, 1)


def batch_length(longest, multiple: int, full: int):
    """A batch's text length: its `longest` example rounded up to `multiple`, at most `full`."""
    longest = tf.maximum(tf.cast(longest, tf.int32), 1)
    return tf.minimum(full, (longest + multiple - 1) // multiple * multiple)


def cut_text(x: dict, full: int, multiple: int | None) -> dict:
    """`x` with its `TEXT_KEYS` (`full` tokens long) cut to the batch's longest text
    (`batch_length`); unchanged when `multiple` is None.

    Every position past an example's text is masked in the head, so the outputs are the same
    as at the full length: the cut only skips work on padding (the head's step runs ~1.35x as
    many examples a second at 12 tokens as at 32, 2-core Xeon).
    """
    if multiple is None:
        return x
    mask = x["text_mask"]
    used = tf.reduce_any(tf.not_equal(mask, 0), axis=0)  # columns any example's text reaches
    last = tf.reduce_max(tf.where(used, tf.range(1, tf.shape(mask)[1] + 1), 0))
    length = batch_length(last, multiple, full)
    return {**x, **{k: x[k][:, :length] for k in TEXT_KEYS}}


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


def photo_feature_maps(model, paths: list[str], batch_size: int, verbose: int = 0, *,
                       encoder: keras.Model | None = None) -> np.ndarray:
    """`image_encoder` (or `encoder`, e.g. a bfloat16 copy) feature maps `[U, h, w, C]` float32 of
    image files, in `paths` order; one zero row when there are none (text_only, or no photos),
    for every example to point at."""
    if not paths:
        return np.zeros((1, *model.image_encoder.output.shape[1:]), np.float32)
    decoder = model.preprocessor.image_decoder
    image_ds = (
        tf.data.Dataset.from_tensor_slices(np.array(paths))
        .map(lambda p: decoder(tf.io.read_file(p))[0], num_parallel_calls=AUTOTUNE)
        .batch(batch_size)
        .prefetch(AUTOTUNE)
    )
    return (encoder or model.image_encoder).predict(image_ds, verbose=verbose).astype(np.float32)


@dataclass
class BackboneFeatures:
    """Per-example BERT outputs plus a table of per-photo feature maps."""

    sequence_output: np.ndarray  # [N, L, H] float32
    text_mask: np.ndarray  # [N, L] int32
    token_ids: np.ndarray  # [N, L] int32
    segment_ids: np.ndarray  # [N, L] int32
    image_index: np.ndarray  # [N] int32 row of `feature_maps` (0 when there is no photo)
    has_image: np.ndarray  # [N] float32
    feature_maps: np.ndarray  # [U, h, w, C] float32
    labels: np.ndarray | None = None  # [N] int32
    source: str = ""  # `backbone_fingerprint` of the model that computed them
    photos: bool = True  # False: text_only features, `feature_maps` is one zero row
    examples: str = ""  # `examples_digest` of the columns they were computed from ("" unknown)

    @classmethod
    def compute(
        cls, model, columns: Mapping[str, np.ndarray], *, batch_size: int = 64, verbose: int = 0,
        precision: str = "float32", encoders: FrozenEncoders | None = None,
    ):
        """`precision`: the encoders' (`FrozenEncoders.of`), or `encoders` already made from
        `model`; the outputs are float32 either way."""
        paths = [str(p) for p in np.asarray(columns["image"], dtype=object).tolist()]
        unique = distinct_photos(columns) if model.reads_photos else []
        encoders = encoders or FrozenEncoders.of(model, precision, pairs=len(paths), photos=len(unique))
        ids = tokenize_columns(model.preprocessor, columns, batch_size)
        text = encode_text_rows(encoders.encode_text, ids, batch_size, verbose)
        row = {p: i for i, p in enumerate(unique)}
        image_index = np.array([row.get(p, 0) for p in paths], dtype=np.int32)
        has_image = np.array([1.0 if p else 0.0 for p in paths], dtype=np.float32)
        feature_maps = photo_feature_maps(model, unique, batch_size, verbose, encoder=encoders.image)
        labels = np.asarray(columns["label"], np.int32) if "label" in columns else None
        return cls(
            source=backbone_fingerprint(model, encoders.precision),
            photos=model.reads_photos,
            sequence_output=np.asarray(text["sequence_output"], np.float32),
            text_mask=np.asarray(text["text_mask"], np.int32),
            token_ids=ids["token_ids"],
            segment_ids=ids["segment_ids"],
            image_index=image_index,
            has_image=has_image,
            feature_maps=feature_maps,
            labels=labels,
            examples=examples_digest(columns),
        )

    @classmethod
    def compute_splits(
        cls, model, catalogue, splits: tuple[str, ...] = ("train", "valid", "test"), **kwargs
    ) -> dict[str, BackboneFeatures]:
        """Features of several catalogue splits in one pass (see `compute_parts`)."""
        return cls.compute_parts(model, {s: catalogue.columns(s) for s in splits}, **kwargs)

    @classmethod
    def compute_parts(
        cls, model, parts: Mapping[str, Mapping[str, np.ndarray]], **kwargs
    ) -> dict[str, BackboneFeatures]:
        """Features of several named column sets in one pass (empty ones are left out).

        Photos repeat across splits, so each distinct photo goes through the image backbone once,
        and each backbone is traced once instead of once per split.
        """
        parts = {s: cols for s, cols in parts.items() if len(cols["query"])}
        if not parts:
            return {}
        keys = [k for k in DIGEST_KEYS if all(k in c for c in parts.values())]
        joined = {k: np.concatenate([np.asarray(c[k]) for c in parts.values()]) for k in keys}
        everything = cls.compute(model, joined, **kwargs)
        out, start = {}, 0
        for split, cols in parts.items():
            stop = start + len(cols["query"])
            out[split] = replace(everything.take(slice(start, stop)), examples=examples_digest(cols))
            start = stop
        return out

    def take(self, rows) -> BackboneFeatures:
        """The examples `rows` (a slice or index array); the photo table is shared, not copied."""
        per_example = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("feature_maps", "source", "photos", "examples")
        }
        sliced = {k: None if v is None else v[rows] for k, v in per_example.items()}
        return replace(self, examples="", **sliced)

    def usable_by(self, model, fingerprint: str | None = None) -> bool:
        """Whether `model`'s head may train on these features (same encoders, photos if needed).

        `fingerprint`: `backbone_fingerprint(model)` if already known (it hashes every weight).
        """
        fingerprint = fingerprint or backbone_fingerprint(model)
        return self.source == fingerprint and (self.photos or not model.reads_photos)

    def __len__(self) -> int:
        return len(self.image_index)

    def dataset(
        self,
        *,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
        repeat: bool = False,
        class_weights: np.ndarray | None = None,
        with_labels: bool = True,
        gains: tuple[float, ...] = ESCI.gains,
        drop_remainder: bool = False,
        workers: int = 1,
        length_multiple: int | None = 1,
    ) -> tf.data.Dataset:
        """Batches of `head_model()` inputs with `targets_and_weights` (`class_weights`: one
        weight per label, or none), as `FeatureStore.dataset` gives them. `workers` changes
        nothing here: every worker holds all rows in one seeded order and keeps its share.

        Each batch's text is cut to its longest example, rounded up to `length_multiple`
        (`length_multiple_for` the compiled model; None keeps the full sequence length)."""
        x = {
            "sequence_output": self.sequence_output,
            "text_mask": self.text_mask,
            "token_ids": self.token_ids,
            "segment_ids": self.segment_ids,
            "image_index": self.image_index,
            "has_image": self.has_image,
        }
        parts: tuple = (x,)
        if with_labels:
            w = None if class_weights is None else np.asarray(class_weights, np.float32)[self.labels]
            parts += targets_and_weights(self.labels, gains, w)
        ds = tf.data.Dataset.from_tensor_slices(parts)
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        table = tf.constant(self.feature_maps)
        full = self.text_mask.shape[1]

        @tf.autograph.experimental.do_not_convert  # plain TF ops; AutoGraph only warns about the closure
        def gather(x, *rest):
            x = cut_text(dict(x), full, length_multiple)
            x["feature_map"] = tf.gather(table, x.pop("image_index"))
            return (x, *rest)

        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds.map(gather, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
