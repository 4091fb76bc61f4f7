"""SavedModel serving: both signatures for every detector, parity with Keras, label map, bad input."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdet import serving
from kdet.detectors.cascade_rcnn import CascadeRCNN
from kdet.face.cascade import FaceCascade
from kdet.detectors.retinanet import RetinaNet
from tests.detection_parity import assert_same_detections, block_image

SIZE = (128, 128)
RPN = dict(backbone=dict(name="tiny", freeze_batchnorm=False), fpn_filters=16, head_filters=16,
           proposals=dict(pre_nms_top_k_test=200, max_proposals_test=32))


def _retinanet():
    # prior 0.3: an untrained head already scores above the 0.05 threshold, so there is something to compare
    return RetinaNet(num_classes=3, backbone="tiny", fpn_filters=16,
                     head=dict(num_convs=1, filters=16, prior_probability=0.3),
                     postprocess=dict(pre_nms_top_k=50, max_detections=20))


def _cascade():
    return CascadeRCNN(num_classes=3, rpn=RPN, fc_dim=32, postprocess=dict(max_detections=20, score_threshold=0.2))


def _faces():
    return FaceCascade(test=dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=40, stage2_max_boxes=10, max_detections=7))


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _as_contract(outputs: dict, size=SIZE) -> dict:
    """SavedModel outputs (normalised, 1-based float classes) -> the contract in pixels."""
    h, w = size
    return {"boxes": outputs["detection_boxes"].numpy() * [h, w, h, w], "scores": outputs["detection_scores"].numpy(),
            "classes": outputs["detection_classes"].numpy().astype(int) - 1,
            "num_detections": outputs["num_detections"].numpy().astype(int)}


@pytest.fixture(scope="module", params=["retinanet", "cascade_rcnn", "face_cascade"])
def exported(request, tmp_path_factory):
    import keras

    keras.utils.set_random_seed(7)
    model = {"retinanet": _retinanet, "cascade_rcnn": _cascade, "face_cascade": _faces}[request.param]()
    model.detect(tf.zeros((1,) + SIZE + (3,)))  # builds every layer
    path = str(tmp_path_factory.mktemp(request.param) / "1")
    serving.export_saved_model(model, path, input_size=SIZE)
    return request.param, model, path, tf.saved_model.load(path)


def test_both_signatures_match_keras(exported):
    name, model, _, loaded = exported
    image = block_image()
    keras_out = {k: v.numpy() for k, v in model.detect(tf.constant(image[None], tf.float32)).items()}
    assert keras_out["num_detections"][0] > 0, "nothing detected: the comparison would be empty"
    assert set(loaded.signatures) == {"serving_default", "serving_bytes"}
    default = loaded.signatures["serving_default"](input_tensor=tf.constant(image[None]))
    assert sorted(default) == sorted(serving.OUTPUT_NAMES)
    assert_same_detections(keras_out, _as_contract(default), min_iou=0.99, score_tolerance=1e-4)
    from_bytes = loaded.signatures["serving_bytes"](input_tensor=tf.constant([_png(image)]))
    assert_same_detections(keras_out, _as_contract(from_bytes), min_iou=0.99, score_tolerance=1e-4)


def test_label_map_travels_as_an_asset(exported):
    name, model, path, _ = exported
    expected = {1: "face"} if name == "face_cascade" else {1: "class_1", 2: "class_2", 3: "class_3"}
    assert serving.load_label_map(path) == expected


def test_other_sizes_are_letterboxed_and_boxes_normalised_to_the_original(exported):
    _, model, _, loaded = exported
    image = block_image(1, (64, 100))  # scale 1.28 into 128x128, padded at the bottom
    out = loaded.signatures["serving_default"](input_tensor=tf.constant(image[None]))
    canvas = np.zeros(SIZE + (3,), np.float32)
    canvas[:82, :128] = tf.image.resize(image[None].astype(np.float32), (82, 128))[0].numpy()
    reference = {k: v.numpy() for k, v in model.detect(tf.constant(canvas[None])).items()}
    reference["boxes"] = np.clip(reference["boxes"] / 1.28 / [64, 100, 64, 100], 0, 1)
    n = int(reference["num_detections"][0])  # the module drops boxes wholly in the padding
    inside = (reference["boxes"][0, :n, 2] > reference["boxes"][0, :n, 0]) & (
        reference["boxes"][0, :n, 3] > reference["boxes"][0, :n, 1])
    reference = {"boxes": reference["boxes"][:, :n][:, inside], "scores": reference["scores"][:, :n][:, inside],
                 "classes": reference["classes"][:, :n][:, inside], "num_detections": [int(inside.sum())]}
    got = {"boxes": out["detection_boxes"].numpy(), "scores": out["detection_scores"].numpy(),
           "classes": out["detection_classes"].numpy().astype(int) - 1,
           "num_detections": out["num_detections"].numpy().astype(int)}
    assert_same_detections(reference, got, min_iou=0.99, score_tolerance=1e-4)
    n = int(got["num_detections"][0])
    assert (out["detection_classes"].numpy()[0, n:] == 0).all() and (got["boxes"][0, n:] == 0).all()


def test_bad_input_and_edge_cases():
    import keras

    keras.utils.set_random_seed(7)
    model = _retinanet()
    module = serving.DetectionServingModule(model, input_size=SIZE, class_names=["a", "b", "c"])
    default, from_bytes = module.serving_default, module.serving_bytes
    empty = default(tf.zeros([2, 0, 50, 3], tf.uint8))
    assert empty["num_detections"].numpy().tolist() == [0, 0]
    assert empty["detection_boxes"].shape == (2, 20, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="channels must be 3"):
        default(tf.zeros([1, 8, 8, 4], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not compatible|\[batch, height, width, 3\]"):
        default(tf.zeros([8, 8, 3], tf.uint8))
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="uint8"):
        module.signatures()["serving_default"](input_tensor=tf.zeros([1, 8, 8, 3], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="not an encoded JPEG, PNG"):
        from_bytes(tf.constant([b"definitely not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="PNG"):
        from_bytes(tf.constant([_png(block_image())[:100]]))  # truncated
    # grey and RGBA PNGs are converted to RGB: the same detections as the RGB image
    grey = np.asarray(Image.fromarray(block_image()).convert("L"))
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    reference = default(tf.constant(rgb[None]))
    for encoded in (_png(grey), _png(np.concatenate([rgb, np.full(SIZE + (1,), 255, np.uint8)], -1))):
        got = from_bytes(tf.constant([encoded]))
        np.testing.assert_allclose(got["detection_scores"].numpy(), reference["detection_scores"].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="class_names has 2 names"):
        serving.DetectionServingModule(model, input_size=SIZE, class_names=["a", "b"])


def test_the_label_maps_temporary_folder_goes_with_its_module():
    import gc
    import os

    module = serving.DetectionServingModule(_retinanet(), input_size=SIZE)
    folder = os.path.dirname(module.label_map.asset_path.numpy().decode())
    assert os.path.isfile(os.path.join(folder, serving.LABEL_MAP_FILE))
    del module
    gc.collect()
    assert not os.path.exists(folder), "every export left a kdet_label_map_* folder in the temp directory"


def test_label_map_text_round_trip():
    names = ["person", 'say "hi"', "back\\slash"]
    assert serving.parse_label_map(serving.label_map_pbtxt(names)) == {1: names[0], 2: names[1], 3: names[2]}
    ids = [3, 7, 42]
    assert serving.parse_label_map(serving.label_map_pbtxt(names, ids)) == dict(zip(ids, names))


def test_detection_classes_are_the_datasets_category_ids(tmp_path):
    """A model trained on non-contiguous category ids serves them: label map and detection_classes (TF OD API)."""
    import keras

    from kdet.model_dir import load_model_dir, save_model_dir
    from kdet.serving.export import export_model_dir, format_summary

    keras.utils.set_random_seed(7)
    model = _retinanet()
    model.detect(tf.zeros((1,) + SIZE + (3,)))
    ids = (3, 7, 42)
    save_model_dir(model, str(tmp_path / "model"), input_size=SIZE, class_names=["cat", "dog", "zebra"],
                   category_ids=ids)
    loaded_model, _ = load_model_dir(str(tmp_path / "model"))
    assert loaded_model.category_ids == ids  # the model directory keeps them
    summary = export_model_dir(str(tmp_path / "model"), format="savedmodel", out=str(tmp_path / "served" / "1"))
    assert summary["label_map"] == {3: "cat", 7: "dog", 42: "zebra"}
    image = block_image()
    keras_out = {k: v.numpy() for k, v in model.detect(tf.constant(image[None], tf.float32)).items()}
    n = int(keras_out["num_detections"][0])
    assert n > 0 and len(set(keras_out["classes"][0, :n].tolist())) > 1, "the check needs several classes"
    served = tf.saved_model.load(str(tmp_path / "served" / "1"))
    for name, request in (("serving_default", tf.constant(image[None])), ("serving_bytes", tf.constant([_png(image)]))):
        out = served.signatures[name](input_tensor=request)
        classes = out["detection_classes"].numpy()[0]
        assert int(out["num_detections"][0]) == n, name
        np.testing.assert_array_equal(classes[:n], np.asarray(ids)[keras_out["classes"][0, :n]], err_msg=name)
        assert (classes[n:] == 0).all(), name  # padding
    # the TFLite summary's class lines (the TFLite model reports class indices: kdet export lists their ids)
    lines = format_summary({"format": "tflite", "path": "m.tflite", "bytes": 1, "input_size": list(SIZE),
                            "quantization": "float32", "flex_ops": [], "inputs": {}, "outputs": {}, "ops": {},
                            "class_names": ["cat", "dog", "zebra"], "category_ids": list(ids)})
    assert "classes (output index: category id and name): 3 cat, 7 dog, 42 zebra" in lines
    with pytest.raises(ValueError, match="category_ids must be 3 distinct positive ids"):
        serving.DetectionServingModule(model, input_size=SIZE, category_ids=[3, 3, 4])
