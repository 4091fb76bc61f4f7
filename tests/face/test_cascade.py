"""The joint face cascade: pyramid maths, response-map pooling, mining labels, threshold control, joint fit."""

import json

import numpy as np
import pytest
import tensorflow as tf
import keras

from kdet import boxes as box_ops
from kdet.face import mining
from kdet.face.cascade import BRANCHES, FaceCascade
from kdet.face.specs import FaceTestSpec, FaceTrainingSpec
from kdet.specs import to_config
from kdet.face.pyramid import (
    best_levels,
    block_cells,
    block_maxima_values,
    block_winners,
    build_pyramid,
    crop_boxes_for,
    gather_crops,
    pyramid_scales,
    pyramid_sources,
    response_map_max_pool,
    square_boxes,
    window_boxes,
)
from kdet.face.nets import Face12Net, ThresholdControl, trunk_extent
from kdet.face.resize import resize_level, resize_level_gather, resize_taps
from kdet.face import stages


# ------------------------------------------------------------------ pyramid maths
def test_pyramid_scales_start_at_min_face_and_stop_at_window():
    scales = pyramid_scales((100, 200), min_face_size=24, window=12, levels_per_octave=2)
    # 12/24 = 0.5, then 0.5 * 2**-0.5 ... while 100 * s >= 12
    expected = [0.5 * 2 ** (-k / 2) for k in range(7) if 100 * 0.5 * 2 ** (-k / 2) >= 12]
    np.testing.assert_allclose(scales, expected)
    assert 100 * scales[-1] >= 12 > 100 * scales[-1] * 2 ** -0.5
    assert pyramid_scales((10, 10), min_face_size=12) == []
    with pytest.raises(ValueError, match="min_face_size"):
        pyramid_scales((10, 10), min_face_size=0)


def test_window_boxes_map_level_windows_to_image_pixels():
    boxes = window_boxes((2, 3), stride=2, window=12, scale_yx=(0.5, 0.25)).numpy()
    assert boxes.shape == (6, 4)
    np.testing.assert_allclose(boxes[0], [0, 0, 24, 48])
    np.testing.assert_allclose(boxes[4], [4, 8, 28, 56])  # (i, j) = (1, 1)


def test_face12_output_cell_sees_its_window():
    """Cell (i, j) of x12 depends on input rows [2i, 2i + 12) and nothing outside."""
    net = Face12Net()
    image = tf.Variable(tf.random.normal([1, 30, 30, 3]))
    with tf.GradientTape() as tape:
        out = net(image)["logits"][0, 3, 5, 1]
    grad = tf.reduce_sum(tf.abs(tape.gradient(out, image))[0], axis=-1).numpy()
    rows, cols = np.nonzero(grad)
    assert rows.min() >= 6 and rows.max() < 18 and cols.min() >= 10 and cols.max() < 22


def test_square_boxes_and_crop_boxes_sample_pixel_centres():
    np.testing.assert_allclose(square_boxes(tf.constant([[10.0, 20.0, 30.0, 60.0]])).numpy(), [[0, 20, 40, 60]])
    image = tf.reshape(tf.range(20 * 30, dtype=tf.float32), [1, 20, 30, 1])
    box = tf.constant([[4.0, 6.0, 12.0, 14.0]])  # exactly 8x8 pixels
    crop = tf.image.crop_and_resize(image, crop_boxes_for(box, image_size=(20, 30), crop=8), [0], (8, 8))
    np.testing.assert_allclose(crop.numpy()[0, ..., 0], image.numpy()[0, 4:12, 6:14, 0], atol=1e-3)


def test_best_levels_picks_the_smallest_level_still_at_least_the_patch():
    scales = [1.0, 0.5, 0.25]
    boxes = tf.constant([[0, 0, 100, 100], [0, 0, 30, 30], [0, 0, 10, 10], [0, 0, 48, 40]], tf.float32)
    np.testing.assert_array_equal(best_levels(boxes, scales, crop=24).numpy(), [2, 0, 0, 1])


