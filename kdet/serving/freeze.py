"""A detector's ``detect`` as one graph at a fixed input size, its weights turned into constants.

:func:`frozen_detect` is what a fixed-size CPU stream (a camera, a video)
runs, and what the TFLite conversion (:mod:`kdet.serving.tflite`) starts from.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from kdet.model_dir import build_for


def freeze(concrete):
    """``concrete`` (dict outputs) with its variables turned into constants, outputs still named.

    With no variables left, grappler folds everything computed from the
    weights alone (the ``bfloat16`` casts of a ``compute_dtype="bfloat16"``
    face cascade, every call otherwise), and oneDNN keeps its reordered copy
    of constant filters between calls. TFLite conversion needs it too (see
    :mod:`kdet.serving.tflite`). The frozen function does not see later weight
    changes: freeze again after training.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    names = sorted(concrete.structured_outputs)  # a frozen function returns its outputs flattened, keys sorted
    frozen = convert_variables_to_constants_v2(concrete)
    count = sum(isinstance(s, tf.TensorSpec) for s in tf.nest.flatten(concrete.structured_input_signature))
    arguments = concrete.inputs[:count]  # the captured tensors follow the arguments
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name.split(":")[0]) for t in arguments]

    @tf.function(input_signature=specs)
    def named(*args):
        return dict(zip(names, frozen(*args)))

    return named.get_concrete_function()


def detect_function(model, input_size: Sequence[int], *, batch_size: int = 1, final_nms: bool = True):
    """``images uint8 [batch_size, h, w, 3] -> contract dict`` as a concrete function (the model built first).

    ``final_nms=False``: ``model.detect_candidates`` instead (the detections
    before the final NMS, which the host runs).
    """
    if not model.variables:
        build_for(model, input_size)
    height, width = int(input_size[0]), int(input_size[1])
    spec = tf.TensorSpec([batch_size, height, width, 3], tf.uint8, name="images")
    run = model.detect if final_nms else model.detect_candidates
    return tf.function(lambda images: run(tf.cast(images, tf.float32)), input_signature=[spec]).get_concrete_function()


def frozen_detect(model, image_size: Sequence[int], *, batch_size: int = 1):
    """``model.detect`` on ``uint8 [batch_size, H, W, 3]`` images as a frozen concrete function.

    For a stream of same-size frames on a CPU (a camera, a video): the
    output contract dict of ``model.detect``, from one graph whose weights
    are constants (:func:`freeze` of :func:`detect_function`). The same
    detections as ``tf.function(model.detect)`` to float rounding, faster on
    a CPU (docs/benchmarks.md; ``benchmarks/face_benchmark.py`` times kdet's
    detectors this way).

    Args:
      model: a kdet detector (anything with ``detect(images)``; built here if it is not).
      image_size: ``(H, W)`` of every frame.
      batch_size: frames per call.
    """
    height, width = (int(v) for v in image_size)
    if height < 1 or width < 1 or batch_size < 1:
        raise ValueError(f"frozen_detect needs a positive image_size and batch_size, got {image_size}, {batch_size}")
    return freeze(detect_function(model, (height, width), batch_size=batch_size))
