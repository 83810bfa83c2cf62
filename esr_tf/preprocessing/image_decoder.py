"""In-graph image decoding shared by the tf.data pipeline and the SavedModel signatures.

Encoded file bytes (JPEG, PNG, GIF first frame, BMP, WebP) become a fixed-size float image in the
value range the image backbone wants, plus a `has_image` flag. Empty bytes mean "no image" (a zero
image with `has_image = 0`). Only TF ops are used, so the same code runs inside TF Serving.

Hostile input is refused before any pixel buffer is allocated: the width and height declared in
the file header are read with string ops and checked against `max_pixels` / `max_side`, and BMP /
WebP variants TF misreads are refused (`image_limits`, the catalogue's rules too), and so is a
JPEG cut short (`jpeg_is_whole`). Bytes that are not an image give `InvalidArgumentError` from
the decoder. Any aspect ratio within the limits
works (a 1x8192 banner becomes a 1-px line, padded).

Example:
>>> import tensorflow as tf
>>> decoder = ImageDecoder(image_size=32)
>>> png = tf.io.encode_png(tf.zeros([40, 20, 3], tf.uint8))
>>> images, has_image = decoder(tf.stack([png, b""]))
>>> tuple(images.shape), has_image.numpy().tolist()
((2, 32, 32, 3), [1.0, 0.0])
"""

from __future__ import annotations

import keras
import tensorflow as tf

from esr_tf import image_limits
from esr_tf.image_limits import MAX_IMAGE_PIXELS as DEFAULT_MAX_PIXELS
from esr_tf.image_limits import MAX_IMAGE_SIDE as DEFAULT_MAX_SIDE


def _uint(data: tf.Tensor, offset: int, length: int, little_endian: bool) -> tf.Tensor:
    """Reads an unsigned integer of `length` bytes at `offset` of a scalar byte string."""
    raw = tf.io.decode_raw(tf.strings.substr(data, offset, length), tf.uint8)
    raw = tf.cast(raw, tf.int64)
    if little_endian:
        raw = tf.reverse(raw, [0])
    weights = tf.constant([256**i for i in reversed(range(length))], tf.int64)
    return tf.reduce_sum(raw[:length] * weights)


def jpeg_is_whole(data: tf.Tensor) -> tf.Tensor:
    """Whether a JPEG's marker segments run whole to its start of scan, and an end-of-image
    marker follows (in scan data a 0xFF byte is always stuffed, so 0xFFD9 is that marker).

    Given a JPEG cut short, libjpeg writes "Improper call to JPEG library" or "Input file read
    error" to stderr itself, past TF's logging, before the decoder fails (#33); TF's decoder refuses
    a JPEG without its end-of-image marker anyway, so this refuses the same files first. Bytes that
    leave the marker layout give True: the decoder judges them.
    """
    size = tf.cast(tf.strings.length(data), tf.int64)
    padded = data + tf.constant(b"\0" * 4)
    walking, scan, other, cut = 0, 1, 2, 3

    def step(offset, state):
        at = tf.minimum(offset, size)  # a segment may claim more bytes than there are
        first, marker = _uint(padded, at, 1, False), _uint(padded, at + 1, 1, False)
        end = offset + 2 + _uint(padded, at + 2, 2, False)
        fill = tf.logical_and(tf.equal(first, 0xFF), tf.equal(marker, 0xFF))
        standalone = tf.logical_or(tf.equal(marker, 0x01), tf.logical_and(marker >= 0xD0, marker <= 0xD7))
        state = tf.where(offset + 4 > size, cut, tf.where(
            tf.not_equal(first, 0xFF) | standalone, other, tf.where(fill, walking, tf.where(
                tf.equal(marker, 0xDA), scan, tf.where(end - offset < 4, other, walking)))))
        state = tf.cast(state, tf.int64)
        return tf.where(fill | tf.not_equal(state, walking), offset + tf.cast(fill, tf.int64), end), state

    start = (tf.constant(2, tf.int64), tf.constant(walking, tf.int64))
    offset, state = tf.while_loop(lambda _, s: tf.equal(s, walking), step, start)
    after = tf.strings.substr(data, tf.minimum(offset + 2, size), size)  # the scans, past the SOS marker
    ends = tf.size(tf.strings.split(after, sep=b"\xff\xd9")) > 1
    return tf.logical_or(tf.equal(state, other), tf.logical_and(tf.equal(state, scan), ends))


