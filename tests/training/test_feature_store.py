"""The on-disk feature store: same head inputs as the in-RAM cache, reused by reruns, resumable."""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from esr_tf.models.builder import TINY_MODEL, build_relevance_model
from esr_tf.training import encoder_pass, store_writer
from esr_tf.training import feature_store as fs
from esr_tf.training.feature_cache import (
    XLA_LENGTH_MULTIPLE,
    BackboneFeatures,
    length_multiple_for,
    shared_tensor,
    text_extent,
)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_relevance_model(**TINY_MODEL)


@pytest.fixture(scope="module")
def parts(tiny_catalogue):
    return {s: tiny_catalogue.columns(s) for s in ("train", "valid")}


@pytest.fixture(scope="module")
def store(model, parts, tmp_path_factory):
    return fs.FeatureStore.build(model, parts, tmp_path_factory.mktemp("store"), shard_examples=64)


def test_store_feeds_the_head_what_the_ram_cache_feeds_it(model, parts, store):
    ram = BackboneFeatures.compute(model, parts["valid"])
    head = model.head_model()
    from_ram = head.predict(ram.dataset(batch_size=16, with_labels=False), verbose=0)["probabilities"]
    from_store = head.predict(store.view("valid").dataset(batch_size=16, with_labels=False), verbose=0)
    # int8 storage of BERT's outputs (a step of 1/127 of each token's largest value); the padding
    # each batch no longer carries is masked anyway
    np.testing.assert_allclose(from_store["probabilities"], from_ram, atol=5e-3)
    assert (from_store["probabilities"].argmax(1) == from_ram.argmax(1)).mean() >= 0.95
    assert len(store.view("valid")) == len(parts["valid"]["query"])
    np.testing.assert_array_equal(store.labels("train"), parts["train"]["label"])


def test_each_example_is_stored_at_its_own_length_in_int8(model, parts, store):
    batch = next(iter(store.view("train").dataset(batch_size=8)))[0]
    lengths = np.asarray(batch["text_mask"]).sum(axis=1)
    assert batch["sequence_output"].shape[1] == lengths.max() and lengths.min() < model.preprocessor.sequence_length
    full = next(iter(store.view("train").dataset(batch_size=8, length_multiple=None)))[0]
    assert full["sequence_output"].shape[1] == model.preprocessor.sequence_length
    hidden = batch["sequence_output"].shape[-1]
    tokens = sum(int(np.asarray(x["text_mask"]).sum()) for x, *_ in store.view("train").dataset(batch_size=64))
    train_bytes = sum(Path(p).stat().st_size for p in store.splits["train"].files)
    # int8 outputs and a float16 scale per real token; ids, photo row, label and the record's
    # field names add ~200 bytes an example (3 % of MiniLM's 6.6 KB for 17 tokens)
    overhead = (train_bytes - tokens * (hidden + 2)) / len(store.view("train"))
    assert 0 < overhead < 256
    suffix = f"-{store_writer.FORMATS['int8']}-{store_writer.LAYOUT}"
    assert all(Path(p).parent.name.endswith(suffix) for p in store.splits["train"].files)


