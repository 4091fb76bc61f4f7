"""The face cascade as three TFLite models and a small host loop (the alternative to one model).

:func:`kdet.serving.tflite.convert` exports the whole cascade as one model (pyramid,
three stages, NMS inside; the later stages have data-dependent batch sizes).
This module exports it as three models with the host doing the glue:

* ``x12``: ``images uint8 [1, H, W, 3] -> boxes [1, K1, 4], scores [1, K1]``:
  the pyramid, x12 on every level, response-map pooling, the first threshold
  and the top ``stage1_max_boxes`` (all static shapes);
* ``x24`` and ``x48``: ``patches float32 [N, S, S, 3]`` (0..255) and their
  ``boxes [N, 4]`` -> ``scores [N]`` (face probability) and ``boxes [N, 4]``
  (regressed): the branch with its earlier branches, on N patches.

The host loop (:class:`FaceCascadeLite`), in NumPy: keep the windows with a
score, square them, crop ``S x S`` bilinear patches from the image (the
``crop_source="image"`` rule of :class:`~kdet.face.cascade.FaceCascade`),
resize the stage model's input to N, run it, threshold, keep the top
``stage2_max_boxes``, repeat at 48, then a greedy NMS. So it reproduces
``FaceCascade(test=dict(crop_source="image"))`` (checked in the tests).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from kdet.boxes import greedy_nms
from kdet.face import stages
from kdet.face.cascade import PIXEL_MEAN
from kdet.face.pyramid import build_pyramid
from kdet.face.specs import FaceTestSpec
from kdet.face.stages import BRANCHES as STAGES


def _stage1(model, images, image_size):
    scales = stages.test_scales(model, image_size)
    if not scales:
        raise ValueError(f"images of {image_size} are smaller than one window at min_face_size "
                         f"{model.test_spec.min_face_size}")
    levels = build_pyramid(model.preprocess(images), scales, use_gather=True)
    test = model.test_spec
    scores, boxes = stages.stage1(model, levels, image_size, threshold=test.thresholds[0],
                                  keep=test.stage1_max_boxes)
    return {"scores": scores, "boxes": boxes}


def _later_stage(model, depth: int, patches, boxes):
    scores, refined = stages.stage_scores(model, model.preprocess(patches), depth, boxes)
    return {"scores": scores, "boxes": refined}


def stage_functions(model, input_size: Sequence[int]) -> dict:
    """The three stage graphs as concrete functions (see the module docstring)."""
    height, width = int(input_size[0]), int(input_size[1])
    image = tf.TensorSpec([1, height, width, 3], tf.uint8, name="images")
    functions = {"x12": tf.function(lambda images: _stage1(model, images, (height, width)), input_signature=[image])}
    for depth, side in ((2, 24), (3, 48)):
        functions[STAGES[depth - 1]] = tf.function(
            lambda patches, boxes, depth=depth: _later_stage(model, depth, patches, boxes),
            input_signature=[tf.TensorSpec([None, side, side, 3], tf.float32, name="patches"),
                             tf.TensorSpec([None, 4], tf.float32, name="boxes")])
    return {name: fn.get_concrete_function() for name, fn in functions.items()}


def convert_stages(model, *, input_size: Sequence[int], quantization: str = "float32",
                   representative_images: Sequence[np.ndarray] | None = None) -> dict[str, bytes]:
    """``{"x12": flatbuffer, "x24": ..., "x48": ...}``, builtin ops only.

    int8 calibrates x12 on ``representative_images`` and the later stages on
    patches the host loop cuts from them.
    """
    from kdet.serving import tflite

    if quantization == "int8" and representative_images is None:
        raise ValueError("int8 quantization needs representative_images ([H, W, 3] uint8 images of the input size)")
    if model.architecture != "qin":  # the host loop crops and pads as the paper's branches expect
        raise ValueError(f"the three-model form runs the paper's branches (architecture 'qin'), not "
                         f"{model.architecture!r}: export this model as one TFLite file (kdet export --format tflite)")
    functions = stage_functions(model, input_size)
    calibration: dict[str, list | None] = {name: None for name in STAGES}
    if quantization == "int8":
        calibration["x12"] = [{"images": np.asarray(image, np.uint8)[None]} for image in representative_images]
        float_loop = FaceCascadeLite({name: tflite.convert_function(fn) for name, fn in functions.items()},
                                     model.test_spec)
        inputs: dict[str, list] = {"x24": [], "x48": []}
        for image in representative_images:
            float_loop(image, keep_inputs=inputs)
        for name in ("x24", "x48"):
            if not inputs[name]:
                raise ValueError(f"no window of the calibration images reached {name}: calibrate on images with faces")
            calibration[name] = inputs[name]
    return {name: tflite.convert_function(fn, quantization=quantization, representative_inputs=calibration[name])
            for name, fn in functions.items()}


def crop_patches(image: np.ndarray, boxes: np.ndarray, side: int, *, fill=0.0) -> np.ndarray:
    """Bilinear ``side x side`` patches of ``boxes [N, 4]`` (yxyx pixels) from ``image [H, W, 3]``.

    Sample ``i`` of a box of height ``S`` is at ``ymin + (i + 0.5) S / side -
    0.5`` (pixel-centre coordinates, :func:`kdet.face.pyramid.crop_boxes_for`);
    samples outside ``[0, H - 1]`` are ``fill`` (a value or a per-channel
    ``[3]``), as ``tf.image.crop_and_resize``'s extrapolation value. The
    cascade crops mean-removed images with 0, which is the mean pixel here.

    Returns:
      ``[N, side, side, 3]`` float32.
    """
    image = np.asarray(image, np.float32)
    height, width = image.shape[:2]
    steps = (np.arange(side, dtype=np.float32) + 0.5) / side
    ys = boxes[:, 0:1] + steps[None] * (boxes[:, 2:3] - boxes[:, 0:1]) - 0.5  # [N, side]
    xs = boxes[:, 1:2] + steps[None] * (boxes[:, 3:4] - boxes[:, 1:2]) - 0.5

    def corners(coords, size):
        low = np.floor(coords)
        frac = (coords - low).astype(np.float32)
        low = np.clip(low.astype(np.int64), 0, size - 1)
        return low, np.minimum(low + 1, size - 1), frac, (coords >= 0) & (coords <= size - 1)

    y0, y1, fy, y_ok = corners(ys, height)
    x0, x1, fx, x_ok = corners(xs, width)
    top_left = image[y0[:, :, None], x0[:, None, :]]
    top_right = image[y0[:, :, None], x1[:, None, :]]
    bottom_left = image[y1[:, :, None], x0[:, None, :]]
    bottom_right = image[y1[:, :, None], x1[:, None, :]]
    fx, fy = fx[:, None, :, None], fy[:, :, None, None]
    top = top_left + (top_right - top_left) * fx
    bottom = bottom_left + (bottom_right - bottom_left) * fx
    patches = top + (bottom - top) * fy
    fill = np.broadcast_to(np.asarray(fill, np.float32), (3,))
    return np.where((y_ok[:, :, None] & x_ok[:, None, :])[..., None], patches, fill).astype(np.float32)


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`kdet.face.pyramid.square_boxes`."""
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
    return np.stack([cy - half, cx - half, cy + half, cx + half], axis=1).astype(np.float32)


