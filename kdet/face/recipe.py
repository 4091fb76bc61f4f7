"""The face recipes' training procedures (Qin et al., "Joint Training of Cascaded CNN for Face Detection").

Both are :attr:`Recipe.train <kdet.training.recipe.Recipe.train>`
procedures ``train(recipe, run) -> model``: these detectors do not train by
``fit`` on whole images with one optimiser, so :func:`kdet.training.train`
hands them its :class:`~kdet.training.loop.Run` (data, batch, strategy,
callbacks) and evaluates what they return. Both only translate the recipe
into :mod:`kdet.face.procedures`, the module ``benchmarks/face_benchmark.py``
calls too:

* :func:`train_face_cascade` -- Sec. 4.2: :func:`~kdet.face.procedures.prepare_cascade`
  then :func:`~kdet.face.procedures.train_cascade` with the recipe's
  :class:`~kdet.face.procedures.CascadeTraining` (``extra["procedure"]``).
* :func:`train_face_rcnn` -- Sec. 5.2: the RPN + Fast R-CNN detector's
  two-step joint training (:func:`~kdet.face.procedures.train_rcnn_joint`).

Schedules count epochs, not steps. The paper sizes its training in epochs of
its samples ("5 to 10 epochs", Sec. 4.2), whose number is known only after
mining, so here ``recipe.schedule.total_steps`` is the number of *epochs* of
every training step (each greedy branch, the joint cascade, the RPN, the joint
RPN + Fast R-CNN) and ``recipe.schedule.boundaries`` the epochs where the rate
is multiplied by ``decay_factor`` (a ``LearningRateScheduler`` callback; each
step starts a fresh optimiser at the base rate). The rate follows the linear
scaling rule from ``reference_batch`` to the run's batch; epoch counts do not
depend on the batch. ``--smoke``'s ``"steps"`` therefore sets the epochs.

Recipe ``extra`` settings read here (all optional):

* ``max_train_images``: train on at most this many training images, spread
  evenly over the split (``Dataset.shard``: WIDER FACE is ordered by event,
  its first images are all "Parade"); None uses all of them;
* cascade: ``procedure``, :class:`~kdet.face.procedures.CascadeTraining`
  fields (``epochs`` and ``batch_size`` come from the schedule and the run);
* ``min_face_size``: read by the evaluation (faces below it are ignored).
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kdet.data.pipeline import DEFAULT_STRIDE, make_pipeline
from kdet.face import procedures

#: Keys of an example dict the cascade's mining reads.
_MINING_KEYS = ("image", "boxes", "is_crowd")


# ----------------------------------------------------------------------------- schedule
def learning_rate(recipe, batch_size: int) -> float:
    """The base rate at ``batch_size`` (linear scaling from ``recipe.schedule.reference_batch``)."""
    schedule = recipe.schedule
    return schedule.base_lr * batch_size / schedule.reference_batch


def optimizer_factory(recipe, batch_size: int) -> procedures.OptimizerFactory:
    """Fresh optimisers of ``recipe.schedule``'s kind at a constant (callback-settable) rate.

    A float rate, not the schedule object: the epoch-wise decay is a callback
    that assigns the rate.
    """
    schedule, rate = recipe.schedule, learning_rate(recipe, batch_size)
    return lambda: schedule.make_optimizer(learning_rate=rate)


def epoch_decay(recipe, batch_size: int) -> keras.callbacks.Callback:
    """Multiplies the rate by ``decay_factor`` at each epoch of ``recipe.schedule.boundaries``."""
    schedule, rate = recipe.schedule, learning_rate(recipe, batch_size)
    boundaries = sorted(schedule.boundaries)
    return keras.callbacks.LearningRateScheduler(
        lambda epoch, lr: rate * schedule.decay_factor ** bisect.bisect_right(boundaries, epoch))


def _epochs(recipe, run) -> int:
    """Epochs of each training step: ``--epochs`` or the schedule's (counted in epochs here)."""
    if run.steps is not None:
        raise ValueError(f"recipe {recipe.name!r} counts its schedule in epochs of mined samples: "
                         f"use --epochs instead of --steps")
    return int(run.epochs or recipe.schedule.total_steps)


def _fit_settings(recipe, run) -> dict[str, Any]:
    """Keyword arguments common to the :mod:`kdet.face.procedures` procedures."""
    return dict(optimizer=optimizer_factory(recipe, run.batch_size), seed=run.seed, verbose=run.verbose,
                callbacks=list(run.callbacks) + [epoch_decay(recipe, run.batch_size)])


