"""Runs a :class:`~kdet.training.recipe.Recipe`: data, strategy, fit, backups, logs, model directory.

``train(recipe, model_dir=...)``:

1. opens the recipe's data strings (or the caller's ``data``/``val_data``);
2. picks the strategy (:func:`choose_strategy`): ``MultiWorkerMirroredStrategy``
   when ``TF_CONFIG`` names a cluster of several workers, else
   ``MirroredStrategy`` over the visible GPUs, else the default (CPU);
3. builds the detector by the recipe's ``build_model`` inside the strategy
   scope, with the schedule scaled to the global batch (linear rule);
4. trains from the last backup in ``MODEL_DIR/backup`` (step-exact: the data
   stream is a function of the global step, :mod:`kdet.training.stream`),
   with ``model.fit`` on one worker and a custom ``strategy.run`` loop on
   several (Keras 3's ``fit`` breaks under ``MultiWorkerMirroredStrategy``,
   keras-team/keras#20585); both drive the same Keras callbacks;
5. evaluates after every epoch (COCO or face metrics), keeps the best
   weights by AP in ``best.weights.h5``, logs every loss term, the learning
   rate, the metrics and a few drawn validation images to TensorBoard in
   ``MODEL_DIR/logs``;
6. writes the model directory (:mod:`kdet.model_dir`): config, weights,
   data string and the recipe's settings, so ``kdet evaluate`` /
   ``kdet detect`` / ``kdet export`` need nothing else; and
   ``MODEL_DIR/metrics.json``.

A rerun never loses a trained model: the weights always come from the
newest usable backup before anything is evaluated or written, and a run
whose backup already covers the requested steps and whose model directory
is complete says "already trained" and changes nothing. A run killed during
its final evaluation restores the final backup, evaluates it and writes the
model directory. A recipe's own procedure (the face recipes') resumes after
its last finished phase (:mod:`kdet.training.phases`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from kdet.data.example import DetectionInfo
from kdet.data.pipeline import make_pipeline
from kdet.data.sources import open_source
from kdet.files import check_output_path, write_json_atomic
from kdet.model_dir import build_for, is_complete, load_model_dir, save_model_dir
from kdet.training import phases
from kdet.training.backup import restore_backup
from kdet.evaluation.callback import EvaluationCallback
from kdet.training.callbacks import DetectionImages, StepBackup, StepCounter, TerminateOnNaNTerm
from kdet.training.pretrain import resolve_backbone_weights
from kdet.training.distribute import choose_strategy, custom_loop, is_chief, is_multi_worker, set_precision
from kdet.training.recipe import Recipe
from kdet.training.stream import training_stream

BACKUP_DIR = "backup"
PHASES_DIR = "phases"  # a custom procedure's finished phases (kdet.training.phases), under BACKUP_DIR
BEST_WEIGHTS = "best.weights.h5"
METRICS_FILE = "metrics.json"  # written last: its presence marks a finished run


@dataclass
class Run:
    """What a recipe's custom ``train(recipe, run)`` gets (the face recipes use it)."""

    recipe: Recipe
    model_dir: str
    train_examples: tf.data.Dataset
    train_info: DetectionInfo
    val_examples: tf.data.Dataset
    val_info: DetectionInfo
    batch_size: int
    strategy: tf.distribute.Strategy
    callbacks: list
    seed: int
    verbose: int
    smoke: bool
    epochs: int | None = None  # --epochs / --steps as given (None: the recipe's schedule)
    steps: int | None = None


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: keras.Model
    metrics: dict[str, float]
    history: dict[str, list[float]] = field(default_factory=dict)
    model_dir: str = ""
    start_step: int = 0
    steps: int = 0
    seconds: float = 0.0


def _evaluator(model, recipe: Recipe, info: DetectionInfo):
    """The evaluator the model asks for (``model.evaluation``); face settings from the recipe's ``extra``."""
    if model.evaluation == "face":
        from kdet.evaluation.face import FaceEvaluator

        return FaceEvaluator(min_face_size=recipe.extra.get("min_face_size"))
    from kdet.evaluation.coco import CocoEvaluator

    return CocoEvaluator(category_ids=info.category_ids, class_names=info.class_names)


def _monitor(model) -> str:
    return "val_AP50" if model.evaluation == "face" else "val_AP"


