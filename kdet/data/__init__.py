"""Detection data: readers -> one example dict -> transforms -> batched pipeline.

Readers (each returns ``(tf.data.Dataset of example dicts, DetectionInfo)``):
  * :func:`load_tfds` -- tfds ``coco/2017``, ``voc/2007``, ``voc/2012``, and
    the face set ``wider_face`` (``invalid`` faces become ``is_crowd``).
  * :func:`load_coco_json` -- a COCO-format json + image folder (users' data);
    :func:`write_coco_json` writes one.
  * :func:`synthetic_dataset` -- embedded shapes dataset, deterministic per seed.
  * :func:`face_dataset` -- embedded face set (real lfw faces composited on
    real photos and textures), deterministic per seed, held-out splits.

The example dict and bad-input handling are described in
:mod:`kdet.data.example`; :func:`make_pipeline` batches examples for training
and evaluation.
"""

from kdet.data.categories import (
    COCO_CATEGORY_IDS,
    COCO_CLASS_NAMES,
    VOC_CATEGORY_IDS,
    VOC_CLASS_NAMES,
)
from kdet.data.coco_json import load_coco_json, write_coco_json
from kdet.data.example import (
    EXAMPLE_KEYS,
    DataStats,
    DetectionInfo,
    ensure_rgb,
    sanitize_boxes,
    sanitize_example,
)
from kdet.data.faces import (
    FACE_SPLITS,
    face_dataset,
    face_examples,
    face_info,
    face_scene,
)
from kdet.data.pipeline import DEFAULT_STRIDE, make_pipeline, preprocess_example
from kdet.data.synthetic import (
    SHAPE_NAMES,
    synthetic_dataset,
    synthetic_examples,
    synthetic_info,
)
from kdet.data.tfds_readers import (
    FACE_TFDS_NAMES,
    SUPPORTED_TFDS_NAMES,
    load_tfds,
    tfds_info,
)

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASS_NAMES",
    "DEFAULT_STRIDE",
    "EXAMPLE_KEYS",
    "FACE_SPLITS",
    "FACE_TFDS_NAMES",
    "SHAPE_NAMES",
    "SUPPORTED_TFDS_NAMES",
    "VOC_CATEGORY_IDS",
    "VOC_CLASS_NAMES",
    "DataStats",
    "DetectionInfo",
    "ensure_rgb",
    "face_dataset",
    "face_examples",
    "face_info",
    "face_scene",
    "load_coco_json",
    "load_tfds",
    "make_pipeline",
    "preprocess_example",
    "sanitize_boxes",
    "sanitize_example",
    "synthetic_dataset",
    "synthetic_examples",
    "synthetic_info",
    "tfds_info",
    "write_coco_json",
]
