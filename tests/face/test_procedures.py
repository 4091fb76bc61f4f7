"""One face-cascade procedure: the recipe (``kdet train face_cascade``) and the face benchmark run the same one.

``kdet.face.procedures`` is the only copy of the training procedure; these
tests check that the ``face_cascade:embedded`` recipe and
``benchmarks/face_benchmark.py`` ask it for the same thing (settings, data,
optimiser, test pipeline), and that x12 is trained once when its greedy step
is the bootstrapping x12. That a short recipe run trains the benchmark's very
weights is checked after the benchmark's quick run (tests/test_benchmarks_smoke.py).
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from kdet.face import procedures
from kdet.face.cascade import VALIDATED_TEST_SETTINGS, FaceCascade

#: FaceCascade arguments that change what training computes (the joint loss is the whole ``training`` spec).
TRAINING_KEYS = ("training", "dropout", "x24_trunk", "compute_dtype", "train_branches")


def _recipe():
    from kdet.training import command

    recipe, _ = command.resolve_recipe("face_cascade:embedded")
    return recipe


def _run(recipe, **changes):
    return types.SimpleNamespace(**{"steps": None, "epochs": None, "batch_size": recipe.batch_size, **changes})


def test_embedded_recipe_asks_for_the_benchmarks_procedure():
    from benchmarks import face_benchmark
    from kdet.face.recipe import _model_config, cascade_training

    args, recipe = face_benchmark.parse_args([]), _recipe()
    assert cascade_training(recipe, _run(recipe)) == face_benchmark.cascade_training(args)
    assert recipe.train_data == f"embedded:faces:train[:{args.train_images}]"
    schedule = recipe.schedule
    assert (schedule.optimizer, schedule.base_lr, schedule.boundaries) == ("adam", args.learning_rate, ())
    assert schedule.reference_batch == recipe.batch_size == args.cascade_batch_size
    assert schedule.total_steps == args.cascade_epochs == args.from_separate_epochs
    recipe_config = _model_config(recipe)
    bench_config = FaceCascade(**face_benchmark.cascade_config(args.cascade_x24_trunk)).get_config()
    assert {k: recipe_config[k] for k in TRAINING_KEYS} == {k: bench_config[k] for k in TRAINING_KEYS}
    assert recipe_config["test"]["min_face_size"] == bench_config["test"]["min_face_size"]  # (mining's too)
    tested = face_benchmark.inference_config("cascade_joint_from_separate", bench_config, args)
    for key, value in VALIDATED_TEST_SETTINGS.items():  # and both test with the validated pipeline
        assert list(np.atleast_1d(recipe_config["test"][key])) == list(np.atleast_1d(tested["test"][key])), key
        assert list(np.atleast_1d(value)) == list(np.atleast_1d(tested["test"][key])), key


def test_embedded_rcnn_recipe_asks_for_the_benchmarks_rcnn_joint(tmp_path):
    """``kdet train face_rcnn:embedded`` is the benchmark's ``rcnn_joint``: detector (anchors at half scale,
    pretrained tiny backbone with frozen BatchNorm), data, input size, batch, optimiser and epochs."""
    from benchmarks import face_benchmark
    from kdet.backbones import build_backbone
    from kdet.detectors import CascadeRCNN
    from kdet.face.recipe import _model_config
    from kdet.training import command, pretrain

    args = face_benchmark.parse_args([])
    recipe, _ = command.resolve_recipe("face_rcnn:embedded")
    assert recipe.backbone_weights == pretrain.SHAPES and args.rcnn_backbone == "pretrained"
    assert args.pretrain_steps == pretrain.DEFAULT_STEPS  # the same pretraining (its file name says the steps)
    weights = str(tmp_path / "tiny.weights.h5")
    build_backbone("tiny").save_weights(weights)
    recipe_config = _model_config(recipe.replace(backbone_weights=weights))
    bench_config = CascadeRCNN(**face_benchmark.rcnn_config(args.rcnn_scale, weights)).get_config()
    assert recipe_config["rpn"]["backbone"]["freeze_batchnorm"] is True
    drop = ("name", "class_names")
    assert {k: v for k, v in recipe_config.items() if k not in drop} == {
        k: v for k, v in bench_config.items() if k not in drop}
    assert recipe.train_data == f"embedded:faces:train[:{args.train_images}]" and not recipe.flip
    assert tuple(recipe.image_size) == face_benchmark.rcnn_geometry(args.rcnn_scale)[1]
    schedule = recipe.schedule
    assert (schedule.optimizer, schedule.base_lr, schedule.boundaries) == ("adam", args.learning_rate, ())
    assert schedule.reference_batch == recipe.batch_size == args.rcnn_batch_size
    assert schedule.total_steps == args.rpn_epochs == args.joint_epochs


def test_mtcnn_recipe_starts_the_joint_network_from_mtcnn_and_needs_its_package_first(tmp_path, monkeypatch,
                                                                                     capsys):
    from kdet import cli
    from kdet.face.recipe import cascade_training
    from kdet.training import command

    recipe, _ = command.resolve_recipe("face_cascade:mtcnn")
    assert cascade_training(recipe, _run(recipe)).start == "mtcnn"
    assert recipe.train_data == command.resolve_recipe("face_cascade")[0].train_data  # WIDER FACE
    monkeypatch.setitem(__import__("sys").modules, "mtcnn", None)  # the optional extra not installed
    assert cli.main(["train", "face_cascade:mtcnn", "--smoke", "--model-dir", str(tmp_path / "m")]) == 2
    err = capsys.readouterr()
    assert "pip install mtcnn==1.0.0" in err.err and "mined" not in err.out  # refused before mining


def test_benchmark_variants_are_one_procedure_started_differently():
    from benchmarks import face_benchmark

    args = face_benchmark.parse_args([])
    target = face_benchmark.cascade_training(args)
    assert (target.start, target.joint_epochs, target.hard_samples) == ("separate", args.cascade_epochs, "all")
    assert face_benchmark.cascade_training(args, "cascade_separate").start == "none"
    scratch = face_benchmark.cascade_training(args, "cascade_joint")
    assert (scratch.start, scratch.joint_epochs) == ("scratch", 3 * args.cascade_epochs)
    old_rule = face_benchmark.cascade_training(face_benchmark.parse_args(["--no-bootstrap-x12"]))
    assert old_rule.hard_samples == "later_only"
    assert face_benchmark.cascade_training(face_benchmark.parse_args(["--no-bootstrap"])).bootstrap_depth is None
    with pytest.raises(ValueError, match="hard_samples"):
        procedures.CascadeTraining(hard_samples="x12")
    with pytest.raises(ValueError, match="start"):
        procedures.CascadeTraining(start="greedy")


def _tiny_examples():
    rng = np.random.default_rng(4)
    return [{"image": rng.integers(0, 255, (96, 96, 3)).astype(np.uint8),
             "boxes": np.array([[10.0, 10.0, 50.0, 50.0]], np.float32)} for _ in range(2)]


def test_x12_is_trained_once_when_the_hard_samples_train_the_later_branches_only():
    training = procedures.CascadeTraining(epochs=1, batch_size=16, min_face_size=24.0, negatives_per_image=30,
                                          positive_fraction=0.25, bootstrap_negatives=7, bootstrap_positives=1,
                                          hard_samples="later_only")
    config = {"training": {"thresholds": (0.0, 0.003)}}  # x12 passes every window: hard samples exist
    prepared = procedures.prepare_cascade(config, _tiny_examples(), training, seed=3, verbose=0)
    assert prepared.sliding < len(prepared.samples) and set(prepared.trained) == {"x12"}
    model, steps = procedures.train_cascade(prepared, training, seed=3, verbose=0)
    assert steps["x12"]["reused"] and steps["x12"]["model"] is prepared.trained["x12"]["model"]
    assert set(steps) == {"x12", "x24", "x48", "joint"} and "reused" not in steps["x24"]
    x12 = prepared.trained["x12"]["model"].x12.get_weights()
    for got, want in zip(steps["x24"]["model"].x12.get_weights(), x12):  # x24's step starts from that x12
        np.testing.assert_array_equal(got, want)
    greedy = dataclasses.replace(training, start="none")  # another seed: its own x12 (greedy steps only)
    _, other = procedures.train_cascade(prepared, greedy, seed=4, verbose=0)
    assert "reused" not in other["x12"]
    assert model.training_spec.offset_std == prepared.config["training"]["offset_std"]
