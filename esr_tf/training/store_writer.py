"""Writing a `FeatureStore`: the photo table, the TFRecord shards and their record layout.

`training.feature_store` reads what this module writes; `FORMATS` and `LAYOUT` name the
storage format and record layout in every split folder, so a store written another way is
never read. Files appear atomically (`atomic_write`), so a killed pass leaves no partial shard.

Example:
>>> q, scale = quantize_tokens(np.ones((2, 4), np.float32))
>>> q.dtype.name, q.tolist()[0], float(scale[0])
('int8', [127, 127, 127, 127], 0.00787353515625)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from esr_tf.constants import FEATURE_STORE_FORMATS
from esr_tf.training.encoder_pass import encode_text_rows, examples_digest, photo_feature_maps, tokenize_columns
from esr_tf.training.feature_cache import text_extent

log = logging.getLogger("esr_tf.training")

FORMATS = FEATURE_STORE_FORMATS  # token storage -> the split folders' suffix
# The record layout, also in the split folders' names. v2: each example is cut where its text
# mask ends; v1 cut it where the padding began, which for `image_only` (its mask covers the
# query only) fed the head the title's tokens as text: what serving never shows it.
LAYOUT = "v2"


def atomic_write(path: Path, write) -> None:
    """`write(tmp_path)`, then rename: a reader sees a complete file or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(tmp)
    os.replace(tmp, path)


