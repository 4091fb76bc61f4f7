"""Hand-checked tests of kdet.data.transforms (resize, pad, flip, scale jitter)."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.data import transforms


def _image(h, w, c=3):
    return tf.reshape(tf.range(h * w * c, dtype=tf.float32) % 251, [h, w, c])


def test_resize_to_fit_100x200_into_128():
    boxes = tf.constant([[10.0, 20.0, 50.0, 120.0]])
    image, out_boxes, scale, shape = transforms.resize_to_fit(
        _image(100, 200), boxes, output_size=(128, 128)
    )
    assert float(scale) == pytest.approx(0.64)
    assert shape.numpy().tolist() == [64, 128]
    assert image.shape == (64, 128, 3) and image.dtype == tf.float32
    np.testing.assert_allclose(out_boxes, [[6.4, 12.8, 32.0, 76.8]], rtol=1e-6)


def test_resize_to_fit_upscales_small_image_and_keeps_box_over_scale():
    boxes = tf.constant([[1.0, 2.0, 3.0, 4.0]])
    image, out_boxes, scale, shape = transforms.resize_to_fit(
        _image(50, 40), boxes, output_size=(256, 128)
    )
    assert float(scale) == pytest.approx(3.2)  # min(256/50, 128/40)
    assert shape.numpy().tolist() == [160, 128]
    np.testing.assert_allclose(out_boxes / scale, boxes, rtol=1e-6)


def test_resize_to_range_short_side_and_cap():
    image, _, scale, shape = transforms.resize_to_range(
        _image(100, 200), tf.zeros([0, 4]), min_size=50, max_size=80
    )
    assert float(scale) == pytest.approx(0.4)  # min(50/100, 80/200)
    assert shape.numpy().tolist() == [40, 80]
    assert image.shape == (40, 80, 3)


def test_pad_to_size_and_multiple():
    image = _image(5, 7)
    padded = transforms.pad_to_size(image, output_size=(8, 12))
    assert padded.shape == (8, 12, 3)
    np.testing.assert_array_equal(padded[:5, :7], image)
    assert float(tf.reduce_sum(tf.abs(padded[5:]))) == 0.0
    assert float(tf.reduce_sum(tf.abs(padded[:, 7:]))) == 0.0
    assert transforms.pad_to_multiple(image, stride=4).shape == (8, 8, 3)
    assert transforms.pad_to_multiple(_image(8, 4), stride=4).shape == (8, 4, 3)


def test_flip_boxes_by_hand_and_twice_is_identity():
    boxes = tf.constant([[1.0, 2.0, 5.0, 7.0], [0.0, 0.0, 3.0, 10.0]])
    flipped = transforms.flip_boxes_left_right(boxes, width=10)
    np.testing.assert_allclose(flipped, [[1, 3, 5, 8], [0, 0, 3, 10]])
    image = _image(6, 10)
    once_image, once_boxes = transforms.flip_left_right(image, boxes)
    twice_image, twice_boxes = transforms.flip_left_right(once_image, once_boxes)
    np.testing.assert_array_equal(twice_image, image)
    np.testing.assert_allclose(twice_boxes, boxes)
    # The flipped box covers the flipped pixels: column x moves to 9 - x.
    np.testing.assert_array_equal(once_image[:, 0], image[:, 9])


def test_random_horizontal_flip_is_stateless_and_both_outcomes_happen():
    image, boxes = _image(4, 10), tf.constant([[0.0, 1.0, 2.0, 3.0]])
    outcomes = set()
    for i in range(16):
        seed = tf.constant([i, 7])
        a = transforms.random_horizontal_flip(image, boxes, seed=seed)
        b = transforms.random_horizontal_flip(image, boxes, seed=seed)
        np.testing.assert_array_equal(a[1], b[1])
        outcomes.add(float(a[1][0, 1]))
    assert outcomes == {1.0, 7.0}
    never = transforms.random_horizontal_flip(
        image, boxes, seed=tf.constant([1, 2]), probability=0.0
    )
    np.testing.assert_array_equal(never[1], boxes)


def test_crop_boxes_shifts_clips_and_drops():
    boxes = tf.constant(
        [[10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0], [12.0, 40.0, 20.0, 60.0]]
    )
    out, keep = transforms.crop_boxes(boxes, offset=[10, 10], size=[20, 40])
    np.testing.assert_allclose(out[0], [0, 0, 20, 20])
    np.testing.assert_allclose(out[2], [2, 30, 10, 40])
    assert keep.numpy().tolist() == [True, False, True]


@pytest.mark.parametrize("low,high", [(0.5, 0.7), (1.0, 1.0), (1.5, 2.0)])
def test_random_scale_jitter_fits_output_and_keeps_boxes_inside(low, high):
    boxes = tf.constant([[0.0, 0.0, 100.0, 200.0], [40.0, 90.0, 60.0, 110.0]])
    for i in range(4):
        image, out, keep, scale = transforms.random_scale_jitter(
            _image(100, 200),
            boxes,
            output_size=(128, 128),
            scale_range=(low, high),
            seed=tf.constant([i, 3]),
        )
        h, w = image.shape[0], image.shape[1]
        assert h <= 128 and w <= 128
        assert 0.64 * low - 1e-6 <= float(scale) <= 0.64 * high + 1e-6
        kept = tf.boolean_mask(out, keep).numpy()
        assert (kept[:, 0] >= 0).all() and (kept[:, 2] <= h).all()
        assert (kept[:, 1] >= 0).all() and (kept[:, 3] <= w).all()
        # The whole-image box always survives and fills the crop.
        assert bool(keep[0])
        np.testing.assert_allclose(out[0], [0, 0, h, w], atol=1.0)


def test_random_scale_jitter_of_one_equals_resize_to_fit():
    boxes = tf.constant([[10.0, 20.0, 50.0, 120.0]])
    jit = transforms.random_scale_jitter(
        _image(100, 200), boxes, output_size=(128, 128), scale_range=(1, 1),
        seed=tf.constant([0, 0]),
    )
    fit = transforms.resize_to_fit(_image(100, 200), boxes, output_size=(128, 128))
    np.testing.assert_allclose(jit[0], fit[0])
    np.testing.assert_allclose(jit[1], fit[1])
