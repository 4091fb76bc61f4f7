"""Callbacks of a training run: step-level backup, NaN guard, detection images.

* :class:`StepBackup` -- Keras' ``BackupAndRestore`` with a step-level save
  frequency that also records the global step, so a run killed mid-epoch
  resumes at the step after its last backup (the loop skips the batches
  already trained on; see :func:`backup_position`).
* :class:`TerminateOnNaNTerm` -- stops training on the first non-finite
  logged value and says which loss term went bad, at which step.
* :class:`DetectionImages` -- draws the model's detections on a few
  validation images into TensorBoard at the end of epochs.
"""

from __future__ import annotations

import json
import math
import os
import sys

import keras
import numpy as np

BACKUP_METADATA = "training_metadata.json"


def backup_position(backup_dir: str) -> int:
    """Global steps done according to the backup in ``backup_dir`` (0 without one).

    Reads the ``.bkp`` copy when the current metadata is unreadable (a kill
    during a save), as ``BackupAndRestore`` does for the weights.
    """
    for name in (BACKUP_METADATA, BACKUP_METADATA + ".bkp"):
        path = os.path.join(backup_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                return int(json.load(f)["global_step"])
        except (ValueError, KeyError, OSError):
            continue
    return 0


class StepBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` every ``save_freq`` steps, recording the global step.

    Keras' callback restores weights, optimiser state and the epoch but
    restarts that epoch at batch 0. Here the metadata also stores
    ``global_step`` (``step_offset`` + batches seen in this ``fit``), which
    :func:`backup_position` reads so the caller can start the data stream
    and the first (partial) epoch at the right step.

    Args:
      backup_dir: folder of the backup (kept after training when
        ``delete_checkpoint`` is False).
      save_freq: steps between backups.
      steps_per_epoch: steps of a full epoch.
      step_offset: global step of this ``fit``'s first batch.
    """

    def __init__(self, backup_dir: str, *, save_freq: int, steps_per_epoch: int, step_offset: int = 0,
                 delete_checkpoint: bool = False):
        super().__init__(backup_dir, save_freq=int(save_freq), double_checkpoint=True,
                         delete_checkpoint=delete_checkpoint)
        self.steps_per_epoch = int(steps_per_epoch)
        self.step_offset = int(step_offset)
        self._fit_steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._fit_steps += 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch" and self._batches_seen_since_last_saving:
            self._batches_seen_since_last_saving = 0
            self._save_model()  # the epoch boundary is always a backup

    def _save_model(self):
        super()._save_model()
        global_step = self.step_offset + self._fit_steps
        metadata = {"epoch": global_step // self.steps_per_epoch, "batch": global_step % self.steps_per_epoch,
                    "global_step": global_step}
        path = os.path.join(self.backup_dir, BACKUP_METADATA)
        with open(path + ".tmp", "w") as f:
            json.dump(metadata, f)
        os.replace(path + ".tmp", path)


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
