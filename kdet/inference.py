"""Running a model directory: ``kdet evaluate`` and ``kdet detect``.

* :func:`evaluate_model_dir` -- COCO metrics (face metrics for face models)
  of a model directory on any data string.
* :func:`detect_files` -- detections on image files, drawn into PNGs.
"""

from __future__ import annotations

import collections
import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from kdet.data.pipeline import make_pipeline
from kdet.data.sources import open_source
from kdet.files import check_output_path
from kdet.model_dir import load_model_dir


def evaluate_model_dir(model_dir: str, *, data: str | None = None, max_images: int | None = None,
                       batch_size: int = 8, results_json: str | None = None, data_dir: str | None = None,
                       progress: bool = True, report=None, tflite: str | None = None) -> dict[str, float]:
    """Evaluates the model in ``model_dir`` on ``data`` (default: the directory's data string).

    With ``tflite`` (a ``.tflite`` file ``kdet export`` wrote from this
    directory) the file is evaluated instead, by the LiteRT interpreter, on
    the same images letterboxed to the file's input size, with the same
    evaluator: what the export costs in accuracy.

    ``report(metrics, evaluation)`` (``evaluation``: the model's ``"coco"``
    or ``"face"``), when given, is called before ``results_json`` is written,
    so the metrics are shown even if writing the file fails.

    Raises:
      ValueError: no data string given or stored, or the data's classes differ
        from the model's (by count).
    """
    from kdet.evaluation import CocoEvaluator, FaceEvaluator, evaluate_model

    if results_json:
        check_output_path(results_json, "--results-json", folder=False)
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
    predictor, size = model, info.input_size
    if tflite:
        from kdet.serving.tflite import LiteRTDetector

        if not os.path.isfile(tflite):
            raise FileNotFoundError(f"--tflite {tflite!r} does not exist")
        try:
            predictor = LiteRTDetector(tflite, num_threads=os.cpu_count() or 1)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"--tflite {tflite!r} is not a TFLite file kdet export wrote ({error})") from None
        size = predictor.input_shape[1:3]
    pipeline = make_pipeline(examples, image_size=size, batch_size=batch_size, training=False,
                             stride=model.input_stride)
    if model.evaluation == "face":
        evaluator = FaceEvaluator(min_face_size=info.recipe.get("extra", {}).get("min_face_size"))
    else:
        evaluator = CocoEvaluator(category_ids=data_info.category_ids, class_names=data_info.class_names)
    try:
        metrics = evaluate_model(predictor, pipeline, evaluator, progress=progress)
    except ValueError as error:
        raise ValueError(f"--data {data!r}: {error}") from None
    if report is not None:
        report(metrics, model.evaluation)
    if results_json and hasattr(evaluator, "write_results_json"):
        evaluator.write_results_json(results_json)
    return metrics


