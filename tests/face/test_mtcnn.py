"""MTCNN's published weights in kdet (kdet.face.mtcnn): each network equals the ``mtcnn`` package's, and
kdet's test pipeline finds the package's faces on real photographs.

``mtcnn`` 1.0.0 is in the test extra; without it these skip (it is never a runtime requirement).
"""

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("mtcnn", reason="the mtcnn package (pip install -e .[test]) holds MTCNN's weights")

from benchmarks import face_peers as fp  # noqa: E402
from kdet.boxes import pairwise_iou_numpy  # noqa: E402
from kdet.data import real_faces  # noqa: E402
from kdet.face import from_mtcnn  # noqa: E402
from kdet.face.pyramid import corner_sampled_boxes, crop_boxes_for  # noqa: E402

RNG = np.random.default_rng(0)
YXYX = [1, 0, 3, 2]


@pytest.fixture(scope="module")
def model():
    return from_mtcnn()


@pytest.fixture(scope="module")
def package_networks():
    from mtcnn.stages.stage_onet import StageONet
    from mtcnn.stages.stage_pnet import StagePNet
    from mtcnn.stages.stage_rnet import StageRNet

    return StagePNet().model, StageRNet().model, StageONet().model


def test_pnet_equals_the_package(model, package_networks):
    images = RNG.uniform(0, 255, (2, 37, 45, 3)).astype(np.float32)
    x = model.preprocess(tf.constant(images))
    np.testing.assert_allclose(x.numpy(), (images - 127.5) / 128, atol=1e-6)  # MTCNN's normalisation
    reg, prob = package_networks[0](x)
    out = model.x12(x)
    assert out["feature"].shape == (2, 14, 18, 32)  # 37 -> 35 -> 18 (same pooling) -> 16 -> 14
    np.testing.assert_allclose(tf.nn.softmax(out["logits"]).numpy(), prob.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["offsets"].numpy(), reg.numpy()[..., YXYX], atol=1e-4)


@pytest.mark.parametrize("depth", [2, 3])
def test_rnet_and_onet_equal_the_package_whatever_the_linked_feature(model, package_networks, depth):
    """The cross-stage links start at zero: any earlier feature leaves MTCNN's outputs unchanged."""
    side, branch, previous = (24, model.x24, 32) if depth == 2 else (48, model.x48, 160)
    patches = RNG.uniform(-1, 1, (6, side, side, 3)).astype(np.float32)
    expected = package_networks[depth - 1](patches)
    for feature in (np.zeros((6, previous), np.float32), RNG.normal(0, 3, (6, previous)).astype(np.float32)):
        out = branch((tf.constant(patches), tf.constant(feature)))
        np.testing.assert_allclose(tf.nn.softmax(out["logits"]).numpy(), expected[-1].numpy(), atol=1e-4)
        np.testing.assert_allclose(out["offsets"].numpy(), expected[0].numpy()[:, YXYX], atol=1e-4)
        if depth == 3:  # O-Net's landmarks: package (x1..x5, y1..y5) -> kdet (y1, x1, ..., y5, x5)
            landmarks = out["landmarks"].numpy()
            np.testing.assert_allclose(landmarks[:, 0::2], expected[1].numpy()[:, 5:], atol=1e-4)
            np.testing.assert_allclose(landmarks[:, 1::2], expected[1].numpy()[:, :5], atol=1e-4)


def test_corner_sampled_crops_are_the_packages_crops():
    image = tf.constant(RNG.uniform(0, 1, (1, 60, 80, 3)).astype(np.float32))
    boxes = tf.constant([[10.3, 5.2, 40.1, 35.0], [-4.0, 50.0, 30.0, 84.0]])  # MTCNN pixel boxes, one off the edge
    theirs = tf.image.crop_and_resize(image, boxes / [60.0, 80.0, 60.0, 80.0], [0, 0], (24, 24))
    cut = corner_sampled_boxes(boxes, image_size=(60, 80), crop=24)
    ours = tf.image.crop_and_resize(image, crop_boxes_for(cut, image_size=(60, 80), crop=24), [0, 0], (24, 24))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-4)


def _as_arrays(out):
    n = int(out["num_detections"][0])
    return out["boxes"][0, :n].numpy(), out["scores"][0, :n].numpy()


