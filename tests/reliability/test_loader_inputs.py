"""Hostile and broken catalogue input that tests/data/ does not already cover.

Already covered there (not repeated here): missing `title` / `label` columns, unknown labels,
duplicated / unknown product ids, empty query, non-UTF-8 CSV cells and JSONL lines, over-long
titles and descriptions, `../` / absolute / symlinked image paths and missing, empty, truncated,
non-image and oversized (patched-header) image files, all in CSV under both policies.

Here: the other required columns, JSONL error locations, more ways out of the folder (a
symlinked directory, `~`, drive letters, UNC, a symlink loop), special files, a PNG that is
nothing but a header declaring 50000x50000, over-long queries and paths, and the promise that
"an image the catalogue accepts is one the exported model accepts".
"""

from __future__ import annotations

import logging
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile
from reliability.helpers import (
    EXAMPLES,
    PNG_SIGNATURE,
    PRODUCTS,
    animated_webp,
    encode,
    make_catalogue,
    png_chunk,
    png_header_only,
    with_image,
)

from esr_tf.data import CatalogueError, load_catalogue
from esr_tf.data.image_files import inspect_image_file

POLICIES = ("error", "no_image")


def _load_refused(root, policy: str, file: str, row: int, column: str, unit: str = "row"):
    """Asserts a CatalogueError naming the file, row / line and column / field; returns it."""
    with pytest.raises(CatalogueError) as err:
        load_catalogue(root, missing_images=policy)
    msg = str(err.value)
    name = "field" if unit == "line" else "column"
    assert file in msg and f"{unit} {row}" in msg and f"{name} {column!r}" in msg, msg
    return msg


# --- columns and text ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind,column", [("products", "product_id"), ("examples", "query"),
                                         ("examples", "product_id")])
def test_other_missing_required_columns(tmp_path, kind, column):
    rows = [{k: v for k, v in r.items() if k != column} for r in
            (PRODUCTS if kind == "products" else EXAMPLES)]
    root = make_catalogue(tmp_path / "cat", **{kind: rows})
    with pytest.raises(CatalogueError) as err:
        load_catalogue(root)
    msg = str(err.value)
    assert f"{kind}.csv" in msg and "missing required column" in msg and repr(column) in msg


def test_non_utf8_header_is_named(tmp_path):
    root = make_catalogue(tmp_path / "cat")
    data = (root / "products.csv").read_bytes().replace(b"title", b"t\xeftle", 1)
    (root / "products.csv").write_bytes(data)
    with pytest.raises(CatalogueError, match=r"products\.csv, header \(line 1\).*UTF-8"):
        load_catalogue(root)


def test_utf16_file_is_refused_not_misread(tmp_path):
    root = make_catalogue(tmp_path / "cat")
    text = (root / "examples.csv").read_text(encoding="utf-8")
    (root / "examples.csv").write_bytes(text.encode("utf-16"))
    with pytest.raises(CatalogueError, match=r"examples\.csv, header \(line 1\).*UTF-8"):
        load_catalogue(root)


def test_non_utf8_image_path_names_the_column(tmp_path):
    root = make_catalogue(tmp_path / "cat")
    data = (root / "products.csv").read_bytes().replace(b"images/p2.png", b"images/p\xe92.png")
    (root / "products.csv").write_bytes(data)
    _load_refused(root, "no_image", "products.csv", 2, "image")


def test_over_long_query_is_truncated_and_counted(tmp_path):
    examples = [dict(EXAMPLES[0], query="red sneaker " + "x" * 20_000)] + EXAMPLES[1:]
    cat = load_catalogue(make_catalogue(tmp_path / "cat", examples=examples), max_text_chars=500)
    assert len(cat.examples[0].query) == 500
    assert cat.fixes == {"text_truncated": 1}


