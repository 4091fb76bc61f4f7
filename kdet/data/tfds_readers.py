"""Readers of the tensorflow-datasets detection sets: ``coco/2017``, ``voc/2007``,
``voc/2012`` and the face set ``wider_face``, converted to the example dict of
:mod:`kdet.data.example`.

Conversions:
  * tfds boxes are normalised ``[ymin, xmin, ymax, xmax]``; they are multiplied
    by the image height/width to give pixels.
  * COCO: ``label`` 0..79 is kept as the label id; ``info.category_ids`` maps it
    to the COCO json category id (1..90 with gaps) for evaluation.
    ``image_id`` is ``image/id``.
  * VOC: annotation corners are 1-based inclusive pixels, so 1 is subtracted
    from ``ymin``/``xmin`` (as detectron2 does). Objects marked ``is_difficult``
    become ``is_crowd=True``: COCO-style evaluation then neither rewards nor
    penalises detections of them, which is what VOC's own protocol does with
    difficult objects. VOC has no numeric image id: it is the digits of the file
    name (``000005.jpg`` -> 5, ``2008_000123.jpg`` -> 2008000123).
  * WIDER FACE: one class (``"face"``, label 0). Faces flagged ``invalid`` by
    the annotators (unrecognisable or badly annotated) are kept with
    ``is_crowd=True``: COCO-style evaluation treats crowd boxes as ignore
    regions, so detections on them are neither rewarded nor penalised
    (dropping them instead would turn correct detections into false
    positives). The blur/expression/illumination/occlusion/pose attributes are
    not carried. Zero-width/height faces, which WIDER has, are grown to one
    pixel and marked ``is_crowd`` (ignored) rather than dropped, so that face
    ``k`` of an image stays face ``k``: the official easy/medium/hard lists
    index faces by their position. The file name digits are not
    unique (``0--Parade/0_Parade_marchingband_1_849.jpg``), so ``image_id`` is
    a stable 62-bit hash of the whole file name. The ``test`` split has no
    boxes.
  * Sequence fields of one example may disagree in length (tfds mock data does
    this); every object field is cut to the shortest one.
"""

from __future__ import annotations

import functools
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from kdet.data import categories
from kdet.data.example import DataStats, DetectionInfo, sanitize_example
from kdet.data.faces import face_info

#: The multi-class tfds detection sets :func:`load_tfds` reads.
SUPPORTED_TFDS_NAMES = ("coco/2017", "voc/2007", "voc/2012")
#: The tfds face sets :func:`load_tfds` reads (one class, ``"face"``).
FACE_TFDS_NAMES = ("wider_face",)


def image_id_from_filename(filename: tf.Tensor) -> tf.Tensor:
    """Numeric image id from the digits of a file name.

    ``"000005.jpg"`` -> 5, ``"2008_000123.jpg"`` -> 2008000123. A name without
    digits gets a stable 62-bit hash of the whole name instead.

    Args:
        filename: scalar tf.string.

    Returns:
        Scalar int64.
    """
    digits = tf.strings.regex_replace(filename, r"[^0-9]", "")
    digits = tf.strings.substr(digits, 0, 18)  # int64 holds 18 digits safely
    return tf.cond(
        tf.strings.length(digits) > 0,
        lambda: tf.strings.to_number(digits, tf.int64),
        lambda: tf.strings.to_hash_bucket_fast(filename, 2**62),
    )


def _common_length(objects: dict, keys: tuple[str, ...]) -> tf.Tensor:
    """Shortest leading dimension among ``objects[key]`` for ``keys``."""
    lengths = [tf.shape(objects[key])[0] for key in keys]
    return tf.reduce_min(tf.stack(lengths))


