"""Decode, score filter, per-level top-k and class-aware NMS into the one output contract.

The contract, shared by ``predict_step``, evaluation and every exported
signature::

    {"boxes":          float32 [B, K, 4]  yxyx pixels of the model input,
     "scores":         float32 [B, K],
     "classes":        int32   [B, K]      label ids, -1 on padding rows,
     "num_detections": int32   [B]}

Rows at and after ``num_detections`` are padding (boxes 0, scores 0,
classes -1). NMS is ``NonMaxSuppressionV5`` with padding (a TFLite builtin),
made class-aware by offsetting each class's boxes into a disjoint region.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from kdet import boxes as box_ops


def empty_detections(batch_size, max_detections: int) -> dict[str, tf.Tensor]:
    """A contract dict with zero detections for every image."""
    return {
        "boxes": tf.zeros([batch_size, max_detections, 4], tf.float32),
        "scores": tf.zeros([batch_size, max_detections], tf.float32),
        "classes": -tf.ones([batch_size, max_detections], tf.int32),
        "num_detections": tf.zeros([batch_size], tf.int32),
    }


def top_k_candidates(
    logits: tf.Tensor, k: int, score_threshold: float, *, activation=tf.sigmoid
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Top-k (box, class) pairs by score.

    The activation is monotonic, so top-k runs on the raw values and only the
    k winners are squashed (an image has ~4M logits at 512 px and 80 classes).

    Args:
      logits: ``[B, N, C]`` values ranked per (box, class) pair.
      k: candidates kept (fewer if ``N * C < k``).
      score_threshold: pairs whose score is below it get score 0.
      activation: maps the kept values to scores (sigmoid for RetinaNet
        logits; None when the values already are probabilities).

    Returns:
      ``(scores, box_index, class_id)``, each ``[B, k']``.
    """
    num_classes = tf.shape(logits)[2]
    flat = tf.reshape(logits, [tf.shape(logits)[0], -1])
    k = tf.minimum(k, tf.shape(flat)[1])
    values, index = tf.math.top_k(flat, k=k, sorted=False)
    scores = activation(values) if activation is not None else values
    scores = tf.where(scores >= score_threshold, scores, tf.zeros_like(scores))
    return scores, index // num_classes, index % num_classes


def class_aware_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    *,
    iou_threshold: float,
    max_detections: int,
    score_threshold: float = 0.0,
    extras: dict[str, tf.Tensor] | None = None,
) -> dict[str, tf.Tensor]:
    """Per-class NMS over a batch, padded to ``max_detections``.

    Boxes of class c are shifted by ``c * (max coordinate + 1)`` so that boxes
    of different classes never overlap and one NMS call does all classes.

    Args:
      boxes: ``[B, T, 4]`` yxyx.
      scores: ``[B, T]``; entries <= ``score_threshold`` are dropped.
      classes: ``[B, T]`` int32.
      iou_threshold: NMS IoU threshold.
      max_detections: K.
      score_threshold: minimum score kept.
      extras: more per-box outputs ``{name: [B, T, ...]}`` (face landmarks:
        ``"keypoints" [B, T, 5, 2]``), selected with the boxes (0 on padding).

    Returns:
      The output contract dict (with the ``extras``).
    """
    offset = tf.reduce_max(tf.abs(boxes), axis=[1, 2], keepdims=True) + 1.0
    shifted = boxes + tf.cast(classes, boxes.dtype)[..., None] * offset

    def one_image(args):
        _, s, sb = args
        selected, num_valid = tf.raw_ops.NonMaxSuppressionV5(
            boxes=sb, scores=s, max_output_size=max_detections, iou_threshold=iou_threshold,
            score_threshold=score_threshold,  # V5 keeps scores strictly above it
            soft_nms_sigma=0.0, pad_to_max_output_size=True)[0::2]
        return selected, num_valid

    if boxes.shape[0] == 1:  # a static batch of one (TFLite exports): no loop op around the NMS
        selected, num_valid = one_image((boxes[0], scores[0], shifted[0]))
        selected, num_valid = selected[None], num_valid[None]
    else:
        selected, num_valid = tf.map_fn(one_image, (boxes, scores, shifted), fn_output_signature=(
            tf.TensorSpec([max_detections], tf.int32), tf.TensorSpec([], tf.int32)))
    valid = tf.range(max_detections)[None, :] < num_valid[:, None]
    out_boxes = tf.gather(boxes, selected, batch_dims=1)
    out_scores = tf.gather(scores, selected, batch_dims=1)
    out_classes = tf.gather(classes, selected, batch_dims=1)
    return {
        "boxes": tf.where(valid[..., None], out_boxes, 0.0),
        "scores": tf.where(valid, out_scores, 0.0),
        "classes": tf.where(valid, out_classes, -1),
        "num_detections": num_valid,
        **{name: _rows_where(valid, tf.gather(value, selected, batch_dims=1)) for name, value in (extras or {}).items()},
    }


