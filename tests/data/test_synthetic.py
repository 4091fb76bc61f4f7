"""The synthetic shapes set: determinism, exact shape extents, statistics, speed."""

import time

import numpy as np
import pytest
import tensorflow as tf

from kdet.data import synthetic
from kdet.data.synthetic import synthetic_dataset, synthetic_examples
from kdet.data.synthetic_shapes import SHAPE_NAMES, silhouette

SIZE = 128


@pytest.fixture(scope="module")
def train300():
    return synthetic_examples("train", seed=0, num_images=300)


def _generate(**kwargs):
    """Bypasses the cache: a genuinely fresh generation."""
    return synthetic_examples.__wrapped__(**kwargs)


def test_same_seed_gives_byte_identical_images_prefix_stable():
    a = _generate(split="validation", seed=11, num_images=8)
    b = _generate(split="validation", seed=11, num_images=8)
    prefix = _generate(split="validation", seed=11, num_images=3)
    for x, y in zip(a, b):
        assert x["image"].tobytes() == y["image"].tobytes()
        assert x["boxes"].tobytes() == y["boxes"].tobytes()
        np.testing.assert_array_equal(x["classes"], y["classes"])
    for x, y in zip(prefix, a):
        assert x["image"].tobytes() == y["image"].tobytes()
    other_seed = _generate(split="validation", seed=12, num_images=1)
    other_split = _generate(split="test", seed=11, num_images=1)
    assert other_seed[0]["image"].tobytes() != a[0]["image"].tobytes()
    assert other_split[0]["image"].tobytes() != a[0]["image"].tobytes()
    with pytest.raises(ValueError, match="split"):
        _generate(split="training")


def test_scenes_without_clutter_are_for_pictures_and_leave_the_dataset_alone():
    cluttered = _generate(split="validation", seed=11, num_images=4)
    clean = _generate(split="validation", seed=11, num_images=4, clutter=False)
    assert all(x["image"].tobytes() != y["image"].tobytes() for x, y in zip(cluttered, clean))
    assert sum(len(e["classes"]) for e in clean) > 0 and all(e["image"].shape == (128, 128, 3) for e in clean)
    # the default is the dataset: byte-identical to a generation that never heard of the switch
    assert _generate(split="validation", seed=11, num_images=1, clutter=True)[0]["image"].tobytes() == (
        cluttered[0]["image"].tobytes())


@pytest.mark.parametrize("kind", SHAPE_NAMES)
def test_box_is_the_full_extent_of_the_drawn_shape(kind):
    box = np.array([20.3, 30.6, 71.8, 55.2])
    coverage, (top, left, _, _) = silhouette(
        kind, box, np.random.default_rng(0), image_size=SIZE
    )
    rows = np.nonzero(coverage.max(axis=1) > 0)[0] + top
    cols = np.nonzero(coverage.max(axis=0) > 0)[0] + left
    # Partly covered edge pixels: first/last touched pixel contains the edge.
    assert rows[0] == np.floor(box[0]) and rows[-1] == np.ceil(box[2]) - 1
    assert cols[0] == np.floor(box[1]) and cols[-1] == np.ceil(box[3]) - 1
    # Anti-aliasing: fractional coverage exists (sub-pixel edges are visible).
    assert ((coverage > 0.05) & (coverage < 0.95)).any()


def test_statistics(train300):
    boxes = np.concatenate([e["boxes"] for e in train300])
    classes = np.concatenate([e["classes"] for e in train300])
    counts = np.array([len(e["classes"]) for e in train300])
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    size = np.sqrt(h * w)
    assert (boxes >= 0).all() and (boxes <= SIZE).all() and (h > 0).all() and (w > 0).all()
    # Every class, roughly balanced.
    per_class = np.bincount(classes, minlength=6)
    assert per_class.min() > 0.6 * per_class.mean()
    # Many sizes and aspect ratios.
    assert size.min() < 0.12 * SIZE and size.max() > 0.75 * SIZE
    assert np.median(size) < 0.4 * SIZE  # small objects are common
    aspect = w / h
    assert aspect.min() < 0.5 and aspect.max() > 2.0
    # 0..8 objects, some images empty.
    assert counts.max() == synthetic.MAX_OBJECTS
    assert 0.02 < (counts == 0).mean() < 0.15
    assert 3.0 < counts.mean() < 5.5
    # Overlaps are frequent, but no object hides behind a same-box twin.
    overlapping = 0
    for e in train300:
        b = e["boxes"]
        if len(b) < 2:
            continue
        y0 = np.maximum(b[:, None, 0], b[None, :, 0])
        x0 = np.maximum(b[:, None, 1], b[None, :, 1])
        y1 = np.minimum(b[:, None, 2], b[None, :, 2])
        x1 = np.minimum(b[:, None, 3], b[None, :, 3])
        inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        iou = inter / (area[:, None] + area[None, :] - inter)
        np.fill_diagonal(iou, 0)
        overlapping += int((iou > 0).any())
        assert iou.max() < 0.95
    assert overlapping > 0.4 * len(train300)


def test_generation_is_fast():
    start = time.perf_counter()
    _generate(split="test", seed=3, num_images=100)
    # About 4 ms per image on one core; generous for a shared 2-core machine.
    assert time.perf_counter() - start < 5.0


def test_dataset_follows_the_example_contract():
    dataset, info = synthetic_dataset("validation", num_images=4)
    assert info.class_names == SHAPE_NAMES and info.category_ids == (1, 2, 3, 4, 5, 6)
    spec = dataset.element_spec
    assert spec["image"] == tf.TensorSpec([SIZE, SIZE, 3], tf.uint8)
    assert spec["boxes"] == tf.TensorSpec([None, 4], tf.float32)
    assert spec["classes"] == tf.TensorSpec([None], tf.int32)
    assert spec["is_crowd"] == tf.TensorSpec([None], tf.bool)
    assert spec["image_id"] == tf.TensorSpec([], tf.int64)
    examples = list(dataset.as_numpy_iterator())
    assert [int(e["image_id"]) for e in examples] == [1, 2, 3, 4]
    source = synthetic_examples("validation", num_images=4)
    for e, s in zip(examples, source):
        np.testing.assert_array_equal(e["image"], s["image"])
        np.testing.assert_array_equal(e["boxes"], s["boxes"])
    small, _ = synthetic_dataset("test", num_images=2, image_size=64)
    assert next(iter(small))["image"].shape == (64, 64, 3)
