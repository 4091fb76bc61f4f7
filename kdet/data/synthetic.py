"""An embedded synthetic detection dataset, generated deterministically from a seed.

Six shape classes (:data:`SHAPE_NAMES`) with sizes from 8% to 90% of the image
side and aspect ratios 0.4..2.5, drawn filled, with a gradient, with a border or
as a thin outline, some with blurred (out-of-focus) edges, on a cluttered
background (smooth colour gradient, blurred blobs, thin lines and arcs that are
*not* objects, sensor noise). Objects overlap: each new object is placed only if
it leaves every earlier object at least ``1 - MAX_OCCLUSION`` of its drawn
pixels visible, and objects may be cut by the image border by up to
``MAX_TRUNCATION`` of their size. A box is the full float extent of its shape
(also under occlusion), clipped to the image. About ``EMPTY_FRACTION`` of the
images have no object.

Recognising the shapes is easy (AP50 is high for a small detector), but AP at
IoU 0.8-0.9 is hard: anti-aliased sub-pixel edges, blur, 1-px outlines,
occluded corners and small objects all blur where an edge is.

Image ``i`` of a split depends only on ``(seed, split, i)``: the same seed gives
byte-identical images, and ``num_images`` only chooses a prefix.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFilter

from kdet.data.example import DetectionInfo
from kdet.data.synthetic_shapes import SHAPE_NAMES, outline, silhouette, soften

#: split -> (seed stream, default number of images).
SPLITS = {"train": (0, 2000), "validation": (1, 200), "test": (2, 200)}
#: Object size sqrt(h * w) as a fraction of the image side, log-uniform.
SIZE_RANGE = (0.08, 0.9)
#: Aspect ratio w / h, log-uniform.
ASPECT_RANGE = (0.4, 2.5)
MAX_OBJECTS = 8
EMPTY_FRACTION = 0.07
#: Largest fraction of an object's drawn pixels later objects may hide; beyond
#: ~50% the label would no longer be recognisable.
MAX_OCCLUSION = 0.45
#: Largest fraction of an object's height/width allowed outside the image.
MAX_TRUNCATION = 0.15
#: Placement attempts per object before it is given up (crowded images).
PLACEMENT_TRIES = 6
#: Smallest RGB distance between an object and the pixels it covers.
MIN_CONTRAST = 60.0


def synthetic_info() -> DetectionInfo:
    """DetectionInfo of the synthetic set: 6 shapes, category ids 1..6."""
    return DetectionInfo(
        class_names=SHAPE_NAMES,
        category_ids=tuple(range(1, len(SHAPE_NAMES) + 1)),
        name="synthetic_shapes",
    )


def _background(rng: np.random.Generator, size: int, *, clutter: bool = True) -> np.ndarray:
    """Gradient + blurred blobs + thin clutter lines (``clutter``), ``[size, size, 3]`` float32."""
    c0, c1 = rng.uniform(0, 255, (2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = xx * np.cos(theta) + yy * np.sin(theta)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    base = c0 + (c1 - c0) * t[..., None]
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 8)):
        y, x = rng.uniform(-0.2, 1.0, 2) * size
        h, w = rng.uniform(0.2, 0.7, 2) * size
        colour = tuple(rng.integers(0, 256, 3).tolist())
        draw.ellipse([x, y, x + w, y + h], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(4, 9)))
    if clutter:
        _draw_clutter(rng, ImageDraw.Draw(image), size=size, count=rng.integers(3, 11))
    return np.asarray(image, np.float32)


def _draw_clutter(rng, draw: ImageDraw.ImageDraw, *, size: int, count: int) -> None:
    """Random polylines and arcs: edges that belong to no object."""
    for _ in range(count):
        colour = tuple(rng.integers(0, 256, 3).tolist())
        width = int(rng.integers(1, 3))
        if rng.random() < 0.6:
            points = rng.uniform(-0.1, 1.1, (int(rng.integers(2, 5)), 2)) * size
            draw.line([tuple(p) for p in points], fill=colour, width=width)
        else:
            x, y = rng.uniform(-0.2, 0.9, 2) * size
            r = rng.uniform(0.1, 0.5) * size
            start = rng.uniform(0, 360)
            end = start + rng.uniform(30, 160)
            draw.arc([x, y, x + r, y + r], start, end, fill=colour, width=width)


def _sample_box(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float yxyx box with the size, aspect and truncation ranges above."""
    s = size * np.exp(rng.uniform(*np.log(SIZE_RANGE)))
    aspect = np.exp(rng.uniform(*np.log(ASPECT_RANGE)))
    h, w = s / np.sqrt(aspect), s * np.sqrt(aspect)
    shrink = min(1.0, 0.95 * size / max(h, w))
    h, w = h * shrink, w * shrink
    y = rng.uniform(-MAX_TRUNCATION * h, size - (1 - MAX_TRUNCATION) * h)
    x = rng.uniform(-MAX_TRUNCATION * w, size - (1 - MAX_TRUNCATION) * w)
    return np.array([y, x, y + h, x + w])


