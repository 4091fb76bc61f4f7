"""ConRetinaNet (consistent optimization) and AP-loss RetinaNet: refined-anchor targets, stopped gradients,
reduction to the plain RetinaNet, two-step inference, and fits with every loss switch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet import boxes as box_ops
from kdet import losses
from kdet.detectors.retinanet import RetinaNet
from kdet.specs import APLossSpec, ConsistentOptimizationSpec, override, to_config
from tests.detectors.test_retinanet import TINY, _toy_batch

CON = dict(TINY, consistent=ConsistentOptimizationSpec(cls_terms=2, reg_terms=2))


def test_config_round_trip_and_validation():
    kwargs = dict(CON, classification_loss=APLossSpec(delta=0.5, rank_across_replicas=True),
                  consistent=ConsistentOptimizationSpec(cls_terms=2, reg_terms=2, thresholds=((0.45, 0.65),),
                                                        alpha=0.5, test_regressions=1))
    config = RetinaNet(**kwargs).get_config()
    assert all(config[k] == to_config(v) for k, v in kwargs.items())
    assert RetinaNet.from_config(config).get_config() == config
    for bad, match in [(dict(classification_loss="hinge"), "classification_loss"),
                       (dict(cls_terms=3, reg_terms=1), "ConsistentOptimizationSpec.cls_terms"),
                       (dict(reg_terms=0), "ConsistentOptimizationSpec.reg_terms"),
                       (dict(cls_terms=3, reg_terms=2, thresholds=((0.5, 0.6),)),
                        "ConsistentOptimizationSpec.thresholds"),
                       (dict(reg_terms=2, test_regressions=3), "ConsistentOptimizationSpec.test_regressions")]:
        arguments = bad if "classification_loss" in bad else dict(consistent=bad)
        with pytest.raises(ValueError, match=match):
            RetinaNet(**dict(TINY, **arguments))


def test_refined_anchor_labels_hand_built():
    """Two anchors; the predicted codes move them; the refined boxes are matched at 0.5 / 0.6."""
    model = RetinaNet(**dict(CON, box_regression=dict(weights=(1.0, 1.0, 1.0, 1.0))))
    anchors = tf.constant([[0, 0, 16, 16], [0, 16, 16, 32]], tf.float32)
    y = {"boxes": tf.constant([[[0, 8, 16, 24]]], tf.float32), "classes": tf.constant([[1]], tf.int32)}
    # Anchor 0 (IoU 1/3 with the gt: negative, < 0.4) shifted right by 0.5 of its width lands on the gt
    # (refined IoU 1: positive at 0.6). Anchor 1 (IoU 1/3) shifted right by 0.25 -> [0,20,16,36],
    # refined IoU 4/28 = 0.14: negative (< 0.5).
    codes = tf.constant([[[0.0, 0.5, 0.0, 0.0], [0.0, 0.25, 0.0, 0.0]]])
    outputs = {"box_codes": codes, "box_codes_2": tf.zeros_like(codes)}
    terms = model.consistent_targets(anchors, outputs, y)
    np.testing.assert_array_equal(terms[0]["labels"].numpy(), [[0, 0]])
    np.testing.assert_allclose(terms[1]["boxes"].numpy(), [[[0, 8, 16, 24], [0, 20, 16, 36]]], atol=1e-5)
    np.testing.assert_array_equal(terms[1]["labels"].numpy(), [[1, 0]])
    np.testing.assert_array_equal(terms[1]["class_targets"].numpy()[0, 0], [0, 1, 0])
    # Anchor 0 shifted by 0.7 -> [0, 11.2, 16, 27.2], IoU 12.8 / 19.2; anchor 1 by 0.8 -> no overlap.
    outputs["box_codes"] = tf.constant([[[0.0, 0.7, 0.0, 0.0], [0.0, 0.8, 0.0, 0.0]]])
    terms = model.consistent_targets(anchors, outputs, y)
    iou = box_ops.pairwise_iou(terms[1]["boxes"], y["boxes"]).numpy()[0, :, 0]
    np.testing.assert_allclose(iou, [12.8 / 19.2, 0.0], atol=1e-5)
    np.testing.assert_array_equal(terms[1]["labels"].numpy(), [[1, 0]])  # 0.667 >= 0.6
    model_strict = RetinaNet(**dict(CON, consistent=dict(cls_terms=2, reg_terms=2, thresholds=((0.5, 0.7),))))
    terms = model_strict.consistent_targets(anchors, outputs, y)
    np.testing.assert_array_equal(terms[1]["labels"].numpy(), [[-1, 0]])  # 0.5 <= 0.667 < 0.7: ignored


def test_no_gradient_flows_through_the_refined_boxes():
    """#cls = 2, #reg = 1: the box codes get exactly the plain RetinaNet's box gradient, nothing from term 2."""
    images, y = _toy_batch()
    consistent = RetinaNet(**dict(TINY, consistent=dict(cls_terms=2)))
    plain = RetinaNet(**TINY)
    outputs = {k: tf.Variable(v) for k, v in consistent(images).items()}
    grads = []
    for model in (consistent, plain):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(images, y, {k: tf.identity(v) for k, v in outputs.items()})
        grads.append(tape.gradient(loss, outputs["box_codes"]))
    np.testing.assert_allclose(grads[0].numpy(), grads[1].numpy(), atol=1e-7)
    with tf.GradientTape() as tape:
        tape.watch(outputs["box_codes"])
        refined = consistent.consistent_targets(
            tf.concat(consistent.anchors_per_level((64, 64)), 0), dict(outputs), y)[1]["boxes"]
    assert tape.gradient(refined, outputs["box_codes"]) is None


