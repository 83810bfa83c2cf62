"""Fast checks of product image files, and the path rules that keep them inside a folder.

`check_image_file` reads only the header (Pillow opens images lazily) to refuse oversized images
before any pixel buffer exists, then looks for truncation cheaply: PNG chunks are walked with
`Image.verify()`; JPEG / GIF files must end with their end marker, and only files that do not are
decoded to decide (a JPEG with trailing bytes after its end marker is still fine).

The same size limits and format rules (`esr_tf.image_limits`) are used by the
serving graph (`esr_tf.preprocessing.image_decoder`), so an image the catalogue accepts is one
the exported model decodes with its colours: BMP variants TF misreads or refuses (1/4/16-bit,
RLE) and animated WebPs are `unsupported_format`. Any aspect ratio within the limits is fine.

Example:
>>> import tempfile, pathlib
>>> from PIL import Image
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> Image.new("RGB", (8, 8), "red").save(folder / "ok.png")
>>> (folder / "bad.jpg").write_text("not an image")
12
>>> check_image_file(folder / "ok.png"), check_image_file(folder / "bad.jpg")
(None, 'not_an_image')
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Limits and format rules shared with the serving graph (re-exported here).
from esr_tf.image_limits import (
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    SUPPORTED_FORMATS,
    WEBP_ANIMATION_FLAG,
    bmp_is_decodable,
)

__all__ = [
    "IMAGE_PROBLEMS",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIDE",
    "SUPPORTED_FORMATS",
    "check_image_file",
    "inspect_image_file",
    "resolve_inside",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")

# Reason key -> what it means; the keys are what `check_image_file` returns and what
# `Catalogue.image_problems` counts.
IMAGE_PROBLEMS = {
    "missing_file": "file not found",
    "not_a_file": "not a regular file",
    "unreadable": "file cannot be read",
    "empty_file": "file is empty (0 bytes)",
    "not_an_image": "not an image Pillow can identify",
    "unsupported_format": f"image format not one of {', '.join(SUPPORTED_FORMATS)}, or a "
    "variant the serving decoder cannot read (1/4/16-bit or RLE BMP, animated WebP)",
    "too_large": f"declared size over {MAX_IMAGE_SIDE} px a side or {MAX_IMAGE_PIXELS:,} pixels",
    "truncated": "image data is truncated or corrupt",
}

_TAIL_BYTES = 64
_HEAD_BYTES = 64  # enough for the PNG IHDR, the BMP info header fields and the WebP VP8X flags


def _ends_with(path: Path, marker: bytes) -> bool:
    """Whether the file's last bytes (ignoring zero padding) end with `marker`."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - _TAIL_BYTES))
        tail = f.read()
    return tail.rstrip(b"\0").endswith(marker)


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure means "corrupt"
        return False


def _too_large(width: int, height: int, max_side: int, max_pixels: int) -> str | None:
    if max(width, height) > max_side or width * height > max_pixels:
        return (f"header declares {width}x{height} pixels "
                f"(limits: {max_side} a side, {max_pixels:,} in all)")
    return None


def _png_header_size(head: bytes) -> tuple[int, int] | None:
    """`(width, height)` from a PNG's IHDR (the first 24 bytes), or None for another format.

    Read by hand because Pillow cannot identify a PNG that ends after its IHDR chunk.
    """
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR" or len(head) < 24:
        return None
    return struct.unpack(">II", head[16:24])


def _unsupported_variant(im: Image.Image, head: bytes) -> str | None:
    """Why TF's decoder cannot read this BMP / WebP with its true colours, or None."""
    if im.format == "BMP" and len(head) >= 34:
        header_size, = struct.unpack("<I", head[14:18])
        bits, compression = struct.unpack("<HI", head[28:34])
        if not bmp_is_decodable(bits, header_size, compression):
            return (f"BMP variant not supported ({bits}-bit, compression {compression}, "
                    f"{header_size}-byte header; use 8-, 24- or 32-bit uncompressed)")
    if im.format == "WEBP" and (
        getattr(im, "is_animated", False)
        or (head[12:16] == b"VP8X" and head[20] & WEBP_ANIMATION_FLAG)
    ):
        return "animated WebP is not supported (use its first frame, or a GIF)"
    return None


