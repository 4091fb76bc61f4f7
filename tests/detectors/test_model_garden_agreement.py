"""kdet's primitives agree with TF Model Garden's official.vision.ops on random inputs (to 1e-5)."""

import numpy as np
import pytest
import tensorflow as tf

from kdet import anchors as anchor_ops
from kdet import boxes as box_ops
from kdet import losses

box_mg = pytest.importorskip("official.vision.ops.box_ops")
anchor_mg = pytest.importorskip("official.vision.ops.anchor")
focal_mg = pytest.importorskip("official.vision.losses.focal_loss")


def _random_boxes(rng, shape, max_coord=600.0, min_size=1.0):
    yx = rng.uniform(0, max_coord, size=shape + (2,))
    hw = rng.uniform(min_size, max_coord / 2, size=shape + (2,))
    return np.concatenate([yx, yx + hw], -1).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_matches_bbox_overlap(seed):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, (3, 200))
    gt = _random_boxes(rng, (3, 20))
    # Model Garden marks padded ground truth with negative coordinates.
    valid = rng.uniform(size=(3, 20)) > 0.2
    gt_mg = np.where(valid[..., None], gt, -1.0).astype(np.float32)
    ours = box_ops.pairwise_iou(tf.constant(boxes), tf.constant(gt), tf.constant(valid)).numpy()
    theirs = box_mg.bbox_overlap(tf.constant(boxes), tf.constant(gt_mg)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("weights", [None, (10.0, 10.0, 5.0, 5.0), (30.0, 30.0, 15.0, 15.0)])
def test_coder_matches_encode_decode_boxes(weights):
    rng = np.random.default_rng(7)
    boxes = tf.constant(_random_boxes(rng, (4, 300)))
    anchors = tf.constant(_random_boxes(rng, (4, 300), min_size=8.0))
    coder = box_ops.BoxCoder(weights or (1.0, 1.0, 1.0, 1.0))
    ours = coder.encode(boxes, anchors).numpy()
    theirs = box_mg.encode_boxes(boxes, anchors, weights=weights).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    codes = tf.constant(rng.normal(size=(4, 300, 4)).astype(np.float32))
    ours = coder.decode(codes, anchors).numpy()
    theirs = box_mg.decode_boxes(codes, anchors, weights=weights).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3)  # pixels up to ~1e4: 1e-5 relative


@pytest.mark.parametrize(
    "spec,image_size",
    [
        (dict(min_level=3, max_level=7, num_scales=3, aspect_ratios=(0.5, 1.0, 2.0), anchor_size=4.0), (512, 512)),
        (dict(min_level=2, max_level=6, num_scales=1, aspect_ratios=(0.5, 1.0, 2.0), anchor_size=8.0), (256, 384)),
    ],
)
def test_anchors_match_model_garden(spec, image_size):
    ours = anchor_ops.multilevel_anchors(anchor_ops.AnchorSpec(**spec), image_size)
    theirs = anchor_mg.Anchor(image_size=list(image_size), **spec).multilevel_boxes
    for level, boxes in ours.items():
        np.testing.assert_allclose(boxes.numpy(), tf.reshape(theirs[str(level)], [-1, 4]).numpy(), atol=1e-4)


def test_focal_loss_matches_model_garden():
    rng = np.random.default_rng(3)
    logits = tf.constant(rng.normal(scale=3, size=(2, 500, 6)).astype(np.float32))
    targets = tf.constant((rng.uniform(size=(2, 500, 6)) > 0.9).astype(np.float32))
    weights = tf.constant((rng.uniform(size=(2, 500)) > 0.1).astype(np.float32))
    ours = losses.sigmoid_focal(targets, logits, weights, alpha=0.25, gamma=2.0).numpy()
    mg = focal_mg.FocalLoss(alpha=0.25, gamma=2.0, reduction=tf.keras.losses.Reduction.SUM)
    theirs = mg(targets, logits, sample_weight=weights[..., None]).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
