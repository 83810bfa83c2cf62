"""Frozen-backbone outputs on disk, so that training need not hold them in RAM (#17).

`BackboneFeatures` keeps `[N, L, 384]` float32 BERT outputs in RAM (~49 KB per pair at L=32):
0.4 M ESCI pairs would need ~20 GB. `FeatureStore.build` writes the same outputs once to TFRecord
shards instead, each example cut to its real length and each token stored as int8 with a
float16 scale (`quantize_tokens`: 386 bytes a token for MiniLM against 768 in float16, so query +
title + brand + colour fit in ~10 KB a pair; `dtype="float16"` stores float16 tokens), plus one
float16 table of per-photo feature maps (each distinct photo once). `FeatureStore.dataset` streams them through
`tf.data` into `RelevanceModel.head_model()`; only a shuffle buffer and the photo table stay
in RAM.

The store lives under `<root>/<backbone fingerprint>/<split>-<examples>-<photos>/` (digests):
a rerun (or another fusion mode over the same examples with the same encoders) finds it and
reuses every finished shard, a model with other encoders never does; the split folder names the
storage format, so a store written in another format is never read. Shards are written to a
temporary name and renamed when complete, so a run killed during the feature pass recomputes
only the shard it was writing.

Example:
>>> store = FeatureStore.build(model, {"train": catalogue.columns("train")}, "features")  # doctest: +SKIP
>>> model.head_model().fit(store.dataset("train", batch_size=32, shuffle=True), epochs=3)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.preprocessing.pipeline import AUTOTUNE
from esr_tf.training.encoder_pass import (
    FrozenEncoders,
    backbone_fingerprint,
    distinct_photos,
    traced_text_encoder,
)
from esr_tf.training.feature_cache import Batching, batch_length, targets_and_weights
from esr_tf.training.store_writer import FORMATS, ShardFiles, photo_table, split_folder, write_split

log = logging.getLogger("esr_tf.training")

SHARD_EXAMPLES = 8192  # examples per shard: the unit a killed feature pass recomputes
# A photo table larger than this in float32 is read from its memory-mapped file batch by batch
# instead of being copied into the graph (126 KB a photo at 224 px: one photo per product at ESCI scale
# would be tens of GB). Bytes.
PHOTOS_IN_RAM = 256 * 2**20


def _check_dtype(dtype: str) -> None:
    if dtype not in FORMATS:
        raise ValueError(f"FeatureStore: dtype must be one of {tuple(FORMATS)}, got {dtype!r}")


def text_hidden(model) -> int:
    """Width of the text encoder's `sequence_output` (384 for MiniLM-L6)."""
    return int(model.text_encoder.output["sequence_output"].shape[-1])


@dataclass
class StoreSplit:
    """A split of a `FeatureStore`: a `FeatureSource`, as a `BackboneFeatures` is one."""

    store: FeatureStore
    split: str

    def __len__(self) -> int:
        return len(self.store.splits[self.split])

    @property
    def labels(self) -> np.ndarray:
        return self.store.labels(self.split)

    def dataset(self, **kwargs) -> tf.data.Dataset:
        return self.store.dataset(self.split, **kwargs)


