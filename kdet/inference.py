"""Running a model directory: ``kdet evaluate`` and ``kdet detect``.

* :func:`evaluate_model_dir` -- COCO metrics (face metrics for face models)
  of a model directory on any data string.
* :func:`detect_files` -- detections on image files, drawn into PNGs.
* :func:`frozen_detect` -- ``model.detect`` at a fixed input size as one
  graph with the weights as constants, for a CPU stream (:func:`freeze`).
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from kdet.data.pipeline import make_pipeline
from kdet.data.sources import open_source
from kdet.model_dir import ModelInfo, build_for, load_model_dir


def freeze(concrete):
    """``concrete`` (dict outputs) with its variables turned into constants, outputs still named.

    With no variables left, grappler folds everything computed from the
    weights alone (the ``bfloat16`` casts of a ``compute_dtype="bfloat16"``
    face cascade, every call otherwise), and oneDNN keeps its reordered copy
    of constant filters between calls. TFLite conversion needs it too (see
    :mod:`kdet.tflite`). The frozen function does not see later weight
    changes: freeze again after training.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    names = sorted(concrete.structured_outputs)  # a frozen function returns its outputs flattened, keys sorted
    frozen = convert_variables_to_constants_v2(concrete)
    count = sum(isinstance(s, tf.TensorSpec) for s in tf.nest.flatten(concrete.structured_input_signature))
    arguments = concrete.inputs[:count]  # the captured tensors follow the arguments
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name.split(":")[0]) for t in arguments]

    @tf.function(input_signature=specs)
    def named(*args):
        return dict(zip(names, frozen(*args)))

    return named.get_concrete_function()


def detect_function(model, input_size: Sequence[int], *, batch_size: int = 1):
    """``images uint8 [batch_size, h, w, 3] -> contract dict`` as a concrete function (the model built first)."""
    if not model.variables:
        build_for(model, input_size)
    height, width = int(input_size[0]), int(input_size[1])
    spec = tf.TensorSpec([batch_size, height, width, 3], tf.uint8, name="images")
    return tf.function(lambda images: model.detect(tf.cast(images, tf.float32)),
                       input_signature=[spec]).get_concrete_function()


def frozen_detect(model, image_size: Sequence[int], *, batch_size: int = 1):
    """``model.detect`` on ``uint8 [batch_size, H, W, 3]`` images as a frozen concrete function.

    For a stream of same-size frames on a CPU (a camera, a video): the
    output contract dict of ``model.detect``, from one graph whose weights
    are constants (:func:`freeze` of :func:`detect_function`). The face
    cascade at 640x480 runs ~6% faster a frame on one core than
    ``tf.function(model.detect)``, the same detections to float rounding
    (``benchmarks/face_benchmark.py`` times kdet's detectors this way).

    Args:
      model: a kdet detector (anything with ``detect(images)``; built here if it is not).
      image_size: ``(H, W)`` of every frame.
      batch_size: frames per call.
    """
    height, width = (int(v) for v in image_size)
    if height < 1 or width < 1 or batch_size < 1:
        raise ValueError(f"frozen_detect needs a positive image_size and batch_size, got {image_size}, {batch_size}")
    return freeze(detect_function(model, (height, width), batch_size=batch_size))


def evaluation_kind(info: ModelInfo) -> str:
    """"face" for face detectors (face AP / ROC), else "coco"."""
    kind = info.recipe.get("evaluation")
    if kind:
        return kind
    return "face" if info.detector.endswith("FaceCascade") or info.class_names == ["face"] else "coco"


def evaluate_model_dir(model_dir: str, *, data: str | None = None, max_images: int | None = None,
                       batch_size: int = 8, results_json: str | None = None, data_dir: str | None = None,
                       progress: bool = True) -> dict[str, float]:
    """Evaluates the model in ``model_dir`` on ``data`` (default: the directory's data string).

    Raises:
      ValueError: no data string given or stored, or the data's classes differ
        from the model's (by count).
    """
    from kdet.evaluation import CocoEvaluator, FaceEvaluator, evaluate_model

    model, info = load_model_dir(model_dir)
    data = data or info.data
    if not data:
        raise ValueError(f"{model_dir}: the model directory names no data; pass --data")
    examples, data_info = open_source(data, data_dir=data_dir)
    if len(data_info.class_names) != len(info.class_names):
        raise ValueError(f"--data {data!r} has {len(data_info.class_names)} classes {data_info.class_names[:5]}..., "
                         f"the model in {model_dir} was trained on {len(info.class_names)}")
    if max_images:
        examples = examples.take(max_images)
    pipeline = make_pipeline(examples, image_size=info.input_size, batch_size=batch_size, training=False)
    if evaluation_kind(info) == "face":
        evaluator = FaceEvaluator(min_face_size=info.recipe.get("extra", {}).get("min_face_size"))
    else:
        evaluator = CocoEvaluator(category_ids=data_info.category_ids, class_names=data_info.class_names)
    metrics = evaluate_model(model, pipeline, evaluator, progress=progress)
    if results_json and hasattr(evaluator, "write_results_json"):
        evaluator.write_results_json(results_json)
    return metrics


def read_image(path: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of an image file; a clear error for a missing or undecodable file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except tf.errors.InvalidArgumentError:
        raise ValueError(f"{path!r} is not a JPEG, PNG, GIF or BMP image (first bytes {data[:8]!r})") from None


def letterbox(image: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, float]:
    """``(image resized to fit size and zero-padded [h, w, 3] float32, scale)``; boxes map back by ``/ scale``."""
    height, width = image.shape[:2]
    scale = min(size[0] / height, size[1] / width)
    new = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = tf.image.resize(tf.cast(image, tf.float32), new, antialias=scale < 1)
    return tf.image.pad_to_bounding_box(resized, 0, 0, int(size[0]), int(size[1])).numpy(), scale


def detect_files(model_dir: str, paths: Sequence[str], *, out_dir: str,
                 score_threshold: float = 0.3) -> Iterator[tuple[str, int]]:
    """Detects on each image file and writes ``out_dir/NAME.png``; yields ``(png path, detections drawn)``."""
    from PIL import Image

    from kdet.visualize import draw_detections

    images = [read_image(p) for p in paths]  # every file checked before the model is loaded
    model, info = load_model_dir(model_dir)
    os.makedirs(out_dir, exist_ok=True)
    for path, image in zip(paths, images):
        padded, scale = letterbox(image, info.input_size)
        found = {k: np.asarray(v)[0] for k, v in model.predict_on_batch(padded[None]).items()}
        n = int(found["num_detections"])
        keep = found["scores"][:n] >= score_threshold
        boxes = found["boxes"][:n][keep] / scale
        drawn = draw_detections(image, boxes, found["classes"][:n][keep], found["scores"][:n][keep],
                                class_names=info.class_names, score_threshold=score_threshold)
        out = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(drawn).save(out)
        yield out, int(keep.sum())
