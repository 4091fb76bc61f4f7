"""Serving and export: everything that runs a trained model outside ``fit``, kept out of the model code.

* :mod:`kdet.serving.image` -- the one image path: every place an image
  enters a kdet model (the training and evaluation pipeline for file-based
  data, ``kdet detect``, both SavedModel signatures, int8 calibration)
  decodes with :func:`decode_image` and letterboxes with :func:`letterbox`,
  so the served model computes what was measured;
* :mod:`kdet.serving.savedmodel` -- the SavedModel for TF Serving
  (``serving_default`` on pixels, ``serving_bytes`` on encoded images,
  Detection API outputs and label map);
* :mod:`kdet.serving.tflite` -- builtins-only TFLite conversion (float32 /
  float16 / int8), its checks and a LiteRT runner;
* :mod:`kdet.serving.freeze` -- ``detect`` at a fixed size as one graph with
  constant weights (a CPU stream, and where TFLite conversion starts);
* :mod:`kdet.serving.export` -- ``kdet export``: a model directory to either.

Names are imported on first use.
"""

from kdet._lazy import lazy_attributes

_WHERE = {
    "ImageFileError": "kdet.serving.image",
    "decode_image": "kdet.serving.image",
    "letterbox": "kdet.serving.image",
    "read_image_file": "kdet.serving.image",
    "LABEL_MAP_FILE": "kdet.serving.savedmodel",
    "OUTPUT_NAMES": "kdet.serving.savedmodel",
    "SIGNATURES": "kdet.serving.savedmodel",
    "DetectionServingModule": "kdet.serving.savedmodel",
    "export_saved_model": "kdet.serving.savedmodel",
    "label_map_pbtxt": "kdet.serving.savedmodel",
    "load_label_map": "kdet.serving.savedmodel",
    "parse_label_map": "kdet.serving.savedmodel",
    "to_detection_api": "kdet.serving.savedmodel",
    "frozen_detect": "kdet.serving.freeze",
    "export_model_dir": "kdet.serving.export",
}

__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