def inspect_image_file(
    path: str | os.PathLike,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_side: int = MAX_IMAGE_SIDE,
) -> tuple[str | None, str]:
    """Returns `(reason, detail)`: `reason` is None for a usable image, else a key of
    `IMAGE_PROBLEMS`; `detail` is a human-readable explanation (e.g. the declared size)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing_file", IMAGE_PROBLEMS["missing_file"]
    except OSError as e:
        return "unreadable", f"{IMAGE_PROBLEMS['unreadable']} ({e.strerror})"
    if not path.is_file():
        return "not_a_file", IMAGE_PROBLEMS["not_a_file"]
    if st.st_size == 0:
        return "empty_file", IMAGE_PROBLEMS["empty_file"]
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
        declared = _png_header_size(head)
        if declared is not None and (detail := _too_large(*declared, max_side, max_pixels)):
            return "too_large", detail
        with warnings.catch_warnings():
            # Pillow warns about (and above 2x its own limit refuses) huge headers; ours is lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format or "?"
                width, height = im.size
                if fmt not in SUPPORTED_FORMATS:
                    return "unsupported_format", f"image format {fmt} is not supported"
                if detail := _too_large(width, height, max_side, max_pixels):
                    return "too_large", detail
                if detail := _unsupported_variant(im, head):
                    return "unsupported_format", detail
                if fmt == "PNG":
                    im.verify()  # walks chunks and CRCs without decompressing
                    return None, ""
    except Image.DecompressionBombError as e:
        return "too_large", f"header declares a decompression bomb ({e})"
    except UnidentifiedImageError:
        return "not_an_image", IMAGE_PROBLEMS["not_an_image"]
    except PermissionError as e:
        return "unreadable", f"{IMAGE_PROBLEMS['unreadable']} ({e.strerror})"
    except (OSError, SyntaxError, ValueError) as e:
        return "truncated", f"{IMAGE_PROBLEMS['truncated']} ({e})"
    marker = {"JPEG": b"\xff\xd9", "GIF": b";"}.get(fmt)
    if marker is not None and _ends_with(path, marker):
        return None, ""
    # BMP / WebP, or a JPEG / GIF without its end marker at the very end: decode to decide.
    if not _decodes(path):
        return "truncated", IMAGE_PROBLEMS["truncated"]
    return None, ""


def check_image_file(path: str | os.PathLike) -> str | None:
    """Returns None when `path` is a usable image, else the reason (a key of `IMAGE_PROBLEMS`)."""
    return inspect_image_file(path)[0]


def resolve_inside(root: str | os.PathLike, relative: str) -> Path:
    """Resolves `relative` against `root`, refusing anything that leaves `root`.

    Absolute paths are refused outright; `..` components and symlinks are allowed only when the
    fully resolved path stays inside the resolved `root`. Raises `ValueError` with the reason.
    """
    text = relative.strip()
    if not text:
        raise ValueError("empty image path")
    if os.path.isabs(text) or text.startswith(("\\", "~")) or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"absolute image path {text!r} (must be relative to the catalogue folder)")
    root_resolved = Path(root).resolve()
    candidate = root_resolved / text
    try:
        resolved = candidate.resolve()
    except (RuntimeError, OSError) as error:  # symlink loops, unreadable links
        raise ValueError(f"cannot resolve image path {relative!r}: {error}") from None
    if not resolved.is_relative_to(root_resolved):
        via = "" if ".." in Path(text).parts else " through a symlink"
        raise ValueError(f"image path {text!r} leads outside the catalogue folder{via}")
    return resolved
