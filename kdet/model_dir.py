"""A model directory: everything ``kdet evaluate``, ``kdet detect`` and ``kdet export`` need.

::

    MODEL_DIR/
      kdet_model.json     {"format_version": 3, "detector": "kdet>RetinaNet", "config": {constructor kwargs},
                           "input_size": [h, w], "class_names": [...], "data": "embedded:shapes:validation",
                           "recipe": {...},   (recipe: what trained it, free-form, optional)
                           "weights_sha256": "..."}   (the weights file's hash, checked on load)
      model.weights.h5    the weights (``model.save_weights``)

Writing is atomic per directory state: the old ``kdet_model.json`` is removed
first, the weights are written under a temporary name and renamed, and the
new ``kdet_model.json`` (with the weights' SHA-256) is renamed into place
last. A directory killed mid-write therefore has no ``kdet_model.json`` and is
never taken for a complete model; a weights file that does not match its
hash (damaged, or replaced by hand) is refused with a message naming it.

The detector is rebuilt from its registered Keras name and its config (the
constructor's keyword arguments, specs as dicts of their fields), then its
weights are loaded: no pickles, no code in the directory. A directory of an
older format still loads: its flat config is first upgraded by the
detector's ``upgrade_config``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import keras

from kdet.files import file_sha256, fsync_path, read_json_object, write_json_atomic

CONFIG_FILE = "kdet_model.json"
#: 2: the config holds the labels and the evaluation kind, and the weights' SHA-256 is recorded.
#: Directories without the field (version 1) still load: their labels come from the record's ``class_names``.
#: 3: the config holds the grouped arguments (specs as dicts, :mod:`kdet.specs`); versions 1 and 2 hold flat
#: keyword arguments, which ``Detector.upgrade_config`` groups on load.
FORMAT_VERSION = 3
WEIGHTS_FILE = "model.weights.h5"


@dataclass
class ModelInfo:
    """What a model directory says about its model."""

    detector: str
    config: dict
    input_size: tuple[int, int]
    class_names: list[str]
    data: str | None = None
    recipe: dict = field(default_factory=dict)
    weights_sha256: str | None = None  # None in directories written before kdet checked it
    format_version: int = FORMAT_VERSION


def save_model_dir(model, path: str, *, input_size: Sequence[int], class_names: Sequence[str] | None = None,
                   category_ids: Sequence[int] | None = None, data: str | None = None,
                   recipe: dict | None = None) -> str:
    """Writes ``model``'s config and weights into ``path`` (created); returns ``path``.

    The config is the inference config: without the training dtype policy
    (a model trained under mixed precision is served in float32).

    Args:
      model: a kdet :class:`~kdet.detectors.base.Detector`.
      input_size: ``(height, width)`` it runs at (serving letterboxes into it).
      class_names, category_ids: the data's label names and ids; when given
        they become the model's (``model.set_labels``), else the model's own
        are written.
      data: the data string (:mod:`kdet.data.sources`) of its validation split.
      recipe: what trained it (name, hyperparameters), stored as given.
    """
    try:
        if class_names is not None:
            model.set_labels(class_names, category_ids)
        os.makedirs(path, exist_ok=True)
        config = {k: v for k, v in model.get_config().items() if k != "dtype"}
        record = {"format_version": FORMAT_VERSION, "detector": keras.saving.get_registered_name(type(model)),
                  "config": config, "input_size": [int(s) for s in input_size],
                  "class_names": list(model.class_names), "data": data, "recipe": recipe or {}}
        json.dumps(record, default=_jsonable)  # fails here, before anything on disk changes
        config_path = os.path.join(path, CONFIG_FILE)
        if os.path.exists(config_path):
            os.remove(config_path)  # incomplete until the new config lands
        partial = os.path.join(path, f".partial-{os.getpid()}.weights.h5")  # Keras wants the .weights.h5 suffix
        model.save_weights(partial)
        fsync_path(partial)
        record["weights_sha256"] = file_sha256(partial)
        os.replace(partial, os.path.join(path, WEIGHTS_FILE))
        write_json_atomic(config_path, record, indent=2, default=_jsonable)
        fsync_path(path)
    except OSError as error:
        raise OSError(error.errno, f"cannot write the model directory {path!r}: {error.strerror or error}",
                      error.filename) from None
    return path


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_model_info(path: str) -> ModelInfo:
    """The :class:`ModelInfo` of a model directory (nothing is built)."""
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path!r} is not a kdet model directory: {CONFIG_FILE} is missing "
                                f"(write one with kdet.model_dir.save_model_dir or `kdet train`)")
    record = read_json_object(config_path, kind="kdet model config")
    version = record.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{config_path}: format_version must be a whole number from 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{config_path}: model directory format version {version!r} is newer than this kdet reads "
                         f"(versions 1..{FORMAT_VERSION}); upgrade kdet")
    missing = {"detector", "config", "input_size", "class_names"} - set(record)
    if missing:
        raise ValueError(f"{config_path}: missing fields {sorted(missing)}")
    return ModelInfo(detector=record["detector"], config=record["config"],
                     input_size=tuple(record["input_size"]), class_names=list(record["class_names"]),
                     data=record.get("data"), recipe=record.get("recipe") or {},
                     weights_sha256=record.get("weights_sha256"), format_version=version)


def build_for(model, input_size: Sequence[int]):
    """Creates every variable of ``model`` by detecting on one blank ``input_size`` image; returns it."""
    import tensorflow as tf

    model.detect(tf.zeros([1, int(input_size[0]), int(input_size[1]), 3], tf.float32))
    if not model.built:  # detect() may call the layers without calling the model (FaceCascade)
        model.build(None)
    return model


def load_model_dir(path: str, **overrides):
    """``(model with its weights, ModelInfo)``; ``overrides`` replace config entries (e.g. ``use_gather=True``).

    A config of format 1 or 2 is upgraded by the detector's ``upgrade_config`` first.
    """
    from kdet.detectors import register_all

    register_all()

    info = read_model_info(path)
    cls = keras.saving.get_registered_object(info.detector)
    if cls is None:
        raise ValueError(f"{os.path.join(path, CONFIG_FILE)}: unknown detector {info.detector!r}")
    if not isinstance(info.config, dict):
        raise ValueError(f"{os.path.join(path, CONFIG_FILE)}: 'config' must be an object")
    try:
        model = cls(**{**_arguments(info, cls), **overrides})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{os.path.join(path, CONFIG_FILE)}: its config does not build a {info.detector}: "
                         f"{error}") from None
    build_for(model, info.input_size)
    weights = verify_weights(path, info)
    try:
        model.load_weights(weights)
    except Exception as error:  # noqa: BLE001 -- h5py and Keras raise many kinds; each means "not these weights"
        raise ValueError(f"{weights}: these weights do not fit the {info.detector} that {CONFIG_FILE} describes "
                         f"(was its config, e.g. num_classes, edited, or the weights file replaced?): "
                         f"{type(error).__name__}: {str(error)[:300]}") from None
    return model, info


def _arguments(info: ModelInfo, cls) -> dict:
    """The keyword arguments of ``cls`` that a directory's record gives: a flat config (formats 1-2) upgraded
    by ``cls.upgrade_config``, and the labels and evaluation kind that version 1 kept beside the config."""
    config = dict(info.config) if info.format_version >= 3 else cls.upgrade_config(info.config)
    config = without_initial_weights(config)
    config.setdefault("class_names", list(info.class_names))
    if "evaluation" not in config and info.recipe.get("evaluation"):
        config["evaluation"] = info.recipe["evaluation"]
    return config


def without_initial_weights(config: dict) -> dict:
    """``config`` with every backbone's initial weights (a file, ``"imagenet"``) set to None, at any depth.

    The directory's own weights replace them at once, so the model loads on a
    machine that has neither the file it was trained from nor network access.
    """
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            value = without_initial_weights(value)
            if key == "backbone" and value.get("weights") is not None:
                value = {**value, "weights": None}
        out[key] = value
    return out


def verify_weights(path: str, info: ModelInfo) -> str:
    """The weights file of model directory ``path``, checked against the hash its config records.

    Raises:
      FileNotFoundError: the weights file is missing.
      ValueError: its SHA-256 differs from ``kdet_model.json``'s (damaged or replaced).
    """
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{path!r}: {WEIGHTS_FILE} is missing")
    if info.weights_sha256 is not None and file_sha256(weights) != info.weights_sha256:
        raise ValueError(f"{weights} does not match the SHA-256 recorded in {os.path.join(path, CONFIG_FILE)}: the "
                         f"file is damaged or was replaced; retrain, or restore it from a backup")
    return weights


def is_complete(path: str) -> bool:
    """True when ``path`` holds a model directory whose weights match its config (nothing is built)."""
    try:
        verify_weights(path, read_model_info(path))
    except (OSError, ValueError):
        return False
    return True
