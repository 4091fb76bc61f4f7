"""Tests of kdet.data.pipeline.make_pipeline against the batch contract."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.data import make_pipeline, synthetic_dataset

SIGNATURE = {
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "classes": tf.TensorSpec([None], tf.int32),
    "is_crowd": tf.TensorSpec([None], tf.bool),
    "image_id": tf.TensorSpec([], tf.int64),
}


def _dataset(examples):
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=SIGNATURE)


def _example(h, w, boxes, image_id, fill=200):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return {
        "image": np.full([h, w, 3], fill, np.uint8),
        "boxes": boxes,
        "classes": np.arange(len(boxes), dtype=np.int32) % 3,
        "is_crowd": np.arange(len(boxes)) == 1,
        "image_id": np.int64(image_id),
    }


def test_eval_pipeline_contract_by_hand():
    examples = [
        _example(100, 200, [[10, 20, 50, 120], [0, 0, 100, 200]], 5),
        _example(128, 64, [], 6),  # no objects
    ]
    pipe = make_pipeline(_dataset(examples), image_size=(128, 128), batch_size=2,
                         training=False, max_boxes=4)
    images, t = next(iter(pipe))
    assert images.shape == (2, 128, 128, 3) and images.dtype == tf.float32
    expected = {
        "boxes": (tf.float32, (2, 4, 4)), "classes": (tf.int32, (2, 4)),
        "is_crowd": (tf.bool, (2, 4)), "image_id": (tf.int64, (2,)),
        "scale": (tf.float32, (2,)), "image_shape": (tf.int32, (2, 2)),
        "original_shape": (tf.int32, (2, 2)),
    }
    assert {k: (v.dtype, tuple(v.shape)) for k, v in t.items()} == expected
    np.testing.assert_allclose(t["scale"], [0.64, 1.0])
    assert t["image_shape"].numpy().tolist() == [[64, 128], [128, 64]]
    assert t["original_shape"].numpy().tolist() == [[100, 200], [128, 64]]
    np.testing.assert_allclose(t["boxes"][0, :2], [[6.4, 12.8, 32, 76.8], [0, 0, 64, 128]],
                               rtol=1e-6)
    # Padding rows: box 0, class -1, not crowd.
    assert t["classes"].numpy().tolist() == [[0, 1, -1, -1], [-1, -1, -1, -1]]
    assert t["is_crowd"].numpy().tolist() == [[False, True, False, False], [False] * 4]
    assert float(tf.reduce_sum(tf.abs(t["boxes"][0, 2:]))) == 0.0
    assert float(tf.reduce_sum(tf.abs(t["boxes"][1]))) == 0.0
    # Original boxes come back through the scale; pixels stay 0..255, zero padding.
    np.testing.assert_allclose(t["boxes"][0, 0] / t["scale"][0], [10, 20, 50, 120],
                               rtol=1e-6)
    np.testing.assert_allclose(images[0, :64], 200.0)
    assert float(tf.reduce_max(images[0, 64:])) == 0.0
    assert float(tf.reduce_max(images[1, :, 64:])) == 0.0
    assert t["image_id"].numpy().tolist() == [5, 6]


@pytest.mark.parametrize("size", [(100, 128), (128, 200), (0, 128)])
def test_image_size_not_multiple_of_stride_is_a_clear_error(size):
    with pytest.raises(ValueError, match=str(size[0] if size[0] % 128 else size[1])):
        make_pipeline(_dataset([]), image_size=size, batch_size=1, training=False)
    make_pipeline(_dataset([]), image_size=(64, 96), batch_size=1, training=False,
                  stride=32)


def test_boxes_beyond_max_boxes_are_truncated_with_a_warning(capfd):
    boxes = [[i, i, i + 10, i + 10] for i in range(5)]
    pipe = make_pipeline(_dataset([_example(128, 128, boxes, 42)]), image_size=(128, 128),
                         batch_size=1, training=False, max_boxes=3)
    _, t = next(iter(pipe))
    np.testing.assert_allclose(t["boxes"][0], np.asarray(boxes[:3], np.float32))
    assert t["classes"].numpy().tolist() == [[0, 1, 2]]
    err = capfd.readouterr().err
    assert "image_id 42" in err and "truncated to max_boxes = 3" in err
    list(pipe)  # a second epoch of the same pipeline does not repeat it
    assert "truncated" not in capfd.readouterr().err


def test_training_pipeline_is_seeded_fixed_shape_and_boxes_stay_valid():
    dataset, _ = synthetic_dataset("validation", num_images=10)

    def run(seed):
        pipe = make_pipeline(dataset, image_size=(128, 128), batch_size=4, training=True,
                             scale_jitter=(0.5, 1.5), seed=seed, shuffle_buffer=10)
        return list(pipe)

    first, again, other = run(3), run(3), run(4)
    assert len(first) == 2  # 10 images, drop_remainder in training
    for (images, t), (images2, t2) in zip(first, again):
        assert images.shape == (4, 128, 128, 3)
        np.testing.assert_array_equal(images, images2)
        np.testing.assert_array_equal(t["boxes"], t2["boxes"])
        valid = t["classes"].numpy() >= 0
        boxes = t["boxes"].numpy()[valid]
        shapes = np.repeat(t["image_shape"].numpy()[:, None], 100, axis=1)[valid]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes >= 0).all() and (boxes[:, 2] <= shapes[:, 0]).all()
        assert (boxes[:, 3] <= shapes[:, 1]).all()
    assert not np.array_equal(first[0][0], other[0][0])


def test_flip_without_training_and_remainder_kept_in_eval():
    dataset, _ = synthetic_dataset("validation", num_images=5)
    batches = list(make_pipeline(dataset, image_size=(128, 128), batch_size=2,
                                 training=False))
    assert [int(b[0].shape[0]) for b in batches] == [2, 2, 1]
    flipped = list(make_pipeline(dataset, image_size=(128, 128), batch_size=5,
                                 training=False, flip=True, seed=0))
    plain = batches[0][0].numpy()
    images = flipped[0][0].numpy()
    for i in range(2):  # each image is either itself or its mirror
        same = np.array_equal(images[i], plain[i])
        assert same or np.allclose(images[i], plain[i][:, ::-1])
