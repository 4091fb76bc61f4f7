"""Box maths: pure, batched functions on ``[..., 4]`` yxyx boxes in absolute pixels.

Every function here accepts any number of leading (batch) dimensions and
never mutates its inputs. Padded ground truth is marked by the caller with a
mask (or class ``-1``); IoU against a padded box is reported as ``-1`` so that
it can never win a ``max``.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

# Decoded log-sizes are clipped so exp() cannot overflow: a box can grow at
# most 1000/16 = 62.5x its anchor in one step (Detectron's BBOX_XFORM_CLIP,
# the largest COCO side over the smallest anchor).
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)

# Added to sizes before dividing or taking a log, so that degenerate (zero
# width) boxes give large but finite codes instead of inf/NaN.
_EPSILON = 1e-8


def area(boxes: tf.Tensor) -> tf.Tensor:
    """Area of yxyx boxes; inverted boxes have area 0.

    Args:
      boxes: ``[..., 4]`` yxyx.

    Returns:
      ``[...]`` areas.
    """
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def pairwise_intersection(boxes: tf.Tensor, others: tf.Tensor) -> tf.Tensor:
    """Intersection areas ``[..., N, M]`` of yxyx ``boxes [..., N, 4]`` and ``others [..., M, 4]``."""
    b = boxes[..., :, None, :]
    g = others[..., None, :, :]
    inter_h = tf.maximum(tf.minimum(b[..., 2], g[..., 2]) - tf.maximum(b[..., 0], g[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(b[..., 3], g[..., 3]) - tf.maximum(b[..., 1], g[..., 1]), 0.0)
    return inter_h * inter_w


def pairwise_iou(
    boxes: tf.Tensor, gt_boxes: tf.Tensor, gt_valid: tf.Tensor | None = None
) -> tf.Tensor:
    """Intersection over union between every box and every ground-truth box.

    Args:
      boxes: ``[..., N, 4]`` yxyx.
      gt_boxes: ``[..., M, 4]`` yxyx with the same leading dimensions.
      gt_valid: optional ``[..., M]`` bool; columns of padded ground truth
        (False) are set to ``-1``.

    Returns:
      ``[..., N, M]`` IoU in ``[0, 1]`` (``-1`` for padded ground truth).
    """
    inter = pairwise_intersection(boxes, gt_boxes)
    union = area(boxes)[..., :, None] + area(gt_boxes)[..., None, :] - inter
    iou = inter / tf.maximum(union, _EPSILON)
    if gt_valid is not None:
        iou = tf.where(gt_valid[..., None, :], iou, -tf.ones_like(iou))
    return iou


def pairwise_intersection_numpy(a, b):
    """NumPy twin of :func:`pairwise_intersection`: ``[N, M]`` float64 overlap areas of yxyx ``a [N, 4]``, ``b [M, 4]``."""
    import numpy as np  # the rest of this module is TensorFlow

    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(hi - lo, 0.0, None), axis=-1)


def pairwise_iou_numpy(a, b):
    """NumPy twin of :func:`pairwise_iou` for host-side code (mining, face metrics, peers).

    Args:
      a: ``[N, 4]`` yxyx.
      b: ``[M, 4]`` yxyx.

    Returns:
      ``[N, M]`` float64 IoU; inverted boxes have area 0 and an empty union gives 0.
    """
    import numpy as np  # the rest of this module is TensorFlow

    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    inter = pairwise_intersection_numpy(a, b)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_nms(boxes, scores, iou_threshold: float, max_output: int):
    """Indices kept by greedy NMS in NumPy (highest score first; a box is dropped if IoU > threshold with a kept one).

    Class-agnostic; for host-side code (the TFLite face host loop, one label per object in pictures).

    Args:
      boxes: ``[N, 4]`` yxyx.
      scores: ``[N]``.
      iou_threshold: a box overlapping a kept one by more is dropped.
      max_output: at most this many indices.

    Returns:
      ``[K]`` int64 indices into ``boxes``, best first.
    """
    import numpy as np  # the rest of this module is TensorFlow

    order = np.argsort(-np.asarray(scores), kind="stable")
    iou = pairwise_iou_numpy(boxes, boxes)
    kept: list[int] = []
    for i in order:
        if len(kept) == max_output:
            break
        if not kept or iou[i, kept].max() <= iou_threshold:
            kept.append(int(i))
    return np.asarray(kept, np.int64)


def host_final_nms(boxes, scores, *, iou_threshold: float, max_detections: int,
                   containment_threshold: float | None = None):
    """The final NMS of a detector exported without it, in NumPy: indices of the detections, best first.

    Greedy NMS over the boxes scoring above 0 (at most ``max_detections``);
    then, with ``containment_threshold``, every kept box that an earlier kept
    box covers by more than that fraction of the smaller box's area is
    dropped (a dropped box still drops those it covers, as
    :func:`kdet.postprocess.suppress_contained`). The settings are the
    model's ``final_nms_settings()``.

    Args:
      boxes: ``[N, 4]`` yxyx.
      scores: ``[N]``; 0 marks a rejected candidate.
    """
    import numpy as np  # the rest of this module is TensorFlow

    boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1)
    alive = np.flatnonzero(scores > 0)
    kept = alive[greedy_nms(boxes[alive], scores[alive], iou_threshold, max_detections)]
    if containment_threshold is None or len(kept) < 2:
        return kept
    b = boxes[kept]
    inter = pairwise_intersection_numpy(b, b)
    area = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=-1)
    covered = inter / np.maximum(np.minimum(area[:, None], area[None, :]), 1e-9) > containment_threshold
    return kept[~np.triu(covered, k=1).any(axis=0)]


def clip_boxes(boxes: tf.Tensor, image_shape: tf.Tensor | Sequence[int]) -> tf.Tensor:
    """Clips yxyx boxes to ``[0, height] x [0, width]``.

    Args:
      boxes: ``[..., N, 4]``.
      image_shape: ``(height, width)``, or ``[..., 2]`` per image (broadcast
        over N).

    Returns:
      ``[..., N, 4]`` clipped boxes.
    """
    shape = tf.cast(image_shape, boxes.dtype)
    if shape.shape.rank is not None and shape.shape.rank > 1:
        shape = shape[..., None, :]
    height, width = shape[..., 0:1], shape[..., 1:2]
    ymin, xmin, ymax, xmax = tf.split(boxes, 4, axis=-1)
    return tf.concat(
        [
            tf.clip_by_value(ymin, 0.0, height),
            tf.clip_by_value(xmin, 0.0, width),
            tf.clip_by_value(ymax, 0.0, height),
            tf.clip_by_value(xmax, 0.0, width),
        ],
        axis=-1,
    )


def to_center_size(boxes: tf.Tensor) -> tf.Tensor:
    """yxyx -> ``[cy, cx, h, w]``."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    h, w = ymax - ymin, xmax - xmin
    return tf.stack([ymin + 0.5 * h, xmin + 0.5 * w, h, w], axis=-1)