def _verbose(verbose: int | None) -> int:
    return (1 if sys.stdout.isatty() else 2) if verbose is None else verbose


def _apply_overrides(recipe: Recipe, *, smoke: bool, data, val_data, batch_size, backbone, backbone_weights,
                     image_size) -> Recipe:
    if smoke:
        recipe = recipe.smoke_version()
    changes = {k: v for k, v in dict(train_data=data, val_data=val_data, batch_size=batch_size, backbone=backbone,
                                      backbone_weights=backbone_weights, image_size=image_size).items()
               if v is not None}
    if backbone_weights == "none" or (backbone_weights is None and backbone == "tiny" != recipe.backbone):
        changes["backbone_weights"] = None  # random initialisation (the tiny backbone has no ImageNet weights)
    if data is not None and val_data is None and data != recipe.train_data:
        changes["val_data"] = None  # the recipe's validation set belongs to its own data, not the user's
    recipe = recipe.replace(**changes) if changes else recipe
    size = recipe.image_size
    if len(size) != 2 or any(int(s) < 1 or int(s) % recipe.image_stride for s in size):
        what = "positive" if recipe.image_stride == 1 else f"multiples of {recipe.image_stride} (its largest stride)"
        raise ValueError(f"--image-size {' '.join(str(s) for s in size)}: the {recipe.name} recipe's model takes "
                         f"image sizes that are {what}")
    return recipe


def _recipe_record(recipe: Recipe, **more) -> dict:
    record = {"name": recipe.name, "paper": recipe.paper, "train_data": recipe.train_data,
              "val_data": recipe.val_data, "image_size": list(recipe.image_size), "batch_size": recipe.batch_size,
              "schedule": dataclasses.asdict(recipe.schedule), "backbone": recipe.backbone,
              "backbone_weights": recipe.backbone_weights, "flip": recipe.flip,
              "scale_jitter": recipe.scale_jitter, "steps_per_epoch": recipe.steps_per_epoch,
              "extra": dict(recipe.extra)}
    record.update(more)
    return record


def _val_pipeline(recipe: Recipe, examples) -> tf.data.Dataset:
    if recipe.val_images:
        examples = examples.take(recipe.val_images)
    return make_pipeline(examples, image_size=recipe.image_size, batch_size=max(1, min(8, recipe.batch_size)),
                         training=False, max_boxes=recipe.max_boxes, stride=recipe.image_stride)


def train(
    recipe: Recipe,
    *,
    model_dir: str,
    data: str | None = None,
    val_data: str | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    backbone: str | None = None,
    backbone_weights: str | None = None,
    image_size: tuple[int, int] | None = None,
    smoke: bool = False,
    seed: int = 0,
    mixed_precision: str | None = None,
    strategy: str | tf.distribute.Strategy = "auto",
    backup_every: int | None = None,
    evaluate: bool = True,
    tensorboard: bool = True,
    data_dir: str | None = None,
    verbose: int | None = None,
) -> TrainResult:
    """Trains ``recipe`` into ``model_dir`` (resuming from its backup); see the module docstring.

    Args:
      recipe: the experiment.
      model_dir: output folder (model directory, backup, logs, metrics).
      data, val_data: data strings replacing the recipe's.
      epochs: Keras epochs of ``steps_per_epoch`` steps (default: the
        schedule's total steps at this batch size).
      steps: total steps instead (wins over ``epochs``).
      batch_size: global batch (the schedule is rescaled by the linear rule).
      backbone, backbone_weights, image_size: replace the recipe's.
      smoke: apply the recipe's ``smoke`` overrides (a few tiny steps).
      seed: seeds weights, data order and augmentation.
      mixed_precision: one of :data:`PRECISIONS` (None: float32).
      strategy: one of :data:`STRATEGIES` or a strategy object.
      backup_every: steps between backups (default: ``min(steps_per_epoch, 500)``).
      evaluate: evaluate after each epoch and at the end.
      tensorboard: write TensorBoard logs.
      data_dir: tfds data directory.
      verbose: Keras verbosity (default: progress bar on a terminal).

    Returns:
      :class:`TrainResult` with the trained model and the final metrics.
    """
    previous_policy = keras.config.dtype_policy()
    try:
        return _train(recipe, model_dir=model_dir, data=data, val_data=val_data, epochs=epochs, steps=steps,
                      batch_size=batch_size, backbone=backbone, backbone_weights=backbone_weights,
                      image_size=image_size, smoke=smoke, seed=seed, mixed_precision=mixed_precision,
                      strategy=strategy, backup_every=backup_every, evaluate=evaluate, tensorboard=tensorboard,
                      data_dir=data_dir, verbose=verbose)
    finally:
        keras.config.set_dtype_policy(previous_policy)  # the policy is global: do not leak it to later models


