"""Tests of the example contract: DetectionInfo, DataStats, sanitising, RGB."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from kdet.data import DataStats, DetectionInfo, ensure_rgb, sanitize_boxes
from kdet.data import sanitize_example


def test_detection_info_is_frozen_keyword_only_and_validated():
    info = DetectionInfo(class_names=["a", "b"], category_ids=[3, 9], name="x")
    assert info.num_classes == 2
    assert info.class_names == ("a", "b") and info.category_ids == (3, 9)
    assert info.label_of_category_id == {3: 0, 9: 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "y"
    with pytest.raises(TypeError):
        DetectionInfo(("a",), (1,))
    with pytest.raises(ValueError, match="category_ids"):
        DetectionInfo(class_names=("a", "b"), category_ids=(1,))
    with pytest.raises(ValueError, match="unique"):
        DetectionInfo(class_names=("a", "b"), category_ids=(1, 1))
    # Statistics do not take part in equality.
    other = DetectionInfo(class_names=("a", "b"), category_ids=(3, 9), name="x",
                          stats=DataStats())
    assert other == info


def test_sanitize_boxes_by_hand():
    boxes = tf.constant(
        [
            [-5.0, -5.0, 5.0, 5.0],  # partly outside: clipped
            [2.0, 2.0, 2.0, 8.0],  # zero height: dropped
            [5.0, 5.0, 2.0, 8.0],  # inverted: dropped
            [20.0, 0.0, 30.0, 10.0],  # wholly below the image: dropped
            [np.nan, 0.0, 3.0, 3.0],  # not finite: dropped
            [1.0, 2.0, 9.0, 19.0],  # fine
        ]
    )
    clipped, keep, was_clipped = sanitize_boxes(boxes, height=10, width=20)
    assert keep.numpy().tolist() == [True, False, False, False, False, True]
    assert was_clipped.numpy().tolist() == [True] + [False] * 5
    np.testing.assert_allclose(clipped[0], [0, 0, 5, 5])
    np.testing.assert_allclose(clipped[5], [1, 2, 9, 19])


def test_sanitize_example_drops_counts_and_warns(capfd):
    stats = DataStats()
    example = {
        "image": tf.zeros([10, 20, 1], tf.uint8),
        "boxes": tf.constant([[0.0, 0.0, 4.0, 4.0], [5.0, 5.0, 2.0, 8.0],
                              [0.0, 15.0, 12.0, 25.0]]),
        "classes": tf.constant([3, 1, 2], tf.int64),
        "is_crowd": tf.constant([0, 1, 1]),
        "image_id": tf.constant(77, tf.int32),
    }
    out = tf.function(lambda e: sanitize_example(e, stats=stats))(example)
    assert out["image"].shape == (10, 20, 3) and out["image"].dtype == tf.uint8
    assert out["boxes"].dtype == tf.float32
    np.testing.assert_allclose(out["boxes"], [[0, 0, 4, 4], [0, 15, 10, 20]])
    assert out["classes"].dtype == tf.int32
    assert out["classes"].numpy().tolist() == [3, 2]
    assert out["is_crowd"].numpy().tolist() == [False, True]
    assert out["image_id"].dtype == tf.int64 and int(out["image_id"]) == 77
    assert stats.as_dict() == {"dropped_boxes": 1, "clipped_boxes": 1,
                               "skipped_images": 0}
    err = capfd.readouterr().err
    assert "kdet.data" in err and "image_id 77" in err and "dropped 1" in err
    stats.reset()
    assert stats.as_dict()["dropped_boxes"] == 0


def test_sanitize_example_keeps_images_without_objects():
    example = {
        "image": tf.zeros([4, 5, 3], tf.uint8),
        "boxes": tf.zeros([0, 4]),
        "classes": tf.zeros([0], tf.int32),
        "is_crowd": tf.zeros([0], tf.bool),
        "image_id": tf.constant(1, tf.int64),
    }
    out = sanitize_example(example)
    assert out["boxes"].shape == (0, 4) and out["classes"].shape == (0,)


def test_ensure_rgb_converts_grey_grey_alpha_rgba_and_uint16():
    grey = tf.constant([[[7]]], tf.uint8)
    np.testing.assert_array_equal(ensure_rgb(grey), [[[7, 7, 7]]])
    la = tf.constant([[[9, 255]]], tf.uint8)
    np.testing.assert_array_equal(ensure_rgb(la), [[[9, 9, 9]]])
    rgba = tf.constant([[[1, 2, 3, 0]]], tf.uint8)
    np.testing.assert_array_equal(ensure_rgb(rgba), [[[1, 2, 3]]])
    wide = tf.constant([[[65535, 0, 257 * 128]]], tf.uint16)
    np.testing.assert_array_equal(ensure_rgb(wide), [[[255, 0, 128]]])
    # Unknown channel count (inside a graph) takes the dynamic branch.
    fn = tf.function(ensure_rgb, input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
    np.testing.assert_array_equal(fn(rgba), [[[1, 2, 3]]])
    np.testing.assert_array_equal(fn(grey), [[[7, 7, 7]]])
