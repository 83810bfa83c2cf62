"""Per-file image checks and the stay-inside-the-folder path rule."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from data_helpers import huge_header, image_bytes
from PIL import Image

from esr_tf.data.image_files import (
    IMAGE_PROBLEMS,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    check_image_file,
    inspect_image_file,
    resolve_inside,
)


def test_limits_match_the_serving_decoder():
    assert MAX_IMAGE_PIXELS == 40_000_000
    assert MAX_IMAGE_SIDE == 8192


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("GIF", ".gif"),
                                        ("BMP", ".bmp"), ("WEBP", ".webp")])
def test_good_images_pass(tmp_path, fmt, suffix):
    path = tmp_path / f"ok{suffix}"
    path.write_bytes(image_bytes(fmt))
    assert check_image_file(path) is None


def test_png_named_jpg_is_fine(tmp_path):
    # The decoder sniffs the content, so a wrong suffix is not a problem.
    path = tmp_path / "actually_png.jpg"
    path.write_bytes(image_bytes("PNG"))
    assert check_image_file(path) is None


def test_jpeg_with_bytes_after_its_end_marker_is_fine(tmp_path):
    path = tmp_path / "trailer.jpg"
    path.write_bytes(image_bytes("JPEG", size=(64, 64)) + b"camera maker notes")
    assert check_image_file(path) is None


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("GIF", ".gif"),
                                        ("BMP", ".bmp"), ("WEBP", ".webp")])
def test_truncated_images(tmp_path, fmt, suffix):
    data = image_bytes(fmt, size=(96, 96))
    if fmt in ("JPEG", "WEBP"):  # noisy content, so the data is long enough to cut
        noise = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, fmt)
        data = buffer.getvalue()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) * 2 // 3])
    assert check_image_file(path) == "truncated"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP"])
def test_oversized_headers_are_refused_before_decoding(tmp_path, fmt):
    path = tmp_path / f"huge.{fmt.lower()}"
    path.write_bytes(huge_header(fmt, 9000, 9000))
    reason, detail = inspect_image_file(path)
    assert reason == "too_large"
    assert "9000x9000" in detail


def test_one_long_side_is_too_large(tmp_path):
    path = tmp_path / "strip.png"
    path.write_bytes(huge_header("PNG", MAX_IMAGE_SIDE + 1, 10))
    assert check_image_file(path) == "too_large"


def test_decompression_bomb_is_too_large(tmp_path):
    path = tmp_path / "bomb.bmp"  # beyond Pillow's own limit, which raises instead of warning
    path.write_bytes(huge_header("BMP", 20000, 20000))
    assert check_image_file(path) == "too_large"


def test_other_problems(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "image.tif").write_bytes(image_bytes("TIFF"))
    assert check_image_file(tmp_path / "missing.jpg") == "missing_file"
    assert check_image_file(tmp_path / "empty.jpg") == "empty_file"
    assert check_image_file(tmp_path / "text.jpg") == "not_an_image"
    assert check_image_file(tmp_path / "folder.jpg") == "not_a_file"
    assert check_image_file(tmp_path / "image.tif") == "unsupported_format"
    assert set(IMAGE_PROBLEMS) >= {"missing_file", "empty_file", "not_an_image", "truncated",
                                   "too_large", "unsupported_format", "not_a_file"}


def test_resolve_inside(tmp_path):
    root = tmp_path / "cat"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(image_bytes())
    (tmp_path / "outside.jpg").write_bytes(image_bytes())
    assert resolve_inside(root, "images/a.jpg") == (root / "images" / "a.jpg").resolve()
    assert resolve_inside(root, "images/../images/a.jpg") == (root / "images/a.jpg").resolve()
    with pytest.raises(ValueError, match="outside the catalogue folder"):
        resolve_inside(root, "../outside.jpg")
    with pytest.raises(ValueError, match="absolute"):
        resolve_inside(root, str(tmp_path / "outside.jpg"))
    os.symlink(tmp_path / "outside.jpg", root / "images" / "link.jpg")
    with pytest.raises(ValueError, match="symlink"):
        resolve_inside(root, "images/link.jpg")
    os.symlink(root / "images" / "a.jpg", root / "images" / "inner.jpg")
    assert resolve_inside(root, "images/inner.jpg") == (root / "images" / "a.jpg").resolve()