def test_real_photos_give_the_packages_faces(model):
    """On the packaged real photos (two installed; the two fetched ones when in the cache): the faces the
    package finds are found at IoU >= 0.8 with its boxes, and kdet adds no false positive."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fetched photos may be absent: 2 or 4 photos
        photos = real_faces.load_real_face_photos()
    package = fp.make_peer("mtcnn")
    ours, theirs = [], []
    for photo, image in photos:
        ours.append(_as_arrays(model.detect(tf.constant(image[None]))))
        theirs.append(package.detect(image))
        iou = pairwise_iou_numpy(theirs[-1][0], ours[-1][0])
        assert iou.shape[1] and (iou.max(axis=1) >= 0.8).all(), (photo.name, theirs[-1], ours[-1])
    mine = real_faces.score_real_photos(photos, ours, min_score=0.8)
    reference = real_faces.score_real_photos(photos, theirs, min_score=0.8)
    assert mine["found"] == reference["found"] == mine["faces"], (mine, reference)
    assert mine["false_positives"] <= reference["false_positives"]


def test_landmarks_through_detect_savedmodel_and_tflite(tmp_path):
    """The user's path: a model directory of MTCNN's weights, exported both ways; five landmarks each."""
    from kdet.face.mtcnn_weights import save_mtcnn_model_dir
    from kdet.serving import tflite
    from kdet.serving.export import export_model_dir
    from kdet.serving.image import letterbox_uint8
    from tests.detection_parity import assert_same_detections

    size = (120, 160)  # small: the exports stay quick
    model_dir = save_mtcnn_model_dir(str(tmp_path / "mtcnn"), input_size=size)
    photo, image = real_faces.load_real_face_photos(["astronaut"])[0]
    canvas = letterbox_uint8(image, size)  # 512 -> 120: the face is ~25 px
    model = from_mtcnn()
    keras_out = {k: v.numpy() for k, v in model.detect(tf.constant(canvas[None], tf.float32)).items()}
    assert keras_out["num_detections"][0] == 1 and keras_out["keypoints"].shape == (1, 100, 5, 2)
    eyes = keras_out["keypoints"][0, 0, :2]
    box = keras_out["boxes"][0, 0]
    assert (eyes[:, 0] > box[0]).all() and (eyes[:, 0] < (box[0] + box[2]) / 2).all()  # eyes in the upper half
    assert eyes[0, 1] < eyes[1, 1]  # the left eye (image left) first

    summary = export_model_dir(model_dir, format="tflite", out=str(tmp_path / "mtcnn.tflite"))
    assert summary["flex_ops"] == [] and summary["outputs"]["keypoints"]["shape"] == [1, 100, 5, 2]
    lite = tflite.LiteRTDetector(str(tmp_path / "mtcnn.tflite"))(canvas)
    assert_same_detections(keras_out, lite, min_iou=0.99, score_tolerance=1e-4)
    np.testing.assert_allclose(lite["keypoints"][0, :1], keras_out["keypoints"][0, :1], atol=0.05)

    export_model_dir(model_dir, format="savedmodel", out=str(tmp_path / "served" / "1"))
    served = tf.saved_model.load(str(tmp_path / "served" / "1")).signatures["serving_default"](
        input_tensor=tf.constant(image[None]))
    assert int(served["num_detections"][0]) == 1
    scale = np.float32([photo.height, photo.width])
    np.testing.assert_allclose(served["detection_keypoints"][0, 0].numpy() * scale,
                               keras_out["keypoints"][0, 0] * photo.height / size[0], rtol=0.02, atol=1.0)
    # kdet detect: the same landmarks in its JSON (pixels of the photo) and drawn as dots
    import json

    from kdet import cli

    assert cli.main(["detect", "--model-dir", model_dir, "--out", str(tmp_path / "drawn"),
                     str(real_faces.real_face_photo_path(photo)), "--json", str(tmp_path / "found.json")]) == 0
    found = json.loads((tmp_path / "found.json").read_text())["images"][0]["detections"]
    assert len(found) == 1 and len(found[0]["keypoints"]) == 5
    np.testing.assert_allclose(found[0]["keypoints"], served["detection_keypoints"][0, 0].numpy() * scale, atol=0.5)


def test_the_three_model_host_loop_refuses_mtcnn_rather_than_crop_wrongly(model):
    from kdet.face.lite import convert_stages

    with pytest.raises(ValueError, match="three-model form runs the paper's branches.*one TFLite file"):
        convert_stages(model, input_size=(120, 160))


def test_joint_training_from_mtcnn_starts_exactly_at_mtcnn(model):
    """The procedure's ``start="mtcnn"``: MTCNN's weights, the links at zero, its P-Net bootstraps; at a zero
    learning rate (step 0) the jointly trained model gives MTCNN's detections exactly, on a real photo."""
    import keras

    from kdet.face import procedures

    rng = np.random.default_rng(4)
    examples = [{"image": rng.integers(0, 255, (96, 96, 3)).astype(np.uint8),
                 "boxes": np.array([[10.0, 10.0, 50.0, 50.0]], np.float32)} for _ in range(2)]
    training = procedures.CascadeTraining(epochs=1, batch_size=16, min_face_size=24.0, negatives_per_image=30,
                                          positive_fraction=0.25, bootstrap_negatives=7, bootstrap_positives=1,
                                          start="mtcnn")
    prepared = procedures.prepare_cascade({"training": {"thresholds": (0.0, 0.003)}}, examples, training,
                                          verbose=0)
    assert prepared.config["architecture"] == "mtcnn" and prepared.trained == {}  # nothing greedy was trained
    assert prepared.sliding < len(prepared.samples)  # MTCNN's P-Net found hard samples
    joint, steps = procedures.train_cascade(prepared, training, verbose=0,
                                            optimizer=lambda: keras.optimizers.SGD(0.0))
    assert set(steps) == {"joint"} and joint.architecture == "mtcnn"
    image = tf.constant(real_faces.load_real_face_photos(["astronaut"])[0][1][None], tf.float32)
    ours, theirs = joint.detect(image), model.detect(image)
    assert int(ours["num_detections"][0]) == int(theirs["num_detections"][0]) == 1
    for key in ("boxes", "scores", "keypoints"):
        np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy())
    # and training moves the links: one step at a real rate leaves them non-zero
    moved, _ = procedures.train_cascade(prepared, training, verbose=0)
    links = moved.x24.logits.get_weights()[0][moved.x24.units:]
    assert np.abs(links).max() > 0
