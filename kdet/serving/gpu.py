"""Which operators of a TFLite file the mobile GPU delegate takes, and what share of the compute that is.

:func:`gpu_report` reads the flatbuffer and checks every operator against the
GPU delegate's rules: the per-operator checks of TFLite's
``tensorflow/lite/tools/versioning/gpu_compatibility.cc`` (TF 2.20), written
again here from their behaviour, plus the delegate's requirement that every
tensor has a static shape (it plans its buffers once; a tensor whose size
depends on the data, such as the survivors of a cascade stage, cannot be
delegated). TF 2.20's own ``tf.lite.experimental.Analyzer.analyze(...,
gpu_compatibility=True)`` reports every kdet face model "compatible with
GPU delegate" with no per-operator warning, although they hold
``NON_MAX_SUPPRESSION_V5`` and ``TOPK_V2``, which the delegate has no kernel
for; so kdet does not echo it.

The report gives operators and multiply-accumulates (of ``CONV_2D``,
``DEPTHWISE_CONV_2D``, ``FULLY_CONNECTED``, ``BATCH_MATMUL``, at the shapes
stored in the file: a data-dependent dimension counts as stored, usually 1)
that the delegate accepts, and the reason for each rejected operator type.
What the delegate accepts runs on the GPU only in the partitions it forms
(by default the largest one); the rest runs on the CPU.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

#: Accepted whatever their inputs (the delegate's check has no condition for these, or only arity).
ALWAYS = frozenset({
    "AVERAGE_POOL_2D", "BATCH_MATMUL", "CONCATENATION", "CONV_2D", "CUMSUM", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D",
    "DENSIFY", "DYNAMIC_UPDATE_SLICE", "EMBEDDING_LOOKUP", "HARD_SWISH", "LEAKY_RELU", "MAX_POOL_2D", "ONE_HOT",
    "PACK", "PRELU", "QUANTIZE", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "SELECT", "SELECT_V2", "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "TILE", "TRANSPOSE",
    "TRANSPOSE_CONV"})
#: One runtime input, no constant.
UNARY = frozenset({"ABS", "CEIL", "COS", "ELU", "EXP", "FLOOR", "GELU", "LOG", "LOGISTIC", "NEG", "RSQRT", "SIGN",
                   "SIN", "SQRT", "SQUARE", "TANH"})
#: Two runtime inputs, or one and a constant.
BINARY = frozenset({"ATAN2", "DIV", "EQUAL", "FLOOR_DIV", "FLOOR_MOD", "GREATER", "GREATER_EQUAL", "LESS",
                    "LESS_EQUAL", "LOGICAL_AND", "MAXIMUM", "MINIMUM", "NOT_EQUAL", "POW", "SQUARED_DIFFERENCE",
                    "SUB"})
#: Reductions over constant int32 axes.
REDUCTIONS = frozenset({"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"})
#: Operators whose multiply-accumulates are counted.
MAC_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")


class _Tensor:
    """What the checks need of one tensor: shape (as stored), whether a dimension is data-dependent, type, constness."""

    def __init__(self, model, subgraph, index: int):
        tensor = subgraph.Tensors(index)
        self.shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
        signature = tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else []
        self.dynamic = bool(np.any(np.asarray(signature) < 0))
        self.type = int(tensor.Type())
        buffer = model.Buffers(tensor.Buffer())
        self.const = buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1)


def _options(op, schema, name: str):
    table = op.BuiltinOptions()
    if table is None:
        return None
    options = getattr(schema, name)()
    options.Init(table.Bytes, table.Pos)
    return options


def _broadcastable(a: list[int], b: list[int]) -> bool:
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))


def _check(name: str, op, inputs: list[_Tensor], outputs: list[_Tensor], schema) -> str | None:
    """None when the GPU delegate accepts the operator, else why not."""
    types = schema.TensorType
    runtime = [t for t in inputs if not t.const]
    if name in ALWAYS:
        return None
    if name in UNARY:
        return None if len(runtime) == 1 and len(inputs) == 1 else "needs exactly one runtime input"
    if name in BINARY:
        return None if len(inputs) == 2 and len(runtime) >= 1 else "needs two inputs, at most one constant"
    if name in ("ADD", "MUL"):
        if len(inputs) != 2:
            return "needs two inputs"
        a, b = inputs[0].shape, inputs[1].shape
        if not _broadcastable(a, b):
            return f"cannot broadcast {a} with {b}"
        if name == "MUL" and len(a) == len(b) and any(x < y for x, y in zip(a, b)) and any(y < x for x, y in zip(a, b)):
            return "neither input is at least as large as the other in every dimension"
        return None
    if name == "ADD_N":
        return None if len(inputs) == 2 else "takes two inputs only"
    if name == "DEQUANTIZE":
        return "int16 input" if inputs[0].type == types.INT16 else None
    if name == "FULLY_CONNECTED":
        options = _options(op, schema, "FullyConnectedOptions")
        if options is not None and options.WeightsFormat() != 0:
            return "shuffled weights format"
        if len(runtime) > 2 or inputs[0].const:
            return "constant input or more than two runtime inputs"
        return None
    if name == "GATHER":
        if inputs[0].type == types.INT32:
            return "int32 params"
        if len(inputs[1].shape) != 1 or inputs[1].type != types.INT32:
            return "indices not 1-D int32"
        return None
    if name == "CAST":
        floats, numbers = {types.FLOAT32, types.FLOAT16}, {types.FLOAT32, types.INT32}
        src, dst = inputs[0].type, outputs[0].type
        ok = (src == types.BOOL and dst in floats) or (src in floats and dst == types.BOOL) or \
             (src in numbers and dst in numbers)
        return None if ok else "cast between these types"
    if name in REDUCTIONS:
        return None if len(inputs) == 2 and inputs[1].const and inputs[1].type == types.INT32 else \
            "axes not a constant int32 tensor"
    if name in ("PAD", "PADV2", "MIRROR_PAD"):
        paddings = inputs[1]
        return None if paddings.const and paddings.shape in ([4, 2], [3, 2]) else "paddings not a constant 4x2 or 3x2"
    if name == "SLICE":
        return None if len(inputs[0].shape) in (3, 4) else "input not 3-D or 4-D"
    if name == "STRIDED_SLICE":
        options = _options(op, schema, "StridedSliceOptions")
        if options is not None and (options.EllipsisMask() or options.NewAxisMask() or options.ShrinkAxisMask()):
            return "ellipsis, new-axis or shrink-axis mask"
        return None if len(inputs[0].shape) in (3, 4) else "input not 3-D or 4-D"
    if name == "SOFTMAX":
        options = _options(op, schema, "SoftmaxOptions")
        return None if options is None or options.Beta() == 1.0 else "beta != 1"
    return "no GPU kernel"


def _macs(name: str, inputs: list[_Tensor], output: _Tensor) -> int:
    out = int(np.prod(output.shape)) if output.shape else 0
    if name == "CONV_2D":  # filter [out, kh, kw, in]
        return out * int(np.prod(inputs[1].shape[1:]))
    if name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, out]
        return out * int(np.prod(inputs[1].shape[1:3]))
    if name == "FULLY_CONNECTED":  # weights [units, in]
        return out * int(inputs[1].shape[-1])
    if name == "BATCH_MATMUL":
        return out * int(inputs[0].shape[-1])
    return 0


def gpu_report(flatbuffer: bytes) -> dict:
    """The GPU delegate's view of a flatbuffer (see the module docstring).

    Returns ``{"ops", "gpu_ops", "macs", "gpu_macs", "dynamic_tensors",
    "rejected": {op name: {"count", "reason"}}}``: operators in all
    subgraphs, those the delegate accepts, their multiply-accumulates, the
    number of tensors with a data-dependent shape, and per rejected operator
    type how many and the first reason found.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    from kdet.serving.tflite import operator_names

    builtins = {name for name in vars(schema.BuiltinOperator) if not name.startswith("_")}
    model = schema.Model.GetRootAs(flatbuffer, 0)
    codes = operator_names(model)
    totals = Counter()
    rejected: dict[str, dict] = {}
    tensors: dict[tuple[int, int], _Tensor] = {}

    def tensor(g, subgraph, index) -> _Tensor:
        key = (g, int(index))
        if key not in tensors:
            tensors[key] = _Tensor(model, subgraph, int(index))
        return tensors[key]

    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            name = codes[op.OpcodeIndex()]
            inputs = [tensor(g, subgraph, t) for t in op.InputsAsNumpy() if t >= 0]
            outputs = [tensor(g, subgraph, t) for t in op.OutputsAsNumpy() if t >= 0]
            reason = "a tensor of data-dependent shape" if any(t.dynamic for t in inputs + outputs) else \
                _check(name, op, inputs, outputs, schema) if name in builtins else "custom operator"
            macs = _macs(name, inputs, outputs[0]) if name in MAC_OPS and outputs else 0
            totals["ops"] += 1
            totals["macs"] += macs
            if reason is None:
                totals["gpu_ops"] += 1
                totals["gpu_macs"] += macs
            else:
                entry = rejected.setdefault(name, {"count": 0, "reason": reason})
                entry["count"] += 1
    return {"ops": totals["ops"], "gpu_ops": totals["gpu_ops"], "macs": totals["macs"],
            "gpu_macs": totals["gpu_macs"], "dynamic_tensors": sum(t.dynamic for t in tensors.values()),
            "rejected": dict(sorted(rejected.items()))}


def format_gpu_report(report: dict) -> str:
    """Two or three readable lines of :func:`gpu_report`."""
    share = lambda part, whole: f"{100.0 * part / whole:.1f}%" if whole else "-"  # noqa: E731
    lines = [f"  GPU delegate: {report['gpu_ops']} of {report['ops']} ops ({share(report['gpu_ops'], report['ops'])}),"
             f" {report['gpu_macs'] / 1e6:.1f} of {report['macs'] / 1e6:.1f} M multiply-accumulates "
             f"({share(report['gpu_macs'], report['macs'])}); tensors of data-dependent shape: "
             f"{report['dynamic_tensors']}"]
    if report["rejected"]:
        lines.append("    on the CPU: " + ", ".join(f"{name} x{entry['count']} ({entry['reason']})"
                                                     for name, entry in report["rejected"].items()))
    return "\n".join(lines)
