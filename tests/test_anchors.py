"""Multilevel anchors on hand-computed positions and sizes."""

import numpy as np
import pytest

from kdet.anchors import AnchorSpec, flat_anchors, level_anchors, multilevel_anchors


def test_single_level_hand_computed():
    spec = AnchorSpec(min_level=3, max_level=3, num_scales=1, aspect_ratios=(1.0, 4.0), anchor_size=2.0)
    a = level_anchors(spec, 3, (2, 2)).numpy()
    assert a.shape == (2 * 2 * 2, 4)
    # Location (0, 0): centre (4, 4); ratio 1: 16x16; ratio 4 (w/h): h = 16/2 = 8, w = 32.
    np.testing.assert_allclose(a[0], [-4, -4, 12, 12])
    np.testing.assert_allclose(a[1], [0, -12, 8, 20])
    # Location (0, 1): centre (4, 12).
    np.testing.assert_allclose(a[2], [-4, 4, 12, 20])
    # Location (1, 0): centre (12, 4).
    np.testing.assert_allclose(a[4], [4, -4, 20, 12])


def test_octave_scales_and_ratio_order():
    spec = AnchorSpec(min_level=4, max_level=4, num_scales=2, aspect_ratios=(0.5, 1.0), anchor_size=4.0)
    a = level_anchors(spec, 4, (1, 1)).numpy()
    h, w = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    side0, side1 = 64.0, 64.0 * 2**0.5
    np.testing.assert_allclose(h, [side0 / 0.5**0.5, side0, side1 / 0.5**0.5, side1], rtol=1e-6)
    np.testing.assert_allclose(w, [side0 * 0.5**0.5, side0, side1 * 0.5**0.5, side1], rtol=1e-6)
    np.testing.assert_allclose(w * h, [side0**2, side0**2, side1**2, side1**2], rtol=1e-5)


def test_multilevel_counts_for_retinanet_and_rpn():
    retina = AnchorSpec()
    assert retina.anchors_per_location == 9
    assert retina.num_anchors((512, 512)) == 9 * (64**2 + 32**2 + 16**2 + 8**2 + 4**2)
    assert flat_anchors(retina, (512, 512)).shape == (retina.num_anchors((512, 512)), 4)
    rpn = AnchorSpec(min_level=2, max_level=6, num_scales=1, anchor_size=8.0)
    per_level = multilevel_anchors(rpn, (256, 320))
    assert [v.shape[0] for v in per_level.values()] == [3 * 64 * 80, 3 * 32 * 40, 3 * 16 * 20, 3 * 8 * 10, 3 * 4 * 5]
    # One scale per level: 32 px at P2 ... 512 px at P6 (square anchors).
    squares = [v.numpy()[1] for v in per_level.values()]
    np.testing.assert_allclose([s[2] - s[0] for s in squares], [32, 64, 128, 256, 512])


def test_feature_sizes_round_up():
    assert AnchorSpec(min_level=3, max_level=4).feature_sizes((100, 65)) == [(13, 9), (7, 5)]


def test_bad_spec():
    with pytest.raises(ValueError):
        AnchorSpec(min_level=5, max_level=3)


def test_anchors_for_image_matches_static_anchors_and_accepts_tensors():
    import tensorflow as tf

    from kdet.anchors import anchors_for_image

    spec = AnchorSpec()
    static = multilevel_anchors(spec, (100, 65))
    for size in [(100, 65), tf.constant([100, 65])]:
        for a, b in zip(anchors_for_image(spec, size), static.values()):
            np.testing.assert_allclose(a.numpy(), b.numpy())
