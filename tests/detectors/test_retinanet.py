"""RetinaNet: config round trip, in-graph targets, losses, fit, predict contract, bad pixels."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.anchors import AnchorSpec
from kdet.backbones import BackboneSpec
from kdet.detectors.retinanet import RetinaNet
from kdet.specs import MatcherSpec, PostProcessSpec, RetinaNetHeadSpec, to_config

TINY = dict(num_classes=3, backbone=BackboneSpec(name="tiny", freeze_batchnorm=False), fpn_filters=16,
            head=RetinaNetHeadSpec(num_convs=1, filters=16))


def _targets(boxes, classes):
    return {"boxes": tf.constant(boxes, tf.float32), "classes": tf.constant(classes, tf.int32)}


def _toy_batch():
    """Two 64x64 images with bright squares whose class is their colour channel."""
    images = np.zeros([2, 64, 64, 3], np.float32)
    images[0, 8:40, 8:40, 0] = 255
    images[1, 20:52, 4:36, 1] = 255
    images[1, 2:18, 40:60, 2] = 255
    y = _targets(
        [[[8, 8, 40, 40], [0, 0, 0, 0]], [[20, 4, 52, 36], [2, 40, 18, 60]]],
        [[0, -1], [1, 2]],
    )
    return tf.constant(images), y


def test_config_round_trip_against_kwargs():
    kwargs = dict(TINY, anchors=AnchorSpec(aspect_ratios=(0.5, 1.0, 2.0)), matcher=MatcherSpec(thresholds=(0.3, 0.6)),
                  postprocess=PostProcessSpec(max_detections=7))
    model = RetinaNet(**kwargs)
    config = model.get_config()
    for key, value in kwargs.items():
        assert config[key] == to_config(value)
    clone = RetinaNet.from_config(config)
    assert clone.get_config() == config
    images, _ = _toy_batch()
    assert model(images)["class_logits"].shape == clone(images)["class_logits"].shape


def test_assign_targets_hand_built():
    model = RetinaNet(**TINY)  # assign_targets works on whatever anchors it is given
    anchors = tf.constant([[0, 0, 16, 16], [0, 16, 16, 32], [16, 0, 32, 16], [16, 16, 32, 32]], tf.float32)
    y = _targets([[[0, 0, 16, 16], [16, 10, 32, 26], [0, 0, 0, 0]]], [[2, 1, -1]])
    y["is_crowd"] = tf.constant([[False, True, False]])
    t = model.assign_targets(anchors, y)
    # Anchor 0 matches gt 0 (IoU 1). The crowd box [16,10,32,26] never makes a positive; its IoU with
    # anchor 2 is 96/416 = 0.23 and with anchor 3 is 160/352 = 0.45 >= 0.4 -> anchor 3 is ignored.
    np.testing.assert_array_equal(t["labels"].numpy(), [[1, 0, 0, -1]])
    np.testing.assert_array_equal(t["class_targets"].numpy()[0, 0], [0, 0, 1])
    np.testing.assert_allclose(t["box_targets"].numpy()[0, 0], 0, atol=1e-5)
    # The same box as an ordinary object is a positive for anchor 3 at IoU >= 0.5? 0.45: ignored too;
    # moved to [16,16,32,30] (IoU 224/256 = 0.875) it is positive with class 1.
    y["boxes"] = tf.constant([[[0, 0, 16, 16], [16, 16, 32, 30], [0, 0, 0, 0]]], tf.float32)
    y["is_crowd"] = tf.constant([[False, False, False]])
    t = model.assign_targets(anchors, y)
    np.testing.assert_array_equal(t["labels"].numpy(), [[1, 0, 0, 1]])
    np.testing.assert_array_equal(t["class_targets"].numpy()[0, 3], [0, 1, 0])


def test_empty_ground_truth_gives_zero_box_loss():
    model = RetinaNet(**TINY)
    images, _ = _toy_batch()
    y = _targets(np.zeros([2, 3, 4]), -np.ones([2, 3]))
    loss = model.compute_loss(images, y, model(images, training=True))
    assert np.isfinite(loss.numpy()) and loss.numpy() > 0
    assert model.box_loss_tracker.result().numpy() == 0.0
    assert model.cls_loss_tracker.result().numpy() > 0.0


def test_fit_reduces_every_loss_term_and_predict_contract():
    images, y = _toy_batch()
    model = RetinaNet(**dict(TINY, matcher=dict(allow_low_quality_matches=True)))
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    ds = tf.data.Dataset.from_tensors((images, y)).repeat(30)
    history = model.fit(ds, epochs=3, verbose=0).history
    for term in ("loss", "cls_loss", "box_loss"):
        assert history[term][-1] < 0.5 * history[term][0], (term, history[term])
    evaluated = model.evaluate(images, y, verbose=0, return_dict=True)
    assert {"loss", "cls_loss", "box_loss"} <= set(evaluated)
    out = model.predict(images, verbose=0)
    assert out["boxes"].shape == (2, 100, 4) and out["scores"].shape == (2, 100)
    assert out["classes"].dtype == np.int32 and out["num_detections"].shape == (2,)
    # The memorised object comes back as the top detection, with its class, in place, and a score far
    # above the 0.01 prior (focal loss keeps scores modest after ~100 steps).
    assert out["classes"][0, 0] == 0 and out["scores"][0, 0] > 0.1
    from kdet.boxes import pairwise_iou
    assert pairwise_iou(out["boxes"][0, :1], y["boxes"][0, :1]).numpy()[0, 0] > 0.5
    n = out["num_detections"]
    assert np.all(out["classes"][0, n[0]:] == -1) and np.all(out["scores"][1, n[1]:] == 0)


def test_nan_and_inf_pixels_give_zero_detections():
    model = RetinaNet(**dict(TINY, postprocess=dict(score_threshold=0.0)))
    images, _ = _toy_batch()
    bad = images.numpy()
    bad[0, 5, 5, 1] = np.nan
    bad[1, :, :, :] = np.inf
    out = model.predict_on_batch(bad)
    assert out["num_detections"].tolist() == [0, 0]
    assert np.all(np.isfinite(out["boxes"])) and np.all(out["scores"] == 0)
    ok = model.predict_on_batch(images.numpy())
    assert np.all(ok["num_detections"] > 0)  # score_threshold 0: the clean images do produce boxes


def test_image_smaller_than_largest_anchor_and_non_square():
    model = RetinaNet(**TINY)
    out = model.predict_on_batch(np.full([1, 128, 256, 3], 100, np.float32))
    assert out["boxes"].shape == (1, 100, 4)
    assert np.all(out["boxes"][..., 2] <= 128) and np.all(out["boxes"][..., 3] <= 256)


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        RetinaNet(**dict(TINY, num_classes=0))
