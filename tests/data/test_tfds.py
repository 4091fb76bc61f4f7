"""tfds conversions checked by hand, plus the VOC tables; loading is mocked."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kdet.data import VOC_CATEGORY_IDS, VOC_CLASS_NAMES, load_tfds, make_pipeline
from kdet.data.tfds_readers import (
    SUPPORTED_TFDS_NAMES,
    coco_example_from_tfds,
    image_id_from_filename,
    tfds_info,
    voc_example_from_tfds,
)


def test_coco_features_to_pixels_with_mismatched_lengths():
    features = {
        "image": tf.zeros([50, 100, 3], tf.uint8),
        "image/id": tf.constant(397133, tf.int64),
        "objects": {
            "bbox": tf.constant([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0],
                                 [0.2, 0.2, 0.3, 0.3]]),
            "label": tf.constant([0, 79], tf.int64),  # shorter: cuts the others
            "is_crowd": tf.constant([False, True, False]),
            "id": tf.constant([11, 12, 13, 14], tf.int64),  # (mock data's lengths differ: the shortest wins)
        },
    }
    ex = coco_example_from_tfds(features)
    assert ex["annotation_ids"].numpy().tolist() == [11, 12]  # named by the dropped-box warning
    np.testing.assert_allclose(ex["boxes"], [[5, 20, 25, 60], [0, 0, 50, 100]], rtol=1e-6)
    assert ex["classes"].numpy().tolist() == [0, 79]
    assert ex["is_crowd"].numpy().tolist() == [False, True]
    assert ex["image_id"].dtype == tf.int64 and int(ex["image_id"]) == 397133


def test_voc_features_shift_one_based_corners_and_difficult_is_crowd():
    # VOC pixel corners 1..W inclusive: xmin=1, xmax=100 spans the whole width.
    features = {
        "image": tf.zeros([50, 100, 3], tf.uint8),
        "image/filename": tf.constant("000005.jpg"),
        "objects": {
            "bbox": tf.constant([[1 / 50, 1 / 100, 1.0, 1.0], [0.2, 0.3, 0.4, 0.5]]),
            "label": tf.constant([14, 2], tf.int64),
            "is_difficult": tf.constant([False, True]),
        },
    }
    ex = voc_example_from_tfds(features)
    np.testing.assert_allclose(ex["boxes"], [[0, 0, 50, 100], [9, 29, 20, 50]], atol=1e-4)
    assert ex["classes"].numpy().tolist() == [14, 2]
    assert ex["is_crowd"].numpy().tolist() == [False, True]
    assert int(ex["image_id"]) == 5


def test_image_ids_from_filenames():
    def image_id(name):
        return int(image_id_from_filename(tf.constant(name)))

    assert image_id("000005.jpg") == 5
    assert image_id("2008_000123.jpg") == 2008000123
    hashed = image_id("no digits.jpg")
    assert hashed == image_id("no digits.jpg") and hashed >= 0
    assert hashed != image_id("other name.jpg")


def test_infos_and_unsupported_names():
    assert SUPPORTED_TFDS_NAMES == ("coco/2017", "voc/2007", "voc/2012")
    voc = tfds_info("voc/2012")
    assert voc.num_classes == 20 and voc.category_ids == tuple(range(1, 21))
    assert VOC_CLASS_NAMES[14] == "person" and VOC_CATEGORY_IDS[-1] == 20
    coco = tfds_info("coco/2017")
    assert coco.category_ids[0] == 1 and coco.class_names[0] == "person"
    assert coco.category_ids[79] == 90 and coco.class_names[79] == "toothbrush"
    for name in ("coco/2014", "voc", "kitti"):
        with pytest.raises(ValueError, match="coco/2017, voc/2007, voc/2012"):
            load_tfds(name, split="train")


@pytest.mark.parametrize("name", ["voc/2007", "voc/2012"])
def test_voc_under_mock_data_feeds_the_pipeline(name):
    with tfds.testing.mock_data(num_examples=4):
        dataset, info = load_tfds(name, split="train")
        batches = list(make_pipeline(dataset, image_size=(128, 128), batch_size=4,
                                     training=True, seed=0))
    images, targets = batches[0]
    assert images.shape == (4, 128, 128, 3)
    classes = targets["classes"].numpy()
    assert ((classes >= -1) & (classes < 20)).all()
    assert info.stats.as_dict()["dropped_boxes"] > 0  # mock boxes are often inverted


def test_an_unprepared_tfds_dataset_is_a_clear_error_naming_what_to_do(tmp_path, capsys):
    """No tfds traceback: the error names the dataset, the folder, the build command (faces: the embedded set)."""
    from kdet import cli

    with pytest.raises(ValueError) as error:
        load_tfds("wider_face", split="train", data_dir=str(tmp_path))
    text = str(error.value)
    for part in ("'wider_face' is not prepared", str(tmp_path), "tfds build wider_face", "--data embedded:faces:train"):
        assert part in text, (part, text)
    with pytest.raises(ValueError, match="'voc/2007' is not prepared") as error:
        load_tfds("voc/2007", split="test", data_dir=str(tmp_path))
    assert "embedded:faces" not in str(error.value)
    code = cli.main(["train", "face_cascade", "--data-dir", str(tmp_path), "--model-dir", str(tmp_path / "m"),
                     "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "'wider_face' is not prepared" in err and "Traceback" not in err, err
    with pytest.raises(ValueError, match="huggingface: datasets are not read by kdet.*tfds build wider_face"):
        load_tfds("huggingface:wider_face", split="train", data_dir=str(tmp_path))
