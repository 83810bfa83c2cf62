"""Image limits and format rules shared by the catalogue check and the serving graph.

Kept free of Pillow and TensorFlow imports so that both `esr_tf.data.image_files` (Pillow) and
`esr_tf.preprocessing.image_decoder` (TF ops only, exported to TF Serving) read one source.

Example:
>>> MAX_IMAGE_SIDE, f"{MAX_IMAGE_PIXELS:,}"
(8192, '40,000,000')
>>> bmp_is_decodable(bits_per_pixel=8, header_size=40, compression=0)
True
>>> bmp_is_decodable(bits_per_pixel=1, header_size=40, compression=0)
False
"""

from __future__ import annotations

# Largest width or height, and width x height, an image header may declare.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_SIDE = 8192

# Formats `tf.io.decode_image` (the serving graph's decoder) reads.
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")

# BMP variants TF's BMP decoder reads correctly: BITMAPINFOHEADER or later (40+ bytes), 8-bit
# palette (looked up in the graph), 24- or 32-bit pixels, uncompressed (0) or BITFIELDS (3).
# 1/4/16-bit and RLE-compressed BMPs are refused (TF fails on them or misreads the pixels).
BMP_BITS_PER_PIXEL = (8, 24, 32)
BMP_COMPRESSIONS = (0, 3)
BMP_MIN_HEADER = 40

# VP8X flag bit of an animated WebP (TF's animated-WebP decoder is not used: refused up front).
WEBP_ANIMATION_FLAG = 0x02


def bmp_is_decodable(bits_per_pixel: int, header_size: int, compression: int) -> bool:
    """Whether a BMP with these header fields decodes with its true colours in the graph."""
    return (
        header_size >= BMP_MIN_HEADER
        and bits_per_pixel in BMP_BITS_PER_PIXEL
        and compression in BMP_COMPRESSIONS
    )
