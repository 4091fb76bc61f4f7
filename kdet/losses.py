"""Detection losses as pure functions returning *sums*; callers normalise.

Each function takes targets, predictions and per-element weights and returns a
scalar sum, so that the detector decides the normaliser (``max(num_pos, 1)``
for RetinaNet, the sample count for the RPN) in one visible place. Entries
with weight 0 are *selected out*, not multiplied by 0, so a NaN target of a
masked entry (say the code of a degenerate padded box) cannot poison the sum.
"""

from __future__ import annotations

import tensorflow as tf


def _weighted_sum(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    weights = tf.cast(weights, tf.float32)
    return tf.reduce_sum(tf.where(weights > 0, values * weights, 0.0))


def smooth_l1(targets: tf.Tensor, predictions: tf.Tensor, weights: tf.Tensor, *, beta: float = 0.1) -> tf.Tensor:
    """Smooth-L1 (Fast R-CNN's robust loss), summed.

    ``0.5 * d**2 / beta`` for ``|d| < beta``, else ``|d| - 0.5 * beta``;
    ``beta = 0`` is plain L1.

    Args:
      targets: ``[..., 4]`` box codes.
      predictions: ``[..., 4]`` box codes.
      weights: ``[...]`` per-box weight (0 for boxes that take no part).
      beta: the quadratic zone's half width.

    Returns:
      Scalar sum over boxes and coordinates.
    """
    diff = tf.abs(tf.cast(predictions, tf.float32) - tf.cast(targets, tf.float32))
    if beta > 0:
        per_coord = tf.where(diff < beta, 0.5 * tf.square(diff) / beta, diff - 0.5 * beta)
    else:
        per_coord = diff
    return _weighted_sum(tf.reduce_sum(per_coord, axis=-1), weights)


def sigmoid_focal(
    targets: tf.Tensor,
    logits: tf.Tensor,
    weights: tf.Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> tf.Tensor:
    """Sigmoid focal loss (RetinaNet), summed.

    ``-alpha_t (1 - p_t)**gamma log(p_t)`` per box and class, computed from
    logits in a numerically stable way.

    Args:
      targets: ``[..., C]`` 0/1 one-hot targets (all zero for background).
      logits: ``[..., C]`` raw classification logits.
      weights: ``[...]`` per-box weight (0 for ignored boxes).
      alpha: weight of the positive class; ``alpha < 0`` disables it.
      gamma: focusing exponent; 0 gives weighted binary cross-entropy.

    Returns:
      Scalar sum over boxes and classes.
    """
    targets = tf.cast(targets, tf.float32)
    logits = tf.cast(logits, tf.float32)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    p = tf.sigmoid(logits)
    p_t = targets * p + (1.0 - targets) * (1.0 - p)
    loss = ce * tf.pow(1.0 - p_t, gamma) if gamma else ce
    if alpha >= 0:
        loss *= targets * alpha + (1.0 - targets) * (1.0 - alpha)
    return _weighted_sum(tf.reduce_sum(loss, axis=-1), weights)


def sigmoid_cross_entropy(targets: tf.Tensor, logits: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Binary log loss (the RPN's object/not-object loss), summed.

    Args:
      targets: ``[...]`` 0/1.
      logits: ``[...]`` raw logits.
      weights: ``[...]`` per-element weight.
    """
    ce = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.float32), logits=tf.cast(logits, tf.float32)
    )
    return _weighted_sum(ce, weights)


def softmax_cross_entropy(labels: tf.Tensor, logits: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Softmax log loss over ``C + 1`` classes (index 0 = background), summed.

    Args:
      labels: ``[...]`` int class index.
      logits: ``[..., C + 1]``.
      weights: ``[...]`` per-element weight.
    """
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )
    return _weighted_sum(ce, weights)


def scale_for_replicas(loss: tf.Tensor) -> tf.Tensor:
    """Divides a per-replica loss by the replica count.

    Keras sums gradients over replicas and does not pre-scale a loss returned
    by a custom ``compute_loss``; its loss tracker multiplies the count back.
    """
    return loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)
