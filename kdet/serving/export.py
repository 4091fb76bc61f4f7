"""``kdet export``: a model directory -> a SavedModel or a TFLite file, and a summary of what was written."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from kdet.files import check_output_path
from kdet.serving.gpu import format_gpu_report, gpu_report

FORMATS = ("savedmodel", "tflite")


def calibration_images(data: str, input_size: Sequence[int], count: int, *, seed: int = 0) -> list[np.ndarray]:
    """``count`` uint8 images of ``data`` (a :mod:`kdet.data.sources` string), letterboxed to ``input_size``."""
    from kdet.data.sources import open_source
    from kdet.serving.image import letterbox_uint8

    dataset, _ = open_source(data, seed=seed)
    images = [letterbox_uint8(example["image"], input_size) for example in dataset.take(count)]
    if not images:
        raise ValueError(f"--data {data!r} gave no images for int8 calibration")
    return images


def calibration_source(info, data: str | None = None) -> str:
    """The int8 calibration data of a model directory (its ``ModelInfo``): ``data`` if given, else the
    training data its recipe record names (what the activations' ranges should come from), else its
    evaluation data."""
    source = data or (info.recipe or {}).get("train_data") or info.data
    if not source:
        raise ValueError("int8 needs calibration images: pass --data (e.g. embedded:faces:train)")
    return source


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def export_model_dir(model_dir: str, *, format: str, out: str, quantization: str = "float32",
                     input_size: Sequence[int] | None = None, data: str | None = None,
                     num_calibration: int = 64, max_pixels: int | None = None, static_shapes: bool = False,
                     final_nms: bool = True) -> dict:
    """Exports the model of ``model_dir``; returns a summary (path, size, signature, ops).

    Args:
      model_dir: a :mod:`kdet.model_dir` folder.
      format: ``"savedmodel"`` (both serving signatures) or ``"tflite"``.
      out: the SavedModel folder (e.g. ``serving/faces/1``) or the ``.tflite`` path.
      quantization: TFLite only: ``float32``, ``float16`` or ``int8``.
      input_size: ``(height, width)``; default: the model directory's.
      data: int8 calibration data (default: the training data its recipe
        record names, else the directory's evaluation ``data``).
      num_calibration: images used to calibrate int8.
      max_pixels: SavedModel only: the largest image ``serving_bytes``
        decodes (default :data:`kdet.serving.image.DEFAULT_MAX_PIXELS`).
      static_shapes: TFLite only: the model's ``static_shape_switches``
        (every tensor of a fixed size, for a mobile GPU delegate).
      final_nms: TFLite only: False leaves the final NMS to the host (the
        model's ``detect_candidates``; the summary carries its ``final_nms_settings``).

    The TFLite summary includes :func:`kdet.serving.gpu.gpu_report`.
    """
    from kdet.serving import savedmodel
    from kdet.model_dir import load_model_dir

    if format not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {format!r}")
    if format == "savedmodel" and quantization != "float32":
        raise ValueError("--quantization applies to --format tflite only (a SavedModel keeps float32 weights)")
    if format == "tflite" and max_pixels is not None:
        raise ValueError("--max-pixels applies to --format savedmodel only (a TFLite model takes decoded pixels)")
    if format == "savedmodel" and (static_shapes or not final_nms):
        raise ValueError("--static-shapes and --no-nms apply to --format tflite only (a SavedModel serves the "
                         "whole detector)")
    check_output_path(out, "--out", folder=format == "savedmodel",
                      what="the SavedModel's folder (e.g. serving/NAME/1)" if format == "savedmodel"
                      else "the .tflite file's path")
    model, info = load_model_dir(model_dir)
    size = tuple(int(s) for s in (input_size or info.input_size))
    if format == "savedmodel":
        from kdet.serving.image import DEFAULT_MAX_PIXELS

        savedmodel.export_saved_model(model, out, input_size=size, class_names=info.class_names,
                                      max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
        import tensorflow as tf

        loaded = tf.saved_model.load(out)
        signatures = {name: {"inputs": {k: f"{v.dtype.name} {v.shape.as_list() if v.shape.rank is not None else '?'}"
                                        for k, v in fn.structured_input_signature[1].items()},
                             "outputs": {k: f"{v.dtype.name} {v.shape.as_list()}"
                                         for k, v in fn.structured_outputs.items()}}
                      for name, fn in loaded.signatures.items()}
        return {"format": format, "path": out, "bytes": _folder_bytes(out), "input_size": list(size),
                "signatures": signatures, "label_map": savedmodel.load_label_map(out)}
    return _export_tflite(model, info, out=out, size=size, quantization=quantization, data=data,
                          num_calibration=num_calibration, static_shapes=static_shapes, final_nms=final_nms)


def _export_tflite(model, info, *, out, size, quantization, data, num_calibration, static_shapes, final_nms) -> dict:
    """:func:`export_model_dir`'s TFLite half."""
    from kdet.serving import tflite

    host_nms = None if final_nms else model.final_nms_settings()  # refuses a detector without it, before the slow work
    representative = None
    if quantization == "int8":
        representative = calibration_images(calibration_source(info, data), size, num_calibration)
    flatbuffer = tflite.convert(model.export_variant(size, static_shapes=static_shapes), input_size=size,
                                quantization=quantization, representative_images=representative, final_nms=final_nms)
    tflite.write(flatbuffer, out)
    return {"format": "tflite", "path": out, "quantization": quantization, "input_size": list(size),
            "class_names": info.class_names, "category_ids": list(model.category_ids), "host_nms": host_nms,
            **tflite.summary(flatbuffer), "gpu": gpu_report(flatbuffer)}


def format_summary(summary: dict) -> str:
    """A readable multi-line summary of :func:`export_model_dir`'s result."""
    lines = [f"wrote {summary['format']} {summary['path']} ({summary['bytes'] / 1e6:.2f} MB, input "
             f"{summary['input_size'][0]}x{summary['input_size'][1]})"]
    if summary["format"] == "savedmodel":
        for name, signature in summary["signatures"].items():
            lines.append(f"  signature {name}:")
            lines += [f"    input  {k}: {v}" for k, v in signature["inputs"].items()]
            lines += [f"    output {k}: {v}" for k, v in sorted(signature["outputs"].items())]
        lines.append(f"  label map (assets/label_map.pbtxt): {summary['label_map']}")
    else:
        lines.append(f"  quantization {summary['quantization']}; Flex ops: {summary['flex_ops'] or 'none'}")
        labels = ", ".join(f"{i} {name}" for i, name in zip(summary["category_ids"], summary["class_names"]))
        lines.append(f"  classes (output index: category id and name): {labels}")
        lines += [f"  input  {k}: {v['dtype']} {v['shape']}" for k, v in summary["inputs"].items()]
        lines += [f"  output {k}: {v['dtype']} {v['shape']}" for k, v in summary["outputs"].items()]
        ops = ", ".join(f"{name} x{count}" for name, count in summary["ops"].items())
        lines.append(f"  ops ({sum(summary['ops'].values())}): {ops}")
        if "gpu" in summary:
            lines.append(format_gpu_report(summary["gpu"]))
        if summary.get("host_nms"):
            nms = summary["host_nms"]
            lines.append(f"  no final NMS inside: run it on the outputs (kdet.boxes.host_final_nms): scores > 0, greedy "
                         f"IoU {nms['iou_threshold']}, containment {nms['containment_threshold']}, at most "
                         f"{nms['max_detections']}")
    return "\n".join(lines)