@pytest.mark.parametrize("policy", POLICIES)
def test_over_long_image_path(tmp_path, policy):
    # 5000 characters: the OS refuses the name (ENAMETOOLONG) -> "unreadable", no crash.
    root = make_catalogue(tmp_path / "cat", products=with_image("images/" + "x" * 5000 + ".jpg"))
    if policy == "error":
        msg = _load_refused(root, policy, "products.csv", 2, "image")
        assert "unreadable" in msg
    else:
        assert load_catalogue(root, missing_images=policy).image_problems == {"unreadable": 1}


# --- paths out of the catalogue folder ----------------------------------------------------------


ESCAPES = {
    "dotdot_nested": "images/../../outside/x.jpg",
    "symlinked_dir": "images/outdir/x.jpg",
    "home": "~/x.jpg",
    "drive_letter": "C:\\images\\x.jpg",
    "unc": "\\\\server\\share\\x.jpg",
    "absolute": "/etc/hostname",
}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("case", list(ESCAPES))
def test_escaping_paths_in_jsonl_name_the_line(tmp_path, policy, case):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.jpg").write_bytes(encode())
    root = make_catalogue(tmp_path / "cat", products=with_image(ESCAPES[case]), fmt="jsonl")
    os.symlink(tmp_path / "outside", root / "images" / "outdir")
    msg = _load_refused(root, policy, "products.jsonl", 2, "image", unit="line")
    assert "outside the catalogue folder" in msg or "absolute image path" in msg


@pytest.mark.parametrize("policy", POLICIES)
def test_symlink_loop_names_the_row(tmp_path, policy):
    root = make_catalogue(tmp_path / "cat", products=with_image("images/a.jpg"))
    os.symlink("b.jpg", root / "images" / "a.jpg")
    os.symlink("a.jpg", root / "images" / "b.jpg")
    _load_refused(root, policy, "products.csv", 2, "image")


@pytest.mark.parametrize("policy", POLICIES)
def test_fifo_named_jpg_is_not_a_file_and_does_not_hang(tmp_path, policy):
    root = make_catalogue(tmp_path / "cat", products=with_image("images/pipe.jpg"))
    os.mkfifo(root / "images" / "pipe.jpg")  # opening it for reading would block forever
    if policy == "error":
        assert "not_a_file" in _load_refused(root, policy, "products.csv", 2, "image")
    else:
        assert load_catalogue(root, missing_images=policy).image_problems == {"not_a_file": 1}


# --- image files --------------------------------------------------------------------------------


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Makes any Pillow pixel decode fail the test: refusals must come from the header."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("policy", POLICIES)
def test_png_header_only_50000_is_refused_without_decoding(tmp_path, policy, no_pixel_decoding,
                                                          caplog):
    # 33 bytes: signature + IHDR (50000x50000, 8-bit RGB) and nothing else.
    data = png_header_only(50000, 50000)
    assert len(data) == 33
    root = make_catalogue(tmp_path / "cat", products=with_image("images/huge.png"),
                          files={"images/huge.png": data})
    if policy == "error":
        assert "images/huge.png" in _load_refused(root, policy, "products.csv", 2, "image")
        return
    with caplog.at_level(logging.WARNING, logger="esr_tf.data"):
        cat = load_catalogue(root, missing_images=policy)
    assert cat.products["p2"].image == "" and cat.products["p1"].image != ""
    assert cat.image_problems == {"too_large": 1}
    assert "1 image(s) replaced by 'no image'" in caplog.text


def test_png_header_only_50000_reason_is_too_large(tmp_path):
    # Pillow cannot identify a PNG that ends after IHDR; the size is read from the bytes first.
    (tmp_path / "huge.png").write_bytes(png_header_only(50000, 50000))
    reason, detail = inspect_image_file(tmp_path / "huge.png")
    assert reason == "too_large" and "50000x50000" in detail


