"""TFLite: builtins only (a Flex op fails the test), parity with Keras, float16 / int8 variants run."""

import numpy as np
import pytest
import tensorflow as tf

from kdet.serving import tflite
from kdet.face.cascade import FaceCascade
from kdet.detectors.retinanet import RetinaNet
from tests.detection_parity import assert_same_detections, block_image, match_fraction

SIZE = (128, 128)


def _keras(model, image):
    return {k: v.numpy() for k, v in model.detect(tf.constant(image[None], tf.float32)).items()}


@pytest.fixture(scope="module")
def retinanet():
    import keras

    keras.utils.set_random_seed(7)
    model = RetinaNet(num_classes=3, backbone="tiny", fpn_filters=16,
                      head=dict(num_convs=1, filters=16, prior_probability=0.3),
                      postprocess=dict(pre_nms_top_k=50, max_detections=20))
    model.detect(tf.zeros((1,) + SIZE + (3,)))
    return model


@pytest.fixture(scope="module")
def retinanet_float32(retinanet):
    return tflite.convert(retinanet, input_size=SIZE)


def test_retinanet_float32_matches_keras_and_is_builtins_only(retinanet, retinanet_float32):
    assert tflite.flex_ops(retinanet_float32) == []
    runner = tflite.LiteRTDetector(retinanet_float32)
    for seed in range(3):
        image = block_image(seed)
        expected = _keras(retinanet, image)
        assert expected["num_detections"][0] > 0
        assert_same_detections(expected, runner(image), min_iou=0.99, score_tolerance=1e-4)
    info = tflite.summary(retinanet_float32)
    assert info["inputs"] == {"images": {"shape": [1, 128, 128, 3], "dtype": "uint8"}}
    assert info["outputs"]["boxes"] == {"shape": [1, 20, 4], "dtype": "float32"}
    assert "NON_MAX_SUPPRESSION_V5" in info["ops"] and info["flex_ops"] == []
    with pytest.raises(ValueError, match=r"uint8 images of shape \(128, 128, 3\)"):
        runner(np.zeros((64, 64, 3), np.uint8))


def test_retinanet_float16_and_int8(retinanet, retinanet_float32):
    half = tflite.convert(retinanet, input_size=SIZE, quantization="float16")
    calibration = [block_image(seed) for seed in range(8)]
    int8 = tflite.convert(retinanet, input_size=SIZE, quantization="int8", representative_images=calibration)
    assert len(half) < 0.6 * len(retinanet_float32) and len(int8) < 0.4 * len(retinanet_float32)
    for flatbuffer in (half, int8):
        assert tflite.flex_ops(flatbuffer) == []
    image = block_image(0)
    expected = _keras(retinanet, image)
    # float16 weights: boxes and scores move by ~1e-3; stated tolerance IoU >= 0.95, |dscore| <= 5e-3, 90% matched
    assert match_fraction(expected, tflite.LiteRTDetector(half)(image), min_iou=0.95, score_tolerance=5e-3) >= 0.9
    out = tflite.LiteRTDetector(int8)(image)  # accuracy of int8: benchmarks/tflite_latency.py (AP drop)
    assert out["boxes"].shape == (1, 20, 4) and 0 <= out["num_detections"][0] <= 20
    assert "CONV_2D" in tflite.ops_used(int8)
    with pytest.raises(ValueError, match="representative_images"):
        tflite.convert(retinanet, input_size=SIZE, quantization="int8")
    with pytest.raises(ValueError, match="quantization must be one of"):
        tflite.convert(retinanet, input_size=SIZE, quantization="int4")


@pytest.mark.parametrize("pipeline", ["default", "recipe"])
def test_face_cascade_float32_matches_keras(pipeline):
    import keras

    keras.utils.set_random_seed(7)
    test = dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=40, stage2_max_boxes=10, max_detections=7)
    if pipeline == "recipe":  # the face recipes' test pipeline: area pyramid, nearest crops, NMS before the budgets
        from recipes.face_cascade import build_model

        test = {**build_model(1, backbone="none", backbone_weights=None).test_spec.to_config(), **test}
        assert (test["pyramid"], test["crop_method"]) == ("area", "nearest")
    model = FaceCascade(test=test)
    model.build(None)
    flatbuffer = tflite.convert(model.export_variant((96, 128)), input_size=(96, 128))
    assert tflite.flex_ops(flatbuffer) == []
    runner = tflite.LiteRTDetector(flatbuffer)
    for seed in range(2):
        image = block_image(seed, (96, 128))
        expected = _keras(model, image)  # the user's model: tf.image resize and crop_and_resize
        assert expected["num_detections"][0] > 0
        assert_same_detections(expected, runner(image), min_iou=0.99, score_tolerance=1e-4)


def test_flex_ops_are_found_and_refused():
    class Crops(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32)])
        def __call__(self, images):
            return tf.image.crop_and_resize(images, [[0.1, 0.1, 0.9, 0.9]], [0], [4, 4])

    module = Crops()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    assert tflite.flex_ops(converter.convert()) == ["FlexCropAndResize"]
    model = FaceCascade(test=dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=8, stage2_max_boxes=4))
    model.build(None)
    with pytest.raises(Exception, match="CropAndResize|ScaleAndTranslate"):
        tflite.convert(model, input_size=(48, 64))  # not the export variant: tf.image ops have no builtin