def declared_size(data: tf.Tensor) -> tf.Tensor:
    """Returns `[height, width]` (int64) as declared in an encoded image's header.

    Unknown formats and headers too short to parse give `[0, 0]`, leaving the error to the decoder.
    """
    data = tf.convert_to_tensor(data, tf.string)
    # Pad so that fixed-offset reads on short inputs stay in range; the decoder rejects them later.
    padded = data + tf.constant(b"\0" * 32)
    magic4 = tf.strings.substr(padded, 0, 4)
    zero = tf.zeros([2], tf.int64)

    def png():  # IHDR: width, height as big-endian uint32 at bytes 16 and 20.
        return tf.stack([_uint(padded, 20, 4, False), _uint(padded, 16, 4, False)])

    def gif():  # Logical screen: little-endian uint16 width, height at bytes 6 and 8.
        return tf.stack([_uint(padded, 8, 2, True), _uint(padded, 6, 2, True)])

    def bmp():  # BITMAPINFOHEADER: int32 width, height at 18, 22 (height < 0 means top-down).
        width = _uint(padded, 18, 4, True)
        height = _uint(padded, 22, 4, True)
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return tf.stack([height, width])

    def jpeg():  # Reads the SOF marker only; never decodes the scan.
        whole = tf.debugging.Assert(
            jpeg_is_whole(data), ["image refused: JPEG cut short (no end-of-image marker after its headers)"]
        )
        with tf.control_dependencies([whole]):
            return tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)

    def webp():
        chunk = tf.strings.substr(padded, 12, 4)
        vp8x = tf.stack([_uint(padded, 27, 3, True) + 1, _uint(padded, 24, 3, True) + 1])
        lossy = tf.stack([_uint(padded, 28, 2, True) % 16384, _uint(padded, 26, 2, True) % 16384])
        # VP8L: 14-bit width-1 and height-1 packed little-endian after the 0x2f signature byte.
        bits = _uint(padded, 21, 4, True)
        lossless = tf.stack([(bits // 16384) % 16384 + 1, bits % 16384 + 1])
        return tf.case(
            [
                (tf.equal(chunk, b"VP8X"), lambda: vp8x),
                (tf.equal(chunk, b"VP8 "), lambda: lossy),
                (tf.equal(chunk, b"VP8L"), lambda: lossless),
            ],
            default=lambda: zero,
        )

    is_webp = tf.logical_and(tf.equal(magic4, b"RIFF"), tf.equal(tf.strings.substr(padded, 8, 4), b"WEBP"))
    return tf.case(
        [
            (tf.equal(magic4, b"\x89PNG"), png),
            (tf.equal(tf.strings.substr(padded, 0, 3), b"GIF"), gif),
            (tf.equal(tf.strings.substr(padded, 0, 2), b"BM"), bmp),
            (tf.equal(tf.strings.substr(padded, 0, 3), b"\xff\xd8\xff"), jpeg),
            (is_webp, webp),
        ],
        default=lambda: zero,
    )


def _is_webp(padded: tf.Tensor) -> tf.Tensor:
    return tf.logical_and(
        tf.equal(tf.strings.substr(padded, 0, 4), b"RIFF"),
        tf.equal(tf.strings.substr(padded, 8, 4), b"WEBP"),
    )


def variant_checks(data: tf.Tensor) -> list[tf.Operation]:
    """Asserts refusing the BMP / WebP variants TF's decoders misread or fail on (the rules of
    `image_limits`, also applied by the catalogue check), before any pixel is decoded."""
    padded = data + tf.constant(b"\0" * 64)
    is_bmp = tf.equal(tf.strings.substr(padded, 0, 2), b"BM")
    bits, header = _uint(padded, 28, 2, True), _uint(padded, 14, 4, True)
    compression = _uint(padded, 30, 4, True)
    bmp_ok = tf.logical_and(
        header >= image_limits.BMP_MIN_HEADER,
        tf.logical_and(
            tf.reduce_any(tf.equal(bits, image_limits.BMP_BITS_PER_PIXEL)),
            tf.reduce_any(tf.equal(compression, image_limits.BMP_COMPRESSIONS)),
        ),
    )
    flags = _uint(padded, 20, 1, False)
    animated = tf.logical_and(
        tf.logical_and(_is_webp(padded), tf.equal(tf.strings.substr(padded, 12, 4), b"VP8X")),
        tf.not_equal(flags // image_limits.WEBP_ANIMATION_FLAG % 2, 0),
    )
    return [
        tf.debugging.Assert(
            tf.logical_or(tf.logical_not(is_bmp), bmp_ok),
            ["image refused: BMP variant not supported (bits per pixel, compression, header "
             "bytes)", bits, compression, header, "use 8-, 24- or 32-bit uncompressed"],
        ),
        tf.debugging.Assert(
            tf.logical_not(animated), ["image refused: animated WebP is not supported"]
        ),
    ]


def _bmp_palette_lookup(data: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """RGB of an 8-bit BMP: TF's decoder returns its palette indices as grey levels."""
    padded = data + tf.constant(b"\0" * 64)
    used = _uint(padded, 46, 4, True)
    count = tf.where(tf.logical_or(used == 0, used > 256), tf.constant(256, tf.int64), used)
    start = 14 + _uint(padded, 14, 4, True)
    raw = tf.io.decode_raw(tf.strings.substr(data, start, 4 * count), tf.uint8)
    entries = tf.reshape(raw[: tf.size(raw) // 4 * 4], [-1, 4])  # B, G, R, reserved
    palette = tf.reverse(entries[:, :3], [1])
    n = tf.shape(palette)[0]
    check = tf.debugging.Assert(n > 0, ["image refused: 8-bit BMP without a palette"])
    with tf.control_dependencies([check]):
        index = tf.clip_by_value(tf.cast(indices[..., 0], tf.int32), 0, n - 1)
    return tf.gather(palette, index)


def _decode_pixels(data: tf.Tensor) -> tf.Tensor:
    """`uint8 [h, w, 3]`: GIF first frame; WebP alpha dropped; 8-bit BMP through its palette."""
    padded = data + tf.constant(b"\0" * 32)

    def webp():  # TF's WebP decoder wants the file's own channel count (3, or 4 with alpha)
        return tf.io.decode_image(data, channels=0, expand_animations=False)[..., :3]

    def other():  # expand_animations=False: GIFs give their first frame as a 3-D image.
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    image = tf.ensure_shape(tf.cond(_is_webp(padded), webp, other), [None, None, 3])
    is_bmp8 = tf.logical_and(
        tf.equal(tf.strings.substr(padded, 0, 2), b"BM"), tf.equal(_uint(padded, 28, 2, True), 8)
    )
    return tf.cond(is_bmp8, lambda: _bmp_palette_lookup(data, image), lambda: image)


@keras.saving.register_keras_serializable(package="esr_tf")
class ImageDecoder(keras.layers.Layer):
    """Decodes encoded image bytes into `[image_size, image_size, 3]` floats plus `has_image`.

    The aspect ratio is kept: the image is resized to fit and padded (`tf.image.resize_with_pad`
    arithmetic, bilinear, antialiased when shrinking, the short side at least 1 px); pixels are
    mapped from [0, 255] to `value_range`. Works on a scalar (one example, as in a `tf.data`
    map) or a `[batch]` vector (as in a serving signature).

    Args:
        image_size: side of the square output.
        value_range: `(low, high)` the image backbone expects, e.g. `(-1, 1)` for
            EfficientNet-Lite0 or `(0, 255)` for `keras.applications` EfficientNets.
        max_pixels: largest declared width x height accepted.
        max_side: largest declared width or height accepted.
    """

    def __init__(
        self,
        image_size: int = 160,
        value_range: tuple[float, float] = (-1.0, 1.0),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_side: int = DEFAULT_MAX_SIDE,
        **kwargs,
    ) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.max_pixels = int(max_pixels)
        self.max_side = int(max_side)

    def _decode_one(self, data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        size = self.image_size

        def blank():
            return tf.zeros([size, size, 3], tf.float32), tf.constant(0.0)

        def decode():
            hw = declared_size(data)
            ok = tf.logical_and(tf.reduce_all(hw <= self.max_side), hw[0] * hw[1] <= self.max_pixels)
            check = tf.debugging.Assert(
                ok,
                [
                    "image refused: its header declares height x width",
                    hw,
                    f"over the limits ({self.max_side} px a side, {self.max_pixels} pixels)",
                ],
            )
            with tf.control_dependencies([check, *variant_checks(data)]):
                image = tf.cast(_decode_pixels(data), tf.float32)
            image = tf.cond(
                tf.reduce_all(tf.shape(image)[:2] == size),
                lambda: image,  # already the output size: resizing would be an exact no-op
                lambda: self._fit(image),
            )
            low, high = self.value_range
            image = image * ((high - low) / 255.0) + low
            return image, tf.constant(1.0)

        return tf.cond(tf.strings.length(data) > 0, decode, blank)

    def _fit(self, image: tf.Tensor) -> tf.Tensor:
        """Resizes to fit `image_size` keeping the aspect ratio, then pads.

        The arithmetic of `tf.image.resize_with_pad` (same float32 ops, so the same pixels),
        except that the short side is at least 1 px: for a 2x700 banner that function asks
        for a 0-px resize and fails ("output dimensions must be positive").

        Antialiasing only changes the result when shrinking (enlarging: <= 1e-4 of 255 apart), and
        it costs ~1.7x the resize time, so it is applied to images larger than the output only.
        """
        size = self.image_size
        shape = tf.shape(image)[:2]
        hw = tf.cast(shape, tf.float32)
        scaled = hw / tf.reduce_max(hw / float(size))
        target = tf.maximum(tf.cast(tf.floor(scaled), tf.int32), 1)
        pad = tf.maximum(tf.cast(tf.floor((float(size) - scaled) / 2), tf.int32), 0)
        batch = image[tf.newaxis]
        resized = tf.cond(
            tf.reduce_any(shape > size),
            lambda: tf.image.resize(batch, target, antialias=True),
            lambda: tf.image.resize(batch, target, antialias=False),
        )
        return tf.image.pad_to_bounding_box(resized, pad[0], pad[1], size, size)[0]

    def call(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.convert_to_tensor(images, tf.string)
        if images.shape.rank == 0:
            return self._decode_one(images)
        return tf.map_fn(
            self._decode_one,
            images,
            fn_output_signature=(
                tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32),
                tf.TensorSpec([], tf.float32),
            ),
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "value_range": list(self.value_range),
                "max_pixels": self.max_pixels,
                "max_side": self.max_side,
            }
        )
        return config
