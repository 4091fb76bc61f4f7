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


def replica_mean(value: tf.Tensor) -> tf.Tensor:
    """Mean of ``value`` over the replicas in sync (itself outside a multi-replica context).

    A normaliser such as the number of positive anchors must be the global
    count divided by the replicas: per-replica loss ``sum_r / mean(count)``,
    divided by the replica count (:func:`scale_for_replicas`) and summed over
    replicas by the optimizer, is then ``sum / count`` of the whole batch, as
    on one device.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, value)


def scale_for_replicas(loss: tf.Tensor) -> tf.Tensor:
    """Divides a per-replica loss by the replica count.

    Keras sums gradients over replicas and does not pre-scale a loss returned
    by a custom ``compute_loss``; its loss tracker multiplies the count back.
    """
    return loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)


# ------------------------------------------------------------------ ranking losses (AP-Loss, Chen et al.)
def piecewise_step(x: tf.Tensor, delta: float) -> tf.Tensor:
    """Eq. 21 of AP-Loss: 0 below ``-delta``, 1 above ``delta``, linear in between (``f(0) = 0.5``)."""
    return tf.clip_by_value(x / (2.0 * delta) + 0.5, 0.0, 1.0)


def _cumulative_max(values: tf.Tensor) -> tf.Tensor:
    """Inclusive running maximum of a 1-D tensor in ceil(log2 n) shifted maxima (O(n) memory)."""
    n = tf.shape(values)[0]

    def body(shift, acc):
        shifted = tf.concat([tf.fill([tf.minimum(shift, n)], acc.dtype.min), acc[:tf.maximum(n - shift, 0)]], 0)
        return shift * 2, tf.maximum(acc, shifted)

    _, out = tf.while_loop(lambda shift, _: shift < n, body, (tf.constant(1), values))
    return out


def _ap_rows(f_neg, s_i, pos_sorted, running_max, *, delta: float, interpolate: bool):
    """AP-loss rows of a chunk of positives ``s_i [C]`` (ascending): ``(L_ij [C, N^], running max, sum_j L_ij [C])``.

    ``f_neg [C, N^]`` is ``f(s_j - s_i)`` against the negatives; ``running_max``
    the interpolated precision of the positives before the chunk.
    """
    # rank+(i) = 1 + sum_{k in P, k != i} f(s_k - s_i); f(0) = 0.5 for k = i itself.
    rank_pos = 0.5 + tf.reduce_sum(piecewise_step(pos_sorted[None, :] - s_i[:, None], delta), axis=1)
    primary = f_neg / (rank_pos + tf.reduce_sum(f_neg, axis=1))[:, None]  # L_ij, Eq. 3
    precision = 1.0 - tf.reduce_sum(primary, axis=1)
    if not interpolate:
        return primary, running_max, 1.0 - precision
    # Algorithm 1, lines 10-15: precision made monotone over ascending scores
    best = tf.maximum(running_max, _cumulative_max(precision))
    scale = tf.where(precision < best, (1.0 - best) / tf.maximum(1.0 - precision, 1e-12), 1.0)
    return primary * scale[:, None], best[-1], 1.0 - best  # rows: sum_j L_ij after interpolation


def _ranking_value_and_gradient(scores, labels, *, kind: str, delta: float, interpolate: bool,
                                max_pair_elements: int):
    """Loss value and Algorithm 1's error-driven gradient for flat ``scores [M]`` and ``labels [M]``.

    Positives are processed in ascending score order, in chunks whose
    pairwise block ``[chunk, |P| + |N^|]`` holds at most ``max_pair_elements``
    values, so memory is O(|P| + |N|) plus that block, never O(|P| |N|).
    """
    positive = tf.where(labels == 1)[:, 0]
    num_pos = tf.size(positive)
    num_neg_all = tf.reduce_sum(tf.cast(labels == 0, tf.float32))

    def no_positives():
        return tf.constant(0.0), tf.zeros_like(scores)

    def with_positives():
        pos_scores = tf.gather(scores, positive)
        order = tf.argsort(pos_scores, stable=True)  # ascending: Algorithm 1's O
        positive_sorted = tf.gather(positive, order)
        pos_sorted = tf.gather(pos_scores, order)
        # Sec. 3.4.4: a negative below min positive score - delta has f = 0 against every positive.
        negative = tf.where((labels == 0) & (scores >= pos_sorted[0] - delta))[:, 0]
        neg_scores = tf.gather(scores, negative)
        width = num_pos + tf.size(negative)
        chunk = tf.clip_by_value(max_pair_elements // tf.maximum(width, 1), 1, num_pos)
        num_chunks = (num_pos + chunk - 1) // chunk

        def body(c, running_max, loss_sum, neg_grad, pos_grads):
            start = c * chunk
            s_i = pos_sorted[start:tf.minimum(start + chunk, num_pos)]
            f_neg = piecewise_step(neg_scores[None, :] - s_i[:, None], delta)  # [C, N^]
            if kind == "ap":
                primary, running_max, row = _ap_rows(f_neg, s_i, pos_sorted, running_max, delta=delta,
                                                     interpolate=interpolate)
            else:  # "auc", Eq. 7
                primary = f_neg / tf.maximum(num_neg_all, 1.0)
                row = tf.reduce_sum(primary, axis=1)
            return (c + 1, running_max, loss_sum + tf.reduce_sum(row), neg_grad + tf.reduce_sum(primary, axis=0),
                    pos_grads.write(c, -row))

        _, _, loss_sum, neg_grad, pos_grads = tf.while_loop(
            lambda c, *_: c < num_chunks, body,
            (tf.constant(0), tf.constant(0.0), tf.constant(0.0), tf.zeros_like(neg_scores),
             tf.TensorArray(tf.float32, size=num_chunks, infer_shape=False)),
            parallel_iterations=1)
        pos_f = tf.cast(num_pos, tf.float32)
        gradient = tf.tensor_scatter_nd_add(tf.zeros_like(scores), positive_sorted[:, None], pos_grads.concat())
        gradient = tf.tensor_scatter_nd_add(gradient, negative[:, None], neg_grad)
        return loss_sum / pos_f, gradient / pos_f  # Algorithm 1, line 19

    return tf.cond(num_pos > 0, with_positives, no_positives)


def _step_sums(sorted_values: tf.Tensor, prefix: tf.Tensor, x: tf.Tensor, delta: float) -> tf.Tensor:
    """``sum_v f(v - x)`` for every ``x`` in O(log n) each: ``f`` is 0, linear, then 1 (Eq. 21).

    ``sorted_values [n]`` ascending, ``prefix [n + 1]`` their cumulative sums
    from 0 (float64), ``x [m]``. Values above ``x + delta`` count 1, values in
    ``[x - delta, x + delta]`` count ``(v - x) / 2 delta + 0.5``.
    """
    n = tf.shape(sorted_values, out_type=tf.int64)[0]
    lo = tf.searchsorted(sorted_values, x - delta, side="left", out_type=tf.int64)
    hi = tf.searchsorted(sorted_values, x + delta, side="right", out_type=tf.int64)
    count = tf.cast(hi - lo, tf.float64)
    middle = tf.gather(prefix, hi) - tf.gather(prefix, lo)
    return tf.cast(n - hi, tf.float64) + (middle - count * x) / (2.0 * delta) + 0.5 * count


def _negative_sums(sp, sn, lo, hi, num_pos, delta: float) -> tf.Tensor:
    """``[P]``: ``sum_j f(s_j - s_i)`` for every positive ``sp`` (ascending), from each negative's ranges.

    Negative ``j`` (score ``sn[j]``) counts 1 for the positives ``[0, lo_j)``
    and ``(s_j - s_i) / 2 delta + 0.5`` for ``[lo_j, hi_j)``: range additions,
    summed as difference arrays (``unsorted_segment_sum``) then prefix sums.
    """
    segments = tf.cast(num_pos + 1, tf.int64)

    def range_sums(values_lo, values_hi):
        """prefix over positives of (+values_lo at lo_j, -values_hi at hi_j)."""
        diff = (tf.math.unsorted_segment_sum(values_lo, lo, segments)
                - tf.math.unsorted_segment_sum(values_hi, hi, segments))
        return tf.cumsum(diff)[:-1]

    ones = tf.ones_like(sn)
    below = tf.cast(tf.size(sn), tf.float64) - tf.cumsum(
        tf.math.unsorted_segment_sum(ones, lo, segments))[:-1]  # negatives with lo_j > i: f = 1 for i
    slope_part = (sn / (2.0 * delta) + 0.5)
    return below + range_sums(slope_part, slope_part) - range_sums(ones, ones) * sp / (2.0 * delta)


def _sorted_value_and_gradient(scores, labels, *, kind: str, delta: float, interpolate: bool):
    """The same value and gradient as :func:`_ranking_value_and_gradient` in O(|N^| log |P| + |P| log |P|).

    Only the positives are sorted. Each non-trivial negative ``j`` finds, by
    two binary searches in them, the positives it is above by more than
    ``delta`` (``[0, lo_j)``: ``f = 1``) and those within ``delta``
    (``[lo_j, hi_j)``: ``f = (s_j - s_i) / 2 delta + 0.5``). Then

    * each positive's negative sum ``sum_j f(s_j - s_i)`` is a prefix sum of
      range additions (difference arrays scattered with
      ``unsorted_segment_sum``), and
    * each negative's gradient ``sum_i w_i f(s_j - s_i)`` (``w_i`` the
      positive's normalisation and interpolation factor) is a difference of
      prefix sums of ``w`` and ``w * s`` over the same two ranges.

    Sums run in float64, so differences of sums over ~1e7 scores keep float32
    precision. Memory is O(|P| + |N|).
    """
    positive = tf.where(labels == 1)[:, 0]
    num_pos = tf.size(positive)
    num_neg_all = tf.reduce_sum(tf.cast(labels == 0, tf.float64))

    def no_positives():
        return tf.constant(0.0), tf.zeros_like(scores)

    def with_positives():
        s64 = tf.cast(scores, tf.float64)
        pos_scores = tf.gather(s64, positive)
        order = tf.argsort(pos_scores, stable=True)
        positive_sorted = tf.gather(positive, order)
        sp = tf.gather(pos_scores, order)  # ascending
        negative = tf.where((labels == 0) & (s64 >= sp[0] - delta))[:, 0]
        sn = tf.gather(s64, negative)
        lo = tf.searchsorted(sp, sn - delta, side="left", out_type=tf.int64)  # positives with s_i < s_j - delta
        hi = tf.searchsorted(sp, sn + delta, side="right", out_type=tf.int64)  # ... with s_i <= s_j + delta
        neg_sums = _negative_sums(sp, sn, lo, hi, num_pos, delta)  # [P]: sum_j f(s_j - s_i)
        if kind == "ap":
            rank_pos = 0.5 + _step_sums(sp, tf.concat([tf.zeros([1], tf.float64), tf.cumsum(sp)], 0), sp, delta)
            denominator = rank_pos + neg_sums
            precision = 1.0 - neg_sums / denominator
            best = _cumulative_max(precision) if interpolate else precision
            scale = tf.where(precision < best, (1.0 - best) / tf.maximum(1.0 - precision, 1e-300), 1.0)
            weights = scale / denominator  # L_ij (interpolated) = weights_i * f(s_j - s_i)
            rows = 1.0 - best
        else:
            weights = tf.fill(tf.shape(sp), 1.0 / tf.maximum(num_neg_all, 1.0))
            rows = neg_sums * weights
        zero = tf.zeros([1], tf.float64)
        w_prefix = tf.concat([zero, tf.cumsum(weights)], 0)
        ws_prefix = tf.concat([zero, tf.cumsum(weights * sp)], 0)
        w_low, w_mid = tf.gather(w_prefix, lo), tf.gather(w_prefix, hi) - tf.gather(w_prefix, lo)
        ws_mid = tf.gather(ws_prefix, hi) - tf.gather(ws_prefix, lo)
        neg_grad = w_low + (sn * w_mid - ws_mid) / (2.0 * delta) + 0.5 * w_mid
        pos_f = tf.cast(num_pos, tf.float64)
        gradient = tf.tensor_scatter_nd_add(tf.zeros_like(scores), positive_sorted[:, None],
                                            tf.cast(-rows / pos_f, tf.float32))
        gradient = tf.tensor_scatter_nd_add(gradient, negative[:, None], tf.cast(neg_grad / pos_f, tf.float32))
        return tf.cast(tf.reduce_sum(rows) / pos_f, tf.float32), gradient

    return tf.cond(num_pos > 0, with_positives, no_positives)


RANKING_METHODS = ("sorted", "pairwise")


def _ranking_loss(scores, labels, *, kind, delta, interpolate, max_pair_elements, method):
    if delta <= 0:
        raise ValueError(f"delta (the piecewise step's half width, Eq. 21) must be > 0, got {delta}")
    if method not in RANKING_METHODS:
        raise ValueError(f"method must be one of {RANKING_METHODS}, got {method!r}")
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])

    @tf.custom_gradient
    def loss(s):
        flat = tf.reshape(tf.cast(s, tf.float32), [-1])
        if method == "sorted":
            value, gradient = _sorted_value_and_gradient(flat, labels, kind=kind, delta=delta, interpolate=interpolate)
        else:
            value, gradient = _ranking_value_and_gradient(flat, labels, kind=kind, delta=delta,
                                                          interpolate=interpolate, max_pair_elements=max_pair_elements)

        def backward(upstream):
            return tf.cast(tf.reshape(gradient * tf.cast(upstream, tf.float32), tf.shape(s)), s.dtype)

        return value, backward

    return loss(scores)


def ap_loss(scores: tf.Tensor, labels: tf.Tensor, *, delta: float = 1.0, interpolate: bool = True,
            method: str = "sorted", max_pair_elements: int = 1 << 24) -> tf.Tensor:
    """AP-Loss (Chen et al.): ``1 - AP`` of one ranking of every box-class pair, trained by the error-driven update.

    All entries of ``scores`` -- every anchor of every image of the batch,
    replicated per class -- are ranked together. The value is ``1 -`` the
    mean (interpolated) precision at the positives, with the Heaviside step
    replaced by the piecewise step of Eq. 21. It is not differentiable; its
    gradient is Algorithm 1's error-driven update, a positive ``i`` getting
    ``-sum_j L_ij / |P|`` and a negative ``j`` getting ``sum_i L_ij / |P|``,
    multiplied by the upstream gradient (``tf.custom_gradient``).

    Conventions (the authors' code): the rank of positive ``i`` among
    positives is ``1 + sum_{k in P, k != i} f(s_k - s_i)``; negatives with
    ``s_j < min_P s - delta`` are dropped before the pairwise work; no
    positives gives loss 0 and zero gradient; label -1 takes no part and
    gets zero gradient. This is *not* a sum: it is already normalised.

    Args:
      scores: any shape, raw logits (the sigmoid is for inference only).
      labels: same shape, int: 1 positive, 0 negative, -1 ignored.
      delta: the piecewise step's half width (1).
      interpolate: interpolated AP (Sec. 3.4.3); False: plain AP.
      method: ``"sorted"`` (default): the positives sorted once, every pair
        sum by binary search, range additions and prefix sums, O(|N| log |P|)
        time and O(|P| + |N|) memory; ``"pairwise"``: Algorithm 1 as written, a loop over
        chunks of positives against the non-trivial negatives, O(|P| |N^|)
        time. Both give the same value and gradient (to float rounding).
      max_pair_elements: ``"pairwise"`` only: bound on the ``[chunk of
        positives, |P| + |N^|]`` block held at once.

    Returns:
      Scalar float32 loss in [0, 1].
    """
    return _ranking_loss(scores, labels, kind="ap", delta=delta, interpolate=interpolate,
                         max_pair_elements=max_pair_elements, method=method)


def auc_loss(scores: tf.Tensor, labels: tf.Tensor, *, delta: float = 1.0, method: str = "sorted",
             max_pair_elements: int = 1 << 24) -> tf.Tensor:
    """AUC-loss (Eq. 7 of AP-Loss): ``L'_ij = f(s_j - s_i) / |N|``, same ranking and error-driven update.

    The value is the mean over positives of the (soft) fraction of negatives
    ranked above them, ``1 - AUC``. Arguments as :func:`ap_loss`.
    """
    return _ranking_loss(scores, labels, kind="auc", delta=delta, interpolate=False,
                         max_pair_elements=max_pair_elements, method=method)