def from_center_size(boxes: tf.Tensor) -> tf.Tensor:
    """``[cy, cx, h, w]`` -> yxyx."""
    cy, cx, h, w = tf.unstack(boxes, axis=-1)
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def yxyx_to_xywh(boxes):
    """yxyx -> COCO ``[x, y, width, height]`` (numpy or TF)."""
    return tf.stack(
        [boxes[..., 1], boxes[..., 0], boxes[..., 3] - boxes[..., 1], boxes[..., 2] - boxes[..., 0]],
        axis=-1,
    )


def xywh_to_yxyx(boxes):
    """COCO ``[x, y, width, height]`` -> yxyx."""
    return tf.stack(
        [boxes[..., 1], boxes[..., 0], boxes[..., 1] + boxes[..., 3], boxes[..., 0] + boxes[..., 2]],
        axis=-1,
    )


class BoxCoder:
    """The R-CNN box parameterisation (Faster R-CNN Eq. 2) with per-coordinate weights.

    ``t = (dy, dx, dh, dw) * weights`` with ``dy = (y - y_a) / h_a`` and
    ``dh = log(h / h_a)``. The weights are the inverse of the regression
    targets' standard deviations: ``(10, 10, 5, 5)`` is std ``(0.1, 0.1, 0.2,
    0.2)``; Cascade R-CNN tightens them per stage.

    Args:
      weights: ``(wy, wx, wh, ww)``; ``(1, 1, 1, 1)`` is the plain Eq. 2.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)):
        if len(weights) != 4:
            raise ValueError(f"BoxCoder weights must have 4 entries (wy, wx, wh, ww), got {weights!r}")
        self.weights = tuple(float(w) for w in weights)

    def encode(self, boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
        """Regression targets of ``boxes`` relative to ``anchors``.

        Args:
          boxes: ``[..., 4]`` yxyx targets.
          anchors: ``[..., 4]`` yxyx, broadcastable to ``boxes``.

        Returns:
          ``[..., 4]`` codes ``(ty, tx, th, tw)``.
        """
        b = to_center_size(boxes)
        a = to_center_size(anchors)
        a_h = a[..., 2] + _EPSILON
        a_w = a[..., 3] + _EPSILON
        wy, wx, wh, ww = self.weights
        return tf.stack(
            [
                wy * (b[..., 0] - a[..., 0]) / a_h,
                wx * (b[..., 1] - a[..., 1]) / a_w,
                wh * tf.math.log((b[..., 2] + _EPSILON) / a_h),
                ww * tf.math.log((b[..., 3] + _EPSILON) / a_w),
            ],
            axis=-1,
        )

    def decode(self, codes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
        """Inverse of :meth:`encode`, with log-sizes clipped at ``log(1000/16)``.

        Args:
          codes: ``[..., 4]`` ``(ty, tx, th, tw)``.
          anchors: ``[..., 4]`` yxyx, broadcastable to ``codes``.

        Returns:
          ``[..., 4]`` yxyx boxes.
        """
        a = to_center_size(anchors)
        wy, wx, wh, ww = self.weights
        dh = tf.minimum(codes[..., 2] / wh, BBOX_XFORM_CLIP)
        dw = tf.minimum(codes[..., 3] / ww, BBOX_XFORM_CLIP)
        cy = codes[..., 0] / wy * a[..., 2] + a[..., 0]
        cx = codes[..., 1] / wx * a[..., 3] + a[..., 1]
        h = tf.exp(dh) * a[..., 2]
        w = tf.exp(dw) * a[..., 3]
        return from_center_size(tf.stack([cy, cx, h, w], axis=-1))


class CornerCoder:
    """MTCNN's box parameterisation: each corner's shift in units of the anchor's size.

    ``t = ((y1 - y1_a) / h_a, (x1 - x1_a) / w_a, (y2 - y2_a) / h_a, (x2 - x2_a) / w_a)``,
    linear in the box (no logarithm), as MTCNN's P-, R- and O-Net regress
    (with the coordinates in kdet's yxyx order). Same interface as :class:`BoxCoder`.

    Args:
      size_offset: added to ``h_a`` and ``w_a``: MTCNN's R- and O-Net take a
        box's size as ``x2 - x1 + 1`` (pixel indices, both ends included), its
        P-Net as ``x2 - x1``.
    """

    def __init__(self, size_offset: float = 0.0):
        self.size_offset = float(size_offset)

    def encode(self, boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
        """``[..., 4]`` codes of yxyx ``boxes`` relative to yxyx ``anchors`` (broadcastable)."""
        return (boxes - anchors) / self._scale(anchors)

    def decode(self, codes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
        """Inverse of :meth:`encode`: ``[..., 4]`` yxyx boxes."""
        return anchors + tf.cast(codes, anchors.dtype) * self._scale(anchors)

    def decode_points(self, codes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
        """Points ``[..., P, 2]`` (y, x) from codes ``[..., 2P]`` (y, x pairs), fractions of the anchor's size.

        ``y = y1_a + t_y (h_a + size_offset) - size_offset``: MTCNN's O-Net
        landmarks (with ``size_offset`` 1, its pixel-index convention).
        """
        codes = tf.reshape(tf.cast(codes, anchors.dtype), tf.concat([tf.shape(codes)[:-1], [-1, 2]], axis=0))
        size = self._scale(anchors)[..., None, :2]
        return anchors[..., None, :2] + codes * size - self.size_offset

    def _scale(self, anchors: tf.Tensor) -> tf.Tensor:
        h = anchors[..., 2] - anchors[..., 0] + self.size_offset
        w = anchors[..., 3] - anchors[..., 1] + self.size_offset
        return tf.stack([h, w, h, w], axis=-1)
