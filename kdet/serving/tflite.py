"""TFLite conversion with builtin ops only, quantisation, and a LiteRT runner.

:func:`convert` turns a kdet detector into a ``.tflite`` flatbuffer whose
single signature ``serving_default`` takes ``images: uint8 [1, H, W, 3]`` at
a fixed size and returns the output contract (:mod:`kdet.postprocess`):
``boxes`` float32 ``[1, K, 4]`` yxyx pixels of the input, ``scores [1, K]``,
``classes`` int32 ``[1, K]`` (-1 on padding) and ``num_detections`` int32
``[1]``. Pre-processing and post-processing (decode, NMS) are inside.

Only TFLite builtin ops are allowed: the ``ai_edge_litert`` interpreter on
PyPI and a phone without the Flex delegate cannot run Select-TF ops. The
converter is told so (``TFLITE_BUILTINS``), and :func:`flex_ops` checks the
written flatbuffer again. Models that use ops without a builtin
(``tf.image.crop_and_resize``, the antialiased resize) convert through their
gather twins: convert ``model.export_variant(input_size)``
(:meth:`kdet.detectors.base.Detector.export_variant`).

Quantisation (``quantization``):

* ``"float32"``: no change;
* ``"float16"``: weights stored as float16, computed in float32;
* ``"int8"``: full-integer quantisation (weights and activations)
  of the convolutions, pooling and fully-connected layers, calibrated on
  ``representative_images`` drawn from the data pipeline; the head output
  layers, box decoding, pyramid arithmetic and NMS stay float
  (:func:`_selective_int8`), and the image input stays uint8.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from kdet.files import check_output_path
from kdet.serving.freeze import detect_function, freeze

QUANTIZATIONS = ("float32", "float16", "int8")


def convert_function(concrete, *, quantization: str = "float32",
                     representative_inputs: Sequence[dict] | None = None) -> bytes:
    """Freezes and converts one concrete function (dict outputs) with builtin ops only; returns the flatbuffer.

    Args:
      concrete: the graph; its input names become the signature's.
      quantization: one of :data:`QUANTIZATIONS`.
      representative_inputs: for ``"int8"``: ``{input name: array}`` per
        calibration step, drawn from real data.

    Raises:
      ValueError: unknown quantization, int8 without inputs, or a Flex op in the result.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if quantization == "int8" and not representative_inputs:
        raise ValueError("int8 quantization needs representative inputs (calibration data)")
    with tempfile.TemporaryDirectory(prefix="kdet_tflite_") as folder, converter_output_quieted():
        # frozen first: the converter keeps variables read through nested function calls as resource
        # variables (READ_VARIABLE ops that need an initialiser run); constants convert to plain builtins
        # and let fully-connected layers become FULLY_CONNECTED
        tf.saved_model.save(tf.Module(), folder, signatures={"serving_default": freeze(concrete)})
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["serving_default"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantization == "int8":
            float_model = converter.convert()
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: iter(representative_inputs)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                   tf.lite.OpsSet.TFLITE_BUILTINS]
            flatbuffer = _selective_int8(converter, float_model, representative_inputs)
        if quantization != "int8":
            flatbuffer = converter.convert()
    found = flex_ops(flatbuffer)
    if found:
        raise ValueError(f"the converted model contains non-builtin ops {found}; LiteRT from PyPI cannot run them")
    return flatbuffer


@contextlib.contextmanager
def converter_output_quieted():
    """The converter's native log lines and its calibrator's deprecation warning kept off the terminal.

    The MLIR converter logs through absl before absl is initialised (``W0000
    ... Ignored output_format``), the int8 calibrator prints its settings with
    ``printf`` and builds TF's deprecated ``tf.lite.Interpreter`` (a
    ``UserWarning``): none of it is kdet's, and ``TF_CPP_MIN_LOG_LEVEL`` does
    not reach it. Under ``TF_CPP_MIN_LOG_LEVEL=3`` (the ``kdet`` command line
    unless ``--verbose``) the process's stdout and stderr file descriptors go to
    a temporary file while converting, replayed on stderr if the conversion
    fails; otherwise nothing changes but the warning filter.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"[\s\S]*tf\.lite\.Interpreter is deprecated")
        if os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "3":
            yield
            return
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        with tempfile.TemporaryFile(mode="w+b") as captured:
            os.dup2(captured.fileno(), 1)
            os.dup2(captured.fileno(), 2)
            failed = True
            try:
                yield
                failed = False
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                for target, fd in zip((1, 2), saved):
                    os.dup2(fd, target)
                    os.close(fd)
                if failed:  # what the converter said, for the error being raised
                    captured.seek(0)
                    sys.stderr.write(captured.read().decode(errors="replace"))


#: Ops computed in int8 by ``quantization="int8"``; everything else (box decoding, the pyramid's
#: gathers, score arithmetic, NMS) stays float, with QUANTIZE / DEQUANTIZE at the borders.
INT8_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "AVERAGE_POOL_2D", "RELU")
#: Layers kept float even so: the heads' output layers (scores and box codes; kdet names them so).
FLOAT_OUTPUT_LAYERS = ("logits", "offsets", "box_codes")


def _selective_int8(converter, float_model: bytes, representative_inputs) -> bytes:
    """Full-integer convolutions and fully-connected layers, the rest float (TFLite's selective quantisation).

    Quantising everything the int8 kernels allow (the converter's default)
    also quantises box decoding, the pyramid's resampling arithmetic and the
    score thresholds: measured on the embedded face set, the face cascade's
    AP50 fell to 0. Here only :data:`INT8_OPS` are quantised, except the
    head output layers (:data:`FLOAT_OUTPUT_LAYERS`).
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=float_model)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    outputs = sorted({names[o] for op in interpreter._get_ops_details() if op["op_name"] in INT8_OPS
                      for o in op["outputs"] if any(key in names[o] for key in FLOAT_OUTPUT_LAYERS)})
    order = [d["name"] for d in interpreter.get_input_details()]

    def positional():  # the debugger feeds inputs in the interpreter's order
        for sample in representative_inputs:
            yield [next(v for k, v in sample.items() if k in name) for name in order]

    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=sorted(set(ops_used(float_model)) - set(INT8_OPS)), denylisted_nodes=outputs)
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=positional,
                                                         debug_options=options)
    return debugger.get_nondebug_quantized_model()


