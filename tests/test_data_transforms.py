"""Transforms and the batched pipeline on hand-checkable cases."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.data import make_pipeline, sanitize_example
from kdet.data import transforms


def test_resize_to_fit_hand_computed():
    image = tf.zeros([100, 200, 3], tf.uint8)
    boxes = tf.constant([[10.0, 20.0, 50.0, 100.0]])
    out, out_boxes, scale, shape = transforms.resize_to_fit(image, boxes, output_size=(128, 128))
    assert float(scale) == pytest.approx(0.64)
    assert shape.numpy().tolist() == [64, 128] and out.shape == (64, 128, 3)
    np.testing.assert_allclose(out_boxes.numpy(), [[6.4, 12.8, 32.0, 64.0]], rtol=1e-6)


def test_pad_to_size_and_multiple():
    image = tf.ones([30, 50, 3])
    padded = transforms.pad_to_size(image, output_size=(64, 64)).numpy()
    assert padded.shape == (64, 64, 3) and padded[:30, :50].min() == 1 and padded[30:].max() == 0
    assert transforms.pad_to_multiple(image, stride=32).shape == (32, 64, 3)


def test_flip_twice_is_identity_and_flips_boxes():
    image = tf.random.uniform([20, 30, 3])
    boxes = tf.constant([[2.0, 3.0, 10.0, 12.0]])
    flipped_image, flipped = transforms.flip_left_right(image, boxes)
    np.testing.assert_allclose(flipped.numpy(), [[2.0, 18.0, 10.0, 27.0]])
    back_image, back = transforms.flip_left_right(flipped_image, flipped)
    np.testing.assert_allclose(back.numpy(), boxes.numpy())
    np.testing.assert_array_equal(back_image.numpy(), image.numpy())


def test_scale_jitter_keeps_boxes_inside_output():
    image = tf.random.uniform([100, 100, 3], 0, 255)
    boxes = tf.constant([[10.0, 10.0, 40.0, 40.0], [60.0, 60.0, 99.0, 99.0]])
    for i in range(5):
        out, out_boxes, keep, scale = transforms.random_scale_jitter(
            image, boxes, output_size=(64, 64), scale_range=(0.5, 2.0), seed=tf.constant([i, 7]))
        assert out.shape[:2] == (64, 64) or (out.shape[0] <= 64 and out.shape[1] <= 64)
        kept = out_boxes.numpy()[keep.numpy()]
        assert np.all(kept >= 0) and np.all(kept <= 64)
        assert np.all(kept[:, 2] > kept[:, 0]) and np.all(kept[:, 3] > kept[:, 1])


def test_sanitize_example_clips_drops_and_converts_grey():
    example = {
        "image": tf.zeros([40, 60, 1], tf.uint8),
        "boxes": tf.constant([[-5, -5, 20, 20], [10, 10, 10, 30], [30, 50, 20, 40], [50, 70, 60, 80],
                              [5, 5, 15, 15]], tf.float32),
        "classes": tf.constant([0, 1, 2, 3, 4]),
        "is_crowd": tf.constant([False, False, False, False, True]),
        "image_id": tf.constant(7, tf.int64),
    }
    out = sanitize_example(example)
    assert out["image"].shape == (40, 60, 3) and out["image"].dtype == tf.uint8
    np.testing.assert_allclose(out["boxes"].numpy(), [[0, 0, 20, 20], [5, 5, 15, 15]])
    assert out["classes"].numpy().tolist() == [0, 4] and out["is_crowd"].numpy().tolist() == [False, True]


def _examples(num, *, boxes_per_image, size=(50, 80)):
    def gen():
        for i in range(num):
            n = boxes_per_image[i % len(boxes_per_image)]
            yield {
                "image": np.full(size + (3,), i, np.uint8),
                "boxes": np.tile(np.array([[5, 10, 25, 40]], np.float32), (n, 1)),
                "classes": np.arange(n, dtype=np.int32) % 3,
                "is_crowd": np.zeros(n, bool),
                "image_id": np.int64(100 + i),
            }

    sig = {"image": tf.TensorSpec([None, None, 3], tf.uint8), "boxes": tf.TensorSpec([None, 4], tf.float32),
           "classes": tf.TensorSpec([None], tf.int32), "is_crowd": tf.TensorSpec([None], tf.bool),
           "image_id": tf.TensorSpec([], tf.int64)}
    return tf.data.Dataset.from_generator(gen, output_signature=sig)


def test_pipeline_contract_shapes_padding_and_scale(capfd):
    ds = make_pipeline(_examples(5, boxes_per_image=[2, 0, 7]), image_size=(128, 256), batch_size=2,
                       training=False, max_boxes=4)
    batches = list(ds)
    assert len(batches) == 3  # evaluation keeps the last partial batch
    images, t = batches[0]
    assert images.shape == (2, 128, 256, 3) and images.dtype == tf.float32
    assert t["boxes"].shape == (2, 4, 4) and t["classes"].dtype == tf.int32 and t["is_crowd"].dtype == tf.bool
    # 50x80 into 128x256: scale = min(128/50, 256/80) = 2.56 -> (128, 205).
    np.testing.assert_allclose(t["scale"].numpy(), [2.56, 2.56], rtol=1e-6)
    assert t["image_shape"].numpy().tolist() == [[128, 205], [128, 205]]
    assert t["original_shape"].numpy().tolist() == [[50, 80], [50, 80]]
    assert t["image_id"].numpy().tolist() == [100, 101]
    np.testing.assert_allclose(t["boxes"].numpy()[0, 0] / 2.56, [5, 10, 25, 40], rtol=1e-5)
    assert t["classes"].numpy().tolist() == [[0, 1, -1, -1], [-1, -1, -1, -1]]
    assert np.all(images.numpy()[:, :, 205:] == 0)
    # The image with 7 boxes is truncated to max_boxes and a warning names it.
    _, t2 = batches[1]
    assert (t2["classes"].numpy()[0] >= 0).sum() == 4
    assert "image_id 102" in capfd.readouterr().err


def test_pipeline_training_is_seeded_and_drops_remainder():
    def run():
        ds = make_pipeline(_examples(5, boxes_per_image=[1]), image_size=(128, 128), batch_size=2,
                           training=True, seed=3, scale_jitter=(0.8, 1.2))
        return [t["boxes"].numpy() for _, t in ds]

    first, second = run(), run()
    assert len(first) == 2
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_pipeline_rejects_bad_image_size():
    with pytest.raises(ValueError, match="multiples"):
        make_pipeline(_examples(1, boxes_per_image=[1]), image_size=(100, 128), batch_size=1, training=False)
