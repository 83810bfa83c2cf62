"""Shared helpers of the reliability tests: crafted files, tiny catalogues, child processes.

Import it as `reliability.helpers` (unambiguous even if another test folder has a `helpers.py`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

PRODUCTS = [
    {"product_id": "p1", "title": "Red canvas sneaker", "image": "images/p1.jpg"},
    {"product_id": "p2", "title": "Blue sneaker", "image": "images/p2.png"},
    {"product_id": "p3", "title": "Wool sock", "image": ""},
]
EXAMPLES = [
    {"query": "red sneaker", "product_id": "p1", "label": "E"},
    {"query": "red sneaker", "product_id": "p2", "label": "S"},
    {"query": "red sneaker", "product_id": "p3", "label": "C"},
]


def encode(image: Image.Image | None = None, fmt: str = "JPEG", **kwargs) -> bytes:
    """`image` (default: a 24x16 red RGB picture) encoded as `fmt`."""
    image = image if image is not None else Image.new("RGB", (24, 16), (200, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """PNG signature + one valid IHDR chunk (8-bit RGB) declaring `width` x `height`; no pixels."""
    return PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def huge_headers(side: int = 50000) -> dict[str, bytes]:
    """Files whose headers declare `side` x `side` pixels (16383 for WebP's 14-bit fields), per
    format; only PNG is header-only, the others are small real images with a patched header."""
    jpeg = bytearray(encode(fmt="JPEG"))
    sof = jpeg.find(b"\xff\xc0")  # SOF0: marker, length, precision, height, width
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", min(side, 65535), min(side, 65535))
    gif = bytearray(encode(fmt="GIF"))
    gif[6:10] = struct.pack("<HH", min(side, 65535), min(side, 65535))  # logical screen
    bmp = bytearray(encode(fmt="BMP"))
    bmp[18:26] = struct.pack("<ii", side, side)  # BITMAPINFOHEADER width, height
    webp_side = min(side, 16384) - 1  # VP8X stores width - 1 and height - 1 in 24 bits
    vp8x = struct.pack("<I", 0) + (webp_side).to_bytes(3, "little") * 2
    webp = b"RIFF" + struct.pack("<I", 4 + 8 + len(vp8x)) + b"WEBP" + b"VP8X"
    webp += struct.pack("<I", len(vp8x)) + vp8x
    return {"png": png_header_only(side, side), "jpeg": bytes(jpeg), "gif": bytes(gif),
            "bmp": bytes(bmp), "webp": webp}


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (20, 10), c) for c in ("red", "blue")]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])


def write_rows(path: Path, rows: list[dict]) -> Path:
    """CSV (header = union of keys in first-seen order) or JSONL, by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_catalogue(root: Path, products=None, examples=None, fmt: str = "csv",
                   files: dict[str, bytes] | None = None) -> Path:
    """A catalogue folder with good `images/p1.jpg` / `images/p2.png` plus `files` (relative
    path -> bytes) written on top."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images" / "p1.jpg").write_bytes(encode(fmt="JPEG"))
    (root / "images" / "p2.png").write_bytes(encode(fmt="PNG"))
    for relative, data in (files or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    write_rows(root / f"products.{fmt}", PRODUCTS if products is None else products)
    write_rows(root / f"examples.{fmt}", EXAMPLES if examples is None else examples)
    return root


def with_image(path: str, row: int = 1) -> list[dict]:
    """PRODUCTS with product `row` (0-based; 1 = data row 2) pointing at `path`."""
    rows = [dict(r) for r in PRODUCTS]
    rows[row]["image"] = path
    return rows


# --- child processes ----------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_python(code: str, *args: str, timeout: float = 300, cwd: Path | None = None,
               ) -> subprocess.CompletedProcess:
    """Runs `python -c code args...` to completion (stdout / stderr captured as text)."""
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=child_env(), cwd=cwd)


def start_python(code: str, *args: str, log: Path) -> subprocess.Popen:
    """Starts `python -c code args...` in the background, stdout + stderr into `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=out,
                                stderr=subprocess.STDOUT, env=child_env())


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, log: Path,
             timeout: float = 300, what: str = "condition") -> None:
    """Polls `condition` every 50 ms; fails (with the child's log) if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"child exited ({proc.returncode}) before {what}:\n{tail(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}:\n{tail(log)}")
        time.sleep(0.05)


def tail(source: Path | str, chars: int = 3000) -> str:
    text = source.read_text(errors="replace") if isinstance(source, Path) else source
    return text[-chars:]


def last_json_line(stdout: str) -> dict:
    """The last line of `stdout` that parses as a JSON object (children print one report)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON report in the child's output:\n{tail(stdout)}")