class FeatureStore:
    """Frozen-backbone outputs of named splits on disk (see the module docstring)."""

    def __init__(self, folder: Path, splits: dict[str, ShardFiles], photos: np.ndarray, hidden: int,
                 sequence_length: int, dtype: str = "int8") -> None:
        _check_dtype(dtype)
        self.folder = Path(folder)
        self.dtype = dtype  # how the shards store tokens (`FORMATS`)
        self.splits = splits
        self.photos = photos  # [U, h, w, C] float16
        self.hidden = hidden
        self.sequence_length = sequence_length  # the longest a batch's text may be (see `dataset`)
        self.photos_in_ram = PHOTOS_IN_RAM  # bytes; a larger table is read from its file

    @classmethod
    def build(
        cls,
        model,
        parts: Mapping[str, Mapping[str, np.ndarray]],
        root: str | Path,
        *,
        shard_examples: int | None = None,
        batch_size: int = 64,
        dtype: str = "int8",
        precision: str = "float32",
        verbose: int = 0,
    ) -> FeatureStore:
        """Writes (or finds) the outputs of `model`'s frozen encoders for each split's columns
        (`dtype`: `"int8"` tokens with a float16 scale each, or `"float16"` tokens; `precision`:
        the encoders', see `FrozenEncoders.of`: a bfloat16 pass has a store of its own; `"auto"`
        takes a store of either precision already under `root` for these encoders, untimed)."""
        _check_dtype(dtype)
        shard_examples = shard_examples or SHARD_EXAMPLES  # read at call time (tests shrink it)
        parts = {s: cols for s, cols in parts.items() if len(cols["query"])}
        paths = distinct_photos(*parts.values())
        if precision == "auto":  # a rerun keeps the store it started, whatever a new timing says
            precision = next((p for p in ("float32", "bfloat16")
                              if (Path(root) / backbone_fingerprint(model, p)[:20]).is_dir()), "auto")
        encoders = FrozenEncoders.of(model, precision, pairs=sum(len(c["query"]) for c in parts.values()),
                                     photos=len(paths))
        folder = Path(root) / backbone_fingerprint(model, encoders.precision)[:20]
        folder.mkdir(parents=True, exist_ok=True)
        photos, rows, photo_digest = photo_table(model, encoders.image, folder, paths, batch_size, verbose)
        hidden = text_hidden(model)
        encode = traced_text_encoder(encoders.encode_text)  # traced once, for every shard
        splits = {
            split: write_split(model, encode, split_folder(folder, split, cols, photo_digest, dtype), cols, rows,
                               shard_examples, batch_size, dtype, verbose)
            for split, cols in parts.items()
        }
        return cls(folder, splits, photos, hidden, model.preprocessor.sequence_length, dtype)

    def __len__(self) -> int:
        return sum(len(s) for s in self.splits.values())

    def labels(self, split: str) -> np.ndarray:
        return self.splits[split].labels

    def view(self, split: str) -> StoreSplit:
        """One split, with `BackboneFeatures`' reading interface (`len`, `labels`, `dataset`)."""
        return StoreSplit(self, split)

    def dataset(self, split: str, *, shuffle_buffer: int = 4096, **options) -> tf.data.Dataset:
        """Batches of `head_model()` inputs with `targets_and_weights`; `options` are `Batching`'s
        fields, as `BackboneFeatures.dataset` takes them.

        `workers`: how many MultiWorkerMirroredStrategy workers read it. A repeated dataset
        with at least one shard per worker is sharded by file (each worker reads its own
        shards); otherwise every worker reads all shards in one order and keeps its share of
        the examples (tf.data's FILE sharding fails with fewer files than workers, and uneven
        shards would give workers different numbers of validation steps).
        """
        o = Batching(**options)
        if o.example_weights is not None:  # records are read in shard order, not the split's
            raise ValueError("the feature store does not carry per-example weights: train from logs in RAM")
        by_file = o.workers > 1 and o.repeat and len(self.splits[split].files) >= o.workers
        ds = self._records(split, o.shuffle, o.seed, shuffle_buffer, deterministic=o.workers > 1 and not by_file)
        if o.repeat:
            ds = ds.repeat()
        # Records are batched first and parsed a batch at a time (one `parse_example`, every
        # example padded to the batch's length) rather than parsed one by one and then
        # `padded_batch`ed: far fewer tf.data ops per example (reading alone, 10k MiniLM pairs:
        # 13.7k against 5.2-7.2k examples/s).
        ds = ds.batch(o.batch_size, drop_remainder=o.drop_remainder)
        photo_maps = self._photo_lookup()
        weights = None if o.class_weights is None else tf.constant(np.asarray(o.class_weights, np.float32))

        @tf.autograph.experimental.do_not_convert
        def finish(records):
            x = self._parse_batch(records, o.length_multiple)
            labels = x.pop("label")
            x["feature_map"] = photo_maps(x.pop("image_index"))
            if not o.with_labels:
                return x
            return (x, *targets_and_weights(labels, o.gains, None if weights is None else tf.gather(weights, labels)))

        ds = ds.map(finish, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
        if not o.repeat and o.workers == 1:  # Keras then stops at the end instead of warning "ran out of data"
            examples = len(self.splits[split])
            ds = ds.apply(tf.data.experimental.assert_cardinality(
                examples // o.batch_size if o.drop_remainder else -(-examples // o.batch_size)))
        if o.workers > 1:
            sharding = tf.data.Options()
            policy = tf.data.experimental.AutoShardPolicy
            sharding.experimental_distribute.auto_shard_policy = policy.FILE if by_file else policy.DATA
            ds = ds.with_options(sharding)
        return ds

    def _records(self, split: str, shuffle: bool, seed: int, shuffle_buffer: int, deterministic: bool):
        """The split's serialized records: in the stored order, or shuffled (files, then a buffer)."""
        names = self.splits[split].files
        files = tf.data.Dataset.from_tensor_slices(names)
        if not shuffle:  # the stored order: predictions line up with the split's rows
            return files.flat_map(tf.data.TFRecordDataset)
        files = files.shuffle(len(names), seed=seed, reshuffle_each_iteration=True)
        # Sharding by example needs the same order on every worker (`deterministic`).
        ds = files.interleave(tf.data.TFRecordDataset, cycle_length=4, num_parallel_calls=AUTOTUNE,
                              deterministic=deterministic)
        return ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def _photo_lookup(self):
        """`image_index` `[B]` -> float32 feature maps `[B, h, w, C]`: gathered from a float32
        constant when the table is small, else read from the memory-mapped table file (its
        pages are the page cache's, reclaimable, not the process's heap)."""
        photos = self.photos
        if 2 * photos.nbytes <= self.photos_in_ram:
            # Cast once, not per batch: a batch's maps are 8 MB of float32 at 224 px, and
            # casting them cost ~15 us an example of the pipeline's ~85 (10k MiniLM pairs).
            table = tf.constant(np.asarray(photos, np.float32))
            return lambda index: tf.gather(table, index)

        def read(index: np.ndarray) -> np.ndarray:
            return np.asarray(photos[index], np.float32)

        def lookup(index):
            maps = tf.numpy_function(read, [index], tf.float32, stateful=False)
            return tf.ensure_shape(maps, [None, *photos.shape[1:]])

        return lookup

    def _parse_batch(self, records, multiple: int | None) -> dict[str, tf.Tensor]:
        """A batch of records as `head_model()` inputs, every example padded to the batch's
        length (`batch_length`; the full sequence length when `multiple` is None)."""
        spec = {
            "sequence_output": tf.io.FixedLenFeature([], tf.string),
            "token_ids": tf.io.VarLenFeature(tf.int64),
            "segment_ids": tf.io.VarLenFeature(tf.int64),
            "image_index": tf.io.FixedLenFeature([], tf.int64),
            "has_image": tf.io.FixedLenFeature([], tf.float32),
            "label": tf.io.FixedLenFeature([], tf.int64),
        }
        if self.dtype == "int8":
            spec["scale"] = tf.io.FixedLenFeature([], tf.string)
        x = tf.io.parse_example(records, spec)
        hidden = self.hidden
        tokens = tf.strings.length(x["sequence_output"]) // (hidden if self.dtype == "int8" else 2 * hidden)
        length = self.sequence_length
        if multiple is not None:
            length = batch_length(tf.reduce_max(tokens), multiple, length)
        # `fixed_length` pads each example's bytes with zeros up to the batch's length; padded
        # decoding has no float16 kernel, so float16 bytes decode as uint16 and are bitcast.
        def half(raw, size):
            return tf.cast(tf.bitcast(tf.io.decode_raw(raw, tf.uint16, fixed_length=2 * size), tf.float16), tf.float32)

        if self.dtype == "int8":
            q = tf.io.decode_raw(x["sequence_output"], tf.int8, fixed_length=length * hidden)
            seq = tf.reshape(tf.cast(q, tf.float32), [-1, length, hidden]) * half(x["scale"], length)[..., None]
        else:
            seq = tf.reshape(half(x["sequence_output"], length * hidden), [-1, length, hidden])

        def ids(sparse):
            dense = tf.cast(tf.sparse.to_dense(sparse), tf.int32)
            return tf.reshape(tf.pad(dense, [[0, 0], [0, length - tf.shape(dense)[1]]]), [-1, length])

        return {
            "sequence_output": seq,
            "text_mask": tf.sequence_mask(tokens, length, dtype=tf.int32),
            "token_ids": ids(x["token_ids"]),
            "segment_ids": ids(x["segment_ids"]),
            "image_index": tf.cast(x["image_index"], tf.int32),
            "has_image": x["has_image"],
            "label": tf.cast(tf.maximum(x["label"], 0), tf.int32),
        }


