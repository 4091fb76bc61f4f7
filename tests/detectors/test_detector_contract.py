"""The contract every detector shares through :class:`kdet.detectors.base.Detector`.

Config round trip (chained to Keras' own), ``predict`` keys and shapes, the
labels and evaluation kind that generic code asks for, the export twin, and
model directories that keep all of it (and still read the older format).
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.detectors import CascadeRCNN, Detector, FaceCascade, RegionProposalNetwork, RetinaNet
from kdet.face.rcnn import face_rcnn
from kdet.model_dir import load_model_dir, read_model_info, save_model_dir
from tests.serving.test_savedmodel import RPN

SIZE = (128, 128)
BUILDERS = {
    "retinanet": lambda: RetinaNet(num_classes=3, backbone="tiny", fpn_filters=16, head=dict(num_convs=1, filters=16),
                                   postprocess=dict(max_detections=20)),
    "cascade_rcnn": lambda: CascadeRCNN(num_classes=3, rpn=RPN, fc_dim=32, postprocess=dict(max_detections=20)),
    "rpn": lambda: RegionProposalNetwork(**RPN),
    "face_cascade": lambda: FaceCascade(test=dict(stage1_max_boxes=40, stage2_max_boxes=10, max_detections=7)),
    "face_rcnn": lambda: face_rcnn(rpn=dict(backbone=dict(name="tiny"), fpn_filters=16, head_filters=16), fc_dim=32),
}
EXPECTED = {  # (evaluation, class names, export switches)
    "retinanet": ("coco", ("class_1", "class_2", "class_3"), {}),
    "cascade_rcnn": ("coco", ("class_1", "class_2", "class_3"), {"use_gather_roi_align": True}),
    "rpn": ("coco", ("object",), {}),
    "face_cascade": ("face", ("face",), {"use_gather": True}),
    "face_rcnn": ("face", ("face",), {"use_gather_roi_align": True}),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_detector_keeps_the_contract(name):
    keras.utils.set_random_seed(3)
    model = BUILDERS[name]()
    assert isinstance(model, Detector)
    evaluation, names, switches = EXPECTED[name]
    assert (model.evaluation, model.class_names, type(model).export_switches) == (evaluation, names, switches)
    assert model.category_ids == tuple(range(1, len(names) + 1))
    config = model.get_config()
    assert {"name", "trainable", "dtype"} <= set(config)  # chained to keras.Model.get_config
    assert type(model).from_config(config).get_config() == config
    found = model.predict(np.zeros((2,) + SIZE + (3,), np.uint8), verbose=0)
    assert sorted(found) == ["boxes", "classes", "num_detections", "scores"]
    k = found["scores"].shape[1]
    assert found["boxes"].shape == (2, k, 4) and found["classes"].shape == (2, k)
    assert found["num_detections"].shape == (2,)
    with pytest.raises(ValueError, match=f"class_names has 9 entries but the {type(model).__name__} has"):
        model.set_labels([f"n{i}" for i in range(9)])


def test_labels_travel_in_the_config_and_the_model_directory(tmp_path):
    keras.utils.set_random_seed(3)
    model = BUILDERS["retinanet"]()
    model.set_labels(["cat", "dog", "zebra"], [3, 7, 42])
    assert model.get_config()["class_names"] == ["cat", "dog", "zebra"]
    assert RetinaNet.from_config(model.get_config()).category_ids == (3, 7, 42)
    model.detect(tf.zeros((1,) + SIZE + (3,)))
    path = save_model_dir(model, str(tmp_path / "m"), input_size=SIZE)
    loaded, info = load_model_dir(path)
    assert (loaded.class_names, loaded.category_ids, loaded.evaluation) == (("cat", "dog", "zebra"), (3, 7, 42),
                                                                            "coco")
    assert info.class_names == ["cat", "dog", "zebra"]
    assert "dtype" not in json.loads((tmp_path / "m" / "kdet_model.json").read_text())["config"]


def test_older_model_directories_load_and_newer_ones_are_refused(tmp_path):
    keras.utils.set_random_seed(3)
    model = FaceCascade(test=dict(stage1_max_boxes=40, stage2_max_boxes=10, max_detections=7))
    model.detect(tf.zeros((1,) + SIZE + (3,)))
    path = save_model_dir(model, str(tmp_path / "m"), input_size=SIZE)
    record_path = tmp_path / "m" / "kdet_model.json"
    record = json.loads(record_path.read_text())
    old = dict(record)  # version 1: no version field, no labels or evaluation in the config, no hash
    old.pop("format_version")
    old.pop("weights_sha256")
    old["config"] = {k: v for k, v in record["config"].items()
                     if k not in ("class_names", "category_ids", "evaluation", "name", "trainable")}
    record_path.write_text(json.dumps(old))
    loaded, _ = load_model_dir(path)
    assert loaded.evaluation == "face" and loaded.class_names == ("face",)
    record_path.write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99 is newer than this kdet reads"):
        read_model_info(path)


def test_the_export_variant_is_the_twin_with_the_same_weights():
    keras.utils.set_random_seed(3)
    model = BUILDERS["face_cascade"]()
    twin = model.export_variant(SIZE)
    assert twin is not model and twin.get_config()["use_gather"] and not model.get_config()["use_gather"]
    for a, b in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert twin.export_variant(SIZE) is twin
    plain = BUILDERS["retinanet"]()
    assert plain.export_variant(SIZE) is plain
