"""The embedded face set (determinism, held-out splits, box geometry, dataset
contract) and the tfds ``wider_face`` reader (by hand and under mock data)."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kdet.data import (
    FACE_SPLITS,
    face_dataset,
    face_examples,
    face_info,
    face_scene,
    load_tfds,
    make_pipeline,
    tfds_info,
)
from kdet.data import face_render, faces
from kdet.data.example import sanitize_example
from kdet.data.tfds_readers import wider_face_example_from_tfds

SMALL = (96, 128)


def _iou(a, b):
    hw = np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2])
    inter = np.prod(np.maximum(hw, 0))
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


@pytest.fixture(scope="module")
def small_train():
    return list(face_examples("train", num_images=120, seed=3, image_size=SMALL,
                              face_sizes=(12, 60)))


def test_same_arguments_give_identical_bytes_and_prefix_stable():
    kwargs = dict(num_images=3, seed=5, image_size=(120, 160))
    a = list(face_examples("validation", **kwargs))
    b = list(face_examples("validation", **kwargs))
    for x, y in zip(a, b, strict=True):
        for key in ("image", "boxes", "classes", "is_crowd", "image_id"):
            assert np.asarray(x[key]).tobytes() == np.asarray(y[key]).tobytes()
    prefix = list(face_examples("validation", **{**kwargs, "num_images": 2}))
    assert [p["image"].tobytes() for p in prefix] == [x["image"].tobytes() for x in a[:2]]
    other_seed = next(face_examples("validation", **{**kwargs, "seed": 6}))
    other_split = next(face_examples("test", **kwargs))
    assert other_seed["image"].tobytes() != a[0]["image"].tobytes()
    assert other_split["image"].tobytes() != a[0]["image"].tobytes()


def test_splits_use_disjoint_crops_and_photo_regions():
    parts = FACE_SPLITS.values()
    for first, second in itertools.combinations(parts, 2):
        assert not set(first.faces) & set(second.faces)
        assert not set(first.non_faces) & set(second.non_faces)
        (t0, l0, b0, r0), (t1, l1, b1, r1) = first.region, second.region
        assert min(b0, b1) <= max(t0, t1) or min(r0, r1) <= max(l0, l1)  # no overlap
    assert sorted(i for p in parts for i in p.faces) == list(range(100))
    assert sorted(i for p in parts for i in p.non_faces) == list(range(100, 200))
    photos = face_render._photos()
    for split, part in FACE_SPLITS.items():
        used_faces, used_photos = set(), 0
        for index in range(8):
            scene = face_scene(split, index, seed=1, image_size=SMALL, max_faces=8)
            assert len(scene.face_crops) == len(scene.boxes)
            assert len(scene.distractor_crops) == len(scene.distractor_boxes)
            assert set(scene.face_crops) <= set(part.faces)
            assert set(scene.distractor_crops) <= set(part.non_faces)
            used_faces |= set(scene.face_crops.tolist())
            for name, (top, left, bottom, right) in scene.photo_crops:
                assert name not in ("astronaut", "camera")  # they show faces
                h, w = photos[name].shape[:2]
                t, l, b, r = part.region
                assert round(t * h) <= top < bottom <= round(b * h)
                assert round(l * w) <= left < right <= round(r * w)
                used_photos += 1
        assert len(used_faces) > 5 and used_photos > 0


def test_boxes_are_square_inside_in_range_and_barely_overlapping(small_train):
    counts, sides = [], []
    for example in small_train:
        image, boxes = example["image"], example["boxes"]
        assert image.shape == (*SMALL, 3) and image.dtype == np.uint8
        assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,)
        height, width = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        np.testing.assert_array_equal(height, width)
        np.testing.assert_array_equal(boxes, np.round(boxes))
        assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= SMALL[0])
        assert np.all(boxes[:, [1, 3]] <= SMALL[1])
        for a, b in itertools.combinations(boxes, 2):
            assert _iou(a, b) < 0.3
        assert example["classes"].dtype == np.int32 and not example["classes"].any()
        assert example["is_crowd"].dtype == bool and not example["is_crowd"].any()
        assert len(example["classes"]) == len(example["is_crowd"]) == len(boxes)
        counts.append(len(boxes))
        sides.extend(height.tolist())
    assert min(counts) == 0 and max(counts) == faces.DEFAULT_MAX_FACES
    assert 12 <= min(sides) < 16 and 45 < max(sides) <= 60
    assert np.median(sides) < 30  # log-uniform: small faces are common
    ids = [int(e["image_id"]) for e in small_train]
    assert ids == list(range(1, len(small_train) + 1))


def test_distractors_stay_off_faces_and_sizes_are_capped_by_the_image():
    for index in range(10):
        scene = face_scene("train", index, image_size=(40, 56), face_sizes=(12, 200),
                           max_faces=3, max_distractors=4)
        sides = scene.boxes[:, 2] - scene.boxes[:, 0]
        assert np.all((sides >= 12) & (sides <= 40))
        for d in scene.distractor_boxes:
            for f in scene.boxes:
                assert face_render._overlap(d, f[None])[0] <= faces.MAX_DISTRACTOR_OVERLAP


def test_default_is_vga():
    example = next(face_examples("test", num_images=1))
    assert example["image"].shape == (480, 640, 3)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="split"):
        next(face_examples("training", num_images=1))
    with pytest.raises(ValueError, match="face_sizes"):
        face_dataset("train", num_images=1, image_size=(10, 10))
    with pytest.raises(ValueError, match="face_sizes"):
        face_scene("train", 0, face_sizes=(50, 20))


def test_face_dataset_matches_examples_and_feeds_the_pipeline():
    dataset, info = face_dataset("test", num_images=3, seed=2, image_size=SMALL)
    assert info == face_info() and info.class_names == ("face",) and info.num_classes == 1
    spec = dataset.element_spec
    assert spec == {
        "image": tf.TensorSpec([*SMALL, 3], tf.uint8),
        "boxes": tf.TensorSpec([None, 4], tf.float32),
        "classes": tf.TensorSpec([None], tf.int32),
        "is_crowd": tf.TensorSpec([None], tf.bool),
        "image_id": tf.TensorSpec([], tf.int64),
    }
    expected = list(face_examples("test", num_images=3, seed=2, image_size=SMALL))
    for got, want in zip(dataset, expected, strict=True):
        for key, value in want.items():
            np.testing.assert_array_equal(got[key].numpy(), value)
    images, targets = next(iter(make_pipeline(dataset, image_size=(128, 128), batch_size=3,
                                              training=True, seed=0)))
    assert images.shape == (3, 128, 128, 3)
    assert set(np.unique(targets["classes"].numpy())) <= {-1, 0}


def test_wider_face_features_by_hand():
    features = {
        "image": tf.zeros([50, 100, 3], tf.uint8),
        "image/filename": tf.constant("0--Parade/0_Parade_marchingband_1_849.jpg"),
        "faces": {
            "bbox": tf.constant([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.4, 0.5, 0.4, 0.7],
                                 [1.0, 1.0, 1.0, 1.0], [0.2, 0.2, 0.3, 0.3]]),
            "invalid": tf.constant([False, True, False, False]),  # shorter: cuts bbox
            "blur": tf.constant([0, 1, 2, 3, 4], tf.uint8),
        },
    }
    ex = wider_face_example_from_tfds(features)
    # zero-height faces become one-pixel ignore regions inside the image, keeping face indices aligned
    np.testing.assert_allclose(ex["boxes"], [[5, 20, 25, 60], [0, 0, 50, 100], [20, 50, 21, 51],
                                             [49, 99, 50, 100]], rtol=1e-6)
    assert ex["classes"].dtype == tf.int32 and ex["classes"].numpy().tolist() == [0, 0, 0, 0]
    assert ex["is_crowd"].numpy().tolist() == [False, True, True, True]
    kept = sanitize_example(ex)
    assert kept["boxes"].shape[0] == 4
    # Digits of WIDER names collide (both give "001849"): the id hashes the whole name.
    other = dict(features, **{"image/filename": tf.constant("0--Parade/0_Parade_0_1849.jpg")})
    other_id = wider_face_example_from_tfds(other)["image_id"]
    assert ex["image_id"].dtype == tf.int64 and int(ex["image_id"]) >= 0
    assert int(ex["image_id"]) != int(other_id)
    assert int(ex["image_id"]) == int(wider_face_example_from_tfds(features)["image_id"])


def test_wider_face_under_mock_data_keeps_invalid_faces_as_crowd():
    info = tfds_info("wider_face")
    assert info.class_names == ("face",) and info.name == "wider_face"
    with tfds.testing.mock_data(num_examples=3):
        dataset, info = load_tfds("wider_face", split="train")
        raw = list(tfds.load("wider_face", split="train"))
        converted = list(dataset)
    assert info.num_classes == 1 and len(converted) == 3
    crowd = 0
    for source, ex in zip(raw, converted, strict=True):
        h, w = source["image"].shape[:2]
        n = min(len(source["faces"]["bbox"]), len(source["faces"]["invalid"]))
        boxes = source["faces"]["bbox"].numpy()[:n] * [h, w, h, w]
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        assert ex["boxes"].shape[0] == n  # zero-size faces stay, as one-pixel ignore regions
        np.testing.assert_allclose(ex["boxes"].numpy()[valid], boxes[valid], atol=1e-3)
        expected = source["faces"]["invalid"].numpy()[:n] | ~valid
        np.testing.assert_array_equal(ex["is_crowd"].numpy(), expected)
        assert not ex["classes"].numpy().any() and ex["image_id"].dtype == tf.int64
        assert ex["image"].dtype == tf.uint8 and ex["image"].shape[-1] == 3
        crowd += int(expected.sum())
    assert crowd > 0  # the mock marks some faces invalid: the flag was exercised