def convert(model, *, input_size: Sequence[int], quantization: str = "float32",
            representative_images: Iterable[np.ndarray] | None = None, final_nms: bool = True) -> bytes:
    """Converts ``model`` for ``input_size`` (h, w) images; returns the flatbuffer.

    Args:
      model: a kdet detector, already TFLite-convertible (its ``export_variant``).
      input_size: ``(height, width)`` of the fixed input.
      quantization: one of :data:`QUANTIZATIONS`.
      representative_images: for ``"int8"``: ``[H, W, 3]`` uint8 images of
        that size (a few dozen real ones; the calibration ranges come from them).
      final_nms: False: the model's ``detect_candidates`` (the detections
        before the final NMS, ``boxes [1, N, 4]``, ``scores [1, N]``, 0 on
        rejected candidates), the host running ``final_nms_settings()``
        (:func:`kdet.boxes.host_final_nms`).

    Raises:
      ValueError: unknown quantization, int8 without images, or a Flex op in
        the result.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    inputs = None
    if quantization == "int8":
        if representative_images is None:
            raise ValueError("int8 quantization needs representative_images ([H, W, 3] uint8 images of the input "
                             "size)")
        images = [np.asarray(image, np.uint8) for image in representative_images]
        expected = (int(input_size[0]), int(input_size[1]), 3)
        if not images or any(image.shape != expected for image in images):
            raise ValueError(f"representative_images must be a non-empty list of {expected} uint8 images, got "
                             f"shapes {sorted({image.shape for image in images})}")
        inputs = [{"images": image[None]} for image in images]
    return convert_function(detect_function(model, input_size, final_nms=final_nms), quantization=quantization,
                            representative_inputs=inputs)


def operator_names(model) -> list[str]:
    """The name of each operator code of a flatbuffer ``schema.Model``: builtins by name, custom ops by theirs."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    out = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        out.append(custom.decode() if custom else names.get(builtin, f"BUILTIN_{builtin}"))
    return out


def ops_used(flatbuffer: bytes) -> dict[str, int]:
    """``{op name: count}`` over every subgraph; custom ops by their custom name (Flex ops ``Flex...``)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    codes = operator_names(model)
    counts: dict[str, int] = {}
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for i in range(subgraph.OperatorsLength()):
            name = codes[subgraph.Operators(i).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def flex_ops(flatbuffer: bytes) -> list[str]:
    """Names of the Select-TF (Flex) and other custom ops in a flatbuffer (empty when builtins only)."""
    from tensorflow.lite.python import schema_py_generated as schema

    builtin = {name for name in vars(schema.BuiltinOperator) if not name.startswith("_")}
    return [name for name in ops_used(flatbuffer) if name not in builtin or name == "CUSTOM"]


class LiteRTDetector:
    """Runs a :func:`convert` flatbuffer with the ``ai_edge_litert`` interpreter.

    Args:
      model: flatbuffer bytes or a ``.tflite`` path.
      num_threads: interpreter threads.

    Calling it on ``[H, W, 3]`` or ``[1, H, W, 3]`` uint8 returns the output
    contract as NumPy arrays with a batch axis of 1.
    """

    def __init__(self, model: bytes | str, *, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        content = model if isinstance(model, (bytes, bytearray)) else open(model, "rb").read()
        self.interpreter = Interpreter(model_content=bytes(content), num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")
        details = self.runner.get_input_details()["images"]
        self.input_shape = tuple(int(d) for d in details["shape"])

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[None]
        if image.shape != self.input_shape or image.dtype != np.uint8:
            raise ValueError(f"this TFLite model takes uint8 images of shape {self.input_shape[1:]} "
                             f"(or {self.input_shape}); got {image.dtype} {image.shape}")
        return self.runner(images=image)

    def predict_on_batch(self, images) -> dict[str, np.ndarray]:
        """The file on a batch ``[B, H, W, 3]`` of letterboxed images (rounded and clipped to uint8), its
        outputs concatenated over the batch: the call :func:`kdet.evaluation.evaluate_model` makes."""
        images = np.clip(np.round(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)
        outputs = [self(image) for image in images]
        return {key: np.concatenate([out[key] for out in outputs]) for key in outputs[0]}


def summary(flatbuffer: bytes) -> dict:
    """Size, ops and the signature's inputs and outputs of a flatbuffer."""
    runner = LiteRTDetector(flatbuffer).runner
    describe = lambda details: {k: {"shape": [int(d) for d in v["shape"]], "dtype": np.dtype(v["dtype"]).name}  # noqa: E731
                                for k, v in sorted(details.items())}
    return {"bytes": len(flatbuffer), "ops": ops_used(flatbuffer), "flex_ops": flex_ops(flatbuffer),
            "inputs": describe(runner.get_input_details()), "outputs": describe(runner.get_output_details())}


def write(flatbuffer: bytes, path: str) -> str:
    """Writes the flatbuffer to ``path`` (folders created) through a temporary name and a rename; returns the path."""
    check_output_path(path, "--out", folder=False, what="the .tflite file's path")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"
    with open(partial, "wb") as f:
        f.write(flatbuffer)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    return path
