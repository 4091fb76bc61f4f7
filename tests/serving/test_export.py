"""Model directories, data strings and ``kdet export`` end to end."""

import json

import numpy as np
import pytest
import tensorflow as tf

from kdet import cli
from kdet.data.sources import open_source
from kdet.face.cascade import FaceCascade
from kdet.detectors.retinanet import RetinaNet
from kdet.model_dir import load_model_dir, read_model_info, save_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(3)
    model = RetinaNet(num_classes=3, backbone="tiny", fpn_filters=16,
                      head=dict(num_convs=1, filters=16, prior_probability=0.3), postprocess=dict(max_detections=10))
    model.detect(tf.zeros([1, 128, 128, 3]))
    path = str(tmp_path_factory.mktemp("model"))
    save_model_dir(model, path, input_size=(128, 128), class_names=["circle", "square", "triangle"],
                   data="embedded:shapes:validation[:4]", recipe={"name": "test"})
    return path, model


def test_model_dir_round_trip(model_dir):
    path, model = model_dir
    loaded, info = load_model_dir(path)
    assert info.class_names == ["circle", "square", "triangle"] and info.input_size == (128, 128)
    as_json = lambda config: json.loads(json.dumps(config))  # noqa: E731 (tuples come back as lists)
    assert info.recipe == {"name": "test"} and as_json(loaded.get_config()) == as_json(model.get_config())
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="kdet_model.json is missing"):
        read_model_info(str(path) + "_nowhere")


def test_face_model_dir_round_trip(tmp_path):
    model = FaceCascade(test=dict(thresholds=(0.2, 0.1, 0.5)))
    model.build(None)
    save_model_dir(model, str(tmp_path), input_size=(96, 128), class_names=["face"])
    loaded, _ = load_model_dir(str(tmp_path), use_gather=True)
    assert loaded.get_config()["use_gather"] and loaded.test_spec.thresholds == (0.2, 0.1, 0.5)


def test_data_strings():
    dataset, info = open_source("embedded:shapes:validation[:3]")
    assert len(list(dataset)) == 3 and info.num_classes > 1
    faces, face_info = open_source("embedded:faces:validation[:2]")
    assert len(list(faces)) == 2 and list(face_info.class_names) == ["face"]
    for bad, message in [("shapes", "expected one of"), ("embedded:cats", "embedded sets are"),
                         ("tfds:coco/2017", "needs a name and a split"), ("embedded:faces:dev", "splits")]:
        with pytest.raises(ValueError, match=message):
            open_source(bad)
    with pytest.raises(FileNotFoundError, match="annotation file"):
        open_source("coco-json:/nowhere/instances.json")


def test_data_strings_with_slices_and_joined_sets():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):  # (mock data gives 6 examples per load, slices or not)
        sliced, info = open_source("tfds:voc/2007:validation[:2]")  # a ":" inside the split's slice
        assert info.name == "voc/2007" and len(list(sliced)) == 6
        joined, info = open_source("tfds:voc/2007:train+validation,tfds:voc/2012:train[:3]")
        assert len(list(joined)) == 6 + 6 and info.num_classes == 20
    shapes, _ = open_source("embedded:shapes:validation[:2], embedded:shapes:train[:3]")
    assert len(list(shapes)) == 5
    with pytest.raises(ValueError, match="joined sets need the same"):
        open_source("embedded:shapes:validation[:2],embedded:faces:validation[:2]")
    with pytest.raises(ValueError, match="empty part"):
        open_source("embedded:shapes,")


