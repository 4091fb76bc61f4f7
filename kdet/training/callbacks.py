"""Callbacks of a training run: step-level backup, NaN guard, detection images.

* :class:`StepBackup` -- a step-level backup of weights, optimiser state and
  global step as one atomic unit (:mod:`kdet.training.backup`), so a run
  killed mid-epoch resumes at the step after its last backup with exactly
  that backup's weights.
* :class:`TerminateOnNaNTerm` -- stops training on the first non-finite
  logged value and says which loss term went bad, at which step.
* :class:`DetectionImages` -- draws the model's detections on a few
  validation images into TensorBoard at the end of epochs.
"""

from __future__ import annotations

import math
import os
import sys

import keras
import numpy as np

from kdet.training.backup import write_backup

class StepBackup(keras.callbacks.Callback):
    """Backs up weights, optimiser state and the global step every ``save_freq`` steps and at each epoch end.

    Each backup is one atomic folder (:func:`kdet.training.backup.write_backup`);
    restoring is the caller's job (:func:`kdet.training.backup.restore_backup`
    before ``fit``), so the step the data stream resumes at and the weights
    always come from the same backup.

    Args:
      backup_dir: folder of the backups (kept after training).
      save_freq: steps between backups (counted from the last backup; an
        epoch end is always a backup).
      steps_per_epoch: steps of a full epoch.
      step_offset: global step of this ``fit``'s first batch.
    """

    def __init__(self, backup_dir: str, *, save_freq: int, steps_per_epoch: int, step_offset: int = 0):
        super().__init__()
        self.backup_dir = backup_dir
        self.save_freq = int(save_freq)
        self.steps_per_epoch = int(steps_per_epoch)
        self.step_offset = int(step_offset)
        self._fit_steps = 0
        self._since_backup = 0

    @property
    def global_step(self) -> int:
        return self.step_offset + self._fit_steps

    def on_train_batch_end(self, batch, logs=None):
        self._fit_steps += 1
        self._since_backup += 1
        if self._since_backup >= self.save_freq:
            self._backup()

    def on_epoch_end(self, epoch, logs=None):
        if self._since_backup:
            self._backup()

    def _backup(self):
        self._since_backup = 0
        write_backup(self.model, self.backup_dir, self.global_step)


class StepCounter(keras.callbacks.Callback):
    """Counts the optimiser steps of every ``fit`` it is passed to (a custom procedure's several fits)."""

    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


class TerminateOnNaNTerm(keras.callbacks.Callback):
    """Stops training when a logged loss term is NaN or infinite, naming it.

    Keras' ``TerminateOnNaN`` only looks at ``loss``; detectors log every
    term (``rpn_box_loss``, ``stage2_cls_loss``, ...), so this says which
    went bad first. ``bad_term`` and ``bad_step`` keep the finding.
    """

    def __init__(self, *, stream=sys.stderr):
        super().__init__()
        self.stream = stream
        self.bad_term: str | None = None
        self.bad_step: int | None = None
        self._step = 0

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        bad = sorted(k for k, v in (logs or {}).items() if _non_finite(v))
        if not bad:
            return
        terms = [k for k in bad if k != "loss"] or bad
        self.bad_term, self.bad_step = terms[0], self._step
        print(f"kdet: stopping at step {self._step} (epoch batch {batch}): loss term(s) "
              f"{', '.join(repr(t) for t in terms)} became {_describe(logs[terms[0]])}. Lower the learning rate, "
              f"add warm-up or gradient clipping, or check the data (boxes, classes) of the recent batches.",
              file=self.stream)
        self.model.stop_training = True


def _non_finite(value) -> bool:
    try:
        return not math.isfinite(float(np.asarray(value)))
    except (TypeError, ValueError):
        return False


def _describe(value) -> str:
    return "NaN" if math.isnan(float(np.asarray(value))) else "infinite"


class DetectionImages(keras.callbacks.Callback):
    """Writes a few validation images with drawn detections to TensorBoard.

    Args:
      log_dir: TensorBoard folder (the run's ``validation`` events go here).
      images: ``[N, H, W, 3]`` float 0..255 (a few: 4 is plenty).
      ground_truth: optional padded ``boxes`` / ``classes`` of those images.
      class_names: label names.
      every_n_epochs: draw after epochs n, 2n, ...
    """

    def __init__(self, log_dir: str, images, *, ground_truth=None, class_names=None, every_n_epochs: int = 1):
        super().__init__()
        self.log_dir = log_dir
        self.images = np.asarray(images)
        self.ground_truth = ground_truth
        self.class_names = class_names
        self.every_n_epochs = int(every_n_epochs)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        import tensorflow as tf

        from kdet.visualize import draw_detections, draw_ground_truth

        detections = {k: np.asarray(v) for k, v in self.model.predict_on_batch(self.images).items()}
        drawn = []
        for i, image in enumerate(self.images):
            if self.ground_truth is not None:
                gt_classes = np.asarray(self.ground_truth["classes"][i])
                image = draw_ground_truth(image, np.asarray(self.ground_truth["boxes"][i])[gt_classes >= 0])
            n = int(detections["num_detections"][i])
            drawn.append(draw_detections(image, detections["boxes"][i][:n], detections["classes"][i][:n],
                                         detections["scores"][i][:n], class_names=self.class_names))
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "validation"))
        with self._writer.as_default():
            tf.summary.image("detections", np.stack(drawn), step=epoch, max_outputs=len(drawn))
        self._writer.flush()
