"""Split padded pipeline batches into per-image arrays in ORIGINAL image pixels.

Every evaluator (COCO now, VOC and face later) receives the same two batched
dicts: the ``targets`` dict of :func:`kdet.data.pipeline.make_pipeline` and the
detector output contract. This module undoes the batching, the padding and the
resize, so that evaluators only ever see one image at a time, with boxes
``[ymin, xmin, ymax, xmax]`` in the pixels of the image as it was stored.

Inputs may be NumPy arrays or (eager) TensorFlow tensors.
"""

from collections.abc import Mapping

import numpy as np


def to_numpy(value) -> np.ndarray:
    """Returns ``value`` (NumPy array, eager tensor, list) as a NumPy array."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def clip_boxes(boxes: np.ndarray, *, height: float, width: float) -> np.ndarray:
    """Clips yxyx boxes to an image.

    Args:
        boxes: float [N, 4] ``[ymin, xmin, ymax, xmax]`` pixels.
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        float [N, 4], every coordinate inside ``[0, height] x [0, width]``.
    """
    limits = np.array([height, width, height, width], dtype=np.float64)
    return np.clip(boxes, 0.0, limits)


def unbatch_ground_truth(targets: Mapping) -> list[dict]:
    """Splits a padded targets batch into per-image ground truth.

    Args:
        targets: the pipeline's targets dict: ``boxes`` [B, M, 4] resized
            pixels, ``classes`` [B, M] (-1 = padding), ``is_crowd`` [B, M],
            ``image_id`` [B], ``scale`` [B] (resized / original) and
            ``original_shape`` [B, 2] (h, w).

    Returns:
        B dicts with ``image_id`` (int), ``boxes`` float64 [N, 4] in original
        pixels, ``classes`` int64 [N], ``is_crowd`` bool [N], ``height`` and
        ``width`` (ints, the original image size). Padding rows are dropped.
    """
    boxes = to_numpy(targets["boxes"]).astype(np.float64)
    classes = to_numpy(targets["classes"]).astype(np.int64)
    if "is_crowd" in targets:
        is_crowd = to_numpy(targets["is_crowd"]).astype(bool)
    else:
        is_crowd = np.zeros(classes.shape, dtype=bool)
    image_ids = to_numpy(targets["image_id"]).reshape(-1)
    scales = to_numpy(targets["scale"]).astype(np.float64).reshape(-1)
    shapes = to_numpy(targets["original_shape"]).reshape(-1, 2)

    images = []
    for b in range(classes.shape[0]):
        valid = classes[b] >= 0
        height, width = int(shapes[b, 0]), int(shapes[b, 1])
        images.append({
            "image_id": int(image_ids[b]),
            "boxes": clip_boxes(boxes[b][valid] / scales[b], height=height, width=width),
            "classes": classes[b][valid],
            "is_crowd": is_crowd[b][valid],
            "height": height,
            "width": width,
        })
    return images


def unbatch_detections(targets: Mapping, detections: Mapping) -> list[dict]:
    """Splits a batch of detector outputs into per-image detections.

    Rows at or beyond ``num_detections[b]`` are padding and dropped, as are
    rows with class -1 or non-finite values inside the valid range (a
    defensive measure: a diverged model must give no detections, not a crash).

    Args:
        targets: the pipeline's targets dict; ``image_id`` [B], ``scale`` [B]
            and ``original_shape`` [B, 2] are read.
        detections: the detector output contract: ``boxes`` [B, K, 4] in the
            model input's pixels, ``scores`` [B, K], ``classes`` [B, K] and
            ``num_detections`` [B] (optional: all K rows when absent).

    Returns:
        B dicts with ``image_id`` (int), ``boxes`` float64 [D, 4] in original
        pixels clipped to the original image, ``scores`` float64 [D] and
        ``classes`` int64 [D].
    """
    boxes = to_numpy(detections["boxes"]).astype(np.float64)
    scores = to_numpy(detections["scores"]).astype(np.float64)
    classes = to_numpy(detections["classes"]).astype(np.int64)
    if "num_detections" in detections:
        counts = to_numpy(detections["num_detections"]).astype(np.int64).reshape(-1)
    else:
        counts = np.full(classes.shape[0], classes.shape[1], dtype=np.int64)
    image_ids = to_numpy(targets["image_id"]).reshape(-1)
    scales = to_numpy(targets["scale"]).astype(np.float64).reshape(-1)
    shapes = to_numpy(targets["original_shape"]).reshape(-1, 2)

    images = []
    for b in range(classes.shape[0]):
        n = int(np.clip(counts[b], 0, classes.shape[1]))
        box, score, cls = boxes[b, :n], scores[b, :n], classes[b, :n]
        keep = (cls >= 0) & np.isfinite(score) & np.all(np.isfinite(box), axis=-1)
        height, width = int(shapes[b, 0]), int(shapes[b, 1])
        images.append({
            "image_id": int(image_ids[b]),
            "boxes": clip_boxes(box[keep] / scales[b], height=height, width=width),
            "scores": score[keep],
            "classes": cls[keep],
        })
    return images
