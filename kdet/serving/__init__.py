"""Serving: the one image path (:mod:`kdet.serving.image`) and the SavedModel (:mod:`kdet.serving.savedmodel`).

Every place an image enters a kdet model -- the training and evaluation
pipeline for file-based data, ``kdet detect``, both SavedModel signatures and
int8 calibration -- decodes with :func:`decode_image` and letterboxes with
:func:`letterbox`, so the served model computes what was measured.
"""

from kdet.serving.image import ImageFileError, decode_image, letterbox, read_image_file
from kdet.serving.savedmodel import (
    LABEL_MAP_FILE,
    OUTPUT_NAMES,
    SIGNATURES,
    DetectionServingModule,
    export_saved_model,
    label_map_pbtxt,
    load_label_map,
    parse_label_map,
    to_detection_api,
)

__all__ = ["DetectionServingModule", "ImageFileError", "LABEL_MAP_FILE", "OUTPUT_NAMES", "SIGNATURES",
           "decode_image", "export_saved_model", "label_map_pbtxt", "letterbox", "load_label_map",
           "parse_label_map", "read_image_file", "to_detection_api"]
