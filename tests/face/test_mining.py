"""Hard-sample mining for the face cascade (bootstrapping): the stage filter, labels, counts, the
cascade's window scorer against its training forward pass, and the training-side step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet import boxes as box_ops
from kdet.face import procedures
from kdet.face import mining, stages
from kdet.face.cascade import FaceCascade

FACE = np.array([[32.0, 40.0, 80.0, 88.0]], np.float32)  # 48 px on the stride-8 grid at scale 1


def _image(seed=0, size=(120, 160)):
    return np.random.default_rng(seed).integers(0, 255, (*size, 3)).astype(np.uint8)


def _row_scorer(row=32, value=1.0, calls=None):
    """Passes (``value``) only the full-resolution level's windows whose top is ``row``; 0 elsewhere."""
    def score(level_image, corners):
        if calls is not None:
            calls.append((level_image.shape, len(corners)))
        full = level_image.shape[:2] == (120, 160)
        return np.where(full & (corners[:, 0] == row), value, 0.0)
    return score


def test_mine_hard_image_keeps_only_passing_windows_labelled_and_counted():
    image, calls = _image(), []
    samples = mining.mine_hard_image(image, FACE, _row_scorer(calls=calls), threshold=0.5,
                                          rng=np.random.default_rng(0), min_face_size=48, negatives_per_image=100)
    # the scorer saw every level's windows: level 0 is the image, 15 x 10 windows of stride 8
    assert calls[0] == ((120, 160, 3), 10 * 15) and len(calls) > 1
    # passing: row 32, x = 0..112. x = 40 is the face (IoU 1); x = 32, 48 (IoU 40/56) and 24, 56 (IoU 32/64
    # = 0.5) are unused; the 10 others are below 0.5: non-faces
    assert len(samples) == 11 and samples.labels.sum() == 1
    np.testing.assert_array_equal(samples.windows[:, 0], 32.0)
    xs = sorted(samples.windows[samples.labels == 0, 1].tolist())
    assert xs == [x for x in range(0, 113, 8) if not 24 <= x <= 56]
    face = np.flatnonzero(samples.labels == 1)[0]
    np.testing.assert_allclose(samples.windows[face], FACE[0])
    np.testing.assert_array_equal(samples.patches[face], image[32:80, 40:88])
    np.testing.assert_allclose(samples.offsets[face], 0.0, atol=1e-6)
    for patch, (y, x) in zip(samples.patches, samples.windows[:, :2].astype(int)):
        np.testing.assert_array_equal(patch, image[y:y + 48, x:x + 48])
    assert (samples.offsets[samples.labels == 0] == 0).all()


def test_mine_hard_image_threshold_caps_and_ignore_regions():
    image, rng = _image(), np.random.default_rng(1)
    below = mining.mine_hard_image(image, FACE, _row_scorer(value=0.4), threshold=0.5, rng=rng,
                                        min_face_size=48)
    assert len(below) == 0 and below.patches.shape == (0, 48, 48, 3)
    capped = mining.mine_hard_image(image, FACE, _row_scorer(), threshold=0.5, rng=rng, min_face_size=48,
                                         negatives_per_image=5, positives_per_face=0)
    assert len(capped) == 5 and (capped.labels == 0).all()
    # a face marked as an ignore region gives neither faces nor non-faces near it
    ignored = mining.mine_hard_image(image, FACE, _row_scorer(), threshold=0.5, rng=rng, min_face_size=48,
                                          ignore=np.array([True]), negatives_per_image=100)
    assert len(ignored) == 10 and (ignored.labels == 0).all()
    iou = box_ops.pairwise_iou_numpy(ignored.windows, FACE)[:, 0]
    assert (iou < 0.5).all()
    with pytest.raises(ValueError, match="scores"):
        mining.mine_hard_image(image, FACE, lambda level, corners: np.zeros(3), threshold=0.5, rng=rng,
                                    min_face_size=48)


def test_mine_hard_samples_flips_and_indexes_images():
    examples = [{"image": _image(s), "boxes": FACE, "is_crowd": np.array([False])} for s in range(2)]
    samples = mining.mine_hard_samples(examples, _row_scorer(), threshold=0.5, progress=False,
                                            min_face_size=48, negatives_per_image=4)
    assert len(samples) == 2 * 2 * 5  # 2 images x (1 face + 4 non-faces), flipped
    assert sorted(np.unique(samples.image_index).tolist()) == [0, 1]
    half = len(samples) // 2
    np.testing.assert_array_equal(samples.patches[half:], samples.patches[:half, :, ::-1])
    np.testing.assert_array_equal(samples.labels[half:], samples.labels[:half])