@pytest.mark.parametrize("policy", POLICIES)
def test_png_50000_with_empty_idat_is_too_large(tmp_path, policy, no_pixel_decoding):
    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    data = (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b""))
            + png_chunk(b"IEND", b""))
    root = make_catalogue(tmp_path / "cat", products=with_image("images/huge.png"),
                          files={"images/huge.png": data})
    if policy == "error":
        assert "too_large" in _load_refused(root, policy, "products.csv", 2, "image")
    else:
        assert load_catalogue(root, missing_images=policy).image_problems == {"too_large": 1}


BAD_FILES = {
    "missing_file": None,
    "empty_file": b"",
    "not_an_image": b"%PDF-1.4 not a photo",
    "truncated": "truncated",
}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("reason", list(BAD_FILES))
def test_bad_image_files_in_jsonl(tmp_path, policy, reason):
    data = BAD_FILES[reason]
    if data == "truncated":
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        data = encode(Image.fromarray(noise), "JPEG")[:1500]
    files = {} if data is None else {"images/bad.jpg": data}
    root = make_catalogue(tmp_path / "cat", products=with_image("images/bad.jpg"), fmt="jsonl",
                          files=files)
    if policy == "error":
        msg = _load_refused(root, policy, "products.jsonl", 2, "image", unit="line")
        assert reason in msg and "images/bad.jpg" in msg
    else:
        assert load_catalogue(root, missing_images=policy).image_problems == {reason: 1}


def test_shared_bad_image_counts_each_product(tmp_path):
    rows = [dict(r, image="images/gone.jpg") for r in PRODUCTS]
    cat = load_catalogue(make_catalogue(tmp_path / "cat", products=rows), missing_images="no_image")
    assert cat.image_problems == {"missing_file": 3}
    assert all(p.image == "" for p in cat.products.values())


# --- the catalogue accepts exactly what the serving decoder decodes -----------------------------


def _decoded(data: bytes) -> np.ndarray:
    import tensorflow as tf

    from esr_tf.preprocessing.image_decoder import ImageDecoder

    decoder = ImageDecoder(image_size=16, value_range=(0.0, 255.0))
    images, has_image = decoder(tf.constant([data]))
    assert has_image.numpy().tolist() == [1.0]
    return images.numpy()[0]


