"""Class-aware NMS, per-level top-k and the output contract."""

import numpy as np
import tensorflow as tf

from kdet import postprocess
from kdet.boxes import BoxCoder


def test_class_aware_nms_keeps_overlapping_boxes_of_other_classes():
    boxes = tf.constant([[[0, 0, 10, 10], [0, 0, 10, 10.5], [0, 0, 10, 10], [50, 50, 60, 60]]], tf.float32)
    scores = tf.constant([[0.9, 0.8, 0.7, 0.0]])
    classes = tf.constant([[0, 0, 1, 0]])
    out = postprocess.class_aware_nms(boxes, scores, classes, iou_threshold=0.5, max_detections=5)
    assert out["num_detections"].numpy().tolist() == [2]
    np.testing.assert_allclose(out["scores"].numpy()[0], [0.9, 0.7, 0, 0, 0])
    np.testing.assert_array_equal(out["classes"].numpy()[0], [0, 1, -1, -1, -1])
    np.testing.assert_allclose(out["boxes"].numpy()[0, :2], [[0, 0, 10, 10], [0, 0, 10, 10]])
    np.testing.assert_allclose(out["boxes"].numpy()[0, 2:], 0)


def test_top_k_candidates_thresholds_and_indices():
    scores = tf.constant([[[0.1, 0.6], [0.01, 0.3], [0.9, 0.02]]])  # [B=1, N=3, C=2]
    logits = tf.math.log(scores / (1 - scores))
    values, box_index, class_id = postprocess.top_k_candidates(logits, 4, 0.05)
    got = sorted(zip(values.numpy()[0].round(3), box_index.numpy()[0], class_id.numpy()[0]), reverse=True)
    assert got == [(0.9, 2, 0), (0.6, 0, 1), (0.3, 1, 1), (0.1, 0, 0)]


def test_multilevel_detections_contract_and_decoding():
    anchors = [tf.constant([[0, 0, 10, 10], [20, 20, 40, 40]], tf.float32), tf.constant([[0, 0, 64, 64]], tf.float32)]
    logits = [tf.constant([[[5.0, -9.0], [-9.0, -9.0]]]), tf.constant([[[-9.0, 4.0]]])]
    codes = [tf.zeros([1, 2, 4]), tf.constant([[[0.0, 0.0, np.log(2.0), 0.0]]], tf.float32)]
    out = postprocess.multilevel_detections(
        logits, codes, anchors, box_coder=BoxCoder(), image_shape=tf.constant([48, 48]), max_detections=3
    )
    assert out["boxes"].shape == (1, 3, 4) and out["num_detections"].numpy()[0] == 2
    np.testing.assert_array_equal(out["classes"].numpy()[0], [0, 1, -1])
    np.testing.assert_allclose(out["boxes"].numpy()[0, 0], [0, 0, 10, 10], atol=1e-5)
    # Second: anchor 64x64 centred at 32, height doubled to 128, clipped to the 48x48 image.
    np.testing.assert_allclose(out["boxes"].numpy()[0, 1], [0, 0, 48, 48], atol=1e-4)


def test_suppress_non_finite():
    dets = postprocess.empty_detections(2, 3)
    boxes = tf.constant([[[0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 0, 0]], [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]],
                        tf.float32)
    dets = {**dets, "boxes": boxes, "scores": tf.constant([[0.9, 0.5, 0.0], [0.8, 0.0, 0.0]]),
            "classes": tf.constant([[1, 2, -1], [0, -1, -1]]), "num_detections": tf.constant([2, 1])}
    images = np.zeros([2, 4, 4, 3], np.float32)
    images[1, 0, 0, 0] = np.inf
    out = postprocess.suppress_non_finite(tf.constant(images), dets)
    assert out["num_detections"].numpy().tolist() == [2, 0]
    assert out["scores"].numpy()[1].sum() == 0 and (out["classes"].numpy()[1] == -1).all()
    # Degenerate boxes (zero area, inverted, non-finite) are never returned; the rest move up in order.
    bad = tf.constant([[[0, 0, 2, 2], [1, 1, 1, 3], [0, 0, 1, 1]], [[2, 2, 1, 1], [0, np.nan, 1, 1], [0, 0, 3, 3]]],
                      tf.float32)
    out = postprocess.suppress_non_finite(tf.zeros([2, 4, 4, 3]), {
        **dets, "boxes": bad, "scores": tf.constant([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]]),
        "classes": tf.constant([[0, 1, 2], [0, 1, 2]]), "num_detections": tf.constant([3, 3])})
    assert out["num_detections"].numpy().tolist() == [2, 1]
    np.testing.assert_array_equal(out["classes"].numpy(), [[0, 2, -1], [2, -1, -1]])
    np.testing.assert_allclose(out["scores"].numpy(), [[0.9, 0.7, 0], [0.7, 0, 0]])


def test_suppress_contained_drops_boxes_inside_higher_scored_ones():
    detections = {
        "boxes": tf.constant([[[0.0, 0.0, 100.0, 100.0], [10.0, 10.0, 30.0, 30.0], [90.0, 90.0, 150.0, 150.0],
                               [200.0, 200.0, 210.0, 210.0], [0.0, 0.0, 0.0, 0.0]]]),
        "scores": tf.constant([[0.9, 0.8, 0.7, 0.6, 0.0]]),
        "classes": tf.constant([[0, 0, 0, 0, -1]]),
        "num_detections": tf.constant([4]),
    }
    out = postprocess.suppress_contained(detections, 0.7)
    # The eye-sized box inside the face goes (IoU 0.04, but all of it covered); the box overlapping a
    # corner (100 of 3600 px) and the far one stay; the kept rows move up, padding follows.
    assert int(out["num_detections"][0]) == 3
    np.testing.assert_allclose(out["scores"][0].numpy(), [0.9, 0.7, 0.6, 0.0, 0.0])
    np.testing.assert_allclose(out["boxes"][0, 1].numpy(), [90.0, 90.0, 150.0, 150.0])
    assert out["classes"][0].numpy().tolist() == [0, 0, 0, -1, -1]
