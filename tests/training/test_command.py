"""``kdet train``, ``kdet evaluate`` and ``kdet detect`` end to end on the tiny recipe."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from kdet import cli
from tests.paths import TINY_RECIPE

RECIPE = TINY_RECIPE


def _tags(folder):
    tags = set()
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("run") / "tiny")
    assert cli.main(["train", RECIPE, "--model-dir", model_dir, "--steps", "6", "--backup-every", "2"]) == 0
    return model_dir


def test_train_writes_model_dir_best_weights_and_tensorboard(trained, capsys):
    for name in ("kdet_model.json", "model.weights.h5", "best.weights.h5", "metrics.json",
                 "backup/step-000000006/model.weights.h5"):
        assert os.path.isfile(os.path.join(trained, name)), name
    train_tags = _tags(os.path.join(trained, "logs", "train"))
    validation_tags = _tags(os.path.join(trained, "logs", "validation"))
    for term in ("loss", "cls_loss", "box_loss", "learning_rate"):
        assert f"epoch_{term}" in train_tags, (term, sorted(train_tags))
    assert {"epoch_AP", "epoch_AP50", "detections"} <= validation_tags, sorted(validation_tags)
    # Run again: the backup says the schedule is done, nothing is retrained and the weights stay as trained.
    weights = os.path.join(trained, "model.weights.h5")
    with open(weights, "rb") as f:
        trained_bytes = f.read()
    assert cli.main(["train", RECIPE, "--model-dir", trained, "--steps", "6", "--no-eval"]) == 0
    assert "6 steps (from step 6)" in capsys.readouterr().out
    with open(weights, "rb") as f:
        assert f.read() == trained_bytes


def test_evaluate_on_a_tfds_split_under_mock_data(tmp_path, capsys):
    model_dir = str(tmp_path / "coco_tiny")
    with tfds.testing.mock_data(num_examples=4):
        assert cli.main(["train", RECIPE, "--model-dir", model_dir, "--data", "tfds:coco/2017:train",
                         "--val-data", "tfds:coco/2017:validation", "--steps", "2", "--no-eval"]) == 0
        capsys.readouterr()
        assert cli.main(["evaluate", "--model-dir", model_dir, "--data", "tfds:coco/2017:validation",
                         "--max-images", "4"]) == 0
    out = capsys.readouterr().out
    assert "AP  AP50" in out and "AR100" in out
    # Data whose classes do not match the model's: a clear error, exit code 2.
    assert cli.main(["evaluate", "--model-dir", model_dir, "--data", "embedded:shapes:validation[:2]"]) == 2
    assert "classes" in capsys.readouterr().err


def test_detect_writes_pngs_and_refuses_bad_files(trained, tmp_path, capsys):
    image = (np.random.default_rng(0).random((90, 150, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "street.jpg")
    out = tmp_path / "drawn"
    assert cli.main(["detect", str(tmp_path / "street.jpg"), "--model-dir", trained, "--out", str(out)]) == 0
    drawn = np.asarray(Image.open(out / "street.png"))
    assert drawn.shape == (90, 150, 3)
    assert "street.png" in capsys.readouterr().out
    (tmp_path / "notes.jpg").write_bytes(b"not an image at all")
    assert cli.main(["detect", str(tmp_path / "notes.jpg"), "--model-dir", trained, "--out", str(out)]) == 2
    assert "notes.jpg" in capsys.readouterr().err
    assert cli.main(["detect", str(tmp_path / "missing.png"), "--model-dir", trained, "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "no_such_recipe"], "recipe 'no_such_recipe' not found"),
    (["train", RECIPE + ":coco"], "no variant 'coco'; variants: shapes"),
    (["train", RECIPE, "--data", "imagenet:train"], "expected one of tfds:NAME:SPLIT"),
    (["evaluate", "--model-dir", "/nonexistent/dir"], "not a kdet model directory"),
    (["train", "face_rcnn", "--smoke", "--steps", "3", "--no-eval"], "counts its schedule in epochs"),
    (["train", "face_cascade", "--steps", "3"], "counts its schedule in epochs"),  # before reading WIDER FACE
    (["train", "cascade_rcnn_fpn", "--backbone-weights", "shapes"], "for the tiny backbone only, not 'resnet50'"),
    (["train", RECIPE, "--image-size", "100", "128"], "multiples of 128 (its largest stride)"),
])
def test_errors_name_the_bad_argument(argv, message, capsys, tmp_path):
    if argv[0] == "train":
        argv = argv + ["--model-dir", str(tmp_path / "model")]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_image_size_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", RECIPE, "--image-size", "0", "128"])
    assert "expected a positive integer" in capsys.readouterr().err
