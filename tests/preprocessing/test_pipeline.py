"""The shared preprocessing: decoding, packing, tf.data and TFRecord paths agree."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from esr_tf.preprocessing.image_decoder import ImageDecoder, declared_size


@pytest.fixture(scope="module")
def preprocessor():
    from esr_tf.models.builder import TINY_MODEL, ModelConfig, build_backbones
    from esr_tf.preprocessing.relevance_preprocessor import RelevancePreprocessor

    _, tokenizer, _, value_range = build_backbones(ModelConfig(**TINY_MODEL))
    return RelevancePreprocessor(tokenizer, sequence_length=24, image_size=64, image_value_range=value_range)


def _encode(fmt: str, size=(50, 70), **kwargs) -> bytes:
    pixels = (np.random.default_rng(0).random((size[0], size[1], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP"])
def test_every_format_decodes_with_its_declared_size(fmt):
    data = _encode(fmt)
    assert declared_size(tf.constant(data)).numpy().tolist() == [50, 70]
    images, has_image = ImageDecoder(image_size=32)(tf.constant([data, b""]))
    assert images.shape == (2, 32, 32, 3) and images.dtype == tf.float32
    assert has_image.numpy().tolist() == [1.0, 0.0]
    assert -1.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    np.testing.assert_array_equal(images[1].numpy(), np.zeros((32, 32, 3)))


def test_huge_header_is_refused_before_decoding():
    with pytest.raises(tf.errors.InvalidArgumentError, match="image refused"):
        ImageDecoder(image_size=32)(tf.constant([_png_header(50000, 50000)]))


def test_undecodable_bytes_are_invalid_argument():
    with pytest.raises(tf.errors.InvalidArgumentError):
        ImageDecoder(image_size=32)(tf.constant([b"definitely not an image"]))


def test_aspect_ratio_is_kept_with_padding():
    wide = tf.io.encode_png(tf.fill([10, 40, 3], tf.constant(255, tf.uint8))).numpy()
    image, _ = ImageDecoder(image_size=40, value_range=(0.0, 1.0))(tf.constant(wide))
    rows = image.numpy().mean(axis=(1, 2))
    assert rows[20] > 0.99 and rows[0] < 0.01  # content centred, padding above and below


def test_features_have_the_documented_dtypes(preprocessor):
    x = preprocessor({"query": ["red shoe"], "title": ["Red shoe, leather"], "image": [_encode("PNG")]})
    assert {k: v.dtype.name for k, v in x.items()} == {
        "token_ids": "int32",
        "segment_ids": "int32",
        "padding_mask": "int32",
        "images": "float32",
        "has_image": "float32",
    }
    assert x["token_ids"].shape == (1, 24) and x["images"].shape == (1, 64, 64, 3)
    segments = np.asarray(x["segment_ids"])[0][np.asarray(x["padding_mask"])[0] == 1]
    assert segments[0] == 0 and segments[-1] == 1  # query first, title second


def test_waterfall_truncation_trims_the_title_first(preprocessor):
    x = preprocessor({"query": ["red shoe"], "title": ["word " * 200], "image": [b""]})
    mask = np.asarray(x["padding_mask"])[0]
    seg = np.asarray(x["segment_ids"])[0]
    assert mask.sum() == 24 and (seg == 0).sum() >= 4  # [CLS] red shoe [SEP] survives whole


@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "tokens-cached"])
def test_tf_data_path_equals_standalone_call(preprocessor, tiny_catalogue, cache):
    from esr_tf.preprocessing.pipeline import make_dataset

    cols = {k: v[:10] for k, v in tiny_catalogue.columns("train").items()}
    ds = make_dataset(cols, preprocessor, batch_size=10, deterministic=True, cache=cache)
    images = [open(p, "rb").read() if p else b"" for p in cols["image"]]
    direct = preprocessor({"query": cols["query"], "title": cols["title"], "image": np.array(images, dtype=object)})
    for _ in range(2):  # with a cache, the 2nd pass reads cached token ids and image bytes
        batch, labels = next(iter(ds))
        assert list(batch) == list(direct)
        for key in direct:
            np.testing.assert_array_equal(np.asarray(batch[key]), np.asarray(direct[key]), err_msg=key)
        np.testing.assert_array_equal(labels.numpy(), cols["label"])


def test_resize_shortcuts_match_the_full_resize():
    decoder = ImageDecoder(image_size=48, value_range=(0.0, 255.0))
    rng = np.random.default_rng(1)
    for shape, atol in [((48, 48), 0.0), ((30, 40), 1e-3), ((90, 60), 0.0)]:  # same, enlarge, shrink
        pixels = (rng.random((*shape, 3)) * 255).astype(np.uint8)
        image, _ = decoder(tf.io.encode_png(pixels))
        full = tf.image.resize_with_pad(tf.cast(pixels, tf.float32), 48, 48, antialias=True)
        np.testing.assert_allclose(image.numpy(), full.numpy(), atol=atol, rtol=0, err_msg=str(shape))


def test_tfrecord_shards_round_trip(preprocessor, tiny_catalogue, tmp_path):
    from esr_tf.constants import DEFAULT_PRODUCT_TEXT
    from esr_tf.preprocessing.pipeline import make_dataset
    from esr_tf.preprocessing.relevance_preprocessor import RelevancePreprocessor
    from esr_tf.preprocessing.tfrecords import read_tfrecords, write_tfrecords

    # A model reading brand and colour: the shards carry every product field.
    preprocessor = RelevancePreprocessor(preprocessor.tokenizer, sequence_length=24, image_size=64,
                                         product_text=DEFAULT_PRODUCT_TEXT)
    cols = {k: v[:12] for k, v in tiny_catalogue.columns("train").items()}
    assert any(cols["brand"]) and any(cols["color"])
    paths = write_tfrecords(cols, tmp_path, num_shards=3)
    assert len(paths) == 3 and all(p.stat().st_size > 0 for p in paths)
    from_records = make_dataset(
        read_tfrecords(tmp_path / "*.tfrecord"), preprocessor, batch_size=12, deterministic=True
    )
    from_files = make_dataset(cols, preprocessor, batch_size=12, deterministic=True)
    (a, la), (b, lb) = next(iter(from_records)), next(iter(from_files))
    # Shards interleave rows; compare as sets of (token ids, label).
    rows_a = sorted(zip(map(tuple, a["token_ids"].numpy()), la.numpy(), strict=True))
    rows_b = sorted(zip(map(tuple, b["token_ids"].numpy()), lb.numpy(), strict=True))
    assert rows_a == rows_b


def test_seeded_deterministic_order_repeats(preprocessor, tiny_catalogue):
    from esr_tf.preprocessing.pipeline import make_dataset

    cols = tiny_catalogue.columns("train")

    def first_labels():
        ds = make_dataset(cols, preprocessor, batch_size=8, shuffle=True, seed=3, deterministic=True)
        return next(iter(ds))[1].numpy().tolist()

    assert first_labels() == first_labels()