def _gif_animated() -> bytes:
    frames = [Image.new("RGB", (20, 10), c) for c in ("red", "blue")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


AGREEING = {
    "png_16bit": lambda: encode(Image.new("I;16", (20, 10), 30000), "PNG"),
    "png_la": lambda: encode(Image.new("LA", (20, 10), (90, 255)), "PNG"),
    "png_1bit": lambda: encode(Image.new("1", (20, 10), 1), "PNG"),
    "jpeg_cmyk": lambda: encode(Image.new("CMYK", (20, 10), (0, 200, 200, 30)), "JPEG"),
    "jpeg_progressive": lambda: encode(fmt="JPEG", progressive=True),
    "gif_animated": _gif_animated,
    "webp_lossless": lambda: encode(fmt="WEBP", lossless=True),
    "webp_alpha": lambda: encode(Image.new("RGBA", (20, 10), (200, 30, 30, 100)), "WEBP"),
    "webp_alpha_lossless": lambda: encode(Image.new("RGBA", (20, 10), (200, 30, 30, 9)), "WEBP",
                                          lossless=True),
    "bmp_rgb": lambda: encode(fmt="BMP"),
    "bmp_gray": lambda: encode(Image.new("L", (20, 10), 81), "BMP"),
}


@pytest.mark.parametrize("kind", list(AGREEING))
def test_accepted_formats_decode_in_the_serving_graph(tmp_path, kind):
    data = AGREEING[kind]()
    (tmp_path / "img").write_bytes(data)
    assert inspect_image_file(tmp_path / "img") == (None, "")
    assert np.isfinite(_decoded(data)).all()


def _bmp_rle8_header() -> bytes:
    """An 8-bit BMP whose header claims RLE8 compression (TF would read the bytes as pixels)."""
    data = bytearray(encode(Image.new("L", (20, 10), 81), "BMP"))
    data[30:34] = struct.pack("<I", 1)
    return bytes(data)


# Variants the serving decoder cannot read with their true colours: refused on both sides.
DISAGREEING = {
    "bmp_1bit": lambda: encode(Image.new("1", (20, 10), 1), "BMP"),
    "bmp_rle8_header": _bmp_rle8_header,
    "webp_animated": animated_webp,
}


@pytest.mark.parametrize("kind", list(DISAGREEING))
def test_catalogue_refuses_what_the_decoder_cannot_read(tmp_path, kind):
    import tensorflow as tf

    data = DISAGREEING[kind]()
    (tmp_path / "img").write_bytes(data)
    reason, detail = inspect_image_file(tmp_path / "img")
    assert reason == "unsupported_format" and "not supported" in detail, (reason, detail)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image refused|channels|Unknown"):
        _decoded(data)


def test_palette_bmp_keeps_its_colour():
    # TF's BMP decoder returns palette indices as grey; the decoder looks them up in the palette.
    red = Image.new("RGB", (20, 10), (200, 30, 30))
    centre = _decoded(encode(red.convert("P"), "BMP"))[8, 8]
    np.testing.assert_allclose(centre, [200, 30, 30], atol=12)


def test_palette_bmp_with_many_colours_matches_pillow():
    noise = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    image = Image.fromarray(noise).convert("P")  # adaptive 256-colour palette, every pixel used
    data = encode(image, "BMP")
    expected = np.asarray(image.convert("RGB"), dtype=np.float32)
    np.testing.assert_array_equal(_decoded(data), expected)  # 16x16: no resize


# --- extreme aspect ratios inside the limits ----------------------------------------------------

BANNERS = [(1, 320), (2, 700), (10, 4000), (1, 8192), (400, 1)]  # (height, width)


@pytest.mark.parametrize("height,width", BANNERS, ids=[f"{h}x{w}" for h, w in BANNERS])
def test_extreme_aspect_ratios_are_accepted_and_padded(tmp_path, height, width):
    # resize_with_pad asked for a 0-px side ("output dimensions must be positive"); the short
    # side is now at least 1 px, so such banners decode like any photo.
    data = encode(Image.new("RGB", (width, height), (200, 30, 30)), "PNG")
    (tmp_path / "banner.png").write_bytes(data)
    assert inspect_image_file(tmp_path / "banner.png") == (None, "")
    image = _decoded(data)
    assert image.shape == (16, 16, 3) and np.isfinite(image).all()
    red = np.all(np.abs(image - [200, 30, 30]) < 1, axis=-1)
    assert red.any() and (image == 0).all(axis=-1).sum() == 16 * 16 - red.sum()


def test_banner_in_a_catalogue_reaches_the_pipeline(tmp_path):
    import tensorflow as tf

    from esr_tf.preprocessing.image_decoder import ImageDecoder

    banner = encode(Image.new("RGB", (700, 2), (200, 30, 30)), "PNG")
    root = make_catalogue(tmp_path / "cat", files={"images/p2.png": banner})
    cat = load_catalogue(root, missing_images="error")
    images = [open(p, "rb").read() if p else b"" for p in cat.columns()["image"]]
    decoded, has_image = ImageDecoder(image_size=160)(tf.constant(images))
    assert decoded.shape[1:] == (160, 160, 3) and np.isfinite(decoded.numpy()).all()
    assert has_image.numpy().tolist() == [1.0, 1.0, 0.0]


def test_png_named_jpg_and_jpeg_with_trailer_decode_in_the_graph(tmp_path):
    for data in (encode(fmt="PNG"), encode(fmt="JPEG") + b"maker notes"):
        (tmp_path / "x.jpg").write_bytes(data)
        assert inspect_image_file(tmp_path / "x.jpg") == (None, "")
        np.testing.assert_allclose(_decoded(data)[8, 8], [200, 30, 30], atol=12)
