"""The RPN + Fast R-CNN face detector and the face training procedures (joint and separate)."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.face import procedures
from kdet.face import mining
from kdet.detectors.cascade_rcnn import CascadeRCNN, given_proposals
from kdet.face.rcnn import face_rcnn, face_rcnn_config

SIZE = 64


def _faces(n, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 120, (n, SIZE, SIZE, 3)).astype(np.float32)
    boxes = np.zeros((n, 2, 4), np.float32)
    classes = -np.ones((n, 2), np.int32)
    for i in range(n):
        side = rng.integers(16, 30)
        y, x = rng.integers(0, SIZE - side, 2)
        images[i, y:y + side, x:x + side] = 220.0
        boxes[i, 0] = [y, x, y + side, x + side]
        classes[i, 0] = 0
    return images, {"boxes": boxes, "classes": classes}


def _small_config(**overrides):
    return face_rcnn_config(rpn=dict(proposals=dict(max_proposals_train=40, max_proposals_test=20,
                                                    pre_nms_top_k_train=200, pre_nms_top_k_test=100)),
                            roi_sampling=dict(num_samples=16), fc_dim=32, **overrides)


def test_face_rcnn_defaults_are_a_one_stage_square_anchor_detector():
    model = face_rcnn()
    config = model.get_config()
    assert config["num_classes"] == 1 and config["stages"]["ious"] == (0.5,)
    assert config["rpn"]["anchors"]["aspect_ratios"] == (1.0,) and config["rpn"]["backbone"]["weights"] is None
    assert model.rpn.anchor_spec.anchors_per_location == 1
    assert model.input_stride == model.rpn.input_stride == 64  # P2-P6: kdet evaluate takes 256x320 inputs
    assert CascadeRCNN.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="training_proposals"):
        face_rcnn(training_proposals="oracle")


def test_given_proposals_feed_stage_one():
    images, targets = _faces(2)
    given = np.zeros((2, 5, 4), np.float32)
    given[:, :3] = [[0, 0, 20, 20], [10, 10, 40, 40], [30, 30, 60, 60]]
    proposals = given_proposals({"proposals": given})
    np.testing.assert_array_equal(proposals["levels"].numpy(), [[0, 0, 0, -1, -1]] * 2)
    model = face_rcnn(**_small_config(training_proposals="targets"))
    from kdet.matching import trimmed_ground_truth
    rois, valid = model.sample_rois(proposals, trimmed_ground_truth(targets))
    allowed = np.concatenate([given, targets["boxes"]], axis=1)
    for b in range(2):
        for roi in rois.numpy()[b][valid.numpy()[b]]:
            assert np.isclose(allowed[b], roi).all(axis=1).any(), roi
    model.compile(optimizer="sgd")
    logs = model.train_on_batch(images, {**targets, "proposals": given}, return_dict=True)
    assert np.isfinite(logs["stage1_cls_loss"]) and np.isfinite(logs["rpn_cls_loss"]), logs
    fresh = face_rcnn(**_small_config(training_proposals="targets"))
    fresh.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="y\\['proposals'\\]"):
        fresh.train_on_batch(images, targets)


def test_rpn_loss_weight_zero_leaves_the_rpn_head_alone():
    images, targets = _faces(2)
    model = face_rcnn(**_small_config(rpn_loss_weight=0.0))
    model.compile(optimizer="sgd")
    model.build(None)
    before = [w.numpy().copy() for w in model.rpn.head.weights]
    model.train_on_batch(images, targets)
    for w, b in zip(model.rpn.head.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)
    assert not np.array_equal(model.heads[0].weights[0].numpy(), model.heads[0].weights[0].numpy() * 0)


def _same(a, b):
    return all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.weights, b.weights))


def test_two_step_joint_and_four_step_alternating_training():
    images, targets = _faces(8)
    config = _small_config()
    joint, steps = procedures.train_rcnn_joint(config, images, targets, rpn_epochs=1, joint_epochs=1,
                                                  batch_size=4, verbose=0)
    assert set(steps) == {"rpn", "joint"}
    assert "stage1_cls_loss" in steps["joint"]["history"] and "rpn_cls_loss" in steps["joint"]["history"]
    # step 2 fine-tunes the shared convolutions with both losses
    assert not _same(joint.rpn.backbone, steps["rpn"]["model"].rpn.backbone)
    out = joint.predict(images[:2], verbose=0)
    assert out["boxes"].shape == (2, 100, 4)

    final, steps = procedures.train_rcnn_alternating(config, images, targets, rpn_epochs=1, rcnn_epochs=1,
                                                        batch_size=4, verbose=0)
    assert list(steps) == ["rpn1", "rcnn2", "rpn3", "rcnn4"]
    # steps 3 and 4 keep the step-2 Fast R-CNN's convolutions; step 4 keeps step 3's RPN head
    assert _same(final.rpn.backbone, steps["rcnn2"]["model"].rpn.backbone)
    assert _same(final.rpn.head, steps["rpn3"]["model"].rpn.head)
    assert not _same(final.heads[0], steps["rpn3"]["model"].heads[0])
    assert not _same(steps["rcnn2"]["model"].rpn.backbone, steps["rpn1"]["model"].rpn.backbone)


def test_cascade_separate_freezes_earlier_branches_and_joint_can_start_from_it():
    rng = np.random.default_rng(0)
    samples = mining.FaceSamples(
        patches=rng.integers(0, 255, (64, 48, 48, 3)).astype(np.uint8),
        labels=(rng.random(64) < 0.3).astype(np.int32),
        offsets=rng.normal(0, 0.05, (64, 4)).astype(np.float32),
        windows=np.zeros((64, 4), np.float32), image_index=np.zeros(64, np.int32))
    final, steps = procedures.train_cascade_separate({}, samples, epochs=1, batch_size=32, verbose=0)
    assert list(steps) == ["x12", "x24", "x48"]
    assert _same(final.x12, steps["x12"]["model"].x12) and _same(final.x24, steps["x24"]["model"].x24)
    assert not _same(steps["x24"]["model"].x24, steps["x12"]["model"].x24)
    joint, steps = procedures.train_cascade_joint({}, samples, epochs=1, batch_size=32, init_from=final,
                                                     verbose=0)
    assert not _same(joint.x12, final.x12)  # joint training moves x12 too
    assert "x48_cls_loss" in steps["joint"]["history"]