def test_one_term_each_is_exactly_the_plain_retinanet():
    images, y = _toy_batch()
    model = RetinaNet(**dict(TINY, consistent=dict(cls_terms=1, reg_terms=1)))
    outputs = model(images)
    assert set(outputs) == {"class_logits", "box_codes"}
    anchors = tf.concat(model.anchors_per_level((64, 64)), 0)
    t = model.assign_targets(anchors, y)
    positive = tf.cast(t["labels"] == 1, tf.float32)
    n = tf.maximum(tf.reduce_sum(positive), 1.0)
    expected = (losses.sigmoid_focal(t["class_targets"], outputs["class_logits"], tf.cast(t["labels"] >= 0, tf.float32))
                + losses.smooth_l1(t["box_targets"], outputs["box_codes"], positive, beta=0.1)) / n
    np.testing.assert_allclose(float(model.compute_loss(images, y, outputs)), float(expected), rtol=1e-6)


def test_two_regressions_at_inference_and_the_2_star_variant():
    """Inference decodes regression 2 on regression 1's boxes; test_regressions=1 equals a plain RetinaNet."""
    images, _ = _toy_batch()
    model = RetinaNet(**dict(CON, postprocess=dict(score_threshold=0.0, max_detections=5)))
    outputs = model(images)
    codes2 = outputs["box_codes_2"]
    assert codes2.shape == outputs["box_codes"].shape
    det = model.detect(images)
    # Manual: the top-scoring (anchor, class) pair of image 0 decoded twice.
    logits = outputs["class_logits"][0]
    best = int(tf.argmax(tf.reshape(logits, [-1]))) // model.num_classes
    anchors = tf.concat(model.anchors_per_level((64, 64)), 0)
    once = model.box_coder.decode(outputs["box_codes"][0, best], anchors[best])
    twice = box_ops.clip_boxes(model.box_coder.decode(codes2[0, best], once), (64, 64))
    np.testing.assert_allclose(det["boxes"][0, 0].numpy(), twice.numpy(), atol=1e-3)
    # "2*": the same weights regress once; that is exactly a plain RetinaNet with the shared weights.
    star = RetinaNet.from_config(override(model.get_config(), {"consistent": {"test_regressions": 1}}))
    star(images)
    star.set_weights(model.get_weights())
    plain = RetinaNet(**dict(TINY, postprocess=dict(score_threshold=0.0, max_detections=5)))
    plain(images)
    def key(model, w):
        return w.path.removeprefix(model.name + "/")

    shared = {key(star, w): w for w in star.weights}
    for w in plain.weights:
        w.assign(shared[key(plain, w)])
    assert len(star.weights) == len(plain.weights) + 2  # only box_codes_2's kernel and bias are extra
    a, b, c = star.detect(images), plain.detect(images), model.detect(images, regressions=1)
    for key in ("boxes", "scores", "classes"):
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-5)
        np.testing.assert_allclose(c[key].numpy(), b[key].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="regressions"):
        model.detect(images, regressions=3)


@pytest.mark.parametrize("variant", [
    dict(classification_loss="ap"),
    dict(classification_loss="auc"),
    dict(consistent=dict(cls_terms=3, reg_terms=2)),  # focal on 3 + 2 terms (2 + 2: with AP below)
    dict(classification_loss="ap", consistent=dict(cls_terms=2, reg_terms=2)),
])
def test_every_loss_switch_trains_with_fit(variant):
    images, y = _toy_batch()
    keras.utils.set_random_seed(0)
    model = RetinaNet(**dict(TINY, backbone=dict(name="tiny", freeze_batchnorm=True), **variant))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(tf.data.Dataset.from_tensors((images, y)).repeat(30), epochs=2, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values()), history
    consistent = variant.get("consistent", {})
    terms = max(consistent.get("cls_terms", 1), consistent.get("reg_terms", 1))
    # The refined terms' targets move as the regression learns (more refined anchors become positive, so
    # their focal sums grow); the original anchors' term has fixed targets and must fall.
    key = "cls_loss_term1" if terms > 1 else "cls_loss"
    assert history[key][-1] < history[key][0], history
    if terms > 1:
        assert {f"cls_loss_term{j}" for j in range(1, consistent["cls_terms"] + 1)} <= set(history)
        assert {"box_loss_term1", "box_loss_term2"} <= set(history)
    out = model.predict_on_batch(images.numpy())
    assert out["boxes"].shape == (2, 100, 4)
