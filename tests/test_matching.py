"""Matcher rules (RetinaNet and the Faster R-CNN excerpt's RPN) and the balanced sampler."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.matching import Matcher, sample_balanced


def _iou(rows):
    return tf.constant(rows, tf.float32)


def test_retinanet_rule():
    m = Matcher((0.4, 0.5), (0, -1, 1))
    iou = _iou([[0.1, 0.39], [0.45, 0.2], [0.5, 0.3], [0.2, 0.9]])
    r = m(iou)
    np.testing.assert_array_equal(r.labels.numpy(), [0, -1, 1, 1])
    np.testing.assert_array_equal(r.matched_gt.numpy()[2:], [0, 1])
    np.testing.assert_allclose(r.max_iou.numpy(), [0.39, 0.45, 0.5, 0.9], rtol=1e-6)


def test_rpn_rule_of_the_excerpt():
    """Positive: IoU > 0.7 with some gt, or the highest-IoU anchor of a gt; negative: < 0.3 for all gt."""
    m = Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)
    iou = _iou(
        [
            [0.75, 0.00],  # above 0.7 -> positive (gt 0)
            [0.50, 0.10],  # between -> ignored
            [0.10, 0.20],  # below 0.3 for all -> negative
            [0.20, 0.40],  # best anchor of gt 1 (0.4 < 0.7) -> positive by the second condition
            [0.29, 0.40],  # ties with the best of gt 1 -> positive too
            [0.29, 0.10],  # negative
        ]
    )
    r = m(iou)
    np.testing.assert_array_equal(r.labels.numpy(), [1, -1, 0, 1, 1, 0])
    np.testing.assert_array_equal(r.matched_gt.numpy()[[0, 3, 4]], [0, 1, 1])
    # Without the second condition gt 1 would get no positive.
    plain = Matcher((0.3, 0.7), (0, -1, 1))(iou)
    np.testing.assert_array_equal(plain.labels.numpy(), [1, -1, 0, -1, -1, 0])


def test_padded_and_empty_ground_truth():
    m = Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)
    # Batch of 2: image 0 has one real gt and one padded (-1) column; image 1 only padding.
    iou = _iou([[[0.8, -1.0], [0.1, -1.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
    r = m(iou)
    np.testing.assert_array_equal(r.labels.numpy(), [[1, 0], [0, 0]])
    np.testing.assert_array_equal(r.matched_gt.numpy(), [[0, 0], [0, 0]])
    # No ground-truth column at all.
    r0 = m(tf.zeros([2, 5, 0]))
    np.testing.assert_array_equal(r0.labels.numpy(), np.zeros([2, 5]))


def test_zero_iou_ground_truth_does_not_make_everything_positive():
    r = Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)(_iou([[0.0, 0.9], [0.0, 0.1]]))
    np.testing.assert_array_equal(r.labels.numpy(), [1, 0])


def test_matcher_does_not_mutate_and_validates():
    iou = _iou([[0.5]])
    before = iou.numpy().copy()
    Matcher((0.5,), (0, 1))(iou)
    np.testing.assert_array_equal(iou.numpy(), before)
    with pytest.raises(ValueError, match="len\\(labels\\)"):
        Matcher((0.3, 0.7), (0, 1))
    with pytest.raises(ValueError, match="increasing"):
        Matcher((0.7, 0.3), (0, -1, 1))


def _count(labels, indices, valid, value):
    picked = np.take_along_axis(labels, indices, axis=1)
    return ((picked == value) & valid).sum(axis=1)


def test_sampler_exact_counts_torchvision_case():
    """4 samples at 25% positive with plenty of both gives exactly 1 positive and 3 negatives."""
    labels = np.array([[1] * 10 + [0] * 10 + [-1] * 5] * 3, np.int32)
    idx, valid = sample_balanced(tf.constant(labels), num_samples=4, positive_fraction=0.25)
    idx, valid = idx.numpy(), valid.numpy()
    assert idx.shape == (3, 4) and valid.all()
    np.testing.assert_array_equal(_count(labels, idx, valid, 1), [1, 1, 1])
    np.testing.assert_array_equal(_count(labels, idx, valid, 0), [3, 3, 3])


def test_sampler_rpn_and_fast_rcnn_budgets():
    rng = np.random.default_rng(0)
    labels = rng.choice([-1, 0, 1], size=(2, 5000), p=[0.3, 0.6, 0.1]).astype(np.int32)
    for n, frac in [(256, 0.5), (512, 0.25)]:
        idx, valid = sample_balanced(tf.constant(labels), num_samples=n, positive_fraction=frac)
        idx, valid = idx.numpy(), valid.numpy()
        assert valid.all()
        np.testing.assert_array_equal(_count(labels, idx, valid, 1), [int(n * frac)] * 2)
        np.testing.assert_array_equal(_count(labels, idx, valid, 0), [n - int(n * frac)] * 2)
        assert all(len(set(row)) == n for row in idx)  # no duplicates


def test_sampler_pads_with_negatives_and_marks_shortfall():
    labels = np.array([[1, 1, 0, 0, 0, 0, -1, -1], [1, 1, 1, 1, 1, 1, 1, 1], [-1] * 8], np.int32)
    idx, valid = sample_balanced(tf.constant(labels), num_samples=6, positive_fraction=0.5)
    idx, valid = idx.numpy(), valid.numpy()
    # Image 0: 2 positives (fewer than 3) padded with 4 negatives.
    assert _count(labels, idx, valid, 1)[0] == 2 and _count(labels, idx, valid, 0)[0] == 4
    # Image 1: only positives: 3 taken, the remaining 3 slots invalid.
    assert valid[1].sum() == 3 and _count(labels, idx, valid, 1)[1] == 3
    # Image 2: nothing to sample.
    assert valid[2].sum() == 0
    # Valid entries first, ignored boxes never drawn.
    for row_valid, row_idx, row_labels in zip(valid, idx, labels):
        assert np.all(np.diff(row_valid.astype(int)) <= 0)
        assert np.all(row_labels[row_idx[row_valid]] >= 0)


def test_sampler_more_samples_than_boxes():
    idx, valid = sample_balanced(tf.constant([[1, 0, 0]], tf.int32), num_samples=8, positive_fraction=0.5)
    assert idx.shape == (1, 8) and valid.numpy().sum() == 3