def _pixel_boxes(normalised: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    """``[N, 4]`` normalised yxyx -> pixels of ``image`` ``[H, W, C]``."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    size = tf.concat([shape, shape], axis=0)
    return tf.reshape(tf.cast(normalised, tf.float32), [-1, 4]) * size


def coco_example_from_tfds(features: dict) -> dict[str, tf.Tensor]:
    """tfds ``coco/2017`` features -> unsanitised example dict (with ``annotation_ids`` for warnings)."""
    objects = features["objects"]
    n = _common_length(objects, ("bbox", "label", "is_crowd") + (("id",) if "id" in objects else ()))
    example = {
        "image": features["image"],
        "boxes": _pixel_boxes(objects["bbox"][:n], features["image"]),
        "classes": tf.cast(objects["label"][:n], tf.int32),
        "is_crowd": tf.cast(objects["is_crowd"][:n], tf.bool),
        "image_id": tf.cast(features["image/id"], tf.int64),
    }
    if "id" in objects:
        example["annotation_ids"] = tf.cast(objects["id"][:n], tf.int64)
    return example


def voc_example_from_tfds(features: dict) -> dict[str, tf.Tensor]:
    """tfds ``voc/*`` features -> unsanitised example dict (difficult = crowd)."""
    objects = features["objects"]
    n = _common_length(objects, ("bbox", "label", "is_difficult"))
    boxes = _pixel_boxes(objects["bbox"][:n], features["image"])
    boxes -= tf.constant([1.0, 1.0, 0.0, 0.0])  # 1-based inclusive -> 0-based
    return {
        "image": features["image"],
        "boxes": boxes,
        "classes": tf.cast(objects["label"][:n], tf.int32),
        "is_crowd": tf.cast(objects["is_difficult"][:n], tf.bool),
        "image_id": image_id_from_filename(features["image/filename"]),
    }


def wider_face_example_from_tfds(features: dict) -> dict[str, tf.Tensor]:
    """tfds ``wider_face`` features -> unsanitised example dict (invalid = crowd)."""
    faces = features["faces"]
    n = _common_length(faces, ("bbox", "invalid"))
    boxes = _pixel_boxes(faces["bbox"][:n], features["image"])
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    # one pixel inside the image, so sanitising keeps the row (see the module docstring)
    size = tf.cast(tf.shape(features["image"])[:2], tf.float32)
    corner = tf.minimum(boxes[:, :2], size - 1.0)
    boxes = tf.where(empty[:, None], tf.concat([corner, corner + 1.0], axis=1), boxes)
    return {
        "image": features["image"],
        "boxes": boxes,
        "classes": tf.zeros([n], tf.int32),
        "is_crowd": tf.cast(faces["invalid"][:n], tf.bool) | empty,
        "image_id": tf.strings.to_hash_bucket_fast(features["image/filename"], 2**62),
    }


def tfds_info(name: str, *, stats: DataStats | None = None) -> DetectionInfo:
    """DetectionInfo (class names, COCO category ids) of a supported tfds name."""
    _check_name(name)
    if name in FACE_TFDS_NAMES:
        return face_info(name, stats=stats)
    if name.startswith("coco"):
        return categories.coco_info(name, stats=stats)
    return categories.voc_info(name, stats=stats)


def _check_name(name: str) -> None:
    if name not in SUPPORTED_TFDS_NAMES + FACE_TFDS_NAMES:
        hint = ""
        if name in ("huggingface", "hf") or name.startswith(("huggingface:", "hf:")):
            # tfds' Hugging Face builder: other feature names (faces.bbox in xywh pixels), and it contacts the
            # Hugging Face Hub when built, before any local data is read
            hint = (" tfds' huggingface: datasets are not read by kdet (their features differ from tfds "
                    "wider_face's); prepare tfds wider_face with `tfds build wider_face`, or export the Hugging "
                    "Face set to COCO json and use coco-json:FILE.")
        raise ValueError(
            f"Unsupported tfds dataset {name!r}; supported: "
            f"{', '.join(SUPPORTED_TFDS_NAMES + FACE_TFDS_NAMES)}.{hint}"
        )


def _convert(features: dict, *, name: str, stats: DataStats) -> dict[str, tf.Tensor]:
    if name in FACE_TFDS_NAMES:
        to_example = wider_face_example_from_tfds
    elif name.startswith("coco"):
        to_example = coco_example_from_tfds
    else:
        to_example = voc_example_from_tfds
    return sanitize_example(to_example(features), stats=stats)


def _not_prepared(name: str, data_dir: str | None) -> str:
    """The error for a tfds dataset that is not prepared where it was looked for: what to run, what else works."""
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    text = (f"the tfds dataset {name!r} is not prepared in {where} (kdet never downloads): prepare it once with "
            f"`tfds build {name} --data_dir DIR` (it downloads the data; some datasets need files placed by hand, "
            f"see the tfds catalogue), then pass --data-dir DIR")
    if name in FACE_TFDS_NAMES:
        text += "; or train on the embedded synthetic face set: --data embedded:faces:train"
    return text


def load_tfds(
    name: str,
    *,
    split: str,
    data_dir: str | None = None,
    download: bool = False,
    shuffle_files: bool = False,
    read_config: tfds.ReadConfig | None = None,
) -> tuple[tf.data.Dataset, DetectionInfo]:
    """Loads a tfds detection dataset as example dicts.

    Nothing is downloaded unless ``download=True``; prepare the data beforehand
    (``tfds build coco/2017 --data_dir ...``) to train offline.

    Args:
        name: one of :data:`SUPPORTED_TFDS_NAMES` or :data:`FACE_TFDS_NAMES`.
        split: tfds split string, e.g. ``"train"``, ``"validation[:10%]"``.
        data_dir: tfds data directory (tfds default when None).
        download: let tfds download and prepare missing data.
        shuffle_files: shuffle the record files (training).
        read_config: passed to ``tfds.load``.

    Returns:
        ``(dataset of example dicts, DetectionInfo)``; ``info.stats`` counts the
        boxes dropped/clipped while iterating.

    Raises:
        ValueError: an unsupported ``name``.
    """
    _check_name(name)
    stats = DataStats()
    info = tfds_info(name, stats=stats)
    try:
        dataset = tfds.load(name, split=split, data_dir=data_dir, download=download, shuffle_files=shuffle_files,
                            read_config=read_config)
    except AssertionError as error:  # tfds' own words for data that was never prepared
        if download or "download_and_prepare" not in str(error):
            raise
        raise ValueError(_not_prepared(name, data_dir)) from None
    convert = functools.partial(_convert, name=name, stats=stats)
    dataset = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset, info
