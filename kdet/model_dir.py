"""A model directory: everything ``kdet evaluate``, ``kdet detect`` and ``kdet export`` need.

::

    MODEL_DIR/
      kdet_model.json     {"detector": "kdet>RetinaNet", "config": {constructor kwargs},
                           "input_size": [h, w], "class_names": [...], "data": "embedded:shapes:validation",
                           "recipe": {...}}   (recipe: what trained it, free-form, optional)
      model.weights.h5    the weights (``model.save_weights``)

The detector is rebuilt from its registered Keras name and its config (the
constructor's keyword arguments), then its weights are loaded: no pickles,
no code in the directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import keras

CONFIG_FILE = "kdet_model.json"
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


def save_model_dir(model, path: str, *, input_size: Sequence[int], class_names: Sequence[str],
                   data: str | None = None, recipe: dict | None = None) -> str:
    """Writes ``model``'s config and weights into ``path`` (created); returns ``path``.

    Args:
      model: a kdet detector (registered Keras class with ``get_config``).
      input_size: ``(height, width)`` it runs at (serving letterboxes into it).
      class_names: label names in class-index order.
      data: the data string (:mod:`kdet.data.sources`) of its validation split.
      recipe: what trained it (name, hyperparameters), stored as given.
    """
    os.makedirs(path, exist_ok=True)
    record = {"detector": keras.saving.get_registered_name(type(model)), "config": model.get_config(),
              "input_size": [int(s) for s in input_size], "class_names": list(class_names), "data": data,
              "recipe": recipe or {}}
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(record, f, indent=2, default=_jsonable)
    model.save_weights(os.path.join(path, WEIGHTS_FILE))
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
    with open(config_path) as f:
        record = json.load(f)
    missing = {"detector", "config", "input_size", "class_names"} - set(record)
    if missing:
        raise ValueError(f"{config_path}: missing fields {sorted(missing)}")
    return ModelInfo(detector=record["detector"], config=record["config"],
                     input_size=tuple(record["input_size"]), class_names=list(record["class_names"]),
                     data=record.get("data"), recipe=record.get("recipe") or {})


def build_for(model, input_size: Sequence[int]):
    """Creates every variable of ``model`` by detecting on one blank ``input_size`` image; returns it."""
    import tensorflow as tf

    model.detect(tf.zeros([1, int(input_size[0]), int(input_size[1]), 3], tf.float32))
    if not model.built:  # detect() may call the layers without calling the model (FaceCascade)
        model.build(None)
    return model


def load_model_dir(path: str, **overrides):
    """``(model with its weights, ModelInfo)``; ``overrides`` replace config entries (e.g. ``use_gather=True``)."""
    import kdet.detectors  # noqa: F401  (registers the detector classes)

    info = read_model_info(path)
    cls = keras.saving.get_registered_object(info.detector)
    if cls is None:
        raise ValueError(f"{os.path.join(path, CONFIG_FILE)}: unknown detector {info.detector!r}")
    model = cls(**{**info.config, **overrides})
    build_for(model, info.input_size)
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{path!r}: {WEIGHTS_FILE} is missing")
    model.load_weights(weights)
    return model, info
