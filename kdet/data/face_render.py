"""Rendering the embedded face set: backgrounds, textures, face and distractor crops, placement.

The pieces :func:`kdet.data.faces.render_face_scene` composes (see
:mod:`kdet.data.faces` for what the set is); every function draws from the
``rng`` it is given, nothing else.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

#: Background photos from ``skimage.data``. ``astronaut`` and ``camera`` are
#: left out on purpose: they show human faces that would be unlabelled
#: positives. ``cat`` is the same photo as ``chelsea``.
BACKGROUND_PHOTOS = (
    "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "coins", "horse", "moon", "page", "text", "clock", "cell", "brick", "grass",
    "gravel",
)  # fmt: skip


#: Largest fraction of a face's square an occluding rectangle covers.
MAX_OCCLUSION = 0.3
PLACEMENT_TRIES = 10
PHOTO_FRACTION = 0.6
BLUR_FRACTION = 0.25
OCCLUDED_FRACTION = 0.25
GREY_FACE_FRACTION = 0.15
#: Mean and standard deviation of the lfw_subset face crops' grey values.
CROP_MEAN, CROP_STD = 0.45, 0.21
#: Skin-like RGB tones; a face's tint mixes two of them.
SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 150], [224, 172, 125], [198, 134, 90],
     [161, 102, 64], [110, 70, 45], [255, 205, 170], [229, 184, 143]],
    np.float32,
) / 255.0  # fmt: skip



@functools.lru_cache(maxsize=1)
def _lfw() -> np.ndarray:
    """``[200, 25, 25]`` float32 in [0, 1]."""
    from skimage import data  # imported lazily: only the face set needs it

    return data.lfw_subset().astype(np.float32)


@functools.lru_cache(maxsize=1)
def _photos() -> dict[str, np.ndarray]:
    """Background photos as uint8 ``[H, W, 3]`` (colour) or ``[H, W]`` (grey)."""
    from skimage import data

    photos = {}
    for name in BACKGROUND_PHOTOS:
        photo = np.asarray(getattr(data, name)())
        if photo.dtype == bool:  # the horse silhouette
            photo = photo.astype(np.uint8) * 255
        photos[name] = photo[..., :3] if photo.ndim == 3 else photo
    return photos


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of a uint8 image with PIL."""
    return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))


def _random_tones(rng: np.random.Generator, grey: np.ndarray) -> np.ndarray:
    """Grey uint8 ``[h, w]`` -> float32 RGB between a dark and a light colour."""
    dark = tuple(rng.integers(0, 120, 3).tolist())
    light = tuple(rng.integers(130, 256, 3).tolist())
    return np.asarray(ImageOps.colorize(Image.fromarray(grey), dark, light), np.float32)


def _photo_crop(rng, region, height: int, width: int):
    """A window of a random photo inside ``region``, resized to ``[height, width]``.

    Returns:
        ``(float32 [height, width, 3], (name, (top, left, bottom, right)))``.
    """
    name = BACKGROUND_PHOTOS[int(rng.integers(len(BACKGROUND_PHOTOS)))]
    photo = _photos()[name]
    ph, pw = photo.shape[:2]
    r0, c0 = round(region[0] * ph), round(region[1] * pw)
    rh, rw = round(region[2] * ph) - r0, round(region[3] * pw) - c0
    aspect = width / height
    ch = min(rh, rw / aspect) * rng.uniform(0.35, 1.0)
    ch, cw = max(int(ch), 2), max(int(ch * aspect), 2)
    ch, cw = min(ch, rh), min(cw, rw)
    top = r0 + int(rng.integers(0, rh - ch + 1))
    left = c0 + int(rng.integers(0, rw - cw + 1))
    crop = _resize(photo[top : top + ch, left : left + cw], height, width)
    if crop.ndim == 2:
        crop = _random_tones(rng, crop)
    else:
        crop = crop.astype(np.float32) * rng.uniform(0.8, 1.2, 3).astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.2:
        crop = crop[::-1]
    return crop, (name, (top, left, top + ch, left + cw))


def _smooth_noise(rng, height: int, width: int, cell: float) -> np.ndarray:
    """Uniform noise on a ``cell``-pixel grid, bilinearly upsampled, float32."""
    gh, gw = max(int(height / cell), 2), max(int(width / cell), 2)
    small = Image.fromarray(rng.random((gh, gw), dtype=np.float32))  # mode "F"
    return np.asarray(small.resize((width, height), Image.BILINEAR))