def test_cascade_window_scorer_matches_the_training_forward_pass():
    keras.utils.set_random_seed(0)
    model = FaceCascade(dropout=0.0)
    model.build()
    level = _image(3, (104, 136))
    grid = np.stack(np.meshgrid(np.arange(0, 104 - 47, 8), np.arange(0, 136 - 47, 8), indexing="ij"), -1)
    corners = grid.reshape(-1, 2)
    patches = np.stack([level[y:y + 48, x:x + 48] for y, x in corners])
    out = model(tf.constant(patches))
    p12 = tf.nn.softmax(out["x12_logits"], -1)[:, 1].numpy()
    p24 = tf.nn.softmax(out["x24_logits"], -1)[:, 1].numpy()
    x12 = stages.window_scorer(model)
    np.testing.assert_allclose(x12(level, corners), p12, atol=1e-5)  # fully convolutional on the stride-8 grid
    off = corners[:7] + 3  # off the grid: cut and run as patches
    expected = tf.nn.softmax(model(tf.constant(np.stack([level[y:y + 48, x:x + 48] for y, x in off])))["x12_logits"],
                             -1)[:, 1].numpy()
    np.testing.assert_allclose(x12(level, off), expected, atol=1e-5)
    every = stages.window_scorer(model, depth=2, thresholds=(0.0,))
    np.testing.assert_allclose(every(level, corners), p24, atol=1e-5)
    cut = float(np.median(p12))
    some = stages.window_scorer(model, depth=2, thresholds=(cut,))(level, corners)
    np.testing.assert_allclose(some[p12 >= cut], p24[p12 >= cut], atol=1e-5)
    assert (some[p12 < cut] == -1).all()
    with pytest.raises(ValueError, match="depth"):
        stages.window_scorer(model, depth=3)


def test_bootstrap_samples_appends_what_the_trained_x12_passes():
    rng = np.random.default_rng(4)
    examples = [{"image": rng.integers(0, 255, (96, 96, 3)).astype(np.uint8),
                 "boxes": np.array([[10.0, 10.0, 50.0, 50.0]], np.float32)} for _ in range(2)]
    samples = mining.mine_face_samples(examples, positive_fraction=None, progress=False, min_face_size=24,
                                            negatives_per_image=30)
    # x12 threshold 0: every window passes, so the hard set is the capped sample of all windows
    config = {"training": {"thresholds": (0.0, 0.003)}, "test": {"min_face_size": 24.0}}
    merged, steps = procedures.bootstrap_samples(config, samples, examples, epochs=1, batch_size=16, verbose=0,
                                                    min_face_size=24, negatives_per_image=7, positives_per_face=1)
    assert set(steps) == {"x12"} and steps["x12"]["model"].get_config()["train_branches"] == ("x12",)
    hard = merged.take(np.arange(len(samples), len(merged)))
    np.testing.assert_array_equal(merged.patches[:len(samples)], samples.patches)
    assert len(hard) == 2 * 2 * (1 + 7) and (hard.labels == 1).sum() == 4
    ious = box_ops.pairwise_iou_numpy(hard.windows, examples[0]["boxes"])[:, 0]
    assert (ious[hard.labels == 1] > 0.8).all() and (ious[hard.labels == 0] < 0.5).all()
    with pytest.raises(ValueError, match="depth"):
        procedures.bootstrap_samples(config, samples, examples, epochs=1, depth=3)


def test_separate_training_rejects_unknown_branch_samples():
    with pytest.raises(ValueError, match="branch_samples"):
        procedures.train_cascade_separate({}, None, epochs=1, branch_samples={"x96": None})


def test_joint_training_later_only_samples_skip_the_x12_loss():
    rng = np.random.default_rng(5)
    n = 64
    labels = (np.arange(n) % 4 == 0).astype(np.int32)
    samples = mining.FaceSamples(rng.integers(0, 255, (n, 48, 48, 3)).astype(np.uint8), labels,
                                      np.zeros((n, 4), np.float32), np.zeros((n, 4), np.float32),
                                      np.zeros(n, np.int32))
    config = {"training": {"thresholds": (0.0, 0.0)}}  # every sample reaches every branch
    half = np.arange(n) >= n // 2
    model, steps = procedures.train_cascade_joint(config, samples, epochs=1, batch_size=n, verbose=0,
                                                     later_only=half)
    history = steps["joint"]["history"]
    assert history["x12_samples"][-1] == n // 2 and history["x24_samples"][-1] == n
    assert history["x48_samples"][-1] == n
    assert model.get_config()["train_branches"] == ("x12", "x24", "x48")
    _, steps = procedures.train_cascade_joint(config, samples, epochs=1, batch_size=n, verbose=0)
    assert steps["joint"]["history"]["x12_samples"][-1] == n
    with pytest.raises(ValueError, match="later_only"):
        procedures.train_cascade_joint(config, samples, epochs=1, later_only=half[:3])


def test_progress_lines_for_a_log_without_a_terminal(capsys):
    from kdet.face.mining import progress_of

    assert list(progress_of(range(25), "mining face samples", "lines")) == list(range(25))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("mining face samples: 25/25 images (")
    assert lines[0].startswith("mining face samples: 2/25 images")
    assert list(progress_of([1, 2], "quiet", False)) == [1, 2] and capsys.readouterr().out == ""