def test_face_cascade_three_models_and_host_loop_match_keras():
    import keras

    from kdet.face import lite

    keras.utils.set_random_seed(7)
    # no budget cuts after x12 (an untrained net scores windows nearly alike: a 1e-6 difference would reorder them)
    config = dict(test=dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=40, stage2_max_boxes=40, max_detections=50,
                            crop_source="image"))
    model = FaceCascade(**config)
    model.build(None)
    stages = lite.convert_stages(model.export_variant((96, 128)), input_size=(96, 128))
    for flatbuffer in stages.values():
        assert tflite.flex_ops(flatbuffer) == []
    loop = lite.FaceCascadeLite(stages, model.get_config())
    for seed in range(2):
        # noise everywhere: flat regions give an untrained x12 exactly tied scores, and ties may resolve either way
        image = np.random.default_rng(seed).integers(0, 255, (96, 128, 3)).astype(np.uint8)
        expected = _keras(model, image)
        assert expected["num_detections"][0] > 0
        assert_same_detections(expected, loop(image), min_iou=0.99, score_tolerance=1e-4)
    calibration = [block_image(seed, (96, 128)) for seed in range(3)]
    int8 = lite.convert_stages(model, input_size=(96, 128), quantization="int8",
                                    representative_images=calibration)
    out = lite.FaceCascadeLite(int8, model.test_spec)(calibration[0])
    assert out["boxes"].shape == (1, 50, 4) and all(tflite.flex_ops(f) == [] for f in int8.values())


def test_host_loop_pieces_match_their_tensorflow_twins():
    from kdet.face import lite
    from kdet.face.pyramid import crop_boxes_for, square_boxes

    image = np.random.default_rng(0).uniform(0, 255, (30, 40, 3)).astype(np.float32)
    boxes = np.array([[2, 3, 14, 20], [-4, 30, 10, 44], [5.5, 6.25, 29, 39]], np.float32)
    expected = tf.image.crop_and_resize(image[None], crop_boxes_for(tf.constant(boxes), image_size=(30, 40), crop=12),
                                        tf.zeros([3], tf.int32), (12, 12)).numpy()
    np.testing.assert_allclose(lite.crop_patches(image, boxes, 12), expected, atol=1e-3)
    np.testing.assert_allclose(lite.square_boxes(boxes), square_boxes(tf.constant(boxes)).numpy(), atol=1e-6)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    overlapping = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    assert lite.greedy_nms(overlapping, scores, 0.3, 10).tolist() == [0, 2]
    assert lite.greedy_nms(overlapping, scores, 0.3, 1).tolist() == [0]


def test_face_cascade_without_survivors_returns_zero_detections():
    """An image where no window passes a stage: no empty tensor reaches a TFLite op that refuses one."""
    model = FaceCascade(test=dict(thresholds=(0.0, 1.1, 1.1), stage1_max_boxes=8, stage2_max_boxes=4))  # nothing passes
    model.build(None)
    runner = tflite.LiteRTDetector(tflite.convert(model.export_variant((48, 64)), input_size=(48, 64)))
    out = runner(np.zeros((48, 64, 3), np.uint8))
    assert int(out["num_detections"][0]) == 0
    assert int(model.detect(tf.zeros([1, 48, 64, 3]))["num_detections"][0]) == 0


def test_consistent_retinanet_with_its_second_regression_matches_keras():
    """ConRetinaNet's inference applies two regressions in turn (Table 3's 2/2): same detections in TFLite."""
    import keras

    keras.utils.set_random_seed(11)
    model = RetinaNet(num_classes=3, backbone="tiny", fpn_filters=16,
                      head=dict(num_convs=1, filters=16, prior_probability=0.3),
                      postprocess=dict(pre_nms_top_k=20, max_detections=100),  # K above the candidates: no near-tie cut
                      classification_loss="ap", consistent=dict(cls_terms=2, reg_terms=2))
    model.detect(tf.zeros((1,) + SIZE + (3,)))
    flatbuffer = tflite.convert(model, input_size=SIZE)
    assert tflite.flex_ops(flatbuffer) == []
    image = block_image(4)
    expected = _keras(model, image)
    assert expected["num_detections"][0] > 0
    assert_same_detections(expected, tflite.LiteRTDetector(flatbuffer)(image), min_iou=0.99, score_tolerance=1e-4)


def test_converter_noise_is_kept_off_a_quiet_terminal_and_replayed_on_failure(monkeypatch, capfd):
    """The converter's absl lines, the calibrator's printf and TF's interpreter deprecation warning (kdet's CLI)."""
    import os
    import warnings

    from kdet.serving.tflite import converter_output_quieted

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with converter_output_quieted():
            os.write(1, b"fully_quantize: 0, inference_type: 6\n")
            os.write(2, b"W0000 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.\n")
            warnings.warn("    Warning: tf.lite.Interpreter is deprecated and is scheduled for deletion", UserWarning)
            warnings.warn("a warning of kdet's own", UserWarning)
    assert [str(w.message) for w in caught] == ["a warning of kdet's own"]
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""
    with pytest.raises(RuntimeError, match="conversion failed"):
        with converter_output_quieted():
            os.write(2, b"E0000 the converter's reason\n")
            raise RuntimeError("conversion failed")
    assert "the converter's reason" in capfd.readouterr().err  # a failure shows what the converter said
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # kdet --verbose: everything passes
    with converter_output_quieted():
        os.write(2, b"W0000 visible\n")
    assert "W0000 visible" in capfd.readouterr().err
