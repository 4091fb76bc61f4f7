"""Model directories written before the grouped arguments (format versions 1 and 2) still load and detect as before.

``tests/fixtures/model_dir_v2/<detector>/`` holds what kdet at eba8ec6 (flat
keyword arguments) wrote for a tiny RetinaNet (AP-loss, consistent
optimization, P3-P5) and a two-stage Cascade R-CNN, and what kdet at 78708ac
(the last before the face cascade's specs) wrote for a FaceCascade with
non-default training and test settings: its ``kdet_model.json``
and ``expected.json`` with the datasets of its weights file and the
detections on :func:`_images` after every dataset was filled by
:func:`_fill` (values drawn from the dataset's path). The weights (3.8 MB for the R-CNNs) are
not stored: the test writes this kdet's weights file of the upgraded config,
checks it has the same datasets, fills it the same way and compares.
"""

import json
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorflow as tf

from kdet.detectors import CascadeRCNN, RegionProposalNetwork, RetinaNet
from kdet.face.cascade import FaceCascade
from kdet.files import file_sha256
from kdet.model_dir import FORMAT_VERSION, build_for, load_model_dir, read_model_info, save_model_dir
from tests.paths import FIXTURES as STORED

FIXTURES = STORED / "model_dir_v2"
DETECTORS = {"retinanet": RetinaNet, "cascade_rcnn": CascadeRCNN, "face_cascade": FaceCascade}


def _datasets(path) -> list:
    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.append([name, list(obj.shape)]) if isinstance(obj, h5py.Dataset) else None)
    return sorted(found)


def _fill(path) -> None:
    """Every dataset of a weights file set from ``crc32(its path)``: BatchNorm's in 0.5..1.5, others LeCun-scaled."""
    with h5py.File(path, "r+") as f:
        names = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            d = f[name]
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            if "normalization" in name:  # gamma, beta, moving mean, moving variance: all in 0.5..1.5
                value = rng.uniform(0.5, 1.5, d.shape)
            else:  # LeCun-scaled kernels keep the activations O(1) through the layers; small biases
                scale = (1.0 / max(int(np.prod(d.shape[:-1])), 1)) ** 0.5 if len(d.shape) > 1 else 0.01
                value = rng.normal(0.0, scale, d.shape)
            d[...] = value.astype(d.dtype)


def _images() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    x[0, 8:40, 8:40, 0] = 255
    return x


def _same_detections(found: dict, expected: dict) -> None:
    np.testing.assert_array_equal(found["num_detections"].numpy(), expected["num_detections"])
    np.testing.assert_array_equal(found["classes"].numpy(), expected["classes"])
    np.testing.assert_allclose(found["scores"].numpy(), expected["scores"], atol=1e-5)
    np.testing.assert_allclose(found["boxes"].numpy(), expected["boxes"], atol=1e-3)


def _old_directory(tmp_path, name: str) -> tuple[Path, dict, dict]:
    """The fixture as a loadable version-2 directory: its record, and weights filled as at eba8ec6."""
    source, cls = FIXTURES / name, DETECTORS[name]
    record = json.loads((source / "kdet_model.json").read_text())
    expected = json.loads((source / "expected.json").read_text())
    target = tmp_path / name
    target.mkdir()
    weights = target / "model.weights.h5"
    build_for(cls.from_config(cls.upgrade_config(record["config"])), record["input_size"]).save_weights(str(weights))
    assert _datasets(weights) == expected["weights"], "the weights file has the layout eba8ec6 wrote"
    _fill(weights)
    (target / "kdet_model.json").write_text(json.dumps({**record, "weights_sha256": file_sha256(str(weights))}))
    return target, record, expected


def _holds(config: dict, flat: dict, cls) -> None:
    """Every flat key's value is in the grouped config, where ``cls.flat_config_keys`` says."""
    for key, value in flat.items():
        if key == "rpn":
            _holds(config["rpn"], value or {}, RegionProposalNetwork)
        elif key in cls.flat_config_keys:
            argument, field = cls.flat_config_keys[key]
            if argument == "classification_loss" and field not in config[argument]:
                continue  # a parameter of a loss the model does not use (focal_alpha of an AP-loss model)
            assert config[argument][field] == value, key
        else:
            assert config[key] == value, key


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_a_version_2_directory_loads_and_detects_as_it_did(tmp_path, name):
    path, record, expected = _old_directory(tmp_path, name)
    loaded, info = load_model_dir(str(path))
    assert info.format_version == 2 and record["format_version"] == 2
    assert (loaded.class_names, loaded.category_ids) == (tuple(record["class_names"]), (5, 7, 9)[:loaded.num_classes])
    _holds(json.loads(json.dumps(loaded.get_config())), record["config"], DETECTORS[name])
    _same_detections(loaded.detect(tf.constant(_images())), expected["detections"])
    # Saved again it is a current directory, with the grouped config, that loads to the same detector.
    again = save_model_dir(loaded, str(tmp_path / "v3"), input_size=info.input_size)
    assert json.loads((tmp_path / "v3" / "kdet_model.json").read_text())["format_version"] == FORMAT_VERSION == 3
    reloaded, _ = load_model_dir(again)
    assert reloaded.get_config() == loaded.get_config()
    _same_detections(reloaded.detect(tf.constant(_images())), expected["detections"])


def test_a_version_1_directory_loads_and_newer_ones_are_refused(tmp_path):
    path, record, expected = _old_directory(tmp_path, "retinanet")
    old = {k: v for k, v in record.items() if k not in ("format_version", "weights_sha256")}
    old["config"] = {k: v for k, v in record["config"].items() if k not in ("class_names", "category_ids")}
    (path / "kdet_model.json").write_text(json.dumps(old))
    loaded, info = load_model_dir(str(path))
    assert info.format_version == 1 and loaded.class_names == tuple(record["class_names"])
    _same_detections(loaded.detect(tf.constant(_images())), expected["detections"])
    newer = tmp_path / "newer"
    shutil.copytree(path, newer)
    (newer / "kdet_model.json").write_text(json.dumps({**record, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1} is newer than this kdet reads "
                                         f"\\(versions 1..{FORMAT_VERSION}\\)"):
        read_model_info(str(newer))
    (newer / "kdet_model.json").write_text(json.dumps({**record, "format_version": "2"}))
    with pytest.raises(ValueError, match="format_version must be a whole number"):
        read_model_info(str(newer))


def test_a_model_directory_loads_without_the_backbone_file_it_was_trained_from(tmp_path):
    """The initial backbone weights (a file, 'imagenet') are not read again: the directory's weights replace them."""
    from kdet.backbones import tiny_backbone

    initial = str(tmp_path / "tiny_backbone.weights.h5")
    tiny_backbone(freeze_batchnorm=False).save_weights(initial)
    model = RetinaNet(num_classes=2, backbone=dict(name="tiny", weights=initial, freeze_batchnorm=False),
                      fpn_filters=16, head=dict(num_convs=1, filters=16, prior_probability=0.3))
    expected = {k: v.numpy() for k, v in build_for(model, (64, 64)).detect(tf.constant(_images())).items()}
    save_model_dir(model, str(tmp_path / "model"), input_size=(64, 64))
    assert json.loads((tmp_path / "model" / "kdet_model.json").read_text())["config"]["backbone"]["weights"] == initial
    (tmp_path / "tiny_backbone.weights.h5").unlink()  # another machine: the file is not there
    loaded, _ = load_model_dir(str(tmp_path / "model"))
    _same_detections(loaded.detect(tf.constant(_images())), expected)
    assert loaded.get_config()["backbone"]["weights"] is None
