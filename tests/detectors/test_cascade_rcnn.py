"""Cascade R-CNN: config, stage resampling with stopped gradients, the stage ensemble, a tiny fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet import boxes as box_ops
from kdet.backbones import BackboneSpec
from kdet.detectors.cascade_rcnn import CascadeRCNN
from kdet.detectors.rpn import RegionProposalNetwork
from kdet.matching import trimmed_ground_truth
from kdet.rcnn_specs import CascadeSpec
from kdet.specs import PostProcessSpec, SamplingSpec, override, to_config

RPN = dict(backbone=BackboneSpec(name="tiny", freeze_batchnorm=False), fpn_filters=16, head_filters=16,
           sampling=dict(num_samples=64), loss_normalization="sampled", box_regression=dict(loss_weight=1.0),
           proposals=dict(pre_nms_top_k_train=200, max_proposals_train=64, pre_nms_top_k_test=200,
                          max_proposals_test=32))
TINY = dict(num_classes=3, rpn=RPN, roi_sampling=dict(num_samples=32), fc_dim=32, postprocess=dict(max_detections=10))


def _batch():
    images = np.zeros([2, 64, 64, 3], np.float32)
    images[0, 8:40, 8:40, 0] = 255
    images[1, 30:62, 20:52, 1] = 255
    images[1, 2:18, 40:60, 2] = 255
    y = {"boxes": tf.constant([[[8, 8, 40, 40], [0, 0, 0, 0]], [[30, 20, 62, 52], [2, 40, 18, 60]]], tf.float32),
         "classes": tf.constant([[0, -1], [1, 2]], tf.int32)}
    return tf.constant(images), y


def test_config_round_trip_and_validation():
    kwargs = dict(TINY, rpn=RegionProposalNetwork(**RPN),
                  roi_sampling=SamplingSpec(num_samples=32, positive_fraction=0.25),
                  postprocess=PostProcessSpec(pre_nms_top_k=None, max_detections=10),
                  stages=CascadeSpec(ious=(0.5, 0.6), box_weights=((10, 10, 5, 5), (20, 20, 10, 10)),
                                     loss_weights=(1.0, 0.5), ensemble=False, test_stages=1))
    model = CascadeRCNN(**kwargs)
    config = model.get_config()
    assert all(config[k] == to_config(v) for k, v in kwargs.items())
    assert CascadeRCNN.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="one entry per stage"):
        CascadeRCNN(**dict(TINY, stages=dict(ious=(0.5, 0.6))))
    with pytest.raises(ValueError, match="test_stages"):
        CascadeRCNN(**dict(TINY, stages=dict(test_stages=4)))


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
    model = CascadeRCNN(**dict(TINY, stages=dict(loss_weights=(0.0, 1.0, 1.0))))
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


def _fixed_rois(y, per_box=12, total=32, seed=0):
    """Jittered copies of every ground-truth box (IoU from ~0.95 down to ~0.4) plus random background boxes."""
    rng = np.random.default_rng(seed)
    rois = []
    for boxes, classes in zip(y["boxes"].numpy(), y["classes"].numpy()):
        image_rois = []
        for (y0, x0, y1, x1), c in zip(boxes, classes):
            if c < 0:
                continue
            for spread in np.linspace(0.02, 0.35, per_box):
                d = rng.uniform(-spread, spread, 4) * [y1 - y0, x1 - x0, y1 - y0, x1 - x0]
                image_rois.append([y0 + d[0], x0 + d[1], y1 + d[2], x1 + d[3]])
        while len(image_rois) < total:
            top, left = rng.uniform(0, 48, 2)
            size = rng.uniform(8, 24)
            image_rois.append([top, left, top + size, left + size])
        rois.append(image_rois[:total])
    return tf.constant(np.clip(np.asarray(rois, np.float32), 0, 64))


@pytest.fixture
def op_determinism():
    """Deterministic kernels for one test (CPU reductions otherwise vary in their last bits between runs,
    which 300 Adam steps and the samplers amplify into different outcomes)."""
    from tensorflow.python.framework import config

    config.enable_op_determinism()
    yield
    config.disable_op_determinism()


def test_fit_every_stage_loss_falls_and_predicts_the_contract(op_determinism):
    """A tiny fit: every logged term finite; each stage's losses on fixed RoIs fall; detect honours its options.

    The per-stage losses are measured on the same fixed RoIs before and after ``fit``. The logged
    epoch losses are not comparable: as stage 1 learns, more of stage 2's and 3's inputs pass their
    IoU, so those stages' box terms (over all RoIs) grow while the model improves. Batch-norm is
    frozen so that inference-mode features after fit match what was trained (a 2-image batch's
    statistics are not the moving averages after 300 steps).
    """
    images, y = _batch()
    keras.utils.set_random_seed(1)
    model = CascadeRCNN(**dict(TINY, rpn=dict(RPN, backbone=BackboneSpec(name="tiny", freeze_batchnorm=True))))
    rois = _fixed_rois(y)
    valid = tf.ones(rois.shape[:2], tf.bool)
    gt = trimmed_ground_truth(y)

    def stage_losses():
        features = model(images, training=False)["features"]
        return np.array([[float(v) for v in model.stage_loss(s, features, rois, gt, valid)[:2]] for s in range(3)])

    before = stage_losses()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(tf.data.Dataset.from_tensors((images, y)).repeat(100), epochs=3, verbose=0).history
    after = stage_losses()
    terms = ["rpn_cls_loss", "rpn_box_loss"] + [f"stage{s}_{t}_loss" for s in (1, 2, 3) for t in ("cls", "box")]
    assert set(terms) <= set(history)
    assert all(np.isfinite(history[k]).all() for k in history)
    assert history["rpn_cls_loss"][-1] < 0.5 * history["rpn_cls_loss"][0]
    ratios = after / before  # rows: stages; columns: cls, box. Seen over seeds: cls <= 0.2, box <= 0.4.
    assert (ratios < 0.6).all(), f"per-stage loss ratios after/before fit (cls, box):\n{ratios}"
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


def test_iterative_bbox_applies_the_one_head_three_times():
    """Iterative BBox: a one-stage model, its head re-applied to its own regressed boxes at inference."""
    model = CascadeRCNN(**dict(TINY, stages=dict(ious=(0.5,), box_weights=((10, 10, 5, 5),), loss_weights=(1.0,),
                                                 test_iterations=3)))
    assert len(model.heads) == 1
    images, _ = _batch()
    outputs = model(images)
    result = model.cascade_inference(images, outputs, stages=1, ensemble=True, iterations=3)
    assert len(result["stage_boxes"]) == 3
    for step in (1, 2):
        previous = model.run_stage(0, outputs["features"], result["stage_boxes"][step - 1])
        expected = box_ops.clip_boxes(previous["boxes"], (64, 64)).numpy()
        np.testing.assert_allclose(result["stage_boxes"][step].numpy(), expected, atol=1e-4)
    last = model.run_stage(0, outputs["features"], result["stage_boxes"][2])
    np.testing.assert_allclose(result["scores"].numpy(), tf.nn.softmax(last["class_logits"]).numpy(), atol=1e-6)
    np.testing.assert_allclose(result["boxes"].numpy(), box_ops.clip_boxes(last["boxes"], (64, 64)).numpy(),
                               atol=1e-4)
    # detect() uses test_iterations, and a plain Faster R-CNN can be tested iteratively without retraining.
    plain = CascadeRCNN.from_config(override(model.get_config(), {"stages": {"test_iterations": 1}}))
    plain.detect(images)  # builds the heads
    plain.set_weights(model.get_weights())
    a, b = model.detect(images), plain.detect(images, iterations=3)
    np.testing.assert_allclose(a["scores"].numpy(), b["scores"].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="test_iterations"):
        CascadeRCNN(**dict(TINY, stages=dict(test_iterations=0)))


def test_integral_loss_trains_one_classifier_per_iou_and_ensembles_them():
    kwargs = dict(TINY, stages=dict(ious=(0.5,), box_weights=((10, 10, 5, 5),), loss_weights=(1.0,),
                                    integral_ious=(0.5, 0.6, 0.7)))
    model = CascadeRCNN(**kwargs)
    assert model.heads[0].num_classifiers == 3 and len(model.heads) == 1
    images, y = _batch()
    outputs = model(images)
    # Labels: RoIs at IoU ~0.55, ~0.65, ~0.8 with the first image's box [8, 8, 40, 40].
    gt = trimmed_ground_truth(y)
    rois = tf.constant([[[8, 8, 40, 8 + 32 * 0.55], [8, 8, 40, 8 + 32 * 0.65],
                         [8, 8, 40, 8 + 32 * 0.8]], [[0, 0, 4, 4]] * 3], tf.float32)
    iou = box_ops.pairwise_iou(rois, gt.boxes, gt.objects).numpy()[0, :, 0]
    np.testing.assert_allclose(iou, [0.55, 0.65, 0.8], atol=1e-5)
    t = model.stage_targets(0, rois, gt, rois_valid=tf.ones([2, 3], tf.bool))
    expected = {0.5: [1, 1, 1], 0.6: [0, 1, 1], 0.7: [0, 0, 1]}
    for u, classes in zip((0.5, 0.6, 0.7), t["integral_classes"]):
        assert classes.numpy()[0].tolist() == expected[u], u
        assert classes.numpy()[1].tolist() == [0, 0, 0]
    # Loss: the three terms are logged, and the classification term is their sum.
    model.compute_loss(images, y, model(images, training=True))
    terms = [float(tr.result()) for tr in model.integral_trackers]
    assert [tr.name for tr in model.integral_trackers] == [f"stage1_cls_loss_u{u}" for u in (50, 60, 70)]
    assert np.isclose(sum(terms), float(model.stage_trackers[0][0].result()), rtol=1e-5)
    # Inference: the mean of the three classifiers' probabilities.
    result = model.cascade_inference(images, outputs, stages=1, ensemble=True)
    pooled = model.roi_align(outputs["features"], result["stage_boxes"][0])
    hidden = model.heads[0].hidden(pooled)
    mean = tf.add_n([tf.nn.softmax(c(hidden)) for c in model.heads[0].classifiers]) / 3
    np.testing.assert_allclose(result["scores"].numpy(), mean.numpy(), atol=1e-6)
    assert CascadeRCNN.from_config(model.get_config()).get_config() == model.get_config()
    with pytest.raises(ValueError, match="integral_ious"):
        CascadeRCNN(**dict(TINY, stages=dict(integral_ious=(0.5, 0.6))))


@pytest.mark.parametrize("num_stages", [1, 4])
def test_one_to_four_stages_train_and_detect(num_stages):
    """Table 4's models: 1-4 stages at IoU 0.5, 0.6, 0.7, 0.75; a fit step, one term pair per stage, the contract.

    One stage (Faster R-CNN) and four: the four-stage model detects through 1, 2, 3 and 4 of its stages (the
    three-stage model trains in the other tests)."""
    ious = (0.5, 0.6, 0.7, 0.75)[:num_stages]
    weights = ((10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15), (40, 40, 20, 20))[:num_stages]
    model = CascadeRCNN(**dict(TINY, stages=dict(ious=ious, box_weights=weights,
                                                 loss_weights=(1.0, 0.5, 0.25, 0.125)[:num_stages])))
    images, y = _batch()
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    logs = model.train_on_batch(images, y, return_dict=True)
    stage_terms = sorted(k for k in logs if k.startswith("stage"))
    assert stage_terms == sorted(f"stage{s}_{t}_loss" for s in range(1, num_stages + 1) for t in ("cls", "box"))
    assert all(np.isfinite(v) for v in logs.values())
    for stages in range(1, num_stages + 1):
        d = model.detect(images, stages=stages)
        assert d["boxes"].shape == (2, 10, 4)


def test_fewer_proposals_than_requested_and_images_smaller_than_the_largest_anchor():
    """32x32 images (largest anchor 512 px, P6 is 1x1): budgets far above what exists still train and detect."""
    rpn = dict(RPN, proposals=dict(pre_nms_top_k_train=2000, max_proposals_train=2000, pre_nms_top_k_test=1000,
                                   max_proposals_test=1000), sampling=dict(num_samples=256))
    model = CascadeRCNN(**dict(TINY, rpn=rpn, roi_sampling=dict(num_samples=512)))
    images = np.zeros([2, 32, 32, 3], np.float32)
    images[:, 4:20, 6:26] = 200.0
    y = {"boxes": tf.constant([[[4, 6, 20, 26]], [[4, 6, 20, 26]]], tf.float32),
         "classes": tf.constant([[1], [0]], tf.int32)}
    outputs = model(images, training=True)
    proposals = model.rpn.proposals(images, outputs["rpn"], training=True)
    num_anchors = sum(int(a.shape[0]) for a in model.rpn.anchors_per_level((32, 32)))
    assert int(tf.reduce_max(proposals["num_proposals"])) <= num_anchors < 2000
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    logs = model.train_on_batch(images, y, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()), logs
    d = model.detect(images)
    assert d["boxes"].shape == (2, 10, 4) and np.isfinite(d["scores"].numpy()).all()


@pytest.mark.parametrize("backbone", ["resnet50"])  # ResNet-101's levels: tests/test_backbones.py
def test_resnet_fpn_cascade_trains_a_step_and_detects(backbone):
    """The paper's backbone (random init here; a local ImageNet file loads through backbone_weights)."""
    model = CascadeRCNN(num_classes=3, rpn=dict(backbone=backbone, proposals=dict(
                            pre_nms_top_k_train=100, max_proposals_train=50, pre_nms_top_k_test=100,
                            max_proposals_test=20)),
                        roi_sampling=dict(num_samples=16), postprocess=dict(max_detections=5))
    images, y = _batch()
    model.compile(optimizer=keras.optimizers.SGD(1e-4))
    logs = model.train_on_batch(images, y, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()), logs
    assert model.heads[0].fc1.kernel.shape == (7 * 7 * 256, 1024)  # 2-fc (1024) heads on 7x7 RoIAlign of 256-d FPN
    d = model.predict_on_batch(images.numpy())
    assert d["boxes"].shape == (2, 5, 4)
