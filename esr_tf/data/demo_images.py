"""Procedural product photos for the demo shop: a category silhouette in a colour, on a backdrop.

Each image draws the category's silhouette (at 2x, then box-downsampled for smooth edges), fills
it with the product colour and an optional darker-shade pattern (stripes or dots) that never
hides the main colour, outlines it, adds a soft drop shadow, a lighting gradient, a position /
scale / rotation / mirror jitter, a neutral low-saturation background and mild noise. All
randomness comes from the `numpy.random.Generator` passed in, so a seed fixes every pixel.

Example:
>>> import numpy as np
>>> image = render_product_image("mug", "red", "plain", np.random.default_rng(0), size=128)
>>> image.size, image.mode
((128, 128), 'RGB')
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Well separated in hue / lightness so the colour is readable from a small photo.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 30, 35),
    "blue": (35, 75, 205),
    "green": (35, 150, 60),
    "yellow": (240, 205, 35),
    "black": (28, 28, 30),
    "white": (246, 246, 242),
    "orange": (245, 130, 25),
    "purple": (130, 45, 170),
}
# Neutral, low-saturation backdrops (never mistakable for a product colour).
BACKGROUNDS = [(206, 206, 206), (222, 216, 204), (198, 207, 218), (186, 191, 186),
               (228, 226, 220), (172, 176, 182), (214, 206, 210)]
PATTERNS = ("plain", "stripes", "dots")

Box = tuple[float, float, float, float]


class _Canvas:
    """Draws unit-square shapes onto a mask and a detail-line mask of `px` pixels.

    Every shape becomes a polygon or polyline first, so the pose (mirror, rotation, scale,
    shift) is applied to points exactly and cheaply, with no resampling of pixels.
    """

    def __init__(self, px: int, scale: float, shift: tuple[float, float], angle: float,
                 mirror: bool):
        self.px = px
        self.mask = Image.new("L", (px, px), 0)
        self.detail = Image.new("L", (px, px), 0)
        self.m = ImageDraw.Draw(self.mask)
        self.d = ImageDraw.Draw(self.detail)
        self.scale, self.shift, self.mirror = scale, shift, mirror
        self.cos, self.sin = np.cos(np.radians(angle)), np.sin(np.radians(angle))

    def pts(self, points) -> list[tuple[float, float]]:
        p = np.asarray(points, np.float64) - 0.5
        if self.mirror:
            p[:, 0] = -p[:, 0]
        x = (p[:, 0] * self.cos - p[:, 1] * self.sin) * self.scale + 0.5 + self.shift[0]
        y = (p[:, 0] * self.sin + p[:, 1] * self.cos) * self.scale + 0.5 + self.shift[1]
        return list(zip((x * self.px).tolist(), (y * self.px).tolist(), strict=True))

    def w(self, width: float) -> int:
        return max(1, round(width * self.scale * self.px))

    @staticmethod
    def arc_points(b: Box, start: float, end: float, n: int = 40) -> np.ndarray:
        t = np.radians(np.linspace(start, end, n))
        cx, cy, rx, ry = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, (b[2] - b[0]) / 2, (b[3] - b[1]) / 2
        return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)

    @staticmethod
    def rrect_points(b: Box, r: float) -> np.ndarray:
        x0, y0, x1, y1 = b
        corners = [((x1 - r, y0 + r), 270), ((x1 - r, y1 - r), 0), ((x0 + r, y1 - r), 90),
                   ((x0 + r, y0 + r), 180)]
        parts = [_Canvas.arc_points((cx - r, cy - r, cx + r, cy + r), a, a + 90, 8)
                 for (cx, cy), a in corners]
        return np.concatenate(parts)

    def poly(self, points, fill: int = 255) -> None:
        self.m.polygon(self.pts(points), fill=fill)

    def ellipse(self, b: Box, fill: int = 255) -> None:
        self.poly(self.arc_points(b, 0, 360, 48), fill)

    def rrect(self, b: Box, r: float, fill: int = 255) -> None:
        self.poly(self.rrect_points(b, r), fill)

    def chord(self, b: Box, start: float, end: float) -> None:
        self.poly(self.arc_points(b, start, end))

    def arc(self, b: Box, start: float, end: float, width: float) -> None:
        self.m.line(self.pts(self.arc_points(b, start, end)), fill=255, width=self.w(width),
                    joint="curve")

    def ring(self, outer: Box, inner: Box) -> None:
        self.ellipse(outer)
        self.ellipse(inner, fill=0)

    def line(self, points, width: float = 0.014) -> None:
        self.d.line(self.pts(points), fill=255, width=self.w(width), joint="curve")

    def outline_rrect(self, b: Box, r: float, width: float = 0.014) -> None:
        p = self.rrect_points(b, r)
        self.line(np.concatenate([p, p[:1]]), width)


def _sneaker(c: _Canvas) -> None:
    c.poly([(0.10, 0.70), (0.12, 0.46), (0.30, 0.41), (0.42, 0.30), (0.56, 0.30), (0.62, 0.46),
            (0.84, 0.55), (0.95, 0.63), (0.95, 0.72)])
    c.rrect((0.07, 0.66, 0.96, 0.80), 0.05)
    c.line([(0.08, 0.68), (0.95, 0.68)])
    for i in range(4):
        x = 0.45 + 0.045 * i
        c.line([(x, 0.36 + 0.03 * i), (x + 0.06, 0.33 + 0.03 * i)], 0.012)


def _sock(c: _Canvas) -> None:
    c.poly([(0.36, 0.08), (0.62, 0.08), (0.62, 0.62), (0.36, 0.62)])
    c.rrect((0.36, 0.50, 0.90, 0.78), 0.13)
    c.ellipse((0.30, 0.50, 0.56, 0.78))
    c.line([(0.36, 0.18), (0.62, 0.18)], 0.02)
    c.line([(0.78, 0.52), (0.78, 0.76)])


def _tshirt(c: _Canvas) -> None:
    c.poly([(0.30, 0.15), (0.42, 0.12), (0.58, 0.12), (0.70, 0.15), (0.92, 0.32), (0.82, 0.46),
            (0.72, 0.38), (0.72, 0.90), (0.28, 0.90), (0.28, 0.38), (0.18, 0.46), (0.08, 0.32)])
    c.ellipse((0.41, 0.04, 0.59, 0.20), fill=0)
    c.line([(0.28, 0.38), (0.22, 0.30)])
    c.line([(0.72, 0.38), (0.78, 0.30)])


def _hoodie(c: _Canvas) -> None:
    c.ellipse((0.35, 0.05, 0.65, 0.32))
    c.poly([(0.30, 0.20), (0.70, 0.20), (0.90, 0.44), (0.93, 0.86), (0.80, 0.87), (0.75, 0.52),
            (0.75, 0.93), (0.25, 0.93), (0.25, 0.52), (0.20, 0.87), (0.07, 0.86), (0.10, 0.44)])
    c.ellipse((0.42, 0.12, 0.58, 0.28), fill=0)
    c.outline_rrect((0.37, 0.64, 0.63, 0.82), 0.03)
    c.line([(0.46, 0.28), (0.45, 0.44)], 0.01)
    c.line([(0.54, 0.28), (0.55, 0.44)], 0.01)


def _cap(c: _Canvas) -> None:
    c.chord((0.14, 0.22, 0.74, 0.86), 180, 360)
    c.ellipse((0.50, 0.48, 0.98, 0.62))
    c.ellipse((0.40, 0.18, 0.48, 0.26))
    c.line([(0.44, 0.24), (0.44, 0.54)])
    c.line([(0.44, 0.24), (0.26, 0.50)], 0.012)


def _backpack(c: _Canvas) -> None:
    c.ring((0.38, 0.06, 0.62, 0.30), (0.43, 0.11, 0.57, 0.25))
    c.rrect((0.20, 0.20, 0.80, 0.93), 0.13)
    c.outline_rrect((0.30, 0.56, 0.70, 0.86), 0.06)
    c.line([(0.30, 0.63), (0.70, 0.63)], 0.01)
    c.line([(0.26, 0.30), (0.74, 0.30)], 0.01)


def _bottle(c: _Canvas) -> None:
    c.rrect((0.35, 0.30, 0.65, 0.94), 0.07)
    c.poly([(0.35, 0.36), (0.43, 0.20), (0.57, 0.20), (0.65, 0.36)])
    c.rrect((0.41, 0.07, 0.59, 0.21), 0.02)
    c.line([(0.41, 0.19), (0.59, 0.19)])
    c.line([(0.35, 0.50), (0.65, 0.50)], 0.01)


def _mug(c: _Canvas) -> None:
    c.ring((0.55, 0.36, 0.87, 0.74), (0.63, 0.44, 0.79, 0.66))
    c.rrect((0.18, 0.24, 0.67, 0.86), 0.04)
    c.line([(0.18, 0.30), (0.67, 0.30)], 0.01)


def _teapot(c: _Canvas) -> None:
    c.ring((0.60, 0.40, 0.91, 0.76), (0.67, 0.47, 0.84, 0.69))
    c.poly([(0.28, 0.62), (0.08, 0.36), (0.03, 0.38), (0.22, 0.74)])
    c.ellipse((0.20, 0.34, 0.76, 0.88))
    c.chord((0.33, 0.22, 0.63, 0.50), 180, 360)
    c.ellipse((0.44, 0.15, 0.52, 0.23))
    c.line([(0.30, 0.40), (0.66, 0.40)], 0.012)


def _phone_case(c: _Canvas) -> None:
    c.rrect((0.31, 0.07, 0.69, 0.93), 0.07)
    c.rrect((0.37, 0.13, 0.52, 0.31), 0.03, fill=0)
    c.line([(0.69, 0.30), (0.69, 0.40)], 0.02)


def _headphones(c: _Canvas) -> None:
    c.arc((0.215, 0.135, 0.785, 0.835), 180, 360, 0.07)
    c.poly([(0.18, 0.44), (0.25, 0.44), (0.25, 0.55), (0.18, 0.55)])
    c.poly([(0.75, 0.44), (0.82, 0.44), (0.82, 0.55), (0.75, 0.55)])
    c.rrect((0.10, 0.46, 0.31, 0.78), 0.06)
    c.rrect((0.69, 0.46, 0.90, 0.78), 0.06)
    c.line([(0.27, 0.50), (0.27, 0.74)], 0.012)
    c.line([(0.73, 0.50), (0.73, 0.74)], 0.012)


SHAPES: dict[str, Callable[[_Canvas], None]] = {
    "sneaker": _sneaker,
    "sock": _sock,
    "t-shirt": _tshirt,
    "hoodie": _hoodie,
    "cap": _cap,
    "backpack": _backpack,
    "water bottle": _bottle,
    "mug": _mug,
    "teapot": _teapot,
    "phone case": _phone_case,
    "headphones": _headphones,
}


def _silhouette(category: str, size: int, rng: np.random.Generator) -> tuple[Image.Image, ...]:
    """Returns (mask, detail) "L" images of `size`, in a random pose (drawn at 2x, then
    box-downsampled for anti-aliased edges)."""
    scale = rng.uniform(0.68, 0.92)
    limit = (1.0 - scale) * 0.45
    shift = tuple(rng.uniform(-limit, limit, size=2))
    canvas = _Canvas(2 * size, scale, shift, rng.uniform(-10.0, 10.0), bool(rng.random() < 0.5))
    SHAPES[category](canvas)
    return tuple(layer.resize((size, size), Image.Resampling.BOX)
                 for layer in (canvas.mask, canvas.detail))


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (y, x), float32, shape (size, size); cached across images."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


@functools.lru_cache(maxsize=4)
def _noise_tile(size: int) -> np.ndarray:
    """Uniform noise in [-0.5, 0.5), shape (3, 2 * size, 2 * size), from a fixed seed."""
    return np.random.default_rng(12345).random((3, 2 * size, 2 * size), np.float32) - 0.5


def _pattern(pattern: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A 0/1 float map of where the pattern's shade replaces the main colour (<= ~30 %)."""
    if pattern == "plain":
        return np.zeros((size, size), np.float32)
    yy, xx = _grid(size)
    period = np.float32(size / rng.uniform(5.0, 9.0))
    if pattern == "stripes":
        theta = rng.choice([0.0, np.pi / 2, np.pi / 4, -np.pi / 4])
        u = xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))
        u = u / period
        return (u - np.floor(u) < 0.3).astype(np.float32)
    fx, fy = xx / period, yy / period
    fx, fy = fx - np.floor(fx) - 0.5, fy - np.floor(fy) - 0.5
    return (fx * fx + fy * fy < 0.22**2).astype(np.float32)


