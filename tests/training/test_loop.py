"""kdet.training: schedules, recipes, the resumable stream, callbacks, mixed precision, the loop."""

import dataclasses
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.data.synthetic import synthetic_dataset
from kdet.training import Recipe, StepSchedule, TerminateOnNaNTerm, WarmupStepDecay, backup_position, train
from kdet.training.loop import _segments
from kdet.training.stream import training_stream
from tests.scripts.tiny_recipe import RECIPES

TINY = RECIPES["shapes"]


def test_warmup_step_decay_hand_values():
    lr = WarmupStepDecay(base_lr=0.02, boundaries=(60, 80), decay_factor=0.1, warmup_steps=10, warmup_factor=1 / 3)
    got = [float(lr(s)) for s in (0, 5, 10, 59, 60, 79, 80, 1000)]
    ramp = 1 / 3 + (2 / 3) * 0.5
    np.testing.assert_allclose(got, [0.02 / 3, 0.02 * ramp, 0.02, 0.02, 0.002, 0.002, 0.0002, 0.0002], rtol=1e-6)
    assert WarmupStepDecay(**lr.get_config()).get_config() == lr.get_config()


def test_schedule_linear_scaling_rule():
    coco_1x = StepSchedule(base_lr=0.02, reference_batch=16, total_steps=90_000, boundaries=(60_000, 80_000),
                           warmup_steps=500)
    at8 = coco_1x.for_batch(8)
    assert at8.base_lr == pytest.approx(0.01) and at8.total_steps == 180_000
    assert at8.boundaries == (120_000, 160_000) and at8.warmup_steps == 1000
    assert coco_1x.for_batch(16) == coco_1x
    with pytest.raises(ValueError, match="boundaries"):
        StepSchedule(base_lr=0.1, reference_batch=1, total_steps=10, boundaries=(10,))
    with pytest.raises(ValueError, match="optimizer"):
        StepSchedule(base_lr=0.1, reference_batch=1, total_steps=10, optimizer="lion")


def test_a_shorter_or_longer_run_fits_the_schedule_to_its_steps():
    """--steps / --epochs: warm-up and decay points at the same fractions of the run (hand values)."""
    coco_1x = StepSchedule(base_lr=0.02, reference_batch=16, total_steps=90_000, boundaries=(60_000, 80_000),
                           warmup_steps=500)
    short = coco_1x.fit_to(900)
    assert (short.total_steps, short.boundaries, short.warmup_steps, short.base_lr) == (900, (600, 800), 5, 0.02)
    assert coco_1x.fit_to(180_000).boundaries == (120_000, 160_000) and coco_1x.fit_to(90_000) is coco_1x
    tiny = coco_1x.fit_to(4)  # 2.67 -> 3 and 3.56 -> 3: both decays stay, on one step; warm-up at least a step
    assert (tiny.boundaries, tiny.warmup_steps) == ((3, 3), 1)
    np.testing.assert_allclose([float(tiny.learning_rate()(s)) for s in (2, 3)], [0.02, 0.0002], rtol=1e-6)
    assert coco_1x.fit_to(1).boundaries == ()
    with pytest.raises(ValueError, match="total_steps"):
        coco_1x.fit_to(0)


def test_sgd_l2_weight_decay_goes_through_momentum():
    """Caffe's rule by hand: v = m v + (g + wd w); w -= lr v (Keras SGD: v = m v - lr g'; w += v)."""
    schedule = StepSchedule(base_lr=0.1, reference_batch=1, total_steps=10, momentum=0.9, weight_decay=0.01)
    optimizer = schedule.make_optimizer()
    assert type(optimizer).__name__ == "SGDWithL2" and optimizer.l2 == 0.01
    w = keras.Variable(np.array([1.0, -2.0], np.float32))
    grads = [np.array([0.5, 0.5], np.float32), np.array([-1.0, 0.25], np.float32)]
    expected, velocity = np.array([1.0, -2.0]), np.zeros(2)
    for g in grads:
        optimizer.apply([tf.constant(g)], [w])
        velocity = 0.9 * velocity + (g + 0.01 * expected)
        expected = expected - 0.1 * velocity
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    decoupled = dataclasses.replace(schedule, weight_decay_type="decoupled").make_optimizer()
    assert type(decoupled) is keras.optimizers.SGD and decoupled.weight_decay == 0.01
    with pytest.raises(ValueError, match="'l2' is for SGD"):
        dataclasses.replace(schedule, optimizer="adam", weight_decay_type="l2")


