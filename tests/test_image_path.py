"""One image path: training pipeline, ``kdet detect`` and the SavedModel see the same pixels and give the same boxes.

Also the input guards every detector shares: NaN/inf pixels give no
detections and never a crash, out-of-range values are clipped to 0..255, and
no degenerate box is ever returned.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdet.data import load_coco_json, make_pipeline
from kdet.serving.export import export_model_dir
from kdet.inference import detect_files
from kdet.model_dir import save_model_dir
from kdet.serving.image import decode_image, letterbox, read_image_file
from tests.detection_parity import block_image
from tests.serving.test_savedmodel import _cascade, _retinanet

SIZE = (128, 128)


def _photo(shape=(90, 150, 3), seed=0):
    """A smooth image with edges (JPEG-compresses like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    base = np.stack([(x * 255 // shape[1]), (y * 255 // shape[0]), ((x + y) % 64) * 4], -1)
    base[20:60, 30:90] = rng.integers(0, 255, 3)
    return base.astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(_photo()).save(folder / "photo.jpg", quality=85)
    grey16 = (np.mgrid[:40, :60][1] * 1000 + 500).astype(np.uint16)  # 500..59500: mostly far above 255
    Image.fromarray(grey16).save(folder / "grey16.png")
    images = [{"id": 1, "file_name": "photo.jpg", "width": 150, "height": 90},
              {"id": 2, "file_name": "grey16.png", "width": 60, "height": 40}]
    (folder / "ann.json").write_text(json.dumps({"images": images, "annotations": [],
                                                 "categories": [{"id": 1, "name": "a"}]}))
    return folder


def test_training_pipeline_kdet_detect_and_savedmodel_decode_and_letterbox_identically(files):
    examples, _ = load_coco_json(str(files / "ann.json"), str(files))
    pipeline = make_pipeline(examples, image_size=SIZE, batch_size=1, training=False)
    trained_on = [images[0].numpy() for images, _ in pipeline]

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def served(data):  # the two steps of the serving_bytes signature, in a graph
        return letterbox(decode_image(data), SIZE)[0]

    for name, pixels in zip(("photo.jpg", "grey16.png"), trained_on):
        canvas, _, _ = letterbox(read_image_file(str(files / name)), SIZE)  # what kdet detect feeds the model
        np.testing.assert_array_equal(canvas.numpy(), pixels, err_msg=name)
        np.testing.assert_array_equal(served(tf.constant((files / name).read_bytes())).numpy(), pixels, err_msg=name)
    # The 16-bit grey PNG keeps its grey levels (PIL's RGB conversion clipped them all to white).
    grey = read_image_file(str(files / "grey16.png"))
    expected = (np.mgrid[:40, :60][1] * 1000 + 500) >> 8
    assert np.abs(grey[..., 0].astype(int) - expected).max() <= 1 and grey.min() < 10


def test_kdet_detect_gives_the_savedmodels_detections(files, tmp_path, capsys):
    """``kdet detect`` (Python and ``--json``) and the SavedModel on one file: the same detections, the same ids."""
    from kdet import cli

    keras.utils.set_random_seed(7)
    model = _retinanet()
    model.detect(tf.zeros((1,) + SIZE + (3,)))
    ids = [3, 7, 42]  # a dataset's non-contiguous category ids
    model_dir = save_model_dir(model, str(tmp_path / "model"), input_size=SIZE, class_names=["a", "b", "c"],
                               category_ids=ids)
    export_model_dir(model_dir, format="savedmodel", out=str(tmp_path / "served" / "1"))
    served = tf.saved_model.load(str(tmp_path / "served" / "1")).signatures["serving_bytes"]
    results = list(detect_files(model_dir, [str(files / "photo.jpg")], out_dir=str(tmp_path / "drawn"),
                                score_threshold=0.0))
    (_, _, found), = results
    out = served(input_tensor=tf.constant([(files / "photo.jpg").read_bytes()]))
    n = int(out["num_detections"][0])
    assert n == len(found["scores"]) > 0
    np.testing.assert_allclose(found["boxes_normalized"], out["detection_boxes"][0, :n].numpy(), atol=1e-6)
    np.testing.assert_allclose(found["scores"], out["detection_scores"][0, :n].numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(ids)[found["classes"]], out["detection_classes"][0, :n].numpy())
    np.testing.assert_array_equal(found["category_ids"], out["detection_classes"][0, :n].numpy())
    np.testing.assert_allclose(found["boxes"], found["boxes_normalized"] * [90, 150, 90, 150], rtol=1e-6)
    # kdet detect --json: the same numbers, with names, in the original image's pixels
    listing = tmp_path / "detections.json"
    assert cli.main(["detect", str(files / "photo.jpg"), "--model-dir", model_dir, "--out", str(tmp_path / "cli"),
                     "--score-threshold", "0", "--json", str(listing)]) == 0
    assert f"detections: {listing}" in capsys.readouterr().out
    record, = json.loads(listing.read_text())["images"]
    assert (record["image"], record["height"], record["width"]) == (str(files / "photo.jpg"), 90, 150)
    rows = record["detections"]
    assert len(rows) == n
    np.testing.assert_allclose([r["box_normalized"] for r in rows], out["detection_boxes"][0, :n].numpy(), atol=1e-6)
    np.testing.assert_allclose([r["box"] for r in rows], found["boxes"], atol=1e-3)
    np.testing.assert_allclose([r["score"] for r in rows], out["detection_scores"][0, :n].numpy(), atol=1e-6)
    assert [r["category_id"] for r in rows] == out["detection_classes"][0, :n].numpy().astype(int).tolist()
    assert [r["class_name"] for r in rows] == [["a", "b", "c"][ids.index(r["category_id"])] for r in rows]


def test_output_names_never_collide(tmp_path):
    from kdet.inference import output_names

    names = output_names(["a/img.png", "b/img.png", "img.jpg", "c/other.png"])
    assert len(set(names)) == 4 and names[3] == "other.png"
    assert output_names(["x/img.png", "x/img.jpg"]) == ["img_png.png", "img_jpg.png"]


def _faces(**overrides):
    from kdet.face.cascade import FaceCascade

    return FaceCascade(test=dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=40, stage2_max_boxes=10,
                                 max_detections=7), **overrides)


def _degenerate(found):
    n = found["num_detections"]
    boxes = found["boxes"]
    rows = [boxes[i, : n[i]] for i in range(len(n))]
    return [int(((r[:, 2] <= r[:, 0]) | (r[:, 3] <= r[:, 1])).sum()) for r in rows]


def _rpn():
    from kdet.detectors.rpn import RegionProposalNetwork
    from tests.serving.test_savedmodel import RPN

    return RegionProposalNetwork(**RPN)


@pytest.mark.parametrize("build", [_retinanet, _cascade, _rpn, _faces, lambda: _faces(use_gather=True)],
                         ids=["retinanet", "cascade_rcnn", "rpn", "face_cascade", "face_cascade_export_twin"])
def test_every_detector_guards_its_input(build):
    keras.utils.set_random_seed(7)
    model = build()
    image = block_image().astype(np.float32)
    nan, inf = image.copy(), image.copy()
    nan[5, 7, 1] = np.nan
    inf[60, 3, 0] = np.inf
    huge, negative = np.full_like(image, 1e38), np.full_like(image, -1e6)
    found = {k: np.asarray(v) for k, v in model.predict_on_batch(np.stack([image, nan, inf, huge, negative])).items()}
    n = found["num_detections"]
    assert n[0] > 0, "nothing detected on the clean image: the comparison would be empty"
    assert n[1] == 0 and n[2] == 0  # a non-finite pixel anywhere: no detections, and no crash
    assert _degenerate(found) == [0] * 5
    clipped = {k: np.asarray(v) for k, v in model.predict_on_batch(
        np.stack([np.full_like(image, 255.0), np.zeros_like(image)])).items()}
    for row, reference in ((3, 0), (4, 1)):  # out-of-range values are clipped to 0..255
        assert n[row] == clipped["num_detections"][reference]
        np.testing.assert_allclose(found["scores"][row], clipped["scores"][reference], atol=1e-6)

