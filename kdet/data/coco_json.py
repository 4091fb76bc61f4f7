"""A reader (and writer) of COCO-format json + an image folder, for users' data.

Behaviour on bad input (tested in ``tests/data/test_coco_json.py`` and the
bad-input corpus ``tests/test_bad_input_corpus.py``):
  * malformed json, json that is not UTF-8, a missing top-level field
    (``images``, ``categories``, ``annotations``), or a missing/ill-typed field
    of an image, category or annotation: ``ValueError`` naming the file and the
    field, when :func:`load_coco_json` is called. Every field is type-checked:
    ids are integers (not strings or booleans), ``bbox`` is 4 numbers (not
    booleans), ``iscrowd`` is 0/1 or a boolean, ``width``/``height`` (optional)
    positive integers. A missing ``annotations`` list is an error (it is usually
    misspelled: training would see no objects); an explicit ``[]`` means images
    without objects, and ``allow_missing_annotations=True`` reads COCO
    ``image_info`` files.
  * duplicate image ids or category ids: ``ValueError`` naming the file and the ids.
  * an annotation whose ``image_id`` or ``category_id`` is not declared:
    ``ValueError`` naming both.
  * a declared ``width``/``height`` that differs from the decoded image: a
    warning naming the image, once per image (kdet uses the stored pixels and
    ignores EXIF orientation, so boxes drawn on a rotated display would be off).
  * an image file that does not exist: ``FileNotFoundError`` at load time
    listing the missing files (usually a wrong ``image_dir``; failing early beats
    an empty epoch).
  * a corrupt or undecodable image, or a file name the file system cannot
    encode: the image is **skipped**, counted in ``info.stats.skipped_images``,
    and a ``logging`` warning names the file and the reason, so one bad file
    never kills an epoch. Images are decoded by
    :func:`kdet.serving.image.read_image_file`, the decoder of ``kdet detect``
    and the SavedModel, so training sees the pixels serving sees.
  * boxes are clipped to the decoded image; zero-area, inverted and out-of-image
    boxes are dropped and counted (``info.stats``, see
    :func:`kdet.data.example.sanitize_example`), with one warning per image per
    run naming the image id and the dropped annotations' ids.
  * grey, palette, CMYK and RGBA images are converted to RGB (alpha dropped).
  * non-contiguous category ids are mapped to labels ``0..K-1`` in increasing
    id order; ``info.category_ids`` maps them back.
  * images without annotations are kept as examples with no objects;
    ``iscrowd`` is honoured. EXIF orientation is ignored, as in COCO.
  * a declared category without any annotation: a warning naming it.
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
from kdet.files import read_json_object
from kdet.serving.image import ImageFileError, read_image_file

logger = logging.getLogger(__name__)

#: Zero-length arrays fixing dtype and inner shape of the per-image columns.
_EMPTY = {
    "boxes": np.zeros([0, 4], np.float32),
    "classes": np.zeros([0], np.int32),
    "is_crowd": np.zeros([0], bool),
    "annotation_ids": np.zeros([0], np.int64),
}


def read_json(path: str) -> dict:
    """Reads a json object, raising ValueError that names the file if malformed."""
    return read_json_object(path, kind="COCO json")


def _field(record: Mapping, key: str, kind, *, where: str) -> Any:
    """``record[key]`` checked to be of type ``kind``, or a ValueError naming it."""
    if not isinstance(record, Mapping) or key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{where}: field {key!r} must be {_KIND_NAMES.get(kind, kind)}, got {value!r}")
    return value


_KIND_NAMES = {int: "an integer", str: "a string", list: "a list", float: "a number", bool: "a boolean"}


def _record(value, *, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: must be an object with fields, got {type(value).__name__} {value!r:.60}")
    return value


def _list_field(data: Mapping, key: str, *, source: str, required: bool = True) -> list:
    """A top-level list field; a missing one names the keys that are there (a misspelling shows)."""
    if key not in data:
        if not required:
            return []
        import difflib

        close = difflib.get_close_matches(key, [str(k) for k in data], n=1, cutoff=0.6)
        hint = f" (is {close[0]!r} a misspelling?)" if close else ""
        raise ValueError(f"{source}: missing top-level field {key!r}{hint}; the file has {sorted(map(str, data))}. "
                         f"Use \"{key}\": [] for a file with none")
    value = data[key]
    if not isinstance(value, list):
        raise ValueError(f"{source}: top-level field {key!r} must be a list, got {type(value).__name__} {value!r:.60}")
    return value


def _duplicates(values: list[int]) -> list[int]:
    seen, repeated = set(), set()
    for v in values:
        (repeated if v in seen else seen).add(v)
    return sorted(repeated)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_categories(data: Mapping, *, source: str) -> DetectionInfo:
    """The ``categories`` list -> DetectionInfo with labels in increasing id order."""
    cats = _list_field(data, "categories", source=source)
    pairs = []
    for i, cat in enumerate(cats):
        where = f"{source}: categories[{i}]"
        cat = _record(cat, where=where)
        category_id = _field(cat, "id", int, where=where)
        pairs.append((category_id, _field(cat, "name", str, where=where)))
    repeated = _duplicates([i for i, _ in pairs])
    if repeated:
        raise ValueError(f"{source}: category ids {repeated} are declared more than once in 'categories'")
    pairs.sort()
    return DetectionInfo(
        class_names=tuple(n for _, n in pairs),
        category_ids=tuple(i for i, _ in pairs),
        name=os.path.basename(source),
    )


def parse_annotations(
    data: Mapping, *, info: DetectionInfo, source: str, allow_missing_annotations: bool = False
) -> list[dict[str, Any]]:
    """Groups annotations by image, in the order of the ``images`` list.

    Returns:
        One record per image: ``file_name`` str, ``image_id`` int, ``size``
        ``(height, width)`` as declared or None, ``boxes`` float32 ``[N, 4]``
        yxyx pixels (not yet clipped), ``classes`` int32 ``[N]`` labels,
        ``is_crowd`` bool ``[N]``, ``annotation_ids`` int64 ``[N]`` (the
        annotation's ``id``, or its index in ``annotations`` if it has none).
    """
    records = [_image_record(image, where=f"{source}: images[{i}]")
               for i, image in enumerate(_list_field(data, "images", source=source))]
    repeated = _duplicates([r["image_id"] for r in records])
    if repeated:
        shown = ", ".join(map(str, repeated[:10])) + (", ..." if len(repeated) > 10 else "")
        raise ValueError(f"{source}: image ids {shown} are declared more than once in 'images' "
                         f"({len(repeated)} repeated ids); each image needs its own id")
    by_id = {r["image_id"]: r for r in records}
    label_of = info.label_of_category_id
    annotations = _list_field(data, "annotations", source=source, required=not allow_missing_annotations)
    used = set()
    for i, ann in enumerate(annotations):
        where = f"{source}: annotations[{i}]"
        ann = _record(ann, where=where)
        image_id = _field(ann, "image_id", int, where=where)
        category_id = _field(ann, "category_id", int, where=where)
        bbox = _field(ann, "bbox", list, where=where)
        if len(bbox) != 4 or not all(_number(v) for v in bbox):
            raise ValueError(f"{where}: field 'bbox' must be 4 numbers [x, y, width, height], got {bbox!r}")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or not isinstance(crowd, (int, bool)):
            raise ValueError(f"{where}: field 'iscrowd' must be 0 or 1, got {crowd!r}")
        if image_id not in by_id or category_id not in label_of:
            raise ValueError(
                f"{where}: image_id {image_id} or category_id {category_id} is "
                "not declared in 'images'/'categories'"
            )
        x, y, w, h = (float(v) for v in bbox)
        record = by_id[image_id]
        record["boxes"].append([y, x, y + h, x + w])
        record["classes"].append(label_of[category_id])
        record["is_crowd"].append(bool(crowd))
        record["annotation_ids"].append(ann["id"] if isinstance(ann.get("id"), int) else i)
        used.add(category_id)
    unused = [f"{cid} ({name!r})" for cid, name in zip(info.category_ids, info.class_names) if cid not in used]
    if annotations and unused:
        logger.warning("kdet.data: %s: %d declared categories have no annotations: %s", source, len(unused),
                       ", ".join(unused[:10]) + (", ..." if len(unused) > 10 else ""))
    for record in records:
        record["boxes"] = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
        record["classes"] = np.asarray(record["classes"], np.int32)
        record["is_crowd"] = np.asarray(record["is_crowd"], bool)
        record["annotation_ids"] = np.asarray(record["annotation_ids"], np.int64)
    return records


def _image_record(image, *, where: str) -> dict[str, Any]:
    image = _record(image, where=where)
    size = None
    if "width" in image or "height" in image:
        height, width = (_field(image, key, int, where=where) for key in ("height", "width"))
        if height < 1 or width < 1:
            raise ValueError(f"{where}: 'width' and 'height' must be positive, got {width}x{height}")
        size = (height, width)
    return {"file_name": _field(image, "file_name", str, where=where),
            "image_id": _field(image, "id", int, where=where), "size": size, "boxes": [], "classes": [], "is_crowd": [],
            "annotation_ids": []}


class _ImageLoader:
    """Decodes one image of the dataset by path (the shared decoder), warning once per image per loader."""

    def __init__(self):
        self.warned: set[tuple[str, str]] = set()

    def _warn_once(self, path: str, kind: str, message: str, *args) -> None:
        if (path, kind) not in self.warned:
            self.warned.add((path, kind))
            logger.warning(message, *args)

    def __call__(self, path, declared_hw):
        path = os.fsdecode(path.numpy())
        try:
            image = read_image_file(path)
        except (ImageFileError, OSError) as err:
            self._warn_once(path, "decode", "kdet.data: skipping undecodable image %s (%s)", path, err)
            return np.zeros([1, 1, 3], np.uint8), False
        declared = tuple(int(v) for v in declared_hw.numpy())
        if declared[0] > 0 and declared != image.shape[:2]:
            rotated = " (rotated: EXIF orientation is ignored, boxes must be in stored-pixel coordinates)" if (
                declared == image.shape[1::-1]) else ""
            self._warn_once(path, "size", "kdet.data: %s is declared %dx%d (width x height) but decodes to %dx%d%s; "
                            "its boxes are used as given, in the decoded pixels", path, declared[1], declared[0],
                            image.shape[1], image.shape[0], rotated)
        return image, True


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


def _load_image(element: dict, *, stats: DataStats, loader: _ImageLoader) -> dict:
    image, ok = tf.py_function(loader, [element["path"], element["declared_hw"]], [tf.uint8, tf.bool])
    image.set_shape([None, None, 3])
    ok.set_shape([])
    count = stats.skipped_images.assign_add(tf.cast(~ok, tf.int64))
    with tf.control_dependencies([count]):
        ok = tf.identity(ok)
    return {**element, "image": image, "ok": ok}


def _encodable_paths(records: list[dict], image_dir: str) -> tuple[list[dict], list[bytes], list[str]]:
    """``(records, their paths as bytes, file names left out)``: the file system cannot encode those names."""
    kept, paths, unencodable = [], [], []
    for record in records:
        try:
            paths.append(os.fsencode(os.path.join(image_dir, record["file_name"])))
        except UnicodeEncodeError:
            unencodable.append(record["file_name"])
            continue
        kept.append(record)
    return kept, paths, unencodable


def load_coco_json(
    annotation_file: str, image_dir: str, *, allow_missing_annotations: bool = False
) -> tuple[tf.data.Dataset, DetectionInfo]:
    """Reads a COCO-format annotation json and its image folder.

    See the module docstring for the handling of bad input.

    Args:
        annotation_file: path of the json (``images``, ``categories`` and
            optionally ``annotations``, COCO detection format, bbox ``xywh``).
        image_dir: folder that ``images[].file_name`` is relative to.
        allow_missing_annotations: read a json without an ``annotations``
            list (COCO ``image_info`` files) as images without objects.

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
    info = DetectionInfo(class_names=info.class_names, category_ids=info.category_ids, name=info.name, stats=stats)
    records = parse_annotations(data, info=info, source=source,
                                allow_missing_annotations=allow_missing_annotations)
    records, paths, unencodable = _encodable_paths(records, image_dir)
    if unencodable:
        logger.warning("kdet.data: %s: skipping %d images whose file names this file system cannot encode: %s",
                       source, len(unencodable), ", ".join(ascii(n) for n in unencodable[:5]))
        stats.skipped_images.assign_add(len(unencodable))
    _check_files_exist([os.fsdecode(p) for p in paths], source=source)
    if not records:
        logger.warning("kdet.data: %s lists no images", source)
    columns = {
        "path": tf.constant(paths, tf.string, shape=[len(paths)]),
        "image_id": tf.constant([r["image_id"] for r in records], tf.int64, shape=[len(records)]),
        "declared_hw": tf.constant([r["size"] or (-1, -1) for r in records], tf.int32, shape=[len(records), 2]),
        **{key: _ragged(records, key) for key in ("boxes", "classes", "is_crowd", "annotation_ids")},
    }
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    loader = _ImageLoader()
    dataset = dataset.map(
        lambda e: _load_image(e, stats=stats, loader=loader), num_parallel_calls=tf.data.AUTOTUNE
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
