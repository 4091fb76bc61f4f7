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
from typing import Iterator

import numpy as np
import tensorflow as tf

from kdet.data.example import EXAMPLE_KEYS, DataStats, DetectionInfo
from kdet.data.face_render import (
    OCCLUDED_FRACTION,
    _background,
    _blend,
    _crop_alpha,
    _lfw,
    _occlude,
    _place,
    _render_crop,
    _sample_sides,
)

FACE_CLASS_NAMES = ("face",)
#: No COCO ids: label 0 ("face") gets category id 1, as VOC's labels do.
FACE_CATEGORY_IDS = (1,)

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
