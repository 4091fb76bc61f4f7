"""An embedded face-detection set composited from real faces, deterministic per seed.

Sources, all shipped inside the scikit-image wheel (no network):
  * Faces: ``skimage.data.lfw_subset()``, 200 grey 25x25 crops; crops 0..99 are
    faces (the positives), crops 100..199 are non-faces, pasted as unlabelled
    distractors in exactly the way faces are, so that the paste itself (tint,
    scale, blur, feathered border) is no cue.
  * Backgrounds: real photographs and micrographs (:data:`BACKGROUND_PHOTOS`,
    grey ones turned into random two-colour tones) and procedural textures
    (multi-scale noise, stripes and grids, blurred blobs with clutter lines),
    with collage patches of either on top.

Each face is tinted with a random skin-like colour (sometimes left grey),
resized to a side drawn log-uniformly from ``face_sizes`` (default 12..200 px,
so small faces are common), flipped at random, jittered in brightness, contrast
and gamma, sometimes blurred and sometimes partly occluded (a rectangle of
background or texture over at most :data:`MAX_OCCLUSION` of it), and blended in
with a feathered, rounded border. Its box is the SQUARE pasted crop
``[ymin, xmin, ymax, xmax]`` in integer pixels, wholly inside the image.
Faces overlap little: a face may cover at most :data:`MAX_FACE_OVERLAP` of the
smaller box of any other (so any pairwise IoU is below it), and larger faces
are drawn first so smaller faces are never hidden.

Splits (:data:`FACE_SPLITS`) are held out from each other: disjoint face crops,
disjoint non-face crops, disjoint pixel regions of every background photo, and
separate random streams for the procedural textures. ``lfw_subset`` carries no
identity labels, so a person with several crops may appear in two splits; the
crops themselves never do. :func:`face_scene` returns which crops and photo
regions an image used, for checking this.

Image ``i`` of a split depends only on ``(seed, split, i)`` and the scene
arguments: the same arguments give byte-identical images, ``num_images`` only
chooses a prefix.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from kdet.data.example import EXAMPLE_KEYS, DataStats, DetectionInfo

FACE_CLASS_NAMES = ("face",)
#: No COCO ids: label 0 ("face") gets category id 1, as VOC's labels do.
FACE_CATEGORY_IDS = (1,)

#: Background photos from ``skimage.data``. ``astronaut`` and ``camera`` are
#: left out on purpose: they show human faces that would be unlabelled
#: positives. ``cat`` is the same photo as ``chelsea``.
BACKGROUND_PHOTOS = (
    "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "coins", "horse", "moon", "page", "text", "clock", "cell", "brick", "grass",
    "gravel",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FaceSplit:
    """What one split may draw from.

    Attributes:
        stream: random stream of the split (mixed into every image's seed).
        num_images: default number of images.
        faces: ``lfw_subset`` indices of its face crops.
        non_faces: ``lfw_subset`` indices of its distractor crops.
        region: ``(top, left, bottom, right)`` fractions of every background
            photo that the split may crop from.
    """

    stream: int
    num_images: int
    faces: range
    non_faces: range
    region: tuple[float, float, float, float]


#: Train: left 60% of every photo; validation and test: the top and bottom
#: halves of the right 40%. Crop indices split 70/15/15.
FACE_SPLITS = {
    "train": FaceSplit(
        stream=0, num_images=2000, faces=range(0, 70), non_faces=range(100, 170),
        region=(0.0, 0.0, 1.0, 0.6),
    ),
    "validation": FaceSplit(
        stream=1, num_images=200, faces=range(70, 85), non_faces=range(170, 185),
        region=(0.0, 0.6, 0.5, 1.0),
    ),
    "test": FaceSplit(
        stream=2, num_images=200, faces=range(85, 100), non_faces=range(185, 200),
        region=(0.5, 0.6, 1.0, 1.0),
    ),
}  # fmt: skip

DEFAULT_IMAGE_SIZE = (480, 640)  # VGA, what the face benchmarks time
DEFAULT_FACE_SIZES = (12, 200)
DEFAULT_MAX_FACES = 6
DEFAULT_MAX_DISTRACTORS = 4
EMPTY_FRACTION = 0.1
#: Largest intersection of two face boxes, as a fraction of the smaller one.
MAX_FACE_OVERLAP = 0.25
#: Largest intersection of a distractor with a face, as a fraction of the smaller.
MAX_DISTRACTOR_OVERLAP = 0.1
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


def face_info(name: str = "kdet_faces", *, stats: DataStats | None = None) -> DetectionInfo:
    """DetectionInfo of a face set: one class ``"face"`` (label 0, category id 1)."""
    return DetectionInfo(
        class_names=FACE_CLASS_NAMES, category_ids=FACE_CATEGORY_IDS, name=name, stats=stats
    )


@dataclasses.dataclass(frozen=True)
class FaceScene:
    """One rendered image and where its content came from.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB.
        boxes: ``[N, 4]`` float32 square face boxes, yxyx pixels.
        face_crops: ``[N]`` int ``lfw_subset`` index of each face.
        distractor_boxes: ``[M, 4]`` float32 boxes of the non-face crops.
        distractor_crops: ``[M]`` int ``lfw_subset`` index of each distractor.
        photo_crops: ``(photo name, (top, left, bottom, right))`` of every
            background photo window used, in that photo's pixels.
    """

    image: np.ndarray
    boxes: np.ndarray
    face_crops: np.ndarray
    distractor_boxes: np.ndarray
    distractor_crops: np.ndarray
    photo_crops: tuple[tuple[str, tuple[int, int, int, int]], ...]


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


def render_face_scene(
    rng: np.random.Generator,
    *,
    split: str,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    face_sizes: tuple[int, int] = DEFAULT_FACE_SIZES,
    max_faces: int = DEFAULT_MAX_FACES,
    max_distractors: int = DEFAULT_MAX_DISTRACTORS,
) -> FaceScene:
    """Renders one image of ``split`` from ``rng`` (see the module docstring).

    Args:
        rng: the only source of randomness.
        split: a key of :data:`FACE_SPLITS`; chooses crops and photo regions.
        image_size: ``(height, width)``.
        face_sizes: ``(smallest, largest)`` face side in pixels (capped at the
            image's shorter side).
        max_faces: most faces per image; ``EMPTY_FRACTION`` of images have none.
        max_distractors: most non-face crops per image.

    Returns:
        The :class:`FaceScene`.
    """
    parts = FACE_SPLITS[split]
    height, width = image_size
    canvas, photo_crops = _background(rng, parts.region, height, width)
    wanted = 0 if max_faces < 1 or rng.random() < EMPTY_FRACTION else int(
        rng.integers(1, max_faces + 1)
    )
    boxes = _place(rng, _sample_sides(rng, wanted, face_sizes, height, width),
                   height, width, avoid=(), limit=MAX_FACE_OVERLAP)  # fmt: skip
    sides = _sample_sides(rng, int(rng.integers(0, max_distractors + 1)), face_sizes, height, width)
    distractors = _place(rng, sides, height, width, avoid=boxes, limit=MAX_DISTRACTOR_OVERLAP)
    lfw = _lfw()
    # Distinct crops in an image while the split has enough of them.
    face_crops = rng.choice(parts.faces, len(boxes), replace=len(boxes) > len(parts.faces))
    distractor_crops = rng.choice(
        parts.non_faces, len(distractors), replace=len(distractors) > len(parts.non_faces)
    )
    for crops, crop_boxes in ((distractor_crops, distractors), (face_crops, boxes)):
        for index, box in zip(crops, crop_boxes):  # largest first: small ones stay visible
            side = int(box[2] - box[0])
            content = _render_crop(rng, lfw[index], side)
            _blend(canvas, int(box[0]), int(box[1]), content, _crop_alpha(rng, side))
            if rng.random() < OCCLUDED_FRACTION:
                _occlude(rng, canvas, box)
    # Sensor noise (one luminance plane: a third of the cost of RGB noise), then
    # round half up and clip, in place.
    noise = rng.standard_normal((height, width, 1), dtype=np.float32)
    noise *= np.float32(rng.uniform(0, 5))
    canvas += noise + np.float32(0.5)
    return FaceScene(
        image=np.clip(canvas, 0, 255, out=canvas).astype(np.uint8),
        boxes=boxes.astype(np.float32),
        face_crops=np.asarray(face_crops, np.int64),
        distractor_boxes=distractors.astype(np.float32),
        distractor_crops=np.asarray(distractor_crops, np.int64),
        photo_crops=tuple(photo_crops),
    )


def _checked(split, image_size, face_sizes) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validates the scene arguments; returns ``((height, width), (lo, hi))``."""
    if split not in FACE_SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {sorted(FACE_SPLITS)}.")
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    height, width = (int(v) for v in image_size)
    lo, hi = (int(v) for v in face_sizes)
    if not 1 <= lo <= hi or lo > min(height, width):
        raise ValueError(
            f"face_sizes {tuple(face_sizes)} must satisfy 1 <= smallest <= largest "
            f"and smallest <= the image's shorter side ({min(height, width)})."
        )
    return (height, width), (lo, hi)


def face_scene(
    split: str,
    index: int,
    *,
    seed: int = 0,
    image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
    face_sizes: tuple[int, int] = DEFAULT_FACE_SIZES,
    max_faces: int = DEFAULT_MAX_FACES,
    max_distractors: int = DEFAULT_MAX_DISTRACTORS,
) -> FaceScene:
    """Image ``index`` of ``split`` with its provenance (crops, photo windows).

    Arguments as in :func:`face_examples`; ``index`` counts from 0.

    Raises:
        ValueError: an unknown split, or faces that cannot fit the image.
    """
    image_size, face_sizes = _checked(split, image_size, face_sizes)
    rng = np.random.default_rng([int(seed), 1000 + FACE_SPLITS[split].stream, int(index)])
    return render_face_scene(
        rng,
        split=split,
        image_size=image_size,
        face_sizes=face_sizes,
        max_faces=int(max_faces),
        max_distractors=int(max_distractors),
    )


def _example(scene: FaceScene, index: int) -> dict[str, np.ndarray]:
    n = len(scene.boxes)
    return {
        "image": scene.image,
        "boxes": scene.boxes.reshape(n, 4),
        "classes": np.zeros(n, np.int32),
        "is_crowd": np.zeros(n, bool),
        "image_id": np.int64(index + 1),
    }


def face_examples(
    split: str = "train",
    *,
    num_images: int | None = None,
    seed: int = 0,
    image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
    face_sizes: tuple[int, int] = DEFAULT_FACE_SIZES,
    max_faces: int = DEFAULT_MAX_FACES,
    max_distractors: int = DEFAULT_MAX_DISTRACTORS,
) -> Iterator[dict[str, np.ndarray]]:
    """The face set as numpy example dicts, rendered lazily one by one.

    ``list(face_examples(...))`` holds them all (about 0.9 MB per VGA image).

    Args:
        split: ``"train"``, ``"validation"`` or ``"test"`` (held out from each
            other, see :data:`FACE_SPLITS`).
        num_images: defaults to 2000 / 200 / 200 for the three splits.
        seed: dataset seed.
        image_size: ``(height, width)`` or one int for a square; default VGA.
        face_sizes: ``(smallest, largest)`` face side in pixels, log-uniform;
            the largest is capped at the image's shorter side.
        max_faces: most faces per image (about 10% of images have none).
        max_distractors: most non-face crops per image.

    Returns:
        An iterator of example dicts: ``image`` ``[H, W, 3]`` uint8, ``boxes``
        ``[N, 4]`` float32 square yxyx pixels, ``classes`` ``[N]`` int32 zeros,
        ``is_crowd`` ``[N]`` all False, ``image_id`` ``index + 1`` int64.

    Raises:
        ValueError: at the call, for an unknown split or impossible sizes.
    """
    _checked(split, image_size, face_sizes)
    count = FACE_SPLITS[split].num_images if num_images is None else int(num_images)
    kwargs = dict(seed=seed, image_size=image_size, face_sizes=face_sizes,
                  max_faces=max_faces, max_distractors=max_distractors)  # fmt: skip
    return (_example(face_scene(split, i, **kwargs), i) for i in range(count))


def face_dataset(
    split: str = "train",
    *,
    num_images: int | None = None,
    seed: int = 0,
    image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
    face_sizes: tuple[int, int] = DEFAULT_FACE_SIZES,
    max_faces: int = DEFAULT_MAX_FACES,
    max_distractors: int = DEFAULT_MAX_DISTRACTORS,
) -> tuple[tf.data.Dataset, DetectionInfo]:
    """The face set as a ``tf.data.Dataset`` of example dicts.

    Images are rendered on the fly (numpy + PIL through ``tf.numpy_function``,
    in parallel, in index order; element ``i`` equals the ``i``-th of
    :func:`face_examples`), so nothing is held in memory: add ``.cache()`` to
    render each image once across epochs. Arguments as in :func:`face_examples`.

    Returns:
        ``(dataset, face_info())``; examples follow the reader contract, with
        the image shape ``[H, W, 3]`` static.
    """
    (height, width), _ = _checked(split, image_size, face_sizes)
    count = FACE_SPLITS[split].num_images if num_images is None else int(num_images)
    kwargs = dict(seed=seed, image_size=image_size, face_sizes=face_sizes,
                  max_faces=max_faces, max_distractors=max_distractors)  # fmt: skip
    dtypes = (tf.uint8, tf.float32, tf.int32, tf.bool, tf.int64)
    shapes = ([height, width, 3], [None, 4], [None], [None], [])

    def render(index):
        example = _example(face_scene(split, int(index), **kwargs), int(index))
        return tuple(example[key] for key in EXAMPLE_KEYS)

    def to_example(index):
        values = tf.numpy_function(render, [index], dtypes, stateful=False)
        for value, shape in zip(values, shapes):
            value.set_shape(shape)
        return dict(zip(EXAMPLE_KEYS, values))

    dataset = tf.data.Dataset.range(count).map(
        to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return dataset, face_info()
