"""One SGD step of a tiny detector on 2 logical CPU devices (MirroredStrategy) and on one device.

Run as a subprocess (logical devices must be configured before TensorFlow
starts). argv[1] is a JSON list of keyword-argument dicts, each with an
optional ``"detector"`` key (``retinanet`` by default, ``cascade_rcnn``,
``face_cascade``; ``rpn_overrides`` updates the two-stage detectors' RPN
arguments); prints one JSON line: for each, the largest weight-update
difference between the two, the largest update, and both logged losses.

The two-stage detectors sample anchors and RoIs at random; each replica
draws its own random numbers, so the test gives them sample budgets larger
than the candidates (every anchor and RoI is used, in any order): what is
compared is the loss and gradient arithmetic across replicas, not the RNG.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kdet.detectors.cascade_rcnn import CascadeRCNN  # noqa: E402
from kdet.face.cascade import FaceCascade  # noqa: E402
from kdet.detectors.retinanet import RetinaNet  # noqa: E402

TINY = dict(name="tiny", freeze_batchnorm=True)
KWARGS = dict(num_classes=3, backbone=TINY, fpn_filters=16, head=dict(num_convs=1, filters=16),
              anchors=dict(anchor_size=2.0), matcher=dict(allow_low_quality_matches=True))
# Budgets above the candidates (64x64 images: 5 levels x 3 anchors; 64 proposals + ground truth).
RPN = dict(backbone=TINY, fpn_filters=16, head_filters=16, sampling=dict(num_samples=100000),
           proposals=dict(pre_nms_top_k_train=200, max_proposals_train=64))
CASCADE = dict(num_classes=3, rpn=RPN, roi_sampling=dict(num_samples=1000), fc_dim=32,
               roi_pooler=dict(canonical_size=56.0))
FACE = dict(dropout=0.0)
DETECTORS = {"retinanet": (RetinaNet, KWARGS), "cascade_rcnn": (CascadeRCNN, CASCADE),
             "face_cascade": (FaceCascade, FACE)}


def batch():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, [4, 64, 64, 3]).astype(np.float32)
    boxes = np.zeros([4, 3, 4], np.float32)
    classes = -np.ones([4, 3], np.int32)
    for i in range(4):
        for j in range(1 + i % 3):
            y, x = rng.uniform(0, 34, 2)
            h, w = rng.uniform(20, 30, 2)
            boxes[i, j] = [y, x, y + h, x + w]
            classes[i, j] = rng.integers(0, 3)
            images[i, int(y):int(y + h), int(x):int(x + w), classes[i, j]] = 255
    return images, {"boxes": boxes, "classes": classes}


def face_batch():
    rng = np.random.default_rng(0)
    patches = rng.uniform(0, 255, [8, 48, 48, 3]).astype(np.float32)
    labels = np.array([1, 0, 0, 1, 0, 0, 0, -1], np.int32)
    patches[labels == 1, 12:36, 12:36] = 200.0
    return patches, {"labels": labels, "offsets": rng.normal(0, 0.05, [8, 4]).astype(np.float32)}


def one_step(strategy, detector, kwargs):
    cls, _ = DETECTORS[detector]
    images, targets = face_batch() if detector == "face_cascade" else batch()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = cls(**kwargs)
        model(images[:1])
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    before = [w.numpy().copy() for w in model.trainable_weights]
    data = tf.data.Dataset.from_tensors((images, targets))
    loss = model.fit(data, epochs=1, verbose=0).history["loss"][0]
    return [w.numpy() - b for w, b in zip(model.trainable_weights, before)], loss


def main():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    results = []
    # One strategy object for all variants: a second MirroredStrategy in the process reuses collective
    # instance keys with other ops ("Collective instance ... expected type").
    strategy, one_device = tf.distribute.MirroredStrategy(devices), tf.distribute.OneDeviceStrategy(devices[0])
    for variant in json.loads(sys.argv[1]):
        detector = variant.pop("detector", "retinanet")
        rpn_overrides = variant.pop("rpn_overrides", {})
        kwargs = dict(DETECTORS[detector][1], **variant)
        if rpn_overrides:
            kwargs["rpn"] = dict(kwargs["rpn"], **rpn_overrides)
        mirrored, loss_m = one_step(strategy, detector, kwargs)
        single, loss_s = one_step(one_device, detector, kwargs)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(mirrored, single))
        scale = max(float(np.abs(b).max()) for b in single)
        results.append({"max_update_diff": diff, "max_update": scale, "loss_mirrored": loss_m, "loss_single": loss_s})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