def _texture(rng, height: int, width: int) -> np.ndarray:
    """A procedural texture ``[height, width, 3]`` float32 in 0..255."""
    kind = int(rng.integers(3))
    if kind == 2:
        return _blobs(rng, height, width)
    if kind == 0:  # multi-scale value noise
        t = sum(
            _smooth_noise(rng, height, width, cell) * weight
            for cell, weight in ((rng.uniform(40, 160), 1.0), (rng.uniform(8, 30), 0.5),
                                 (rng.uniform(2, 5), 0.25))
        )  # fmt: skip
    else:  # stripes, or a grid of two stripe sets
        yy = np.arange(height, dtype=np.float32)[:, None]
        xx = np.arange(width, dtype=np.float32)[None, :]
        t = np.zeros((height, width), np.float32)
        for _ in range(int(rng.integers(1, 3))):
            angle, period = rng.uniform(0, np.pi), rng.uniform(4, 60)
            step = np.float32(2 * np.pi / period)
            phase = xx * (np.cos(angle) * step) + yy * (np.sin(angle) * step)
            wave = np.sin(phase)
            t += np.sign(wave) if rng.random() < 0.5 else wave
        t += _smooth_noise(rng, height, width, rng.uniform(10, 80)) * rng.uniform(0, 2)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    return c0 + (c1 - c0) * t[..., None]


def _blobs(rng, height: int, width: int) -> np.ndarray:
    """Gradient + blurred ellipses (drawn at 1/4 size) + thin clutter lines."""
    h, w = max(height // 4, 2), max(width // 4, 2)
    c0, c1 = rng.uniform(0, 255, (2, 3))
    if rng.random() < 0.5:
        t = np.linspace(0, 1, w)[None, :, None]  # left-right gradient
    else:
        t = np.linspace(0, 1, h)[:, None, None]  # top-bottom gradient
    base = np.broadcast_to(c0 + (c1 - c0) * t, (h, w, 3))
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 10))):
        y, x = rng.uniform(-0.2, 1.0, 2) * (h, w)
        eh, ew = rng.uniform(0.05, 0.6, 2) * (h, w)
        draw.ellipse([x, y, x + ew, y + eh], fill=tuple(rng.integers(0, 256, 3).tolist()))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3)))
    image = image.resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 8))):
        points = rng.uniform(-0.1, 1.1, (int(rng.integers(2, 5)), 2)) * (width, height)
        colour = tuple(rng.integers(0, 256, 3).tolist())
        draw.line([tuple(p) for p in points], fill=colour, width=int(rng.integers(1, 4)))
    return np.asarray(image, np.float32)


def _rect_alpha(rng, height: int, width: int) -> np.ndarray:
    """``[height, width]`` alpha, 1 inside, ramping to 0 over 0..12% of the side."""
    feather = max(min(height, width) * rng.uniform(0.0, 0.12), 0.5)
    ry = np.minimum(np.arange(height) + 0.5, height - np.arange(height) - 0.5) / feather
    rx = np.minimum(np.arange(width) + 0.5, width - np.arange(width) - 0.5) / feather
    return np.clip(np.minimum(ry[:, None], rx[None, :]), 0, 1).astype(np.float32)


def _blend(canvas, top: int, left: int, content, alpha) -> None:
    """``canvas[window] = canvas * (1 - alpha) + content * alpha`` in place."""
    h, w = alpha.shape
    window = canvas[top : top + h, left : left + w]
    a = alpha[..., None]
    window += (content - window) * a


def _background(rng, region, height: int, width: int):
    """Photo or texture, with 0..3 collage patches; returns (canvas, photo crops)."""
    crops = []
    if rng.random() < PHOTO_FRACTION:
        canvas, crop = _photo_crop(rng, region, height, width)
        canvas = np.array(canvas, np.float32)
        crops.append(crop)
    else:
        canvas = _texture(rng, height, width)
    for _ in range(int(rng.integers(0, 4))):
        ph = max(int(height * rng.uniform(0.15, 0.6)), 2)
        pw = max(int(width * rng.uniform(0.15, 0.6)), 2)
        if rng.random() < 0.5:
            patch, crop = _photo_crop(rng, region, ph, pw)
            crops.append(crop)
        else:
            patch = _texture(rng, ph, pw)
        top, left = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
        _blend(canvas, top, left, patch, _rect_alpha(rng, ph, pw))
    return canvas, crops


def _crop_alpha(rng, side: int) -> np.ndarray:
    """Feathered, rounded-square alpha ``[side, side]``.

    A superellipse ``|u|^p + |v|^p = 1`` (p in 3..10) rounds the corners; alpha
    ramps from 0 at its boundary to 1 over 4..12% of the side. It stays above 0
    in the middle of every side, so the box is the visible extent of the crop.
    """
    feather = max(side * rng.uniform(0.04, 0.12), 1.0)
    p = rng.uniform(3, 10)
    u = np.abs((np.arange(side, dtype=np.float32) + 0.5) / side * 2 - 1) ** p
    radius = (u[:, None] + u[None, :]) ** (1 / p)
    return np.clip((1 - radius) * (side / 2) / feather + 0.5 / feather, 0, 1)