def image_files(inputs: Sequence[str]) -> list[str]:
    """The image files named by ``inputs``: files as given, folders by their images (sorted, not recursive).

    A folder's images are its files with an :data:`kdet.serving.image.IMAGE_SUFFIXES` ending.

    Raises:
      FileNotFoundError: an input does not exist.
      ValueError: a folder holds no image files.
    """
    from kdet.serving.image import IMAGE_SUFFIXES

    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if n.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(item, n)))
            if not found:
                raise ValueError(f"folder {item!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif not os.path.exists(item):
            raise FileNotFoundError(f"image {item!r} does not exist")
        else:
            files.append(item)
    return files


def output_names(paths: Sequence[str], suffix: str = ".png") -> list[str]:
    """One distinct output file name per input path (``a/img.png`` and ``b/img.png`` do not overwrite each other).

    The base name without its extension when that is unique; otherwise the
    extension and then as many parent folders as it takes are added.
    """
    def name(path: str, depth: int) -> str:
        parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
        stem, ext = os.path.splitext(parts[-1])
        folders = parts[-depth:-1] if depth >= 2 else []  # depth 1: the extension only; then parent folders
        chosen = folders + [stem + (f"_{ext.lstrip('.')}" if depth >= 1 and ext else "")]
        return "_".join(p for p in chosen if p) + suffix

    names = [name(p, 0) for p in paths]
    for depth in range(1, 64):
        counts = collections.Counter(names)
        if all(c == 1 for c in counts.values()):
            break
        names = [name(p, depth) if counts[n] > 1 else n for p, n in zip(paths, names)]
    return names


def detect_image(model, image: np.ndarray, input_size: Sequence[int]) -> dict[str, np.ndarray]:
    """Detections of ``model`` on one ``uint8 [H, W, 3]`` image, as the SavedModel computes them.

    The image is letterboxed by :func:`kdet.serving.image.letterbox` and the
    detections mapped back by :func:`kdet.serving.savedmodel.to_detection_api`
    (the two steps of the ``serving_default`` signature).

    Returns:
      ``boxes float32 [N, 4]`` yxyx pixels of ``image``, ``boxes_normalized``
      (as the SavedModel's ``detection_boxes``), ``scores [N]``, ``classes
      int [N]`` (label indices), ``category_ids int [N]`` (the dataset's
      ids of those labels, as the SavedModel's ``detection_classes``) and
      ``class_names str [N]``, for the ``N`` detections kept; for a
      detector with landmarks also ``keypoints float32 [N, P, 2]`` (y, x
      pixels of ``image``).
    """
    from kdet.serving.image import letterbox
    from kdet.serving.savedmodel import to_detection_api

    canvas, scale, _ = letterbox(image[None], input_size)
    found = model.predict_on_batch(canvas)
    served = to_detection_api(found, scale, tf.shape(image)[:2], tf.constant([True]))
    n = int(served["num_detections"][0])
    normalized = served["detection_boxes"][0, :n].numpy()
    height, width = image.shape[:2]
    classes = served["detection_classes"][0, :n].numpy().astype(np.int64) - 1
    found = {"boxes": normalized * np.array([height, width, height, width], np.float32),
             "boxes_normalized": normalized, "scores": served["detection_scores"][0, :n].numpy(),
             "classes": classes, "category_ids": np.asarray(model.category_ids, np.int64)[classes],
             "class_names": np.asarray(model.class_names, dtype=str)[classes]}
    if "detection_keypoints" in served:
        found["keypoints"] = served["detection_keypoints"][0, :n].numpy() * np.float32([height, width])
    return found


def detections_record(path: str, image_size: Sequence[int], found: dict) -> dict:
    """One image's detections as plain data (``kdet detect --json``): original pixels, ids and names.

    Each detection's ``box`` is ``[ymin, xmin, ymax, xmax]`` in pixels of the
    original image, ``box_normalized`` the SavedModel's ``detection_boxes``
    row; ``category_id`` the dataset's id; detections best first. A
    detector with landmarks adds ``keypoints``: ``[[y, x], ...]`` pixels
    (MTCNN's: left eye, right eye, nose, mouth left, mouth right).
    """
    detections = [{"box": [round(float(v), 3) for v in box], "box_normalized": [float(v) for v in normalized],
                   "score": float(score), "category_id": int(category), "class_name": str(name)}
                  for box, normalized, score, category, name in zip(
                      found["boxes"], found["boxes_normalized"], found["scores"], found["category_ids"],
                      found["class_names"])]
    for detection, points in zip(detections, found.get("keypoints", [])):
        detection["keypoints"] = [[round(float(y), 2), round(float(x), 2)] for y, x in points]
    return {"image": path, "height": int(image_size[0]), "width": int(image_size[1]), "detections": detections}


def _check_threshold(score_threshold: float) -> float:
    value = float(score_threshold)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError(f"--score-threshold must be a number in [0, 1], got {score_threshold!r}")
    return value


def detect_files(model_dir: str, paths: Sequence[str], *, out_dir: str,
                 score_threshold: float = 0.3) -> Iterator[tuple[str, str, dict]]:
    """Detects on image files (folders: their images) and draws ``out_dir/NAME.png`` for each.

    Every file is read and checked before the model is loaded, so a bad
    file is reported at once. Output names are distinct per input.

    Yields:
      ``(image path, png path, detections)`` with the detections of
      :func:`detect_image` at or above ``score_threshold``, and the image's
      ``image_size`` ``(height, width)``.
    """
    from PIL import Image

    from kdet.serving.image import read_image_file
    from kdet.visualize import draw_detections

    score_threshold = _check_threshold(score_threshold)
    check_output_path(out_dir, "--out", folder=True, what="a folder for the drawn images")
    paths = image_files(paths)
    images = [read_image_file(p) for p in paths]
    model, info = load_model_dir(model_dir)
    os.makedirs(out_dir, exist_ok=True)
    for path, name, image in zip(paths, output_names(paths), images):
        found = detect_image(model, image, info.input_size)
        keep = found["scores"] >= score_threshold
        found = {**{k: v[keep] for k, v in found.items()}, "image_size": image.shape[:2]}
        drawn = draw_detections(image, found["boxes"], found["classes"], found["scores"],
                                class_names=info.class_names, score_threshold=score_threshold,
                                keypoints=found.get("keypoints"))
        out = os.path.join(out_dir, name)
        Image.fromarray(drawn).save(out)
        yield path, out, found
