"""Two-stage detectors as builtins-only TFLite: the face RPN + Fast R-CNN and the 3-stage Cascade R-CNN.

RoIAlign runs through its gather twin (``export_variant``), proposals through NMS V5 padded to fixed
budgets, so the files have no Flex op and no tensor of data-dependent shape, and LiteRT gives Keras'
detections on the embedded images (IoU >= 0.99, scores within 1e-4).
"""

import keras
import pytest
import tensorflow as tf

from kdet.data.faces import face_examples
from kdet.detectors.cascade_rcnn import CascadeRCNN
from kdet.face.rcnn import face_rcnn
from kdet.model_dir import build_for
from kdet.serving import tflite
from kdet.serving.gpu import gpu_report
from tests.detection_parity import assert_same_detections

SIZE = (128, 160)


def _cascade():
    return CascadeRCNN(num_classes=3, rpn=dict(backbone=dict(name="tiny"), fpn_filters=16, head_filters=16),
                       fc_dim=32, postprocess=dict(max_detections=20))


@pytest.mark.parametrize("build", [face_rcnn, _cascade], ids=["face_rcnn", "cascade_rcnn_3_stages"])
def test_two_stage_tflite_is_builtins_only_static_and_matches_keras(build):
    keras.utils.set_random_seed(0)
    model = build_for(build(), SIZE)
    flatbuffer = tflite.convert(model.export_variant(SIZE), input_size=SIZE)
    assert tflite.flex_ops(flatbuffer) == []
    report = gpu_report(flatbuffer)
    assert report["dynamic_tensors"] == 0 and report["gpu_macs"] == report["macs"] > 0
    runner = tflite.LiteRTDetector(flatbuffer)
    found = 0
    for example in face_examples("validation", num_images=1, image_size=SIZE):
        expected = {k: v.numpy() for k, v in model.detect(tf.constant(example["image"][None], tf.float32)).items()}
        found += int(expected["num_detections"][0])
        assert_same_detections(expected, runner(example["image"]), min_iou=0.99, score_tolerance=1e-4)
    assert found > 0  # random weights still detect: the comparison is not of empty outputs
