"""RoIAlign: level rule by hand, an independent NumPy RoIAlign, the gather twin, gradients, XLA, TFLite, layer."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet import gather, roi_align
from tests.layer_contract import check_layer_contract

IMAGE_H, IMAGE_W = 128, 160  # P2 is 32x40, P5 is 4x5: small and fast.
LEVELS = (2, 3, 4, 5)


def _features(rng, batch=2, channels=3):
    return {
        f"P{l}": rng.standard_normal((batch, IMAGE_H // 2**l, IMAGE_W // 2**l, channels)).astype(np.float32)
        for l in LEVELS
    }


def _boxes_on_all_levels(rng, batch=2):
    """``[batch, 8, 4]`` pixel boxes, two per level (sqrt-areas 30/80, 120/200, 250/400, 500/700), some off-image."""
    boxes = []
    for _ in range(batch):
        per_image = []
        for size in (30, 80, 120, 200, 250, 400, 500, 700):
            h = size * rng.uniform(0.7, 1.3)
            w = size * size / h
            cy, cx = rng.uniform(-10, IMAGE_H + 10), rng.uniform(-10, IMAGE_W + 10)
            per_image.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
        boxes.append(per_image)
    return np.asarray(boxes, np.float32)


# ---- independent NumPy reference (detectron2 ROIAlign, aligned=True) -------------------


def _bilinear(fmap, y, x):
    """detectron2 ``bilinear_interpolate``: 0 beyond one cell outside, edge clamp within it."""
    height, width = fmap.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(fmap.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * fmap[y0, x0]
        + (1 - ly) * lx * fmap[y0, x1]
        + ly * (1 - lx) * fmap[y1, x0]
        + ly * lx * fmap[y1, x1]
    )


def _reference_roi_align(fmap, box, stride, output_size=7, sampling_ratio=2):
    """One box, one ``[H, W, C]`` level -> ``[S, S, C]``: bins of averaged sub-bin-centre samples."""
    y1, x1, y2, x2 = np.asarray(box, np.float64) / stride - 0.5
    bin_h, bin_w = (y2 - y1) / output_size, (x2 - x1) / output_size
    out = np.zeros((output_size, output_size, fmap.shape[-1]))
    for i in range(output_size):
        for j in range(output_size):
            samples = [
                _bilinear(
                    fmap,
                    y1 + i * bin_h + (a + 0.5) * bin_h / sampling_ratio,
                    x1 + j * bin_w + (b + 0.5) * bin_w / sampling_ratio,
                )
                for a in range(sampling_ratio)
                for b in range(sampling_ratio)
            ]
            out[i, j] = np.mean(samples, axis=0)
    return out


def _reference_level(box):
    size = math.sqrt(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))
    return int(min(max(math.floor(4 + math.log2(size / 224 + 1e-8)), 2), 5))


# ---- tests ------------------------------------------------------------------------------


def test_assign_levels_hand_computed():
    boxes = tf.constant(
        [[0, 0, 224, 224], [10, 10, 122, 122], [0, 0, 448, 448], [0, 0, 1000, 1000], [0, 0, 10, 10], [0, 0, 0, 0]],
        tf.float32,
    )
    np.testing.assert_array_equal(roi_align.assign_levels(boxes).numpy(), [4, 3, 5, 5, 2, 2])
    # Batched leading dims and other ranges.
    batched = tf.reshape(boxes, [2, 3, 4])
    np.testing.assert_array_equal(roi_align.assign_levels(batched, max_level=6).numpy(), [[4, 3, 5], [6, 2, 2]])


@pytest.mark.parametrize("use_gather", [False, True])
def test_multilevel_roi_align_matches_numpy_reference(use_gather):
    rng = np.random.default_rng(0)
    features, boxes = _features(rng), _boxes_on_all_levels(rng)
    levels = [[_reference_level(b) for b in image] for image in boxes]
    assert set(sum(levels, [])) == set(LEVELS), levels  # every level is exercised

    got = roi_align.multilevel_roi_align(features, tf.constant(boxes), use_gather=use_gather).numpy()
    assert got.shape == (2, 8, 7, 7, 3)
    for b in range(2):
        for r in range(8):
            level = levels[b][r]
            expected = _reference_roi_align(features[f"P{level}"][b], boxes[b, r], 2**level)
            np.testing.assert_allclose(got[b, r], expected, atol=1e-4, err_msg=f"image {b} box {r} P{level}")


def test_border_box_is_not_darkened():
    # A constant map: every sample inside or within one cell of the map is 1, so every bin is 1.
    features = {f"P{l}": np.ones((1, IMAGE_H // 2**l, IMAGE_W // 2**l, 1), np.float32) for l in LEVELS}
    boxes = tf.constant([[[0, 0, 32, 32], [IMAGE_H - 20, IMAGE_W - 20, IMAGE_H, IMAGE_W]]], tf.float32)
    for use_gather in (False, True):
        got = roi_align.multilevel_roi_align(features, boxes, use_gather=use_gather).numpy()
        np.testing.assert_allclose(got, 1.0, atol=1e-6)


@pytest.mark.parametrize("crop_size", [(1, 1), (14, 14), (3, 5)])
def test_gather_twin_equals_crop_and_resize(crop_size):
    rng = np.random.default_rng(1)
    image = rng.standard_normal((3, 9, 11, 4)).astype(np.float32)
    boxes = np.concatenate(
        [
            rng.uniform(-0.4, 1.4, (24, 4)),  # partly outside, some inverted
            np.tile(rng.uniform(0, 1, (8, 2)), 2) + rng.uniform(0, 1e-3, (8, 4)),  # tiny
            [[0, 0, 1, 1], [1, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]],
        ]
    ).astype(np.float32)
    indices = rng.integers(0, 3, len(boxes)).astype(np.int32)
    expected = tf.image.crop_and_resize(image, boxes, indices, crop_size, extrapolation_value=-2.0)
    got = gather.crop_and_resize_bilinear(image, boxes, indices, crop_size, extrapolation_value=-2.0)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


def test_gradients_of_both_kernels_agree():
    rng = np.random.default_rng(2)
    features = {k: tf.Variable(v) for k, v in _features(rng).items()}
    boxes = tf.constant(_boxes_on_all_levels(rng))
    weights = tf.constant(rng.standard_normal((2, 8, 7, 7, 3)).astype(np.float32))

    def grads(use_gather):
        with tf.GradientTape() as tape:
            out = roi_align.multilevel_roi_align(features, boxes, use_gather=use_gather)
            loss = tf.reduce_sum(out * weights)
        return tape.gradient(loss, features)

    by_crop, by_gather = grads(False), grads(True)
    for key in features:
        a, b = tf.convert_to_tensor(by_crop[key]).numpy(), tf.convert_to_tensor(by_gather[key]).numpy()
        assert np.abs(a).max() > 0, key  # every level receives gradient
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=key)


def test_gather_path_compiles_with_xla():
    rng = np.random.default_rng(3)
    features, boxes = _features(rng), tf.constant(_boxes_on_all_levels(rng))
    compiled = tf.function(lambda f, b: roi_align.multilevel_roi_align(f, b, use_gather=True), jit_compile=True)
    eager = roi_align.multilevel_roi_align(features, boxes, use_gather=True)
    np.testing.assert_allclose(compiled(features, boxes).numpy(), eager.numpy(), atol=1e-5)


def test_layer_contract_and_symbolic_call():
    rng = np.random.default_rng(4)
    features, boxes = _features(rng, channels=8), _boxes_on_all_levels(rng)
    kwargs = dict(
        output_size=5,
        sampling_ratio=2,
        min_level=2,
        max_level=5,
        canonical_size=224,
        canonical_level=4,
        use_gather=True,
    )

    class _Wrapped(roi_align.RoIAlign):
        """Adapts ``call(features, boxes)`` to the helper's single nested input."""

        def call(self, inputs):
            return super().call(inputs["features"], inputs["boxes"])

    out = check_layer_contract(_Wrapped, kwargs, {"features": features, "boxes": boxes})
    assert tuple(out.shape) == (2, 8, 5, 5, 8)

    # The plain layer on keras.Input with unknown spatial sizes and RoI count.
    inputs = {f"P{l}": keras.Input(shape=(None, None, 8), name=f"P{l}") for l in LEVELS}
    box_input = keras.Input(shape=(None, 4), name="boxes")
    symbolic = roi_align.RoIAlign()(inputs, box_input)
    assert tuple(symbolic.shape) == (None, None, 7, 7, 8)
    model = keras.Model([inputs, box_input], symbolic)
    eager = model([features, boxes])
    np.testing.assert_allclose(
        eager.numpy(), roi_align.multilevel_roi_align(features, tf.constant(boxes)).numpy(), atol=1e-6
    )


def test_gather_path_converts_to_tflite_builtins():
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    rng = np.random.default_rng(5)
    features = [rng.standard_normal((1, 64 // 2**l, 64 // 2**l, 2)).astype(np.float32) for l in LEVELS]
    boxes = np.array([[[0, 0, 20, 30], [10, 5, 150, 90], [-8, 30, 200, 270], [20, 20, 600, 500]]], np.float32)

    @tf.function(input_signature=[tf.TensorSpec(a.shape, tf.float32) for a in features + [boxes]])
    def align(p2, p3, p4, p5, b):
        return roi_align.multilevel_roi_align({"P2": p2, "P3": p3, "P4": p4, "P5": p5}, b, use_gather=True)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([align.get_concrete_function()], align)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex
    interpreter = interpreter_module.Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    for detail, value in zip(interpreter.get_input_details(), features + [boxes]):
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    expected = roi_align.multilevel_roi_align(dict(zip(("P2", "P3", "P4", "P5"), features)), boxes)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
