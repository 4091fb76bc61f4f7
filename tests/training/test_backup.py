"""Backups and reruns lose nothing: atomic backups, verified restores, a finished run left as it is.

The fault states are made the way a kill makes them (a folder never renamed
into place, a weights file newer than its metadata, a run stopped inside its
final evaluation) and then run again through :func:`kdet.training.train`.
"""

import json
import os
import shutil

import h5py
import keras
import numpy as np
import pytest

from kdet import cli
from kdet.training import BackupError, backup_position, restore_backup, train
from kdet.training.backup import LEGACY_METADATA, LEGACY_WEIGHTS, list_backups, write_backup
from tests.scripts.tiny_recipe import RECIPES
from tests.paths import TINY_RECIPE

RECIPE_FILE = TINY_RECIPE


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _train_steps(model, steps):
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 1), np.float32)
    for _ in range(steps):
        model.train_on_batch(x, y)


def _arrays(path):
    """Every dataset of a Keras ``.weights.h5`` file, by its path inside the file."""
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, node: found.__setitem__(name, node[()]) if isinstance(node, h5py.Dataset) else None)
    return found


def _flip_bytes(path, count=4096):
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    for i in range(middle, min(len(data), middle + count)):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_backups_are_atomic_folders_and_restore_weights_and_optimiser(tmp_path):
    model = _model()
    for step in (1, 2, 3):
        _train_steps(model, 1)
        write_backup(model, str(tmp_path), step)
    assert sorted(os.listdir(tmp_path)) == ["step-000000002", "step-000000003"]  # the newest two are kept
    state = json.loads((tmp_path / "step-000000003" / "state.json").read_text())
    assert state["global_step"] == 3 and state["iterations"] == 3 and len(state["sha256"]) == 64
    # A folder a kill left half-written is never taken for a backup.
    partial = tmp_path / ".partial-step-000000004-1"
    shutil.copytree(tmp_path / "step-000000003", partial)
    assert [b.step for b in list_backups(str(tmp_path))] == [3, 2] and backup_position(str(tmp_path)) == 3
    fresh = _model(seed=1)
    assert restore_backup(fresh, str(tmp_path)) == 3
    for a, b in zip(model.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(fresh.optimizer.iterations.numpy()) == 3
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # Adam's moments too: the next step is the same


def test_a_damaged_backup_is_refused_and_the_previous_one_used(tmp_path, capsys):
    model = _model()
    for step in (1, 2):
        _train_steps(model, 1)
        write_backup(model, str(tmp_path), step)
    _flip_bytes(tmp_path / "step-000000002" / "model.weights.h5", count=64)
    fresh = _model(seed=1)
    assert restore_backup(fresh, str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "step-000000002" in err and "SHA-256" in err and "older backup" in err
    assert int(fresh.optimizer.iterations.numpy()) == 1
    _flip_bytes(tmp_path / "step-000000001" / "model.weights.h5", count=64)
    with pytest.raises(BackupError, match="no usable backup in .*move the folder away"):
        restore_backup(_model(seed=1), str(tmp_path))


def test_a_step_that_does_not_match_the_weights_is_detected(tmp_path, capsys):
    """The race of the old layout: metadata written separately from the weights, by a kill, disagree."""
    model = _model()
    _train_steps(model, 1)
    write_backup(model, str(tmp_path / "new"), 1)
    state_path = tmp_path / "new" / "step-000000001" / "state.json"
    state = json.loads(state_path.read_text())
    state["iterations"] = 5  # the step recorded does not belong to these weights
    state_path.write_text(json.dumps(state))
    with pytest.raises(BackupError, match="optimiser is at iteration 1, but state.json recorded 5"):
        restore_backup(_model(seed=1), str(tmp_path / "new"))
    # The layout kdet wrote before: weights newer (7 steps) than the kdet metadata (5 steps).
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    _train_steps(model, 6)
    model.save_weights(str(legacy / LEGACY_WEIGHTS))
    (legacy / LEGACY_METADATA).write_text(json.dumps({"epoch": 1, "batch": 0, "global_step": 5}))
    capsys.readouterr()
    assert restore_backup(_model(seed=1), str(legacy)) == 7
    assert "says step 5 but the weights" in capsys.readouterr().err


def _recipe():
    return RECIPES["shapes"]


def _run(model_dir, **kwargs):
    kwargs = {"steps": 6, "backup_every": 2, "tensorboard": False, "verbose": 0, **kwargs}
    return train(_recipe(), model_dir=str(model_dir), **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("finished") / "tiny"
    result = _run(model_dir)
    assert result.steps == 6 and result.start_step == 0 and "AP" in result.metrics
    return model_dir


def test_a_rerun_of_a_finished_training_keeps_the_trained_weights(finished, tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    shutil.copytree(finished, model_dir)
    weights = model_dir / "model.weights.h5"
    before_bytes, before_mtime = weights.read_bytes(), weights.stat().st_mtime_ns
    metrics_before = json.loads((model_dir / "metrics.json").read_text())
    assert cli.main(["train", RECIPE_FILE, "--model-dir", str(model_dir), "--steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "already trained (6 steps)" in out and "was not changed" in out and "6 steps (from step 6)" in out
    assert weights.read_bytes() == before_bytes and weights.stat().st_mtime_ns == before_mtime
    assert json.loads((model_dir / "metrics.json").read_text()) == metrics_before
    # A smaller budget than the backup's keeps the longer training too.
    result = _run(model_dir, steps=3)
    assert result.steps == 6 and weights.read_bytes() == before_bytes


class Killed(Exception):
    """Stands for a SIGKILL at that point: nothing after it runs."""


def test_a_kill_during_the_final_evaluation_then_a_rerun_keeps_the_trained_weights(tmp_path, monkeypatch, capsys):
    import kdet.evaluation

    model_dir = tmp_path / "tiny"
    calls = {"n": 0}
    real = kdet.evaluation.evaluate_model

    def killed_on_the_last(*args, **kwargs):  # epoch 1 (5 steps) evaluates, epoch 2 (step 6) is the final one
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(kdet.evaluation, "evaluate_model", killed_on_the_last)
    with pytest.raises(Killed):
        _run(model_dir)
    monkeypatch.setattr(kdet.evaluation, "evaluate_model", real)
    assert not (model_dir / "kdet_model.json").exists() and backup_position(str(model_dir / "backup")) == 6
    trained = _arrays(model_dir / "backup" / "step-000000006" / "model.weights.h5")
    result = _run(model_dir)
    assert result.start_step == 6 and result.steps == 6 and "AP" in result.metrics
    written = _arrays(model_dir / "model.weights.h5")
    assert written.keys() == trained.keys() and len(written) > 10
    for name, array in trained.items():
        np.testing.assert_array_equal(written[name], array, err_msg=name)
    assert "at the final step 6" in capsys.readouterr().out


def test_a_longer_rerun_is_not_taken_for_the_shorter_finished_one(finished, tmp_path):
    """A complete directory from 6 steps and a backup at 8 (a 8-step rerun killed before it wrote): write step 8."""
    model_dir = tmp_path / "tiny"
    shutil.copytree(finished, model_dir)
    result = _run(model_dir, steps=8, evaluate=False)
    assert result.start_step == 6 and result.steps == 8
    assert json.loads((model_dir / "metrics.json").read_text())["steps"] == 8
    assert _run(model_dir, steps=8, evaluate=False).start_step == 8  # and now that one is finished


def test_damaged_model_weights_are_refused_by_every_command(finished, tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    shutil.copytree(finished, model_dir)
    _flip_bytes(model_dir / "model.weights.h5")
    image = tmp_path / "image.png"
    keras.utils.save_img(str(image), np.zeros((32, 32, 3), np.uint8))
    for argv in (["evaluate", "--model-dir", str(model_dir)],
                 ["detect", str(image), "--model-dir", str(model_dir), "--out", str(tmp_path / "drawn")],
                 ["export", "--model-dir", str(model_dir), "--format", "tflite", "--out", str(tmp_path / "m.tflite")]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "model.weights.h5 does not match the SHA-256" in err and str(model_dir) in err, (argv, err)
    assert not (tmp_path / "m.tflite").exists() and not (tmp_path / "drawn").exists()
    # A rerun of the training does not take the damaged directory for a finished one: it writes it again.
    _run(model_dir, evaluate=False)
    assert cli.main(["evaluate", "--model-dir", str(model_dir), "--max-images", "2"]) == 0
