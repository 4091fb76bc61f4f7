"""Anti-aliased rasterisation of the synthetic dataset's shape classes.

Each shape is defined inside its float box ``[ymin, xmin, ymax, xmax]`` (pixels)
and touches all four sides of it, so the box is the exact extent of the shape.
Shapes are drawn with PIL at ``SUPERSAMPLE`` x resolution and box-filtered down,
which gives each edge pixel its fractional coverage: sub-pixel box edges are
visible in the image, and precise localisation is possible but not trivial.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Class names; the index is the label id.
SHAPE_NAMES = ("ellipse", "rectangle", "triangle", "cross", "ring", "star")

#: Supersampling factor of the rasteriser (coverage resolution 1/16 pixel^2).
SUPERSAMPLE = 4


#: Pixels of empty margin around a shape's window (room for blur and strokes).
MARGIN = 4


def region_of(box: np.ndarray, *, image_size: int) -> tuple[int, int, int, int]:
    """Integer pixel window ``(top, left, bottom, right)`` holding ``box``.

    The box plus :data:`MARGIN`, clipped to the image; ``bottom``/``right`` are
    exclusive.
    """
    top = max(int(np.floor(box[0])) - MARGIN, 0)
    left = max(int(np.floor(box[1])) - MARGIN, 0)
    bottom = min(int(np.ceil(box[2])) + MARGIN, image_size)
    right = min(int(np.ceil(box[3])) + MARGIN, image_size)
    return top, left, bottom, right


def unit_polygon(kind: str, rng: np.random.Generator) -> np.ndarray | None:
    """Vertices ``[K, 2]`` (x, y) in the unit square, touching all four sides.

    Returns None for shapes drawn as ellipses (``ellipse``, ``ring``).
    """
    if kind == "rectangle":
        return np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64)
    if kind == "triangle":
        apex = rng.uniform(0.2, 0.8)
        tri = np.array([[apex, 0], [1, 1], [0, 1]], np.float64)
        turns = rng.integers(4)  # apex up, left, down or right
        for _ in range(turns):
            tri = np.stack([tri[:, 1], 1 - tri[:, 0]], axis=1)
        return tri
    if kind == "cross":
        t = rng.uniform(0.26, 0.42) / 2  # half arm thickness
        a, b = 0.5 - t, 0.5 + t
        return np.array(
            [[a, 0], [b, 0], [b, a], [1, a], [1, b], [b, b],
             [b, 1], [a, 1], [a, b], [0, b], [0, a], [a, a]],
            np.float64,
        )  # fmt: skip
    if kind == "star":
        points = 5
        inner = rng.uniform(0.38, 0.5)
        angles = rng.uniform(0, 2 * np.pi) + np.arange(2 * points) * np.pi / points
        radius = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
        star = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
        star -= star.min(axis=0)
        return star / star.max(axis=0)
    return None


def silhouette(
    kind: str, box: np.ndarray, rng: np.random.Generator, *, image_size: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Coverage ``[h, w]`` float32 in [0, 1] of a filled shape, and its window.

    Args:
        kind: one of :data:`SHAPE_NAMES`.
        box: ``[4]`` float yxyx pixels; may extend past the image.
        rng: draws the shape's own parameters (apex, arm width, ...).
        image_size: side of the square image.

    Returns:
        ``(coverage, (top, left, bottom, right))`` of :func:`region_of`.
    """
    top, left, bottom, right = region_of(box, image_size=image_size)
    s = SUPERSAMPLE
    canvas = Image.new("L", ((right - left) * s, (bottom - top) * s), 0)
    draw = ImageDraw.Draw(canvas)
    # Continuous pixel coordinate u maps to supersampled u * s - 0.5, so PIL's
    # inclusive pixel test becomes "pixel centre inside the shape".
    y0, x0 = (box[0] - top) * s - 0.5, (box[1] - left) * s - 0.5
    y1, x1 = (box[2] - top) * s - 0.5, (box[3] - left) * s - 0.5
    polygon = unit_polygon(kind, rng)
    if polygon is not None:
        xs = x0 + polygon[:, 0] * (x1 - x0)
        ys = y0 + polygon[:, 1] * (y1 - y0)
        xy = np.stack([xs, ys], axis=1)
        draw.polygon([tuple(p) for p in xy], fill=255)
    else:
        draw.ellipse([x0, y0, x1, y1], fill=255)
        if kind == "ring":
            k = rng.uniform(0.45, 0.72) / 2  # inner / outer radius, halved
            cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
            hy, hx = (y1 - y0) * k, (x1 - x0) * k
            draw.ellipse([cx - hx, cy - hy, cx + hx, cy + hy], fill=0)
    small = canvas.resize((right - left, bottom - top), Image.BOX)
    return np.asarray(small, np.float32) / 255.0, (top, left, bottom, right)


def erode(coverage: np.ndarray, *, radius: int) -> np.ndarray:
    """Grey-level erosion by a ``(2 radius + 1)`` square (separable min filter)."""
    out = np.pad(coverage, radius, mode="constant")
    for axis in (0, 1):
        shifted = [np.roll(out, d, axis=axis) for d in range(-radius, radius + 1)]
        out = np.minimum.reduce(shifted)
    return out[radius:-radius, radius:-radius] if radius else out


def outline(coverage: np.ndarray, *, width: int) -> np.ndarray:
    """The inner band of ``width`` pixels of a silhouette (its drawn outline)."""
    return np.clip(coverage - erode(coverage, radius=width), 0.0, 1.0)


def soften(coverage: np.ndarray, *, sigma: float) -> np.ndarray:
    """Gaussian-blurred coverage (soft, out-of-focus edges)."""
    image = Image.fromarray(np.round(coverage * 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(image, np.float32) / 255.0