def test_batches_are_cut_to_their_longest_text_with_the_same_outputs(model, parts, store):
    """Both caches pad a batch only to its longest example (rounded up to `length_multiple`):
    the head masks every later position, so its outputs are those of the full length."""
    ram = BackboneFeatures.compute(model, parts["valid"])
    full_length = model.preprocessor.sequence_length
    head = model.head_model()

    def batches(source, multiple):
        return source.dataset(batch_size=4, with_labels=False, length_multiple=multiple)

    lengths = {m: [x["text_mask"].shape[1] for x, *_ in batches(ram, m)] for m in (None, 1, 4)}
    longest = [int(text_extent(ram.text_mask[i : i + 4]).max()) for i in range(0, len(ram), 4)]
    assert lengths[None] == [full_length] * len(longest) and lengths[1] == longest
    assert lengths[4] == [min(full_length, -(-n // 4) * 4) for n in longest] != longest
    assert min(longest) < full_length
    cut, padded = (head.predict(batches(ram, m), verbose=0)["probabilities"] for m in (1, None))
    np.testing.assert_allclose(cut, padded, atol=1e-5)
    assert [x["text_mask"].shape[1] for x in batches(store.view("valid"), 1)] == longest
    # one trace for every length: the train step's input has no fixed length
    assert store.view("train").dataset(batch_size=8).element_spec[0]["sequence_output"].shape[1] is None
    assert ram.dataset(batch_size=8).element_spec[0]["sequence_output"].shape[1] is None


def test_xla_rounds_batch_lengths_to_a_few_programs(model):
    head = model.head_model()
    head.compile(loss="mse", jit_compile=False)
    assert length_multiple_for(head) == 1
    head.compile(loss="mse", jit_compile=True)
    assert length_multiple_for(head) == XLA_LENGTH_MULTIPLE


def test_image_only_reads_the_query_mask_from_the_store_as_from_ram(parts, tmp_path):
    """`image_only`'s BERT and head see the query only; a store of before kept each example up to
    its padding and fed the head the title's tokens as text (probabilities off by ~0.45)."""
    keras.utils.set_random_seed(0)
    image_only = build_relevance_model(**{**TINY_MODEL, "fusion": "image_only"})
    valid = {"valid": parts["valid"]}
    store = fs.FeatureStore.build(image_only, valid, tmp_path, shard_examples=64)
    ram = BackboneFeatures.compute(image_only, parts["valid"])
    from_store = next(iter(store.view("valid").dataset(batch_size=16, with_labels=False)))
    from_ram = next(iter(ram.dataset(batch_size=16, with_labels=False)))[0]
    mask = from_ram["text_mask"].numpy()
    np.testing.assert_array_equal(from_store["text_mask"].numpy(), mask)
    # the in-RAM rows still hold the (masked) title ids past the query; the store kept none
    np.testing.assert_array_equal(from_store["token_ids"].numpy(), np.where(mask, from_ram["token_ids"].numpy(), 0))
    head = image_only.head_model()
    got, expected = (head.predict(s.dataset(batch_size=16, with_labels=False), verbose=0)["probabilities"]
                     for s in (store.view("valid"), ram))
    np.testing.assert_allclose(got, expected, atol=5e-3)


def test_a_text_mask_with_gaps_cannot_be_stored():
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 0]])
    np.testing.assert_array_equal(text_extent(mask), [3, 3])
    with pytest.raises(ValueError, match="shard-00000.tfrecord: the text encoder's text_mask has gaps"):
        store_writer.stored_lengths(mask, Path("shard-00000.tfrecord"))
    np.testing.assert_array_equal(store_writer.stored_lengths(mask[:1], Path("x")), [3])


def test_a_float16_store_is_its_own_and_agrees_to_float16_precision(model, parts, store):
    # the same splits (so the same photo table) beside the int8 store: never its shards
    half = fs.FeatureStore.build(model, parts, store.folder.parent, shard_examples=64, dtype="float16")
    assert half.folder == store.folder and half.splits["valid"].files[0] != store.splits["valid"].files[0]
    head = model.head_model()
    ram = BackboneFeatures.compute(model, parts["valid"])
    expected = head.predict(ram.dataset(batch_size=16, with_labels=False), verbose=0)["probabilities"]
    got = head.predict(half.view("valid").dataset(batch_size=16, with_labels=False), verbose=0)["probabilities"]
    np.testing.assert_allclose(got, expected, atol=2e-3)
    tokens = sum(int(np.asarray(x["text_mask"]).sum()) for x in half.view("valid").dataset(batch_size=64,
                                                                                           with_labels=False))
    size = sum(Path(p).stat().st_size for p in half.splits["valid"].files)
    assert 0 < (size - tokens * half.hidden * 2) / len(half.view("valid")) < 256
    with pytest.raises(ValueError, match="dtype must be one of"):
        fs.FeatureStore.build(model, parts, store.folder.parent, dtype="int4")


