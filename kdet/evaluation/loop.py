"""Run a detector over an evaluation dataset and feed any evaluator.

:func:`evaluate_model` knows nothing about COCO: it only needs an evaluator
with ``update_from_batch(targets, detections)`` and ``evaluate()`` (the COCO
evaluator now, VOC or face evaluators later).
"""

from collections.abc import Iterable

import keras
import tensorflow as tf


def _num_batches(dataset, steps: int | None) -> int | None:
    """Steps to show in the progress bar: ``steps``, or a finite known cardinality."""
    if steps is not None:
        return int(steps)
    if isinstance(dataset, tf.data.Dataset):
        cardinality = int(dataset.cardinality())
        return cardinality if cardinality >= 0 else None
    try:
        return len(dataset)
    except TypeError:
        return None


def evaluate_model(model: keras.Model, dataset: Iterable, evaluator, *,
                   steps: int | None = None, progress: bool = True) -> dict[str, float]:
    """Predicts every batch of ``dataset`` and evaluates.

    Args:
        model: a detector whose ``predict_on_batch(images)`` returns the
            output contract ``{"boxes" [B,K,4], "scores" [B,K], "classes"
            [B,K], "num_detections" [B]}`` in the input images' pixels.
        dataset: iterable of ``(images, targets)`` batches (the eval pipeline
            of kdet.data.pipeline; extra tuple elements are ignored). It must
            be finite unless ``steps`` is given.
        evaluator: object with ``update_from_batch(targets, detections)`` and
            ``evaluate()``; it is not reset first.
        steps: evaluate at most this many batches.
        progress: show a ``keras.utils.Progbar``.

    Returns:
        ``evaluator.evaluate()``.

    Raises:
        ValueError: ``dataset`` gave no batch (nothing to evaluate).
    """
    target = _num_batches(dataset, steps)
    bar = keras.utils.Progbar(target, unit_name="batch") if progress else None
    done = 0
    for batch in dataset:
        if steps is not None and done >= steps:
            break
        images, targets = batch[0], batch[1]
        detections = model.predict_on_batch(images)
        evaluator.update_from_batch(targets, detections)
        done += 1
        if bar is not None:
            bar.update(done)
    if bar is not None and done != target:
        bar.update(done, finalize=True)  # unknown or overestimated length: end the line.
    if done == 0:
        raise ValueError("the evaluation data gave no images (empty, or every image was skipped as undecodable: "
                         "see the warnings above)")
    return evaluator.evaluate()
