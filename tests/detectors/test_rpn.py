"""Faster R-CNN's RPN: the excerpt's labelling rules, sampling, Eq. 1 normalisation, proposals, the model."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet import rpn
from kdet.backbones import BackboneSpec
from kdet.boxes import BoxCoder
from kdet.detectors.rpn import RegionProposalNetwork
from kdet.matching import Matcher
from kdet.rcnn_specs import ProposalSpec
from kdet.specs import BoxRegressionSpec, MatcherSpec, SamplingSpec, to_config

EXCERPT_RULE = Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)


def _targets(boxes, classes):
    return {"boxes": tf.constant(boxes, tf.float32), "classes": tf.constant(classes, tf.int32)}


def test_rpn_labels_follow_each_rule_of_the_excerpt():
    anchors = tf.constant(
        [
            [0, 0, 10, 10],  # IoU 0.81 with gt A (> 0.7): positive by the first rule
            [0, 0, 10, 5],  # IoU 45/86 = 0.52 with A: neither -> ignored
            [50, 50, 60, 60],  # IoU 0 with everything: negative
            [100, 100, 120, 110],  # gt B's best anchor (IoU 200/400 = 0.5 < 0.7): positive by the second rule
            [100, 100, 112, 112],  # IoU 144/400 = 0.36 with B: ignored
            [30, 0, 40, 3],  # IoU 0 -> negative
        ],
        tf.float32,
    )
    targets = _targets([[[0, 0, 9, 9], [100, 100, 120, 120], [0, 0, 0, 0]]], [[0, 0, -1]])
    t = rpn.rpn_targets(anchors, targets, matcher=EXCERPT_RULE, box_coder=BoxCoder(), num_samples=16)
    np.testing.assert_array_equal(t["labels"].numpy(), [[1, -1, 0, 1, -1, 0]])
    assert t["num_sampled"].numpy().tolist() == [4]
    # Eq. 2 targets of anchor 3 towards B: anchor centre (110, 105), 20x10; B centre (110, 110), 20x20.
    np.testing.assert_allclose(t["box_targets"].numpy()[0, 3], [0.0, 5 / 10, 0.0, math.log(2.0)], atol=1e-5)


def test_rpn_samples_256_at_up_to_one_to_one():
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 400, size=(4000, 2))
    anchors = tf.constant(np.concatenate([centres - 16, centres + 16], -1), tf.float32)
    gt = np.concatenate([centres[:300] - 15, centres[:300] + 17], -1)[None]  # many positives (IoU ~0.88)
    t = rpn.rpn_targets(anchors, _targets(gt, np.zeros([1, 300])), matcher=EXCERPT_RULE, box_coder=BoxCoder())
    labels = t["labels"].numpy()[0]
    assert (labels == 1).sum() == 128 and (labels == 0).sum() == 128
    few = rpn.rpn_targets(anchors, _targets(gt[:, :10], np.zeros([1, 10])), matcher=EXCERPT_RULE, box_coder=BoxCoder())
    labels = few["labels"].numpy()[0]
    assert (labels == 1).sum() < 128 and (labels >= 0).sum() == 256  # padded with negatives


def test_eq1_normalisation_paper_and_sampled():
    labels = tf.constant([[1, 0, 0, -1], [0, -1, -1, -1]])
    targets = {"labels": labels, "box_targets": tf.ones([2, 4, 4])}
    logits = tf.zeros([2, 4])
    codes = tf.zeros([2, 4, 4])
    cls, box = rpn.rpn_losses(logits, codes, targets, normalization="paper", num_samples=256, num_locations=100)
    # 4 sampled anchors at p = 0.5 -> 4 log 2 over N_cls = 2 * 256; one positive, smooth-L1(1) = 0.5 per
    # coordinate -> 2.0, times lambda 10 over N_reg = 2 * 100.
    np.testing.assert_allclose(cls.numpy(), 4 * math.log(2) / 512, rtol=1e-6)
    np.testing.assert_allclose(box.numpy(), 10 * 2.0 / 200, rtol=1e-6)
    cls, box = rpn.rpn_losses(logits, codes, targets, normalization="sampled", reg_weight=1.0)
    np.testing.assert_allclose([cls.numpy(), box.numpy()], [math.log(2), 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match="normalization"):
        rpn.rpn_losses(logits, codes, targets, normalization="per-anchor")


def test_proposals_nms_within_levels_top_k_and_no_gradient():
    anchors = [tf.constant([[0, 0, 10, 10], [0, 0, 10, 11], [40, 40, 50, 50]], tf.float32),
               tf.constant([[0, 0, 10, 10]], tf.float32)]
    logits = [tf.Variable([[3.0, 2.0, 1.0]]), tf.Variable([[0.5]])]
    codes = [tf.zeros([1, 3, 4]), tf.zeros([1, 1, 4])]
    with tf.GradientTape() as tape:
        out = rpn.generate_proposals(logits, codes, anchors, box_coder=BoxCoder(), image_shape=(64, 64),
                                     pre_nms_top_k=2, max_proposals=5)
        total = tf.reduce_sum(out["boxes"]) + tf.reduce_sum(out["scores"])
    assert all(g is None for g in tape.gradient(total, logits))
    # Level 0: top-2 are anchors 0 and 1 (IoU 0.91 -> anchor 1 suppressed); anchor 2 is not in the top-2.
    # Level 1: its box duplicates anchor 0 exactly but lives on another level, so it is kept.
    assert out["num_proposals"].numpy().tolist() == [2]
    np.testing.assert_allclose(out["scores"].numpy()[0, :2], tf.sigmoid([3.0, 0.5]).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(out["levels"].numpy()[0, :3], [0, 1, -1])


TINY = dict(backbone=BackboneSpec(name="tiny", freeze_batchnorm=False), fpn_filters=16, head_filters=16,
            sampling=dict(num_samples=64), proposals=dict(max_proposals_train=50, max_proposals_test=20,
                                                         pre_nms_top_k_test=100))


def test_rpn_model_config_round_trip():
    kwargs = dict(TINY, sampling=SamplingSpec(num_samples=64),
                  matcher=MatcherSpec(thresholds=(0.3, 0.7), allow_low_quality_matches=True),
                  loss_normalization="sampled", box_regression=BoxRegressionSpec(loss_weight=1.0),
                  proposals=ProposalSpec(max_proposals_train=50, max_proposals_test=20, pre_nms_top_k_test=100))
    model = RegionProposalNetwork(**kwargs)
    config = model.get_config()
    assert all(config[k] == to_config(v) for k, v in kwargs.items())
    assert RegionProposalNetwork.from_config(config).get_config() == config


def test_rpn_model_fits_and_proposes():
    images = np.zeros([2, 64, 64, 3], np.float32)
    images[0, 8:40, 8:40] = 255
    images[1, 30:62, 20:52, 1] = 255
    y = _targets([[[8, 8, 40, 40], [0, 0, 0, 0]], [[30, 20, 62, 52], [0, 0, 0, 0]]], [[0, -1], [0, -1]])
    model = RegionProposalNetwork(**dict(TINY, loss_normalization="sampled", box_regression=dict(loss_weight=1.0)))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(tf.data.Dataset.from_tensors((images, y)).repeat(25), epochs=3, verbose=0).history
    for term in ("rpn_cls_loss", "rpn_box_loss"):
        assert history[term][-1] < 0.6 * history[term][0], (term, history[term])
    out = model.predict_on_batch(images)
    assert out["boxes"].shape == (2, 20, 4) and set(np.unique(out["classes"])) <= {0, -1}
    from kdet.boxes import pairwise_iou

    best = pairwise_iou(out["boxes"][0], y["boxes"][0, :1]).numpy().max()
    assert best > 0.5  # some proposal covers the object


def test_rpn_model_empty_ground_truth_and_tiny_image():
    model = RegionProposalNetwork(**TINY)
    images = tf.random.uniform([2, 64, 64, 3], 0, 255)  # smaller than the 512 px anchors of P6
    y = _targets(np.zeros([2, 3, 4]), -np.ones([2, 3]))
    loss = model.compute_loss(images, y, model(images, training=True))
    assert np.isfinite(loss.numpy()) and model.box_loss_tracker.result().numpy() == 0
    out = model.predict_on_batch(images.numpy())
    assert out["num_detections"].shape == (2,) and np.all(out["num_detections"] <= 20)