def _rows_where(rows: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    """``values [B, K, ...]`` where ``rows [B, K]`` holds, 0 elsewhere."""
    mask = rows
    for _ in range(values.shape.rank - 2):
        mask = mask[..., None]
    return tf.where(mask, values, tf.zeros_like(values))


def multilevel_detections(
    class_logits: Sequence[tf.Tensor],
    box_codes: Sequence[tf.Tensor],
    anchors: Sequence[tf.Tensor],
    *,
    box_coder: box_ops.BoxCoder,
    image_shape: tf.Tensor,
    pre_nms_top_k: int = 1000,
    score_threshold: float = 0.05,
    nms_iou_threshold: float = 0.5,
    max_detections: int = 100,
    refinements: Sequence[Sequence[tf.Tensor]] = (),
) -> dict[str, tf.Tensor]:
    """RetinaNet-style post-processing over pyramid levels.

    Args:
      class_logits: per level ``[B, N_l, C]`` sigmoid logits.
      box_codes: per level ``[B, N_l, 4]`` codes relative to the anchors.
      anchors: per level ``[N_l, 4]`` yxyx.
      box_coder: decodes the codes.
      image_shape: ``[B, 2]`` or ``[2]`` (h, w) the boxes are clipped to.
      pre_nms_top_k: candidates kept per level before NMS.
      score_threshold: minimum class probability.
      nms_iou_threshold: class-aware NMS threshold.
      max_detections: K.
      refinements: further regressions applied in turn to the decoded boxes
        of the candidates (consistent optimization's second regression):
        each a per-level list of ``[B, N_l, 4]`` codes.

    Returns:
      The output contract dict.
    """
    all_boxes, all_scores, all_classes = [], [], []
    for level, (logits, codes, level_anchors) in enumerate(zip(class_logits, box_codes, anchors)):
        scores, box_index, class_id = top_k_candidates(logits, pre_nms_top_k, score_threshold)
        picked_codes = tf.gather(codes, box_index, batch_dims=1)
        picked_anchors = tf.gather(level_anchors, box_index)
        boxes = box_coder.decode(picked_codes, picked_anchors)
        for refinement in refinements:  # only the top-k candidates are refined
            boxes = box_coder.decode(tf.gather(refinement[level], box_index, batch_dims=1), boxes)
        all_boxes.append(boxes)
        all_scores.append(scores)
        all_classes.append(class_id)
    boxes = box_ops.clip_boxes(tf.concat(all_boxes, axis=1), image_shape)
    return class_aware_nms(
        boxes,
        tf.concat(all_scores, axis=1),
        tf.concat(all_classes, axis=1),
        iou_threshold=nms_iou_threshold,
        max_detections=max_detections,
        score_threshold=0.0,  # sub-threshold candidates were zeroed above
    )


#: The documented pixel range of model inputs (raw RGB): values outside it are clipped into it.
PIXEL_RANGE = (0.0, 255.0)


def zero_non_finite(images: tf.Tensor) -> tf.Tensor:
    """``images`` as float32 with NaN and inf pixels set to 0 and the rest clipped to :data:`PIXEL_RANGE`.

    What the network sees. An image with a non-finite pixel gets no detections
    anyway (:func:`suppress_non_finite`); clipping keeps huge finite values
    (1e38, -1e6) from overflowing the network into scores of 1.0 on
    degenerate boxes.
    """
    images = tf.cast(images, tf.float32)
    return tf.clip_by_value(tf.where(tf.math.is_finite(images), images, 0.0), *PIXEL_RANGE)


def suppress_non_finite(images: tf.Tensor, detections: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """The contract's guarantees on any input: no detections for an image with a NaN or inf pixel, no degenerate box.

    Rows whose box has zero or negative height or width, or a non-finite
    coordinate or score, are dropped and the remaining rows moved up in their
    order (scores stay sorted).

    Args:
      images: ``[B, H, W, C]`` the model input.
      detections: the output contract dict for that batch.
    """
    finite = tf.reduce_all(tf.math.is_finite(tf.cast(images, tf.float32)), axis=[1, 2, 3])
    k = tf.shape(detections["scores"])[1]
    boxes, scores = detections["boxes"], detections["scores"]
    proper = ((boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
              & tf.reduce_all(tf.math.is_finite(boxes), axis=-1) & tf.math.is_finite(scores))
    keep = finite[:, None] & proper & (tf.range(k)[None, :] < detections["num_detections"][:, None])
    return keep_detections(detections, keep)


def keep_detections(detections: dict[str, tf.Tensor], keep: tf.Tensor) -> dict[str, tf.Tensor]:
    """The contract dict with only the rows where ``keep`` (bool ``[B, K]``) holds, moved up in their order.

    A stable sort keeps the score order of the kept rows; the rest become
    padding (boxes 0, scores 0, classes -1, other per-box outputs such as
    ``keypoints`` 0) and ``num_detections`` counts the kept rows.
    """
    order = tf.argsort(tf.cast(~keep, tf.int32), axis=1, stable=True)  # kept rows first, in their order
    keep = tf.gather(keep, order, batch_dims=1)
    extras = {k: v for k, v in detections.items() if k not in ("boxes", "scores", "classes", "num_detections")}
    return {
        "boxes": tf.where(keep[..., None], tf.gather(detections["boxes"], order, batch_dims=1), 0.0),
        "scores": tf.where(keep, tf.gather(detections["scores"], order, batch_dims=1), 0.0),
        "classes": tf.where(keep, tf.gather(detections["classes"], order, batch_dims=1), -1),
        "num_detections": tf.reduce_sum(tf.cast(keep, detections["num_detections"].dtype), axis=1),
        **{k: _rows_where(keep, tf.gather(v, order, batch_dims=1)) for k, v in extras.items()},
    }


def suppress_contained(detections: dict[str, tf.Tensor], threshold: float) -> dict[str, tf.Tensor]:
    """Drops every detection that a higher-scored one covers: intersection / the smaller area > ``threshold``.

    MTCNN's final "min" NMS, in one pass over the ``K`` detections of each
    image (a ``[B, K, K]`` overlap matrix: TFLite builtins): a small box
    inside a face (an eye, a mouth) goes even at a low IoU. Unlike greedy NMS
    a dropped detection still drops those it covers in turn; padding rows
    (score 0) drop nothing.
    """
    boxes, scores = detections["boxes"], detections["scores"]
    area = box_ops.area(boxes)
    smaller = tf.maximum(tf.minimum(area[:, :, None], area[:, None, :]), 1e-9)
    k = tf.shape(scores)[1]
    earlier = tf.range(k)[:, None] < tf.range(k)[None, :]  # [i, j]: i listed before j (higher or tied score)
    covers = (box_ops.pairwise_intersection(boxes, boxes) / smaller > threshold) & earlier[None] \
        & (scores[:, :, None] > 0)
    keep = ~tf.reduce_any(covers, axis=1) & (tf.range(k)[None, :] < detections["num_detections"][:, None])
    return keep_detections(detections, keep)