# ----------------------------------------------------------------------------- data
def _spread(examples: tf.data.Dataset, limit: int | None) -> tf.data.Dataset:
    """At most ``limit`` examples, every k-th one when the split's size is known (else the first ones)."""
    if not limit:
        return examples
    count = int(examples.cardinality())
    if count > limit:
        examples = examples.shard(count // limit, 0)
    return examples.take(limit)


def numpy_examples(examples: tf.data.Dataset, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Example dicts as NumPy (``image``, ``boxes``, ``is_crowd``) for mining, at their own resolution."""
    return [{k: e[k] for k in _MINING_KEYS} for e in _spread(examples, limit).as_numpy_iterator()]


def padded_arrays(examples: tf.data.Dataset, *, image_size, max_boxes: int, limit: int | None = None,
                  flip: bool = False, stride: int = DEFAULT_STRIDE) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The training images resized and padded to ``image_size`` as arrays, with padded targets.

    Images are the evaluation pipeline's (:func:`kdet.data.pipeline.make_pipeline`,
    aspect kept, zero padding bottom/right) stored as uint8 (a quarter of
    float32's memory; the detectors cast their input). ``flip`` appends every
    image mirrored across the padded width, as Faster R-CNN's training does.

    Returns:
      ``(images uint8 [N, H, W, 3], {"boxes" [N, M, 4], "classes" [N, M] (-1 padding), "is_crowd" [N, M]})``.
    """
    batches = make_pipeline(_spread(examples, limit), image_size=image_size, batch_size=16, training=False,
                            max_boxes=max_boxes, stride=stride)
    images, boxes, classes, crowd = [], [], [], []
    for x, y in batches.as_numpy_iterator():
        images.append(np.clip(np.round(x), 0, 255).astype(np.uint8))
        boxes.append(y["boxes"])
        classes.append(y["classes"])
        crowd.append(y["is_crowd"])
    if not images:
        raise ValueError("the face R-CNN recipe got no training images")
    images, boxes = np.concatenate(images), np.concatenate(boxes).astype(np.float32)
    classes, crowd = np.concatenate(classes).astype(np.int32), np.concatenate(crowd)
    if flip:
        width = images.shape[2]
        mirrored = np.stack([boxes[..., 0], width - boxes[..., 3], boxes[..., 2], width - boxes[..., 1]], axis=-1)
        mirrored = np.where((classes >= 0)[..., None], mirrored, 0.0)
        images = np.concatenate([images, images[:, :, ::-1]])
        boxes, classes, crowd = (np.concatenate([boxes, mirrored]), np.concatenate([classes, classes]),
                                 np.concatenate([crowd, crowd]))
    return images, {"boxes": boxes, "classes": classes, "is_crowd": crowd}


# ----------------------------------------------------------------------------- procedures
def _model_config(recipe) -> dict:
    """The recipe's detector keyword arguments (``build_model``'s constructor call, then ``get_config``)."""
    return recipe.build_model(1, backbone=recipe.backbone, backbone_weights=recipe.backbone_weights).get_config()


def cascade_training(recipe, run) -> procedures.CascadeTraining:
    """The recipe's :class:`~kdet.face.procedures.CascadeTraining`: ``extra["procedure"]``, epochs and batch of the run."""
    settings = dict(recipe.extra.get("procedure", {}))
    unknown = set(settings) - {f.name for f in dataclasses.fields(procedures.CascadeTraining)}
    if unknown:
        raise ValueError(f"recipe {recipe.name!r}: extra['procedure'] has unknown field(s) {sorted(unknown)}")
    epochs = _epochs(recipe, run)
    return procedures.CascadeTraining(**{**settings, "epochs": epochs, "batch_size": run.batch_size})


def train_face_cascade(recipe, run) -> keras.Model:
    """Sec. 4.2: mine, optionally bootstrap, train the branches separately, then jointly from them."""
    training = cascade_training(recipe, run)
    if training.start == "mtcnn":
        from kdet.face.mtcnn_weights import mtcnn_weights

        try:  # the optional package is there, before the slow mining
            mtcnn_weights()
        except ImportError as err:
            raise ValueError(f"the {recipe.name} recipe starts from MTCNN's weights: {err}") from None
    if run.verbose:
        print(f"{recipe.name}: reading the training images (decoded once, for mining and bootstrapping)", flush=True)
    examples = numpy_examples(run.train_examples, recipe.extra.get("max_train_images"))
    common = _fit_settings(recipe, run)
    progress = {1: True, 2: "lines"}.get(run.verbose, False)  # a bar on a terminal, lines in a log
    with run.strategy.scope():
        prepared = procedures.prepare_cascade(_model_config(recipe), examples, training, progress=progress,
                                              **common)
        model, _ = procedures.train_cascade(prepared, training, **common)
    return model


def train_face_rcnn(recipe, run) -> keras.Model:
    """Sec. 5.2: the RPN alone, then the joint RPN + Fast R-CNN fine-tuned from it on its proposals."""
    images, targets = padded_arrays(run.train_examples, image_size=recipe.image_size, max_boxes=recipe.max_boxes,
                                    limit=recipe.extra.get("max_train_images"), flip=recipe.flip,
                                    stride=recipe.image_stride)
    if len(images) < run.batch_size:
        raise ValueError(f"the face R-CNN recipe needs at least batch_size={run.batch_size} training images, "
                         f"got {len(images)}")
    epochs = _epochs(recipe, run)
    with run.strategy.scope():
        model, _ = procedures.train_rcnn_joint(_model_config(recipe), images, targets, rpn_epochs=epochs,
                                               joint_epochs=epochs, batch_size=run.batch_size,
                                               **_fit_settings(recipe, run))
    return model
