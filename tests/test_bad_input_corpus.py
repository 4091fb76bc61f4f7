"""The bad-input corpus: every input a new user or a hostile client tried, through the entry point they used.

Each case is generated here (no binary fixtures) and run through the same
entry point a user calls: the COCO-json reader, the ``kdet`` command line
(in process, and a few as real subprocesses), the SavedModel signatures,
LiteRT and ``predict``. A case passes when kdet either handles the input
correctly (checked) or refuses it with an error that names the file, field or
argument -- never a traceback, never a plausible wrong answer.

``python -m pytest tests/test_bad_input_corpus.py`` prints the totals that
the README's reliability section reports.
"""

import io
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdet import cli
from kdet.data import load_coco_json
from kdet.data.synthetic_shapes import SHAPE_NAMES
from tests.paths import ROOT as REPOSITORY, TINY_RECIPE

ROOT = str(REPOSITORY)
RECIPE = TINY_RECIPE
CATEGORIES = [{"id": 1, "name": "a"}]
SHAPES = [{"id": i, "name": n} for i, n in enumerate(SHAPE_NAMES, 1)]  # the tiny recipe's classes


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _image(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


def _dataset(folder, *, images=None, annotations=(), categories=CATEGORIES, raw=None, name="ann.json"):
    """Writes a COCO json (``raw``: the exact text or bytes) and a good image ``a.png``; returns the json path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.png").write_bytes(_png(_image()))
    path = folder / name
    if raw is not None:
        path.write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    else:
        data = {"images": images if images is not None else [{"id": 1, "file_name": "a.png"}],
                "categories": categories}
        if annotations is not None:
            data["annotations"] = annotations
        path.write_text(json.dumps(data))
    return str(path)


ANN = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 10]}
DELETE = object()

# (case id, changes to a good document -- or its exact text --, the words the error must contain)
READER_ERRORS = [
    ("annotations_is_a_number", {"annotations": 5}, "top-level field 'annotations' must be a list"),
    ("annotations_is_null", {"annotations": None}, "top-level field 'annotations' must be a list"),
    ("annotations_is_a_dict", {"annotations": {"image_id": 1}}, "top-level field 'annotations' must be a list"),
    ("annotations_is_a_string", {"annotations": "none"}, "top-level field 'annotations' must be a list"),
    ("annotations_missing", {"annotations": DELETE}, "missing top-level field 'annotations'"),
    ("annotations_misspelled", {"annotations": DELETE, "anotations": [ANN]}, "is 'anotations' a misspelling"),
    ("images_missing", {"images": DELETE}, "missing top-level field 'images'"),
    ("annotation_not_an_object", {"annotations": [5]}, "annotations[0]: must be an object"),
    ("duplicate_image_ids", {"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "a.png"}]},
     "image ids 1 are declared more than once"),
    ("duplicate_category_ids", {"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]},
     "category ids [1] are declared more than once"),
    ("iscrowd_is_a_string", {"annotations": [{**ANN, "iscrowd": "0"}]}, "field 'iscrowd' must be 0 or 1"),
    ("iscrowd_is_2", {"annotations": [{**ANN, "iscrowd": 2}]}, "field 'iscrowd' must be 0 or 1"),
    ("bbox_with_booleans", {"annotations": [{**ANN, "bbox": [True, 0, 5, 5]}]}, "field 'bbox' must be 4 numbers"),
    ("bbox_with_a_string", {"annotations": [{**ANN, "bbox": ["5", 0, 5, 5]}]}, "field 'bbox' must be 4 numbers"),
    ("bbox_with_3_numbers", {"annotations": [{**ANN, "bbox": [5, 0, 5]}]}, "field 'bbox' must be 4 numbers"),
    ("image_id_is_a_string", {"images": [{"id": "1", "file_name": "a.png"}]}, "field 'id' must be an integer"),
    ("image_id_is_a_boolean", {"images": [{"id": True, "file_name": "a.png"}]}, "field 'id' must be an integer"),
    ("category_id_is_a_float", {"annotations": [{**ANN, "category_id": 1.0}]},
     "field 'category_id' must be an integer"),
    ("width_is_a_string", {"images": [{"id": 1, "file_name": "a.png", "width": "60", "height": 40}]},
     "field 'width' must be an integer"),
    ("width_is_zero", {"images": [{"id": 1, "file_name": "a.png", "width": 0, "height": 40}]},
     "'width' and 'height' must be positive"),
    ("undeclared_image_id", {"annotations": [{**ANN, "image_id": 9}]}, "image_id 9 or category_id 1 is not declared"),
    ("image_not_an_object", {"images": ["a.png"]}, "images[0]: must be an object"),
    ("not_utf8", b'{"images": [{"id": 1, "file_name": "\xe9.png"}], "categories": []}', "not UTF-8"),
    ("truncated_json", '{"images": [{"id": 1, "file_', "malformed COCO json"),
    ("a_list_not_an_object", "[1, 2]", "expected an object"),
]


@pytest.mark.parametrize("case, changes, words", READER_ERRORS, ids=[c[0] for c in READER_ERRORS])
def test_reader_refuses_malformed_json_naming_file_and_field(tmp_path, case, changes, words):
    if isinstance(changes, dict):
        document = {"images": [{"id": 1, "file_name": "a.png"}], "categories": CATEGORIES, "annotations": [ANN]}
        document.update(changes)
        changes = json.dumps({k: v for k, v in document.items() if v is not DELETE})
    path = _dataset(tmp_path, raw=changes)
    with pytest.raises(ValueError) as error:
        load_coco_json(path, str(tmp_path))
    assert words in str(error.value) and "ann.json" in str(error.value), str(error.value)


def test_reader_refuses_a_folder_given_as_the_json(tmp_path):
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ValueError, match="folder.json: is a folder, not a COCO json file"):
        load_coco_json(str(tmp_path / "folder.json"), str(tmp_path))


def test_reader_skips_bad_images_and_names_them_once(tmp_path, caplog):
    good = _image()
    (tmp_path / "good.png").write_bytes(_png(good))
    (tmp_path / "cut.png").write_bytes(_png(_image(seed=1))[:200])
    (tmp_path / "cut.jpg").write_bytes(_jpeg(_image(seed=2))[:300])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_bytes(b"hello, not an image")
    (tmp_path / "caf\udce9.png").write_bytes(_png(good))  # a Latin-1 name on disk: bytes b"caf\xe9.png"
    names = ["good.png", "cut.png", "cut.jpg", "empty.png", "text.jpg", "caf\udce9.png", "\ud800bad.png"]
    images = [{"id": i + 1, "file_name": n} for i, n in enumerate(names)]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": CATEGORIES}))
    with caplog.at_level(logging.WARNING):
        dataset, info = load_coco_json(str(path), str(tmp_path))
        ids = [int(e["image_id"]) for e in dataset]
        assert [int(e["image_id"]) for e in dataset] == ids  # a second pass: the same, no second warning
    assert ids == [1, 6]  # the good PNG, and the file whose (non-UTF-8) name the file system encodes
    for name in ("cut.png", "cut.jpg", "empty.png", "text.jpg", "\\ud800bad.png"):
        assert sum(name in r.getMessage() for r in caplog.records) == 1, (name, caplog.text)
    assert "truncated or corrupt" in caplog.text and "is empty (0 bytes)" in caplog.text
    assert info.stats.as_dict()["skipped_images"] == 1 + 4 * 2  # the unencodable name once; 4 files per pass


def test_reader_warns_once_when_a_declared_size_disagrees_with_the_image(tmp_path, caplog):
    (tmp_path / "a.png").write_bytes(_png(_image(40, 60)))
    path = _dataset(tmp_path, images=[{"id": 1, "file_name": "a.png", "width": 40, "height": 60}],
                    annotations=[ANN])
    with caplog.at_level(logging.WARNING):
        dataset, _ = load_coco_json(path, str(tmp_path))
        for _ in range(2):
            (example,) = list(dataset)
    assert example["image"].shape == (40, 60, 3)
    assert caplog.text.count("is declared 40x60 (width x height) but decodes to 60x40") == 1
    assert "EXIF orientation is ignored" in caplog.text


def test_reader_warns_about_a_declared_category_without_annotations(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        load_coco_json(_dataset(tmp_path, annotations=[ANN], categories=[*CATEGORIES, {"id": 7, "name": "zebra"}]),
                       str(tmp_path))
    assert "1 declared categories have no annotations: 7 ('zebra')" in caplog.text


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("corpus") / "tiny")
    assert cli.main(["train", RECIPE, "--model-dir", path, "--steps", "2", "--no-eval"]) == 0
    return path


def _fails_naming(argv, capsys, *words):
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    assert code == 2, argv
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (argv, word, err)
    assert "Traceback" not in err
    return err


def test_train_with_only_data_does_not_evaluate_on_a_dataset_the_user_never_named(tmp_path, capsys):
    data = _dataset(tmp_path / "data", annotations=[ANN])
    assert cli.main(["train", RECIPE, "--model-dir", str(tmp_path / "m"), "--data", f"coco-json:{data}",
                     "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "without --val-data: training without evaluation" in out
    from kdet.model_dir import read_model_info

    assert read_model_info(str(tmp_path / "m")).data is None


def test_train_refuses_validation_data_without_images(tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    path = tmp_path / "val.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "bad.png"}], "annotations": [],
                                "categories": SHAPES}))
    _fails_naming(["train", RECIPE, "--model-dir", str(tmp_path / "m"), "--val-data", f"coco-json:{path}",
                   "--steps", "1"], capsys, "--val-data", "val.json", "gave no images")


def test_train_refuses_model_dirs_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _fails_naming(["train", RECIPE, "--model-dir", str(tmp_path / "file"), "--steps", "1"], capsys,
                  "--model-dir", "is a file")
    _fails_naming(["train", RECIPE, "--model-dir", str(tmp_path / "file" / "sub"), "--steps", "1"], capsys,
                  "--model-dir", "cannot be written")


def _copy(model_dir, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(model_dir, target)
    return target


@pytest.mark.parametrize("damage, words", [
    ("truncate_weights", "does not match the SHA-256"),
    ("empty_weights", "does not match the SHA-256"),
    ("foreign_weights_without_hash", "do not fit the"),
    ("truncated_config", "malformed kdet model config"),
    ("config_not_utf8", "not UTF-8"),
    ("edited_num_classes", "kdet_model.json"),
    ("missing_weights", "model.weights.h5 is missing"),
])
def test_damaged_model_directories_are_refused_naming_the_file(model_dir, tmp_path, capsys, damage, words):
    target = _copy(model_dir, tmp_path)
    weights, config = target / "model.weights.h5", target / "kdet_model.json"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty_weights":
        weights.write_bytes(b"")
    elif damage == "foreign_weights_without_hash":
        record = json.loads(config.read_text())
        del record["weights_sha256"]  # a directory written before kdet hashed its weights
        config.write_text(json.dumps(record))
        import keras

        foreign = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        foreign.save_weights(str(weights))
    elif damage == "truncated_config":
        config.write_text(config.read_text()[:40])
    elif damage == "config_not_utf8":
        config.write_bytes(b"\xff\xfe" + config.read_bytes())
    elif damage == "edited_num_classes":
        record = json.loads(config.read_text())
        record["config"]["num_classes"] = 7
        config.write_text(json.dumps(record))
    elif damage == "missing_weights":
        weights.unlink()
    _fails_naming(["evaluate", "--model-dir", str(target), "--max-images", "1"], capsys, words, str(target))


def test_evaluate_checks_results_json_before_the_evaluation(model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _fails_naming(["evaluate", "--model-dir", model_dir, "--results-json", str(tmp_path / "file" / "r.json")], capsys,
                  "--results-json", "is a file")


def test_evaluate_refuses_data_without_images(model_dir, tmp_path, capsys):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": SHAPES}))
    _fails_naming(["evaluate", "--model-dir", model_dir, "--data", f"coco-json:{path}"], capsys, "empty.json",
                  "gave no images")


def test_detect_keeps_every_output_and_refuses_bad_arguments(model_dir, tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "img.png").write_bytes(_png(_image()))
    (tmp_path / "a" / "img.jpg").write_bytes(_jpeg(_image()))
    out = tmp_path / "out"
    assert cli.main(["detect", str(tmp_path / "a" / "img.png"), str(tmp_path / "b" / "img.png"),
                     str(tmp_path / "a" / "img.jpg"), "--model-dir", model_dir, "--out", str(out)]) == 0
    assert len(os.listdir(out)) == 3
    assert cli.main(["detect", str(tmp_path / "b"), "--model-dir", model_dir, "--out", str(tmp_path / "o2")]) == 0
    assert os.listdir(tmp_path / "o2") == ["img.png"]  # a folder: its images
    capsys.readouterr()
    (tmp_path / "cut.png").write_bytes(_png(_image())[:150])
    (tmp_path / "bad.jpg").write_bytes(_jpeg(_image())[:20] + b"\x00" * 500)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    common = ["--model-dir", model_dir, "--out", str(tmp_path / "o3")]
    _fails_naming(["detect", str(tmp_path / "cut.png"), *common], capsys, "cut.png", "PNG", "truncated or corrupt")
    _fails_naming(["detect", str(tmp_path / "bad.jpg"), *common], capsys, "bad.jpg", "JPEG", "truncated or corrupt")
    _fails_naming(["detect", str(tmp_path / "empty"), *common], capsys, "empty", "holds no image files")
    _fails_naming(["detect", str(tmp_path / "b"), "--model-dir", model_dir, "--out", str(tmp_path / "file")], capsys,
                  "--out", "is a file")
    for threshold in ("nan", "-1", "2", "x"):
        _fails_naming(["detect", str(tmp_path / "b"), *common, "--score-threshold", threshold], capsys,
                      "--score-threshold")


def test_export_refuses_outputs_it_cannot_write(model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    _fails_naming(["export", "--model-dir", model_dir, "--format", "savedmodel", "--out", str(tmp_path / "file")],
                  capsys, "--out", "is a file")
    _fails_naming(["export", "--model-dir", model_dir, "--format", "savedmodel", "--out", str(tmp_path / "notes")],
                  capsys, "--out", "not a SavedModel folder")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    _fails_naming(["export", "--model-dir", model_dir, "--format", "tflite", "--out", str(tmp_path / "notes")],
                  capsys, "--out", "is a folder")


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    from kdet.serving.export import export_model_dir

    path = str(tmp_path_factory.mktemp("served") / "1")
    export_model_dir(model_dir, format="savedmodel", out=path, max_pixels=200 * 200)
    return tf.saved_model.load(path).signatures


@pytest.mark.parametrize("signature, tensor, words", [
    ("serving_default", tf.constant(3, tf.uint8), "expects uint8 RGB images [batch, height, width, 3]"),
    ("serving_default", tf.zeros([4, 4], tf.uint8), "expects uint8 RGB images [batch, height, width, 3]"),
    ("serving_default", tf.zeros([1, 8, 8, 4], tf.uint8), "channels must be 3"),
    ("serving_bytes", tf.constant(b"abc"), "expects a batch of encoded images"),
    ("serving_bytes", tf.constant([[b"abc"]]), "expects a batch of encoded images"),
    ("serving_bytes", tf.constant([b"\xff\xfe\x00\x80 not utf-8"]), "first 8 bytes, web-safe base64"),
    ("serving_bytes", tf.constant([_png(np.zeros((300, 300, 3), np.uint8))]), "more than 40000 pixels was refused"),
], ids=["default_rank0", "default_rank2", "default_4_channels", "bytes_rank0", "bytes_rank2", "bytes_not_utf8",
        "bytes_too_many_pixels"])
def test_savedmodel_signatures_refuse_bad_requests_clearly(served, signature, tensor, words):
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        served[signature](input_tensor=tensor)
    assert words in error.value.message, error.value.message


def test_litert_refuses_a_wrong_input_clearly(model_dir, tmp_path):
    from kdet.serving.tflite import LiteRTDetector

    path = str(tmp_path / "m.tflite")
    assert cli.main(["export", "--model-dir", model_dir, "--format", "tflite", "--out", path]) == 0
    detector = LiteRTDetector(path)
    with pytest.raises(ValueError, match=r"takes uint8 images of shape \(128, 128, 3\)"):
        detector(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="takes uint8 images"):
        detector(np.zeros((128, 128, 3), np.float32))
    assert detector(np.zeros((128, 128, 3), np.uint8))["num_detections"].shape == (1,)


def _subprocess(*argv):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "kdet.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


def test_the_command_line_exits_2_without_a_traceback(model_dir, tmp_path):
    """Real processes, as a user runs them: damaged weights, a bad image, a misspelled json key."""
    target = _copy(model_dir, tmp_path)
    weights = target / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    weights.write_bytes(bytes(data))
    (tmp_path / "cut.png").write_bytes(_png(_image())[:150])
    json_path = _dataset(tmp_path / "data", annotations=None, raw=json.dumps(
        {"images": [{"id": 1, "file_name": "a.png"}], "categories": CATEGORIES, "annotation": []}))
    runs = [
        (_subprocess("evaluate", "--model-dir", str(target)), ("model.weights.h5", "SHA-256")),
        (_subprocess("detect", str(tmp_path / "cut.png"), "--model-dir", model_dir, "--out", str(tmp_path / "o")),
         ("cut.png", "truncated or corrupt")),
        (_subprocess("train", RECIPE, "--data", f"coco-json:{json_path}", "--model-dir", str(tmp_path / "m")),
         ("ann.json", "is 'annotation' a misspelling")),
    ]
    for run, words in runs:
        assert run.returncode == 2, run.stderr[-2000:]
        assert "Traceback" not in run.stderr, run.stderr[-2000:]
        for word in words:
            assert word in run.stderr, (word, run.stderr[-2000:])
