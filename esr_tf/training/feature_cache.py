"""Frozen-backbone outputs computed once and reused across epochs: the in-RAM backend.

The encoder pass itself (tokenize, BERT per example, EfficientNet per distinct photo) is
`training.encoder_pass`, shared with the on-disk backend (`training.feature_store`).

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

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf

from esr_tf.labels import ESCI
from esr_tf.preprocessing.pipeline import AUTOTUNE
from esr_tf.training.encoder_pass import (
    DIGEST_KEYS,
    FrozenEncoders,
    aligned_empty,
    backbone_fingerprint,
    distinct_photos,
    encode_text_rows,
    examples_digest,
    is_aligned,
    photo_feature_maps,
    tokenize_columns,
)

log = logging.getLogger("esr_tf.training")


def shared_tensor(array: np.ndarray) -> tf.Tensor:
    """`array` as a tensor for a dataset to gather from, sharing the array's memory.

    `from_tensor_slices` or a `tf.constant` would copy it (the photo table, 1.1 GB for dev_colour's
    4,534 photos, or BERT's outputs) into each of a run's train, valid and test datasets, and the
    copies outlive them until garbage collection. `BackboneFeatures` keeps its large arrays
    aligned (`aligned_empty`), so the tensor wraps them (DLPack) and keeps them alive for as long
    as the dataset does."""
    if not is_aligned(array) or array.dtype != np.float32:
        raise ValueError("shared_tensor: the array must be an aligned float32 array (aligned_empty)")
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


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
class Batching:
    """How a feature backend batches a split for `head_model()`: the options of `dataset()`,
    the same for both backends (`BackboneFeatures` in RAM, `FeatureStore` on disk).

    `class_weights`: one weight per label (or none); `example_weights`: one per example, in the
    split's order, multiplied in (weak labels' confidence, `esr_tf.logs`); `with_labels`: `(x, targets[, weights])`
    or `x` alone; `workers`: MultiWorkerMirroredStrategy workers reading it; each batch's text
    is cut to its longest example, rounded up to `length_multiple` (`length_multiple_for` the
    compiled model; None keeps the full sequence length).
    """

    batch_size: int = 32
    shuffle: bool = False
    seed: int = 0
    repeat: bool = False
    class_weights: np.ndarray | None = None
    example_weights: np.ndarray | None = None
    with_labels: bool = True
    gains: tuple[float, ...] = ESCI.gains
    drop_remainder: bool = False
    workers: int = 1
    length_multiple: int | None = 1


def sample_weights(o: Batching, labels: np.ndarray) -> np.ndarray | None:
    """Each example's loss weight under `o`: its class weight times its own; None for neither."""
    w = None if o.class_weights is None else np.asarray(o.class_weights, np.float32)[labels]
    if o.example_weights is None:
        return w
    own = np.asarray(o.example_weights, np.float32)
    return own if w is None else w * own


class FeatureSource(Protocol):
    """One split of frozen-backbone features, whichever backend holds it: what `train`,
    `evaluate` and the benchmarks read (`BackboneFeatures`, `FeatureStore.view(split)`)."""

    labels: np.ndarray | None

    def __len__(self) -> int: ...

    def dataset(self, **options) -> tf.data.Dataset: ...


# The arrays a dataset reads in place: BERT's outputs per example, the feature maps per photo.
SHARED_ARRAYS = ("sequence_output", "feature_maps")
# tf.data's default graph rewrites serialise the dataset, copying every array a `shared_tensor`
# wraps (measured: +0.5 GB at the first batch for a 0.5 GB table; none without them).
IN_PLACE = tf.data.Options()
IN_PLACE.experimental_optimization.apply_default_optimizations = False


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

    def __post_init__(self):
        # Datasets wrap the two large arrays without copying them (`shared_tensor`).
        for name in SHARED_ARRAYS:
            array = getattr(self, name)
            if array.dtype != np.float32 or not is_aligned(array):
                setattr(self, name, aligned_empty(array.shape))
                getattr(self, name)[...] = array

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

    def dataset(self, **options) -> tf.data.Dataset:
        """Batches of `head_model()` inputs with `targets_and_weights`; `options` are `Batching`'s
        fields, as `FeatureStore.dataset` takes them. `workers` changes nothing here: every worker
        holds all rows in one seeded order and keeps its share.

        The dataset shuffles and batches example numbers and gathers each batch from the arrays
        (`shared_tensor`): slicing the arrays into elements copied BERT's outputs twice per
        dataset and once more into the shuffle buffer (#33). The order is the same."""
        o = Batching(**options)
        x = {k: tf.constant(getattr(self, k)) for k in ("text_mask", "token_ids", "segment_ids", "image_index",
                                                         "has_image")}
        x["sequence_output"] = shared_tensor(self.sequence_output)
        parts: tuple = ()
        if o.with_labels:
            w = sample_weights(o, self.labels)
            parts = tf.nest.map_structure(tf.constant, targets_and_weights(self.labels, o.gains, w))
        ds = tf.data.Dataset.range(len(self))
        if o.shuffle:
            ds = ds.shuffle(len(self), seed=o.seed, reshuffle_each_iteration=True)
        if o.repeat:
            ds = ds.repeat()
        table = shared_tensor(self.feature_maps)
        full = self.text_mask.shape[1]

        @tf.autograph.experimental.do_not_convert  # plain TF ops; AutoGraph only warns about the closure
        def gather(rows):
            batch = {k: tf.gather(v, rows) for k, v in x.items()}
            batch = cut_text(batch, full, o.length_multiple)
            batch["feature_map"] = tf.gather(table, batch.pop("image_index"))
            return (batch, *tf.nest.map_structure(lambda v: tf.gather(v, rows), parts))

        ds = ds.batch(o.batch_size, drop_remainder=o.drop_remainder)
        ds = ds.map(gather, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
        return ds.with_options(IN_PLACE)