def _render_crop(rng, grey: np.ndarray, side: int) -> np.ndarray:
    """A 25x25 grey crop -> tinted, jittered, resized float32 ``[side, side, 3]``.

    The crop is first brought to the mean and (within a factor 2) the contrast
    of an average face, so that non-face crops (often dark, flat patches) are
    not told apart by brightness alone; then jittered.
    """
    mean, std = grey.mean(), max(float(grey.std()), 1e-3)
    gain = np.clip(CROP_STD / std, 0.5, 2.0) * np.exp(rng.uniform(np.log(0.6), np.log(1.5)))
    g = (grey - mean) * gain + CROP_MEAN + rng.uniform(-0.2, 0.2)
    g = np.clip(g, 0, 1) ** np.exp(rng.uniform(-0.3, 0.3))
    if rng.random() < GREY_FACE_FRACTION:
        tint = np.ones(3, np.float32)
    else:
        a, b = SKIN_TONES[rng.integers(len(SKIN_TONES), size=2)]
        tint = a + (b - a) * rng.random()
        tint = tint / tint.max() * rng.uniform(0.9, 1.15)
    rgb = np.clip(g[..., None] * tint * 255.0, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        rgb = rgb[:, ::-1]
    image = Image.fromarray(np.ascontiguousarray(rgb))
    image = image.resize((side, side), Image.BICUBIC if side > grey.shape[0] else Image.BILINEAR)
    if rng.random() < BLUR_FRACTION:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 0.8 + side / 40)))
    return np.asarray(image, np.float32)


def _occlude(rng, canvas, box) -> None:
    """Covers 10%..MAX_OCCLUSION of a square box from one side or corner."""
    top, left, side = int(box[0]), int(box[1]), int(box[2] - box[0])
    fraction = rng.uniform(0.1, MAX_OCCLUSION)
    if rng.random() < 0.5:  # a band along one side
        h, w = max(int(side * fraction), 1), side
        if rng.random() < 0.5:
            h, w = w, h
    else:  # a corner rectangle
        aspect = rng.uniform(0.5, 2.0)
        h = min(max(int(side * np.sqrt(fraction * aspect)), 1), side)
        w = min(max(int(side * fraction * side / h), 1), side)
    y = top + (side - h if rng.random() < 0.5 else 0)
    x = left + (side - w if rng.random() < 0.5 else 0)
    if rng.random() < 0.5:  # a piece of background from elsewhere
        sy = int(rng.integers(0, canvas.shape[0] - h + 1))
        sx = int(rng.integers(0, canvas.shape[1] - w + 1))
        patch = canvas[sy : sy + h, sx : sx + w].copy()
    else:
        patch = _texture(rng, h, w)
    _blend(canvas, y, x, patch, _rect_alpha(rng, h, w))


def _sample_sides(rng, count: int, face_sizes, height: int, width: int) -> np.ndarray:
    """``count`` integer sides, log-uniform in ``face_sizes``, largest first."""
    lo, hi = face_sizes[0], min(face_sizes[1], height, width)
    sides = np.exp(rng.uniform(np.log(lo), np.log(hi + 1), count))
    return np.sort(np.minimum(sides.astype(np.int64), hi))[::-1]


def _overlap(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection of ``box`` ``[4]`` with ``others`` ``[K, 4]`` / smaller area."""
    hw = np.minimum(box[2:], others[:, 2:]) - np.maximum(box[:2], others[:, :2])
    inter = np.prod(np.maximum(hw, 0), axis=-1)
    areas = np.prod(others[:, 2:] - others[:, :2], axis=-1)
    return inter / np.minimum(areas, np.prod(box[2:] - box[:2]))


def _place(rng, sides, height: int, width: int, *, avoid, limit: float) -> np.ndarray:
    """Square boxes ``[K, 4]`` overlapping ``avoid`` and each other <= ``limit``."""
    placed = [np.asarray(avoid, np.float32).reshape(-1, 4)]
    start = len(placed[0])
    for side in sides:
        for _ in range(PLACEMENT_TRIES):
            y = int(rng.integers(0, height - side + 1))
            x = int(rng.integers(0, width - side + 1))
            box = np.array([y, x, y + side, x + side], np.float32)
            others = np.concatenate(placed)
            if not len(others) or _overlap(box, others).max() <= limit:
                placed.append(box[None])
                break
    return np.concatenate(placed)[start:]