def test_kdet_export_savedmodel_and_tflite(model_dir, tmp_path, capsys):
    path, model = model_dir
    saved = str(tmp_path / "serving" / "1")
    assert cli.main(["export", "--model-dir", path, "--format", "savedmodel", "--out", saved]) == 0
    printed = capsys.readouterr().out
    assert "signature serving_bytes" in printed and "detection_boxes" in printed and "triangle" in printed
    image = np.random.default_rng(0).integers(0, 255, (1, 128, 128, 3)).astype(np.uint8)
    out = tf.saved_model.load(saved).signatures["serving_default"](input_tensor=tf.constant(image))
    expected = model.detect(tf.constant(image, tf.float32))
    np.testing.assert_allclose(out["detection_scores"].numpy(), expected["scores"].numpy(), atol=1e-4)

    lite = str(tmp_path / "model_int8.tflite")
    assert cli.main(["export", "--model-dir", path, "--format", "tflite", "--quantization", "int8",
                     "--calibration-images", "4", "--out", lite]) == 0
    printed = capsys.readouterr().out
    assert "Flex ops: none" in printed and "CONV_2D" in printed and "uint8 [1, 128, 128, 3]" in printed
    assert "classes (output index: category id and name): 1 circle, 2 square, 3 triangle" in printed

    assert cli.main(["export", "--model-dir", str(tmp_path / "missing"), "--format", "tflite", "--out", lite]) == 2
    assert "kdet_model.json is missing" in capsys.readouterr().err
    assert cli.main(["export", "--model-dir", path, "--format", "savedmodel", "--quantization", "int8",
                     "--out", saved]) == 2
    assert "--format tflite only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", "--model-dir", path, "--format", "onnx", "--out", lite])


def test_evaluate_tflite_scores_the_files_detections_as_keras_scores_its_own(tmp_path, capsys):
    """``kdet evaluate --tflite``: a float32 file gives the Keras model's detections on the same letterboxed
    images, so the same results; a missing file is named."""
    import keras

    from kdet.data.synthetic import synthetic_info
    from kdet.inference import evaluate_model_dir

    keras.utils.set_random_seed(3)
    info = synthetic_info()
    model = RetinaNet(num_classes=info.num_classes, backbone="tiny", fpn_filters=16,
                      head=dict(num_convs=1, filters=16, prior_probability=0.3), postprocess=dict(max_detections=10))
    model.detect(tf.zeros([1, 128, 128, 3]))
    path = save_model_dir(model, str(tmp_path / "model"), input_size=(128, 128), class_names=info.class_names,
                          category_ids=info.category_ids, data="embedded:shapes:validation[:3]")
    lite = str(tmp_path / "model.tflite")
    assert cli.main(["export", "--model-dir", path, "--format", "tflite", "--out", lite]) == 0
    assert cli.main(["evaluate", "--model-dir", path, "--tflite", lite]) == 0
    assert "AP50" in capsys.readouterr().out
    assert cli.main(["evaluate", "--model-dir", path, "--tflite", str(tmp_path / "nope.tflite")]) == 2
    assert "nope.tflite" in capsys.readouterr().err
    results = {}
    for name, tflite in (("keras", None), ("tflite", lite)):
        out = str(tmp_path / f"{name}.json")
        evaluate_model_dir(path, batch_size=2, results_json=out, progress=False, tflite=tflite)
        with open(out) as f:
            found = json.load(f)
        results[name] = sorted((d["image_id"], d["category_id"], round(d["score"], 3)) for d in found)
    assert len(results["keras"]) > 0 and len(results["tflite"]) == len(results["keras"])
    for a, b in zip(results["keras"], results["tflite"]):
        assert a[:2] == b[:2] and abs(a[2] - b[2]) <= 2e-3, (a, b)


def test_int8_calibrates_on_the_training_data_by_default():
    from kdet.model_dir import ModelInfo
    from kdet.serving.export import calibration_source

    info = ModelInfo(detector="kdet>RetinaNet", config={}, input_size=(128, 128), class_names=["a"],
                     data="embedded:shapes:validation[:8]", recipe={"train_data": "embedded:shapes:train[:100]"})
    assert calibration_source(info) == "embedded:shapes:train[:100]"
    assert calibration_source(info, "tfds:coco/2017:train") == "tfds:coco/2017:train"
    older = ModelInfo(detector="kdet>RetinaNet", config={}, input_size=(128, 128), class_names=["a"],
                      data="embedded:shapes:validation[:8]")  # a directory whose record names no training data
    assert calibration_source(older) == "embedded:shapes:validation[:8]"
    with pytest.raises(ValueError, match="int8 needs calibration images"):
        calibration_source(ModelInfo(detector="kdet>RetinaNet", config={}, input_size=(128, 128), class_names=["a"]))
