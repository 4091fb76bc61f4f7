"""Loss functions against hand-computed values."""

import math

import numpy as np
import tensorflow as tf

from kdet import losses


def test_smooth_l1_hand_computed():
    t = tf.zeros([2, 4])
    p = tf.constant([[0.05, -0.2, 0.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    # beta 0.1: 0.5*0.05^2/0.1 = 0.0125; |0.2|-0.05 = 0.15; 0; 0.95 -> 1.1125; second row masked out.
    np.testing.assert_allclose(losses.smooth_l1(t, p, tf.constant([1.0, 0.0]), beta=0.1).numpy(), 1.1125, rtol=1e-6)
    np.testing.assert_allclose(losses.smooth_l1(t, p, tf.constant([1.0, 1.0]), beta=0.0).numpy(), 1.25 + 3.0, rtol=1e-6)


def test_focal_loss_hand_computed():
    logit = math.log(0.9 / 0.1)  # p = 0.9
    # Positive: -0.25 * (0.1)^2 * log(0.9); negative with p = 0.9: -0.75 * 0.9^2 * log(0.1).
    expected = -0.25 * 0.01 * math.log(0.9) - 0.75 * 0.81 * math.log(0.1)
    got = losses.sigmoid_focal(tf.constant([[1.0, 0.0]]), tf.constant([[logit, logit]]), tf.constant([1.0]))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    # gamma = 0, alpha < 0 is plain binary cross-entropy.
    bce = losses.sigmoid_focal(tf.constant([[1.0]]), tf.constant([[logit]]), tf.constant([1.0]), alpha=-1, gamma=0)
    np.testing.assert_allclose(bce.numpy(), -math.log(0.9), rtol=1e-5)


def test_focal_loss_is_stable_for_extreme_logits():
    got = losses.sigmoid_focal(tf.constant([[1.0, 0.0]]), tf.constant([[-200.0, 200.0]]), tf.constant([1.0]))
    assert np.isfinite(got.numpy()) and got.numpy() > 100


def test_cross_entropies():
    np.testing.assert_allclose(
        losses.sigmoid_cross_entropy(tf.constant([1.0, 0.0]), tf.constant([0.0, 0.0]), tf.constant([1.0, 1.0])).numpy(),
        2 * math.log(2.0), rtol=1e-6,
    )
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(tf.constant([2]), tf.constant([[0.0, 0.0, 0.0]]), tf.constant([1.0])).numpy(),
        math.log(3.0), rtol=1e-6,
    )


def test_masked_entries_cannot_poison_the_sum():
    nan = float("nan")
    t = tf.constant([[nan, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    p = tf.constant([[0.0, 0.0, 0.0, 0.0], [0.05, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(losses.smooth_l1(t, p, tf.constant([0.0, 1.0]), beta=0.1).numpy(), 0.0125, rtol=1e-6)
    got = losses.softmax_cross_entropy(tf.constant([0, 1]), tf.constant([[nan, 0.0], [0.0, 0.0]]),
                                       tf.constant([0.0, 1.0]))
    np.testing.assert_allclose(got.numpy(), math.log(2.0), rtol=1e-6)
