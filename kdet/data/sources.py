"""One string names a dataset on the command line and in model directories.

=====================================  ===========================================
``tfds:NAME:SPLIT``                    :func:`kdet.data.load_tfds` (``coco/2017``,
                                       ``voc/2007``, ``wider_face``, ...; prepared
                                       beforehand, nothing is downloaded)
``coco-json:ANNOTATIONS.json[:IMAGES]`` :func:`kdet.data.load_coco_json`; images
                                       default to the json's folder
``embedded:shapes[:SPLIT]``            the synthetic shapes (train / validation)
``embedded:faces[:SPLIT]``             the embedded face set (train / validation / test)
=====================================  ===========================================

``SPLIT`` may carry a tfds slice (``validation[:100]``) for tfds; the embedded
sets take ``SPLIT[:N]`` for their first N images.

Several data strings joined by commas are one dataset, read one after the
other; they must have the same classes. VOC 2007 + 2012 trainval is
``tfds:voc/2007:train+validation,tfds:voc/2012:train+validation``.
"""

from __future__ import annotations

import os
import re

import tensorflow as tf

from kdet.data.example import DetectionInfo

KINDS = ("tfds", "coco-json", "embedded")
EMBEDDED = ("shapes", "faces")


def _embedded(name: str, split: str | None, seed: int):
    count = None
    if split and (match := re.fullmatch(r"(\w+)\[:(\d+)\]", split)):
        split, count = match.group(1), int(match.group(2))
    if name == "shapes":
        from kdet.data.synthetic import synthetic_dataset

        return synthetic_dataset(split or "validation", seed=seed, num_images=count or 200)
    from kdet.data.faces import FACE_SPLITS, face_dataset

    split = split or "validation"
    if split not in FACE_SPLITS:
        raise ValueError(f"embedded:faces has splits {sorted(FACE_SPLITS)}, got {split!r}")
    return face_dataset(split, seed=seed, num_images=count)


def open_source(spec: str, *, seed: int = 0, data_dir: str | None = None) -> tuple[tf.data.Dataset, DetectionInfo]:
    """``(dataset of example dicts, DetectionInfo)`` for a data string (see the module docstring).

    Raises:
      ValueError: a malformed string, naming the part that is wrong and what is valid.
      FileNotFoundError: a coco-json file or image folder that does not exist.
    """
    if "," in spec:
        return _joined(spec, seed=seed, data_dir=data_dir)
    kind, _, rest = spec.partition(":")
    if kind not in KINDS or not rest:
        raise ValueError(f"--data {spec!r}: expected one of tfds:NAME:SPLIT, coco-json:PATH[:IMAGE_DIR], "
                         f"embedded:{{{','.join(EMBEDDED)}}}[:SPLIT]")
    if kind == "tfds":
        name, _, split = rest.partition(":")  # names have no ":"; slices may (validation[:10])
        if not name or not split:
            raise ValueError(f"--data {spec!r}: tfds needs a name and a split, e.g. tfds:coco/2017:validation")
        from kdet.data.tfds_readers import load_tfds

        return load_tfds(name, split=split, data_dir=data_dir)
    if kind == "coco-json":
        path, _, images = rest.partition(":")  # (no Windows drive letters here)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--data {spec!r}: annotation file {path!r} does not exist")
        images = images or os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(images):
            raise FileNotFoundError(f"--data {spec!r}: image folder {images!r} does not exist")
        from kdet.data.coco_json import load_coco_json

        return load_coco_json(path, images)
    name, _, split = rest.partition(":")
    if name not in EMBEDDED:
        raise ValueError(f"--data {spec!r}: embedded sets are {EMBEDDED}, got {name!r}")
    return _embedded(name, split or None, seed)


def _joined(spec: str, *, seed: int, data_dir: str | None):
    parts = [part.strip() for part in spec.split(",")]
    if not all(parts):
        raise ValueError(f"--data {spec!r}: an empty part between commas")
    opened = [open_source(part, seed=seed, data_dir=data_dir) for part in parts]
    first_info = opened[0][1]
    for part, (_, info) in zip(parts[1:], opened[1:]):
        if info.class_names != first_info.class_names:
            raise ValueError(f"--data {spec!r}: {part!r} has classes {list(info.class_names)[:5]}..., "
                             f"{parts[0]!r} has {list(first_info.class_names)[:5]}...; joined sets need the same")
    dataset = opened[0][0]
    for other, _ in opened[1:]:
        dataset = dataset.concatenate(other)
    return dataset, first_info
