"""TFRecord shards of catalogue examples with their image bytes inline (`esr-tf prepare`).

For catalogues larger than memory: readers stream shards, and `tf.distribute` can give each
worker its own files (`AutoShardPolicy.FILE`). `read_tfrecords` yields what `make_dataset` takes.

Example:
>>> paths = write_catalogue_shards(catalogue, "shards", num_shards=4)  # doctest: +SKIP
>>> ds = make_dataset(read_tfrecords("shards/train/*.tfrecord"), model.preprocessor)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.constants import PRODUCT_TEXT_FIELDS
from esr_tf.data import Catalogue

AUTOTUNE = tf.data.AUTOTUNE
SPLITS = ("train", "valid", "test")


# Product fields other than the title default to "" (shards written before they were stored).
_FEATURES = {
    "query": tf.io.FixedLenFeature([], tf.string),
    "title": tf.io.FixedLenFeature([], tf.string),
    **{f: tf.io.FixedLenFeature([], tf.string, default_value=b"") for f in PRODUCT_TEXT_FIELDS if f != "title"},
    "image": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "query_id": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    "product_id": tf.io.FixedLenFeature([], tf.string, default_value=b""),
}


def write_tfrecords(
    columns: Mapping[str, np.ndarray],
    out_dir: str | Path,
    *,
    num_shards: int = 4,
    prefix: str = "part",
) -> list[Path]:
    """Writes examples with their image bytes inline into `num_shards` TFRecord files.

    For catalogues larger than memory: readers stream shards, and `tf.distribute` can give each
    worker its own files (`AutoShardPolicy.FILE`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(str(p)) for p in paths]
    n = len(columns["query"])
    try:
        for i in range(n):
            image_path = str(columns["image"][i])
            image = Path(image_path).read_bytes() if image_path else b""
            feature = {
                "query": _bytes(columns["query"][i]),
                **{f: _bytes(columns[f][i]) for f in PRODUCT_TEXT_FIELDS if f in columns},
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(columns["label"][i])])),
                "query_id": _bytes(columns.get("query_id", [""] * n)[i]),
                "product_id": _bytes(columns.get("product_id", [""] * n)[i]),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writers[i % num_shards].write(example.SerializeToString())
    finally:
        for w in writers:
            w.close()
    return paths


def _bytes(value) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(value).encode("utf-8")]))


def read_tfrecords(
    pattern: str | Path, *, shuffle_files: bool = False, seed: int = 0, with_labels: bool = True
) -> tf.data.Dataset:
    """Streams `write_tfrecords` shards as `({"query", <product fields>, "image"}, label)` examples."""
    files = tf.data.Dataset.list_files(str(pattern), shuffle=shuffle_files, seed=seed)
    ds = files.interleave(tf.data.TFRecordDataset, num_parallel_calls=AUTOTUNE, deterministic=not shuffle_files)

    def parse(record):
        ex = tf.io.parse_single_example(record, _FEATURES)
        x = {k: ex[k] for k in ("query", *PRODUCT_TEXT_FIELDS, "image")}
        return (x, tf.cast(ex["label"], tf.int32)) if with_labels else (x,)

    ds = ds.map(parse, num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.FILE
    return ds.with_options(options)


def write_catalogue_shards(catalogue: Catalogue, out_dir: str | Path, *, num_shards: int = 4) -> dict[str, list[Path]]:
    """`<out_dir>/<split>/part-*.tfrecord` for every split that has examples; returns the paths."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    written = {}
    for split in SPLITS:
        columns = catalogue.columns(split)
        if len(columns["label"]):
            shards = min(num_shards, len(columns["label"]))
            written[split] = write_tfrecords(columns, Path(out_dir) / split, num_shards=shards)
    return written
