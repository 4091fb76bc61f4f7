"""One SGD step of a tiny RetinaNet on 2 logical CPU devices (MirroredStrategy) and on one device.

Run as a subprocess (logical devices must be configured before TensorFlow
starts). argv[1] is a JSON list of RetinaNet keyword-argument dicts; prints one
JSON line: for each, the largest weight-update difference between the two, the
largest update, and both logged losses.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kdet.detectors.retinanet import RetinaNet  # noqa: E402

KWARGS = dict(num_classes=3, backbone="tiny", freeze_batchnorm=True, fpn_filters=16, head_convs=1, head_filters=16,
              anchor_size=2.0, allow_low_quality_matches=True)


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


def one_step(strategy, kwargs):
    images, targets = batch()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = RetinaNet(**kwargs)
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
        kwargs = dict(KWARGS, **variant)
        mirrored, loss_m = one_step(strategy, kwargs)
        single, loss_s = one_step(one_device, kwargs)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(mirrored, single))
        scale = max(float(np.abs(b).max()) for b in single)
        results.append({"max_update_diff": diff, "max_update": scale, "loss_mirrored": loss_m, "loss_single": loss_s})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