def quantize_tokens(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per token: `seq ≈ q * scale[:, None]`, `q` in [-127, 127].

    One scale per token (its largest absolute value / 127, rounded to float16 before `q` is
    computed, so the reader multiplies back by exactly the stored scale): each value is off by
    at most half a step, and a token's outlier dimensions never flatten other tokens. An
    all-zero token gets scale 1.
    """
    seq = np.asarray(seq, np.float32)
    scale = (np.abs(seq).max(axis=-1) / 127).astype(np.float16)
    scale[scale == 0] = 1
    q = np.clip(np.rint(seq / scale[..., None].astype(np.float32)), -127, 127).astype(np.int8)
    return q, scale


def _example(seq: np.ndarray, token_ids, segment_ids, image_index: int, has_image: float, label: int,
             dtype: str) -> bytes:
    def raw(data: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))

    if dtype == "int8":
        q, scale = quantize_tokens(seq)
        tokens = {"sequence_output": raw(q.tobytes()), "scale": raw(scale.tobytes())}
    else:  # float16 tokens need no scale
        tokens = {"sequence_output": raw(seq.astype(np.float16).tobytes())}
    feature = {
        **tokens,
        "token_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=token_ids)),
        "segment_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=segment_ids)),
        "image_index": tf.train.Feature(int64_list=tf.train.Int64List(value=[image_index])),
        "has_image": tf.train.Feature(float_list=tf.train.FloatList(value=[has_image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@dataclass
class ShardFiles:
    """One split's shards: files, example count and labels (kept for class weights)."""

    files: list[str]
    labels: np.ndarray  # [N] int32 (-1 where the examples had no label)

    def __len__(self) -> int:
        return len(self.labels)


def split_folder(folder: Path, split: str, cols, photo_digest: str, dtype: str) -> Path:
    """`<split>-<examples digest>-<photo table digest>-<format>-<layout>`: other examples,
    another photo table, storage format or record layout never share a folder."""
    return folder / f"{split}-{examples_digest(cols)[:16]}-{photo_digest[:8]}-{FORMATS[dtype]}-{LAYOUT}"


def photo_table(model, encoder, folder: Path, paths: list[str], batch_size: int,
                 verbose: int) -> tuple[np.ndarray, dict[str, int], str]:
    """`photos-<digest>.npy` ([U, h, w, C] float16, each of `paths` (`distinct_photos`) once), its
    rows and the digest of its photo list.

    Named by that digest, so a table is only ever written for, and read with, its own photo
    list: two runs over other photos with the same encoders (MultiWorkerMirroredStrategy
    workers whose paths differ, two catalogues sharing a `feature_store`) each find their own
    instead of overwriting one table, whose rows the other's shards would then read. Shard
    folders carry the digest, as their `image_index` values are rows of this table.
    """
    if not model.reads_photos:  # text_only: one zero row, nothing stored
        return photo_feature_maps(model, [], batch_size).astype(np.float16), {}, "nophoto"
    rows = {p: i for i, p in enumerate(paths)}
    digest = examples_digest({"image": np.array(paths, dtype=object)})  # not a fixed-width copy
    table = folder / f"photos-{digest[:16]}.npy"
    if not table.exists():
        atomic_write(table, lambda tmp: _write_photo_table(model, encoder, paths, tmp, batch_size, verbose))
    listing = table.with_suffix(".paths.json")  # the rows by path: what `esr-tf index` reuses
    if not listing.exists():
        atomic_write(listing, lambda tmp: Path(tmp).write_text(json.dumps(paths), encoding="utf-8"))
    return np.load(table, mmap_mode="r"), rows, digest


def _write_photo_table(model, encoder, paths: list[str], path: Path, batch_size: int, verbose: int,
                       chunk: int = 1024) -> None:
    """`encoder` (the model's `image_encoder` or a bfloat16 copy) feature maps of `paths` into a
    float16 `.npy` at `path`, `chunk` photos at a time (a memory-mapped file: the pass holds one
    chunk in RAM, not the table)."""
    if not paths:  # a catalogue without photos: one zero row
        with open(path, "wb") as f:
            np.save(f, photo_feature_maps(model, [], batch_size).astype(np.float16))
        return
    shape = (len(paths), *model.image_encoder.output.shape[1:])
    table = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    for start in range(0, len(paths), chunk):
        table[start : start + chunk] = photo_feature_maps(model, paths[start : start + chunk], batch_size, verbose,
                                                          encoder=encoder)
    table.flush()
    del table


def write_split(model, encode, out: Path, cols, photo_rows: dict[str, int], shard_examples: int,
                 batch_size: int, dtype: str, verbose: int) -> ShardFiles:
    """`out/shard-<k>-of-<n>.tfrecord` for one split: finished shards are kept, missing ones written."""
    n = len(cols["query"])
    out.mkdir(exist_ok=True)
    labels = np.asarray(cols["label"], np.int32) if "label" in cols else np.full(n, -1, np.int32)
    paths = np.asarray(cols["image"], dtype=object)  # not astype(str): a fixed-width copy of every path
    files = []
    for k, start in enumerate(range(0, n, shard_examples)):
        path = out / f"shard-{k:05d}-of-{-(-n // shard_examples):05d}.tfrecord"
        files.append(str(path))
        if path.exists():
            continue
        rows = slice(start, min(n, start + shard_examples))
        written = _write_shard(model, encode, path, cols, rows, paths, labels, photo_rows, batch_size, dtype)
        if verbose:
            log.info("feature store: %s shard %d written (%d examples)", out.name, k, written)
    return ShardFiles(files, labels)


def _write_shard(model, encode, path: Path, cols, rows: slice, paths: np.ndarray, labels: np.ndarray,
                 photo_rows: dict[str, int], batch_size: int, dtype: str) -> int:
    """Encodes the examples `rows` and writes them to the shard `path`; returns their count.

    A function of its own so that the shard's `[rows, L, H]` float32 encoder outputs are freed
    on return: held in the caller's loop, they were still alive while the next shard was
    encoded, two shards in RAM at the peak (~0.4 GB more with MiniLM at 8192 examples).
    """
    shard = {key: np.asarray(cols[key])[rows] for key in ("query", *model.preprocessor.product_fields)}
    ids = tokenize_columns(model.preprocessor, shard, batch_size)
    text = encode_text_rows(None, ids, batch_size, traced=encode)
    lengths = stored_lengths(text["text_mask"], path)
    shard_paths, shard_labels = paths[rows], labels[rows]

    def write(tmp):
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for i, (length, photo) in enumerate(zip(lengths, shard_paths, strict=True)):
                writer.write(_example(
                    text["sequence_output"][i, :length], ids["token_ids"][i, :length],
                    ids["segment_ids"][i, :length], photo_rows.get(photo, 0), float(bool(photo)),
                    int(shard_labels[i]), dtype,
                ))

    atomic_write(path, write)
    return int(len(lengths))


def stored_lengths(text_mask: np.ndarray, path: Path) -> np.ndarray:
    """How many tokens of each example a shard keeps: up to the end of its text mask (the
    padding mask, or the query's for `image_only`). The records keep a length, not the mask,
    so a mask with holes cannot be stored."""
    lengths = text_extent(text_mask)
    if np.any(np.count_nonzero(text_mask, axis=1) != lengths):
        raise ValueError(f"FeatureStore: {path.name}: the text encoder's text_mask has gaps inside an example's "
                         "text; the store keeps one length per example")
    return lengths