def _alpha(kind: str, coverage: np.ndarray, rng: np.random.Generator):
    """Drawn alpha of a shape from its silhouette: fill, border or outline, blur.

    Returns:
        ``(fill_alpha, border_alpha or None)``, both like ``coverage``.
    """
    style = rng.random()
    border = None
    if style < 0.2 and kind != "ring":
        fill = outline(coverage, width=int(rng.integers(1, 4)))
    else:
        fill = coverage
        if style > 0.75:
            border = outline(coverage, width=1)
    if rng.random() < 0.25:
        sigma = rng.uniform(0.6, 1.5)
        fill = soften(fill, sigma=sigma)
        border = None if border is None else soften(border, sigma=sigma)
    return fill, border


def _colour_layer(rng, region: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Solid or two-colour gradient paint contrasting with ``region``."""
    covered = region[alpha > 0.5]
    under = covered.mean(axis=0) if len(covered) else region.reshape(-1, 3).mean(0)
    for _ in range(4):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - under) >= MIN_CONTRAST:
            break
    if rng.random() < 0.7:
        return np.broadcast_to(colour, region.shape)
    other = np.clip(colour + rng.uniform(-90, 90, 3), 0, 255)
    h, w = alpha.shape
    if rng.random() < 0.5:
        t = np.broadcast_to(np.linspace(0, 1, w)[None, :], (h, w))
    else:
        t = np.broadcast_to(np.linspace(0, 1, h)[:, None], (h, w))
    return colour + (other - colour) * t[..., None]


def _paint(canvas: np.ndarray, window, alpha: np.ndarray, layer: np.ndarray) -> None:
    top, left, bottom, right = window
    region = canvas[top:bottom, left:right]
    a = alpha[..., None]
    canvas[top:bottom, left:right] = region * (1 - a) + layer * a


def _try_place(rng, canvas, visible, *, size):
    """One placement attempt; returns (box, label, drawn mask) or None."""
    label = int(rng.integers(len(SHAPE_NAMES)))
    box = _sample_box(rng, size)
    coverage, window = silhouette(SHAPE_NAMES[label], box, rng, image_size=size)
    fill, border = _alpha(SHAPE_NAMES[label], coverage, rng)
    top, left, bottom, right = window
    mask = np.zeros((size, size), bool)
    mask[top:bottom, left:right] = fill > 0.5
    for seen, total in visible:
        if (seen & ~mask).sum() < (1 - MAX_OCCLUSION) * total:
            return None
    region = canvas[top:bottom, left:right]
    _paint(canvas, window, fill, _colour_layer(rng, region, fill))
    if border is not None:
        ink = np.broadcast_to(rng.uniform(0, 255, 3), (*fill.shape, 3))
        _paint(canvas, window, border, ink)
    return np.clip(box, 0, size).astype(np.float32), label, mask


def render_scene(
    rng: np.random.Generator, *, image_size: int = 128, clutter: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders one synthetic image and its objects.

    Args:
        rng: the only source of randomness.
        image_size: side of the square image.
        clutter: draw the distracting lines and arcs (False: a cleaner scene
            for pictures; every split of the dataset has them).

    Returns:
        ``(image [S, S, 3] uint8, boxes [N, 4] float32 yxyx pixels,
        classes [N] int32)``; N in ``0..MAX_OBJECTS``.
    """
    canvas = _background(rng, image_size, clutter=clutter)
    empty = rng.random() < EMPTY_FRACTION
    wanted = 0 if empty else int(rng.integers(1, MAX_OBJECTS + 1))
    visible, boxes, classes = [], [], []
    for _ in range(wanted):
        for _ in range(PLACEMENT_TRIES):
            placed = _try_place(rng, canvas, visible, size=image_size)
            if placed is not None:
                break
        if placed is None:
            continue
        box, label, mask = placed
        visible = [(seen & ~mask, total) for seen, total in visible]
        visible.append((mask, max(int(mask.sum()), 1)))
        boxes.append(box)
        classes.append(label)
    top_clutter = int(rng.integers(0, 3)) if clutter else 0  # thin lines over the objects too
    if top_clutter:
        image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
        _draw_clutter(rng, ImageDraw.Draw(image), size=image_size, count=top_clutter)
        canvas = np.asarray(image, np.float32)
    canvas += rng.normal(0.0, rng.uniform(2, 9), canvas.shape)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return (
        image,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(classes, np.int32),
    )


@functools.lru_cache(maxsize=8)
def synthetic_examples(
    split: str = "train",
    *,
    seed: int = 0,
    num_images: int | None = None,
    image_size: int = 128,
    clutter: bool = True,
) -> tuple[dict[str, np.ndarray], ...]:
    """The synthetic examples as numpy example dicts (cached, read-only arrays).

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"`` (disjoint images).
        seed: dataset seed.
        num_images: defaults to 2000 / 200 / 200 for the three splits.
        image_size: side of the square images.
        clutter: draw the distracting lines and arcs (the dataset has them;
            False renders other, cleaner scenes, for pictures only).

    Returns:
        Tuple of dicts with the keys of the example dict; ``image_id`` is
        ``index + 1`` and ``is_crowd`` is all False.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {sorted(SPLITS)}.")
    stream, default_count = SPLITS[split]
    count = default_count if num_images is None else int(num_images)
    examples = []
    for index in range(count):
        rng = np.random.default_rng([int(seed), stream, index])
        image, boxes, classes = render_scene(rng, image_size=image_size, clutter=clutter)
        example = {
            "image": image,
            "boxes": boxes,
            "classes": classes,
            "is_crowd": np.zeros(len(classes), bool),
            "image_id": np.int64(index + 1),
        }
        for value in example.values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
        examples.append(example)
    return tuple(examples)


def synthetic_dataset(
    split: str = "train",
    *,
    seed: int = 0,
    num_images: int | None = None,
    image_size: int = 128,
    clutter: bool = True,
) -> tuple[tf.data.Dataset, DetectionInfo]:
    """The synthetic set as a ``tf.data.Dataset`` of example dicts.

    Arguments as in :func:`synthetic_examples`. The images are generated once
    per argument set (numpy + PIL) and served from memory.

    Returns:
        ``(dataset, DetectionInfo)``; examples follow the reader contract.
    """
    examples = synthetic_examples(
        split, seed=seed, num_images=num_images, image_size=image_size, clutter=clutter
    )
    lengths = np.array([len(e["classes"]) for e in examples], np.int64)

    def ragged(key, dtype, inner=()):
        values = [e[key] for e in examples]
        flat = np.concatenate(values) if values else np.zeros((0, *inner), dtype)
        return tf.RaggedTensor.from_row_lengths(flat.astype(dtype), lengths)

    if examples:
        images = np.stack([e["image"] for e in examples])
    else:
        images = np.zeros((0, image_size, image_size, 3), np.uint8)
    columns = {
        "image": images,
        "boxes": ragged("boxes", np.float32, (4,)),
        "classes": ragged("classes", np.int32),
        "is_crowd": ragged("is_crowd", bool),
        "image_id": np.array([e["image_id"] for e in examples], np.int64),
    }
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    # Rows of a ragged column arrive as dense tensors; make the spec say so.
    dataset = dataset.map(
        lambda example: {k: tf.convert_to_tensor(v) for k, v in example.items()}
    )
    return dataset, synthetic_info()
