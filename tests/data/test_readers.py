"""Readers: tfds under tfds.testing.mock_data, the COCO-json reader on generated files, synthetic data."""

import json
import logging

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from kdet.data import load_coco_json, load_tfds, synthetic_dataset, synthetic_examples, write_coco_json
from kdet.data.categories import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from kdet.data.tfds_readers import image_id_from_filename


def _check_examples(dataset, num_classes):
    count = 0
    for ex in dataset:
        image, boxes = ex["image"].numpy(), ex["boxes"].numpy()
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,)
        assert ex["classes"].dtype == tf.int32 and ex["is_crowd"].dtype == tf.bool
        assert len(boxes) == len(ex["classes"].numpy()) == len(ex["is_crowd"].numpy())
        h, w = image.shape[:2]
        assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= h) and np.all(boxes[:, [1, 3]] <= w)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        assert np.all((ex["classes"].numpy() >= 0) & (ex["classes"].numpy() < num_classes))
        assert ex["image_id"].dtype == tf.int64
        count += 1
    return count


@pytest.mark.parametrize("name,num_classes", [("coco/2017", 80), ("voc/2007", 20), ("voc/2012", 20)])
def test_tfds_readers_under_mock_data(name, num_classes):
    with tfds.testing.mock_data(num_examples=3):
        dataset, info = load_tfds(name, split="validation" if name.startswith("coco") else "test")
        assert info.num_classes == num_classes and info.name == name
        assert _check_examples(dataset, num_classes) == 3


def test_tfds_boxes_are_pixels_and_pipeline_runs_on_them():
    from kdet.data import make_pipeline

    with tfds.testing.mock_data(num_examples=2):
        dataset, info = load_tfds("coco/2017", split="validation")
        raw = next(iter(tfds.load("coco/2017", split="validation")))
        ex = next(iter(dataset))
        h, w = raw["image"].shape[:2]
        objects = raw["objects"]
        # Mock boxes are random, many inverted: every kept box is a valid source box in pixels, the rest
        # were dropped and counted.
        src = objects["bbox"].numpy() * [h, w, h, w]
        valid = src[(src[:, 2] > src[:, 0]) & (src[:, 3] > src[:, 1])]
        kept = ex["boxes"].numpy()
        assert len(kept) == len(valid) > 0
        np.testing.assert_allclose(kept, valid, atol=1e-3)
        assert info.stats.dropped_boxes.numpy() >= len(src) - len(valid)
        images, targets = next(iter(make_pipeline(dataset, image_size=(128, 128), batch_size=2, training=False)))
        assert images.shape == (2, 128, 128, 3)


def test_label_maps():
    assert len(COCO_CATEGORY_IDS) == 80 == len(COCO_CLASS_NAMES)
    assert (COCO_CATEGORY_IDS[0], COCO_CLASS_NAMES[0]) == (1, "person")
    assert (COCO_CATEGORY_IDS[79], COCO_CLASS_NAMES[79]) == (90, "toothbrush")
    assert list(COCO_CATEGORY_IDS) == sorted(COCO_CATEGORY_IDS) and 12 not in COCO_CATEGORY_IDS
    with pytest.raises(ValueError, match="supported"):
        load_tfds("kitti", split="train")


def test_image_id_from_voc_filenames():
    got = [int(image_id_from_filename(tf.constant(n))) for n in ("000005.jpg", "2008_000123.jpg")]
    assert got == [5, 2008000123]
    assert int(image_id_from_filename(tf.constant("abc.jpg"))) == int(image_id_from_filename(tf.constant("abc.jpg")))


def _write_image(path, array, fmt=None):
    Image.fromarray(array).save(path, format=fmt)


