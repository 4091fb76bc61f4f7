"""Cascade R-CNN: config, stage resampling with stopped gradients, the stage ensemble, a tiny fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet import boxes as box_ops
from kdet.detectors.cascade_rcnn import CascadeRCNN

RPN = dict(backbone="tiny", freeze_batchnorm=False, fpn_filters=16, head_filters=16, num_samples=64,
           loss_normalization="sampled", reg_weight=1.0, pre_nms_top_k_train=200, max_proposals_train=64,
           pre_nms_top_k_test=200, max_proposals_test=32)
TINY = dict(num_classes=3, rpn=RPN, num_rois=32, fc_dim=32, max_detections=10)


def _batch():
    images = np.zeros([2, 64, 64, 3], np.float32)
    images[0, 8:40, 8:40, 0] = 255
    images[1, 30:62, 20:52, 1] = 255
    images[1, 2:18, 40:60, 2] = 255
    y = {"boxes": tf.constant([[[8, 8, 40, 40], [0, 0, 0, 0]], [[30, 20, 62, 52], [2, 40, 18, 60]]], tf.float32),
         "classes": tf.constant([[0, -1], [1, 2]], tf.int32)}
    return tf.constant(images), y


def test_config_round_trip_and_validation():
    kwargs = dict(TINY, stage_ious=(0.5, 0.6), stage_box_weights=((10, 10, 5, 5), (20, 20, 10, 10)),
                  stage_loss_weights=(1.0, 0.5), ensemble=False, test_stages=1)
    model = CascadeRCNN(**kwargs)
    config = model.get_config()
    assert all(config[k] == v for k, v in kwargs.items())
    assert CascadeRCNN.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="one entry per stage"):
        CascadeRCNN(**dict(TINY, stage_ious=(0.5, 0.6)))
    with pytest.raises(ValueError, match="test_stages"):
        CascadeRCNN(**dict(TINY, test_stages=4))


def test_stage_inputs_are_previous_stage_outputs():
    model = CascadeRCNN(**TINY)
    images, _ = _batch()
    outputs = model(images)
    result = model.cascade_inference(images, outputs, stages=3, ensemble=False)
    for stage in (1, 2):
        previous = model.run_stage(stage - 1, outputs["features"], result["stage_boxes"][stage - 1])
        expected = box_ops.clip_boxes(previous["boxes"], (64, 64))
        np.testing.assert_allclose(result["stage_boxes"][stage].numpy(), expected.numpy(), atol=1e-4)


def test_later_stage_losses_do_not_reach_earlier_regressors():
    """Stage 1 loss weight 0: the stage-1 regressor gets no gradient, because stage 2's RoIs are constants."""
    model = CascadeRCNN(**dict(TINY, stage_loss_weights=(0.0, 1.0, 1.0)))
    images, y = _batch()
    with tf.GradientTape() as tape:
        loss = model.compute_loss(images, y, model(images, training=True))
    stage1 = model.heads[0].regressor.kernel
    stage2 = model.heads[1].regressor.kernel
    g1, g2 = tape.gradient(loss, [stage1, stage2])
    assert g1 is None or float(tf.reduce_max(tf.abs(g1))) == 0.0
    assert g2 is not None and float(tf.reduce_max(tf.abs(g2))) > 0.0


def test_ensemble_is_mean_of_stage_probabilities_on_last_stage_rois():
    model = CascadeRCNN(**TINY)
    images, _ = _batch()
    outputs = model(images)
    result = model.cascade_inference(images, outputs, stages=3, ensemble=True)
    pooled = model.roi_align(outputs["features"], result["stage_boxes"][2])
    probs = [tf.nn.softmax(model.heads[s](pooled)["class_logits"]) for s in range(3)]
    np.testing.assert_allclose(result["scores"].numpy(), (tf.add_n(probs) / 3).numpy(), atol=1e-6)
    single = model.cascade_inference(images, outputs, stages=3, ensemble=False)
    np.testing.assert_allclose(single["scores"].numpy(), probs[2].numpy(), atol=1e-6)


def test_fit_logs_every_stage_and_predicts_the_contract():
    """fit runs end to end with every term logged and finite; the RPN learns; detect honours its options.

    Open for the Cascade R-CNN issue: "every stage's loss falls" in a tiny fit. On this CPU the same
    seed gave stage-classifier loss ratios (after/before, fixed RoIs, 120 steps) from 0.17 to 0.99 over
    three runs (oneDNN reduction order), so that check is not asserted here yet.
    """
    images, y = _batch()
    model = CascadeRCNN(**TINY)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(tf.data.Dataset.from_tensors((images, y)).repeat(20), epochs=3, verbose=0).history
    terms = ["rpn_cls_loss", "rpn_box_loss"] + [f"stage{s}_{t}_loss" for s in (1, 2, 3) for t in ("cls", "box")]
    assert set(terms) <= set(history)
    assert all(np.isfinite(history[k]).all() for k in history)
    assert history["rpn_cls_loss"][-1] < 0.5 * history["rpn_cls_loss"][0]
    out = model.predict_on_batch(images.numpy())
    assert out["boxes"].shape == (2, 10, 4) and out["classes"].shape == (2, 10)
    for stages, ensemble in [(1, False), (2, True), (3, False)]:
        d = model.detect(images, stages=stages, ensemble=ensemble)
        assert d["scores"].shape == (2, 10)


def test_images_without_ground_truth_train_without_nans():
    model = CascadeRCNN(**TINY)
    images, _ = _batch()
    y = {"boxes": tf.zeros([2, 2, 4]), "classes": -tf.ones([2, 2], tf.int32)}
    loss = model.compute_loss(images, y, model(images, training=True))
    assert np.isfinite(loss.numpy())
    assert model.stage_trackers[0][1].result().numpy() == 0.0  # no foreground: zero box loss
