"""The face cascade with every tensor of a fixed size, and exported without its final NMS (for a mobile GPU).

``static_budgets`` runs the later stages on their whole budgets and masks the
rejected boxes; it must give the survivors' form's detections. ``kdet export
--static-shapes --no-nms`` must then write a file with no data-dependent shape
whose candidates, through the host's NMS, are ``detect``'s detections.
"""

import numpy as np
import pytest
import tensorflow as tf

from kdet.boxes import host_final_nms
from kdet.data.faces import face_examples
from kdet.face.cascade import FaceCascade
from kdet.model_dir import build_for
from kdet.serving.gpu import gpu_report
from tests.detection_parity import assert_same_detections

VALIDATION = [e["image"] for e in face_examples("validation", num_images=4)]  # 480x640


def _twins(model, size):
    """``(survivors' form, static form)`` of ``model``, same weights."""
    build_for(model, size)
    static = build_for(FaceCascade.from_config({**model.get_config(), "static_budgets": True}), size)
    static.set_weights(model.get_weights())
    return model, static


def _detect(model, image):
    return {k: v.numpy() for k, v in model.detect(tf.constant(image[None], tf.float32)).items()}


def test_static_budgets_give_the_same_detections_on_the_validation_images():
    """The paper's branches (pyramid crops, top-k budgets) with random weights: many survivors at each stage."""
    tf.keras.utils.set_random_seed(3)
    dynamic, static = _twins(FaceCascade(test={"thresholds": (0.3, 0.3, 0.3), "stage1_max_boxes": 64,
                                               "stage2_max_boxes": 16}), (480, 640))
    for image in VALIDATION:
        a, b = _detect(dynamic, image), _detect(static, image)
        assert a["num_detections"][0] > 0
        assert_same_detections(a, b, min_iou=0.999, score_tolerance=1e-5)


def test_static_mtcnn_same_detections_static_tflite_and_host_nms(tmp_path):
    """MTCNN's weights (NMS budgets, corner crops, landmarks): Keras twins agree on the validation images; the
    static export without NMS has no data-dependent shape, and host NMS over its candidates gives detect's faces."""
    pytest.importorskip("mtcnn", reason="the mtcnn package (pip install -e .[test]) holds MTCNN's weights")
    from kdet import cli
    from kdet.face import from_mtcnn
    from kdet.face.mtcnn_weights import save_mtcnn_model_dir
    from kdet.serving import tflite

    dynamic, static = _twins(from_mtcnn(), (480, 640))
    found = 0
    for image in VALIDATION:
        a, b = _detect(dynamic, image), _detect(static, image)
        found += a["num_detections"][0]
        assert_same_detections(a, b, min_iou=0.999, score_tolerance=1e-5)
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=1e-3)
    assert found > 0

    size = (240, 320)  # small: the export stays quick
    model_dir = save_mtcnn_model_dir(str(tmp_path / "mtcnn"), input_size=size)
    out = str(tmp_path / "gpu.tflite")
    assert cli.main(["export", "--model-dir", model_dir, "--format", "tflite", "--out", out, "--static-shapes",
                     "--no-nms"]) == 0
    flatbuffer = open(out, "rb").read()
    report = gpu_report(flatbuffer)
    assert report["dynamic_tensors"] == 0 and "NON_MAX_SUPPRESSION_V5" in report["rejected"]  # MTCNN's stage NMS
    assert report["gpu_macs"] == report["macs"] > 0  # every convolution and fully-connected layer
    runner = tflite.LiteRTDetector(flatbuffer)
    settings = dynamic.final_nms_settings()
    faces = 0
    for image in VALIDATION:
        canvas = tf.image.resize(image, size, antialias=True).numpy().round().astype(np.uint8)
        expected = _detect(dynamic, canvas)
        candidates = runner(canvas)
        assert set(candidates) == {"boxes", "scores", "keypoints"} and candidates["scores"].shape == (1, 100)
        kept = host_final_nms(candidates["boxes"][0], candidates["scores"][0], **settings)
        n = int(expected["num_detections"][0])
        faces += n
        assert len(kept) == n
        assert_same_detections(expected, {"boxes": candidates["boxes"][0][kept][None],
                                          "scores": candidates["scores"][0][kept][None],
                                          "classes": np.zeros((1, n), np.int32), "num_detections": np.int32([n])},
                               min_iou=0.99, score_tolerance=1e-4)
    assert faces > 0


def test_the_gpu_report_sees_data_dependent_shapes_and_missing_kernels():
    """The survivors' form has tensors of data-dependent size (no GPU), and its NMS, top-k are CPU-only."""
    tf.keras.utils.set_random_seed(0)
    model = build_for(FaceCascade(use_gather=True, test={"stage1_max_boxes": 16, "stage2_max_boxes": 4}), (48, 64))
    from kdet.serving import tflite

    report = gpu_report(tflite.convert(model, input_size=(48, 64)))
    assert report["dynamic_tensors"] > 0 and report["gpu_ops"] < report["ops"]
    assert report["rejected"]["TOPK_V2"]["reason"] == "no GPU kernel"
    assert report["rejected"]["NON_MAX_SUPPRESSION_V5"]["reason"] == "no GPU kernel"
    assert any(entry["reason"] == "a tensor of data-dependent shape" for entry in report["rejected"].values())
    assert 0 < report["gpu_macs"] < report["macs"]  # x12 over the pyramid is static, the later stages are not


def test_no_nms_export_is_refused_for_a_detector_without_candidates(tmp_path, capsys):
    """A clear error before any conversion, naming the detector; and the flags are TFLite's only."""
    from kdet import cli
    from kdet.detectors.retinanet import RetinaNet
    from kdet.model_dir import save_model_dir

    model = build_for(RetinaNet(num_classes=1, backbone="tiny", fpn_filters=16), (128, 128))
    model_dir = save_model_dir(model, str(tmp_path / "model"), input_size=(128, 128))
    out = str(tmp_path / "r.tflite")
    assert cli.main(["export", "--model-dir", model_dir, "--format", "tflite", "--out", out, "--no-nms"]) == 2
    assert "RetinaNet has no export without the final NMS" in capsys.readouterr().err
    assert not (tmp_path / "r.tflite").exists()
    assert cli.main(["export", "--model-dir", model_dir, "--format", "savedmodel", "--out", str(tmp_path / "s"),
                     "--static-shapes"]) == 2
    assert "apply to --format tflite only" in capsys.readouterr().err
