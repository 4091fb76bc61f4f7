"""A reader (and writer) of COCO-format json + an image folder, for users' data.

Behaviour on bad input (tested in ``tests/test_data_coco_json.py``):
  * malformed json, a missing top-level field (``images``, ``categories``), or a
    missing/ill-typed field of an image, category or annotation: ``ValueError``
    naming the file and the field, when :func:`load_coco_json` is called.
    ``annotations`` may be absent (COCO ``image_info`` files): no objects.
  * an annotation whose ``image_id`` or ``category_id`` is not declared:
    ``ValueError`` naming both.
  * an image file that does not exist: ``FileNotFoundError`` at load time
    listing the missing files (usually a wrong ``image_dir``; failing early beats
    an empty epoch).
  * a corrupt or undecodable image: the image is **skipped**, counted in
    ``info.stats.skipped_images``, and a ``logging`` warning names the file and
    the decoder's error, so one bad file never kills an epoch.
  * boxes are clipped to the decoded image; zero-area, inverted and out-of-image
    boxes are dropped and counted (``info.stats``, see
    :func:`kdet.data.example.sanitize_example`).
  * grey, palette, CMYK and RGBA images are converted to RGB (alpha dropped).
  * non-contiguous category ids are mapped to labels ``0..K-1`` in increasing
    id order; ``info.category_ids`` maps them back.
  * images without annotations are kept as examples with no objects;
    ``iscrowd`` is honoured. EXIF orientation is ignored, as in COCO.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow as tf
from PIL import Image

from kdet.data.example import DataStats, DetectionInfo, sanitize_example

logger = logging.getLogger(__name__)

#: Zero-length arrays fixing dtype and inner shape of the per-image columns.
_EMPTY = {
    "boxes": np.zeros([0, 4], np.float32),
    "classes": np.zeros([0], np.int32),
    "is_crowd": np.zeros([0], bool),
}


def read_json(path: str) -> dict:
    """Reads a json object, raising ValueError that names the file if malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed COCO json: {err}") from err
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ValueError(f"{path}: malformed COCO json: expected an object, got {kind}")
    return data


def _field(record: Mapping, key: str, kind, *, where: str) -> Any:
    """``record[key]`` checked to be of type ``kind``, or a ValueError naming it."""
    if not isinstance(record, Mapping) or key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{where}: field {key!r} has bad value {value!r}")
    return value


def parse_categories(data: Mapping, *, source: str) -> DetectionInfo:
    """The ``categories`` list -> DetectionInfo with labels in increasing id order."""
    cats = _field(data, "categories", list, where=source)
    pairs = []
    for i, cat in enumerate(cats):
        where = f"{source}: categories[{i}]"
        category_id = _field(cat, "id", int, where=where)
        pairs.append((category_id, _field(cat, "name", str, where=where)))
    pairs.sort()
    return DetectionInfo(
        class_names=tuple(n for _, n in pairs),
        category_ids=tuple(i for i, _ in pairs),
        name=os.path.basename(source),
    )


def parse_annotations(
    data: Mapping, *, info: DetectionInfo, source: str
) -> list[dict[str, Any]]:
    """Groups annotations by image, in the order of the ``images`` list.

    Returns:
        One record per image: ``file_name`` str, ``image_id`` int, ``boxes``
        float32 ``[N, 4]`` yxyx pixels (not yet clipped), ``classes`` int32
        ``[N]`` labels, ``is_crowd`` bool ``[N]``.
    """
    records, by_id = [], {}
    for i, image in enumerate(_field(data, "images", list, where=source)):
        where = f"{source}: images[{i}]"
        record = {
            "file_name": _field(image, "file_name", str, where=where),
            "image_id": _field(image, "id", int, where=where),
            "boxes": [],
            "classes": [],
            "is_crowd": [],
        }
        records.append(record)
        by_id[record["image_id"]] = record
    label_of = info.label_of_category_id
    for i, ann in enumerate(data.get("annotations", [])):
        where = f"{source}: annotations[{i}]"
        image_id = _field(ann, "image_id", int, where=where)
        category_id = _field(ann, "category_id", int, where=where)
        bbox = _field(ann, "bbox", list, where=where)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise ValueError(f"{where}: field 'bbox' must be 4 numbers, got {bbox!r}")
        if image_id not in by_id or category_id not in label_of:
            raise ValueError(
                f"{where}: image_id {image_id} or category_id {category_id} is "
                "not declared in 'images'/'categories'"
            )
        x, y, w, h = (float(v) for v in bbox)
        record = by_id[image_id]
        record["boxes"].append([y, x, y + h, x + w])
        record["classes"].append(label_of[category_id])
        record["is_crowd"].append(bool(ann.get("iscrowd", 0)))
    for record in records:
        record["boxes"] = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
        record["classes"] = np.asarray(record["classes"], np.int32)
        record["is_crowd"] = np.asarray(record["is_crowd"], bool)
    return records


