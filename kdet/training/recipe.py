"""What a recipe is: a paper experiment as plain Python data.

A recipe module of the ``recipes`` package builds its detector by calling
the detector's constructor (no registry, no string factory) and states the
paper's hyperparameters in a :class:`Recipe`; :func:`kdet.training.train`
runs it.
Schedules are written at the paper's batch size (``reference_batch``); a
run at another global batch size scales them by the linear scaling rule
(:meth:`StepSchedule.for_batch`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import keras

from kdet.training.pretrain import SHAPES

OPTIMIZERS = ("sgd", "adam", "adamw")
WEIGHT_DECAY_TYPES = ("l2", "decoupled")


@keras.saving.register_keras_serializable(package="kdet")
class SGDWithL2(keras.optimizers.SGD):
    """SGD whose weight decay is an L2 term in the gradient, as in Caffe and Detectron.

    ``g + l2 * w`` goes through the momentum, so with momentum 0.9 the decay
    is about ten times stronger than Keras' decoupled ``weight_decay``
    (``w -= lr * wd * w``) at the same number: the papers' 1e-4 / 5e-4 mean
    this one.
    """

    def __init__(self, *, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.l2 = float(l2)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = gradient + keras.ops.cast(self.l2, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


@keras.saving.register_keras_serializable(package="kdet")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``base_lr * warmup_factor``, then step decay (Detectron's schedule).

    ``lr(step) = base_lr * decay_factor ** (number of boundaries <= step)``,
    times ``warmup_factor + (1 - warmup_factor) * step / warmup_steps``
    during the first ``warmup_steps`` steps.
    """

    def __init__(self, *, base_lr: float, boundaries=(), decay_factor: float = 0.1, warmup_steps: int = 0,
                 warmup_factor: float = 1.0 / 3.0):
        self.base_lr = float(base_lr)
        self.boundaries = tuple(int(b) for b in boundaries)
        if list(self.boundaries) != sorted(self.boundaries):
            raise ValueError(f"boundaries must increase, got {self.boundaries}")
        self.decay_factor = float(decay_factor)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        lr = keras.ops.convert_to_tensor(self.base_lr, "float32")
        for boundary in self.boundaries:
            lr = keras.ops.where(step >= boundary, lr * self.decay_factor, lr)
        if self.warmup_steps > 0:
            ramp = self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
            lr = keras.ops.where(step < self.warmup_steps, lr * ramp, lr)
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "boundaries": self.boundaries, "decay_factor": self.decay_factor,
                "warmup_steps": self.warmup_steps, "warmup_factor": self.warmup_factor}


