"""evaluate_model and CocoEvaluationCallback with a stub detector inside model.fit."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdet.evaluation import CocoEvaluationCallback, CocoEvaluator, evaluate_model

NUM_IMAGES, BATCH = 4, 2
GT_BOX = [4.0, 8.0, 20.0, 28.0]  # resized pixels (scale 0.5 of a 64x64 original)


class FixedDetector(keras.Model):
    """Trains a trivial Dense layer; predicts the same detections for every image.

    Row 0 hits GT_BOX, row 1 is a low-score false positive, row 2 is padding
    (num_detections = 2): COCO AP is exactly 1 if and only if the boxes are
    mapped back with 1 / scale.
    """

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, images):
        return self.dense(keras.ops.mean(images, axis=(1, 2)))

    def predict_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        batch = keras.ops.shape(images)[0]

        def tile(value, dtype):
            value = keras.ops.convert_to_tensor(np.asarray(value, dtype))
            return keras.ops.broadcast_to(value[None], (batch, *value.shape))

        return {
            "boxes": tile([GT_BOX, [0, 0, 10, 10], [0, 0, 0, 0]], "float32"),
            "scores": tile([0.9, 0.3, 0.0], "float32"),
            "classes": tile([0, 0, -1], "int32"),
            "num_detections": tile(2, "int32"),
        }


def eval_dataset():
    images = np.random.uniform(0, 255, (NUM_IMAGES, 32, 32, 3)).astype("float32")
    targets = {
        "boxes": np.tile(np.array([[GT_BOX, [0, 0, 0, 0]]], "float32"), (NUM_IMAGES, 1, 1)),
        "classes": np.tile(np.array([[0, -1]], "int32"), (NUM_IMAGES, 1)),
        "is_crowd": np.zeros((NUM_IMAGES, 2), bool),
        "image_id": np.arange(1, NUM_IMAGES + 1, dtype="int64"),
        "scale": np.full(NUM_IMAGES, 0.5, "float32"),
        "image_shape": np.full((NUM_IMAGES, 2), 32, "int32"),
        "original_shape": np.full((NUM_IMAGES, 2), 64, "int32"),
    }
    return tf.data.Dataset.from_tensor_slices((images, targets)).batch(BATCH), images


def test_evaluate_model_runs_every_batch_and_honours_steps():
    dataset, _ = eval_dataset()
    model = FixedDetector()
    evaluator = CocoEvaluator(category_ids=[1])
    metrics = evaluate_model(model, dataset, evaluator, progress=False)
    assert evaluator.num_images == NUM_IMAGES
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP90"] == pytest.approx(1.0)

    evaluator.reset()
    evaluate_model(model, list(dataset), evaluator, steps=1, progress=True)
    assert evaluator.num_images == BATCH


def test_callback_adds_prefixed_metrics_to_fit_logs(tmp_path, capsys):
    dataset, images = eval_dataset()
    model = FixedDetector()
    model.compile(optimizer="sgd", loss="mse")
    train = tf.data.Dataset.from_tensor_slices((images, np.zeros((NUM_IMAGES, 1), "float32"))).batch(BATCH)
    callback = CocoEvaluationCallback(dataset, category_ids=[1], class_names=["thing"],
                                      every_n_epochs=2, results_json=str(tmp_path / "res_{epoch}.json"))
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.weights.h5"), monitor="val_AP", mode="max",
        save_best_only=True, save_weights_only=True)
    with pytest.warns(UserWarning, match="val_AP available"):  # epoch 1 is not evaluated
        history = model.fit(train, epochs=2, callbacks=[callback, checkpoint], shuffle=False, verbose=0)

    assert history.history["val_AP"] == [pytest.approx(1.0)]  # only epoch 2 was evaluated
    for key in ("val_AP50", "val_AP60", "val_AP75", "val_AP90", "val_APl", "val_AR100"):
        assert key in history.history
    assert (tmp_path / "best.weights.h5").exists()
    assert not (tmp_path / "res_1.json").exists()
    results = json.loads((tmp_path / "res_2.json").read_text())
    assert len(results) == 2 * NUM_IMAGES
    assert results[0]["bbox"] == [16.0, 8.0, 40.0, 32.0]  # GT_BOX / 0.5 as xywh
    assert "AP50" in capsys.readouterr().out  # the metrics table was printed


def test_callback_on_epoch_end_called_directly():
    dataset, _ = eval_dataset()
    callback = CocoEvaluationCallback(dataset, category_ids=[3], prefix="coco/", verbose=0)
    callback.set_model(FixedDetector())
    logs = {"loss": 0.5}
    callback.on_epoch_end(0, logs)
    callback.on_epoch_end(1, logs)  # a fresh evaluation each epoch (no duplicate-image error)
    assert logs["loss"] == 0.5 and logs["coco/AP"] == pytest.approx(1.0)
    assert callback.last_metrics["AP80"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="every_n_epochs"):
        CocoEvaluationCallback(dataset, category_ids=[1], every_n_epochs=0)