def decode_image_file(path: bytes | str) -> tuple[np.ndarray, bool]:
    """Decodes an image file with PIL into RGB uint8.

    Returns:
        ``(image [H, W, 3] uint8, True)``, or ``(zeros [1, 1, 3], False)`` after
        logging a warning that names the file when it cannot be decoded.
    """
    path = path.decode() if isinstance(path, bytes) else str(path)
    try:
        with Image.open(path) as image:
            image.load()
            rgb = np.asarray(image.convert("RGB"), np.uint8)
        return rgb, True
    except Exception as err:  # PIL raises many types for bad files.
        logger.warning("kdet.data: skipping undecodable image %s (%s)", path, err)
        return np.zeros([1, 1, 3], np.uint8), False


def _check_files_exist(paths: list[str], *, source: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{source}: {len(missing)} of {len(paths)} image files not found: {shown}"
        )


def _ragged(records: list[dict], key: str) -> tf.RaggedTensor:
    """Per-image arrays ``records[i][key]`` as one ragged tensor ``[I, None, ...]``."""
    values = np.concatenate([_EMPTY[key]] + [r[key] for r in records])
    lengths = np.asarray([len(r[key]) for r in records], np.int64)
    return tf.RaggedTensor.from_row_lengths(values, lengths)


def _load_image(element: dict, *, stats: DataStats) -> dict:
    image, ok = tf.numpy_function(
        decode_image_file, [element["path"]], [tf.uint8, tf.bool]
    )
    image.set_shape([None, None, 3])
    ok.set_shape([])
    count = stats.skipped_images.assign_add(tf.cast(~ok, tf.int64))
    with tf.control_dependencies([count]):
        ok = tf.identity(ok)
    return {**element, "image": image, "ok": ok}


def load_coco_json(
    annotation_file: str, image_dir: str
) -> tuple[tf.data.Dataset, DetectionInfo]:
    """Reads a COCO-format annotation json and its image folder.

    See the module docstring for the handling of bad input.

    Args:
        annotation_file: path of the json (``images``, ``categories`` and
            optionally ``annotations``, COCO detection format, bbox ``xywh``).
        image_dir: folder that ``images[].file_name`` is relative to.

    Returns:
        ``(dataset of example dicts, DetectionInfo)``; labels are contiguous
        ``0..K-1`` in increasing category id order, and ``info.stats`` counts
        what was skipped, dropped or clipped while iterating.

    Raises:
        ValueError: malformed json or missing fields.
        FileNotFoundError: image files that do not exist.
    """
    source = str(annotation_file)
    data = read_json(source)
    stats = DataStats()
    info = parse_categories(data, source=source)
    info = DetectionInfo(
        class_names=info.class_names,
        category_ids=info.category_ids,
        name=info.name,
        stats=stats,
    )
    records = parse_annotations(data, info=info, source=source)
    paths = [os.path.join(image_dir, r["file_name"]) for r in records]
    _check_files_exist(paths, source=source)
    if not records:
        logger.warning("kdet.data: %s lists no images", source)
    columns = {
        "path": tf.constant(paths, tf.string, shape=[len(paths)]),
        "image_id": tf.constant(
            [r["image_id"] for r in records], tf.int64, shape=[len(records)]
        ),
        **{key: _ragged(records, key) for key in ("boxes", "classes", "is_crowd")},
    }
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    dataset = dataset.map(
        lambda e: _load_image(e, stats=stats), num_parallel_calls=tf.data.AUTOTUNE
    )
    dataset = dataset.filter(lambda e: e["ok"])
    dataset = dataset.map(
        lambda e: sanitize_example(e, stats=stats),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset, info


def write_coco_json(
    examples: Iterable[Mapping[str, Any]],
    *,
    info: DetectionInfo,
    out_dir: str,
    annotation_name: str = "annotations.json",
    image_format: str = "png",
) -> str:
    """Writes example dicts as a COCO json + image folder (inverse of the reader).

    Images are saved as ``out_dir/<image_id:012d>.<image_format>``; boxes yxyx
    become ``[x, y, w, h]``; labels become ``info.category_ids``.

    Args:
        examples: example dicts (numpy arrays or eager tensors).
        info: class names and category ids of the labels.
        out_dir: created if needed.
        annotation_name: file name of the json inside ``out_dir``.
        image_format: PIL format extension, ``"png"`` (lossless) or ``"jpg"``.

    Returns:
        Path of the written json.
    """
    os.makedirs(out_dir, exist_ok=True)
    images, annotations = [], []
    for example in examples:
        ex = {k: np.asarray(v) for k, v in example.items()}
        image_id = int(ex["image_id"])
        file_name = f"{image_id:012d}.{image_format}"
        Image.fromarray(ex["image"]).save(os.path.join(out_dir, file_name))
        height, width = ex["image"].shape[:2]
        images.append(
            {"id": image_id, "file_name": file_name, "height": height, "width": width}
        )
        for box, label, crowd in zip(ex["boxes"], ex["classes"], ex["is_crowd"]):
            ymin, xmin, ymax, xmax = (float(v) for v in box)
            w, h = xmax - xmin, ymax - ymin
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": info.category_ids[int(label)],
                "bbox": [xmin, ymin, w, h],
                "area": w * h,
                "iscrowd": int(bool(crowd)),
            })
    categories = [
        {"id": cid, "name": name}
        for cid, name in zip(info.category_ids, info.class_names)
    ]
    path = os.path.join(out_dir, annotation_name)
    data = {"images": images, "annotations": annotations, "categories": categories}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path