@dataclass(frozen=True)
class StepSchedule:
    """The optimiser and its learning-rate schedule, at the paper's batch size.

    Args:
      base_lr: learning rate at ``reference_batch`` images per step.
      reference_batch: the global batch the paper used.
      total_steps: steps of the whole schedule at ``reference_batch``.
      boundaries: steps (at ``reference_batch``) where the rate is multiplied
        by ``decay_factor``.
      warmup_steps, warmup_factor: linear warm-up (Goyal et al.).
      optimizer: one of :data:`OPTIMIZERS`; SGD uses ``momentum``.
      weight_decay: weight decay on every trainable variable.
      weight_decay_type: "l2" (a term in the gradient, through momentum:
        Caffe / Detectron, what the papers' numbers mean; SGD only) or
        "decoupled" (Keras' ``weight_decay``); None: "l2" for SGD, else
        "decoupled".
      clipnorm: per-variable gradient norm clip, or None.
    """

    base_lr: float
    reference_batch: int
    total_steps: int
    boundaries: tuple[int, ...] = ()
    decay_factor: float = 0.1
    warmup_steps: int = 0
    warmup_factor: float = 1.0 / 3.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float | None = 1e-4
    weight_decay_type: str | None = None
    clipnorm: float | None = None

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.weight_decay_type not in (None,) + WEIGHT_DECAY_TYPES:
            raise ValueError(f"weight_decay_type must be one of {WEIGHT_DECAY_TYPES}, got {self.weight_decay_type!r}")
        if self.weight_decay_type == "l2" and self.optimizer != "sgd":
            raise ValueError(f"weight_decay_type='l2' is for SGD; {self.optimizer} takes 'decoupled'")
        if self.total_steps < 1 or self.reference_batch < 1 or self.base_lr <= 0:
            raise ValueError(f"need total_steps >= 1, reference_batch >= 1 and base_lr > 0, got {self}")
        if any(not 0 < b < self.total_steps for b in self.boundaries):
            raise ValueError(f"boundaries {self.boundaries} must lie inside (0, total_steps={self.total_steps})")

    def for_batch(self, batch_size: int) -> StepSchedule:
        """The same schedule at ``batch_size`` images per step (linear scaling: lr x k, steps / k)."""
        k = batch_size / self.reference_batch
        steps = lambda s: max(int(round(s / k)), 1)  # noqa: E731
        total = steps(self.total_steps)
        return dataclasses.replace(
            self, base_lr=self.base_lr * k, reference_batch=batch_size, total_steps=total,
            boundaries=tuple(min(steps(b), total - 1) for b in self.boundaries if total > 1),
            warmup_steps=steps(self.warmup_steps) if self.warmup_steps else 0)

    def fit_to(self, total_steps: int) -> StepSchedule:
        """The same schedule squeezed or stretched to ``total_steps``: warm-up and decay points move with it.

        A run of ``--steps``/``--epochs`` shorter than the recipe's schedule
        still warms up and decays, at the same fractions of the run (a
        boundary at 2/3 of 90k steps sits at 2/3 of a 900-step run).
        """
        if total_steps < 1:
            raise ValueError(f"need total_steps >= 1, got {total_steps}")
        if total_steps == self.total_steps:
            return self
        k = total_steps / self.total_steps
        # (boundaries that land on one step stay twice: the rate still decays as often)
        boundaries = sorted(min(max(int(round(b * k)), 1), total_steps - 1) for b in self.boundaries
                            ) if total_steps > 1 else []
        warmup = min(int(round(self.warmup_steps * k)), total_steps) if self.warmup_steps else 0
        return dataclasses.replace(self, total_steps=int(total_steps), boundaries=tuple(boundaries),
                                   warmup_steps=max(warmup, 1) if self.warmup_steps else 0)

    def learning_rate(self) -> WarmupStepDecay:
        return WarmupStepDecay(base_lr=self.base_lr, boundaries=self.boundaries, decay_factor=self.decay_factor,
                               warmup_steps=self.warmup_steps, warmup_factor=self.warmup_factor)

    def make_optimizer(self, learning_rate=None) -> keras.optimizers.Optimizer:
        """A fresh Keras optimiser with this schedule (or with ``learning_rate``: a float a callback may set)."""
        common = dict(learning_rate=self.learning_rate() if learning_rate is None else learning_rate,
                      clipnorm=self.clipnorm)
        if self.optimizer == "sgd" and self.weight_decay_type in (None, "l2"):
            return SGDWithL2(momentum=self.momentum, l2=self.weight_decay or 0.0, **common)
        if self.optimizer == "sgd":
            return keras.optimizers.SGD(momentum=self.momentum, weight_decay=self.weight_decay, **common)
        if self.optimizer == "adam":
            return keras.optimizers.Adam(weight_decay=self.weight_decay, **common)
        return keras.optimizers.AdamW(weight_decay=self.weight_decay or 0.0, **common)