def render_product_image(
    category: str, colour: str, pattern: str, rng: np.random.Generator, size: int = 160
) -> Image.Image:
    """Renders one product photo (RGB, `size` x `size`). See the module docstring."""
    if category not in SHAPES:
        raise ValueError(f"unknown category {category!r}; known: {sorted(SHAPES)}")
    # Work channels-first, float32: (3, 1, 1) colours against (size, size) maps broadcast fast.
    mask, detail = _silhouette(category, size, rng)
    alpha = np.asarray(mask, np.float32) / 255.0
    lines = np.asarray(detail, np.float32) / 255.0
    # Rim = alpha minus its 4-neighbour erosion: a dark outline that separates the product from
    # a backdrop of similar lightness (white on light grey).
    eroded = alpha.copy()
    eroded[1:] = np.minimum(eroded[1:], alpha[:-1])
    eroded[:-1] = np.minimum(eroded[:-1], alpha[1:])
    eroded[:, 1:] = np.minimum(eroded[:, 1:], alpha[:, :-1])
    eroded[:, :-1] = np.minimum(eroded[:, :-1], alpha[:, 1:])
    rim = alpha - eroded

    yy, xx = _grid(size)
    light = rng.normal(size=2)
    light = (light / (np.linalg.norm(light) + 1e-6) * 2.0 / (size - 1)).astype(np.float32)
    gradient = (xx - size / 2) * light[0] + (yy - size / 2) * light[1]  # in [-1.4, 1.4]

    def rgb(values) -> np.ndarray:
        return np.asarray(values, np.float32).reshape(3, 1, 1)

    background = rgb(BACKGROUNDS[rng.integers(len(BACKGROUNDS))]) + rgb(rng.uniform(-8, 8, 3))
    shadow = np.asarray(mask.filter(ImageFilter.BoxBlur(size * 0.03)), np.float32) / 255.0
    shadow = np.roll(shadow, (round(size * 0.04), round(size * 0.03)), axis=(0, 1))
    bg = background * ((1.0 + np.float32(rng.uniform(0.04, 0.12)) * gradient) * (1 - 0.3 * shadow))

    base = rgb(COLOURS[colour])
    dark = float(base.mean()) < 60
    # The pattern uses a shade of the same colour, so the colour stays the product's colour.
    shade = base + 45.0 if dark else base * 0.68
    paint = _pattern(pattern, size, rng)
    shading = (1.0 + np.float32(rng.uniform(0.08, 0.2)) * gradient) * (1.0 - 0.5 * rim)
    obj = (base * (1.0 - paint) + shade * paint) * (shading * (1.0 - 0.4 * lines))
    if dark:  # dark products: lighter detail lines stay visible
        obj = obj + 50.0 * lines

    image = bg * (1.0 - alpha) + obj * alpha
    # Noise: a random crop of a fixed noise tile (drawing fresh noise per image is slow).
    dy, dx = rng.integers(0, size, size=2)
    noise = _noise_tile(size)[:, dy : dy + size, dx : dx + size]
    image = image + noise * np.float32(rng.uniform(6.0, 16.0))
    channels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Image.merge("RGB", [Image.fromarray(c) for c in channels])