@pytest.fixture
def coco_folder(tmp_path):
    """A COCO json exercising every documented bad-input rule."""
    rng = np.random.default_rng(0)
    _write_image(tmp_path / "rgb.jpg", rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    _write_image(tmp_path / "grey.png", rng.integers(0, 255, (30, 30), dtype=np.uint8))
    _write_image(tmp_path / "rgba.png", rng.integers(0, 255, (20, 25, 4), dtype=np.uint8))
    _write_image(tmp_path / "empty.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    data = {
        "images": [
            {"id": 1, "file_name": "rgb.jpg", "height": 40, "width": 60},
            {"id": 2, "file_name": "grey.png", "height": 30, "width": 30},
            {"id": 3, "file_name": "rgba.png", "height": 20, "width": 25},
            {"id": 4, "file_name": "empty.png", "height": 16, "width": 16},
            {"id": 5, "file_name": "corrupt.jpg", "height": 10, "width": 10},
        ],
        "categories": [{"id": 42, "name": "c42"}, {"id": 3, "name": "c3"}, {"id": 7, "name": "c7"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 42, "bbox": [50, 30, 20, 20], "iscrowd": 0},  # clipped
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero area
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [5, 5, -4, 10], "iscrowd": 0},  # inverted
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [1, 2, 10, 5], "iscrowd": 1},
            {"id": 5, "image_id": 3, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 6, "image_id": 5, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path


def test_coco_json_reader_rules(coco_folder, caplog):
    dataset, info = load_coco_json(str(coco_folder / "ann.json"), str(coco_folder))
    assert info.category_ids == (3, 7, 42) and info.class_names == ("c3", "c7", "c42")
    with caplog.at_level(logging.WARNING):
        examples = {int(e["image_id"]): e for e in dataset}
    assert sorted(examples) == [1, 2, 3, 4]  # the corrupt image is skipped ...
    assert info.stats.skipped_images.numpy() == 1  # ... counted ...
    assert "corrupt.jpg" in caplog.text  # ... and named in a warning
    one = examples[1]
    np.testing.assert_allclose(one["boxes"].numpy(), [[30, 50, 40, 60]])  # xywh -> yxyx, clipped to 40x60
    assert one["classes"].numpy().tolist() == [2]  # category 42 -> label 2
    assert info.stats.dropped_boxes.numpy() == 2 and info.stats.clipped_boxes.numpy() == 1
    assert examples[2]["image"].shape == (30, 30, 3) and examples[2]["is_crowd"].numpy().tolist() == [True]
    assert examples[3]["image"].shape == (20, 25, 3)
    assert examples[4]["boxes"].shape == (0, 4)  # no annotations: a valid example with no objects


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.pop("images"), "images"),
        (lambda d: d["annotations"][0].pop("bbox"), "bbox"),
        (lambda d: d["annotations"][0].update(category_id=99), "99"),
    ],
)
def test_coco_json_errors_name_the_problem(coco_folder, mutate, match):
    data = json.loads((coco_folder / "ann.json").read_text())
    mutate(data)
    path = coco_folder / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as err:
        load_coco_json(str(path), str(coco_folder))
    assert "bad.json" in str(err.value)


def test_coco_json_malformed_and_missing_files(coco_folder):
    (coco_folder / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_coco_json(str(coco_folder / "broken.json"), str(coco_folder))
    with pytest.raises(FileNotFoundError, match="rgb.jpg"):
        load_coco_json(str(coco_folder / "ann.json"), str(coco_folder / "elsewhere"))


def test_synthetic_round_trips_through_coco_json(tmp_path):
    dataset, info = synthetic_dataset("validation", num_images=6)
    path = write_coco_json(dataset.as_numpy_iterator(), info=info, out_dir=str(tmp_path))
    back, back_info = load_coco_json(path, str(tmp_path))
    assert back_info.class_names == info.class_names
    for a, b in zip(dataset, back):
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())  # png is lossless
        np.testing.assert_allclose(a["boxes"].numpy(), b["boxes"].numpy(), atol=1e-3)
        np.testing.assert_array_equal(a["classes"].numpy(), b["classes"].numpy())


def test_synthetic_is_deterministic_and_varied():
    a = synthetic_examples("train", seed=5, num_images=60)
    b = synthetic_examples("train", seed=5, num_images=60)
    other = synthetic_examples("validation", seed=5, num_images=5)
    for x, y in zip(a, b):
        assert x["image"].tobytes() == y["image"].tobytes()
        np.testing.assert_array_equal(x["boxes"], y["boxes"])
    assert a[0]["image"].tobytes() != other[0]["image"].tobytes()
    boxes = np.concatenate([e["boxes"] for e in a])
    classes = np.concatenate([e["classes"] for e in a])
    assert set(classes.tolist()) == set(range(6))
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    ratios = (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0])
    assert sides.min() < 16 and sides.max() > 80  # small and large objects
    assert ratios.min() < 0.6 and ratios.max() > 1.7  # tall and wide objects
    assert any(len(e["classes"]) == 0 for e in a)  # some images without objects
    from kdet.boxes import pairwise_iou

    overlapping = sum(
        int((np.triu(pairwise_iou(e["boxes"], e["boxes"]).numpy(), 1) > 0).any()) for e in a if len(e["boxes"]) > 1
    )
    assert overlapping >= 10  # partial occlusion between objects is common