class FaceCascadeLite:
    """Runs the three stage flatbuffers of :func:`convert_stages` with the host loop.

    Args:
      flatbuffers: ``{"x12", "x24", "x48"}`` -> bytes.
      test: the cascade's test pipeline (thresholds, budgets, NMS): its
        ``model.test_spec``, a dict of those fields, or the whole
        ``model.get_config()`` (its ``"test"`` entry is read).
      num_threads: interpreter threads.

    Calling it on an ``[H, W, 3]`` uint8 image returns the output contract
    with a batch axis of 1 (NumPy).
    """

    def __init__(self, flatbuffers: dict[str, bytes], test: FaceTestSpec | Mapping, *, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(test, Mapping) and "test" in test:
            test = test["test"]
        self.test = test if isinstance(test, FaceTestSpec) else FaceTestSpec.from_config(test)
        self.interpreters = {name: Interpreter(model_content=bytes(flatbuffers[name]), num_threads=num_threads)
                             for name in STAGES}
        self.runners = {name: it.get_signature_runner("serving_default") for name, it in self.interpreters.items()}

    def _later(self, name: str, image: np.ndarray, boxes: np.ndarray, keep_inputs=None):
        side = 24 if name == "x24" else 48
        squares = square_boxes(boxes)
        patches = crop_patches(image, squares, side, fill=PIXEL_MEAN)  # 0 after mean removal
        if keep_inputs is not None:
            keep_inputs[name].append({"patches": patches, "boxes": squares})
        out = self.runners[name](patches=patches, boxes=squares)
        return out["scores"], out["boxes"]

    def __call__(self, image: np.ndarray, *, keep_inputs: dict | None = None) -> dict[str, np.ndarray]:
        test = self.test
        t1, t2, t3 = test.thresholds
        first = self.runners["x12"](images=np.asarray(image, np.uint8)[None])
        scores, boxes = first["scores"][0], first["boxes"][0]
        boxes = boxes[scores > 0]
        for name, threshold in (("x24", t2), ("x48", t3)):
            if len(boxes) == 0:
                scores = np.zeros([0], np.float32)
                break
            scores, boxes = self._later(name, image, boxes, keep_inputs)
            keep = np.flatnonzero(scores >= threshold)
            if name == "x24":  # the best stage2_max_boxes go on to x48
                keep = keep[np.argsort(-scores[keep], kind="stable")[:test.stage2_max_boxes]]
            scores, boxes = scores[keep], boxes[keep]
        height, width = image.shape[:2]
        boxes = np.clip(boxes, 0, [height, width, height, width]).astype(np.float32)
        kept = greedy_nms(boxes, scores, test.nms_iou_threshold, test.max_detections)
        k = test.max_detections
        out = {"boxes": np.zeros([1, k, 4], np.float32), "scores": np.zeros([1, k], np.float32),
               "classes": -np.ones([1, k], np.int32), "num_detections": np.array([len(kept)], np.int32)}
        out["boxes"][0, :len(kept)], out["scores"][0, :len(kept)] = boxes[kept], scores[kept]
        out["classes"][0, :len(kept)] = 0
        return out