def test_a_large_photo_table_is_read_from_its_file_with_the_same_maps(model, store):
    small = next(iter(store.view("valid").dataset(batch_size=16, with_labels=False)))
    store.photos_in_ram = 0  # every table counts as large
    try:
        large = next(iter(store.view("valid").dataset(batch_size=16, with_labels=False)))
    finally:
        store.photos_in_ram = fs.PHOTOS_IN_RAM
    assert isinstance(store.photos, np.memmap)
    np.testing.assert_array_equal(large["feature_map"].numpy(), small["feature_map"].numpy())
    assert large["feature_map"].shape[1:] == small["feature_map"].shape[1:]


def test_the_config_offers_exactly_the_store_formats():
    from esr_tf.training.config import FEATURE_STORE_DTYPES  # kept apart: config imports no TF

    assert FEATURE_STORE_DTYPES == tuple(store_writer.FORMATS)


def test_quantized_tokens_are_off_by_at_most_half_a_step():
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(6, 384)).astype(np.float32)
    seq[1, 7] = 40.0  # an outlier dimension coarsens its own token only
    seq[2] = 0.0  # an all-zero token (scale 1, all zeros back)
    q, scale = store_writer.quantize_tokens(seq)
    assert q.dtype == np.int8 and scale.dtype == np.float16 and np.abs(q).max() <= 127
    back = q.astype(np.float32) * scale.astype(np.float32)[:, None]
    step = scale.astype(np.float32)[:, None]
    assert np.all(np.abs(back - seq) <= step / 2 + 1e-6 * np.abs(seq))
    np.testing.assert_array_equal(back[2], 0.0)
    assert scale[0] < scale[1] / 5  # the outlier's scale stayed with its token


def test_a_rerun_reuses_every_shard(model, parts, store, monkeypatch):
    def no_encoding(*args, **kwargs):
        raise AssertionError("a rerun recomputed stored features")

    monkeypatch.setattr(store_writer, "encode_text_rows", no_encoding)
    monkeypatch.setattr(store_writer, "photo_feature_maps", no_encoding)
    again = fs.FeatureStore.build(model, parts, store.folder.parent, shard_examples=64)
    assert again.folder == store.folder and again.splits["train"].files == store.splits["train"].files