def test_recipe_replace_names_valid_fields_and_smoke_version():
    with pytest.raises(ValueError, match="no field.*'epochz'.*valid:.*batch_size"):
        TINY.replace(epochz=3)
    smoke = TINY.replace(smoke={"steps": 3, "batch_size": 2}).smoke_version()
    assert smoke.batch_size == 2 and smoke.schedule.total_steps == 3 and smoke.steps_per_epoch == 3
    assert smoke.schedule.base_lr == pytest.approx(TINY.schedule.base_lr / 2)  # linear rule at batch 2
    assert smoke.smoke == {}


@pytest.mark.parametrize("start, total, per_epoch, expected", [
    (0, 12, 5, [(0, 0, 2, 5), (2, 10, 1, 2)]),
    (7, 12, 5, [(1, 7, 1, 3), (2, 10, 1, 2)]),
    (3, 4, 5, [(0, 3, 1, 1)]),
    (5, 15, 5, [(1, 5, 2, 5)]),
    (12, 12, 5, []),
])
def test_fit_segments(start, total, per_epoch, expected):
    segments = _segments(start, total, per_epoch)
    assert segments == expected
    assert sum(n * k for _, _, n, k in segments) == total - start


def _ids(stream):
    return [batch[1]["image_id"].numpy().tolist() for batch in stream]


def test_training_stream_is_a_function_of_the_step():
    examples, _ = synthetic_dataset("train", seed=0, num_images=10, image_size=128)
    kwargs = dict(image_size=(128, 128), seed=3)
    whole = list(training_stream(examples, batch_size=4, num_steps=6, **kwargs))
    resumed = list(training_stream(examples, batch_size=4, start_step=3, num_steps=3, **kwargs))
    assert _ids(whole[3:]) == _ids(resumed)
    for (a, ta), (b, tb) in zip(whole[3:], resumed):  # same pixels: augmentation seeds follow the step
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(ta["boxes"].numpy(), tb["boxes"].numpy())
    ids = sum(_ids(whole), [])
    assert sorted(ids[:10]) == sorted(ids[10:20]) and ids[:10] != ids[10:20]  # epochs: a new order each
    shards = [_ids(training_stream(examples, batch_size=2, num_steps=6, num_shards=2, shard_index=i, **kwargs))
              for i in range(2)]
    for step in range(6):  # the two workers' batches together are the global batch
        assert sorted(shards[0][step] + shards[1][step]) == sorted(_ids(whole)[step])


def test_backup_position_falls_back_to_the_previous_copy(tmp_path):
    assert backup_position(str(tmp_path)) == 0
    (tmp_path / "training_metadata.json").write_text('{"epoch": 1, "batch"')  # killed while writing
    (tmp_path / "training_metadata.json.bkp").write_text(json.dumps({"epoch": 1, "batch": 0, "global_step": 5}))
    assert backup_position(str(tmp_path)) == 5


class BadTerm(keras.Model):
    """Logs ``box_loss = log(min(x))``: NaN once a batch has a negative input; the total loss stays finite."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.box_loss = keras.metrics.Mean(name="box_loss")

    def call(self, x):
        return self.dense(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        self.box_loss.update_state(tf.math.log(tf.reduce_min(x)))
        return tf.reduce_mean(tf.square(y_pred - y))


def test_terminate_on_nan_names_the_bad_term():
    x = np.ones((8, 2), np.float32)
    x[5] = -1.0  # batch 3 of size 2
    model = BadTerm()
    model.compile(optimizer="sgd")
    messages = []
    guard = TerminateOnNaNTerm(stream=type("S", (), {"write": lambda self, t: messages.append(t)})())
    history = model.fit(x, np.zeros((8, 1)), batch_size=2, epochs=3, shuffle=False, callbacks=[guard], verbose=0)
    assert guard.bad_term == "box_loss" and guard.bad_step == 3
    assert "step 3" in "".join(messages) and "'box_loss' became NaN" in "".join(messages)
    assert len(history.history["loss"]) == 1  # stopped in the first epoch


def _one_step(model_dir, policy):
    return train(TINY, model_dir=str(model_dir), steps=1, mixed_precision=policy, evaluate=False, tensorboard=False,
                 verbose=0)


@pytest.fixture(scope="module")
def float32_step(tmp_path_factory):
    return _one_step(tmp_path_factory.mktemp("float32"), None)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_step_matches_float32(tmp_path, policy, float32_step):
    reference = float32_step
    mixed = _one_step(tmp_path, policy)
    assert keras.config.dtype_policy().name == "float32"  # restored after training
    assert mixed.model.dtype_policy.name == policy
    assert isinstance(mixed.model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    logits = mixed.model.head.class_out
    assert logits.compute_dtype == "float32"  # head outputs stay float32
    np.testing.assert_allclose(mixed.history["loss"][0], reference.history["loss"][0], rtol=3e-2)
    for term in ("cls_loss", "box_loss"):
        assert math.isfinite(mixed.history[term][0])
