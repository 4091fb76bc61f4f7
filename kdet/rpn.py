"""Faster R-CNN's region proposal network as pure functions: labels, loss, proposals.

Excerpt Sec. 3.1.2-3.1.3 (``../shared/papers/004_29f587fe34382ef6.txt``):

* an anchor is positive if its IoU with some ground truth is above 0.7 or it
  is the highest-IoU anchor of a ground truth, negative if its IoU is below
  0.3 for every ground truth, otherwise ignored
  (``Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)``);
* 256 anchors are sampled per image with up to 1:1 positives, padded with
  negatives;
* Eq. 1: log loss over the sampled anchors divided by ``N_cls = 256``, plus
  ``lambda = 10`` times smooth-L1 over the positives divided by ``N_reg``, the
  number of anchor *locations* (~2400 in the paper). The excerpt notes this
  normalisation "is not required and could be simplified": ``"sampled"``
  divides both terms by the number of sampled anchors (Detectron's choice).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from kdet import boxes as box_ops
from kdet import losses, postprocess
from kdet.matching import Matcher, sample_balanced, trimmed_ground_truth

NORMALIZATIONS = ("paper", "sampled")


def sampled_mask(indices: tf.Tensor, valid: tf.Tensor, num_boxes) -> tf.Tensor:
    """``[B, N]`` bool mask of the entries named by :func:`kdet.matching.sample_balanced`."""
    batch = tf.shape(indices)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(indices))
    where = tf.stack([tf.boolean_mask(rows, valid), tf.boolean_mask(indices, valid)], axis=-1)
    counts = tf.scatter_nd(where, tf.ones(tf.shape(where)[:1], tf.int32), [batch, num_boxes])
    return counts > 0


def rpn_targets(
    anchors: tf.Tensor,
    targets: dict,
    *,
    matcher: Matcher,
    box_coder: box_ops.BoxCoder,
    num_samples: int = 256,
    positive_fraction: float = 0.5,
) -> dict[str, tf.Tensor]:
    """Labels and samples anchors, and encodes their regression targets.

    Args:
      anchors: ``[N, 4]`` yxyx pixels.
      targets: ``boxes [B, M, 4]``, ``classes [B, M]`` (-1 = padding),
        optional ``is_crowd`` (crowd regions are never matched).
      matcher: the labelling rule.
      box_coder: Eq. 2 parameterisation.
      num_samples: anchors sampled per image.
      positive_fraction: largest share of positives in the sample.

    Returns:
      ``labels [B, N]``: 1 / 0 for sampled positives / negatives, -1 for
      anchors outside the sample; ``box_targets [B, N, 4]``;
      ``num_sampled [B]``.
    """
    gt = trimmed_ground_truth(targets)
    iou = box_ops.pairwise_iou(anchors[None], gt.boxes, gt.objects)
    match = matcher(iou)
    indices, valid = sample_balanced(match.labels, num_samples=num_samples, positive_fraction=positive_fraction)
    in_sample = sampled_mask(indices, valid, tf.shape(match.labels)[1])
    matched_boxes = tf.gather(gt.boxes, match.matched_gt, batch_dims=1)
    return {
        "labels": tf.where(in_sample, match.labels, -1),
        "box_targets": box_coder.encode(matched_boxes, anchors[None]),
        "num_sampled": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
    }


def rpn_losses(
    objectness: tf.Tensor,
    box_codes: tf.Tensor,
    targets: dict[str, tf.Tensor],
    *,
    normalization: str = "paper",
    num_samples: int = 256,
    num_locations=None,
    reg_weight: float = 10.0,
    smooth_l1_beta: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Eq. 1 of the excerpt, per batch.

    Args:
      objectness: ``[B, N]`` logits.
      box_codes: ``[B, N, 4]``.
      targets: output of :func:`rpn_targets`.
      normalization: ``"paper"`` (``N_cls = num_samples`` per image, ``N_reg =
        num_locations`` per image, times ``reg_weight``) or ``"sampled"``
        (both terms over the number of sampled anchors; use ``reg_weight=1``).
      num_samples: N_cls per image for ``"paper"``.
      num_locations: N_reg per image for ``"paper"`` (anchor positions, not
        anchors).
      reg_weight: lambda.
      smooth_l1_beta: 1.0 is Fast R-CNN's smooth-L1.

    Returns:
      ``(cls_loss, box_loss)`` scalars, already normalised and weighted.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    labels = targets["labels"]
    sampled = tf.cast(labels >= 0, tf.float32)
    positive = tf.cast(labels == 1, tf.float32)
    cls_sum = losses.sigmoid_cross_entropy(tf.cast(labels == 1, tf.float32), objectness, sampled)
    box_sum = losses.smooth_l1(targets["box_targets"], box_codes, positive, beta=smooth_l1_beta)
    batch = tf.cast(tf.shape(labels)[0], tf.float32)
    if normalization == "paper":
        if num_locations is None:
            raise ValueError("normalization='paper' needs num_locations (N_reg)")
        n_cls = batch * float(num_samples)
        n_reg = batch * tf.cast(num_locations, tf.float32)
    else:
        # the whole batch's count over any number of replicas (losses.replica_mean)
        n_cls = n_reg = tf.maximum(losses.replica_mean(tf.reduce_sum(sampled)), 1.0)
    return cls_sum / n_cls, reg_weight * box_sum / n_reg


def generate_proposals(
    objectness: Sequence[tf.Tensor],
    box_codes: Sequence[tf.Tensor],
    anchors: Sequence[tf.Tensor],
    *,
    box_coder: box_ops.BoxCoder,
    image_shape,
    pre_nms_top_k: int,
    max_proposals: int,
    nms_iou_threshold: float = 0.7,
    min_size: float = 0.0,
) -> dict[str, tf.Tensor]:
    """Per-level top-k, decode, clip, NMS at 0.7 within each level, best ``max_proposals`` overall.

    Args:
      objectness: per level ``[B, N_l]`` logits.
      box_codes: per level ``[B, N_l, 4]``.
      anchors: per level ``[N_l, 4]``.
      box_coder: decodes the codes.
      image_shape: ``(h, w)`` or ``[B, 2]`` to clip to.
      pre_nms_top_k: candidates per level before NMS.
      max_proposals: K, proposals kept per image.
      nms_iou_threshold: NMS IoU.
      min_size: proposals with a side below it are dropped.

    Returns:
      ``{"boxes": [B, K, 4], "scores": [B, K] (object probability),
      "levels": [B, K] (pyramid index, -1 padding), "num_proposals": [B]}``;
      no gradient flows into the boxes.
    """
    boxes, scores, levels = [], [], []
    for level, (logits, codes, level_anchors) in enumerate(zip(objectness, box_codes, anchors)):
        k = tf.minimum(pre_nms_top_k, tf.shape(logits)[1])
        top, index = tf.math.top_k(logits, k=k)
        decoded = box_coder.decode(tf.gather(codes, index, batch_dims=1), tf.gather(level_anchors, index))
        boxes.append(decoded)
        scores.append(tf.sigmoid(top))
        levels.append(tf.fill(tf.shape(index), level))
    boxes = tf.stop_gradient(box_ops.clip_boxes(tf.concat(boxes, axis=1), image_shape))
    scores = tf.stop_gradient(tf.concat(scores, axis=1))
    if min_size > 0:
        small = tf.minimum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]) < min_size
        scores = tf.where(small, 0.0, scores)
    kept = postprocess.class_aware_nms(
        boxes, scores, tf.concat(levels, axis=1), iou_threshold=nms_iou_threshold, max_detections=max_proposals
    )
    return {"boxes": kept["boxes"], "scores": kept["scores"], "levels": kept["classes"],
            "num_proposals": kept["num_detections"]}
