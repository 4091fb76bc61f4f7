"""Box maths on hand-computed rows and round trips."""

import math

import numpy as np
import pytest
import tensorflow as tf

from kdet import boxes as box_ops


def test_area_and_inverted_boxes():
    b = tf.constant([[0, 0, 10, 20], [5, 5, 5, 9], [10, 10, 0, 0]], tf.float32)
    np.testing.assert_allclose(box_ops.area(b).numpy(), [200, 0, 0])


def test_pairwise_iou_hand_computed():
    boxes = tf.constant([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]], tf.float32)
    gt = tf.constant([[0, 0, 10, 10], [0, 5, 10, 15]], tf.float32)
    iou = box_ops.pairwise_iou(boxes, gt).numpy()
    # [5,5,15,15] vs [0,0,10,10]: inter 25, union 175 -> 1/7; vs [0,5,10,15]: inter 50, union 150 -> 1/3.
    expected = [[1.0, 50 / 150], [25 / 175, 50 / 150], [0.0, 0.0]]
    np.testing.assert_allclose(iou, expected, rtol=1e-6)


def test_pairwise_iou_batched_with_padding():
    boxes = tf.constant([[[0, 0, 10, 10]], [[0, 0, 4, 4]]], tf.float32)
    gt = tf.constant([[[0, 0, 10, 10], [0, 0, 0, 0]], [[0, 0, 2, 2], [0, 0, 4, 4]]], tf.float32)
    valid = tf.constant([[True, False], [True, True]])
    iou = box_ops.pairwise_iou(boxes, gt, valid).numpy()
    np.testing.assert_allclose(iou, [[[1.0, -1.0]], [[0.25, 1.0]]], rtol=1e-6)


def test_iou_of_zero_area_boxes_is_finite():
    iou = box_ops.pairwise_iou(tf.zeros([2, 4]), tf.zeros([3, 4])).numpy()
    assert np.all(np.isfinite(iou)) and np.all(iou == 0)


def test_clip_boxes_static_and_per_image_shapes():
    b = tf.constant([[-5, -5, 50, 200]], tf.float32)
    np.testing.assert_allclose(box_ops.clip_boxes(b, (40, 100)).numpy(), [[0, 0, 40, 100]])
    batched = tf.constant([[[-5, -5, 50, 200]], [[1, 2, 3, 4]]], tf.float32)
    out = box_ops.clip_boxes(batched, tf.constant([[40, 100], [2, 3]])).numpy()
    np.testing.assert_allclose(out, [[[0, 0, 40, 100]], [[1, 2, 2, 3]]])


def test_xywh_round_trip():
    b = np.array([[10.0, 20.0, 30.0, 60.0]], np.float32)
    xywh = box_ops.yxyx_to_xywh(b).numpy()
    np.testing.assert_allclose(xywh, [[20, 10, 40, 20]])
    np.testing.assert_allclose(box_ops.xywh_to_yxyx(xywh).numpy(), b)


def test_coder_hand_computed():
    coder = box_ops.BoxCoder((10, 10, 5, 5))
    anchor = tf.constant([[0.0, 0.0, 10.0, 20.0]])  # cy 5, cx 10, h 10, w 20
    box = tf.constant([[1.0, 2.0, 21.0, 22.0]])  # cy 11, cx 12, h 20, w 20
    codes = coder.encode(box, anchor).numpy()
    expected = [[10 * 6 / 10, 10 * 2 / 20, 5 * math.log(2.0), 5 * math.log(1.0)]]
    np.testing.assert_allclose(codes, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(coder.decode(codes, anchor).numpy(), box.numpy(), rtol=1e-5)


def test_coder_round_trip_random():
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 500, size=(2, 300, 2))
    hw = rng.uniform(1, 300, size=(2, 300, 2))
    boxes = tf.constant(np.concatenate([yx, yx + hw], -1), tf.float32)
    ayx = rng.uniform(0, 500, size=(300, 2))
    ahw = rng.uniform(8, 300, size=(300, 2))
    anchors = tf.constant(np.concatenate([ayx, ayx + ahw], -1), tf.float32)
    for weights in [(1, 1, 1, 1), (10, 10, 5, 5), (30, 30, 15, 15)]:
        coder = box_ops.BoxCoder(weights)
        back = coder.decode(coder.encode(boxes, anchors), anchors)
        np.testing.assert_allclose(back.numpy(), boxes.numpy(), rtol=1e-4, atol=1e-2)


def test_decode_clips_huge_log_sizes():
    coder = box_ops.BoxCoder()
    out = coder.decode(tf.constant([[0.0, 0.0, 100.0, 100.0]]), tf.constant([[0.0, 0.0, 16.0, 16.0]])).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 1000.0, rtol=1e-4)  # 16 * 1000/16


def test_coder_rejects_bad_weights():
    with pytest.raises(ValueError, match="4 entries"):
        box_ops.BoxCoder((1, 1, 1))


def test_pairwise_iou_numpy_equals_the_tensorflow_one():
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 50, (2, 7, 2))
    a = np.concatenate([corners[0], corners[0] + rng.uniform(0, 20, (7, 2))], -1)
    b = np.concatenate([corners[1], corners[1] + rng.uniform(0, 20, (7, 2))], -1)[:5]
    b[0] = [10, 10, 10, 30]  # zero area
    np.testing.assert_allclose(box_ops.pairwise_iou_numpy(a, b),
                               box_ops.pairwise_iou(tf.constant(a, tf.float32), tf.constant(b, tf.float32)).numpy(),
                               atol=1e-5)
    assert box_ops.pairwise_iou_numpy(np.zeros((0, 4)), b).shape == (0, 5)


def test_corner_coder_hand_checked_and_round_trip():
    anchors = tf.constant([[10.0, 20.0, 30.0, 60.0]])  # h 20, w 40
    boxes = tf.constant([[12.0, 16.0, 34.0, 64.0]])
    codes = box_ops.CornerCoder().encode(boxes, anchors)
    np.testing.assert_allclose(codes.numpy(), [[0.1, -0.1, 0.2, 0.1]], atol=1e-6)
    np.testing.assert_allclose(box_ops.CornerCoder().decode(codes, anchors).numpy(), boxes.numpy(), atol=1e-5)
    # MTCNN's R/O-Net sizes count both end pixels: h 21, w 41.
    plus_one = box_ops.CornerCoder(size_offset=1.0)
    np.testing.assert_allclose(plus_one.decode(tf.constant([[1.0, 1.0, -1.0, 0.0]]), anchors).numpy(),
                               [[31.0, 61.0, 9.0, 60.0]], atol=1e-5)
