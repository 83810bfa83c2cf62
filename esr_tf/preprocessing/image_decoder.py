"""In-graph image decoding shared by the tf.data pipeline and the SavedModel signatures.

Encoded file bytes (JPEG, PNG, GIF first frame, BMP, WebP) become a fixed-size float image in the
value range the image backbone wants, plus a `has_image` flag. Empty bytes mean "no image" (a zero
image with `has_image = 0`). Only TF ops are used, so the same code runs inside TF Serving.

Hostile input is refused before any pixel buffer is allocated: the width and height declared in
the file header are read with string ops and checked against `max_pixels` / `max_side`. Bytes
that are not an image give `InvalidArgumentError` from the decoder.

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

from esr_tf.data.image_files import MAX_IMAGE_PIXELS as DEFAULT_MAX_PIXELS
from esr_tf.data.image_files import MAX_IMAGE_SIDE as DEFAULT_MAX_SIDE


def _uint(data: tf.Tensor, offset: int, length: int, little_endian: bool) -> tf.Tensor:
    """Reads an unsigned integer of `length` bytes at `offset` of a scalar byte string."""
    raw = tf.io.decode_raw(tf.strings.substr(data, offset, length), tf.uint8)
    raw = tf.cast(raw, tf.int64)
    if little_endian:
        raw = tf.reverse(raw, [0])
    weights = tf.constant([256**i for i in reversed(range(length))], tf.int64)
    return tf.reduce_sum(raw[:length] * weights)


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


@keras.saving.register_keras_serializable(package="esr_tf")
class ImageDecoder(keras.layers.Layer):
    """Decodes encoded image bytes into `[image_size, image_size, 3]` floats plus `has_image`.

    The aspect ratio is kept: the image is resized to fit and padded (`tf.image.resize_with_pad`,
    bilinear, antialiased when shrinking); pixels are mapped from [0, 255] to `value_range`. Works on a scalar
    (one example, as in a `tf.data` map) or a `[batch]` vector (as in a serving signature).

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
            with tf.control_dependencies([check]):
                # expand_animations=False: GIFs give their first frame as a 3-D image.
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image = tf.cast(tf.ensure_shape(image, [None, None, 3]), tf.float32)
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

        Antialiasing only changes the result when shrinking (enlarging: <= 1e-4 of 255 apart), and
        it costs ~1.7x the resize time, so it is applied to images larger than the output only.
        """
        size = self.image_size
        shrink = tf.reduce_any(tf.shape(image)[:2] > size)
        return tf.cond(
            shrink,
            lambda: tf.image.resize_with_pad(image, size, size, antialias=True),
            lambda: tf.image.resize_with_pad(image, size, size, antialias=False),
        )

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