def _train(recipe, *, model_dir, data, val_data, epochs, steps, batch_size, backbone, backbone_weights, image_size,
           smoke, seed, mixed_precision, strategy, backup_every, evaluate, tensorboard, data_dir, verbose):
    started = time.time()
    recipe = _apply_overrides(recipe, smoke=smoke, data=data, val_data=val_data, batch_size=batch_size,
                              backbone=backbone, backbone_weights=backbone_weights, image_size=image_size)
    verbose = _verbose(verbose)
    recipe.check_run(steps)
    if recipe.val_data is None:
        if recipe.train is not None:
            raise ValueError(f"--data {recipe.train_data!r} without --val-data: the {recipe.name} recipe needs "
                             f"validation data of the same kind; pass --val-data")
        if evaluate:
            print(f"kdet train: --data {recipe.train_data!r} without --val-data: training without evaluation (the "
                  f"recipe's own validation data belongs to another dataset); pass --val-data to evaluate")
        evaluate = False
    keras.utils.set_random_seed(seed)
    set_precision(mixed_precision)
    strategy = choose_strategy(strategy) if isinstance(strategy, str) else strategy
    chief = is_chief(strategy)
    _check_writable(model_dir)
    train_examples, train_info = open_source(recipe.train_data, seed=seed, data_dir=data_dir)
    val_examples, val_info, val = None, train_info, None  # evaluate=False never reads the validation data
    if evaluate or recipe.train is not None:
        val_examples, val_info = open_source(recipe.val_data, seed=seed, data_dir=data_dir)
        val = _val_pipeline(recipe, val_examples)
    callbacks = [TerminateOnNaNTerm()]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(_log_dir(model_dir, strategy), update_freq=max(
            1, min(100, recipe.steps_per_epoch // 10))))
    if recipe.train is not None and (summary := _finished(model_dir)):
        return _already_trained(recipe, model_dir, summary, started)
    recipe = recipe.replace(backbone_weights=resolve_backbone_weights(recipe.backbone_weights, verbose=verbose))
    if recipe.train is not None:
        run = Run(recipe=recipe, model_dir=model_dir, train_examples=train_examples, train_info=train_info,
                  val_examples=val_examples, val_info=val_info, batch_size=recipe.batch_size, strategy=strategy,
                  callbacks=callbacks, seed=seed, verbose=verbose, smoke=smoke, epochs=epochs, steps=steps)
        model, total = _train_procedure(run)
        history, start_step, evaluated = {}, 0, None
    else:
        model, history, start_step, total, evaluated = _train_steps(
            recipe, model_dir=model_dir, train_examples=train_examples, info=train_info, val=val,
            epochs=epochs, steps=steps, seed=seed, strategy=strategy, backup_every=backup_every,
            evaluate=evaluate, callbacks=callbacks, verbose=verbose)
        if start_step == total and (summary := _finished(model_dir, steps=total)):
            return _already_trained(recipe, model_dir, summary, started, model=model)
    metrics = {}
    if evaluated is not None and evaluated.last_step == int(model.optimizer.iterations.numpy()):
        metrics = evaluated.last_metrics  # the last epoch ended with the final weights: no second pass
    elif evaluate:
        from kdet.evaluation import evaluate_model

        metrics = evaluate_model(model, val, _evaluator(model, recipe, val_info), progress=verbose == 1)
    result = TrainResult(model=model, metrics={k: float(v) for k, v in metrics.items()}, history=history,
                         model_dir=model_dir, start_step=start_step, steps=total,
                         seconds=round(time.time() - started, 1))
    if chief:
        _write_outputs(result, recipe, val_info, seed=seed, mixed_precision=mixed_precision)
    return result


def _train_procedure(run: Run) -> tuple[keras.Model, int]:
    """A recipe's own procedure: ``(model, steps trained)``; its finished phases kept for a rerun after a kill
    (:mod:`kdet.training.phases`; one worker only: several would race on the folder)."""
    counter = StepCounter()
    run.callbacks = list(run.callbacks) + [counter]  # every fit of the procedure counts its steps here
    with phases.recorded(os.path.join(run.model_dir, BACKUP_DIR, PHASES_DIR), _recipe_record(
            run.recipe, seed=run.seed, epochs=run.epochs, steps=run.steps), verbose=bool(run.verbose),
            enabled=not is_multi_worker(run.strategy)) as log:
        model = run.recipe.train(run.recipe, run)
    return model, counter.steps + (log.steps_read_back if log else 0)  # + the phases read back


def _finished(model_dir: str, *, steps: int | None = None) -> dict | None:
    """The metrics summary of the run that wrote ``model_dir``, when that directory is complete (else None).

    With ``steps``, that run must also have ended at that global step (a
    directory left by a shorter earlier run is not this run's result).
    """
    try:
        with open(os.path.join(model_dir, METRICS_FILE)) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or (steps is not None and summary.get("steps") != steps):
        return None
    return summary if is_complete(model_dir) else None


def _already_trained(recipe: Recipe, model_dir: str, summary: dict, started: float, *, model=None) -> TrainResult:
    """The result of a rerun whose training is done (``summary``: its metrics.json): nothing is written."""
    steps = int(summary.get("steps", 0))
    if model is None:
        model, _ = load_model_dir(model_dir)
    print(f"kdet train: {recipe.name} is already trained ({steps} steps); {model_dir} is complete and was not "
          f"changed (train more with a larger --steps, or use another --model-dir)")
    return TrainResult(model=model, metrics={k: float(v) for k, v in summary.get("metrics", {}).items()},
                       model_dir=model_dir, start_step=steps, steps=steps, seconds=round(time.time() - started, 1))


def _check_writable(model_dir: str) -> None:
    """Creates ``model_dir`` and proves it writable before any slow work (an error names the folder)."""
    check_output_path(model_dir, "--model-dir", folder=True)
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"--model-dir {model_dir!r} cannot be written: {error.strerror or error}") from None


def _log_dir(model_dir: str, strategy) -> str:
    if is_chief(strategy):
        return os.path.join(model_dir, "logs")
    return os.path.join(model_dir, "logs", f"worker{strategy.cluster_resolver.task_id}")


def _write_outputs(result: TrainResult, recipe: Recipe, info: DetectionInfo, *, seed, mixed_precision) -> None:
    record = _recipe_record(recipe, evaluation=result.model.evaluation, seed=seed, mixed_precision=mixed_precision,
                            steps=result.steps)
    save_model_dir(result.model, result.model_dir, input_size=recipe.image_size, class_names=info.class_names,
                   category_ids=info.category_ids, data=recipe.val_data, recipe=record)
    summary = {"recipe": recipe.name, "metrics": result.metrics, "steps": result.steps,
               "resumed_from_step": result.start_step, "seconds": result.seconds,
               "final_logs": {k: v[-1] for k, v in result.history.items() if v}}
    write_json_atomic(os.path.join(result.model_dir, METRICS_FILE), summary, indent=2, default=float)
    shutil.rmtree(os.path.join(result.model_dir, BACKUP_DIR, PHASES_DIR), ignore_errors=True)  # complete: not needed


def _total_steps(recipe: Recipe, *, epochs, steps) -> tuple[int, int]:
    """``(total steps, steps per epoch)`` at the recipe's batch size."""
    if steps is None:
        steps = (epochs * recipe.steps_per_epoch if epochs is not None
                 else recipe.schedule.for_batch(recipe.batch_size).total_steps)
    if steps < 1:
        raise ValueError(f"need at least one training step, got {steps}")
    return int(steps), int(min(recipe.steps_per_epoch, steps))


def _build(recipe: Recipe, info: DetectionInfo, strategy, total_steps: int) -> keras.Model:
    """The recipe's compiled detector; its schedule rescaled to the batch, then fitted to ``total_steps``."""
    schedule = recipe.schedule.for_batch(recipe.batch_size).fit_to(total_steps)
    with strategy.scope():
        model = recipe.build_model(info.num_classes, backbone=recipe.backbone,
                                   backbone_weights=recipe.backbone_weights)
        model.set_labels(info.class_names, info.category_ids)
        build_for(model, recipe.image_size)
        model.compile(optimizer=schedule.make_optimizer())
        model.optimizer.build(model.trainable_variables)
    return model


def _segments(start: int, total: int, per_epoch: int) -> list[tuple[int, int, int, int]]:
    """``(first epoch, first step, epochs, steps per epoch)`` of the ``fit`` calls from ``start`` to ``total``.

    At most three: the rest of a part-done epoch (a resumed run), the full
    epochs, and a last shorter epoch when ``total`` is not a multiple.
    """
    segments, step = [], start
    if step % per_epoch and step < total:
        length = min(per_epoch - step % per_epoch, total - step)
        segments.append((step // per_epoch, step, 1, length))
        step += length
    full = (total - step) // per_epoch
    if full:
        segments.append((step // per_epoch, step, full, per_epoch))
        step += full * per_epoch
    if step < total:
        segments.append((step // per_epoch, step, 1, total - step))
    return segments


def _train_steps(recipe: Recipe, *, model_dir, train_examples, info, val, epochs, steps, seed, strategy,
                 backup_every, evaluate, callbacks, verbose):
    total, per_epoch = _total_steps(recipe, epochs=epochs, steps=steps)
    backup_dir = os.path.join(model_dir, BACKUP_DIR)
    if is_multi_worker(strategy) and not is_chief(strategy):
        backup_dir = os.path.join(model_dir, BACKUP_DIR, f"worker{strategy.cluster_resolver.task_id}")
    os.makedirs(backup_dir, exist_ok=True)  # before fit: makedirs races between workers sharing model_dir
    model = _build(recipe, info, strategy, total)
    with strategy.scope():
        start = restore_backup(model, backup_dir)  # before anything is evaluated or written
    if start > total:
        print(f"kdet train: the backup in {backup_dir} is at step {start}, past the {total} steps asked for; "
              f"keeping its weights")
        total = start
    if start == total:
        print(f"kdet train: {recipe.name}: the backup in {backup_dir} is at the final step {total}")
    elif start:
        print(f"kdet train: resuming {recipe.name} from the backup in {backup_dir} at step {start} of {total}")
    backup_every = int(backup_every or min(per_epoch, 500))
    stream_args = dict(image_size=recipe.image_size, max_boxes=recipe.max_boxes, flip=recipe.flip,
                       scale_jitter=recipe.scale_jitter, seed=seed)
    common, evaluation = list(callbacks), None
    if evaluate:
        monitor = _monitor(model)
        evaluation = EvaluationCallback(val, _evaluator(model, recipe, info), verbose=verbose)
        common = [evaluation,
                  keras.callbacks.ModelCheckpoint(os.path.join(model_dir, BEST_WEIGHTS), monitor=monitor,
                                                  mode="max", save_best_only=True, save_weights_only=True,
                                                  verbose=0)] + common
        first = next(iter(val), None)
        if first is None:
            raise ValueError(f"--val-data {recipe.val_data!r} gave no images (empty, or every image was skipped as "
                             f"undecodable: see the warnings above)")
        images, targets = first
        if any(isinstance(c, keras.callbacks.TensorBoard) for c in callbacks):
            common.append(DetectionImages(_log_dir(model_dir, strategy), images.numpy()[:4],
                                          ground_truth={k: v.numpy()[:4] for k, v in targets.items()},
                                          class_names=info.class_names))
    history: dict[str, list[float]] = {}
    step = start
    for epoch, first_step, length, epoch_steps in _segments(start, total, per_epoch):
        backup = StepBackup(backup_dir, save_freq=backup_every, steps_per_epoch=per_epoch, step_offset=step)
        fit_callbacks = [backup] + common
        if is_multi_worker(strategy):
            logs = custom_loop(model, strategy, train_examples, fit_callbacks, epoch=epoch, epochs=length,
                                steps=epoch_steps, start_step=step, batch_size=recipe.batch_size, verbose=verbose,
                                **stream_args)
        else:
            stream = training_stream(train_examples, batch_size=recipe.batch_size, start_step=step,
                                     num_steps=length * epoch_steps, **stream_args)
            logs = model.fit(stream, initial_epoch=epoch, epochs=epoch + length, steps_per_epoch=epoch_steps,
                             callbacks=fit_callbacks, verbose=verbose, shuffle=False).history
        for key, values in logs.items():
            history.setdefault(key, []).extend(float(np.asarray(v)) for v in values)
        if model.stop_training:
            break
        step += length * epoch_steps
    return model, history, start, step, evaluation