def test_a_killed_pass_recomputes_only_the_missing_shard(model, parts, store, monkeypatch):
    shards = store.splits["train"].files
    assert len(shards) > 1
    before = open(shards[0], "rb").read()
    Path(shards[-1]).unlink()
    calls = []
    real = encoder_pass.encode_text_rows
    monkeypatch.setattr(store_writer, "encode_text_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    fs.FeatureStore.build(model, parts, store.folder.parent, shard_examples=64)
    assert len(calls) == 1 and open(shards[0], "rb").read() == before
    assert all(Path(p).exists() for p in shards)


def test_other_encoders_never_read_the_store(parts, store):
    keras.utils.set_random_seed(1)
    other = build_relevance_model(**TINY_MODEL)  # another random init: other encoder weights
    elsewhere = fs.FeatureStore.build(other, {"valid": parts["valid"]}, store.folder.parent)
    assert elsewhere.folder != store.folder


def test_train_streams_from_the_store_and_reuses_it(tiny_catalogue, tmp_path, monkeypatch):
    from esr_tf.training.config import parse_config
    from esr_tf.training.trainer import train

    config = parse_config({"epochs": 1, "batch_size": 16, "out_dir": str(tmp_path / "run"), "model": TINY_MODEL,
                           "feature_store": str(tmp_path / "features"), "retrieval": {"epochs": 0}})
    with warnings.catch_warnings():  # validation read the store to its end: Keras warned each run
        warnings.filterwarnings("error", message="Your input ran out of data")
        result = train(config, catalogue=tiny_catalogue, verbose=0)
    assert result.epochs_run == 1 and isinstance(result.features["test"], fs.StoreSplit)
    monkeypatch.setattr(store_writer, "encode_text_rows", lambda *a, **k: pytest.fail("the rerun recomputed features"))
    # another run with the same (seeded, random-init) encoders: a concat head on the same store
    again = parse_config({**config.to_dict(), "out_dir": str(tmp_path / "run2")}, ["model.fusion=concat"])
    assert train(again, catalogue=tiny_catalogue, verbose=0).epochs_run == 1


def test_shards_never_point_into_another_photo_table(model, parts, store, tmp_path):
    """Another photo set renumbers the photo table: the train shards are then written anew (their
    `image_index` are rows of the table), not reused with stale rows."""
    import shutil

    train = parts["train"]
    photo = next(p for p in train["image"] if p)
    extra = str(tmp_path / "0000_first.jpg")  # sorts before every other photo: shifts all rows
    shutil.copy(photo, extra)
    more = {k: v[:3] for k, v in parts["valid"].items()}
    more["image"] = np.array([extra] * 3)
    again = fs.FeatureStore.build(model, {"train": train, "more": more}, store.folder.parent, shard_examples=64)
    assert again.splits["train"].files != store.splits["train"].files
    head = model.head_model()
    ram = BackboneFeatures.compute(model, train)
    expected = head.predict(ram.dataset(batch_size=16, with_labels=False), verbose=0)["probabilities"]
    got = head.predict(again.view("train").dataset(batch_size=16, with_labels=False), verbose=0)["probabilities"]
    np.testing.assert_allclose(got, expected, atol=5e-3)  # int8 tokens (see the first test)
    # each photo set keeps its own table: building the first again rewrites nothing
    tables = sorted(store.folder.glob("photos-*.npy"))
    assert len(tables) == 2
    stamps = {t: t.stat().st_mtime_ns for t in tables}
    first = fs.FeatureStore.build(model, parts, store.folder.parent, shard_examples=64)
    assert first.splits["train"].files == store.splits["train"].files
    assert {t: t.stat().st_mtime_ns for t in store.folder.glob("photos-*.npy")} == stamps
    np.testing.assert_array_equal(np.asarray(first.photos), np.asarray(store.photos))


def test_workers_read_their_own_shards_only_where_each_has_one(store):
    """Under MultiWorkerMirroredStrategy: FILE sharding for a repeated split with a shard per
    worker, else DATA sharding over one order (FILE fails with fewer files than workers)."""
    policy = tf.data.experimental.AutoShardPolicy
    shards = len(store.splits["train"].files)
    assert shards >= 2

    def chosen(**kwargs):
        return store.view("train").dataset(batch_size=8, **kwargs).options().experimental_distribute.auto_shard_policy

    assert chosen(shuffle=True, repeat=True, workers=shards) == policy.FILE
    assert chosen(shuffle=True, repeat=True, workers=shards + 1) == policy.DATA
    assert chosen(workers=2) == policy.DATA  # not repeated (validation): uneven shards, uneven steps
    assert chosen(shuffle=True, repeat=True) == policy.AUTO  # one worker: nothing set
    # sharded by example, every worker must draw the same order
    a, b = ([x["token_ids"].numpy() for x, *_ in store.view("train").dataset(
        batch_size=8, shuffle=True, seed=3, workers=shards + 1).take(4)] for _ in range(2))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_datasets_share_the_photo_table_instead_of_copying_it():
    # #33: every dataset made its own tf.constant of the table (1.1 GB on dev_colour), and a
    # run's train, valid and test datasets (and each epoch's valid one) held those copies at once.
    raw = np.arange(2 * 2 * 2 * 3 + 1, dtype=np.float32)
    unaligned = raw[1:] if raw.ctypes.data % 64 == 0 else raw[:-1]
    unaligned = unaligned.reshape(2, 2, 2, 3)
    n = 4
    feats = BackboneFeatures(
        sequence_output=np.zeros((n, 3, 2), np.float32), text_mask=np.ones((n, 3), np.int32),
        token_ids=np.ones((n, 3), np.int32), segment_ids=np.zeros((n, 3), np.int32),
        image_index=np.array([0, 1, 1, 0], np.int32), has_image=np.ones(n, np.float32),
        feature_maps=unaligned, labels=np.zeros(n, np.int32),
    )
    assert not encoder_pass.is_aligned(unaligned) and encoder_pass.is_aligned(feats.feature_maps)
    np.testing.assert_array_equal(feats.feature_maps, unaligned)
    assert feats.take(slice(0, 2)).feature_maps is feats.feature_maps
    table = shared_tensor(feats.feature_maps)
    feats.feature_maps[1, 0, 0, 0] = -7.0  # the tensor reads the array's own memory
    assert float(table[1, 0, 0, 0]) == -7.0
    batch, *_ = next(iter(feats.dataset(batch_size=4, with_labels=False)))
    np.testing.assert_array_equal(batch["feature_map"].numpy(), feats.feature_maps[[0, 1, 1, 0]])
    with pytest.raises(ValueError, match="aligned float32"):
        shared_tensor(unaligned)


def test_datasets_gather_bert_outputs_in_place_in_the_order_slicing_gave():
    # #33: `from_tensor_slices` copied BERT's outputs twice per dataset and once more into the
    # shuffle buffer (~1.5 GB on dev_colour); batches are now gathered by example number.
    rng = np.random.default_rng(0)
    n, length = 11, 4
    feats = BackboneFeatures(
        sequence_output=rng.normal(size=(n, length, 2)).astype(np.float32), text_mask=np.ones((n, length), np.int32),
        token_ids=rng.integers(1, 99, (n, length)).astype(np.int32), segment_ids=np.zeros((n, length), np.int32),
        image_index=rng.integers(0, 3, n).astype(np.int32), has_image=np.ones(n, np.float32),
        feature_maps=rng.normal(size=(3, 1, 1, 2)).astype(np.float32), labels=rng.integers(0, 4, n).astype(np.int32),
    )
    assert encoder_pass.is_aligned(feats.sequence_output)
    assert feats.take(slice(2, 6)).sequence_output.base is not None, "a slice is a view, not a copy"
    weights = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    got = list(feats.dataset(batch_size=4, shuffle=True, seed=5, class_weights=weights))
    # what slicing the arrays into elements gave, in the same seeded order
    order = np.concatenate([b.numpy() for b in tf.data.Dataset.range(n).shuffle(n, seed=5).batch(4)])
    rows = np.concatenate([x["token_ids"].numpy()[:, 0] for x, *_ in got])
    np.testing.assert_array_equal(rows, feats.token_ids[order, 0])
    x, y, w = got[0]
    first = order[: len(x["token_ids"])]
    np.testing.assert_array_equal(x["sequence_output"].numpy(), feats.sequence_output[first])
    np.testing.assert_array_equal(x["feature_map"].numpy(), feats.feature_maps[feats.image_index[first]])
    np.testing.assert_array_equal(y["probabilities"].numpy(), feats.labels[first])
    np.testing.assert_array_equal(w["score"].numpy(), weights[feats.labels[first]])
    feats.sequence_output[first[0], 0, 0] = 99.0  # the dataset reads the array's own memory
    again, *_ = next(iter(feats.dataset(batch_size=n)))
    assert float(again["sequence_output"][first[0], 0, 0]) == 99.0


def test_iterating_a_dataset_does_not_copy_the_photo_table():
    # #33: tf.data's default rewrites serialised the dataset, copying the DLPack-wrapped table
    # (1.1 GB on dev_colour) at the first batch of every dataset.
    rows = 256  # 64 MB of maps: a copy would show in the RSS
    feats = BackboneFeatures(
        sequence_output=np.zeros((rows, 2, 2), np.float32), text_mask=np.ones((rows, 2), np.int32),
        token_ids=np.ones((rows, 2), np.int32), segment_ids=np.zeros((rows, 2), np.int32),
        image_index=np.arange(rows, dtype=np.int32), has_image=np.ones(rows, np.float32),
        feature_maps=np.ones((rows, 7, 7, 1280), np.float32), labels=np.zeros(rows, np.int32),
    )
    table_mb = feats.feature_maps.nbytes / 1e6

    def rss_mb() -> float:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1e3

    before = rss_mb()
    for _ in feats.dataset(batch_size=1, shuffle=True).take(2):
        pass
    assert rss_mb() - before < table_mb / 2, f"RSS grew {rss_mb() - before:.0f} MB for a {table_mb:.0f} MB table"