# ------------------------------------------------------------------ response-map pooling
def _block_max_reference(scores: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(scores)
    for b in range(scores.shape[0]):
        for y in range(0, scores.shape[1], k):
            for x in range(0, scores.shape[2], k):
                block = scores[b, y:y + k, x:x + k]
                i, j = np.unravel_index(np.argmax(block), block.shape)  # first maximum in row-major order
                out[b, y + i, x + j] = block[i, j]
    return out


@pytest.mark.parametrize("shape,k", [((2, 8, 8), 2), ((1, 7, 5), 2), ((1, 9, 10), 3), ((1, 4, 4), 1)])
def test_response_map_max_pool_keeps_exactly_the_block_maxima(shape, k):
    rng = np.random.default_rng(sum(shape) + k)
    scores = rng.random(shape).astype(np.float32)
    scores[0, 0, :2] = 0.9  # a tie inside the first block: the first one survives
    kept = response_map_max_pool(tf.constant(scores), k).numpy()
    np.testing.assert_array_equal(kept, _block_max_reference(scores, k))
    if k > 1:
        blocks = -(-shape[1] // k) * -(-shape[2] // k) * shape[0]
        assert np.count_nonzero(kept) == blocks
    # the test pipeline's form: every block's maximum, then the winning point of the blocks asked for
    best = block_maxima_values(tf.constant(scores), k).numpy()
    assert best.shape == (shape[0], -(-shape[1] // k), -(-shape[2] // k))
    flat = scores.reshape(shape[0], -1)
    everyone = np.tile(np.arange(best[0].size, dtype=np.int32), (shape[0], 1))
    cells = block_winners(tf.constant(flat), block_cells([shape[1:]], k), tf.constant(everyone)).numpy()
    rebuilt = np.zeros_like(flat)
    for b in range(shape[0]):
        rebuilt[b, cells[b]] = best[b].ravel()
    np.testing.assert_array_equal(rebuilt.reshape(shape), kept)


def test_block_winners_over_several_maps():
    # two maps numbered in one sequence, as x12's pyramid levels are; partial blocks at the edges
    rng = np.random.default_rng(3)
    maps = [rng.random((1, 5, 7)).astype(np.float32), rng.random((1, 3, 3)).astype(np.float32)]
    maps[1][0, 2, 2] = 2.0  # alone in its (partial) block, past-the-edge points must not win
    maps[0][0, 0, 1] = maps[0][0, 1, 0] = 3.0  # a tie: the first in row-major order wins
    cells = block_cells([m.shape[1:] for m in maps], 2)
    assert cells.shape == (12 + 4, 4)
    assert cells[11].tolist() == [4 * 7 + 6, 44, 44, 44] and cells[-1].tolist() == [35 + 8, 44, 44, 44]
    values = np.concatenate([block_maxima_values(tf.constant(m), 2).numpy().reshape(1, -1) for m in maps], 1)
    flat = np.concatenate([m.reshape(1, -1) for m in maps], axis=1)
    chosen = np.array([[15, 0, 11]], np.int32)
    winners = block_winners(tf.constant(flat), cells, tf.constant(chosen)).numpy()
    np.testing.assert_array_equal(winners, [[35 + 8, 1, 4 * 7 + 6]])
    np.testing.assert_array_equal(flat[0, winners[0]], values[0, chosen[0]])


# ------------------------------------------------------------------ mining
def test_label_windows_hand_built():
    gt = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    windows = np.array([
        [0, 0, 10, 10],    # IoU 1 -> face
        [0, 1, 10, 11],    # 90 / 110 = 0.818 -> face
        [0, 2, 10, 12],    # 80 / 120 = 0.667 -> unused
        [0, 5, 10, 15],    # 50 / 150 = 0.333 -> non-face
        [30, 30, 40, 40],  # 0 -> non-face
        [50, 52, 60, 62],  # 0.667 with the ignored face -> unused, never a face
        [50, 55, 60, 65],  # 0.333 with the ignored face -> non-face
    ], np.float32)
    labels, matched, max_iou = mining.label_windows(windows, gt, ignore=np.array([False, True]))
    np.testing.assert_array_equal(labels, [1, 1, -1, 0, 0, -1, 0])
    np.testing.assert_array_equal(matched, [0, 0, -1, -1, -1, -1, -1])
    np.testing.assert_allclose(max_iou[:4], [1, 90 / 110, 80 / 120, 50 / 150], rtol=1e-6)
    labels, _, _ = mining.label_windows(windows, np.zeros((0, 4), np.float32))
    assert (labels == 0).all()


def test_mine_image_patches_offsets_and_flip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 160, 3)).astype(np.uint8)
    face = np.array([[32.0, 40.0, 80.0, 88.0]], np.float32)  # 48 px on the stride-8 grid: a window at scale 1 is it
    samples = mining.mine_image(image, face, rng=rng, min_face_size=48, negatives_per_image=20)
    pos = samples.labels == 1
    assert pos.sum() >= 1 and (samples.labels == 0).sum() == 20
    ious = box_ops.pairwise_iou_numpy(samples.windows, face)[:, 0]
    assert (ious[pos] > 0.8).all() and (ious[~pos] < 0.5).all()
    # the best positive is the exact window, at scale 1: its patch is the image's pixels
    best = np.argmax(np.where(pos, ious, -1))
    np.testing.assert_allclose(samples.windows[best], face[0])
    np.testing.assert_array_equal(samples.patches[best], image[32:80, 40:88])
    decoded = box_ops.BoxCoder().decode(tf.constant(samples.offsets[pos]), tf.constant(samples.windows[pos]))
    np.testing.assert_allclose(decoded.numpy(), np.repeat(face, pos.sum(), 0), atol=1e-3)
    flipped = mining.flip_samples(samples)
    np.testing.assert_array_equal(flipped.patches[best], image[32:80, 40:88][:, ::-1])
    np.testing.assert_allclose(flipped.offsets[:, 1], -samples.offsets[:, 1])


def test_mine_face_samples_keeps_the_positive_fraction():
    rng = np.random.default_rng(1)
    examples = [{"image": rng.integers(0, 255, (96, 96, 3)).astype(np.uint8),
                 "boxes": np.array([[10.0, 10.0, 40.0, 40.0], [50.0, 40.0, 90.0, 80.0]], np.float32)}
                for _ in range(3)]
    samples = mining.mine_face_samples(examples, positive_fraction=0.25, progress=False, min_face_size=24,
                                            negatives_per_image=200)
    pos = (samples.labels == 1).sum()
    assert pos > 0 and abs(pos / len(samples) - 0.25) < 0.02
    assert set(np.unique(samples.image_index)) == {0, 1, 2}
    mean, std = mining.offset_statistics(samples)
    assert len(mean) == 4 and all(s > 0 for s in std)


# ------------------------------------------------------------------ model
def _patches(n, seed):
    """Faces are bright discs centred with a small offset; non-faces noise (a learnable toy)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.int32)
    yy, xx = np.mgrid[:48, :48]
    patches = rng.integers(0, 120, (n, 48, 48, 3)).astype(np.float32)
    offsets = np.zeros((n, 4), np.float32)
    for i in np.flatnonzero(labels):
        dy, dx = rng.integers(-6, 7, 2)
        patches[i][(yy - 24 - dy) ** 2 + (xx - 24 - dx) ** 2 < 14 ** 2] = 230
        offsets[i] = [dy / 48, dx / 48, 0, 0]
    return patches.astype(np.uint8), {"labels": labels, "offsets": offsets}


def test_threshold_control_passes_gradient_only_from_surviving_samples():
    model = FaceCascade(dropout=0.0)
    model.build()
    x, y = _patches(32, 0)
    # spread x12's face logit around its median so that about half the samples fail 0.1
    logits_layer = model.x12.logits
    logits_layer.kernel.assign(tf.random.normal(logits_layer.kernel.shape, seed=1))
    diff = (model(x)["x12_logits"] @ tf.constant([[-1.0], [1.0]]))[:, 0].numpy()
    logits_layer.kernel.assign(logits_layer.kernel * 10.0 / diff.std())
    logits_layer.bias.assign([0.0, -10.0 * np.median(diff) / diff.std()])
    out = model(x)
    mask = model.branch_masks(out, tf.constant(y["labels"]))["x24"].numpy()
    assert 0 < mask.sum() < len(mask), mask
    survivors = np.flatnonzero(mask)

    def x24_loss(index):
        with tf.GradientTape() as tape:
            o = model(tf.gather(x, index))
            m = model.branch_masks(o, tf.gather(y["labels"], index))["x24"]
            loss = tf.reduce_sum(m * tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.gather(y["labels"], index), o["x24_logits"]))
        return loss, tape.gradient(loss, model.trainable_weights)

    full_loss, full_grads = x24_loss(np.arange(32))
    sub_loss, sub_grads = x24_loss(survivors)
    np.testing.assert_allclose(full_loss.numpy(), sub_loss.numpy(), rtol=1e-5)
    for w, a, b in zip(model.trainable_weights, full_grads, sub_grads):
        if a is None:
            assert b is None, w.path
        else:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=w.path)
    # the x24 loss reaches x12's convs through the concatenated feature (joint), not through the mask
    names = [w.path for w, g in zip(model.trainable_weights, full_grads) if g is not None]
    assert any("x12/conv" in n for n in names) and not any("x12/logits" in n for n in names)
    logits = tf.Variable(out["x12_logits"])
    with tf.GradientTape() as tape:
        m = ThresholdControl(threshold=0.1)(logits)
    assert tape.gradient(m, logits) is None


def _branch_losses(model, x, y):
    out = model(x)
    labels = tf.constant(y["labels"])
    targets = model.normalize_offsets(y["offsets"])
    pos = tf.cast(labels == 1, tf.float32)
    result = {}
    for name in ("x12", "x24", "x48"):
        result[f"{name}_cls"] = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, out[f"{name}_logits"])))
        err = tf.abs(out[f"{name}_offsets"] - targets)
        result[f"{name}_box"] = float(tf.reduce_sum(pos[:, None] * tf.where(err < 1, 0.5 * err ** 2, err - 0.5))
                                      / tf.reduce_sum(pos))
    return result


def test_tiny_joint_fit_every_branch_loss_falls():
    keras.utils.set_random_seed(0)
    x, y = _patches(256, 1)
    pos = y["labels"] == 1
    model = FaceCascade(training=dict(offset_mean=(0, 0, 0, 0), offset_std=tuple(y["offsets"][pos].std(0).clip(0.05))))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = _branch_losses(model, x, y)
    history = model.fit(x, y, batch_size=32, epochs=6, verbose=0)
    after = _branch_losses(model, x, y)
    for key in before:
        assert after[key] < 0.6 * before[key], (key, before[key], after[key])
    for name in ("x12", "x24", "x48"):
        assert f"{name}_cls_loss" in history.history and f"{name}_box_loss" in history.history


def test_separate_training_updates_only_its_branch():
    x, y = _patches(64, 2)
    model = FaceCascade(train_branches=("x24",))
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    model.build()
    before = [w.numpy().copy() for w in model.weights]
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    changed = {w.path for w, v in zip(model.weights, before) if not np.array_equal(v, w.numpy())}
    assert changed and all("/x24/" in p for p in changed), changed


def test_config_round_trip_and_bad_arguments():
    kwargs = dict(training=FaceTrainingSpec(thresholds=(0.2, 0.01), loss_weights=(1.0, 0.5, 0.5),
                                            offset_std=(0.1, 0.1, 0.2, 0.2)),
                  train_branches=("x12",),
                  test=FaceTestSpec(min_face_size=16, thresholds=(0.4, 0.5, 0.6), pool_size=3, crop_source="image",
                                    crop_method="nearest", max_detections=50))
    model = FaceCascade(**kwargs)
    config = model.get_config()
    for key, value in kwargs.items():
        assert config[key] == to_config(value)
    assert FaceCascade.from_config(config).get_config() == config
    assert FaceCascade(**json.loads(json.dumps(config))).get_config() == config  # as a model directory stores it
    with pytest.raises(ValueError, match="train_branches"):
        FaceCascade(train_branches=("x36",))
    with pytest.raises(ValueError, match="FaceTestSpec.crop_source"):
        FaceCascade(test=dict(crop_source="video"))
    with pytest.raises(ValueError, match="FaceTrainingSpec.loss_weights"):
        FaceCascade(training=dict(loss_weights=(1.0, 1.0)))
    with pytest.raises(ValueError, match="FaceTestSpec has no field"):
        FaceCascade(test=dict(test_thresholds=(0.1, 0.1, 0.1)))


@pytest.mark.parametrize("crop_source,crop_method", [("pyramid", "bilinear"), ("image", "nearest")])
def test_detect_output_contract(crop_source, crop_method):
    model = FaceCascade(test=dict(thresholds=(0.0, 0.0, 0.0), crop_source=crop_source, crop_method=crop_method,
                                  stage1_max_boxes=40, stage2_max_boxes=10, max_detections=7))
    images = np.random.default_rng(0).integers(0, 255, (2, 96, 128, 3)).astype(np.uint8)
    out = model.predict(images, batch_size=2, verbose=0)
    assert out["boxes"].shape == (2, 7, 4) and out["scores"].shape == (2, 7)
    assert (out["num_detections"] > 0).all()
    n = out["num_detections"][0]
    assert (out["boxes"][0, :n, 2:] <= [96, 128]).all() and (out["boxes"][0, :n] >= 0).all()
    assert (out["classes"][0, :n] == 0).all() and (out["classes"][0, n:] == -1).all()
    tiny = model.detect(tf.zeros([1, 8, 8, 3], tf.uint8))  # smaller than one x12 window at min_face_size
    assert int(tiny["num_detections"][0]) == 0
    with pytest.raises(ValueError, match="static H, W"):
        model.detect(tf.zeros([1, 8, 8], tf.uint8))


# ------------------------------------------------------------ TFLite-builtin twins
@pytest.mark.parametrize("size", [(339, 453), (240, 320), (170, 226), (600, 800), (7, 9), (480, 640)])
def test_gather_resize_matches_antialiased_tf_resize(size):
    images = tf.random.stateless_uniform([2, 480, 640, 3], (1, 2), 0, 255)
    np.testing.assert_allclose(resize_level_gather(images, size).numpy(), resize_level(images, size).numpy(),
                               atol=0.02, rtol=0)


@pytest.mark.parametrize("size", [(288, 384), (204, 272), (13, 17), (240, 320)])
def test_area_resize_taps_and_gather_twin_match_tf_area_resize(size):
    images = tf.random.stateless_uniform([1, 480, 640, 3], (3, 1), 0, 255)
    reference = tf.image.resize(images, size, method="area").numpy()
    np.testing.assert_allclose(resize_level(tf.cast(images, tf.uint8), size, method="area").numpy(),
                               tf.image.resize(tf.cast(images, tf.uint8), size, method="area").numpy())
    np.testing.assert_allclose(resize_level_gather(images, size, method="area").numpy(), reference,
                               atol=0.02, rtol=0)
    indices, weights = resize_taps(480, size[0], method="area")
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    assert indices.min() >= 0 and indices.max() < 480
    # a 5 -> 3 shrink by hand: spans [0, 5/3), [5/3, 10/3), [10/3, 5)
    indices, weights = resize_taps(5, 3, method="area")
    np.testing.assert_allclose(weights, [[0.6, 0.4, 0.0], [0.2, 0.6, 0.2], [0.4, 0.6, 0.0]], atol=1e-6)
    np.testing.assert_array_equal(indices, [[0, 1, 1], [1, 2, 3], [3, 4, 4]])
    with pytest.raises(ValueError, match="shrink"):
        resize_taps(3, 5, method="area")
    with pytest.raises(ValueError, match="method"):
        resize_level(images, size, method="bicubic")


def test_area_pyramid_is_area_resizes_of_each_source():
    images = tf.random.stateless_uniform([1, 96, 128, 3], (7, 7), 0, 255)
    scales = pyramid_scales((96, 128), min_face_size=16, window=12, levels_per_octave=2)
    area = build_pyramid(images, scales, method="area")
    for level, source in zip(area, pyramid_sources(scales)):
        origin = images if source < 0 else area[source]
        np.testing.assert_allclose(level.numpy(), tf.image.resize(origin, level.shape[1:3], method="area").numpy(),
                                   atol=1e-3)
    twin = build_pyramid(images, scales, method="area", use_gather=True)
    for a, b in zip(twin, area):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=0.02, rtol=0)


def test_gather_crops_match_per_level_crop_and_resize():
    images = tf.random.stateless_uniform([2, 120, 160, 3], (3, 4), 0, 255)
    scales = pyramid_scales((120, 160), min_face_size=16, window=12, levels_per_octave=2)
    levels = [images] + build_pyramid(images, scales)
    level_scales = [1.0] + list(scales)
    boxes = tf.constant([[10, 10, 40, 40], [0, 0, 24, 24], [50, 60, 118, 128], [-5, 140, 20, 165],
                         [30, 30, 33, 33]], tf.float32)
    index = tf.constant([0, 1, 0, 1, 0], tf.int32)
    reference = stages.crop_patches(FaceCascade(), levels, level_scales, boxes, index, (120, 160), 24)
    got = gather_crops(levels, level_scales, boxes, index, image_size=(120, 160), crop=24)
    assert got.shape == (5, 24, 24, 3)
    np.testing.assert_allclose(got.numpy(), reference.numpy(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_crops_of_the_first_samples_are_the_top_left_of_the_full_crops(method):
    images = tf.random.stateless_uniform([2, 120, 160, 3], (5, 6), 0, 255)
    scales = pyramid_scales((120, 160), min_face_size=16, window=12, levels_per_octave=2)
    levels, level_scales = [images] + build_pyramid(images, scales), [1.0] + list(scales)
    boxes = tf.constant([[10, 10, 58, 58], [-7, 3, 41, 51], [50, 60, 118, 128], [30, 30, 33, 33]], tf.float32)
    index = tf.constant([0, 1, 0, 1], tf.int32)
    model = FaceCascade(test=dict(crop_method=method))
    full = stages.crop_patches(model, levels, level_scales, boxes, index, (120, 160), 48).numpy()
    part = stages.crop_patches(model, levels, level_scales, boxes, index, (120, 160), 48, samples=41).numpy()
    assert part.shape == (4, 41, 41, 3)
    np.testing.assert_allclose(part, full[:, :41, :41], atol=1e-3, rtol=0)
    twin = gather_crops(levels, level_scales, boxes, index, image_size=(120, 160), crop=48, samples=41,
                        method=method)
    np.testing.assert_allclose(twin.numpy(), part, atol=1e-3, rtol=0)
    whole = gather_crops(levels, level_scales, boxes, index, image_size=(120, 160), crop=48, method=method)
    np.testing.assert_allclose(whole.numpy(), full, atol=1e-3, rtol=0)


@pytest.mark.parametrize("x24_trunk, samples", [("li", (23, 46)), ("rnet", (22, 44))])
def test_branches_read_only_their_input_extent(x24_trunk, samples):
    """Valid convs and floor pooling leave the last rows unread: outputs on the top-left crop are the same."""
    assert trunk_extent(((16, 3, (3, 2)), (16, 4, None)), 12) == 11
    model = FaceCascade(x24_trunk=x24_trunk, dropout=0.0)
    model.build(None)
    assert (model.x12.input_extent, model.x48.input_extent) == (11, 41)
    assert (model.patch_samples(2), model.patch_samples(3)) == samples
    patches = tf.random.stateless_uniform([3, 48, 48, 3], (7, 8), -2, 2)
    for depth, size in ((2, 24), (3, 48)):
        patch = tf.image.resize(patches, (size, size)) if size != 48 else patches
        extent = model.patch_samples(depth)
        full = model.branches(patch, depth=depth)
        part = model.branches(patch[:, :extent, :extent], depth=depth)
        for key in full:
            np.testing.assert_allclose(part[key].numpy(), full[key].numpy(), atol=1e-5, err_msg=key)
        # and one row fewer does change them: the extent is the least that works
        short = model.branches(tf.pad(patch[:, :extent - 1, :extent - 1], [[0, 0], [0, 1], [0, 1], [0, 0]]),
                               depth=depth)
        assert not np.allclose(short[f"{BRANCHES[depth - 1]}_logits"].numpy(),
                               full[f"{BRANCHES[depth - 1]}_logits"].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="too small"):
        trunk_extent(((8, 5, (3, 2)),), 6)


def _gather_twin_of(common: dict, images) -> FaceCascade:
    """A FaceCascade built with ``common``; asserts its ``use_gather`` twin detects the same faces on ``images``."""
    model = FaceCascade(**common)
    model.build(None)
    twin = FaceCascade(**common, use_gather=True)
    twin.build(None)
    twin.set_weights(model.get_weights())
    a, b = model.detect(images), twin.detect(images)
    np.testing.assert_array_equal(a["num_detections"].numpy(), b["num_detections"].numpy())
    np.testing.assert_allclose(b["scores"].numpy(), a["scores"].numpy(), atol=1e-5)
    np.testing.assert_allclose(b["boxes"].numpy(), a["boxes"].numpy(), atol=1e-2)
    return model


def test_use_gather_detects_the_same_faces():
    common = dict(test=dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=40, stage2_max_boxes=10, max_detections=7))
    images = tf.constant(np.random.default_rng(0).integers(0, 255, (2, 96, 128, 3)).astype(np.uint8))
    _gather_twin_of(common, images)
    # nearest crops (the recipes' validated test pipeline) have their gather twin too
    _gather_twin_of({"test": {**common["test"], "crop_method": "nearest"}}, images)
    with pytest.raises(ValueError, match="method must be"):
        gather_crops([images], [1.0], tf.zeros([1, 4]), tf.zeros([1], tf.int32), image_size=(96, 128), crop=24,
                     method="area")


# ------------------------------------------------------------ test-time speed settings
def test_octave_pyramid_averages_exact_halvings_and_its_gather_twin_agrees():
    images = tf.random.stateless_uniform([1, 96, 128, 3], (5, 6), 0, 255)
    scales = pyramid_scales((96, 128), min_face_size=16, window=12, levels_per_octave=2)
    reference = build_pyramid(images, scales)
    octave = build_pyramid(images, scales, method="octave")
    pooled = 0
    for level, ref, source in zip(octave, reference, pyramid_sources(scales)):
        assert level.shape == ref.shape
        if source >= 0 and octave[source].shape[1:3] == (2 * level.shape[1], 2 * level.shape[2]):
            # an exact halving of the level an octave up: its 2x2 mean
            np.testing.assert_allclose(level.numpy(), tf.nn.avg_pool2d(octave[source], 2, 2, "VALID").numpy(),
                                       atol=1e-4)
            pooled += 1
        else:
            np.testing.assert_allclose(level.numpy(), ref.numpy(), atol=1e-4)
    assert pooled >= 2
    twin = build_pyramid(images, scales, method="octave", use_gather=True)
    for a, b in zip(twin, octave):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="method"):
        build_pyramid(images, scales, method="lanczos")


def _run_steps(model, images):
    return {name: outputs for name, outputs in stages.detect_steps(model, images)}


def test_detect_steps_in_order_and_detect_is_their_last():
    model = FaceCascade(test=dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=40, stage2_max_boxes=10, max_detections=7))
    images = tf.constant(np.random.default_rng(1).integers(0, 255, (1, 96, 128, 3)).astype(np.uint8))
    steps = list(stages.detect_steps(model, images))
    assert [name for name, _ in steps] == ["pyramid", "x12", "x24", "x48", "nms"]
    out = dict(steps)
    assert out["x12"]["scores"].shape == (1, 40) and out["x24"]["boxes"].shape == (1, 10, 4)
    detected = model.detect(images)
    for key in detected:
        np.testing.assert_allclose(detected[key].numpy(), out["nms"][key].numpy(), atol=1e-6)
    assert [name for name, _ in stages.detect_steps(model, tf.zeros([1, 8, 8, 3], tf.uint8))] == ["nms"]


def test_stage_nms_passes_on_boxes_that_overlap_at_most_the_threshold():
    common = dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=30, stage2_max_boxes=8)
    model = FaceCascade(test=dict(**common, stage1_nms_iou=0.5, stage2_nms_iou=0.3))
    model.build(None)
    plain = FaceCascade(test=common)
    plain.build(None)
    plain.set_weights(model.get_weights())
    images = tf.constant(np.random.default_rng(2).integers(0, 255, (2, 96, 128, 3)).astype(np.uint8))
    steps, plain_steps = _run_steps(model, images), _run_steps(plain, images)
    for name, iou in (("x12", 0.5), ("x24", 0.3)):
        for b in range(2):
            scores, boxes = steps[name]["scores"][b].numpy(), steps[name]["boxes"][b].numpy()
            kept = boxes[scores > 0]
            assert 0 < len(kept) <= {"x12": 30, "x24": 8}[name]
            overlap = box_ops.pairwise_iou_numpy(kept, kept) - np.eye(len(kept))
            assert overlap.max() <= iou + 1e-5
            assert (np.diff(scores[scores > 0]) <= 1e-7).all()  # best first, as top-k passes them
    # NMS only drops boxes: the best x12 window is passed on either way
    np.testing.assert_allclose(steps["x12"]["scores"][:, 0].numpy(), plain_steps["x12"]["scores"][:, 0].numpy())
    out = model.detect(images)
    assert out["boxes"].shape == (2, 100, 4) and (out["num_detections"].numpy() > 0).all()


def test_bfloat16_compute_keeps_float32_weights_and_close_scores():
    common = dict(test=dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=40, stage2_max_boxes=10, max_detections=7))
    model = FaceCascade(**common)
    model.build(None)
    half = FaceCascade(**common, compute_dtype="bfloat16")
    half.build(None)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert half.x48.convs[0].compute_dtype == "bfloat16" and half.x48.logits.compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in half.weights)
    half.set_weights(model.get_weights())
    patches = tf.random.stateless_uniform([16, 48, 48, 3], (7, 8), 0, 255)
    a, b = model(patches), half(patches)
    for key in ("x12_logits", "x24_logits", "x48_logits", "x48_offsets"):
        assert b[key].dtype == tf.float32
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), atol=0.05 + 0.02 * np.abs(a[key].numpy()).max())
    images = tf.constant(np.random.default_rng(3).integers(0, 255, (1, 96, 128, 3)).astype(np.uint8))
    out = half.detect(images)
    assert out["boxes"].dtype == tf.float32 and int(out["num_detections"][0]) > 0
    assert FaceCascade.from_config(half.get_config()).get_config()["compute_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="compute_dtype"):
        FaceCascade(compute_dtype="float16")
    with pytest.raises(ValueError, match="float32"):
        FaceCascade(compute_dtype="bfloat16", use_gather=True)
    with pytest.raises(ValueError, match="pyramid"):
        FaceCascade(test=dict(pyramid="gaussian"))


def test_x24_rnet_trunk_is_leaner_and_round_trips():
    from kdet.face.nets import Face24Net

    li, rnet = FaceCascade(), FaceCascade(x24_trunk="rnet")
    li.build(None)
    rnet.build(None)
    assert [c.kernel.shape[:2] for c in rnet.x24.convs] == [(3, 3), (3, 3), (2, 2)]
    assert rnet.x24.count_params() < li.x24.count_params() / 5
    out = rnet.branches(tf.random.stateless_uniform([3, 48, 48, 3], (2, 2), -2, 2))
    assert out["x24_feature"].shape == (3, 144) and out["x48_logits"].shape == (3, 2)
    again = FaceCascade.from_config(rnet.get_config())
    again.build(None)
    again.set_weights(rnet.get_weights())
    assert Face24Net.from_config(rnet.x24.get_config()).trunk_name == "rnet"
    with pytest.raises(ValueError, match="trunk"):
        FaceCascade(x24_trunk="vgg")
    li32 = FaceCascade(x24_trunk="li32")
    li32.build(None)
    assert li32.x24.convs[0].kernel.shape == (5, 5, 3, 32) and li32.x24.input_extent == 23


def test_detect_traces_once_per_image_shape():
    model = FaceCascade(test=dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=40, stage2_max_boxes=10,
                                  pyramid="octave", stage2_nms_iou=0.5))
    model.build(None)  # a first call that creates the variables would trace twice
    graph = tf.function(model.detect)
    rng = np.random.default_rng(4)
    for _ in range(3):  # other pixels, other survivor counts: the same graph
        graph(tf.constant(rng.integers(0, 255, (1, 96, 128, 3)).astype(np.uint8)))
    assert graph.experimental_get_tracing_count() == 1


def test_speed_settings_keep_the_gather_twin_and_tflite_builtins():
    from kdet.serving import tflite

    common = dict(test=dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=40, stage2_max_boxes=10, max_detections=7,
                            pyramid="octave", stage1_nms_iou=0.8, stage2_nms_iou=0.5))
    images = tf.constant(np.random.default_rng(5).integers(0, 255, (1, 96, 128, 3)).astype(np.uint8))
    model = _gather_twin_of(common, images)
    flatbuffer = tflite.convert(model.export_variant((96, 128)), input_size=(96, 128))
    assert tflite.flex_ops(flatbuffer) == []


def test_frozen_detect_has_no_variables_and_the_same_detections():
    from kdet.serving.freeze import frozen_detect

    model = FaceCascade(test=dict(thresholds=(0.0, 0.0, 0.0), stage1_max_boxes=40, stage2_max_boxes=10,
                                  max_detections=7, pyramid="area", crop_method="nearest"), compute_dtype="bfloat16")
    images = tf.constant(np.random.default_rng(5).integers(0, 255, (1, 96, 128, 3)).astype(np.uint8))
    frozen = frozen_detect(model, (96, 128))  # builds the model first
    assert not frozen.variables and not any(t.dtype == tf.resource for t in frozen.captured_inputs)
    ops = {node.op for f in frozen.graph.as_graph_def().library.function for node in f.node_def}
    assert "ReadVariableOp" not in ops and "Conv2D" in ops
    want, got = model.detect(images), frozen(images)
    assert sorted(got) == sorted(want)
    assert int(got["num_detections"][0]) == int(want["num_detections"][0]) > 0
    np.testing.assert_allclose(got["scores"].numpy(), want["scores"].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["boxes"].numpy(), want["boxes"].numpy(), atol=1e-3)
    np.testing.assert_array_equal(got["classes"].numpy(), want["classes"].numpy())
    # weights changed after freezing are not seen until frozen again
    model.x48.logits.bias.assign(model.x48.logits.bias + tf.constant([0.0, 5.0]))
    np.testing.assert_allclose(frozen(images)["scores"].numpy(), got["scores"].numpy())
    with pytest.raises(ValueError, match="image_size"):
        frozen_detect(model, (0, 128))