@dataclass(frozen=True)
class Recipe:
    """A paper experiment: model, data, image size, batch and schedule.

    Args:
      name: the recipe's name (model directories and TensorBoard runs use it).
      paper: the paper and section whose setting this is.
      build_model: ``build_model(num_classes, *, backbone, backbone_weights)``
        returning an uncompiled detector (it calls the constructor).
      train_data, val_data: data strings (:mod:`kdet.data.sources`).
      image_size: ``(height, width)`` of the padded training and evaluation
        images (multiples of ``image_stride``).
      image_stride: the model's largest feature stride, which image sizes
        must be multiples of (its detector's ``input_stride``: 128, or 1 for
        the face cascade, which takes any size).
      batch_size: global images per step (all replicas together).
      schedule: optimiser and learning-rate schedule at the paper's batch.
      backbone: backbone name passed to ``build_model`` (``--backbone``).
      backbone_weights: local ImageNet weights file, or None (nothing is
        downloaded; the papers start from ImageNet weights).
      flip, scale_jitter, max_boxes: training pipeline
        (:func:`kdet.data.pipeline.make_pipeline`).
      steps_per_epoch: steps of one Keras epoch, the interval of evaluation,
        best-checkpoint selection and epoch logs.
      val_images: images evaluated after each epoch (None: the whole split).
      schedule_unit: "steps", or "epochs" where ``schedule.total_steps``
        counts epochs of a procedure's own samples (the face cascade's:
        ``--steps`` is then refused before any data is read).
      train: a custom training procedure ``train(recipe, run)`` for models
        that do not train by ``fit`` on images (the face cascade trains on
        mined windows); None uses :func:`kdet.training.train`'s loop.
      smoke: overrides applied by ``--smoke`` (a few steps on tiny inputs):
        any field of this class, plus ``"steps"`` (total steps).
      extra: free-form settings for ``train`` (stored in the model directory).
    """

    name: str
    paper: str
    build_model: Callable[..., keras.Model]
    train_data: str
    val_data: str | None  # None: no validation data (the user replaced the training data only)
    image_size: tuple[int, int]
    batch_size: int
    schedule: StepSchedule
    backbone: str = "resnet50"
    backbone_weights: str | None = None
    flip: bool = True
    scale_jitter: tuple[float, float] | None = None
    max_boxes: int = 100
    image_stride: int = 128
    schedule_unit: str = "steps"
    steps_per_epoch: int = 1000
    val_images: int | None = 500
    train: Callable[..., Any] | None = None
    smoke: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.batch_size < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"recipe {self.name!r}: batch_size and steps_per_epoch must be >= 1")
        if self.schedule_unit not in ("steps", "epochs"):
            raise ValueError(f"recipe {self.name!r}: schedule_unit must be 'steps' or 'epochs', got "
                             f"{self.schedule_unit!r}")

    def replace(self, **changes) -> Recipe:
        """A copy with ``changes``; unknown names raise a ValueError listing the valid ones."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"recipe {self.name!r} has no field(s) {sorted(unknown)}; valid: "
                             f"{sorted(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def smoke_version(self) -> Recipe:
        """The recipe with its ``smoke`` overrides; ``"steps"`` becomes the schedule's total steps."""
        changes = dict(self.smoke)
        steps = int(changes.pop("steps", 4))
        batch = int(changes.get("batch_size", self.batch_size))
        schedule = changes.pop("schedule", self.schedule).for_batch(batch)
        schedule = dataclasses.replace(schedule, total_steps=steps, boundaries=(), warmup_steps=min(
            schedule.warmup_steps, steps // 2))
        changes.setdefault("steps_per_epoch", steps)
        return self.replace(schedule=schedule, smoke={}, **changes)

    def epochs_for(self, batch_size: int) -> int:
        """Keras epochs that cover the schedule at ``batch_size``."""
        return math.ceil(self.schedule.for_batch(batch_size).total_steps / self.steps_per_epoch)

    def check_run(self, steps: int | None) -> None:
        """Refuses what this recipe cannot run before any data is read: ``--steps`` for a recipe counted in
        epochs, ``backbone_weights="shapes"`` on a backbone other than the tiny one."""
        if self.schedule_unit == "epochs" and steps is not None:
            raise ValueError(f"--steps {steps}: the {self.name} recipe counts its schedule in epochs of the samples "
                             f"it mines (their number is known only after mining); use --epochs")
        if self.backbone_weights == SHAPES and self.backbone != "tiny":
            raise ValueError(f"--backbone-weights shapes: weights pretrained on synthetic shapes exist for the tiny "
                             f"backbone only, not {self.backbone!r}")
