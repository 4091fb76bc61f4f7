"""Anchor/RoI to ground-truth matching and fixed-size balanced sampling.

The :class:`Matcher` turns an IoU matrix into per-box labels from two lists:
``thresholds`` cut the IoU axis into intervals and ``labels`` name each
interval. Two rules used in kdet:

* RetinaNet: ``Matcher((0.4, 0.5), (0, -1, 1))`` -- IoU < 0.4 background,
  [0.4, 0.5) ignored, >= 0.5 foreground.
* Faster R-CNN's RPN (excerpt Sec. 3.1.2): ``Matcher((0.3, 0.7), (0, -1, 1),
  allow_low_quality_matches=True)`` -- negative below 0.3 for every ground
  truth, positive above 0.7 *or* the highest-IoU anchor of some ground truth,
  the rest ignored.

Label values: ``1`` foreground, ``0`` background, ``-1`` ignored.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import tensorflow as tf


def with_sentinel_column(iou: tf.Tensor) -> tf.Tensor:
    """Appends a column of -1 so that max/argmax over M are defined when M == 0.

    Args:
      iou: ``[..., N, M]``.

    Returns:
      ``[..., N, M + 1]``.
    """
    pad = -tf.ones(tf.concat([tf.shape(iou)[:-1], [1]], axis=0), iou.dtype)
    return tf.concat([iou, pad], axis=-1)


class GroundTruth(NamedTuple):
    """Padded ground truth of a batch, trimmed to the columns that can hold objects.

    Attributes:
      boxes: ``[B, m, 4]`` yxyx pixels.
      classes: ``[B, m]`` int32, -1 = padding.
      objects: ``[B, m]`` bool, real non-crowd objects (what anchors match).
      crowd: ``[B, m]`` bool, real crowd regions.
    """

    boxes: tf.Tensor
    classes: tf.Tensor
    objects: tf.Tensor
    crowd: tf.Tensor


def trimmed_ground_truth(targets: dict) -> GroundTruth:
    """Reads ``boxes``/``classes``/``is_crowd`` of a targets dict and drops trailing padding.

    The IoU matrix ``[B, N, m]`` costs O(N * m), and pipelines pad to e.g. 100
    rows for a handful of objects, so only the first ``m`` columns (the last
    real object of any image, at least 1) are kept.

    Args:
      targets: ``boxes [B, M, 4]``, ``classes [B, M]`` (-1 = padding) and
        optionally ``is_crowd [B, M]``.
    """
    classes = tf.cast(targets["classes"], tf.int32)
    last = tf.where(classes >= 0, tf.range(tf.shape(classes)[1])[None, :] + 1, 1)
    m = tf.maximum(tf.reduce_max(last), 1)
    classes = classes[:, :m]
    present = classes >= 0
    crowd = tf.cast(targets.get("is_crowd", tf.zeros_like(targets["classes"], tf.bool)), tf.bool)[:, :m]
    return GroundTruth(
        boxes=tf.cast(targets["boxes"], tf.float32)[:, :m],
        classes=classes,
        objects=present & ~crowd,
        crowd=present & crowd,
    )


class MatchResult(NamedTuple):
    """Output of :meth:`Matcher.__call__`.

    Attributes:
      matched_gt: ``[..., N]`` int32 index of the best ground truth of each
        box (0 when there is no valid ground truth; use with ``labels``).
      labels: ``[..., N]`` int32 interval label of each box.
      max_iou: ``[..., N]`` float32 IoU with that ground truth (``-1`` when
        there is no valid ground truth).
    """

    matched_gt: tf.Tensor
    labels: tf.Tensor
    max_iou: tf.Tensor


class Matcher:
    """Labels boxes by the interval their best IoU falls in.

    An IoU equal to a threshold belongs to the interval above it (detectron2's
    convention; the excerpt's strict "> 0.7" differs only on that measure-zero
    set).

    Args:
      thresholds: increasing IoU cut points, ``len(labels) - 1`` of them.
      labels: one label per interval, from ``[-inf, t0)`` to ``[t_last, inf)``.
      allow_low_quality_matches: also label ``labels[-1]`` every box whose IoU
        with some ground truth is that ground truth's highest (ties included,
        only where that IoU is > 0), so each ground truth gets at least one
        positive.
    """

    def __init__(
        self,
        thresholds: Sequence[float],
        labels: Sequence[int],
        *,
        allow_low_quality_matches: bool = False,
    ):
        thresholds, labels = tuple(float(t) for t in thresholds), tuple(int(v) for v in labels)
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"Matcher needs len(labels) == len(thresholds) + 1, got thresholds={thresholds} labels={labels}"
            )
        if any(b <= a for a, b in zip(thresholds, thresholds[1:])):
            raise ValueError(f"Matcher thresholds must be strictly increasing, got {thresholds}")
        if any(v not in (-1, 0, 1) for v in labels):
            raise ValueError(f"Matcher labels must be in {{-1, 0, 1}}, got {labels}")
        self.thresholds = thresholds
        self.labels = labels
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: tf.Tensor) -> MatchResult:
        """Matches boxes to ground truth.

        Args:
          iou: ``[..., N, M]`` IoU of N boxes with M ground truths; padded
            ground truth must be ``-1`` (see :func:`kdet.boxes.pairwise_iou`).
            M may be 0.

        Returns:
          A :class:`MatchResult` with ``[..., N]`` tensors.
        """
        padded = with_sentinel_column(iou)
        max_iou = tf.reduce_max(padded, axis=-1)
        matched = tf.cast(tf.argmax(padded, axis=-1, output_type=tf.int32), tf.int32)
        num_gt = tf.shape(iou)[-1]
        matched = tf.where(matched >= num_gt, tf.zeros_like(matched), matched)

        bucket = tf.zeros_like(matched)
        for t in self.thresholds:
            bucket += tf.cast(max_iou >= t, tf.int32)
        labels = tf.gather(tf.constant(self.labels, tf.int32), bucket)

        if self.allow_low_quality_matches:
            best_per_gt = tf.reduce_max(padded, axis=-2, keepdims=True)  # [..., 1, M+1]
            is_best = tf.logical_and(tf.equal(padded, best_per_gt), best_per_gt > 0.0)
            is_best = tf.reduce_any(is_best[..., :-1], axis=-1)
            labels = tf.where(is_best, tf.fill(tf.shape(labels), self.labels[-1]), labels)
        return MatchResult(matched_gt=matched, labels=labels, max_iou=max_iou)


def sample_balanced(
    labels: tf.Tensor,
    *,
    num_samples: int,
    positive_fraction: float,
    seed: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Samples a fixed number of boxes per image with at most a fraction positive.

    Positives (label 1) are drawn at random up to ``floor(num_samples *
    positive_fraction)``; negatives (label 0) fill the rest; ignored boxes
    (-1) are never drawn. If an image has fewer candidates than
    ``num_samples``, the tail is marked invalid. This is the RPN's "256 at up
    to 1:1" and Fast R-CNN's "512 at 25%".

    Args:
      labels: ``[B, N]`` int32 in ``{-1, 0, 1}``.
      num_samples: samples per image, S.
      positive_fraction: largest share of positives.
      seed: optional op seed for reproducibility.

    Returns:
      ``(indices, valid)``: ``[B, S]`` int32 indices into N (positives first)
      and ``[B, S]`` bool, False for padding.
    """
    num_samples = int(num_samples)
    max_pos = int(num_samples * positive_fraction)
    n = tf.shape(labels)[1]
    rand = tf.random.uniform(tf.shape(labels), seed=seed)
    # Random keys in [0, 1) for candidates, -1 otherwise, so top_k picks a
    # uniformly random subset of the candidates first.
    pos_key = tf.where(labels == 1, rand, -1.0)
    neg_key = tf.where(labels == 0, rand, -1.0)
    k_pos = tf.minimum(max_pos, n)
    k_neg = tf.minimum(num_samples, n)
    pos_val, pos_idx = tf.math.top_k(pos_key, k=k_pos)
    neg_val, neg_idx = tf.math.top_k(neg_key, k=k_neg)
    pos_ok = pos_val >= 0.0
    num_pos = tf.reduce_sum(tf.cast(pos_ok, tf.int32), axis=1, keepdims=True)
    neg_rank = tf.range(k_neg)[None, :]
    neg_ok = tf.logical_and(neg_val >= 0.0, neg_rank < num_samples - num_pos)

    idx = tf.concat([pos_idx, neg_idx], axis=1)
    ok = tf.concat([pos_ok, neg_ok], axis=1)
    # Compact the chosen entries to the front, keeping their order.
    width = tf.shape(idx)[1]
    order_key = tf.where(ok, 2 * width - tf.range(width)[None, :], -tf.range(width)[None, :])
    _, take = tf.math.top_k(order_key, k=tf.minimum(num_samples, width))
    indices = tf.gather(idx, take, batch_dims=1)
    valid = tf.gather(ok, take, batch_dims=1)
    short = num_samples - tf.shape(indices)[1]
    indices = tf.pad(indices, [[0, 0], [0, short]])
    valid = tf.pad(valid, [[0, 0], [0, short]])
    return indices, valid
